//! Anti-entropy (issue 13): drift that no change notification shows —
//! writes lost on their way, in either direction — is found by the
//! comparison of both sides whole (`POST /api/v1/domains/{id}/audit`, and
//! every 15 minutes) and repaired, and an equal domain compares equal.
//!
//! The drift is made in the cloud's store directly, as a lost write leaves
//! it: no feed entry, no DirSync change.
#![allow(clippy::unwrap_used, clippy::panic)] // a failed unwrap is a failed test

mod common;

use std::collections::BTreeSet;

use common::*;
use ferry_cloud::store::{Member, NewUser};
use ferry_proto::record::ObjectKind;
use serde_json::{json, Value};

/// Every drift user's (title, department) on each side, and the group's members.
async fn both_sides(
    dc: &Dc,
    cloud: &Cloud,
    ou: &str,
    gid: &str,
) -> (
    Vec<(String, String, String)>,
    Vec<(String, String, String)>,
    BTreeSet<String>,
    BTreeSet<String>,
) {
    let mut ad = Vec::new();
    let mut in_cloud = Vec::new();
    let mut names = std::collections::HashMap::new();
    for i in 0..4 {
        let name = format!("drift{i}");
        let out = dc.ldapsearch(ou, &format!("(sAMAccountName={name})"), &["title", "department"]);
        let attr = |a: &str| {
            out.lines()
                .find_map(|l| l.strip_prefix(&format!("{a}: ")).map(str::to_owned))
                .unwrap_or_default()
        };
        ad.push((name.clone(), attr("title"), attr("department")));
        let u = cloud.user(&name).await.unwrap_or(Value::Null);
        names.insert(u["id"].as_str().unwrap_or_default().to_owned(), name.clone());
        let text = |v: &Value| v.as_str().unwrap_or_default().to_owned();
        in_cloud.push((
            name,
            text(&u["title"]),
            text(&u["urn:ietf:params:scim:schemas:extension:enterprise:2.0:User"]["department"]),
        ));
    }
    let ad_members: BTreeSet<String> = dc.group_member_cns(&format!("CN=Drifters,{ou}"));
    let (_, g) = cloud
        .call(reqwest::Method::GET, &format!("/scim/v2/Groups/{gid}"), None)
        .await;
    let cloud_members: BTreeSet<String> = g["members"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .map(|m| {
            let id = m["value"].as_str().unwrap_or_default();
            names.get(id).cloned().unwrap_or_else(|| id.to_owned())
        })
        .collect();
    (ad, in_cloud, ad_members, cloud_members)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn drift_on_either_side_is_found_by_comparing_whole_and_repaired() {
    let (dc, cloud, domain) = prepare().await;
    let ou = dc.new_ou("drift").await;
    let mut ldif = String::new();
    for i in 0..4 {
        ldif.push_str(&format!(
            "dn: CN=drift{i},{ou}\nobjectClass: user\nsAMAccountName: drift{i}\ntitle: T{i}\ndepartment: D{i}\n\n"
        ));
    }
    ldif.push_str(&format!(
        "dn: CN=Drifters,{ou}\nobjectClass: group\nsAMAccountName: drifters\nmember: CN=drift0,{ou}\nmember: CN=drift1,{ou}\nmember: CN=drift2,{ou}\n\n"
    ));
    dc.ldapmodify(&ldif, true);
    let agent = enrol(&cloud, &domain).await;
    let engine = run_engine(&dc, &cloud, &agent).await;
    let g = eventually("the group and its members in the cloud", || async {
        cloud
            .group("drifters")
            .await
            .filter(|g| g["members"].as_array().is_some_and(|m| m.len() == 3))
    })
    .await;
    let gid = g["id"].as_str().unwrap().to_owned();

    // An equal domain compares equal: no false drift.
    let first = audit_now(&cloud, &domain).await;
    assert_eq!(first["differed"], 0, "an equal domain showed drift: {first}");
    assert_eq!(first["resent"], 0, "{first}");
    assert!(first["compared"].as_u64().unwrap() >= 5, "{first}");

    // Drift behind the sync's back.
    let mut tx = cloud.store.begin().await.unwrap();
    let org = tx.list_orgs().await.unwrap()[0].id;
    let did: uuid::Uuid = domain.parse().unwrap();
    let mut rows = Vec::new();
    for i in 0..4 {
        rows.push(
            tx.find_user_by_username(org, &format!("drift{i}"))
                .await
                .unwrap()
                .unwrap(),
        );
    }
    // 1. A cloud change that never reached AD (drift0's title).
    // 2. An AD change the cloud never took (drift1's department): the cloud
    //    and the last agreed record hold an older value than AD.
    // 3. A user whose cloud object and link were lost (drift2).
    let (d0, d1, d2, d3) = (&rows[0], &rows[1], &rows[2], &rows[3]);
    let mut doc = d0.doc.clone();
    doc["title"] = json!("Lost on the way down");
    let next = NewUser {
        username: d0.username.clone(),
        external_id: d0.external_id.clone(),
        active: d0.active,
        doc,
        password_hash: None,
    };
    assert!(tx.update_user(org, d0.id, d0.version, &next, unix_ms()).await.unwrap());
    let mut doc = d1.doc.clone();
    doc["urn:ietf:params:scim:schemas:extension:enterprise:2.0:User"]["department"] = json!("Older");
    let next = NewUser {
        username: d1.username.clone(),
        external_id: d1.external_id.clone(),
        active: d1.active,
        doc,
        password_hash: None,
    };
    assert!(tx.update_user(org, d1.id, d1.version, &next, unix_ms()).await.unwrap());
    let mut link = tx.link_by_object(org, did, d1.id).await.unwrap().unwrap();
    link.base.as_mut().unwrap()["department"] = json!("Older");
    link.ad_digest = Some("lost".into());
    tx.put_link(org, &link).await.unwrap();
    let gid_uuid: uuid::Uuid = gid.parse().unwrap();
    let d2_link = tx.link_by_object(org, did, d2.id).await.unwrap().unwrap();
    tx.delete_link(org, did, d2_link.ad_guid).await.unwrap();
    tx.delete_user(org, d2.id).await.unwrap();
    // 4. A membership lost in the cloud (drift1) and one the cloud gained
    //    that AD never had (drift3).
    assert!(tx.remove_member(org, gid_uuid, d1.id).await.unwrap());
    assert!(tx
        .add_member(
            org,
            gid_uuid,
            Member {
                id: d3.id,
                kind: ObjectKind::User
            }
        )
        .await
        .unwrap());
    tx.commit().await.unwrap();

    let found = audit_now(&cloud, &domain).await;
    // drift1 (attributes and, as a member, the group), drift2 (missing),
    // the group (members): found from AD; drift0 resent from the cloud.
    assert!(found["differed"].as_u64().unwrap() >= 3, "{found}");
    assert!(found["repaired"].as_u64().unwrap() >= 3, "{found}");
    assert_eq!(found["resent"], 1, "{found}");

    // Both sides whole: equal, with each side's own write kept.
    let (ad, in_cloud, ad_members, cloud_members) = eventually("both sides equal again", || async {
        let sides = both_sides(&dc, &cloud, &ou, &gid).await;
        let equal = sides.0 == sides.1 && sides.2 == sides.3;
        if !equal {
            eprintln!(
                "not equal yet: AD {:?} / cloud {:?}; members AD {:?} / cloud {:?}",
                sides.0, sides.1, sides.2, sides.3
            );
        }
        equal.then_some(sides)
    })
    .await;
    assert_eq!(ad[0].1, "Lost on the way down", "the cloud's lost change reached AD");
    assert_eq!(in_cloud[1].2, "D1", "AD's value came up");
    assert_eq!(in_cloud[2].0, "drift2");
    assert_eq!(
        ad_members,
        ["drift0", "drift1", "drift2"]
            .iter()
            .map(|s| s.to_string())
            .collect::<BTreeSet<_>>(),
        "AD's member list stands (authority latest: AD's list)"
    );
    assert_eq!(ad_members, cloud_members);
    let (_, log) = cloud.call(reqwest::Method::GET, "/api/v1/audit?limit=200", None).await;
    let repairs = log.to_string().matches("sync.drift_repaired").count();
    assert!(repairs >= 4, "every repair is audited: {repairs} in {log}");

    // Repaired for good: the next comparison finds nothing.
    let again = audit_now(&cloud, &domain).await;
    assert_eq!(again["differed"], 0, "{again}");
    assert_eq!(again["resent"], 0, "{again}");
    assert!(sync_errors(&cloud, &domain).await.is_empty());
    engine.stop().await;
}

/// Issue 13's repro: with the agent stopped, a user's title is changed in
/// the cloud and the user is deleted in AD. When the agent starts, no
/// account appears in AD (the link's object was deleted there: never
/// re-created by name), the user ends per the AD delete policy (removed
/// from the cloud, the default), AD → cloud keeps flowing (a later AD
/// change arrives), no sync error is left, and both sides compare equal.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_user_deleted_in_ad_while_a_cloud_change_waits_is_not_re_created() {
    let (dc, cloud, domain) = prepare().await;
    let ou = dc.new_ou("ghosts").await;
    dc.ldapmodify(
        &format!(
            "dn: CN=ghost,{ou}\nobjectClass: user\nsAMAccountName: ghost\ntitle: Before\n\n\
             dn: CN=witness,{ou}\nobjectClass: user\nsAMAccountName: witness\ntitle: Before\n\n"
        ),
        true,
    );
    let agent = enrol(&cloud, &domain).await;
    let engine = run_engine(&dc, &cloud, &agent).await;
    let ghost = eventually("ghost in the cloud", || cloud.user("ghost")).await;
    eventually("witness in the cloud", || cloud.user("witness")).await;
    engine.stop().await;
    let patch = json!({"schemas": ["urn:ietf:params:scim:api:messages:2.0:PatchOp"],
                       "Operations": [{"op": "replace", "path": "title", "value": "Changed in the cloud"}]});
    let (st, v) = cloud
        .call(
            reqwest::Method::PATCH,
            &format!("/scim/v2/Users/{}", ghost["id"].as_str().unwrap()),
            Some(patch),
        )
        .await;
    assert_eq!(st, 200, "{v}");
    dc.ldapmodify(&format!("dn: CN=ghost,{ou}\nchangetype: delete\n"), false);
    let engine = run_engine(&dc, &cloud, &agent).await;
    dc.ldapmodify(
        &format!("dn: CN=witness,{ou}\nchangetype: modify\nreplace: title\ntitle: After\n"),
        false,
    );
    eventually("AD → cloud flows: the witness's change arrives", || async {
        cloud.user("witness").await.filter(|u| u["title"] == "After")
    })
    .await;
    eventually(
        "the ghost removed from the cloud (AD delete policy: remove)",
        || async { cloud.user("ghost").await.is_none().then_some(()) },
    )
    .await;
    // Give the cloud → AD side time to have made its mistake, if it would.
    let report = audit_now(&cloud, &domain).await;
    let found = dc.ldapsearch(&dc.base_dn, "(|(sAMAccountName=ghost*)(cn=ghost*))", &["dn"]);
    assert!(!found.contains("dn:"), "no account re-created in AD: {found}");
    assert_eq!(report["differed"], 0, "{report}");
    assert!(sync_errors(&cloud, &domain).await.is_empty());
    engine.stop().await;
}
