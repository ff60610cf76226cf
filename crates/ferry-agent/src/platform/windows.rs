//! Windows: `%ProgramData%\Ferry`, DPAPI and directory ACLs, the console.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{anyhow, bail, Context, Result};
use base64::Engine as _;
use zeroize::Zeroizing;

/// Where `install` puts the config unless told otherwise:
/// `%ProgramData%\Ferry\agent` (its logs go beside it, in `…\Ferry\logs`).
pub fn default_config_dir() -> PathBuf {
    program_data().join("Ferry").join("agent")
}

fn program_data() -> PathBuf {
    std::env::var_os("ProgramData")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(r"C:\ProgramData"))
}

/// This host's name, as the console shows the agent.
pub fn hostname() -> String {
    std::env::var("COMPUTERNAME")
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".into())
}

/// The well-known SIDs allowed into the config directory: LocalSystem (the
/// service runs as it) and the Administrators group. Written as SIDs so the
/// command works in every language of Windows.
const OWNERS: [&str; 2] = ["*S-1-5-18", "*S-1-5-32-544"];

/// The `icacls` arguments that make `dir` open to [`OWNERS`] only: the
/// inherited entries of `%ProgramData%` (where Users may read) are dropped.
pub fn private_acl_args(dir: &Path) -> Vec<String> {
    let mut args = vec![dir.display().to_string(), "/inheritance:r".into()];
    for sid in OWNERS {
        args.push("/grant:r".into());
        args.push(format!("{sid}:(OI)(CI)F"));
    }
    args
}

/// Creates a directory only SYSTEM and Administrators can open: the
/// DPAPI machine key would open `agent.key` for any local user, so the
/// directory's ACL is what keeps it to the service and the admins.
pub fn create_private_dir(dir: &Path) -> Result<()> {
    std::fs::create_dir(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let out = Command::new("icacls")
        .args(private_acl_args(dir))
        .output()
        .with_context(|| format!("cannot run icacls to restrict {}", dir.display()))?;
    if !out.status.success() {
        let _ = std::fs::remove_dir(dir);
        bail!(
            "cannot restrict {} to SYSTEM and Administrators (icacls: {}): run the install from an elevated prompt (Run as administrator)",
            dir.display(),
            String::from_utf8_lossy(&out.stdout).trim()
        );
    }
    Ok(())
}

/// Writes a new file (its directory's ACL keeps it private).
pub fn write_private(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
        .with_context(|| format!("cannot create {}", path.display()))?;
    f.write_all(bytes)
        .and_then(|_| f.sync_all())
        .with_context(|| format!("cannot write {}", path.display()))
}

/// What a DPAPI-protected secret file starts with.
const DPAPI_PREFIX: &str = "dpapi-machine-v1:";
/// Extra entropy for DPAPI: another program calling `CryptUnprotectData` on
/// the blob without it gets nothing.
const DPAPI_ENTROPY: &[u8] = b"ferry-agent agent.key v1";

/// The text stored for `secret`: DPAPI (machine scope) protected, base64.
pub fn protect(secret: &str) -> Result<String> {
    let blob = windows_dpapi::encrypt_data(secret.as_bytes(), windows_dpapi::Scope::Machine, Some(DPAPI_ENTROPY))
        .map_err(|e| anyhow!("DPAPI could not protect the agent's key: {e:#}"))?;
    Ok(format!(
        "{DPAPI_PREFIX}{}\n",
        base64::engine::general_purpose::STANDARD.encode(blob)
    ))
}

/// The secret in the text [`protect`] made.
pub fn unprotect(stored: &str, path: &Path) -> Result<Zeroizing<String>> {
    let b64 = stored.trim().strip_prefix(DPAPI_PREFIX).ok_or_else(|| {
        anyhow!(
            "{} is not protected with DPAPI: install the agent again (ferry-agent install)",
            path.display()
        )
    })?;
    let blob = base64::engine::general_purpose::STANDARD
        .decode(b64)
        .map_err(|e| anyhow!("{} is damaged ({e}): install the agent again", path.display()))?;
    let clear = Zeroizing::new(
        windows_dpapi::decrypt_data(&blob, windows_dpapi::Scope::Machine, Some(DPAPI_ENTROPY)).map_err(|e| {
            anyhow!(
                "DPAPI cannot open {} ({e:#}): it was written on another machine, or Windows' machine key changed; install the agent again",
                path.display()
            )
        })?,
    );
    let text = std::str::from_utf8(&clear).map_err(|_| anyhow!("{} does not hold text", path.display()))?;
    Ok(Zeroizing::new(text.trim().to_owned()))
}

/// Writes a secret at rest: DPAPI-protected (machine scope), so the file
/// alone, copied off the machine or out of a backup, opens nothing.
pub fn write_secret(path: &Path, secret: &str) -> Result<()> {
    write_private(path, protect(secret)?.as_bytes())
}

/// Reads a secret [`write_secret`] wrote.
pub fn read_secret(path: &Path) -> Result<Zeroizing<String>> {
    let stored =
        Zeroizing::new(std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?);
    unprotect(&stored, path)
}

/// Whether this process may set up the service (an elevated administrator).
pub fn elevated() -> bool {
    super::service::can_manage()
}

/// Starts `ferry-agent ARGS` again through UAC ("Run as administrator"), in
/// a console of its own: the MSI's own process, which opens the wizard, is
/// not elevated where UAC is on.
pub fn relaunch_elevated(args: &[&str]) -> Result<()> {
    let exe = super::this_binary();
    let quoted_args: Vec<String> = args.iter().map(|a| format!("'{}'", a.replace('\'', "''"))).collect();
    let script = format!(
        "Start-Process -FilePath '{}' -ArgumentList {} -Verb RunAs",
        exe.display().to_string().replace('\'', "''"),
        quoted_args.join(",")
    );
    let st = Command::new("powershell.exe")
        .args(["-NoProfile", "-NonInteractive", "-Command", &script])
        .status()
        .context("cannot start PowerShell to ask for elevation")?;
    if !st.success() {
        bail!("elevation was refused or failed");
    }
    Ok(())
}

/// The wizard opened by the MSI (or through UAC) has a console window of
/// its own, which closes when it ends: keep it until the summary was read.
pub fn keep_window_open() {
    use std::io::BufRead as _;
    print!("\nPress Enter to close this window.");
    let _ = std::io::Write::flush(&mut std::io::stdout());
    let _ = std::io::stdin().lock().read_line(&mut String::new());
}

/// Nothing to remember: the console mode that hidden input changes is put
/// back by the reader itself (rpassword's guard), also when Ctrl-C ends it.
pub fn save_terminal() {}

/// The console's width is not asked for on Windows: the wizard wraps at
/// the classic 80 columns (`COLUMNS` overrides it, as everywhere).
pub fn terminal_width() -> Option<usize> {
    None
}

/// Gives the hidden-input reader, interrupted by Ctrl-C on another thread,
/// the moment it needs to put the console mode back before the process exits.
pub fn restore_terminal() {
    std::thread::sleep(std::time::Duration::from_millis(100));
}

/// Resolves when the agent, run in a console, is asked to stop: Ctrl-C,
/// Ctrl-Break, the console closed, or Windows shutting down. (As a service,
/// the SCM's Stop is the signal: see the `service` module.)
pub async fn shutdown_signal() {
    use tokio::signal::windows;
    let close = async {
        match windows::ctrl_close() {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    let brk = async {
        match windows::ctrl_break() {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    let shutdown = async {
        match windows::ctrl_shutdown() {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {},
        _ = close => {},
        _ = brk => {},
        _ = shutdown => {},
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn the_key_file_holds_a_dpapi_blob_that_opens_only_with_our_entropy() {
        let stored = protect("sk-base64-secret").unwrap();
        assert!(stored.starts_with(DPAPI_PREFIX), "{stored}");
        assert!(!stored.contains("sk-base64-secret"));
        let p = Path::new("agent.key");
        assert_eq!(unprotect(&stored, p).unwrap().as_str(), "sk-base64-secret");
        // A blob without our entropy is refused with a way forward.
        let b64 = stored.trim().strip_prefix(DPAPI_PREFIX).unwrap();
        let blob = base64::engine::general_purpose::STANDARD.decode(b64).unwrap();
        assert!(windows_dpapi::decrypt_data(&blob, windows_dpapi::Scope::Machine, None).is_err());
        let e = unprotect("sk-in-plaintext\n", p).unwrap_err().to_string();
        assert!(
            e.contains("not protected with DPAPI") && e.contains("install the agent again"),
            "{e}"
        );
        let e = unprotect(&format!("{DPAPI_PREFIX}AAAA"), p).unwrap_err().to_string();
        assert!(e.contains("DPAPI cannot open"), "{e}");
    }

    #[test]
    fn the_config_directory_is_for_system_and_administrators_only() {
        let a = private_acl_args(Path::new(r"C:\ProgramData\Ferry\agent"));
        assert_eq!(
            a,
            [
                r"C:\ProgramData\Ferry\agent",
                "/inheritance:r",
                "/grant:r",
                "*S-1-5-18:(OI)(CI)F",
                "/grant:r",
                "*S-1-5-32-544:(OI)(CI)F"
            ]
        );
        assert!(default_config_dir().ends_with(r"Ferry\agent"));
    }
}
