//! A program driven through a pseudo-terminal, as a person at a keyboard
//! would: it sees a real terminal (hidden password prompts work, Ctrl-C
//! sends SIGINT), and the test reads what it prints and types answers.

use std::io::{Read, Write};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub struct Pty {
    master: std::fs::File,
    out: Arc<Mutex<Vec<u8>>>,
    /// Where the next `expect` starts looking.
    seen: usize,
    child: Child,
}

impl Pty {
    /// Starts `program args…` as the leader of a new session whose
    /// controlling terminal is the pty (util-linux `setsid --ctty`).
    pub fn spawn(program: &std::path::Path, args: &[&str], env: &[(&str, &str)]) -> Pty {
        Pty::spawn_sized(program, args, env, 160)
    }

    /// [`Pty::spawn`] on a terminal `columns` wide.
    pub fn spawn_sized(program: &std::path::Path, args: &[&str], env: &[(&str, &str)], columns: u16) -> Pty {
        let winsize = nix::pty::Winsize {
            ws_row: 40,
            ws_col: columns,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        let pty = nix::pty::openpty(Some(&winsize), None).unwrap();
        let slave = std::fs::File::from(pty.slave);
        let mut cmd = Command::new("setsid");
        cmd.arg("--ctty")
            .arg(program)
            .args(args)
            .stdin(Stdio::from(slave.try_clone().unwrap()))
            .stdout(Stdio::from(slave.try_clone().unwrap()))
            .stderr(Stdio::from(slave));
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd.spawn().unwrap();
        let master = std::fs::File::from(pty.master);
        let out = Arc::new(Mutex::new(Vec::new()));
        let mut reader = master.try_clone().unwrap();
        let sink = out.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            // EIO once the child side is closed.
            while let Ok(n) = reader.read(&mut buf) {
                if n == 0 {
                    break;
                }
                sink.lock().unwrap().extend_from_slice(&buf[..n]);
            }
        });
        Pty {
            master,
            out,
            seen: 0,
            child,
        }
    }

    /// Everything printed so far.
    pub fn transcript(&self) -> String {
        String::from_utf8_lossy(&self.out.lock().unwrap()).into_owned()
    }

    /// Waits (up to 60 s) until `text` appears after what earlier calls
    /// matched, and returns what was printed up to and including it.
    pub fn expect(&mut self, text: &str) -> String {
        let start = Instant::now();
        loop {
            {
                let out = self.out.lock().unwrap();
                let hay = String::from_utf8_lossy(&out[self.seen.min(out.len())..]).into_owned();
                if let Some(i) = hay.find(text) {
                    let upto = &hay[..i + text.len()];
                    self.seen += upto.len();
                    return upto.to_owned();
                }
            }
            if start.elapsed() > Duration::from_secs(60) {
                panic!("waited 60 s for {text:?}; the terminal shows:\n{}", self.transcript());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Types `line` and Enter.
    pub fn send_line(&mut self, line: &str) {
        self.master.write_all(line.as_bytes()).unwrap();
        self.master.write_all(b"\r").unwrap();
        self.master.flush().unwrap();
    }

    /// Presses Ctrl-C.
    /// Types a secret at a hidden prompt: first waits until the program has
    /// turned the terminal's echo off, as a person would see the prompt
    /// settle; typed sooner, the terminal itself would echo it.
    pub fn send_secret(&mut self, line: &str) {
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(10) {
            match nix::sys::termios::tcgetattr(&self.master) {
                Ok(t) if !t.local_flags.contains(nix::sys::termios::LocalFlags::ECHO) => break,
                _ => std::thread::sleep(Duration::from_millis(20)),
            }
        }
        self.send_line(line);
    }

    pub fn ctrl_c(&mut self) {
        self.master.write_all(&[3]).unwrap();
        self.master.flush().unwrap();
    }

    /// Waits (up to 60 s) for the program to end.
    pub fn wait(&mut self) -> ExitStatus {
        let start = Instant::now();
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                // Let the reader drain the last output.
                std::thread::sleep(Duration::from_millis(200));
                return st;
            }
            if start.elapsed() > Duration::from_secs(60) {
                panic!("the program did not end; the terminal shows:\n{}", self.transcript());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Pty {
    fn drop(&mut self) {
        self.child.kill().ok();
        self.child.wait().ok();
    }
}
