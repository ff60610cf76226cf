//! `ferry-bench`: Ferry measured against its limits, on this machine.
//!
//! A Samba AD DC is filled with a benchmark directory (bulk, not counted);
//! the baseline is a raw paged `ldapsearch` dump of the same objects with
//! the same attributes from the same DC. Then the real `ferry-cloud` (SQLite)
//! and the real `ferry-agent` (installed with a Connect Key) run, and each
//! figure is measured from outside: import time, change latency each way,
//! peak RSS (`VmHWM`), idle CPU (`/proc/PID/stat`), SCIM throughput.
//! Run it with `scripts/bench` (release build).
//!
//! `--postgres` runs the cloud on a throwaway PostgreSQL
//! (`scripts/test-postgres`) instead of SQLite; `--instances 2` adds a
//! second `ferry-cloud` on the same database: the agent talks to the first,
//! every SCIM write and read of the figures goes to the second, so a cloud
//! → AD change crosses instances (LISTEN/NOTIFY) as behind a load balancer.

#![recursion_limit = "256"]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use clap::Parser;
use ferry_agent::ad::mapping::READ_ATTRS;
use ferry_agent::ad::{AdConnection, AdSettings, USERS_AND_GROUPS};
use serde_json::{json, Value};

#[derive(Parser)]
#[command(name = "ferry-bench", about = "Ferry's benchmark (run it with scripts/bench)")]
struct Opts {
    /// Users in the benchmark directory.
    #[arg(long, default_value_t = 10_000)]
    users: usize,
    /// Groups (each user is in 5 on average; one group in five is nested).
    #[arg(long, default_value_t = 1_000)]
    groups: usize,
    /// Single changes timed in each direction.
    #[arg(long, default_value_t = 50)]
    changes: usize,
    /// Changes made on each side while the agent is stopped, for the
    /// catch-up figure (at most half the users on each side).
    #[arg(long, default_value_t = 3_000)]
    catchup: usize,
    /// How long the agent is watched while idle.
    #[arg(long, default_value_t = 60)]
    idle_secs: u64,
    /// How long each SCIM throughput figure runs.
    #[arg(long, default_value_t = 5)]
    scim_secs: u64,
    /// Users in the store when the console's Users page is timed (topped
    /// up through SCIM when the directory has fewer).
    #[arg(long, default_value_t = 100_000)]
    console_users: usize,
    /// Also write the figures as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Keep the filled DC in this directory and reuse it on later runs of
    /// the same size (filling 10,000 users takes minutes).
    #[arg(long)]
    dc_dir: Option<PathBuf>,
    /// Where ferry-cloud and ferry-agent are (default: next to this binary).
    #[arg(long)]
    bin_dir: Option<PathBuf>,
    /// The loopback address of the benchmark's DC (default: a free 127.79.x.y).
    #[arg(long)]
    dc_ip: Option<String>,
    /// Run the cloud on a throwaway PostgreSQL instead of SQLite.
    #[arg(long)]
    postgres: bool,
    /// Cloud instances on the one database (2 needs --postgres): the agent
    /// uses the first, SCIM the last.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u8).range(1..=2))]
    instances: u8,
    /// Fill the DC in --dc-dir (and delegate the service account), then
    /// stop: a 100,000-user fill takes over half an hour, best done before
    /// the measured run and away from other work.
    #[arg(long, requires = "dc_dir")]
    fill_only: bool,
}

/// A throwaway PostgreSQL (`scripts/test-postgres`), stopped when dropped.
struct Postgres {
    dir: PathBuf,
    url: String,
}

impl Postgres {
    fn start(dir: &Path) -> Result<Postgres> {
        let port = free_port()?;
        let out = Command::new("bash")
            .arg("scripts/test-postgres")
            .arg("start")
            .arg(dir)
            .arg(port.to_string())
            .stderr(Stdio::inherit())
            .output()?;
        if !out.status.success() {
            bail!("scripts/test-postgres start failed");
        }
        let admin = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        let pg = Postgres {
            dir: dir.to_owned(),
            url: match admin.rsplit_once('/') {
                Some((server, _)) => format!("{server}/ferry_bench"),
                None => bail!("scripts/test-postgres printed no URL"),
            },
        };
        let st = Command::new("psql")
            .arg(&admin)
            .args(["-q", "-c", "CREATE DATABASE ferry_bench"])
            .status();
        if !st.is_ok_and(|s| s.success()) {
            bail!("cannot create the benchmark database (psql)");
        }
        Ok(pg)
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        let _ = Command::new("bash")
            .arg("scripts/test-postgres")
            .arg("stop")
            .arg(&self.dir)
            .status();
    }
}

/// Starts `ferry-cloud serve` on a free port and waits for `/healthz`.
async fn start_cloud(bin: &Path, store: &[std::ffi::OsString], log: &Path) -> Result<(Proc, String)> {
    let port = free_port()?;
    let base_url = format!("http://127.0.0.1:{port}");
    let proc = Proc(
        Command::new(bin.join("ferry-cloud"))
            .args(["serve", "--listen", &format!("127.0.0.1:{port}")])
            .args(store)
            .stderr(std::fs::File::create(log)?)
            .spawn()?,
    );
    let http = reqwest::Client::new();
    let ready = Instant::now();
    while http.get(format!("{base_url}/healthz")).send().await.is_err() {
        if ready.elapsed() > Duration::from_secs(30) {
            bail!("ferry-cloud did not start (see {})", log.display());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok((proc, base_url))
}

fn say(s: &str) {
    eprintln!("==> {s}");
}

/// A child process, killed when dropped.
struct Proc(Child);

impl Proc {
    fn pid(&self) -> u32 {
        self.0.id()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A DC started by `scripts/samba-dc`, stopped when dropped.
struct Dc {
    vars: std::collections::HashMap<String, String>,
    dir: PathBuf,
}

impl Dc {
    /// Starts the DC kept in `dir` again.
    fn resume(dir: &Path) -> Result<Dc> {
        let out = Command::new("bash")
            .args(["scripts/samba-dc", "resume"])
            .arg(dir)
            .output()
            .context("run scripts/samba-dc")?;
        if !out.status.success() {
            bail!(
                "scripts/samba-dc resume failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(Dc {
            vars: parse_vars(&String::from_utf8_lossy(&out.stdout)),
            dir: dir.to_owned(),
        })
    }

    fn start(dir: &Path, chosen: Option<&str>) -> Result<Dc> {
        for n in 0..20u32 {
            let ip = match chosen {
                Some(ip) => ip.to_owned(),
                None => format!("127.79.{}.{}", (std::process::id() + n) % 250 + 1, n + 1),
            };
            let out = Command::new("bash")
                .args(["scripts/samba-dc", "start"])
                .arg(dir)
                .arg(&ip)
                .output()
                .context("run scripts/samba-dc (run the benchmark from the repository root)")?;
            let err = String::from_utf8_lossy(&out.stderr);
            if !out.status.success() {
                if err.contains("is taken") && chosen.is_none() {
                    continue;
                }
                bail!("scripts/samba-dc failed: {err}");
            }
            return Ok(Dc {
                vars: parse_vars(&String::from_utf8_lossy(&out.stdout)),
                dir: dir.to_owned(),
            });
        }
        bail!("no free loopback address for the DC")
    }

    fn var(&self, k: &str) -> String {
        self.vars.get(k).cloned().unwrap_or_default()
    }

    fn settings(&self) -> AdSettings {
        let mut s = AdSettings::new(&self.var("FERRY_DC_LDAPS_URL"));
        s.ca_file = Some(PathBuf::from(self.var("FERRY_DC_CA_FILE")));
        s
    }

    async fn admin(&self) -> Result<AdConnection> {
        let mut c = AdConnection::connect(&self.settings()).await?;
        c.bind(&self.var("FERRY_DC_ADMIN_BIND"), &self.var("FERRY_DC_ADMIN_PASSWORD"))
            .await?;
        Ok(c)
    }
}

impl Drop for Dc {
    fn drop(&mut self) {
        let _ = Command::new("bash")
            .args(["scripts/samba-dc", "stop"])
            .arg(&self.dir)
            .output();
    }
}

fn parse_vars(out: &str) -> std::collections::HashMap<String, String> {
    out.lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

/// Peak resident set size (kernel's high-water mark), MiB.
fn peak_rss_mib(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|kb| kb.parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

/// User + system CPU time of a process, in clock ticks.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = after.split_whitespace().collect();
    // After the name: state is field 3; utime 14 and stime 15 (1-based).
    let get = |i: usize| f.get(i - 3).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    get(14) + get(15)
}

/// User + system CPU time of the DC started from `dir` (its samba process
/// and every process under it), in clock ticks.
fn dc_cpu_ticks(dir: &Path) -> u64 {
    pid_file_tree_ticks(&dir.join("samba.pid"))
}

/// User + system CPU time of the process named on the first line of
/// `pid_file` and every process under it, in clock ticks (0 without one).
fn pid_file_tree_ticks(pid_file: &Path) -> u64 {
    let Some(root) = std::fs::read_to_string(pid_file)
        .ok()
        .and_then(|p| p.lines().next()?.trim().parse::<u32>().ok())
    else {
        return 0;
    };
    let parent_of = |pid: u32| -> Option<u32> {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        stat.rsplit_once(')')?.1.split_whitespace().nth(1)?.parse().ok()
    };
    let mut total = 0;
    for pid in std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
    {
        let mut p = pid;
        for _ in 0..8 {
            if p == root {
                total += cpu_ticks(pid);
                break;
            }
            match parent_of(p) {
                Some(pp) if pp > 1 => p = pp,
                _ => break,
            }
        }
    }
    total
}

fn clock_ticks() -> f64 {
    nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .map_or(100.0, |v| v as f64)
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((p / 100.0) * (sorted.len() as f64 - 1.0)).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    percentile(v, 50.0)
}

fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

#[derive(Clone)]
struct Cloud {
    base: String,
    token: String,
    http: reqwest::Client,
}

impl Cloud {
    async fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Result<(u16, Value)> {
        let mut r = self
            .http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(&self.token);
        if let Some(b) = body {
            r = r.json(&b);
        }
        let resp = r.send().await?;
        let st = resp.status().as_u16();
        Ok((st, resp.json().await.unwrap_or(Value::Null)))
    }

    async fn ok(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Result<Value> {
        let (st, v) = self.call(method, path, body).await?;
        if !(200..300).contains(&st) {
            bail!("{path}: HTTP {st}: {v}");
        }
        Ok(v)
    }

    async fn total(&self, resource: &str) -> Result<u64> {
        let v = self
            .ok(reqwest::Method::GET, &format!("/scim/v2/{resource}?count=0"), None)
            .await?;
        Ok(v["totalResults"].as_u64().unwrap_or(0))
    }

    async fn user(&self, sam: &str) -> Result<Value> {
        let v = self
            .ok(
                reqwest::Method::GET,
                &format!("/scim/v2/Users?filter=userName%20eq%20%22{sam}%22"),
                None,
            )
            .await?;
        Ok(v["Resources"][0].clone())
    }
}

/// The catch-up figure: with the agent stopped, `n` users get a new title
/// in AD and `n` others a new title in the cloud; the agent (`start`) is
/// started and timed until both sides hold every change, each side read
/// whole. Returns the time and the agent's peak RSS meanwhile.
async fn catch_up(
    n: usize,
    users: usize,
    base: &str,
    dc: &Dc,
    cloud: &Cloud,
    start: impl FnOnce() -> Result<Proc>,
) -> Result<(f64, f64)> {
    let stamp = format!("{}", std::process::id());
    let mut admin = dc.admin().await?;
    for i in 0..n {
        let title = format!("night-ad-{stamp}-{i}");
        admin
            .set_attributes(&user_dn((2 * i) % users, base), &[("title", Some(&title))])
            .await?;
    }
    for i in 0..n {
        let u = cloud.user(&format!("u{:06}", (2 * i + 1) % users)).await?;
        let id = u["id"].as_str().unwrap_or_default().to_owned();
        cloud
            .ok(
                reqwest::Method::PATCH,
                &format!("/scim/v2/Users/{id}"),
                Some(json!({"schemas": ["urn:ietf:params:scim:api:messages:2.0:PatchOp"],
                            "Operations": [{"op": "replace", "path": "title", "value": format!("night-cloud-{stamp}-{i}")}]})),
            )
            .await?;
    }
    let started = Instant::now();
    let agent = start()?;
    let (ad_prefix, cloud_prefix) = (format!("night-ad-{stamp}-"), format!("night-cloud-{stamp}-"));
    loop {
        // The cloud, whole: every AD change there.
        let mut in_cloud = 0;
        let mut page = 1;
        loop {
            let v = cloud
                .ok(
                    reqwest::Method::GET,
                    &format!("/scim/v2/Users?startIndex={page}&count=1000&attributes=title"),
                    None,
                )
                .await?;
            let rs = v["Resources"].as_array().cloned().unwrap_or_default();
            in_cloud += rs
                .iter()
                .filter(|u| u["title"].as_str().is_some_and(|t| t.starts_with(&ad_prefix)))
                .count();
            if rs.len() < 1000 {
                break;
            }
            page += 1000;
        }
        // AD, whole: every cloud change there.
        let in_ad = admin
            .search_paged(
                base,
                ldap3::Scope::Subtree,
                &format!("(title={}*)", ldap3::ldap_escape(cloud_prefix.as_str())),
                &["1.1"],
            )
            .await?
            .len();
        if in_cloud == n && in_ad == n {
            break;
        }
        if started.elapsed() > Duration::from_secs(1800) {
            bail!("no catch-up in 30 min: {in_cloud}/{n} AD changes in the cloud, {in_ad}/{n} cloud changes in AD");
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let secs = started.elapsed().as_secs_f64();
    Ok((secs, peak_rss_mib(agent.pid())))
}

fn user_dn(i: usize, base: &str) -> String {
    format!("CN=User {i:06},OU=People,OU=Bench,{base}")
}

/// A raw paged `ldapsearch` of what `filter` takes, in pages of `page`,
/// with the attributes the agent reads, as Administrator; its output piped
/// (`count`) or dropped.
fn ldapsearch(dc: &Dc, base: &str, filter: &str, page: u32, count: bool) -> Command {
    let mut c = Command::new("ldapsearch");
    c.args([
        "-x",
        "-LLL",
        "-o",
        "ldif-wrap=no",
        "-E",
        &format!("pr={page}/noprompt"),
        "-H",
    ])
    .arg(dc.var("FERRY_DC_LDAPS_URL"))
    .arg("-D")
    .arg(format!("CN=Administrator,CN=Users,{base}"))
    .arg("-w")
    .arg(dc.var("FERRY_DC_ADMIN_PASSWORD"))
    .args(["-b", base, filter])
    .args(READ_ATTRS)
    .env("LDAPTLS_CACERT", dc.var("FERRY_DC_CA_FILE"))
    .stdout(if count { Stdio::piped() } else { Stdio::null() })
    .stderr(Stdio::null());
    c
}

/// Times a raw paged `ldapsearch` dump of what the agent reads: one search
/// of the users and groups (median of 3).
fn baseline(dc: &Dc, base: &str) -> Result<(f64, usize)> {
    let run = |count: bool| -> Result<(f64, usize)> {
        let start = Instant::now();
        let out = ldapsearch(dc, base, USERS_AND_GROUPS, 1000, count).output()?;
        let secs = start.elapsed().as_secs_f64();
        if !out.status.success() {
            bail!("ldapsearch failed ({})", out.status);
        }
        let n = String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| l.starts_with("dn:"))
            .count();
        Ok((secs, n))
    };
    let (_, n) = run(true)?;
    let mut times = Vec::new();
    for _ in 0..3 {
        times.push(run(false)?.0);
    }
    Ok((median(&mut times), n))
}

/// Times the same dump as the import reads it: two `ldapsearch`es at once,
/// the users' in pages of 1,000 and, 30 ms later (another Samba worker then
/// takes it), the groups' in pages of 250 (median of 3). Shown beside the
/// baseline, not instead of it.
fn split_baseline(dc: &Dc, base: &str) -> Result<f64> {
    let mut times = Vec::new();
    for _ in 0..3 {
        let start = Instant::now();
        let mut users = Proc(ldapsearch(dc, base, ferry_agent::ad::USERS, 1000, false).spawn()?);
        std::thread::sleep(Duration::from_millis(30));
        let groups = ldapsearch(dc, base, ferry_agent::ad::GROUPS, 250, false).status()?;
        let users = users.0.wait()?;
        if !users.success() || !groups.success() {
            bail!("ldapsearch failed ({users}, {groups})");
        }
        times.push(start.elapsed().as_secs_f64());
    }
    Ok(median(&mut times))
}

async fn delegate_service_account(dc: &Dc, base: &str, password: &str) -> Result<()> {
    use ferry_agent::ad::write::NewAdUser;
    let mut admin = dc.admin().await?;
    let existing = admin
        .search_paged(
            base,
            ldap3::Scope::Subtree,
            "(sAMAccountName=svc-sync)",
            &["objectGUID"],
        )
        .await?;
    if !existing.is_empty() {
        return Ok(());
    }
    let dn = admin
        .create_user(
            &format!("CN=Users,{base}"),
            &NewAdUser {
                sam_account_name: "svc-sync".into(),
                password: Some(password.into()),
                enabled: true,
                ..Default::default()
            },
        )
        .await?;
    admin
        .set_attributes(&dn, &[("userAccountControl", Some("66048"))])
        .await?;
    let e = admin
        .read_entry(&dn, &["objectSid"])
        .await?
        .ok_or_else(|| anyhow!("the service account vanished"))?;
    let raw = e.values("objectSid").first().cloned().unwrap_or_default();
    let sid = ferry_agent::preflight::sd::sid_to_string(&raw).ok_or_else(|| anyhow!("bad objectSid"))?;
    let sddl: String = ferry_agent::preflight::Task::ALL.iter().map(|t| t.sddl(&sid)).collect();
    let out = Command::new("/usr/bin/python3")
        .args([
            "/usr/bin/samba-tool",
            "dsacl",
            "set",
            "--objectdn",
            base,
            "--sddl",
            &sddl,
            "-H",
        ])
        .arg(dc.var("FERRY_DC_LDAP_URL"))
        .arg("-U")
        .arg(format!("Administrator%{}", dc.var("FERRY_DC_ADMIN_PASSWORD")))
        .output()?;
    if !out.status.success() {
        bail!("samba-tool dsacl set: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(())
}

fn log_has(path: &Path, needle: &str) -> bool {
    std::fs::read_to_string(path).is_ok_and(|s| s.contains(needle))
}

/// Latencies (s) of `n` single changes: `make(i)` applies change i and
/// returns a probe that is true once it is visible on the far side.
async fn latencies<M, MF, P, PF>(n: usize, mut make: M, probe: P) -> Result<Vec<f64>>
where
    M: FnMut(usize) -> MF,
    MF: std::future::Future<Output = Result<String>>,
    P: Fn(usize, String) -> PF,
    PF: std::future::Future<Output = Result<bool>>,
{
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let value = make(i).await?;
        let start = Instant::now();
        loop {
            if probe(i, value.clone()).await? {
                out.push(start.elapsed().as_secs_f64());
                if start.elapsed() > Duration::from_millis(300) {
                    // When, to find it in the logs (FERRY_BENCH_LOGS).
                    eprintln!(
                        "    change {i}: {:.3} s, made at {}",
                        start.elapsed().as_secs_f64(),
                        iso_now_minus(start.elapsed())
                    );
                }
                break;
            }
            if start.elapsed() > Duration::from_secs(30) {
                bail!("change {i} did not arrive within 30 s");
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(out)
}

/// Requests per second of `op` run by 4 workers for `secs`.
async fn throughput<F, Fut>(secs: u64, op: F) -> Result<f64>
where
    F: Fn(u64) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = Result<()>> + Send,
{
    let until = Instant::now() + Duration::from_secs(secs);
    let mut tasks = Vec::new();
    for w in 0..4u64 {
        let op = op.clone();
        tasks.push(tokio::spawn(async move {
            let mut n = 0u64;
            while Instant::now() < until {
                op(w * 1_000_000 + n).await?;
                n += 1;
            }
            Ok::<u64, anyhow::Error>(n)
        }));
    }
    let mut total = 0;
    for t in tasks {
        total += t.await??;
    }
    Ok(total as f64 / secs as f64)
}

struct ConsoleFigures {
    users: u64,
    page_ms: f64,
    search_ms: f64,
    scim_ms: f64,
}

/// Times the console's Users page (signed in, as a browser asks for it)
/// against the SCIM page it is built on, with `want` users in the store.
async fn console_figures(cloud: &Cloud, want: usize) -> Result<ConsoleFigures> {
    let have = cloud.total("Users").await? as usize;
    if have < want {
        say(&format!(
            "adding {} users through SCIM for the console figure",
            want - have
        ));
        let mut tasks = Vec::new();
        let per = (want - have).div_ceil(8);
        for w in 0..8 {
            let (base, token, http) = (cloud.base.clone(), cloud.token.clone(), cloud.http.clone());
            let n = per.min((want - have).saturating_sub(w * per));
            tasks.push(tokio::spawn(async move {
                for i in 0..n {
                    let body = json!({"userName": format!("c{w}-{i:06}"), "name": {"givenName": "Console", "familyName": format!("User {i}")}});
                    let r = http
                        .post(format!("{base}/scim/v2/Users"))
                        .bearer_auth(&token)
                        .json(&body)
                        .send()
                        .await?;
                    if !r.status().is_success() {
                        bail!("adding a user failed: HTTP {}", r.status());
                    }
                }
                Ok::<(), anyhow::Error>(())
            }));
        }
        for t in tasks {
            t.await??;
        }
    }
    let users = cloud.total("Users").await?;
    let browser = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()?;
    let r = browser
        .post(format!("{}/signin", cloud.base))
        .form(&[("email", "admin@bench.test"), ("password", "Bench-Admin-Pa55")])
        .send()
        .await?;
    let cookie = r
        .headers()
        .get_all(reqwest::header::SET_COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find_map(|v| v.split(';').next().filter(|c| c.starts_with("ferry_session=")))
        .map(str::to_owned)
        .ok_or_else(|| anyhow!("signing in to the console failed: HTTP {}", r.status()))?;
    let time = |url: String, cookie: Option<String>| {
        let browser = browser.clone();
        let token = cloud.token.clone();
        async move {
            let mut ms = Vec::new();
            for _ in 0..20 {
                let mut req = browser.get(&url);
                req = match &cookie {
                    Some(c) => req.header(reqwest::header::COOKIE, c),
                    None => req.bearer_auth(&token),
                };
                let start = Instant::now();
                let r = req.send().await?;
                if !r.status().is_success() {
                    bail!("{url}: HTTP {}", r.status());
                }
                r.bytes().await?;
                ms.push(start.elapsed().as_secs_f64() * 1000.0);
            }
            Ok::<f64, anyhow::Error>(median(&mut ms))
        }
    };
    Ok(ConsoleFigures {
        users,
        page_ms: time(format!("{}/users", cloud.base), Some(cookie.clone())).await?,
        search_ms: time(format!("{}/users?q=u0042", cloud.base), Some(cookie)).await?,
        scim_ms: time(format!("{}/scim/v2/Users?startIndex=1&count=50", cloud.base), None).await?,
    })
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines().find_map(|l| {
                l.strip_prefix("model name")
                    .map(|v| v.trim_start_matches([' ', '\t', ':']).to_owned())
            })
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let mem = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
        })
        .map_or(0.0, |kb| kb / 1024.0 / 1024.0);
    format!("{cores} cores ({cpu}), {mem:.0} GiB")
}

#[tokio::main]
async fn main() -> Result<()> {
    let o = Opts::parse();
    let bin = match &o.bin_dir {
        Some(b) => b.clone(),
        None => std::env::current_exe()?
            .parent()
            .ok_or_else(|| anyhow!("no binary directory"))?
            .to_owned(),
    };
    let work = std::env::temp_dir().join(format!("ferry-bench-{}", std::process::id()));
    std::fs::create_dir_all(&work)?;
    let result = bench(&o, &bin, &work).await;
    // FERRY_BENCH_LOGS=DIR keeps the agent's and the cloud's logs (to trace a tail).
    if let Some(keep) = std::env::var_os("FERRY_BENCH_LOGS") {
        let keep = PathBuf::from(keep);
        std::fs::create_dir_all(&keep)?;
        for f in std::fs::read_dir(&work)?.flatten() {
            if f.path().extension().is_some_and(|x| x == "log") {
                std::fs::copy(f.path(), keep.join(f.file_name()))?;
            }
        }
        eprintln!("    logs kept in {}", keep.display());
    }
    let _ = std::fs::remove_dir_all(&work);
    result
}

/// The agent's log filter: `FERRY_BENCH_AGENT_LOG`, or info (with
/// `ferry_agent::ldap=debug` every LDAP request is timed in its log).
fn agent_log_filter() -> String {
    std::env::var("FERRY_BENCH_AGENT_LOG").unwrap_or_else(|_| "info".to_owned())
}

async fn bench(o: &Opts, bin: &Path, work: &Path) -> Result<()> {
    let size = format!("{} {}", o.users, o.groups);
    let kept = o.dc_dir.clone();
    let reuse = kept
        .as_ref()
        .is_some_and(|d| std::fs::read_to_string(d.join("bench-size")).is_ok_and(|s| s.trim() == size));
    let dc_dir = kept.clone().unwrap_or_else(|| work.join("dc"));
    let svc_pw = "Svc-Bench-Pa55";
    let (dc, populate_secs) = if reuse {
        say(&format!("reusing the filled DC in {}", dc_dir.display()));
        let dc = Dc::resume(&dc_dir)?;
        delegate_service_account(&dc, &dc.var("FERRY_DC_BASE_DN"), svc_pw).await?;
        (dc, f64::NAN)
    } else {
        say(&format!(
            "starting a Samba AD DC and filling it: {} users, {} groups",
            o.users, o.groups
        ));
        let dc = Dc::start(&dc_dir, o.dc_ip.as_deref())?;
        let started = Instant::now();
        let st = Command::new("/usr/bin/python3")
            .arg("scripts/lib/bench-populate.py")
            .arg(dc.var("FERRY_DC_SMB_CONF"))
            .arg(dc.var("FERRY_DC_BASE_DN"))
            .arg(o.users.to_string())
            .arg(o.groups.to_string())
            .status()?;
        if !st.success() {
            bail!("filling the DC failed");
        }
        let secs = started.elapsed().as_secs_f64();
        delegate_service_account(&dc, &dc.var("FERRY_DC_BASE_DN"), svc_pw).await?;
        if kept.is_some() {
            std::fs::write(dc_dir.join("bench-size"), &size)?;
        }
        (dc, secs)
    };
    let base = dc.var("FERRY_DC_BASE_DN");
    if o.fill_only {
        say(&format!(
            "the DC in {} is filled; stopped (--fill-only)",
            dc_dir.display()
        ));
        return Ok(());
    }

    say("baseline: raw paged ldapsearch dump of the same objects and attributes (median of 3)");
    let (baseline_secs, dumped) = baseline(&dc, &base)?;
    eprintln!("    {dumped} entries in {baseline_secs:.2} s");
    say("the same as two ldapsearches at once, users and groups, as the import reads (median of 3)");
    let split_secs = split_baseline(&dc, &base)?;
    eprintln!("    {split_secs:.2} s");
    // The DC's own CPU with no agent: what its idle figure is compared with.
    let alone = o.idle_secs.min(30);
    say(&format!("the DC alone, idle, for {alone} s"));
    let d0 = dc_cpu_ticks(&dc_dir);
    tokio::time::sleep(Duration::from_secs(alone)).await;
    let dc_alone_cpu = dc_cpu_ticks(&dc_dir).saturating_sub(d0) as f64 / (alone as f64 * clock_ticks() / 100.0);
    // …and with nothing but what the agent's change detection costs it: the
    // rootDSE's highestCommittedUSN read every 100 ms on one connection.
    say(&format!(
        "the DC with only the agent's USN poll (every 100 ms), for {alone} s"
    ));
    let dc_poll_cpu = {
        let mut c = dc.admin().await?;
        let d0 = dc_cpu_ticks(&dc_dir);
        let until = Instant::now() + Duration::from_secs(alone);
        while Instant::now() < until {
            c.highest_committed_usn().await?;
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        dc_cpu_ticks(&dc_dir).saturating_sub(d0) as f64 / (alone as f64 * clock_ticks() / 100.0)
    };

    if o.instances > 1 && !o.postgres {
        bail!("--instances 2 needs --postgres (SQLite serves one instance)");
    }
    let engine = if o.postgres { "PostgreSQL" } else { "SQLite" };
    say(&format!(
        "starting ferry-cloud ({engine}, {} instance{}) and installing the agent with a Connect Key",
        o.instances,
        if o.instances > 1 { "s" } else { "" }
    ));
    let pg = if o.postgres {
        Some(Postgres::start(&work.join("pg"))?)
    } else {
        None
    };
    let data = work.join("cloud");
    let mut store: Vec<std::ffi::OsString> = vec!["--data-dir".into(), data.clone().into()];
    if let Some(pg) = &pg {
        store.extend(["--database-url".into(), pg.url.clone().into()]);
    }
    let token_file = work.join("admin.token");
    let st = Command::new(bin.join("ferry-cloud"))
        .args(["init", "--org", "Bench", "--admin-email", "admin@bench.test"])
        .args(&store)
        .arg("--token-out")
        .arg(&token_file)
        .env("FERRY_ADMIN_PASSWORD", "Bench-Admin-Pa55")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()?;
    if !st.success() {
        bail!("ferry-cloud init failed");
    }
    let (cloud_proc, base_url) = start_cloud(bin, &store, &work.join("cloud.log")).await?;
    let token = std::fs::read_to_string(&token_file)?.trim().to_owned();
    let cloud = Cloud {
        base: base_url.clone(),
        token: token.clone(),
        http: reqwest::Client::new(),
    };
    // The instance SCIM clients use: the second, when there are two.
    let (scim_proc, scim) = if o.instances > 1 {
        let (p, url) = start_cloud(bin, &store, &work.join("cloud-2.log")).await?;
        (
            Some(p),
            Cloud {
                base: url,
                token,
                http: reqwest::Client::new(),
            },
        )
    } else {
        (None, cloud.clone())
    };
    let d = cloud
        .ok(
            reqwest::Method::POST,
            "/api/v1/domains",
            Some(json!({"name": dc.var("FERRY_DC_REALM").to_lowercase(), "netbios_name": dc.var("FERRY_DC_DOMAIN")})),
        )
        .await?;
    let domain = d["id"].as_str().unwrap_or_default().to_owned();
    let k = cloud
        .ok(
            reqwest::Method::POST,
            &format!("/api/v1/domains/{domain}/connect-keys"),
            None,
        )
        .await?;
    let pw_file = work.join("svc-password");
    std::fs::write(&pw_file, svc_pw)?;
    let agent_dir = work.join("agent");
    let out = Command::new(bin.join("ferry-agent"))
        .args(["install", "--non-interactive", "--no-service", "--connect-key"])
        .arg(k["connect_key"].as_str().unwrap_or_default())
        .arg("--ldap-url")
        .arg(dc.var("FERRY_DC_LDAPS_URL"))
        .arg("--ca-file")
        .arg(dc.var("FERRY_DC_CA_FILE"))
        .args(["--root-dn", &base, "--bind-user"])
        .arg(format!("{}\\svc-sync", dc.var("FERRY_DC_DOMAIN")))
        .arg("--bind-password-file")
        .arg(&pw_file)
        .arg("--config-dir")
        .arg(&agent_dir)
        .output()?;
    if !out.status.success() {
        bail!("ferry-agent install failed: {}", String::from_utf8_lossy(&out.stderr));
    }

    say("initial import AD → cloud");
    let agent_log = work.join("agent.log");
    // Who spends the import's CPU: on 2 cores the DC, the agent, the cloud
    // (and PostgreSQL) share them, so a read can wait for a busy core.
    let pg_ticks = || {
        pg.as_ref()
            .map_or(0, |pg| pid_file_tree_ticks(&pg.dir.join("data/postmaster.pid")))
    };
    let import_ticks0 = (cpu_ticks(cloud_proc.pid()), dc_cpu_ticks(&dc_dir), pg_ticks());
    let import_start = Instant::now();
    let agent_proc = Proc(
        Command::new(bin.join("ferry-agent"))
            .arg("run")
            .arg("--config-dir")
            .arg(&agent_dir)
            .env("RUST_LOG", agent_log_filter())
            .stderr(std::fs::File::create(&agent_log)?)
            .spawn()?,
    );
    let mut last_note = Instant::now();
    while !log_has(&agent_log, "full import: done") {
        if import_start.elapsed() > Duration::from_secs(1800) {
            bail!("the import did not finish in 30 min (see {})", agent_log.display());
        }
        if last_note.elapsed() > Duration::from_secs(10) {
            eprintln!(
                "    {:.0} s: {} users, {} groups in the cloud",
                import_start.elapsed().as_secs_f64(),
                cloud.total("Users").await.unwrap_or(0),
                cloud.total("Groups").await.unwrap_or(0)
            );
            last_note = Instant::now();
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let import_secs = import_start.elapsed().as_secs_f64();
    let import_cpu = {
        let t = |ticks: u64| ticks as f64 / clock_ticks();
        [
            t(cpu_ticks(agent_proc.pid())),
            t(cpu_ticks(cloud_proc.pid()).saturating_sub(import_ticks0.0)),
            t(dc_cpu_ticks(&dc_dir).saturating_sub(import_ticks0.1)),
            t(pg_ticks().saturating_sub(import_ticks0.2)),
        ]
    };
    let (users_in_cloud, groups_in_cloud) = (cloud.total("Users").await?, cloud.total("Groups").await?);
    if users_in_cloud < o.users as u64 || groups_in_cloud < o.groups as u64 {
        bail!("the import ended with {users_in_cloud} users and {groups_in_cloud} groups in the cloud");
    }
    eprintln!("    {import_secs:.2} s; {users_in_cloud} users and {groups_in_cloud} groups in the cloud");
    tokio::time::sleep(Duration::from_secs(3)).await;

    say(&format!("change latency, {} single changes each way", o.changes));
    let step = (o.users / o.changes.max(1)).max(1);
    let writer = std::sync::Arc::new(tokio::sync::Mutex::new(dc.admin().await?));
    let admin_cell = std::sync::Arc::new(tokio::sync::Mutex::new(dc.admin().await?));
    let mut ad_to_cloud = latencies(
        o.changes,
        |i| {
            let dn = user_dn((i * step) % o.users, &base);
            let value = format!("ad-{i}-{}", import_start.elapsed().as_nanos());
            let writer = writer.clone();
            async move {
                writer
                    .lock()
                    .await
                    .set_attributes(&dn, &[("title", Some(&value))])
                    .await?;
                Ok(value)
            }
        },
        |i, value| {
            let cloud = &scim;
            let sam = format!("u{:06}", (i * step) % o.users);
            async move { Ok(cloud.user(&sam).await?["title"] == value.as_str()) }
        },
    )
    .await?;
    let ids: Vec<String> = {
        let mut v = Vec::new();
        for i in 0..o.changes {
            let u = scim.user(&format!("u{:06}", (i * step + step / 2) % o.users)).await?;
            v.push(u["id"].as_str().unwrap_or_default().to_owned());
        }
        v
    };
    let mut cloud_to_ad = latencies(
        o.changes,
        |i| {
            let cloud = &scim;
            let id = ids[i].clone();
            let value = format!("cloud-{i}-{}", import_start.elapsed().as_nanos());
            async move {
                cloud
                    .ok(
                        reqwest::Method::PATCH,
                        &format!("/scim/v2/Users/{id}"),
                        Some(json!({"schemas": ["urn:ietf:params:scim:api:messages:2.0:PatchOp"],
                                    "Operations": [{"op": "replace", "path": "title", "value": value}]})),
                    )
                    .await?;
                Ok(value)
            }
        },
        |i, value| {
            let admin = admin_cell.clone();
            let dn = user_dn((i * step + step / 2) % o.users, &base);
            async move {
                let e = admin.lock().await.read_entry(&dn, &["title"]).await?;
                Ok(e.is_some_and(|e| e.values("title").first().map(|v| v.as_slice()) == Some(value.as_bytes())))
            }
        },
    )
    .await?;
    ad_to_cloud.sort_by(f64::total_cmp);
    cloud_to_ad.sort_by(f64::total_cmp);

    say(&format!("agent idle for {} s", o.idle_secs));
    tokio::time::sleep(Duration::from_secs(5)).await;
    // Two windows: the first after the last change (the agent's work after
    // activity: the DirSync round it deferred, a reconciliation), then idle.
    let d_after = dc_cpu_ticks(&dc_dir);
    tokio::time::sleep(Duration::from_secs(o.idle_secs)).await;
    let (a0, c0, d0) = (
        cpu_ticks(agent_proc.pid()),
        cpu_ticks(cloud_proc.pid()),
        dc_cpu_ticks(&dc_dir),
    );
    say(&format!("… and {} s more", o.idle_secs));
    tokio::time::sleep(Duration::from_secs(o.idle_secs)).await;
    let (a1, c1, d1) = (
        cpu_ticks(agent_proc.pid()),
        cpu_ticks(cloud_proc.pid()),
        dc_cpu_ticks(&dc_dir),
    );
    let denom = o.idle_secs as f64 * clock_ticks() / 100.0;
    let agent_idle_cpu = (a1 - a0) as f64 / denom;
    let cloud_idle_cpu = (c1 - c0) as f64 / denom;
    let dc_after_cpu = d0.saturating_sub(d_after) as f64 / denom;
    let dc_idle_cpu = d1.saturating_sub(d0) as f64 / denom;
    let agent_rss = peak_rss_mib(agent_proc.pid());
    let cloud_rss_sync = peak_rss_mib(cloud_proc.pid());
    drop(agent_proc);

    let n_catchup = o.catchup.min(o.users / 2);
    say(&format!(
        "catch-up: agent stopped, {n_catchup} changes on each side, then started"
    ));
    let (catchup_secs, catchup_rss) = catch_up(n_catchup, o.users, &base, &dc, &cloud, || {
        Ok(Proc(
            Command::new(bin.join("ferry-agent"))
                .arg("run")
                .arg("--config-dir")
                .arg(&agent_dir)
                .env("RUST_LOG", agent_log_filter())
                .stderr(std::fs::OpenOptions::new().append(true).open(&agent_log)?)
                .spawn()?,
        ))
    })
    .await?;
    eprintln!("    {catchup_secs:.2} s");

    say(&format!(
        "SCIM throughput on the loaded store ({} s each, 4 clients; agent stopped)",
        o.scim_secs
    ));
    let shared = std::sync::Arc::new(scim.clone());
    let users = o.users as u64;
    let c = shared.clone();
    let list = throughput(o.scim_secs, move |n| {
        let c = c.clone();
        async move {
            let start = (n * 7919) % users + 1;
            c.ok(
                reqwest::Method::GET,
                &format!("/scim/v2/Users?startIndex={start}&count=100"),
                None,
            )
            .await
            .map(|_| ())
        }
    })
    .await?;
    let c = shared.clone();
    let filter = throughput(o.scim_secs, move |n| {
        let c = c.clone();
        async move {
            let sam = format!("u{:06}", (n * 7919) % users);
            let u = c.user(&sam).await?;
            if u.is_null() {
                bail!("{sam} not found");
            }
            Ok(())
        }
    })
    .await?;
    let c = shared.clone();
    let create = throughput(o.scim_secs, move |n| {
        let c = c.clone();
        async move {
            c.ok(
                reqwest::Method::POST,
                "/scim/v2/Users",
                Some(json!({"userName": format!("new{n}"), "name": {"givenName": "New", "familyName": format!("User{n}")}})),
            )
            .await
            .map(|_| ())
        }
    })
    .await?;
    let console = console_figures(&shared, o.console_users).await?;
    let cloud_rss = peak_rss_mib(cloud_proc.pid());
    let scim_rss = scim_proc.as_ref().map(|p| peak_rss_mib(p.pid()));
    drop(scim_proc);
    drop(cloud_proc);
    drop(pg);

    let ratio = import_secs / baseline_secs;
    let ok = |b: bool| if b { "✓" } else { "✗ missed" };
    let p99_a = percentile(&ad_to_cloud, 99.0);
    let p99_c = percentile(&cloud_to_ad, 99.0);
    let memberships = ((o.users as f64) * 5.0).round();
    println!();
    println!(
        "Ferry benchmark: {} users, {} groups (~{memberships} memberships, nested); cloud on {engine}, {} instance(s){}; {}",
        o.users,
        o.groups,
        o.instances,
        if o.instances > 1 { " (agent on the first, SCIM on the second)" } else { "" },
        machine()
    );
    println!("{:<44} {:>22}  {:<12} ", "figure", "value", "target");
    let row = |name: &str, value: String, target: &str| println!("{name:<44} {value:>22}  {target}");
    row(
        "populate the DC (bulk, not counted)",
        if populate_secs.is_nan() {
            "reused (--dc-dir)".to_owned()
        } else {
            format!("{populate_secs:.1} s")
        },
        "",
    );
    row(
        "baseline: paged ldapsearch dump",
        format!("{baseline_secs:.2} s ({dumped} entries)"),
        "",
    );
    row(
        "  … as two ldapsearches at once (users, groups)",
        format!("{split_secs:.2} s"),
        "",
    );
    row(
        "initial import AD → cloud",
        format!("{import_secs:.2} s = {ratio:.2}× baseline"),
        &format!("≤ 1.5× {}", ok(ratio <= 1.5)),
    );
    row(
        "  … against the two ldapsearches at once",
        format!("{:.2}×", import_secs / split_secs),
        "",
    );
    row(
        &format!(
            "  CPU: agent / cloud / DC{}",
            if o.postgres { " / PostgreSQL" } else { "" }
        ),
        format!(
            "{} s of {:.1} core-s",
            import_cpu[..if o.postgres { 4 } else { 3 }]
                .iter()
                .map(|s| format!("{s:.2}"))
                .collect::<Vec<_>>()
                .join(" / "),
            import_secs * std::thread::available_parallelism().map_or(1.0, |n| n.get() as f64)
        ),
        "",
    );
    row(
        "  objects per second",
        format!("{:.0}", (o.users + o.groups) as f64 / import_secs),
        "",
    );
    row(
        "change latency AD → cloud, median / p99",
        format!("{:.3} / {:.3} s", percentile(&ad_to_cloud, 50.0), p99_a),
        &format!("p99 ≤ 0.3 s {}", ok(p99_a <= 0.3)),
    );
    row(
        "change latency cloud → AD, median / p99",
        format!("{:.3} / {:.3} s", percentile(&cloud_to_ad, 50.0), p99_c),
        &format!("p99 ≤ 0.3 s {}", ok(p99_c <= 0.3)),
    );
    let import_rate = (o.users + o.groups) as f64 / import_secs;
    let catchup_rate = (2 * n_catchup) as f64 / catchup_secs;
    row(
        &format!("catch-up, {n_catchup} changes each side"),
        format!("{catchup_secs:.2} s = {:.2}× import rate", catchup_rate / import_rate),
        "",
    );
    row(
        "agent peak RSS",
        format!("{agent_rss:.1} MiB"),
        &format!("≤ 64 MB {}", ok(agent_rss * 1.048_576 <= 64.0)),
    );
    row(
        "cloud peak RSS (sync / after SCIM load)",
        format!("{cloud_rss_sync:.1} / {cloud_rss:.1} MiB"),
        "",
    );
    if let Some(r) = scim_rss {
        row("second cloud instance peak RSS (SCIM)", format!("{r:.1} MiB"), "");
    }
    row(
        &format!("agent CPU while idle ({} s, after {0} s)", o.idle_secs),
        format!("{agent_idle_cpu:.2} %"),
        &format!("≤ 1 % {}", ok(agent_idle_cpu <= 1.0)),
    );
    row("cloud CPU while the agent idles", format!("{cloud_idle_cpu:.2} %"), "");
    row(
        &format!("DC CPU, {} s after the last change", o.idle_secs),
        format!("{dc_after_cpu:.2} %"),
        "",
    );
    row(
        "DC CPU while the agent idles",
        format!("{dc_idle_cpu:.2} % (alone {dc_alone_cpu:.2} %, poll only {dc_poll_cpu:.2} %)"),
        &format!(
            "≤ 1 % above the poll {}",
            ok(dc_idle_cpu - dc_poll_cpu.max(dc_alone_cpu) <= 1.0)
        ),
    );
    row("SCIM list, 100 per page", format!("{list:.0} req/s"), "");
    row("SCIM filter userName eq", format!("{filter:.0} req/s"), "");
    row("SCIM create user", format!("{create:.0} req/s"), "");
    row(
        &format!("console Users page, {} users (first page)", console.users),
        format!(
            "{:.1} ms = {:.2}× its SCIM page",
            console.page_ms,
            console.page_ms / console.scim_ms
        ),
        "",
    );
    row(
        "console Users search (username contains)",
        format!("{:.1} ms", console.search_ms),
        "",
    );

    if let Some(path) = &o.json {
        let j = json!({
            "machine": machine(),
            "engine": engine,
            "instances": o.instances,
            "users": o.users,
            "groups": o.groups,
            "populate_secs": if populate_secs.is_nan() { None } else { Some(populate_secs) },
            "baseline_secs": baseline_secs,
            "baseline_entries": dumped,
            "baseline_split_secs": split_secs,
            "import_ratio_to_split": import_secs / split_secs,
            "import_secs": import_secs,
            "import_cpu_secs": {"agent": import_cpu[0], "cloud": import_cpu[1], "dc": import_cpu[2], "postgres": import_cpu[3]},
            "import_ratio": ratio,
            "import_objects_per_sec": (o.users + o.groups) as f64 / import_secs,
            "latency_ad_to_cloud": {"median": percentile(&ad_to_cloud, 50.0), "p99": p99_a, "n": ad_to_cloud.len()},
            "latency_cloud_to_ad": {"median": percentile(&cloud_to_ad, 50.0), "p99": p99_c, "n": cloud_to_ad.len()},
            "catchup_changes_each_side": n_catchup,
            "catchup_secs": catchup_secs,
            "catchup_rate_vs_import_rate": catchup_rate / import_rate,
            "catchup_agent_peak_rss_mib": catchup_rss,
            "agent_peak_rss_mib": agent_rss,
            "cloud_peak_rss_mib": cloud_rss,
            "agent_idle_cpu_percent": agent_idle_cpu,
            "cloud_idle_cpu_percent": cloud_idle_cpu,
            "dc_idle_cpu_percent": dc_idle_cpu,
            "dc_after_last_change_cpu_percent": dc_after_cpu,
            "dc_poll_only_cpu_percent": dc_poll_cpu,
            "dc_without_agent_cpu_percent": dc_alone_cpu,
            "idle_secs": o.idle_secs,
            "scim_list_per_sec": list,
            "scim_filter_per_sec": filter,
            "scim_create_per_sec": create,
            "console_users": console.users,
            "console_users_page_ms": console.page_ms,
            "console_users_search_ms": console.search_ms,
            "scim_users_page_ms": console.scim_ms,
            "targets_met": {
                "import": ratio <= 1.5,
                "latency_ad_to_cloud": p99_a <= 0.3,
                "latency_cloud_to_ad": p99_c <= 0.3,
                "agent_rss": agent_rss * 1.048_576 <= 64.0,
                "agent_idle_cpu": agent_idle_cpu <= 1.0,
                "dc_idle_cpu": dc_idle_cpu - dc_poll_cpu.max(dc_alone_cpu) <= 1.0,
            },
        });
        std::fs::write(path, serde_json::to_string_pretty(&j)?)?;
        eprintln!("figures written to {}", path.display());
    }
    Ok(())
}

/// The UTC time of day `ago` before now (HH:MM:SS.mmm, as the logs show it).
fn iso_now_minus(ago: Duration) -> String {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .saturating_sub(ago);
    let s = t.as_secs() % 86_400;
    format!(
        "{:02}:{:02}:{:02}.{:03} UTC",
        s / 3600,
        s / 60 % 60,
        s % 60,
        t.subsec_millis()
    )
}
