//! The store suite: one set of tests, run against SQLite and PostgreSQL.
#![allow(clippy::unwrap_used, clippy::panic)] // a failed unwrap is a failed test

mod common;

use common::{create_org, Engine, TestDb};
use ferry_cloud::directory::{self, WriteCtx};
use ferry_cloud::store::{ConnectKeyProblem, DomainSettings, Member, NewGroup, NewUser, Store, StoreError, UserQuery};
use ferry_proto::agent::{CloudChange, DomainPolicies};
use ferry_proto::record::ObjectKind;
use serde_json::json;
use uuid::Uuid;

async fn fresh(engine: Engine) -> (TestDb, Store) {
    let db = TestDb::new(engine).await;
    let store = db.open().await;
    (db, store)
}

fn user(name: &str) -> NewUser {
    NewUser {
        username: name.into(),
        external_id: None,
        active: true,
        doc: json!({"displayName": name}),
        password_hash: None,
    }
}

fn settings(name: &str) -> DomainSettings {
    DomainSettings {
        name: name.into(),
        netbios_name: "EXAMPLE".into(),
        root_dn: "DC=example,DC=test".into(),
        user_ou: "CN=Users,DC=example,DC=test".into(),
        policies: DomainPolicies::default(),
    }
}

fn ctx(org: Uuid) -> WriteCtx {
    WriteCtx {
        org_id: org,
        origin: "cloud".into(),
        actor: "test".into(),
        now: 1000,
    }
}

both_engines!(migrations_run_once_and_reopen, |engine| async move {
    let db = TestDb::new(engine).await;
    let a = db.open().await;
    create_org(&a, "Acme").await;
    a.close().await;
    // Re-opening applies nothing new and keeps the data.
    let b = db.open().await;
    let mut tx = b.begin().await.unwrap();
    assert_eq!(tx.list_orgs().await.unwrap().len(), 1);
});

both_engines!(orgs_and_admins_are_unique, |engine| async move {
    let (_db, store) = fresh(engine).await;
    // A failed statement ends a PostgreSQL transaction, so each conflict gets its own.
    let mut tx = store.begin().await.unwrap();
    let org = tx.insert_org("Acme", 1).await.unwrap();
    tx.insert_admin(org.id, "a@x.test", "h", 1).await.unwrap();
    tx.commit().await.unwrap();
    let mut tx = store.begin().await.unwrap();
    assert!(matches!(tx.insert_org("Acme", 1).await, Err(StoreError::Conflict(m)) if m.contains("Acme")));
    drop(tx);
    let mut tx = store.begin().await.unwrap();
    assert!(matches!(
        tx.insert_admin(org.id, "a@x.test", "h", 1).await,
        Err(StoreError::Conflict(_))
    ));
    drop(tx);
    let mut tx = store.begin().await.unwrap();
    assert_eq!(
        tx.find_admin_by_email("A@X.TEST").await.unwrap().unwrap().org_id,
        org.id
    );
});

both_engines!(users_are_unique_per_org_case_insensitively, |engine| async move {
    let (_db, store) = fresh(engine).await;
    let a = create_org(&store, "A").await.id;
    let b = create_org(&store, "B").await.id;
    let mut tx = store.begin().await.unwrap();
    let u = tx.insert_user(a, &user("Ann"), 1).await.unwrap();
    tx.commit().await.unwrap();
    let mut tx = store.begin().await.unwrap();
    assert!(matches!(tx.insert_user(a, &user("ann"), 1).await, Err(StoreError::Conflict(m)) if m.contains("ann")));
    drop(tx);
    let mut tx = store.begin().await.unwrap();
    // Another org may use the name, and cannot see the first org's user.
    tx.insert_user(b, &user("ann"), 1).await.unwrap();
    assert!(tx.get_user(b, u.id).await.unwrap().is_none());
    assert_eq!(tx.get_user(a, u.id).await.unwrap().unwrap().username, "Ann");
    assert_eq!(tx.find_user_by_username(a, "ANN").await.unwrap().unwrap().id, u.id);
});

both_engines!(user_updates_check_the_version, |engine| async move {
    let (_db, store) = fresh(engine).await;
    let org = create_org(&store, "A").await.id;
    let mut tx = store.begin().await.unwrap();
    let u = tx.insert_user(org, &user("ann"), 1).await.unwrap();
    assert!(tx.update_user(org, u.id, u.version, &user("ann2"), 2).await.unwrap());
    // A second writer holding the old version loses.
    assert!(!tx.update_user(org, u.id, u.version, &user("ann3"), 3).await.unwrap());
    let now = tx.get_user(org, u.id).await.unwrap().unwrap();
    assert_eq!((now.username.as_str(), now.version), ("ann2", u.version + 1));
});

both_engines!(user_listing_pages_and_filters, |engine| async move {
    let (_db, store) = fresh(engine).await;
    let org = create_org(&store, "A").await.id;
    let mut tx = store.begin().await.unwrap();
    for n in ["carol", "alice", "bob", "dave"] {
        tx.insert_user(org, &user(n), 1).await.unwrap();
    }
    let (page, total) = tx
        .list_users(
            org,
            &UserQuery {
                offset: 1,
                limit: 2,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(total, 4);
    assert_eq!(
        page.iter().map(|u| u.username.as_str()).collect::<Vec<_>>(),
        ["bob", "carol"]
    );
    let (hit, total) = tx
        .list_users(
            org,
            &UserQuery {
                username_eq: Some("BOB".into()),
                offset: 0,
                limit: 10,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!((hit.len(), total), (1, 1));
});

both_engines!(memberships_follow_deletes, |engine| async move {
    let (_db, store) = fresh(engine).await;
    let org = create_org(&store, "A").await.id;
    let c = ctx(org);
    let mut tx = store.begin().await.unwrap();
    let u = directory::create_user(&mut tx, &c, user("ann"), None).await.unwrap();
    let inner = directory::create_group(
        &mut tx,
        &c,
        group("inner"),
        &[Member {
            id: u.id,
            kind: ObjectKind::User,
        }],
    )
    .await
    .unwrap();
    let outer = directory::create_group(
        &mut tx,
        &c,
        group("outer"),
        &[Member {
            id: inner.id,
            kind: ObjectKind::Group,
        }],
    )
    .await
    .unwrap();
    assert_eq!(
        tx.groups_of(org, u.id).await.unwrap(),
        vec![(inner.id, "inner".to_owned())]
    );
    let many = tx.groups_of_many(org, &[u.id, inner.id, outer.id]).await.unwrap();
    assert_eq!(many.get(&u.id), Some(&vec![(inner.id, "inner".to_owned())]));
    assert_eq!(many.get(&inner.id), Some(&vec![(outer.id, "outer".to_owned())]));
    assert_eq!(many.get(&outer.id), None, "outer is in no group");
    assert!(!tx
        .add_member(
            org,
            inner.id,
            Member {
                id: u.id,
                kind: ObjectKind::User
            }
        )
        .await
        .unwrap());
    directory::delete_group(&mut tx, &c, inner.id).await.unwrap();
    assert!(tx.group_members(org, outer.id).await.unwrap().is_empty());
    assert!(tx.groups_of(org, u.id).await.unwrap().is_empty());
    directory::delete_user(&mut tx, &c, u.id).await.unwrap();
    assert!(tx.get_user(org, u.id).await.unwrap().is_none());
    assert!(matches!(
        directory::delete_user(&mut tx, &c, u.id).await,
        Err(StoreError::NotFound)
    ));
});

fn group(name: &str) -> NewGroup {
    NewGroup {
        name: name.into(),
        external_id: None,
        doc: json!({}),
    }
}

both_engines!(
    feed_sequences_are_per_org_and_writes_that_change_nothing_record_nothing,
    |engine| async move {
        let (_db, store) = fresh(engine).await;
        let a = create_org(&store, "A").await.id;
        let b = create_org(&store, "B").await.id;
        let mut tx = store.begin().await.unwrap();
        let u = directory::create_user(&mut tx, &ctx(a), user("ann"), None)
            .await
            .unwrap();
        directory::create_user(&mut tx, &ctx(b), user("bob"), None)
            .await
            .unwrap();
        assert_eq!(tx.feed_head(a).await.unwrap(), 1);
        assert_eq!(tx.feed_head(b).await.unwrap(), 1);
        let audit_before = tx.list_audit(a, None, 100).await.unwrap().len();
        // Same state again: no write, no feed, no audit.
        let (_, changed) = directory::update_user(&mut tx, &ctx(a), &u, user("ann"), None)
            .await
            .unwrap();
        assert!(!changed);
        assert_eq!(tx.feed_head(a).await.unwrap(), 1);
        assert_eq!(tx.list_audit(a, None, 100).await.unwrap().len(), audit_before);
        // A real change: one feed entry with the new record.
        let mut next = user("ann");
        next.active = false;
        let (_, changed) = directory::update_user(&mut tx, &ctx(a), &u, next, None).await.unwrap();
        assert!(changed);
        let feed = tx.read_feed(a, 1, 10).await.unwrap();
        assert_eq!(feed.len(), 1);
        assert!(matches!(&feed[0].change, CloudChange::UpsertUser { record, .. } if !record.active));
        let audit = tx.list_audit(a, None, 1).await.unwrap();
        assert_eq!(audit[0].action, "user.suspend");
    }
);

both_engines!(concurrent_writers_get_distinct_sequence_numbers, |engine| async move {
    let (_db, store) = fresh(engine).await;
    let org = create_org(&store, "A").await.id;
    let mut tasks = Vec::new();
    for i in 0..8 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            let mut tx = store.begin().await.unwrap();
            directory::create_user(&mut tx, &ctx(org), user(&format!("u{i}")), None)
                .await
                .unwrap();
            tx.commit().await.unwrap();
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let mut tx = store.begin().await.unwrap();
    let seqs: Vec<i64> = tx.read_feed(org, 0, 100).await.unwrap().iter().map(|r| r.seq).collect();
    assert_eq!(seqs, (1..=8).collect::<Vec<_>>());
});

both_engines!(many_members_are_one_feed_run_and_one_audit_entry, |engine| async move {
    let (_db, store) = fresh(engine).await;
    let org = create_org(&store, "A").await.id;
    let mut tx = store.begin().await.unwrap();
    let c = ctx(org);
    let mut members = Vec::new();
    for i in 0..250 {
        let u = directory::create_user(&mut tx, &c, user(&format!("m{i:03}")), None)
            .await
            .unwrap();
        members.push(Member {
            id: u.id,
            kind: ObjectKind::User,
        });
    }
    let g = directory::create_group(&mut tx, &c, group("big"), &[]).await.unwrap();
    let head = tx.feed_head(org).await.unwrap();
    let audit_before = tx.list_audit(org, None, 1000).await.unwrap().len();
    assert!(directory::add_members(&mut tx, &c, g.id, &members).await.unwrap());
    let feed = tx.read_feed(org, head, 1000).await.unwrap();
    assert_eq!(feed.len(), 250, "one entry per member, across several INSERTs of 100");
    let seqs: Vec<i64> = feed.iter().map(|r| r.seq).collect();
    assert_eq!(seqs, (head + 1..=head + 250).collect::<Vec<_>>());
    for (row, m) in feed.iter().zip(&members) {
        assert!(
            matches!(row.change, CloudChange::AddMember { group, member, .. } if group == g.id && member == m.id),
            "in order: {:?}",
            row.change
        );
    }
    let audit = tx.list_audit(org, None, 1000).await.unwrap();
    assert_eq!(audit.len(), audit_before + 1);
    assert_eq!(audit[0].action, "group.member_add");
    assert_eq!(audit[0].details["members"].as_array().unwrap().len(), 250);
    // Adding them again changes nothing.
    assert!(!directory::add_members(&mut tx, &c, g.id, &members).await.unwrap());
    assert_eq!(tx.feed_head(org).await.unwrap(), head + 250);
    assert!(directory::remove_members(&mut tx, &c, g.id, &members[..2])
        .await
        .unwrap());
    assert_eq!(tx.feed_head(org).await.unwrap(), head + 252);
    assert_eq!(tx.group_members(org, g.id).await.unwrap().len(), 248);
});

both_engines!(domains_keys_agents_and_leases, |engine| async move {
    let (_db, store) = fresh(engine).await;
    let a = create_org(&store, "A").await.id;
    let b = create_org(&store, "B").await.id;
    let mut tx = store.begin().await.unwrap();
    let d = tx.insert_domain(a, &settings("example.test"), 1).await.unwrap();
    tx.commit().await.unwrap();
    let mut tx = store.begin().await.unwrap();
    assert!(matches!(
        tx.insert_domain(a, &settings("example.test"), 1).await,
        Err(StoreError::Conflict(_))
    ));
    drop(tx);
    let mut tx = store.begin().await.unwrap();
    tx.insert_domain(b, &settings("example.test"), 1).await.unwrap();
    assert!(matches!(tx.get_domain(b, d.id).await, Err(StoreError::NotFound)));

    tx.insert_connect_key(a, d.id, "hash-1", 10, 100).await.unwrap();
    tx.insert_connect_key(a, d.id, "hash-old", 10, 50).await.unwrap();
    assert_eq!(
        tx.consume_connect_key("nope", 20).await.unwrap().unwrap_err(),
        ConnectKeyProblem::Unknown
    );
    assert_eq!(
        tx.consume_connect_key("hash-old", 60).await.unwrap().unwrap_err(),
        ConnectKeyProblem::Expired
    );
    let key = tx.consume_connect_key("hash-1", 20).await.unwrap().unwrap();
    assert_eq!(key.domain_id, d.id);
    assert_eq!(
        tx.consume_connect_key("hash-1", 21).await.unwrap().unwrap_err(),
        ConnectKeyProblem::Used
    );

    let one = tx.insert_agent(a, d.id, "dc1", "0.1", "pk", "t1", 100).await.unwrap();
    let two = tx.insert_agent(a, d.id, "dc2", "0.1", "pk", "t2", 100).await.unwrap();
    assert!(tx.acquire_lease(&one, 100, 30_000).await.unwrap().primary);
    let standby = tx.acquire_lease(&two, 110, 30_000).await.unwrap();
    assert!(!standby.primary);
    assert_eq!(standby.holder, Some(one.id));
    assert!(tx.acquire_lease(&one, 20_000, 30_000).await.unwrap().primary, "renewal");
    // The primary stops renewing: the standby takes over after expiry.
    assert!(!tx.acquire_lease(&two, 49_000, 30_000).await.unwrap().primary);
    assert!(tx.acquire_lease(&two, 50_001, 30_000).await.unwrap().primary);
    // Revoking the holder frees the lease at once.
    tx.revoke_agent(a, d.id, two.id, 50_002).await.unwrap();
    assert!(tx.acquire_lease(&one, 50_003, 30_000).await.unwrap().primary);
    assert_eq!(tx.list_agents(a, d.id).await.unwrap().len(), 1);
    assert!(tx
        .find_agent_by_token("t2")
        .await
        .unwrap()
        .unwrap()
        .revoked_at
        .is_some());
});

both_engines!(cookie_compare_and_swap_and_cursor, |engine| async move {
    let (_db, store) = fresh(engine).await;
    let a = create_org(&store, "A").await.id;
    let mut tx = store.begin().await.unwrap();
    let d = tx.insert_domain(a, &settings("example.test"), 1).await.unwrap();
    assert!(tx.swap_ad_cookie(a, d.id, None, Some("c1")).await.unwrap());
    assert!(
        !tx.swap_ad_cookie(a, d.id, None, Some("c2")).await.unwrap(),
        "stale from-cookie"
    );
    assert!(tx.swap_ad_cookie(a, d.id, Some("c1"), Some("c2")).await.unwrap());
    assert_eq!(tx.get_domain(a, d.id).await.unwrap().ad_cookie.as_deref(), Some("c2"));
    assert_eq!(tx.advance_feed_cursor(a, d.id, 5).await.unwrap(), 5);
    assert_eq!(tx.advance_feed_cursor(a, d.id, 3).await.unwrap(), 5, "never backwards");
});

both_engines!(concurrent_connect_key_use_succeeds_once, |engine| async move {
    let (_db, store) = fresh(engine).await;
    let a = create_org(&store, "A").await.id;
    let mut tx = store.begin().await.unwrap();
    let d = tx.insert_domain(a, &settings("example.test"), 1).await.unwrap();
    tx.insert_connect_key(a, d.id, "k", 1, i64::MAX).await.unwrap();
    tx.commit().await.unwrap();
    let mut tasks = Vec::new();
    for _ in 0..4 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            let mut tx = store.begin().await.unwrap();
            let r = tx.consume_connect_key("k", 2).await.unwrap();
            tx.commit().await.unwrap();
            r.is_ok()
        }));
    }
    let mut wins = 0;
    for t in tasks {
        wins += usize::from(t.await.unwrap());
    }
    assert_eq!(wins, 1);
});

both_engines!(audit_pages_newest_first, |engine| async move {
    let (_db, store) = fresh(engine).await;
    let a = create_org(&store, "A").await.id;
    let mut tx = store.begin().await.unwrap();
    for i in 0..5 {
        tx.append_audit(a, "t", &format!("act{i}"), "x", &json!({}), i)
            .await
            .unwrap();
    }
    let first = tx.list_audit(a, None, 2).await.unwrap();
    assert_eq!(
        first.iter().map(|e| e.action.as_str()).collect::<Vec<_>>(),
        ["act4", "act3"]
    );
    let next = tx.list_audit(a, Some(first[1].seq), 10).await.unwrap();
    assert_eq!(next.len(), 3);
    assert_eq!(next[0].action, "act2");
});

/// The SQLite database holds password hashes and sealed secrets: it and
/// its WAL and shared-memory files are the owner's alone, and an older
/// install's files are restricted when the store opens them.
#[cfg(unix)]
#[tokio::test]
async fn sqlite_files_are_private_to_the_owner() {
    use std::os::unix::fs::PermissionsExt;
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("ferry.db");
    let url = format!("sqlite://{}", db.display());
    let store = Store::open(&url).await.unwrap();
    let mut tx = store.begin().await.unwrap();
    tx.insert_org("Acme", 1).await.unwrap();
    tx.commit().await.unwrap();
    for suffix in ["", "-wal", "-shm"] {
        let p = dir.path().join(format!("ferry.db{suffix}"));
        assert_eq!(mode(&p), 0o600, "{}", p.display());
    }
    store.close().await;
    for suffix in ["", "-wal", "-shm"] {
        let p = dir.path().join(format!("ferry.db{suffix}"));
        if p.exists() {
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
        }
    }
    let store = Store::open(&url).await.unwrap();
    assert_eq!(mode(&db), 0o600);
    store.close().await;
}
