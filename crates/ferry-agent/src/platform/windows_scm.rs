//! Running the agent as a Windows service, through the Service Control
//! Manager (the `windows-service` crate).
//!
//! The MSI creates the service `FerryAgent` (automatic start, LocalSystem);
//! `ferry-agent install` sets its command line to the config directory
//! chosen, its failure actions, and starts it. The service:
//! - starts at boot (automatic, delayed so the network is up);
//! - is restarted by the SCM when it fails: the process ends without
//!   reporting "stopped" (an error, a crash), after 5 s, 10 s, then 30 s;
//! - stops cleanly on Stop or at shutdown: the sync ends and the primary
//!   lease is released, then it reports "stopped" with exit code 0;
//! - stays stopped when the cloud no longer accepts the agent: it reports
//!   "stopped" with the service-specific exit code 78, and the SCM does not
//!   act on a stop it was told about (failure actions apply to crashes
//!   only; `FailureActionsOnNonCrashFailures` is off). That is systemd's
//!   `Restart=on-failure` with `RestartPreventExitStatus=78`.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context, Result};
use windows_service::service::{
    ServiceAccess, ServiceAction, ServiceActionType, ServiceControl, ServiceControlAccept, ServiceErrorControl,
    ServiceExitCode, ServiceFailureActions, ServiceFailureResetPeriod, ServiceInfo, ServiceStartType, ServiceState,
    ServiceStatus, ServiceType,
};
use windows_service::service_control_handler::{self, ServiceControlHandlerResult};
use windows_service::service_manager::{ServiceManager, ServiceManagerAccess};
use windows_service::{define_windows_service, service_dispatcher};

use super::{absolute, this_binary, Outcome, EXIT_NOT_ACCEPTED};
use crate::run::Exit;

/// The service's name (as `sc query FerryAgent` takes it).
pub const NAME: &str = "FerryAgent";
/// What the Services console shows.
pub const DISPLAY_NAME: &str = "Ferry sync agent";
const DESCRIPTION: &str = "Keeps an Active Directory domain and the Ferry cloud directory in step, in both directions.";
/// The service manager, as the wizard names it.
pub const MANAGER: &str = "the Windows Service Control Manager";
/// The service's exit code when its config is missing or unreadable (the
/// agent is not installed yet): stopped, not restarted.
pub const EXIT_NOT_INSTALLED: u32 = 2;

/// The SCM is always there on Windows.
pub fn manager_runs() -> bool {
    true
}

/// Whether this process may create and configure services.
pub fn can_manage() -> bool {
    ServiceManager::local_computer(
        None::<&str>,
        ServiceManagerAccess::CONNECT | ServiceManagerAccess::CREATE_SERVICE,
    )
    .is_ok()
}

/// How to look at the running service, for the install's summary.
pub fn how_to_watch(name: &str) -> String {
    format!(
        "sc query {name}; logs: {}",
        log_file(&super::default_config_dir()).display()
    )
}

/// The service's log file for a config directory: `…\Ferry\logs\ferry-agent.log`
/// beside `…\Ferry\agent` (outside it, so the config directory can be
/// swapped whole while the service writes its log).
pub fn log_file(config_dir: &Path) -> PathBuf {
    let dir = absolute(config_dir);
    dir.parent().unwrap_or(&dir).join("logs").join("ferry-agent.log")
}

/// Removes the service's log, and `…\Ferry\logs` and `…\Ferry` when that
/// leaves them empty (best effort: the uninstall goes on without it).
pub fn remove_logs(config_dir: &Path) {
    let log = log_file(config_dir);
    let _ = std::fs::remove_file(&log);
    let _ = std::fs::remove_file(log.with_extension("log.old"));
    if let Some(logs) = log.parent() {
        let _ = std::fs::remove_dir(logs);
        if let Some(ferry) = logs.parent() {
            let _ = std::fs::remove_dir(ferry);
        }
    }
}

/// The arguments the SCM starts the executable with.
pub fn service_arguments(config_dir: &Path) -> Vec<OsString> {
    vec![
        "service".into(),
        "--config-dir".into(),
        absolute(config_dir).into_os_string(),
    ]
}

/// The service, as the install sets it up.
pub fn service_info(binary: &Path, config_dir: &Path) -> ServiceInfo {
    ServiceInfo {
        name: NAME.into(),
        display_name: DISPLAY_NAME.into(),
        service_type: ServiceType::OWN_PROCESS,
        start_type: ServiceStartType::AutoStart,
        error_control: ServiceErrorControl::Normal,
        executable_path: binary.to_owned(),
        launch_arguments: service_arguments(config_dir),
        dependencies: vec![],
        // LocalSystem: the config directory is open to SYSTEM and Administrators only.
        account_name: None,
        account_password: None,
    }
}

/// Restart after a failure (5 s, 10 s, then every 30 s), the count reset
/// after a day without one.
pub fn failure_actions() -> ServiceFailureActions {
    let restart = |s| ServiceAction {
        action_type: ServiceActionType::Restart,
        delay: Duration::from_secs(s),
    };
    ServiceFailureActions {
        reset_period: ServiceFailureResetPeriod::After(Duration::from_secs(24 * 3600)),
        reboot_msg: None,
        command: None,
        actions: Some(vec![restart(5), restart(10), restart(30)]),
    }
}

/// The command that runs the agent in the foreground (in a console).
pub fn run_command(config_dir: &Path) -> String {
    format!(
        "{} run --config-dir {}",
        quoted(&this_binary()),
        quoted(&absolute(config_dir))
    )
}

fn quoted(p: &Path) -> String {
    let s = p.display().to_string();
    if s.contains([' ', '&', '(', ')', '^']) {
        format!("\"{s}\"")
    } else {
        s
    }
}

fn manager(access: ServiceManagerAccess) -> Result<ServiceManager> {
    ServiceManager::local_computer(None::<&str>, access).map_err(|e| {
        anyhow!("cannot open the Service Control Manager ({e}): run from an elevated prompt (Run as administrator)")
    })
}

const ALL: ServiceAccess = ServiceAccess::QUERY_STATUS
    .union(ServiceAccess::START)
    .union(ServiceAccess::STOP)
    .union(ServiceAccess::CHANGE_CONFIG)
    .union(ServiceAccess::QUERY_CONFIG)
    .union(ServiceAccess::DELETE);

/// Creates (or, made by the MSI, updates) the service, sets its failure
/// actions and (re)starts it.
pub fn install(config_dir: &Path) -> Result<Outcome> {
    let m = manager(ServiceManagerAccess::CONNECT | ServiceManagerAccess::CREATE_SERVICE)?;
    let info = service_info(&this_binary(), config_dir);
    let (service, created) = match m.open_service(NAME, ALL) {
        Ok(s) => {
            s.change_config(&info)
                .with_context(|| format!("cannot update the service {NAME}"))?;
            (s, false)
        }
        Err(_) => (
            m.create_service(&info, ALL)
                .with_context(|| format!("cannot create the service {NAME}"))?,
            true,
        ),
    };
    let configured = service
        .set_description(DESCRIPTION)
        .and_then(|_| supported("delayed automatic start", service.set_delayed_auto_start(true)))
        .and_then(|_| supported("restart on failure", service.update_failure_actions(failure_actions())))
        .and_then(|_| {
            supported(
                "no restart after a reported stop",
                service.set_failure_actions_on_non_crash_failures(false),
            )
        })
        .with_context(|| format!("cannot configure the service {NAME}"));
    let started = configured.and_then(|_| {
        stop_and_wait(&service)?;
        service
            .start::<&str>(&[])
            .with_context(|| format!("cannot start the service {NAME}"))?;
        wait_for(&service, ServiceState::Running)
    });
    if let Err(e) = started {
        // Undone: a service this install created goes; the MSI's stays, stopped.
        let _ = stop_and_wait(&service);
        if created {
            let _ = service.delete();
        }
        return Err(e);
    }
    Ok(Outcome::Service { name: NAME.into() })
}

/// A setting every Windows since Vista has, but Wine's SCM refuses
/// (`ERROR_INVALID_LEVEL`): said, and the install goes on.
fn supported(what: &str, r: windows_service::Result<()>) -> windows_service::Result<()> {
    const ERROR_INVALID_LEVEL: i32 = 124;
    match r {
        Err(windows_service::Error::Winapi(e)) if e.raw_os_error() == Some(ERROR_INVALID_LEVEL) => {
            tracing::warn!("this Service Control Manager does not support {what} (Wine?): {e}");
            Ok(())
        }
        other => other,
    }
}

fn stop_and_wait(service: &windows_service::service::Service) -> Result<()> {
    let st = service.query_status()?;
    if st.current_state != ServiceState::Stopped {
        let _ = service.stop();
        wait_for(service, ServiceState::Stopped)?;
    }
    Ok(())
}

fn wait_for(service: &windows_service::service::Service, want: ServiceState) -> Result<()> {
    let start = Instant::now();
    loop {
        let st = service.query_status()?;
        if st.current_state == want {
            return Ok(());
        }
        if want == ServiceState::Running
            && st.current_state == ServiceState::Stopped
            && start.elapsed() > Duration::from_secs(2)
        {
            return Err(anyhow!(
                "the service {NAME} stopped right after starting ({}); see {}",
                describe_exit(&st.exit_code),
                log_file(&super::default_config_dir()).display()
            ));
        }
        if start.elapsed() > Duration::from_secs(30) {
            return Err(anyhow!("the service {NAME} did not reach {want:?} within 30 s"));
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// Stops and deletes the service.
pub fn remove(name: &str) -> Result<()> {
    let m = manager(ServiceManagerAccess::CONNECT)?;
    let Ok(service) = m.open_service(name, ALL) else {
        return Ok(());
    };
    let _ = stop_and_wait(&service);
    service
        .delete()
        .with_context(|| format!("cannot delete the service {name}"))
}

/// The service's state in words (`running`, `stopped (…)`).
pub fn state(name: &str) -> String {
    let st = manager(ServiceManagerAccess::CONNECT)
        .and_then(|m| Ok(m.open_service(name, ServiceAccess::QUERY_STATUS)?))
        .and_then(|s| Ok(s.query_status()?));
    match st {
        Ok(st) => describe_state(st.current_state, &st.exit_code),
        Err(e) => format!("unknown ({e})"),
    }
}

/// A state and exit code in words.
pub fn describe_state(state: ServiceState, exit: &ServiceExitCode) -> String {
    match state {
        ServiceState::Running => "running".into(),
        ServiceState::Stopped => format!("stopped ({})", describe_exit(exit)),
        other => format!("{other:?}").to_lowercase(),
    }
}

fn describe_exit(exit: &ServiceExitCode) -> String {
    match exit {
        ServiceExitCode::Win32(0) => "cleanly".into(),
        ServiceExitCode::ServiceSpecific(c) if *c == u32::from(EXIT_NOT_ACCEPTED) => {
            format!("exit {c}: {}", crate::run::NOT_ACCEPTED)
        }
        ServiceExitCode::ServiceSpecific(EXIT_NOT_INSTALLED) => {
            format!("exit {EXIT_NOT_INSTALLED}: no agent is installed; run ferry-agent install")
        }
        ServiceExitCode::ServiceSpecific(c) => format!("service exit code {c}"),
        ServiceExitCode::Win32(c) => format!("Windows error {c}"),
    }
}

/// Starts the service again (an uninstall that could not finish).
pub fn start(name: &str) -> Result<()> {
    let m = manager(ServiceManagerAccess::CONNECT)?;
    m.open_service(name, ServiceAccess::START)?
        .start::<&str>(&[])
        .with_context(|| format!("cannot start the service {name}"))
}

/// Stops the service and waits until it stopped (its lease released).
pub fn stop(name: &str) -> Result<()> {
    let m = manager(ServiceManagerAccess::CONNECT)?;
    let s = m.open_service(name, ServiceAccess::STOP | ServiceAccess::QUERY_STATUS)?;
    stop_and_wait(&s)
}

/// How the service reports its end to the SCM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Report {
    /// "Stopped" with this exit code: the SCM does not restart it.
    Stopped(ServiceExitCode),
    /// Leave without reporting: the SCM sees a failure and, after the
    /// delay of its failure actions, starts the service again.
    Fail,
}

/// What a run's end means to the SCM.
pub fn report_for(ended: &Result<Exit>, config_dir: &Path) -> Report {
    match ended {
        Ok(Exit::Stopped) => Report::Stopped(ServiceExitCode::NO_ERROR),
        Ok(Exit::NotAccepted) => Report::Stopped(ServiceExitCode::ServiceSpecific(u32::from(EXIT_NOT_ACCEPTED))),
        // Not installed: a restart cannot help until `ferry-agent install` runs.
        Err(_) if !crate::config::AgentConfig::exists(config_dir) => {
            Report::Stopped(ServiceExitCode::ServiceSpecific(EXIT_NOT_INSTALLED))
        }
        Err(_) => Report::Fail,
    }
}

static CONFIG_DIR: OnceLock<PathBuf> = OnceLock::new();

define_windows_service!(ffi_service_main, service_main);

/// `ferry-agent service`: hands the process to the SCM, which calls back
/// into [`service_main`]. Fails at once when not started by the SCM.
pub fn run_as_service(config_dir: PathBuf) -> Result<()> {
    let _ = CONFIG_DIR.set(config_dir);
    service_dispatcher::start(NAME, ffi_service_main).map_err(|e| {
        anyhow!("`ferry-agent service` is for the Service Control Manager ({e}); in a console use `ferry-agent run`")
    })
}

fn service_main(_arguments: Vec<OsString>) {
    let dir = CONFIG_DIR.get().cloned().unwrap_or_else(super::default_config_dir);
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let handler = move |control| match control {
        ServiceControl::Stop | ServiceControl::Shutdown | ServiceControl::Preshutdown => {
            let _ = stop_tx.send(true);
            ServiceControlHandlerResult::NoError
        }
        ServiceControl::Interrogate => ServiceControlHandlerResult::NoError,
        _ => ServiceControlHandlerResult::NotImplemented,
    };
    let status = match service_control_handler::register(NAME, handler) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "cannot register with the Service Control Manager");
            std::process::exit(1);
        }
    };
    let set = |state: ServiceState, exit: ServiceExitCode, wait: Duration| {
        let accepted = if state == ServiceState::Running {
            ServiceControlAccept::STOP | ServiceControlAccept::SHUTDOWN
        } else {
            ServiceControlAccept::empty()
        };
        if let Err(e) = status.set_service_status(ServiceStatus {
            service_type: ServiceType::OWN_PROCESS,
            current_state: state,
            controls_accepted: accepted,
            exit_code: exit,
            checkpoint: 0,
            wait_hint: wait,
            process_id: None,
        }) {
            tracing::warn!(error = %e, ?state, "cannot report the service's state");
        }
    };
    set(ServiceState::Running, ServiceExitCode::NO_ERROR, Duration::ZERO);
    let ended = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt.block_on(async {
            let mut rx = stop_rx;
            let set = &set;
            let stop = async move {
                let _ = rx.wait_for(|stop| *stop).await;
                tracing::info!("stop requested by the Service Control Manager");
                // Ending the sync and releasing the lease takes a moment.
                set(
                    ServiceState::StopPending,
                    ServiceExitCode::NO_ERROR,
                    Duration::from_secs(15),
                );
            };
            crate::run::installed_agent(&dir, stop).await
        }),
        Err(e) => Err(anyhow!("cannot start: {e}")),
    };
    if let Err(e) = &ended {
        tracing::error!("{e:#}");
    }
    match report_for(&ended, &dir) {
        Report::Stopped(code) => set(ServiceState::Stopped, code, Duration::ZERO),
        Report::Fail => std::process::exit(1),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn the_service_runs_the_agent_on_its_config_at_boot_as_local_system() {
        let info = service_info(
            Path::new(r"C:\Program Files\Ferry\ferry-agent.exe"),
            Path::new(r"C:\ProgramData\Ferry\agent"),
        );
        assert_eq!(info.name, NAME);
        assert_eq!(info.start_type, ServiceStartType::AutoStart);
        assert_eq!(info.service_type, ServiceType::OWN_PROCESS);
        assert!(info.account_name.is_none(), "LocalSystem");
        assert_eq!(
            info.launch_arguments,
            ["service", "--config-dir", r"C:\ProgramData\Ferry\agent"].map(OsString::from)
        );
        assert_eq!(
            log_file(Path::new(r"C:\ProgramData\Ferry\agent")),
            Path::new(r"C:\ProgramData\Ferry\logs\ferry-agent.log")
        );
    }

    #[test]
    fn failures_restart_it_and_a_revoked_agent_stays_stopped() {
        let f = failure_actions();
        let actions = f.actions.unwrap();
        assert!(actions.iter().all(|a| a.action_type == ServiceActionType::Restart));
        assert_eq!(actions[0].delay, Duration::from_secs(5));
        let tmp = tempfile::tempdir().unwrap();
        let installed = tmp.path().join("agent");
        std::fs::create_dir(&installed).unwrap();
        std::fs::write(installed.join(crate::config::CONFIG_FILE), "{}").unwrap();
        // A clean stop and a revoked agent are reported as stopped: no restart.
        assert_eq!(
            report_for(&Ok(Exit::Stopped), &installed),
            Report::Stopped(ServiceExitCode::NO_ERROR)
        );
        assert_eq!(
            report_for(&Ok(Exit::NotAccepted), &installed),
            Report::Stopped(ServiceExitCode::ServiceSpecific(78))
        );
        // Any other error is a failure the SCM restarts after…
        assert_eq!(report_for(&Err(anyhow!("DC down")), &installed), Report::Fail);
        // …unless nothing is installed yet (the MSI's service before the wizard ran).
        assert_eq!(
            report_for(&Err(anyhow!("no config")), &tmp.path().join("none")),
            Report::Stopped(ServiceExitCode::ServiceSpecific(EXIT_NOT_INSTALLED))
        );
        let s = describe_state(ServiceState::Stopped, &ServiceExitCode::ServiceSpecific(78));
        assert!(s.contains("exit 78") && s.contains("new Connect Key"), "{s}");
        assert_eq!(
            describe_state(ServiceState::Running, &ServiceExitCode::NO_ERROR),
            "running"
        );
    }

    #[test]
    fn the_manual_command_quotes_paths_with_spaces() {
        let c = run_command(Path::new(r"C:\Program Data\Ferry"));
        assert!(c.ends_with(r#" run --config-dir "C:\Program Data\Ferry""#), "{c}");
    }
}
