//! The store suite: one set of tests, run against SQLite and PostgreSQL.
#![allow(clippy::unwrap_used, clippy::panic)] // a failed unwrap is a failed test

mod common;

use std::collections::BTreeSet;

use common::{create_org, Engine, TestDb};
use ferry_cloud::directory::{self, WriteCtx};
use ferry_cloud::store::{
    ConnectKeyProblem, DomainSettings, Link, Member, NewGroup, NewUser, Store, StoreError, Tx, UserQuery,
};
use ferry_proto::agent::{CloudChange, DomainPolicies, SyncDirection, SyncErrorReport, FEED_MEMBERS_MAX};
use ferry_proto::record::ObjectKind;
use serde_json::{json, Value};
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

// Migration 12 rebuilt `memberships` without its key to `orgs`: the rows
// of before stay, and the group's key still holds (a membership of no
// group is refused, and a group's memberships go with it).
both_engines!(
    memberships_keep_their_rows_and_their_groups_key_through_migration_12,
    |engine| async move {
        let db = TestDb::new(engine).await;
        let store = db.open().await;
        let org = create_org(&store, "A").await.id;
        let mut tx = store.begin().await.unwrap();
        let u = tx.insert_user(org, &user("ann"), 1).await.unwrap();
        let g = tx.insert_group(org, &group("crew"), 1).await.unwrap();
        let ann = Member {
            id: u.id,
            kind: ObjectKind::User,
        };
        assert!(tx.add_member(org, g.id, ann).await.unwrap());
        tx.commit().await.unwrap();
        store.close().await;
        // The database as a cloud of before left it: migration 12 runs again.
        forget_migration(&db.url, 12).await;
        let store = db.open().await;
        let mut tx = store.begin().await.unwrap();
        assert_eq!(tx.group_members(org, g.id).await.unwrap(), vec![ann]);
        assert!(
            tx.add_member(org, Uuid::new_v4(), ann).await.is_err(),
            "a membership of no group is refused"
        );
        drop(tx);
        let mut tx = store.begin().await.unwrap();
        tx.delete_group(org, g.id).await.unwrap();
        assert!(tx.group_members(org, g.id).await.unwrap().is_empty());
        assert!(tx.groups_of(org, u.id).await.unwrap().is_empty());
    }
);

// Migration 13 (PostgreSQL only) drops the keys to `orgs` of the tables an
// import writes per object; the keys that guard something stay on both
// engines, and SQLite keeps all of its own.
both_engines!(
    migration_13_drops_the_org_keys_of_hot_tables_on_postgres_only,
    |engine| async move {
        let db = TestDb::new(engine).await;
        db.open().await.close().await;
        let keys = foreign_keys(&db.url).await;
        let hot = ["dir_users", "dir_groups", "links", "feed", "audit"];
        for table in hot {
            let to_orgs = keys.contains(&(table.to_owned(), "orgs".to_owned()));
            assert_eq!(to_orgs, engine == Engine::Sqlite, "{table} → orgs on {engine:?}");
        }
        for kept in [("links", "domains"), ("domains", "orgs"), ("agents", "domains")] {
            assert!(
                keys.contains(&(kept.0.to_owned(), kept.1.to_owned())),
                "{kept:?} on {engine:?}: {keys:?}"
            );
        }
        // Migration 14: a membership's key to its group, SQLite only.
        let to_group = keys.contains(&("memberships".to_owned(), "dir_groups".to_owned()));
        assert_eq!(
            to_group,
            engine == Engine::Sqlite,
            "memberships → dir_groups on {engine:?}"
        );
    }
);

// What a membership's key to its group guarded holds without it (migration
// 14 drops it on PostgreSQL): an add racing a delete of the group, in
// either order, leaves no membership of a group that is gone. On
// PostgreSQL the second transaction is seen waiting for the first's lock
// before the first commits, so each order is the one meant; SQLite's one
// connection runs them one after the other. The PostgreSQL database
// defaults to REPEATABLE READ, which the store overrides.
both_engines!(
    a_membership_never_outlives_its_group_when_an_add_races_a_delete,
    |engine| async move {
        let db = TestDb::new(engine).await;
        if engine == Engine::Postgres {
            // A server whose default is a snapshot per transaction: the
            // store still runs at READ COMMITTED, which the delete needs.
            sqlx::any::install_default_drivers();
            let mut conn = <sqlx::AnyConnection as sqlx::Connection>::connect(&db.url)
                .await
                .unwrap();
            let name = db.url.rsplit('/').next().unwrap().to_owned();
            let sql = format!("ALTER DATABASE {name} SET default_transaction_isolation = 'repeatable read'");
            sqlx::Executor::execute(&mut conn, sql.as_str()).await.unwrap();
            sqlx::Connection::close(conn).await.unwrap();
        }
        let store = db.open().await;
        let org = create_org(&store, "A").await.id;
        let mut tx = store.begin().await.unwrap();
        let u = tx.insert_user(org, &user("ann"), 1).await.unwrap();
        let ann = Member {
            id: u.id,
            kind: ObjectKind::User,
        };
        let first = tx.insert_group(org, &group("first"), 1).await.unwrap().id;
        let second = tx.insert_group(org, &group("second"), 1).await.unwrap().id;
        let third = tx.insert_group(org, &group("third"), 1).await.unwrap().id;
        tx.commit().await.unwrap();

        // The add first: the delete waits for it, and takes its membership along.
        let mut adding = store.begin().await.unwrap();
        assert_eq!(adding.add_members_many(org, first, &[ann]).await.unwrap(), vec![ann]);
        let deleting = tokio::spawn({
            let store = store.clone();
            async move {
                let mut tx = store.begin().await.unwrap();
                tx.delete_group(org, first).await.unwrap();
                tx.commit().await.unwrap();
            }
        });
        waits_for_a_lock(
            &db.url,
            engine,
            "the delete did not wait for the add's lock on the group",
        )
        .await;
        adding.commit().await.unwrap();
        deleting.await.unwrap();
        assert_eq!(
            memberships_of(&db.url, first).await,
            0,
            "a membership outlived its group"
        );
        // Adding no one to a group that is gone (a `SetMembers` that only
        // removes) is nothing, as it was with the key.
        let mut tx = store.begin().await.unwrap();
        assert_eq!(tx.add_members_many(org, first, &[]).await.unwrap(), vec![]);
        drop(tx);

        // The delete first: the add waits for it, then finds the group gone.
        let added = add_after_a_delete(&store, &db.url, engine, org, second, move |mut tx| async move {
            tx.add_member(org, second, ann).await.map(|_| tx)
        })
        .await;
        assert!(added.is_err(), "a member added to a deleted group");
        assert_eq!(
            memberships_of(&db.url, second).await,
            0,
            "a membership outlived its group"
        );

        // The same through the agent's path, memberships of many groups at once.
        let added = add_after_a_delete(&store, &db.url, engine, org, third, move |mut tx| async move {
            tx.insert_memberships(org, &[(third, ann)]).await.map(|()| tx)
        })
        .await;
        assert!(added.is_err(), "memberships added to a deleted group");
        assert_eq!(
            memberships_of(&db.url, third).await,
            0,
            "a membership outlived its group"
        );
    }
);

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

/// The totals of unfiltered lists (the org's kept counts) and the counts
/// of the rows themselves.
async fn totals(store: &Store, org: Uuid) -> ((i64, i64), (i64, i64)) {
    let mut tx = store.begin().await.unwrap();
    let kept_users = tx.list_users(org, &UserQuery::default()).await.unwrap().1;
    // A filter every user matches: counted row by row.
    let all = UserQuery {
        username_like: Some("%".into()),
        ..Default::default()
    };
    let counted_users = tx.list_users(org, &all).await.unwrap().1;
    let kept_groups = tx.list_groups(org, 0, 0).await.unwrap().1;
    let mut counted_groups = 0;
    let mut after: Option<String> = None;
    loop {
        let batch = tx.scan_groups(org, after.as_deref(), 100).await.unwrap();
        counted_groups += batch.len() as i64;
        match batch.last() {
            Some(g) => after = Some(g.name.to_lowercase()),
            None => break,
        }
    }
    ((kept_users, counted_users), (kept_groups, counted_groups))
}

both_engines!(list_totals_are_kept_through_inserts_and_deletes, |engine| async move {
    let (_db, store) = fresh(engine).await;
    let org = create_org(&store, "A").await.id;
    let other = create_org(&store, "B").await.id;
    let c = ctx(org);
    let mut tx = store.begin().await.unwrap();
    let mut ids = Vec::new();
    for n in ["carol", "alice", "bob", "dave"] {
        ids.push(directory::create_user(&mut tx, &c, user(n), None).await.unwrap().id);
    }
    let batch: Vec<(Uuid, NewUser)> = (0..150).map(|i| (Uuid::new_v4(), user(&format!("b{i:03}")))).collect();
    tx.insert_users_many(org, &batch, None, 1).await.unwrap();
    let g = directory::create_group(&mut tx, &c, group("staff"), &[]).await.unwrap();
    directory::create_group(&mut tx, &c, group("ops"), &[]).await.unwrap();
    directory::create_user(&mut tx, &ctx(other), user("zed"), None)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    assert_eq!(totals(&store, org).await, ((154, 154), (2, 2)));
    assert_eq!(totals(&store, other).await, ((1, 1), (0, 0)));

    // A refused insert and a rolled-back one count nothing.
    let mut tx = store.begin().await.unwrap();
    assert!(tx.insert_user(org, &user("BOB"), 1).await.is_err());
    drop(tx);
    let mut tx = store.begin().await.unwrap();
    tx.insert_user(org, &user("erin"), 1).await.unwrap();
    drop(tx);
    assert_eq!(totals(&store, org).await, ((154, 154), (2, 2)));

    let mut tx = store.begin().await.unwrap();
    directory::delete_user(&mut tx, &c, ids[0]).await.unwrap();
    directory::delete_user(&mut tx, &c, ids[1]).await.unwrap();
    assert!(directory::delete_user(&mut tx, &c, ids[1]).await.is_err());
    directory::delete_group(&mut tx, &c, g.id).await.unwrap();
    tx.commit().await.unwrap();
    assert_eq!(totals(&store, org).await, ((152, 152), (1, 1)));
    assert_eq!(totals(&store, other).await, ((1, 1), (0, 0)));
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
    for i in 0..1001 {
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
    assert!(directory::add_members(&mut tx, &c, g.id, &members).await.unwrap());
    let feed = tx.read_feed(org, head, 1000).await.unwrap();
    assert_eq!(feed.len(), 3, "one entry per {FEED_MEMBERS_MAX} members");
    let seqs: Vec<i64> = feed.iter().map(|r| r.seq).collect();
    assert_eq!(seqs, (head + 1..=head + 3).collect::<Vec<_>>());
    let mut named = Vec::new();
    for row in &feed {
        let CloudChange::AddMembers { group, members } = &row.change else {
            panic!("a membership entry of many: {:?}", row.change);
        };
        assert_eq!(*group, g.id);
        assert!(members.len() <= FEED_MEMBERS_MAX);
        named.extend(members.iter().map(|m| Member { id: m.id, kind: m.kind }));
        assert_eq!(row.object_id, g.id);
    }
    assert_eq!(named, members, "every member, in order");
    let audit = tx.list_audit(org, None, 2).await.unwrap();
    assert_eq!(audit[1].action, "group.create", "one audit entry for all");
    assert_eq!(audit[0].action, "group.member_add");
    assert_eq!(audit[0].details["members"].as_array().unwrap().len(), 1001);
    // Adding them again changes nothing.
    assert!(!directory::add_members(&mut tx, &c, g.id, &members).await.unwrap());
    assert_eq!(tx.feed_head(org).await.unwrap(), head + 3);
    assert!(directory::remove_members(&mut tx, &c, g.id, &members[..2])
        .await
        .unwrap());
    assert_eq!(tx.feed_head(org).await.unwrap(), head + 4, "two removed: one entry");
    assert_eq!(tx.group_members(org, g.id).await.unwrap().len(), 999);
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

// An AD batch applied whole (where new objects are created together, in
// multi-row statements) leaves exactly what the same batch applied change
// by change leaves: objects, homes, links and their bases, memberships,
// and every feed and audit entry with its sequence number. The batch mixes
// new objects with what must take the ordinary path: a second change of a
// new object, a soft match, a linked object, one deleted in the cloud, a
// manager, a name freed and taken again within the batch, members named
// before they exist.
both_engines!(
    an_ad_batch_applied_whole_equals_it_applied_change_by_change,
    |engine| async move {
        use ferry_cloud::directory::ad_apply::{apply_ad_changes, Isolation};
        use ferry_proto::agent::{AdChange, PushChangesRequest};
        use ferry_proto::record::{GroupRecord, UserRecord};

        let (_db, store) = fresh(engine).await;
        let guids: Vec<Uuid> = (0..13).map(|_| Uuid::new_v4()).collect();
        let gg0 = guids[12];
        let (g1, g2, g3, gt, gl, gd, g5, g6, g7, gg1, gg2, gg3) = (
            guids[0], guids[1], guids[2], guids[3], guids[4], guids[5], guids[6], guids[7], guids[8], guids[9],
            guids[10], guids[11],
        );
        let user = |guid: Uuid, name: &str, title: &str| AdChange::UpsertUser {
            guid,
            dn: format!("CN={name},OU=People,DC=example,DC=test"),
            record: Box::new(UserRecord {
                username: name.into(),
                given_name: Some("Given".into()),
                email: Some(format!("{name}@example.test")),
                title: Some(title.into()),
                active: true,
                ..Default::default()
            }),
            changed_at: Some(500),
        };
        let group = |guid: Uuid, name: &str| AdChange::UpsertGroup {
            guid,
            dn: format!("CN={name},OU=Groups,DC=example,DC=test"),
            record: GroupRecord {
                name: name.into(),
                description: Some("d".into()),
            },
        };
        let mut waiting = user(g2, "u2", "t");
        if let AdChange::UpsertUser { record, .. } = &mut waiting {
            record.active = false;
            record.awaiting_password = true;
        }
        let mut managed = user(g5, "u5", "t");
        if let AdChange::UpsertUser { record, .. } = &mut managed {
            record.manager = Some(g1.to_string());
        }
        let batch = vec![
            user(g1, "u1", "first"),
            group(gg1, "G1"),
            user(gt, "Taken", "t"),
            waiting,
            AdChange::SetMembers {
                group: gg1,
                members: vec![g1, g2, g3, gl],
            },
            // A group only added to and removed from in its run, with
            // members from before: read by the memberships named, not whole.
            AdChange::AddMembers {
                group: gg0,
                members: vec![gl, g1, g1],
            },
            AdChange::RemoveMembers {
                group: gg0,
                members: vec![g2],
            },
            AdChange::AddMembers {
                group: gg0,
                members: vec![g2],
            },
            AdChange::RemoveMembers {
                group: gg0,
                members: vec![gl],
            },
            user(g3, "u3", "t"),
            user(g1, "u1", "second"),
            user(gl, "linked", "new"),
            user(gd, "gone2", "t"),
            managed,
            group(gg2, "u1"),
            user(g6, "u6", "t"),
            AdChange::Delete { guid: g6 },
            user(g7, "U6", "t"),
            group(gg3, "G3"),
            AdChange::AddMembers {
                group: gg1,
                members: vec![g3, g3, g5],
            },
            AdChange::RemoveMembers {
                group: gg1,
                members: vec![g2, Uuid::new_v4()],
            },
            AdChange::SetMembers {
                group: gg3,
                members: vec![g1, gg1],
            },
            AdChange::SetMembers {
                group: gg0,
                members: vec![g1, g5],
            },
            AdChange::AddMembers {
                group: gg3,
                members: vec![g2],
            },
            AdChange::RemoveMembers {
                group: gg3,
                members: vec![g2],
            },
            AdChange::SetMembers {
                group: gg1,
                members: vec![g1, g5, gl],
            },
        ];

        let mut seen = Vec::new();
        for isolation in [Isolation::Batch, Isolation::PerChange] {
            let org = create_org(&store, &format!("{isolation:?}")).await.id;
            let mut tx = store.begin().await.unwrap();
            let mut s = settings("example.test");
            s.policies.match_existing_users = true;
            let domain = tx.insert_domain(org, &s, 1).await.unwrap();
            let cloud = ctx(org);
            let agent = WriteCtx {
                org_id: org,
                origin: domain.id.to_string(),
                actor: "agent:test".into(),
                now: 2000,
            };
            directory::create_user(&mut tx, &cloud, user_named("taken"), None)
                .await
                .unwrap();
            let setup = PushChangesRequest {
                from_cookie: None,
                to_cookie: Some("c0".into()),
                repair: false,
                changes: vec![
                    user(gl, "linked", "old"),
                    user(gd, "gone", "t"),
                    group(gg0, "G0"),
                    AdChange::SetMembers {
                        group: gg0,
                        members: vec![gl, gd],
                    },
                ],
            };
            apply_ad_changes(&mut tx, &agent, &domain, &setup, Isolation::PerChange)
                .await
                .unwrap();
            let gone = tx.link_by_guid(org, domain.id, gd).await.unwrap().unwrap().object_id;
            directory::delete_user(&mut tx, &cloud, gone).await.unwrap();
            let push = PushChangesRequest {
                from_cookie: Some("c0".into()),
                to_cookie: Some("c1".into()),
                changes: batch.clone(),
                repair: false,
            };
            let answer = apply_ad_changes(&mut tx, &agent, &domain, &push, isolation)
                .await
                .unwrap();
            assert_eq!(answer.refused, 0);

            // Cloud ids differ between the two runs: each object is named by
            // the name it was created with, and lists the store keeps in id
            // order (a group's members, the entries of one membership change)
            // are compared as sets.
            let audit = tx.list_audit(org, None, 1000).await.unwrap();
            let mut names = std::collections::HashMap::new();
            for a in &audit {
                let name = a.details.get("userName").or_else(|| a.details.get("displayName"));
                if let (true, Some(name)) = (a.action.ends_with(".create"), name) {
                    let (kind, id) = a.target.split_once(':').unwrap();
                    names.insert(id.to_owned(), format!("{}({kind})", name.as_str().unwrap()));
                }
            }
            let label = |v: Value| -> String {
                let mut text = v.to_string();
                for (id, name) in &names {
                    text = text.replace(id, name);
                }
                text
            };
            let mut objects = Vec::new();
            for link in tx.links_of_domain(org, domain.id).await.unwrap() {
                let object = match link.kind {
                    ObjectKind::User => {
                        let u = tx.get_user(org, link.object_id).await.unwrap().unwrap();
                        json!([u.username, u.doc, u.active, u.home_domain, u.version])
                    }
                    ObjectKind::Group => {
                        let g = tx.get_group(org, link.object_id).await.unwrap().unwrap();
                        let mut members: Vec<String> = tx
                            .group_members(org, g.id)
                            .await
                            .unwrap()
                            .iter()
                            .map(|m| label(json!(m.id)))
                            .collect();
                        members.sort();
                        json!([g.name, g.doc, g.home_domain, g.version, members])
                    }
                };
                objects.push(label(json!([
                    link.ad_guid,
                    link.kind.as_str(),
                    link.object_id,
                    link.ad_dn,
                    link.base,
                    link.ad_digest,
                    object
                ])));
            }
            let mut feed: Vec<(String, String)> = tx
                .read_feed(org, 0, 1000)
                .await
                .unwrap()
                .into_iter()
                .flat_map(|f| {
                    // A membership entry of many as one per member: a batch
                    // groups what change by change is one entry each.
                    f.change.clone().per_member().into_iter().map(move |c| {
                        let named = c.objects();
                        let links: Vec<_> = f.links.iter().filter(|l| named.contains(&l.object_id)).collect();
                        let change = serde_json::to_value(&c).unwrap();
                        let block = label(json!([f.object_id, change.get("op"), change.get("type")]));
                        (
                            block,
                            label(json!([f.origin, change, f.at, serde_json::to_value(&links).unwrap()])),
                        )
                    })
                })
                .collect();
            // The entries of one membership change follow each other in member-id order.
            let mut i = 0;
            while i < feed.len() {
                let n = feed[i..].iter().take_while(|(b, _)| *b == feed[i].0).count();
                feed[i..i + n].sort();
                i += n;
            }
            let audit: Vec<String> = audit
                .into_iter()
                .map(|mut a| {
                    if let Some(Value::Array(members)) = a.details.get_mut("members") {
                        members.sort_by_key(|m| label(m.clone()));
                    }
                    label(json!([a.seq, a.actor, a.action, a.target, a.details]))
                })
                .collect();
            tx.commit().await.unwrap();
            let snapshot = json!({ "org": org, "domain": domain.id, "objects": objects, "feed": feed, "audit": audit });
            seen.push(uuids_by_first_appearance(&snapshot.to_string()));
        }
        assert_eq!(seen[0], seen[1]);
        // What the batch did, so that the equality above is not two empty stores.
        assert!(seen[0].contains("U6(user)"), "the freed name taken again");
        assert!(seen[0].contains("sync.user_matched"));
        assert!(seen[0].contains("second"), "a new user changed again in its batch");
        assert!(seen[0].contains("group.member_remove") && seen[0].contains("group.member_add"));
        assert!(!seen[0].contains("gone2"), "deleted in the cloud, it stays deleted");
    }
);

fn user_named(name: &str) -> NewUser {
    user(name)
}

/// `text` with every UUID replaced by `#n`, n counting distinct UUIDs in
/// the order they first appear.
fn uuids_by_first_appearance(text: &str) -> String {
    let mut names: std::collections::HashMap<String, usize> = std::collections::HashMap::new();
    let mut out = String::new();
    let mut i = 0;
    while i < text.len() {
        let candidate = text
            .get(i..i + 36)
            .filter(|c| Uuid::parse_str(c).is_ok() && c.as_bytes()[8] == b'-');
        match candidate {
            Some(c) => {
                let n = names.len();
                let n = *names.entry(c.to_owned()).or_insert(n);
                out.push_str(&format!("#{n}"));
                i += 36;
            }
            None => {
                let ch = text[i..].chars().next().unwrap_or(' ');
                out.push(ch);
                i += ch.len_utf8();
            }
        }
    }
    out
}

both_engines!(an_agents_own_entries_are_passed_over_in_one_read, |engine| async move {
    let (_db, store) = fresh(engine).await;
    let org = create_org(&store, "A").await.id;
    let mut tx = store.begin().await.unwrap();
    let own = WriteCtx {
        origin: "domain-a".into(),
        ..ctx(org)
    };
    // 1-3 the agent's own, 4 the cloud's, 5-9 own again, 10 the cloud's, 11-12 own.
    let mut n = 0;
    let mut write = |c: WriteCtx, k: usize| {
        let names: Vec<String> = (0..k)
            .map(|_| {
                n += 1;
                format!("f{n:02}")
            })
            .collect();
        (c, names)
    };
    for (c, names) in [
        write(own.clone(), 3),
        write(ctx(org), 1),
        write(own.clone(), 5),
        write(ctx(org), 1),
        write(own.clone(), 2),
    ] {
        for name in names {
            directory::create_user(&mut tx, &c, user(&name), None).await.unwrap();
        }
    }
    let head = tx.feed_head(org).await.unwrap();
    assert_eq!(head, 12);
    // Two at a time: the cloud's 4 and 10, then nothing left but own entries up to the head.
    let (rows, next) = tx.read_feed_for(org, 0, 2, "domain-a").await.unwrap();
    assert_eq!(rows.iter().map(|r| r.seq).collect::<Vec<_>>(), vec![4, 10]);
    assert_eq!(next, 10, "a full page ends at its last entry");
    let (rows, next) = tx.read_feed_for(org, next, 2, "domain-a").await.unwrap();
    assert!(rows.is_empty());
    assert_eq!(next, 12, "own entries up to the head are passed over");
    // A page that is not full moves the cursor to the head.
    let (rows, next) = tx.read_feed_for(org, 0, 5, "domain-a").await.unwrap();
    assert_eq!(rows.len(), 2);
    assert_eq!(next, 12);
    // Another domain's agent has no entries of its own here: it sees all twelve.
    let (rows, next) = tx.read_feed_for(org, 0, 100, "domain-b").await.unwrap();
    assert_eq!(rows.len(), 12);
    assert_eq!(next, 12);
    // A cursor at the head stays there.
    let (rows, next) = tx.read_feed_for(org, 12, 100, "domain-a").await.unwrap();
    assert!(rows.is_empty());
    assert_eq!(next, 12);
});

both_engines!(
    an_entry_from_a_domain_carries_the_links_of_the_other_domains_only,
    |engine| async move {
        let (_db, store) = fresh(engine).await;
        let org = create_org(&store, "A").await.id;
        let mut tx = store.begin().await.unwrap();
        let d = tx.insert_domain(org, &settings("a.test"), 1).await.unwrap().id;
        let u = directory::create_user(&mut tx, &ctx(org), user("ann"), None)
            .await
            .unwrap()
            .id;
        let link = |domain_id: Uuid, guid: u128| Link {
            domain_id,
            kind: ObjectKind::User,
            object_id: u,
            ad_guid: Uuid::from_u128(guid),
            ad_dn: "CN=ann,DC=x".into(),
            synced_at: 1,
            base: None,
            ad_digest: None,
        };
        tx.put_link(org, &link(d, 1)).await.unwrap();
        let touch = |origin: String| WriteCtx { origin, ..ctx(org) };
        let mut next = user("ann");
        next.active = false;
        let row = tx.get_user(org, u).await.unwrap().unwrap();
        directory::update_user(&mut tx, &touch(d.to_string()), &row, next.clone(), None)
            .await
            .unwrap();
        // One domain: its own entry needs no links (no other agent reads it).
        assert_eq!(links_of_last(&mut tx, org).await, vec![]);
        // A second domain where ann is linked too: its agent reads d's
        // entries and needs its own link from them, never d's.
        let e = tx.insert_domain(org, &settings("b.test"), 1).await.unwrap().id;
        tx.put_link(org, &link(e, 2)).await.unwrap();
        next.active = true;
        let row = tx.get_user(org, u).await.unwrap().unwrap();
        directory::update_user(&mut tx, &touch(d.to_string()), &row, next.clone(), None)
            .await
            .unwrap();
        assert_eq!(links_of_last(&mut tx, org).await, vec![(e, Uuid::from_u128(2))]);
        // The cloud's own entry is read by every domain's agent: all links.
        next.active = false;
        let row = tx.get_user(org, u).await.unwrap().unwrap();
        directory::update_user(&mut tx, &ctx(org), &row, next, None)
            .await
            .unwrap();
        let mut want = vec![(d, Uuid::from_u128(1)), (e, Uuid::from_u128(2))];
        want.sort();
        assert_eq!(links_of_last(&mut tx, org).await, want);
    }
);

/// The (domain, objectGUID) links the org's last feed entry carries.
async fn links_of_last(tx: &mut Tx, org: Uuid) -> Vec<(Uuid, Uuid)> {
    let head = tx.feed_head(org).await.unwrap();
    let row = tx.read_feed(org, head - 1, 1).await.unwrap().remove(0);
    let mut got: Vec<(Uuid, Uuid)> = row.links.iter().map(|l| (l.domain_id, l.ad_guid)).collect();
    got.sort();
    got
}

both_engines!(
    membership_errors_of_before_are_keyed_by_group_and_member_on_upgrade,
    |engine| async move {
        let db = TestDb::new(engine).await;
        let store = db.open().await;
        let org = create_org(&store, "A").await.id;
        let (g, m, other) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
        let mut tx = store.begin().await.unwrap();
        let d = tx.insert_domain(org, &settings("a.test"), 1).await.unwrap().id;
        // As an agent of before reported them: keyed by the group alone.
        let report = |key: String, name: String, operation: &str| SyncErrorReport {
            direction: SyncDirection::CloudToAd,
            object_key: key,
            object_kind: ObjectKind::Group,
            object_name: name,
            operation: operation.into(),
            code: "ldap 53".into(),
            message: "refused".into(),
        };
        for r in [
            report(g.to_string(), format!("group {g} (member {m})"), "add member"),
            // Not a membership: left as it is.
            report(other.to_string(), "Sales".into(), "create or update group"),
        ] {
            tx.record_sync_error(org, d, &r, 1).await.unwrap();
        }
        tx.commit().await.unwrap();
        store.close().await;
        // The database as a cloud of before left it: migration 11 not applied.
        forget_migration(&db.url, 11).await;
        let store = db.open().await;
        let mut tx = store.begin().await.unwrap();
        let mut keys: Vec<String> = tx
            .open_sync_error_keys(org, d)
            .await
            .unwrap()
            .into_iter()
            .map(|(_, k)| k)
            .collect();
        keys.sort();
        let mut want = vec![format!("{g}/{m}"), other.to_string()];
        want.sort();
        assert_eq!(keys, want);
        // The agent's success of that membership now resolves it.
        tx.resolve_sync_errors(org, d, SyncDirection::CloudToAd, &[format!("{g}/{m}")])
            .await
            .unwrap();
        assert_eq!(tx.count_sync_errors(org, d).await.unwrap(), 1);
    }
);

both_engines!(
    a_list_lookup_finds_names_with_quotes_commas_braces_and_backslashes,
    |engine| async move {
        let (_db, store) = fresh(engine).await;
        let org = create_org(&store, "A").await.id;
        let mut tx = store.begin().await.unwrap();
        // Each a character that means something in a JSON or an array literal.
        let names = [r#"a"b"#, r"c\d", "e,f", "{g}", "h i", "NULL", "ünï"];
        for name in names {
            directory::create_user(&mut tx, &ctx(org), user(name), None)
                .await
                .unwrap();
        }
        let mut asked: Vec<String> = names.iter().map(|n| n.to_lowercase()).collect();
        asked.push(r#"a"c"#.into());
        asked.push("".into());
        let taken = tx.taken_name_keys(org, ObjectKind::User, &asked).await.unwrap();
        let mut got: Vec<&str> = taken.iter().map(String::as_str).collect();
        got.sort();
        let mut want: Vec<String> = names.iter().map(|n| n.to_lowercase()).collect();
        want.sort();
        assert_eq!(got, want);
    }
);

// A run of adds and removes on a group that has members, in which the
// cloud refuses one change — the group made a member of itself: the batch
// applied whole is refused, applied change by change the refused change
// alone is left out, and the group, read whole, has exactly the members of
// the other changes. The next run applies whole, on the fast path that
// reads only the memberships it names; the group, read whole, is right.
both_engines!(
    a_refused_membership_change_leaves_the_rest_of_its_run_applied,
    |engine| async move {
        use ferry_cloud::directory::ad_apply::{apply_ad_changes, ApplyError, Isolation};
        use ferry_proto::agent::{AdChange, PushChangesRequest};
        use ferry_proto::record::{GroupRecord, UserRecord};

        let (_db, store) = fresh(engine).await;
        let org = create_org(&store, "Refusals").await.id;
        let mut tx = store.begin().await.unwrap();
        let domain = tx.insert_domain(org, &settings("example.test"), 1).await.unwrap();
        let agent = WriteCtx {
            org_id: org,
            origin: domain.id.to_string(),
            actor: "agent:test".into(),
            now: 2000,
        };
        let (a, b, c, g) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
        let request = |from: Option<&str>, to: &str, changes: Vec<AdChange>| PushChangesRequest {
            from_cookie: from.map(String::from),
            to_cookie: Some(to.into()),
            repair: false,
            changes,
        };
        let adds = |members: Vec<Uuid>| AdChange::AddMembers { group: g, members };
        let removes = |members: Vec<Uuid>| AdChange::RemoveMembers { group: g, members };
        let user = |guid: Uuid, name: &str| AdChange::UpsertUser {
            guid,
            dn: format!("CN={name},OU=People,DC=example,DC=test"),
            record: Box::new(UserRecord {
                username: name.into(),
                active: true,
                ..Default::default()
            }),
            changed_at: None,
        };
        let setup = request(
            None,
            "c0",
            vec![
                user(a, "ann"),
                user(b, "bob"),
                user(c, "cat"),
                AdChange::UpsertGroup {
                    guid: g,
                    dn: "CN=Team,OU=Groups,DC=example,DC=test".into(),
                    record: GroupRecord {
                        name: "Team".into(),
                        description: None,
                    },
                },
                AdChange::SetMembers {
                    group: g,
                    members: vec![a, b],
                },
            ],
        );
        apply_ad_changes(&mut tx, &agent, &domain, &setup, Isolation::Batch)
            .await
            .unwrap();
        tx.commit().await.unwrap();
        let push = request(
            Some("c0"),
            "c1",
            vec![adds(vec![c, a]), adds(vec![g]), removes(vec![b])],
        );
        let mut tx = store.begin().await.unwrap();
        let whole = apply_ad_changes(&mut tx, &agent, &domain, &push, Isolation::Batch).await;
        assert!(matches!(whole, Err(ApplyError::Refused(_))), "{whole:?}");
        drop(tx);
        let mut tx = store.begin().await.unwrap();
        let answer = apply_ad_changes(&mut tx, &agent, &domain, &push, Isolation::PerChange)
            .await
            .unwrap();
        assert_eq!(answer.refused, 1);
        let mut ids = Vec::new();
        for guid in [a, b, c, g] {
            ids.push(tx.link_by_guid(org, domain.id, guid).await.unwrap().unwrap().object_id);
        }
        let (ann, bob, cat, team) = (ids[0], ids[1], ids[2], ids[3]);
        assert_eq!(member_ids(&mut tx, org, team).await, BTreeSet::from([ann, cat]));
        tx.commit().await.unwrap();

        // The next run goes whole, on the fast path: it reads only the
        // memberships it names, and the group, read whole, is what they say.
        let next = request(Some("c1"), "c2", vec![adds(vec![b, c]), removes(vec![a])]);
        let mut tx = store.begin().await.unwrap();
        let answer = apply_ad_changes(&mut tx, &agent, &domain, &next, Isolation::Batch)
            .await
            .unwrap();
        assert_eq!((answer.applied, answer.refused), (2, 0));
        assert_eq!(member_ids(&mut tx, org, team).await, BTreeSet::from([bob, cat]));
        tx.commit().await.unwrap();
    }
);

/// A group's members, read whole, by cloud id.
async fn member_ids(tx: &mut ferry_cloud::store::Tx, org: Uuid, group: Uuid) -> BTreeSet<Uuid> {
    tx.group_members(org, group)
        .await
        .unwrap()
        .into_iter()
        .map(|m| m.id)
        .collect()
}

/// Makes the database at `url` look as a cloud from before migration
/// `version` left it, so the next open applies that migration again.
async fn forget_migration(url: &str, version: i64) {
    sqlx::any::install_default_drivers();
    let mut conn = <sqlx::AnyConnection as sqlx::Connection>::connect(url).await.unwrap();
    sqlx::query("DELETE FROM ferry_migrations WHERE version = $1")
        .bind(version)
        .execute(&mut conn)
        .await
        .unwrap();
    sqlx::Connection::close(conn).await.unwrap();
}

/// Deletes `group` in a transaction, meanwhile runs `add` in another
/// (committed if it succeeds), sees the add wait for the delete, commits
/// the delete, and returns what the add came to.
async fn add_after_a_delete<F, Fut>(
    store: &Store,
    url: &str,
    engine: Engine,
    org: Uuid,
    group: Uuid,
    add: F,
) -> Result<(), StoreError>
where
    F: FnOnce(Tx) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = Result<Tx, StoreError>> + Send,
{
    let mut deleting = store.begin().await.unwrap();
    deleting.delete_group(org, group).await.unwrap();
    let adding = tokio::spawn({
        let store = store.clone();
        async move {
            let tx = store.begin().await.unwrap();
            let tx = add(tx).await?;
            tx.commit().await.unwrap();
            Ok(())
        }
    });
    waits_for_a_lock(url, engine, "the add did not wait for the delete of its group").await;
    deleting.commit().await.unwrap();
    adding.await.unwrap()
}

/// The rows of `memberships` of `group`, read past the store.
async fn memberships_of(url: &str, group: Uuid) -> i64 {
    use sqlx::Row;
    sqlx::any::install_default_drivers();
    let mut conn = <sqlx::AnyConnection as sqlx::Connection>::connect(url).await.unwrap();
    let row = sqlx::query("SELECT COUNT(*) AS n FROM memberships WHERE group_id = $1")
        .bind(group.to_string())
        .fetch_one(&mut conn)
        .await
        .unwrap();
    sqlx::Connection::close(conn).await.unwrap();
    row.get::<i64, _>("n")
}

/// On PostgreSQL, waits (up to 10 s) until a transaction of the database
/// at `url` waits for a row lock; on SQLite, whose one connection queues
/// transactions, a moment.
async fn waits_for_a_lock(url: &str, engine: Engine, otherwise: &str) {
    use sqlx::Row;
    if engine == Engine::Sqlite {
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        return;
    }
    sqlx::any::install_default_drivers();
    let mut conn = <sqlx::AnyConnection as sqlx::Connection>::connect(url).await.unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let row = sqlx::query(
            "SELECT COUNT(*) AS n FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'",
        )
        .fetch_one(&mut conn)
        .await
        .unwrap();
        if row.get::<i64, _>("n") > 0 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{otherwise}");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    sqlx::Connection::close(conn).await.unwrap();
}

/// Every foreign key of the schema, as (table, referenced table).
async fn foreign_keys(url: &str) -> BTreeSet<(String, String)> {
    use sqlx::Row;
    sqlx::any::install_default_drivers();
    let mut conn = <sqlx::AnyConnection as sqlx::Connection>::connect(url).await.unwrap();
    let sql = if url.starts_with("sqlite") {
        "SELECT m.name AS child, f.\"table\" AS parent FROM sqlite_master m, pragma_foreign_key_list(m.name) f
         WHERE m.type = 'table'"
    } else {
        "SELECT conrelid::regclass::text AS child, confrelid::regclass::text AS parent FROM pg_constraint
         WHERE contype = 'f'"
    };
    let rows = sqlx::query(sql).fetch_all(&mut conn).await.unwrap();
    sqlx::Connection::close(conn).await.unwrap();
    rows.iter()
        .map(|r| (r.get::<String, _>("child"), r.get::<String, _>("parent")))
        .collect()
}
