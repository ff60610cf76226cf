//! Running the agent as a systemd service, where systemd runs.

use std::path::Path;
use std::process::Command;

use anyhow::{bail, Context, Result};

use super::{absolute, this_binary, Outcome, EXIT_NOT_ACCEPTED};

/// The unit's name.
pub const NAME: &str = "ferry-agent.service";
/// Where the unit goes.
pub const UNIT_DIR: &str = "/etc/systemd/system";
/// The service manager, as the wizard names it.
pub const MANAGER: &str = "systemd";

/// Whether systemd is this host's init (as `sd_booted()` decides).
pub fn manager_runs() -> bool {
    Path::new("/run/systemd/system").is_dir()
}

/// How to look at the running service, for the install's summary.
pub fn how_to_watch(unit: &str) -> String {
    format!("systemctl status {unit}; logs: journalctl -u {unit}")
}

fn quoted(p: &Path) -> String {
    let s = p.display().to_string();
    if s.chars().all(|c| c.is_ascii_alphanumeric() || "/._-+:@".contains(c)) {
        s
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

/// The command that runs the agent in the foreground.
pub fn run_command(config_dir: &Path) -> String {
    format!(
        "{} run --config-dir {}",
        quoted(&this_binary()),
        quoted(&absolute(config_dir))
    )
}

/// The unit file: the agent runs as root (it reads its root-only config),
/// with the file system read-only to it but its config directory (where it
/// records the cloud's new TLS key when the old one vouched for it) and no
/// way to gain privileges.
pub fn unit_file(binary: &Path, config_dir: &Path) -> String {
    let dir = absolute(config_dir);
    format!(
        "# Written by `ferry-agent install`; `ferry-agent uninstall` removes it.\n\
[Unit]\n\
Description=Ferry sync agent (Active Directory <-> Ferry cloud directory)\n\
Wants=network-online.target\n\
After=network-online.target\n\
\n\
[Service]\n\
Type=simple\n\
ExecStart={} run --config-dir {}\n\
Restart=on-failure\n\
RestartSec=5\n\
RestartPreventExitStatus={EXIT_NOT_ACCEPTED}\n\
NoNewPrivileges=yes\n\
ProtectSystem=strict\n\
ProtectHome=yes\n\
PrivateTmp=yes\n\
PrivateDevices=yes\n\
ProtectKernelTunables=yes\n\
ProtectKernelModules=yes\n\
ProtectControlGroups=yes\n\
RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX\n\
CapabilityBoundingSet=\n\
ReadWritePaths={}\n\
\n\
[Install]\n\
WantedBy=multi-user.target\n",
        quoted(binary),
        quoted(&dir),
        quoted(&dir),
    )
}

fn systemctl(args: &[&str]) -> Result<()> {
    let out = Command::new("systemctl")
        .args(args)
        .output()
        .context("cannot run systemctl")?;
    if !out.status.success() {
        bail!(
            "systemctl {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// Installs, enables and (re)starts the unit.
pub fn install(config_dir: &Path) -> Result<Outcome> {
    let path = Path::new(UNIT_DIR).join(NAME);
    std::fs::write(&path, unit_file(&this_binary(), config_dir))
        .with_context(|| format!("cannot write {}", path.display()))?;
    let started = systemctl(&["daemon-reload"])
        .and_then(|_| systemctl(&["enable", NAME]))
        .and_then(|_| systemctl(&["restart", NAME]));
    if let Err(e) = started {
        let _ = remove(NAME);
        return Err(e);
    }
    Ok(Outcome::Service { name: NAME.into() })
}

/// Stops, disables and removes the unit.
pub fn remove(unit: &str) -> Result<()> {
    let _ = systemctl(&["disable", "--now", unit]);
    let path = Path::new(UNIT_DIR).join(unit);
    match std::fs::remove_file(&path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("cannot remove {}", path.display())),
    }
    let _ = systemctl(&["daemon-reload"]);
    Ok(())
}

/// Nothing to remove: the journal keeps systemd's logs, and rotates them.
pub fn remove_logs(_config_dir: &Path) {}

/// `systemctl is-active` of the unit, or why it cannot be told.
pub fn state(unit: &str) -> String {
    match Command::new("systemctl").args(["is-active", unit]).output() {
        Ok(o) => String::from_utf8_lossy(&o.stdout).trim().to_owned(),
        Err(e) => format!("unknown ({e})"),
    }
}

/// Starts the unit again (an uninstall that could not finish).
pub fn start(unit: &str) -> Result<()> {
    systemctl(&["start", unit])
}

/// Stops the unit.
pub fn stop(unit: &str) -> Result<()> {
    systemctl(&["stop", unit])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_unit_runs_the_agent_hardened_and_never_restarts_a_revoked_one() {
        let u = unit_file(Path::new("/usr/local/bin/ferry-agent"), Path::new("/etc/ferry agent"));
        assert!(u.contains("ExecStart=/usr/local/bin/ferry-agent run --config-dir '/etc/ferry agent'\n"));
        assert!(u.contains("RestartPreventExitStatus=78\n"));
        assert!(u.contains("NoNewPrivileges=yes\n") && u.contains("ProtectSystem=strict\n"));
        assert!(u.contains("ReadWritePaths='/etc/ferry agent'\n"));
        assert!(u.contains("WantedBy=multi-user.target\n"));
    }

    #[test]
    fn the_manual_command_is_absolute_and_quoted() {
        let c = run_command(Path::new("/tmp/it's here"));
        assert!(c.ends_with(" run --config-dir '/tmp/it'\\''s here'"), "{c}");
        assert!(c.starts_with('/') || c.starts_with('\''), "{c}");
    }
}
