//! The interactive install wizard, in the terminal. It asks in the install
//! guide's order and checks each answer as it is given, so a mistake is
//! explained where it is made and answered again; nothing is written until
//! the last step. Ctrl-C (or end of input) cancels and leaves nothing behind.

use std::io::{BufRead, Write};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};

use zeroize::Zeroizing;

use super::{
    check_key, checklist, cloud_url_for, cloud_url_problem, dc_naming_context_or_certificate, dc_url_problem,
    default_dc_url, install, root_dn_mismatch, root_dn_problem, summary, Answers, DcRefused,
};
use crate::ad::tls::{self, DcCertificate};
use crate::ad::AdSettings;
use crate::config::AgentConfig;
use crate::platform::{self, restore_terminal, save_terminal, service};
use crate::preflight::{account_form_problem, account_name_problem};

/// What the wizard is started with.
pub struct Options {
    /// Where the config goes.
    pub config_dir: PathBuf,
    /// Set up the service where the service manager runs.
    pub service: bool,
    /// Accept any DC certificate (lab only).
    pub insecure_skip_tls_verify: bool,
    /// Trust the DC certificate with this SHA-256 (`--tls-fingerprint`): the CA is not asked for.
    pub tls_fingerprint: Option<String>,
}

/// The wizard was cancelled (Ctrl-C, end of input, or "q").
#[derive(Debug)]
pub struct Cancelled;

/// Set while the install writes: Ctrl-C then waits for it to finish.
static COMMITTING: AtomicBool = AtomicBool::new(false);
const CANCELLED: &str = "Cancelled: nothing was installed.";

/// Ctrl-C: cancel at once, unless the install is being written (then it
/// finishes, so nothing is left half-done).
fn handle_interrupts() {
    tokio::spawn(async {
        loop {
            if tokio::signal::ctrl_c().await.is_err() {
                return;
            }
            if COMMITTING.load(Ordering::SeqCst) {
                eprintln!("\nFinishing the install first; it takes a moment.");
                continue;
            }
            restore_terminal();
            eprintln!("\n{CANCELLED}");
            std::process::exit(130);
        }
    });
}

struct Term {
    /// Where lines are wrapped (the terminal's width).
    width: usize,
}

impl Term {
    fn new() -> Term {
        let columns = std::env::var("COLUMNS").ok().and_then(|c| c.parse().ok());
        Term {
            width: columns.or_else(platform::terminal_width).unwrap_or(80).max(40),
        }
    }

    fn say(&self, text: &str) {
        println!("{}", wrap(text, self.width));
    }

    fn ask(&self, prompt: &str, default: Option<&str>) -> Result<String, Cancelled> {
        match default {
            Some(d) if !d.is_empty() => print!("{prompt} [{d}]: "),
            _ => print!("{prompt}: "),
        }
        let _ = std::io::stdout().flush();
        let mut line = String::new();
        match std::io::stdin().lock().read_line(&mut line) {
            Ok(0) | Err(_) => Err(Cancelled),
            Ok(_) => {
                let v = line.trim().to_owned();
                Ok(if v.is_empty() {
                    default.unwrap_or_default().to_owned()
                } else {
                    v
                })
            }
        }
    }

    fn ask_secret(&self, prompt: &str) -> Result<Zeroizing<String>, Cancelled> {
        rpassword::prompt_password(format!("{prompt}: "))
            .map(Zeroizing::new)
            .map_err(|_| Cancelled)
    }

    fn yes(&self, prompt: &str, default_yes: bool) -> Result<bool, Cancelled> {
        let hint = if default_yes { "Y/n" } else { "y/N" };
        loop {
            let a = self.ask(&format!("{prompt} [{hint}]"), None)?.to_lowercase();
            match a.as_str() {
                "" => return Ok(default_yes),
                "y" | "yes" => return Ok(true),
                "n" | "no" => return Ok(false),
                _ => self.say("  Answer y or n."),
            }
        }
    }

    fn refuse(&self, message: &str) {
        for (i, line) in message.lines().enumerate() {
            if i == 0 {
                println!("{}", wrap(&format!("  ✗ {line}"), self.width));
            } else {
                println!("{}", wrap(&format!("  {line}"), self.width));
            }
        }
    }
}

/// Wraps prose lines between words at `width` columns, continuation lines
/// indented like the line (and past a leading `✓`/`✗`). Lines indented by
/// four or more spaces are commands or tables and stay whole, to be copied
/// as they are; so does a word longer than the line.
fn wrap(text: &str, width: usize) -> String {
    let mut out = Vec::new();
    for line in text.split('\n') {
        let indent = line.len() - line.trim_start_matches(' ').len();
        if indent >= 4 || line.chars().count() <= width {
            out.push(line.to_owned());
            continue;
        }
        let body = &line[indent..];
        let hang = indent
            + if body.starts_with("✗ ") || body.starts_with("✓ ") {
                2
            } else {
                0
            };
        let mut current = " ".repeat(indent);
        let mut has_word = false;
        for word in body.split(' ').filter(|w| !w.is_empty()) {
            if has_word && current.chars().count() + 1 + word.chars().count() > width {
                out.push(std::mem::replace(&mut current, " ".repeat(hang)));
                has_word = false;
            }
            if has_word {
                current.push(' ');
            }
            current.push_str(word);
            has_word = true;
        }
        out.push(current);
    }
    out.join("\n")
}

/// Runs the wizard; the exit code is 0 when the agent was installed.
pub async fn run(opts: Options) -> u8 {
    if opts.service && !platform::elevated() {
        // Windows with UAC: the service and the config directory need an administrator.
        println!("Setting up the agent's service needs an administrator: Windows asks for permission, and the wizard opens in a new window.");
        let mut args = vec!["install"];
        if opts.insecure_skip_tls_verify {
            args.push("--insecure-skip-tls-verify");
        }
        if let Some(pin) = &opts.tls_fingerprint {
            args.extend(["--tls-fingerprint", pin]);
        }
        let dir = opts.config_dir.display().to_string();
        args.extend(["--config-dir", &dir]);
        return match platform::relaunch_elevated(&args) {
            Ok(()) => 0,
            Err(e) => {
                println!("  ✗ {e}: open a prompt with \"Run as administrator\" and run ferry-agent install there");
                6
            }
        };
    }
    save_terminal();
    handle_interrupts();
    let code = match steps(&Term::new(), opts).await {
        Ok(code) => code,
        Err(Cancelled) => {
            restore_terminal();
            println!("\n{CANCELLED}");
            130
        }
    };
    platform::keep_window_open();
    code
}

async fn steps(t: &Term, opts: Options) -> Result<u8, Cancelled> {
    t.say("Ferry sync agent setup\n");
    t.say("This connects one Active Directory domain to your Ferry cloud directory, in both directions.");
    t.say("You need: the domain's Root DN, a service account delegated the six tasks of the install guide,");
    t.say("and a Connect Key from the console (Directories → your domain → Install a new Sync Agent).");
    t.say("Nothing is installed until the last step; Ctrl-C cancels at any time.\n");
    t.ask("Press Enter to start", None)?;

    if AgentConfig::exists(&opts.config_dir) {
        let what = AgentConfig::load(&opts.config_dir)
            .map(|c| format!("agent {} for {}", c.agent_id, c.domain))
            .unwrap_or_else(|_| "an agent".into());
        t.say(&format!(
            "\nNote: {what} is already installed in {}.",
            opts.config_dir.display()
        ));
        if !t.yes(
            "Replace it at the end? (the old agent is revoked once the new one works)",
            false,
        )? {
            t.say(&format!(
                "Nothing changed. To remove it: ferry-agent uninstall --config-dir {}",
                opts.config_dir.display()
            ));
            return Ok(0);
        }
    }

    t.say("\n[1/6] Cloud");
    let cloud_url = loop {
        let u = t.ask("Ferry cloud URL (Enter to take it from the Connect Key)", None)?;
        if u.is_empty() {
            break None;
        }
        match cloud_url_problem(&u) {
            Some(m) => t.refuse(&m),
            None => break Some(u),
        }
    };

    t.say("\n[2/6] Root DN and domain controller");
    let mut root_dn = String::new();
    let mut ad: Option<AdSettings> = None;
    loop {
        let r = t.ask("Root DN (e.g. DC=example,DC=com)", Some(&root_dn))?;
        if let Some(m) = root_dn_problem(&r) {
            t.refuse(&m);
            continue;
        }
        root_dn = r;
        // The DC, asked again until it answers; the Root DN stands.
        let (settings, served) = loop {
            let settings = match ad.take() {
                Some(s) => s,
                None => ask_dc(t, &root_dn, &opts)?,
            };
            match dc_naming_context_or_certificate(&settings).await {
                Ok(served) => break (settings, served),
                Err(DcRefused::Other(p)) => t.refuse(&p.message),
                Err(DcRefused::Untrusted { detail, certificate }) => {
                    ad = offer_pin(t, &settings, &detail, &certificate)?;
                }
            }
        };
        match root_dn_mismatch(&root_dn, &served, &settings.url) {
            Some(m) => {
                t.refuse(&m);
                root_dn = served;
                ad = Some(settings);
            }
            None => {
                t.say(&format!("  ✓ {} serves {served}", settings.url));
                ad = Some(settings);
                break;
            }
        }
    }
    let Some(ad) = ad else { return Err(Cancelled) };

    t.say("\n[3/6] Service account");
    t.say("The account the agent signs in as: an ordinary domain user, not an admin, delegated the six tasks.");
    let (mut bind_user, mut password) = ask_account(t)?;

    t.say("\n[4/6] Checks");
    loop {
        let report = checklist(&ad, &root_dn, &bind_user, &password).await;
        t.say(report.render().trim_end());
        if report.ok() {
            t.say("  All checks passed.");
            break;
        }
        let bind_failed = report.get("bind").is_some_and(|c| !c.ok);
        let a = t.ask(
            "Fix the items marked ✗, then press Enter to check again (a = change the account or password, q = quit)",
            None,
        )?;
        match a.to_lowercase().as_str() {
            "q" => return Err(Cancelled),
            "a" => (bind_user, password) = ask_account(t)?,
            _ if bind_failed && a.is_empty() => {
                t.say("  The sign-in failed: enter the account and password again.");
                (bind_user, password) = ask_account(t)?;
            }
            _ => {}
        }
    }

    t.say("\n[5/6] Connect Key");
    t.say("In the console: Directories → your domain → Install a new Sync Agent; copy the Connect Key.");
    let (cloud, key) = loop {
        let key = Zeroizing::new(t.ask("Connect Key", None)?);
        let cloud = match cloud_url_for(cloud_url.as_deref(), &key) {
            Ok(c) => c,
            Err(p) => {
                t.refuse(&p.message);
                continue;
            }
        };
        match check_key(&cloud, &key, &root_dn).await {
            Ok(info) => {
                t.say(&format!(
                    "  ✓ the key is for {} at {cloud} (valid until {})",
                    info.domain.name,
                    ferry_proto::time::utc(info.expires_at)
                ));
                break (cloud, key);
            }
            Err(p) => t.refuse(&p.message),
        }
    };

    t.say("\n[6/6] Install");
    let service = opts.service && service::manager_runs();
    t.say(&format!(
        "The agent is installed in {} (the password and token encrypted at rest){}.",
        opts.config_dir.display(),
        if service {
            format!(" and runs as the service {} ({})", service::NAME, service::MANAGER)
        } else {
            String::new()
        }
    ));
    if !t.yes("Install now?", true)? {
        return Err(Cancelled);
    }
    COMMITTING.store(true, Ordering::SeqCst);
    let answers = Answers {
        cloud_url: cloud,
        connect_key: key,
        ad,
        root_dn,
        bind_user,
        bind_password: password,
        config_dir: opts.config_dir,
        service: opts.service,
    };
    let done = install(&answers).await;
    COMMITTING.store(false, Ordering::SeqCst);
    match done {
        Ok(i) => {
            t.say("");
            print!("{}", summary(&i));
            Ok(0)
        }
        Err(p) => {
            t.refuse(&format!("the install failed and was undone: {}", p.message));
            Ok(p.step.exit_code())
        }
    }
}

fn ask_dc(t: &Term, root_dn: &str, opts: &Options) -> Result<AdSettings, Cancelled> {
    let url = loop {
        let u = t.ask("Domain controller", Some(&default_dc_url(root_dn)))?;
        match dc_url_problem(&u) {
            Some(m) => t.refuse(&m),
            None => break u,
        }
    };
    let mut s = AdSettings::new(&url);
    s.insecure_skip_tls_verify = opts.insecure_skip_tls_verify;
    s.starttls = url.starts_with("ldap://");
    s.timeout = std::time::Duration::from_secs(15);
    if let Some(pin) = &opts.tls_fingerprint {
        t.say(&format!(
            "  The DC's certificate is trusted by its SHA-256 {pin} (--tls-fingerprint)."
        ));
        s.tls_fingerprint = Some(pin.clone());
        return Ok(s);
    }
    let ca = loop {
        let c = t.ask(
            "CA certificate of the domain controller (PEM file; Enter for the system's trust store)",
            None,
        )?;
        if c.is_empty() {
            break None;
        }
        let p = PathBuf::from(&c);
        if p.is_file() {
            break Some(p);
        }
        t.refuse(&format!(
            "{c} is not a readable file: give the path of the CA's PEM file"
        ));
    };
    s.ca_file = ca;
    Ok(s)
}

/// The DC's certificate is not trusted: show it, and offer to trust that
/// one certificate (pinned by its SHA-256) once the admin compared it.
/// `None`: not trusted; the DC and its CA are asked again.
fn offer_pin(
    t: &Term,
    settings: &AdSettings,
    detail: &str,
    cert: &DcCertificate,
) -> Result<Option<AdSettings>, Cancelled> {
    t.refuse(&format!(
        "{} presents a certificate this host does not trust ({detail}).\n{}",
        settings.url,
        tls::refusal_advice(detail, false)
    ));
    t.say("  The certificate it presents:");
    t.say(&cert.describe());
    t.say("  Compare the SHA-256 with the certificate on the DC before trusting it. On the DC:");
    t.say("    openssl x509 -in cert.pem -noout -fingerprint -sha256    (Samba: the file of \"tls certfile\")");
    t.say("    certutil -hashfile dc.cer SHA256                          (Windows: the certificate exported as .cer)");
    if !t.yes(
        "Trust this certificate? (its SHA-256 is pinned in the agent's config)",
        false,
    )? {
        t.say("  Not trusted: give the CA certificate that signed it, or another domain controller.");
        return Ok(None);
    }
    let mut pinned = settings.clone();
    pinned.ca_file = None;
    pinned.tls_fingerprint = Some(cert.sha256.clone());
    Ok(Some(pinned))
}

fn ask_account(t: &Term) -> Result<(String, Zeroizing<String>), Cancelled> {
    let user = loop {
        let u = t.ask("Service account (DOMAIN\\user)", None)?;
        match account_form_problem(&u).or_else(|| account_name_problem(&u)) {
            Some(m) => t.refuse(&m),
            None => break u,
        }
    };
    let password = loop {
        let p = t.ask_secret(&format!("Password for {user}"))?;
        if p.is_empty() {
            t.refuse("the password is empty: enter the service account's password");
            continue;
        }
        break p;
    };
    Ok((user, password))
}

#[cfg(test)]
mod tests {
    use super::wrap;

    #[test]
    fn prose_wraps_between_words_and_commands_stay_whole() {
        let text = "  ✗ the DC's certificate is a CA certificate (CA:TRUE) used as the server's own certificate";
        let w = wrap(text, 40);
        assert!(w.lines().all(|l| l.chars().count() <= 40), "{w}");
        assert_eq!(
            w.split_whitespace().collect::<Vec<_>>(),
            text.split_whitespace().collect::<Vec<_>>()
        );
        assert!(
            w.lines()
                .skip(1)
                .all(|l| l.starts_with("    ") && !l.starts_with("     ")),
            "{w}"
        );
        let command =
            "    openssl x509 -in cert.pem -noout -fingerprint -sha256    (Samba: the file of \"tls certfile\")";
        assert_eq!(wrap(command, 40), command);
        let long = format!("SHA-256 {}", "AB:".repeat(40));
        assert_eq!(
            wrap(&long, 40).lines().nth(1).map(str::len),
            Some(120),
            "a long word stays whole"
        );
        assert_eq!(wrap("short\n\nlines", 40), "short\n\nlines");
    }
}
