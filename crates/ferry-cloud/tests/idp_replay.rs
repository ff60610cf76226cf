//! Identity providers' SCIM traffic, replayed as their documentation shows
//! it (Microsoft Entra ID's "Develop a SCIM endpoint" request examples,
//! Okta's "SCIM 2.0 protocol reference"), on SQLite and PostgreSQL. Only
//! ids, names and addresses differ from the documents.
#![allow(clippy::unwrap_used, clippy::panic)] // a failed unwrap is a failed test

mod common;

use common::TestServer;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

const ENTERPRISE: &str = "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User";

async fn ok(s: &TestServer, method: Method, path: &str, body: Option<Value>, want: StatusCode) -> Value {
    let (st, v) = s.call(method.clone(), path, body).await;
    assert_eq!(st, want, "{method} {path}: {v}");
    v
}

async fn get(s: &TestServer, path: &str) -> Value {
    ok(s, Method::GET, path, None, StatusCode::OK).await
}

async fn post(s: &TestServer, path: &str, body: Value) -> Value {
    ok(s, Method::POST, path, Some(body), StatusCode::CREATED).await
}

/// A PATCH with these operations, answered 200.
async fn patched(s: &TestServer, path: &str, ops: Value) -> Value {
    let body = json!({"schemas": ["urn:ietf:params:scim:api:messages:2.0:PatchOp"], "Operations": ops});
    ok(s, Method::PATCH, path, Some(body), StatusCode::OK).await
}

both_engines!(entra_id_provisioning_cycle, |engine| async move {
    let s = TestServer::start(engine).await;
    // "Get User by query": nobody yet.
    let v = get(
        &s,
        "/scim/v2/Users?filter=userName%20eq%20%22Test_User_dfeef4c5-5681-4387-b016-bdf221e82081%22",
    )
    .await;
    assert_eq!(v["totalResults"], 0);
    // "Create User", as documented: with `"roles": []`.
    let manager = post(&s, "/scim/v2/Users", json!({"userName": "the.manager"})).await;
    let manager_id = manager["id"].as_str().unwrap().to_owned();
    let created = post(&s, "/scim/v2/Users", json!({
            "schemas": ["urn:ietf:params:scim:schemas:core:2.0:User", ENTERPRISE],
            "externalId": "0a21f0f2-8d2a-4f8e-bf98-7363c4aed4ef",
            "userName": "Test_User_ab6490ee-1e48-479e-a20b-2d77186b5dd1",
            "active": true,
            "emails": [{"primary": true, "type": "work", "value": "Test_User_fd0ea13b-3e8d-4d1e-a2a0-2a7a0b5f0d4b@testuser.com"}],
            "meta": {"resourceType": "User"},
            "name": {"formatted": "givenName familyName", "familyName": "familyName", "givenName": "givenName"},
            "roles": []
        })).await;
    let id = created["id"].as_str().unwrap().to_owned();
    assert_eq!(created["name"]["familyName"], "familyName");
    assert!(created.get("roles").is_none());
    // "Get User by query" on externalId.
    let v = get(
        &s,
        "/scim/v2/Users?filter=externalId%20eq%20%220a21f0f2-8d2a-4f8e-bf98-7363c4aed4ef%22",
    )
    .await;
    assert_eq!(v["totalResults"], 1);
    // "Update User [Multi-valued properties]" and "[Single-valued properties]".
    let v = patched(
        &s,
        &format!("/scim/v2/Users/{id}"),
        json!([
            {"op": "Replace", "path": "emails[type eq \"work\"].value", "value": "updatedEmail@microsoft.com"},
            {"op": "Replace", "path": "name.familyName", "value": "updatedFamilyName"}
        ]),
    )
    .await;
    assert_eq!(v["emails"][0]["value"], "updatedEmail@microsoft.com");
    assert_eq!(v["name"]["familyName"], "updatedFamilyName");
    let v = patched(
        &s,
        &format!("/scim/v2/Users/{id}"),
        json!([{"op": "Replace", "path": "userName", "value": "5b50642d-79fc-4410-9e90-4c077cdd1a59@testuser.com"}]),
    )
    .await;
    assert_eq!(v["userName"], "5b50642d-79fc-4410-9e90-4c077cdd1a59@testuser.com");
    // The manager, as Entra ID sends it: the id as a bare string.
    let v = patched(
        &s,
        &format!("/scim/v2/Users/{id}"),
        json!([{"op": "Add", "path": format!("{ENTERPRISE}:manager"), "value": manager_id}]),
    )
    .await;
    assert_eq!(v[ENTERPRISE]["manager"]["value"], manager_id.as_str());
    let v = patched(
        &s,
        &format!("/scim/v2/Users/{id}"),
        json!([{"op": "Remove", "path": format!("{ENTERPRISE}:manager")}]),
    )
    .await;
    assert!(v.get(ENTERPRISE).and_then(|e| e.get("manager")).is_none(), "{v}");
    // "Disable User".
    let v = patched(
        &s,
        &format!("/scim/v2/Users/{id}"),
        json!([{"op": "Replace", "path": "active", "value": false}]),
    )
    .await;
    assert_eq!(v["active"], false);
    // "Create Group", "Get Group by displayName" (members excluded),
    // "Update Group [Add Members]", "[Remove Members]", "[Non-member attributes]".
    let g = post(&s, "/scim/v2/Groups", json!({
            "schemas": ["urn:ietf:params:scim:schemas:core:2.0:Group", "http://schemas.microsoft.com/2006/11/ResourceManagement/ADSCIM/2.0/Group"],
            "externalId": "8aa1a0c0-c4c3-4bc0-b4a5-2ef676900159",
            "displayName": "displayName",
            "meta": {"resourceType": "Group"}
        })).await;
    let gid = g["id"].as_str().unwrap().to_owned();
    let v = get(
        &s,
        "/scim/v2/Groups?excludedAttributes=members&filter=displayName%20eq%20%22displayName%22",
    )
    .await;
    assert_eq!(v["totalResults"], 1);
    let v = patched(
        &s,
        &format!("/scim/v2/Groups/{gid}"),
        json!([{"op": "Add", "path": "members", "value": [{"$ref": null, "value": id}]}]),
    )
    .await;
    assert_eq!(v["members"][0]["value"], id.as_str());
    let v = patched(
        &s,
        &format!("/scim/v2/Groups/{gid}"),
        json!([{"op": "Remove", "path": "members", "value": [{"$ref": null, "value": id}]}]),
    )
    .await;
    assert!(v.get("members").is_none(), "{v}");
    let v = patched(&s, &format!("/scim/v2/Groups/{gid}"), json!([{"op": "Replace", "path": "displayName", "value": "1879db59-3bdf-4490-ad68-ab880a269474updatedDisplayName"}])).await;
    assert_eq!(
        v["displayName"],
        "1879db59-3bdf-4490-ad68-ab880a269474updatedDisplayName"
    );
    // A value in an attribute Ferry does not keep is still refused.
    let (st, v) = s
        .call(
            Method::POST,
            "/scim/v2/Users",
            Some(json!({"userName": "with.roles", "roles": [{"value": "admin"}]})),
        )
        .await;
    assert_eq!(st, StatusCode::BAD_REQUEST, "{v}");
    ok(
        &s,
        Method::DELETE,
        &format!("/scim/v2/Groups/{gid}"),
        None,
        StatusCode::NO_CONTENT,
    )
    .await;
    ok(
        &s,
        Method::DELETE,
        &format!("/scim/v2/Users/{id}"),
        None,
        StatusCode::NO_CONTENT,
    )
    .await;
});

both_engines!(okta_provisioning_cycle, |engine| async move {
    let s = TestServer::start(engine).await;
    let v = get(
        &s,
        "/scim/v2/Users?filter=userName%20eq%20%22test.user%40okta.local%22&startIndex=1&count=100",
    )
    .await;
    assert_eq!(v["totalResults"], 0);
    // "Create the user": with `"groups": []` and a password.
    let u = post(
        &s,
        "/scim/v2/Users",
        json!({
            "schemas": ["urn:ietf:params:scim:schemas:core:2.0:User"],
            "userName": "test.user@okta.local",
            "name": {"givenName": "Test", "familyName": "User"},
            "emails": [{"primary": true, "value": "test.user@okta.local", "type": "work"}],
            "displayName": "Test User",
            "locale": "en-US",
            "externalId": "00ujl29u0le5T6Aj10h7",
            "groups": [],
            "password": "1mz050nq",
            "active": true
        }),
    )
    .await;
    let id = u["id"].as_str().unwrap().to_owned();
    assert!(u.get("password").is_none());
    // "Update a specific user (PUT)".
    let mut put = u.clone();
    put["name"]["givenName"] = json!("Another");
    let v = ok(
        &s,
        Method::PUT,
        &format!("/scim/v2/Users/{id}"),
        Some(put),
        StatusCode::OK,
    )
    .await;
    assert_eq!(v["name"]["givenName"], "Another");
    // "Update a specific user (PATCH)": deactivate, then reactivate, path-less.
    for active in [false, true] {
        let v = patched(
            &s,
            &format!("/scim/v2/Users/{id}"),
            json!([{"op": "replace", "value": {"active": active}}]),
        )
        .await;
        assert_eq!(v["active"], active);
    }
    // Push groups: create, then a path-less rename that echoes the id, then members.
    let g = post(&s, "/scim/v2/Groups", json!({"schemas": ["urn:ietf:params:scim:schemas:core:2.0:Group"], "displayName": "Test SCIMv2", "members": []})).await;
    let gid = g["id"].as_str().unwrap().to_owned();
    let v = patched(
        &s,
        &format!("/scim/v2/Groups/{gid}"),
        json!([{"op": "replace", "value": {"id": gid, "displayName": "Test SCIMv2 renamed"}}]),
    )
    .await;
    assert_eq!(v["displayName"], "Test SCIMv2 renamed");
    assert_eq!(v["id"], gid.as_str(), "the id stays");
    let v = patched(
        &s,
        &format!("/scim/v2/Groups/{gid}"),
        json!([{"op": "add", "path": "members", "value": [{"value": id, "display": "test.user@okta.local"}]}]),
    )
    .await;
    assert_eq!(v["members"][0]["value"], id.as_str());
    let v = patched(
        &s,
        &format!("/scim/v2/Groups/{gid}"),
        json!([{"op": "remove", "path": format!("members[value eq \"{id}\"]")}]),
    )
    .await;
    assert!(v.get("members").is_none(), "{v}");
    // An id that is not the group's own is still not a way to change it.
    let v = patched(
        &s,
        &format!("/scim/v2/Groups/{gid}"),
        json!([{"op": "replace", "value": {"id": "00000000-0000-0000-0000-000000000000"}}]),
    )
    .await;
    assert_eq!(v["id"], gid.as_str());
    let v = get(
        &s,
        "/scim/v2/Groups?filter=displayName%20eq%20%22Test%20SCIMv2%20renamed%22",
    )
    .await;
    assert_eq!(v["totalResults"], 1);
    ok(
        &s,
        Method::DELETE,
        &format!("/scim/v2/Groups/{gid}"),
        None,
        StatusCode::NO_CONTENT,
    )
    .await;
});
