//! The cloud's share of an import: what applying an agent's import costs
//! the store, phase by phase, with no AD and no HTTP in the way.
//!
//! Fills an org exactly as the agent's full import pushes it (every object,
//! then a `SetMembers` per group; `FERRY_IMPORT_ORDER=shares`: memberships
//! sent while the users are read, as runs 19–26 of docs/BENCHMARKS.md
//! tried), the pushes timed. Prints each phase's time and the cost per
//! push at its start and its end, so a cost that grows with the store
//! shows.
//!
//!   cargo run --release -p ferry-cloud --example import_cost -- [USERS] [GROUPS] [MEMBERS]
//!   (default 100000 10000 50; FERRY_SCALE_DB_URL=postgres://… for PostgreSQL;
//!   RUST_LOG=sqlx::query=debug logs every statement with its time, to
//!   stderr)
#![allow(clippy::unwrap_used, clippy::panic, clippy::expect_used)]

use std::time::Instant;

use ferry_cloud::directory::ad_apply::{apply_ad_changes, Isolation};
use ferry_cloud::directory::WriteCtx;
use ferry_cloud::store::{DomainSettings, Statistics, Store};
use ferry_proto::agent::{AdChange, DomainPolicies, PushChangesRequest};
use ferry_proto::record::{GroupRecord, UserRecord};
use uuid::Uuid;

/// Changes a pushed batch carries (as the agent's import).
const BATCH: usize = 500;

fn user(i: usize) -> AdChange {
    AdChange::UpsertUser {
        guid: user_guid(i),
        dn: format!("CN=User {i:06},OU=People,OU=Bench,DC=bench,DC=test"),
        record: Box::new(UserRecord {
            username: format!("user{i:06}"),
            given_name: Some("User".into()),
            family_name: Some(format!("N{i}")),
            display_name: Some(format!("User {i:06}")),
            email: Some(format!("user{i:06}@bench.test")),
            title: Some("Engineer".into()),
            department: Some(["Sales", "R&D", "Ops"][i % 3].into()),
            active: true,
            ..Default::default()
        }),
        changed_at: None,
    }
}

fn user_guid(i: usize) -> Uuid {
    Uuid::from_u128(0x1000_0000_0000_0000_0000_0000_0000_0000 + i as u128)
}

/// The inverse of [`user_guid`].
fn user_index(guid: Uuid) -> usize {
    (guid.as_u128() - user_guid(0).as_u128()) as usize
}

fn group_guid(j: usize) -> Uuid {
    Uuid::from_u128(0x2000_0000_0000_0000_0000_0000_0000_0000 + j as u128)
}

#[tokio::main]
async fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_ansi(false)
        .with_writer(std::io::stderr)
        .init();
    let args: Vec<usize> = std::env::args().skip(1).filter_map(|a| a.parse().ok()).collect();
    let users = args.first().copied().unwrap_or(100_000);
    let groups = args.get(1).copied().unwrap_or(10_000);
    let per_group = args.get(2).copied().unwrap_or(50);
    let dir = tempfile::tempdir().expect("temp dir");
    let url = std::env::var("FERRY_SCALE_DB_URL")
        .unwrap_or_else(|_| format!("sqlite://{}", dir.path().join("ferry.db").display()));
    let store = Store::open(&url).await.expect("store");
    let mut tx = store.begin().await.unwrap();
    let org = tx.insert_org(&format!("Import {}", Uuid::new_v4()), 1).await.unwrap();
    let settings = DomainSettings {
        name: "bench.test".into(),
        netbios_name: "BENCH".into(),
        root_dn: "DC=bench,DC=test".into(),
        user_ou: "OU=People,OU=Bench,DC=bench,DC=test".into(),
        policies: DomainPolicies::default(),
    };
    let domain = tx.insert_domain(org.id, &settings, 1).await.unwrap();
    tx.commit().await.unwrap();

    let mut objects: Vec<AdChange> = (0..users).map(user).collect();
    // Groups come in the read among the users (here: after every tenth).
    for j in 0..groups {
        let at = (j * users / groups.max(1) + j).min(objects.len());
        objects.insert(
            at,
            AdChange::UpsertGroup {
                guid: group_guid(j),
                dn: format!("CN=Group {j:05},OU=Groups,OU=Bench,DC=bench,DC=test"),
                record: GroupRecord {
                    name: format!("Group {j:05}"),
                    description: None,
                },
            },
        );
    }
    let memberships: Vec<AdChange> = (0..groups)
        .map(|j| AdChange::SetMembers {
            group: group_guid(j),
            members: (0..per_group)
                .map(|k| user_guid((j * 7919 + k * 104_729) % users))
                .collect(),
        })
        .collect();

    let mut cookie: Option<String> = None;
    let mut n = 0usize;
    let mut push = async |changes: &[AdChange]| -> f64 {
        let t = Instant::now();
        let mut tx = store.begin().await.unwrap();
        let domain = tx.get_domain(org.id, domain.id).await.unwrap();
        let ctx = WriteCtx {
            org_id: org.id,
            origin: domain.id.to_string(),
            actor: "agent:bench".into(),
            now: 1,
        };
        n += 1;
        let req = PushChangesRequest {
            from_cookie: cookie.clone(),
            to_cookie: Some(format!("import:{n}")),
            changes: changes.to_vec(),
            repair: false,
        };
        apply_ad_changes(&mut tx, &ctx, &domain, &req, Isolation::Batch)
            .await
            .unwrap();
        tx.commit().await.unwrap();
        cookie = req.to_cookie;
        // As the cloud does (`agent_api`): statistics refreshed as the tables double.
        if n >= 4 && n.is_power_of_two() {
            store.analyze(Statistics::Sizes).await.unwrap();
        }
        t.elapsed().as_secs_f64()
    };
    // The agent's order (ferry-agent's `sync::ad_to_cloud::import`): every
    // object, 500 to a push, then a `SetMembers` per group, 500 to a push.
    // FERRY_IMPORT_ORDER=shares: the order runs 19–26 of docs/BENCHMARKS.md
    // tried, memberships while the users are read: every group, then the
    // users; once a quarter of the memberships (at least 5,000) is owed, a
    // change per group for the members read since the last (`SetMembers`
    // the first time, then `AddMembers`), 500 groups to a push.
    let phases: Vec<(&str, Vec<Vec<AdChange>>)> = if std::env::var("FERRY_IMPORT_ORDER").as_deref() != Ok("shares") {
        vec![
            ("objects", objects.chunks(BATCH).map(<[_]>::to_vec).collect()),
            ("memberships", memberships.chunks(BATCH).map(<[_]>::to_vec).collect()),
        ]
    } else {
        let (groups_first, users_then): (Vec<AdChange>, Vec<AdChange>) = objects
            .into_iter()
            .partition(|c| matches!(c, AdChange::UpsertGroup { .. }));
        let mut of_user: Vec<Vec<Uuid>> = vec![Vec::new(); users];
        let mut total = 0;
        for m in &memberships {
            if let AdChange::SetMembers { group, members } = m {
                for u in members {
                    of_user[user_index(*u)].push(*group);
                    total += 1;
                }
            }
        }
        let share = (total / 4).max(5_000);
        let mut pushes = Vec::new();
        let mut owed: std::collections::BTreeMap<Uuid, Vec<Uuid>> = Default::default();
        let mut owed_n = 0;
        // A group's first share sets its members, the next ones add.
        let mut sent = std::collections::HashSet::new();
        let mut flush = |owed: &mut std::collections::BTreeMap<Uuid, Vec<Uuid>>, pushes: &mut Vec<Vec<AdChange>>| {
            let adds: Vec<AdChange> = std::mem::take(owed)
                .into_iter()
                .map(|(group, members)| {
                    if sent.insert(group) {
                        AdChange::SetMembers { group, members }
                    } else {
                        AdChange::AddMembers { group, members }
                    }
                })
                .collect();
            pushes.extend(adds.chunks(BATCH).map(<[_]>::to_vec));
        };
        for chunk in users_then.chunks(BATCH) {
            pushes.push(chunk.to_vec());
            for c in chunk {
                if let AdChange::UpsertUser { guid, .. } = c {
                    for g in &of_user[user_index(*guid)] {
                        owed.entry(*g).or_default().push(*guid);
                        owed_n += 1;
                    }
                }
            }
            if owed_n >= share {
                flush(&mut owed, &mut pushes);
                owed_n = 0;
            }
        }
        flush(&mut owed, &mut pushes);
        vec![
            ("groups", groups_first.chunks(BATCH).map(<[_]>::to_vec).collect()),
            ("users+adds", pushes),
        ]
    };
    for (name, pushes) in &phases {
        let t = Instant::now();
        let mut each = Vec::new();
        for chunk in pushes {
            each.push(push(chunk).await);
        }
        let changes: Vec<&AdChange> = pushes.iter().flatten().collect();
        let k = each.len().clamp(1, 10);
        let first: f64 = each.iter().take(k).sum::<f64>() / k as f64;
        let last: f64 = each.iter().rev().take(k).sum::<f64>() / k as f64;
        println!(
            "{name:<12} {:>7} changes {:>4} pushes {:>7.2} s   per push: first {:.3} s, last {:.3} s",
            changes.len(),
            each.len(),
            t.elapsed().as_secs_f64(),
            first,
            last
        );
    }
}
