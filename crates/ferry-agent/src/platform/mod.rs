//! Everything that differs between the platforms the agent runs on, in one
//! place; the rest of the agent is the same code on Linux and on Windows.
//!
//! | what | Linux (Unix) | Windows |
//! |---|---|---|
//! | where the config lives | `/etc/ferry-agent` | `%ProgramData%\Ferry\agent` |
//! | the secret key at rest | a file only its owner may read (0600, refused otherwise) | DPAPI, machine scope, in a directory only SYSTEM and Administrators may open |
//! | the service manager | systemd ([`service`] = `systemd.rs`) | the Service Control Manager ([`service`] = `windows_scm.rs`) |
//! | the wizard's terminal | termios saved and restored around hidden input | the console restores itself (see `windows.rs`) |
//! | a stop request | SIGTERM or Ctrl-C | Ctrl-C / console close, or the SCM's Stop |
//!
//! TLS trust is not here: `rustls-native-certs` reads each OS's own store
//! (see [`crate::ad`]).
//!
//! Each platform file provides the same items: `default_config_dir`,
//! `hostname`, `create_private_dir`, `write_private`, `write_secret`,
//! `read_secret`, `elevated`, `relaunch_elevated`, `save_terminal`,
//! `restore_terminal`, `keep_window_open`, `shutdown_signal`
//! and the `service` module.

use std::path::Path;

#[cfg(unix)]
mod unix;
#[cfg(unix)]
pub use unix::*;

#[cfg(unix)]
#[path = "systemd.rs"]
pub mod service;

#[cfg(windows)]
mod windows;
#[cfg(windows)]
pub use windows::*;

#[cfg(windows)]
#[path = "windows_scm.rs"]
pub mod service;

/// `run` ends with this when the cloud no longer accepts the agent (revoked,
/// uninstalled elsewhere): the service manager must not start it again.
/// On Unix it is the exit status (EX_CONFIG; the unit has
/// `RestartPreventExitStatus=78`); on Windows the service stops with this
/// service-specific exit code, which its failure actions do not act on.
pub const EXIT_NOT_ACCEPTED: u8 = 78;

/// How the agent runs after the install.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// A service was installed, set to start at boot, and started.
    Service {
        /// Its name (the systemd unit, or the Windows service).
        name: String,
    },
    /// The admin starts it: the exact command.
    Manual {
        /// `… run --config-dir …`.
        command: String,
        /// Whether the service manager runs here (so the admin asked for no service).
        manager_runs: bool,
    },
}

/// The absolute form of `p` (without resolving links), or `p` itself.
pub fn absolute(p: &Path) -> std::path::PathBuf {
    std::path::absolute(p).unwrap_or_else(|_| p.to_owned())
}

/// This executable's path.
pub fn this_binary() -> std::path::PathBuf {
    let exe = std::env::current_exe().unwrap_or_else(|_| std::path::PathBuf::from("ferry-agent"));
    // Windows' canonical form is a `\\?\` path, which people and tools stumble on.
    if cfg!(windows) {
        exe
    } else {
        exe.canonicalize().unwrap_or(exe)
    }
}
