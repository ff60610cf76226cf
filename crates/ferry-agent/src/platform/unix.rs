//! Linux (and any Unix): files private by mode, termios, SIGTERM.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use anyhow::{bail, Context, Result};
use zeroize::Zeroizing;

/// Where `install` puts the config unless told otherwise.
pub fn default_config_dir() -> PathBuf {
    PathBuf::from("/etc/ferry-agent")
}

/// This host's name, as the console shows the agent.
pub fn hostname() -> String {
    nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".into())
}

/// Creates a directory only its owner can open (0700).
pub fn create_private_dir(dir: &Path) -> Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(dir)
        .with_context(|| format!("cannot create {}", dir.display()))
}

/// Writes a new file only its owner can read (0600).
pub fn write_private(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("cannot create {}", path.display()))?;
    f.write_all(bytes)
        .and_then(|_| f.sync_all())
        .with_context(|| format!("cannot write {}", path.display()))
}

/// Writes a secret at rest: on Unix, a file only its owner can read.
pub fn write_secret(path: &Path, secret: &str) -> Result<()> {
    write_private(path, format!("{secret}\n").as_bytes())
}

/// Reads a secret [`write_secret`] wrote, refusing a file others can read
/// (as ssh does with private keys).
pub fn read_secret(path: &Path) -> Result<Zeroizing<String>> {
    use std::os::unix::fs::PermissionsExt;
    let meta = std::fs::metadata(path).with_context(|| format!("cannot read {}", path.display()))?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        bail!(
            "{} is readable by others (mode {mode:o}): run `chmod 600 {}`",
            path.display(),
            path.display()
        );
    }
    let text =
        Zeroizing::new(std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?);
    Ok(Zeroizing::new(text.trim().to_owned()))
}

/// Whether the wizard may go on as it is: on Unix it runs with the rights it
/// was given (writing `/etc` tells an unprivileged user plainly).
pub fn elevated() -> bool {
    true
}

/// Never needed on Unix (see [`elevated`]).
pub fn relaunch_elevated(_args: &[&str]) -> Result<()> {
    bail!("run the install as root (sudo ferry-agent install)")
}

/// The wizard runs in the admin's own terminal, which stays: nothing to do.
pub fn keep_window_open() {}

static SAVED_TERMINAL: OnceLock<nix::libc::termios> = OnceLock::new();

/// The width of the terminal on stdout, if it is one.
pub fn terminal_width() -> Option<usize> {
    let ws = rustix::termios::tcgetwinsize(std::io::stdout()).ok()?;
    (ws.ws_col > 0).then_some(usize::from(ws.ws_col))
}

/// Remembers the terminal's settings before the wizard hides input.
pub fn save_terminal() {
    if let Ok(t) = nix::sys::termios::tcgetattr(std::io::stdin()) {
        let _ = SAVED_TERMINAL.set(t.into());
    }
}

/// Puts the terminal back as it was (echo on) after a hidden prompt was
/// interrupted.
pub fn restore_terminal() {
    if let Some(t) = SAVED_TERMINAL.get() {
        let t: nix::sys::termios::Termios = (*t).into();
        let _ = nix::sys::termios::tcsetattr(std::io::stdin(), nix::sys::termios::SetArg::TCSANOW, &t);
    }
}

/// Resolves when the agent is asked to stop: SIGTERM (systemd's stop) or Ctrl-C.
pub async fn shutdown_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {},
        _ = term => {},
    }
}
