//! The convergence harness (issue 13): random changes on both sides at
//! once, through real clients (ldapmodify on the AD side, SCIM on the cloud
//! side), while faults hit every part: the agent and the cloud are killed
//! with SIGKILL, the DC and the cloud are stopped for a while. Once quiet,
//! both sides are compared whole (every user, its attributes and state, and
//! every group's members) and a ledger of the last write of every field is
//! checked: there must be no difference and no lost write.
//!
//! The fields are shared out between the sides so that every write has one
//! right outcome: AD writes `department`, `telephoneNumber`, the account
//! state (of AD-made users) and the members of the AD groups; the cloud writes `title`,
//! `mobile` and the members of the cloud group. Either side deletes users
//! (AD: deleted in the cloud; cloud: disabled in AD, the default policy).
//! Both write the same objects, so a stale record written over a newer one
//! shows up as a lost write.
//!
//! `FERRY_HARNESS_ROUNDS`, `FERRY_HARNESS_USERS` and `FERRY_HARNESS_SEED`
//! (a number, or `random`) scale and replay it; `scripts/test` runs the
//! small default, and `scripts/bench --harness` a large one with random seeds.
#![allow(clippy::unwrap_used, clippy::panic)] // a failed unwrap is a failed test

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};

/// A small deterministic generator (xorshift64*): a seed replays a run.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }

    fn pick<'a, T>(&mut self, v: &'a [T]) -> Option<&'a T> {
        (!v.is_empty()).then(|| &v[self.below(v.len())])
    }
}

fn env_or(key: &str, default: u64) -> u64 {
    std::env::var(key).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// One write the harness made: what the field must end as.
#[derive(Debug, Clone)]
struct Write {
    value: String,
    round: usize,
}

/// The last write of every (user, field), and of every (group, member).
#[derive(Default)]
struct Ledger {
    fields: BTreeMap<(String, &'static str), Write>,
    members: BTreeMap<(String, String), (bool, usize)>,
    deleted: BTreeSet<String>,
    /// Deleted in the cloud: the AD account stays, disabled.
    deleted_in_cloud: BTreeSet<String>,
    writes: usize,
}

impl Ledger {
    fn set(&mut self, user: &str, field: &'static str, value: &str, round: usize) {
        self.writes += 1;
        self.fields.insert(
            (user.to_owned(), field),
            Write {
                value: value.to_owned(),
                round,
            },
        );
    }
}

/// What one side holds of a user: the fields both sides sync.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
struct Seen {
    title: String,
    mobile: String,
    department: String,
    phone: String,
    active: bool,
}

impl Seen {
    fn field(&self, f: &str) -> String {
        match f {
            "title" => self.title.clone(),
            "mobile" => self.mobile.clone(),
            "department" => self.department.clone(),
            "telephoneNumber" => self.phone.clone(),
            "active" => self.active.to_string(),
            _ => unreachable!("{f}"),
        }
    }
}

fn text(v: &Value) -> String {
    v.as_str().unwrap_or_default().to_owned()
}

/// Every cloud user: userName → what it holds.
async fn cloud_side(cloud: &Cloud) -> BTreeMap<String, Seen> {
    all_cloud_users(cloud)
        .await
        .iter()
        .map(|u| {
            let phone = |kind: &str| {
                u["phoneNumbers"]
                    .as_array()
                    .and_then(|p| p.iter().find(|n| n["type"] == kind))
                    .map(|n| text(&n["value"]))
                    .unwrap_or_default()
            };
            let ent = &u["urn:ietf:params:scim:schemas:extension:enterprise:2.0:User"];
            (
                text(&u["userName"]),
                Seen {
                    title: text(&u["title"]),
                    mobile: phone("mobile"),
                    department: text(&ent["department"]),
                    phone: phone("work"),
                    active: u["active"] != false,
                },
            )
        })
        .collect()
}

/// Every AD user under `base`: sAMAccountName → what it holds.
fn ad_side(dc: &Dc, base: &str) -> BTreeMap<String, Seen> {
    let ldif = dc.ldapsearch(
        base,
        "(&(objectClass=user)(objectCategory=person))",
        &[
            "sAMAccountName",
            "title",
            "mobile",
            "department",
            "telephoneNumber",
            "userAccountControl",
        ],
    );
    let mut out = BTreeMap::new();
    for entry in ldif.split("\n\n") {
        let get = |k: &str| {
            entry
                .lines()
                .find_map(|l| l.strip_prefix(&format!("{k}: ")))
                .unwrap_or_default()
                .to_owned()
        };
        let sam = get("sAMAccountName");
        if sam.is_empty() {
            continue;
        }
        let uac: u32 = get("userAccountControl").parse().unwrap_or(0);
        out.insert(
            sam,
            Seen {
                title: get("title"),
                mobile: get("mobile"),
                department: get("department"),
                phone: get("telephoneNumber"),
                active: uac & 2 == 0,
            },
        );
    }
    out
}

/// A cloud group's members, by userName.
async fn cloud_members(cloud: &Cloud, group: &str, names: &BTreeMap<String, String>) -> BTreeSet<String> {
    let Some(g) = cloud.group(group).await else {
        return BTreeSet::new();
    };
    g["members"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|m| names.get(m["value"].as_str()?).cloned())
        .collect()
}

/// An AD group's members, by sAMAccountName (none when the group is not there).
fn ad_members(dc: &Dc, group_dn: &str) -> BTreeSet<String> {
    dc.ldapsearch(&dc.base_dn, &format!("(memberOf={group_dn})"), &["sAMAccountName"])
        .lines()
        .filter_map(|x| x.strip_prefix("sAMAccountName: "))
        .map(str::to_owned)
        .collect()
}

const AD_GROUPS: [&str; 2] = ["hgroup-a", "hgroup-b"];
const CLOUD_GROUP: &str = "hgroup-cloud";

/// The random changes, the faults, and the check.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn random_changes_on_both_sides_through_faults_converge_with_no_lost_write() {
    let rounds = env_or("FERRY_HARNESS_ROUNDS", 6) as usize;
    let n_users = env_or("FERRY_HARNESS_USERS", 30) as usize;
    // A fixed seed by default (the same changes each run; their timing
    // still varies); `FERRY_HARNESS_SEED=random` draws one.
    let seed = match std::env::var("FERRY_HARNESS_SEED").as_deref() {
        Ok("random") => {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
                | 1
        }
        _ => env_or("FERRY_HARNESS_SEED", 20_261_202),
    };
    println!("harness: seed {seed} (FERRY_HARNESS_SEED replays it), {rounds} rounds, {n_users} users a side");
    let mut rng = Rng(seed);
    let dc = delegated_dc().await;
    let ou = dc.new_ou("Harness").await;
    let users_ou = format!("CN=Users,{}", dc.base_dn);
    let mut server = CloudServer::start().await;
    let domain = add_domain(&server.cloud, &dc).await;
    let (st, v) = server
        .cloud
        .call(
            reqwest::Method::PATCH,
            &format!("/api/v1/domains/{domain}"),
            Some(json!({"policies": {"delete_threshold": 100000}})),
        )
        .await;
    assert_eq!(st, 200, "{v}");

    // The starting directory: users and two groups in AD, users and a group in the cloud.
    let mut ledger = Ledger::default();
    let mut ldif = String::new();
    let mut ad_made = Vec::new();
    for i in 0..n_users {
        let sam = format!("ha{i}");
        ldif.push_str(&format!(
            "dn: CN={sam},{ou}\nobjectClass: user\nsAMAccountName: {sam}\nuserAccountControl: 512\ndepartment: d0\n\n"
        ));
        ledger.set(&sam, "department", "d0", 0);
        ledger.set(&sam, "active", "true", 0);
        ad_made.push(sam);
    }
    for g in AD_GROUPS {
        ldif.push_str(&format!("dn: CN={g},{ou}\nobjectClass: group\nsAMAccountName: {g}\n\n"));
    }
    dc.ldapmodify(&ldif, true);
    let agent = enrol(&server.cloud, &domain).await;
    let agent_dir = tempfile::tempdir().unwrap();
    write_config(agent_dir.path(), &dc, &server.cloud, &agent);
    let mut agent_proc = Some(AgentProcess::spawn(agent_dir.path(), "agent.log"));
    let mut cloud_ids: BTreeMap<String, String> = BTreeMap::new();
    for i in 0..n_users {
        let name = format!("hc{i}");
        let (st, u) = server
            .cloud
            .call(
                reqwest::Method::POST,
                "/scim/v2/Users",
                // With a password, so the AD account is enabled as the cloud says.
                Some(json!({"userName": name, "title": "t0", "active": true, "password": format!("Harness-Pa55-{i}")})),
            )
            .await;
        assert_eq!(st, 201, "{u}");
        cloud_ids.insert(name.clone(), text(&u["id"]));
        ledger.set(&name, "title", "t0", 0);
        ledger.set(&name, "active", "true", 0);
    }
    let (st, g) = server
        .cloud
        .call(
            reqwest::Method::POST,
            "/scim/v2/Groups",
            Some(json!({"schemas": ["urn:ietf:params:scim:schemas:core:2.0:Group"], "displayName": CLOUD_GROUP})),
        )
        .await;
    assert_eq!(st, 201, "{g}");
    let cloud_group = text(&g["id"]);
    for sam in &ad_made {
        eventually(&format!("{sam} imported"), || server.cloud.user(sam)).await;
    }
    for sam in &ad_made {
        let u = server.cloud.user(sam).await.unwrap();
        cloud_ids.insert(sam.clone(), text(&u["id"]));
    }

    let mut live: Vec<String> = cloud_ids.keys().cloned().collect();
    let mut faults = Vec::new();
    let started = Instant::now();
    for round in 1..=rounds {
        // Both sides at once: the AD side's changes and the cloud side's.
        let mut ad_ops = Vec::new();
        let mut cloud_ops = Vec::new();
        for _ in 0..8 {
            let Some(user) = rng.pick(&live).cloned() else { break };
            let dn = if user.starts_with("ha") {
                format!("CN={user},{ou}")
            } else {
                // Cloud users land in the user OU, named by their userName.
                format!("CN={user},{users_ou}")
            };
            match rng.below(10) {
                0..=3 => {
                    let v = format!("d{round}-{}", rng.below(1000));
                    ad_ops.push((
                        user.clone(),
                        "department",
                        v.clone(),
                        format!("dn: {dn}\nchangetype: modify\nreplace: department\ndepartment: {v}\n"),
                    ));
                }
                4..=5 => {
                    let v = format!("+1 555 {round}{:04}", rng.below(10000));
                    ad_ops.push((
                        user.clone(),
                        "telephoneNumber",
                        v.clone(),
                        format!("dn: {dn}\nchangetype: modify\nreplace: telephoneNumber\ntelephoneNumber: {v}\n"),
                    ));
                }
                // The account state of AD-made users only: a cloud-made
                // account is disabled in AD until its password arrives, and
                // disabling it then changes nothing in AD.
                6..=7 if user.starts_with("ha") => {
                    let on = rng.below(2) == 0;
                    let uac = if on { 512 } else { 514 };
                    ad_ops.push((
                        user.clone(),
                        "active",
                        on.to_string(),
                        format!(
                            "dn: {dn}\nchangetype: modify\nreplace: userAccountControl\nuserAccountControl: {uac}\n"
                        ),
                    ));
                }
                8 => {
                    let g = AD_GROUPS[rng.below(2)];
                    let add = rng.below(3) != 0;
                    let op = if add { "add" } else { "delete" };
                    ad_ops.push((
                        user.clone(),
                        g,
                        add.to_string(),
                        format!("dn: CN={g},{ou}\nchangetype: modify\n{op}: member\nmember: {dn}\n"),
                    ));
                }
                _ if user.starts_with("ha") && rng.below(3) == 0 => {
                    live.retain(|u| *u != user);
                    ad_ops.push((
                        user.clone(),
                        "deleted",
                        String::new(),
                        format!("dn: {dn}\nchangetype: delete\n"),
                    ));
                }
                _ => {}
            }
            let Some(user) = rng.pick(&live).cloned() else { break };
            match rng.below(10) {
                0..=4 => cloud_ops.push((user, "title", format!("t{round}-{}", rng.below(1000)))),
                5..=7 => cloud_ops.push((user, "mobile", format!("+44 7700 {round}{:05}", rng.below(100000)))),
                8 => cloud_ops.push((user, "member", (rng.below(3) != 0).to_string())),
                _ if user.starts_with("hc") && rng.below(3) == 0 => {
                    live.retain(|u| *u != user);
                    cloud_ops.push((user, "deleted", String::new()));
                }
                _ => {}
            }
        }
        let ad_side_task = async {
            let mut done = Vec::new();
            for (user, field, value, ldif) in ad_ops {
                // A member add of a member, or a removal of a non-member, is
                // refused by ldapmodify and changes nothing.
                if dc.try_ldapmodify(&ldif, false).is_ok() {
                    done.push((user, field, value));
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            done
        };
        let cloud = &server.cloud;
        let ids = &cloud_ids;
        let group = &cloud_group;
        let cloud_side_task = async {
            let mut done = Vec::new();
            for (user, field, value) in cloud_ops {
                let id = &ids[&user];
                let patch = |path: &str, v: Value| {
                    json!({"schemas": ["urn:ietf:params:scim:api:messages:2.0:PatchOp"],
                           "Operations": [{"op": "replace", "path": path, "value": v}]})
                };
                let r = match field {
                    "title" => {
                        cloud
                            .try_call(
                                reqwest::Method::PATCH,
                                &format!("/scim/v2/Users/{id}"),
                                Some(patch("title", json!(value))),
                            )
                            .await
                    }
                    "mobile" => {
                        cloud
                            .try_call(
                                reqwest::Method::PATCH,
                                &format!("/scim/v2/Users/{id}"),
                                Some(patch("phoneNumbers[type eq \"mobile\"].value", json!(value))),
                            )
                            .await
                    }
                    "member" => {
                        let op = if value == "true" { "add" } else { "remove" };
                        let body = if op == "add" {
                            json!({"schemas": ["urn:ietf:params:scim:api:messages:2.0:PatchOp"],
                                   "Operations": [{"op": "add", "path": "members", "value": [{"value": id}]}]})
                        } else {
                            json!({"schemas": ["urn:ietf:params:scim:api:messages:2.0:PatchOp"],
                                   "Operations": [{"op": "remove", "path": format!("members[value eq \"{id}\"]")}]})
                        };
                        cloud
                            .try_call(reqwest::Method::PATCH, &format!("/scim/v2/Groups/{group}"), Some(body))
                            .await
                    }
                    _ => {
                        cloud
                            .try_call(reqwest::Method::DELETE, &format!("/scim/v2/Users/{id}"), None)
                            .await
                    }
                };
                match r {
                    Ok((st, _)) if st < 300 => done.push((user, field, value)),
                    Ok((404, _)) => {} // deleted from the other side meanwhile
                    Ok((st, v)) => panic!("SCIM {field} of {user}: {st} {v}"),
                    Err(_) => {} // the cloud is down: nothing written
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            done
        };
        let (ad_done, cloud_done) = tokio::join!(ad_side_task, cloud_side_task);
        for (user, field, value) in ad_done {
            match field {
                "deleted" => {
                    ledger.deleted.insert(user);
                }
                g if AD_GROUPS.contains(&g) => {
                    ledger.writes += 1;
                    ledger.members.insert((g.to_owned(), user), (value == "true", round));
                }
                f => ledger.set(&user, f, &value, round),
            }
        }
        for (user, field, value) in cloud_done {
            match field {
                "deleted" => {
                    ledger.deleted_in_cloud.insert(user);
                }
                "member" => {
                    ledger.writes += 1;
                    ledger
                        .members
                        .insert((CLOUD_GROUP.to_owned(), user), (value == "true", round));
                }
                f => ledger.set(&user, f, &value, round),
            }
        }

        // A fault between rounds, while changes wait.
        let fault = match round % 5 {
            1 => {
                if let Some(mut p) = agent_proc.take() {
                    p.kill9();
                }
                tokio::time::sleep(Duration::from_millis(rng.below(2000) as u64)).await;
                agent_proc = Some(AgentProcess::spawn(agent_dir.path(), "agent.log"));
                "kill -9 of the agent"
            }
            2 => {
                server.kill9();
                tokio::time::sleep(Duration::from_millis(500)).await;
                server.up().await;
                "kill -9 of the cloud"
            }
            3 => {
                dc.stop();
                tokio::time::sleep(Duration::from_secs(10)).await;
                dc.resume();
                "the DC stopped for 10 s"
            }
            4 => {
                server.kill9();
                tokio::time::sleep(Duration::from_secs(10)).await;
                server.up().await;
                "the cloud stopped for 10 s"
            }
            _ => {
                if let Some(mut p) = agent_proc.take() {
                    p.kill9();
                }
                tokio::time::sleep(Duration::from_secs(3)).await;
                agent_proc = Some(AgentProcess::spawn(agent_dir.path(), "agent.log"));
                "the agent down for 3 s"
            }
        };
        faults.push(fault);
    }
    let changes_done = started.elapsed();

    // Quiet: wait until both sides agree, then check them whole.
    let quiet = Instant::now();
    let names: BTreeMap<String, String> = cloud_ids.iter().map(|(n, id)| (id.clone(), n.clone())).collect();
    let mut last_diff = Vec::new();
    let mut converged = None;
    while quiet.elapsed() < Duration::from_secs(180) {
        last_diff = differences(&dc, &ou, &server.cloud, &ledger, &names, &cloud_ids).await;
        if last_diff.is_empty() {
            converged = Some(quiet.elapsed());
            break;
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    println!(
        "harness: {} writes ({} rounds in {:.0} s), faults survived: {}; converged {} after the last fault; differences {}",
        ledger.writes,
        rounds,
        changes_done.as_secs_f64(),
        faults.join(", "),
        converged.map_or_else(|| "NOT".to_owned(), |d| format!("{:.1} s", d.as_secs_f64())),
        last_diff.len()
    );
    if last_diff.is_empty() {
        // Compared whole by the agent itself too: nothing differs there,
        // and nothing was left behind on the cloud's side.
        let report = audit_now(&server.cloud, &domain).await;
        println!("harness: the agent's comparison of both sides whole: {report}");
        let said: Vec<String> = std::fs::read_to_string(agent_dir.path().join("agent.log"))
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains("compared whole"))
            .map(str::to_owned)
            .collect();
        assert_eq!(
            report["differed"],
            0,
            "seed {seed}: drift after convergence: {report}\n{}",
            said.join("\n")
        );
        assert_eq!(report["resent"], 0, "seed {seed}: cloud changes left behind: {report}");
    }
    drop(agent_proc);
    if !last_diff.is_empty() {
        // The logs, for the post-mortem.
        let keep = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../target/harness-failures")
            .join(seed.to_string());
        std::fs::create_dir_all(&keep).ok();
        std::fs::copy(agent_dir.path().join("agent.log"), keep.join("agent.log")).ok();
        std::fs::copy(server.work.path().join("cloud.log"), keep.join("cloud.log")).ok();
        std::fs::write(keep.join("differences.txt"), last_diff.join("\n")).ok();
        println!("harness: logs kept in {}", keep.display());
    }
    assert!(
        last_diff.is_empty(),
        "seed {seed}: {} differences after 180 s of quiet:\n{}\n(agent log: {})",
        last_diff.len(),
        last_diff.join("\n"),
        std::fs::read_to_string(agent_dir.path().join("agent.log"))
            .unwrap_or_default()
            .lines()
            .rev()
            .take(30)
            .collect::<Vec<_>>()
            .join("\n")
    );
}

/// Every difference between the two sides, and every write that did not
/// last; empty when they agree and nothing was lost.
async fn differences(
    dc: &Dc,
    ou: &str,
    cloud: &Cloud,
    ledger: &Ledger,
    names: &BTreeMap<String, String>,
    ids: &BTreeMap<String, String>,
) -> Vec<String> {
    let mut out = Vec::new();
    let Ok(_) = cloud.try_call(reqwest::Method::GET, "/healthz", None).await else {
        return vec!["the cloud is not answering".into()];
    };
    let in_cloud = cloud_side(cloud).await;
    let mut in_ad = ad_side(dc, ou);
    in_ad.extend(
        ad_side(dc, &format!("CN=Users,{}", dc.base_dn))
            .into_iter()
            .filter(|(n, _)| n.starts_with("hc")),
    );
    for name in ids.keys() {
        let (c, a) = (in_cloud.get(name), in_ad.get(name));
        if ledger.deleted.contains(name) {
            if c.is_some() || a.is_some() {
                out.push(format!(
                    "{name}: deleted in AD, still there (cloud {}, AD {})",
                    c.is_some(),
                    a.is_some()
                ));
            }
            continue;
        }
        if ledger.deleted_in_cloud.contains(name) {
            if c.is_some() {
                out.push(format!("{name}: deleted in the cloud, back in the cloud"));
            }
            if a.is_some_and(|a| a.active) {
                out.push(format!("{name}: deleted in the cloud, its AD account still enabled"));
            }
            continue;
        }
        let (Some(c), Some(a)) = (c, a) else {
            out.push(format!("{name}: missing (cloud {}, AD {})", c.is_some(), a.is_some()));
            continue;
        };
        if c != a {
            out.push(format!("{name}: the sides differ: cloud {c:?}, AD {a:?}"));
        }
        for ((user, field), w) in ledger.fields.range((name.clone(), "")..) {
            if user != name {
                break;
            }
            for (side, seen) in [("cloud", c), ("AD", a)] {
                if seen.field(field) != w.value {
                    out.push(format!(
                        "{name}.{field}: lost write of round {} ({:?}); {side} has {:?}",
                        w.round,
                        w.value,
                        seen.field(field)
                    ));
                }
            }
        }
    }
    // Group members, both sides, and the ledger's last word on each.
    for g in AD_GROUPS.iter().chain([&CLOUD_GROUP]) {
        let c = cloud_members(cloud, g, names).await;
        let dn = if *g == CLOUD_GROUP {
            format!("CN={g},CN=Users,{}", dc.base_dn)
        } else {
            format!("CN={g},{ou}")
        };
        let a = ad_members(dc, &dn);
        if c != a {
            out.push(format!("group {g}: cloud {c:?}, AD {a:?}"));
        }
        for ((group, user), (member, round)) in &ledger.members {
            if group != g || ledger.deleted.contains(user) || ledger.deleted_in_cloud.contains(user) {
                continue;
            }
            if c.contains(user) != *member {
                out.push(format!(
                    "group {g}: lost membership write of round {round} ({user} member: {member})"
                ));
            }
        }
    }
    out
}
