//! Hostile input over real HTTP, on SQLite and PostgreSQL: malformed, huge,
//! deep, unicode and NUL-laden requests to every surface. Each must get the
//! right 4xx in the surface's JSON form (SCIM errors under `/scim/v2`,
//! `{code, message}` elsewhere): no 5xx, no dropped connection, and the
//! service answers `/healthz` afterwards.
#![allow(clippy::unwrap_used, clippy::panic)] // a failed unwrap is a failed test

mod common;

use common::TestServer;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const ERROR_SCHEMA: &str = "urn:ietf:params:scim:api:messages:2.0:Error";
const PATCH_OP: &str = "urn:ietf:params:scim:api:messages:2.0:PatchOp";
const ENTERPRISE: &str = "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User";

/// What a case sends.
enum Body {
    None,
    Json(Value),
    /// Bytes as they are, with a Content-Length.
    Raw(Vec<u8>),
    /// Bytes in chunks of 64 KiB, with no Content-Length.
    Chunked(Vec<u8>),
}

struct Case {
    what: String,
    method: &'static str,
    /// Sent as written (already percent-encoded where needed).
    target: String,
    body: Body,
    /// The expected status.
    status: u16,
    /// For SCIM 400s: the expected `scimType`.
    scim_type: Option<&'static str>,
}

fn case(what: impl Into<String>, method: &'static str, target: impl Into<String>, body: Body, status: u16) -> Case {
    Case {
        what: what.into(),
        method,
        target: target.into(),
        body,
        status,
        scim_type: None,
    }
}

fn scim(
    what: impl Into<String>,
    method: &'static str,
    target: impl Into<String>,
    body: Body,
    scim_type: &'static str,
) -> Case {
    Case {
        scim_type: Some(scim_type),
        ..case(what, method, target, body, 400)
    }
}

/// Form-encodes a query value.
fn q(s: &str) -> String {
    let u = reqwest::Url::parse_with_params("http://x/", &[("v", s)]).unwrap();
    u.query().unwrap_or_default().trim_start_matches("v=").to_owned()
}

/// One request on its own connection; the status and the body. A dropped
/// connection (a crash, a panic) fails the test here.
async fn raw(addr: &str, token: &str, method: &str, target: &str, body: &Body) -> (u16, Value) {
    let mut conn = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut head =
        format!("{method} {target} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\nConnection: close\r\n");
    let mut payload = Vec::new();
    match body {
        Body::None => {}
        Body::Json(v) => {
            let b = v.to_string().into_bytes();
            head.push_str(&format!(
                "Content-Type: application/scim+json\r\nContent-Length: {}\r\n",
                b.len()
            ));
            payload = b;
        }
        Body::Raw(b) => {
            head.push_str(&format!(
                "Content-Type: application/json\r\nContent-Length: {}\r\n",
                b.len()
            ));
            payload = b.clone();
        }
        Body::Chunked(b) => {
            head.push_str("Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n");
            for chunk in b.chunks(64 * 1024) {
                payload.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
                payload.extend_from_slice(chunk);
                payload.extend_from_slice(b"\r\n");
            }
            payload.extend_from_slice(b"0\r\n\r\n");
        }
    }
    head.push_str("\r\n");
    conn.write_all(head.as_bytes()).await.unwrap();
    // The server may answer (413) before reading everything: a failed write is fine.
    let _ = conn.write_all(&payload).await;
    let mut out = Vec::new();
    let _ = conn.read_to_end(&mut out).await;
    let text = String::from_utf8_lossy(&out).into_owned();
    let (head, body) = text
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("no answer to {method} {}: {text:?}", &target[..target.len().min(200)]));
    let status: u16 = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status line: {head}"));
    let body = if head.to_ascii_lowercase().contains("transfer-encoding: chunked") {
        dechunk(body)
    } else {
        body.to_owned()
    };
    (status, serde_json::from_str(&body).unwrap_or(Value::String(body)))
}

fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((len, rest)) = s.split_once("\r\n") {
        let n = usize::from_str_radix(len.trim(), 16).unwrap_or(0);
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        s = rest[n..].trim_start_matches("\r\n");
    }
    out
}

/// Checks one answer: the status, and the surface's JSON error form.
fn check(c: &Case, status: u16, v: &Value) {
    let what = &c.what;
    assert!(status < 500, "{what}: {status} {v}");
    // Which of the two an over-long target gets depends on hyper's buffer.
    let status = if c.status == 414 && status == 431 { 414 } else { status };
    assert_eq!(status, c.status, "{what}: {v}");
    if status < 400 || status == 414 {
        return;
    }
    if c.target.starts_with("/scim/") {
        assert_eq!(v["schemas"][0], ERROR_SCHEMA, "{what}: {v}");
        assert_eq!(v["status"], status.to_string(), "{what}: {v}");
        assert!(v["detail"].as_str().is_some_and(|d| !d.is_empty()), "{what}: {v}");
        if let Some(t) = c.scim_type {
            assert_eq!(v["scimType"], t, "{what}: {v}");
        }
    } else {
        assert!(v["code"].as_str().is_some_and(|d| !d.is_empty()), "{what}: {v}");
        assert!(v["message"].as_str().is_some_and(|d| !d.is_empty()), "{what}: {v}");
    }
}

/// Sets `value` at a dotted path of a JSON object.
fn with(mut base: Value, path: &[&str], value: Value) -> Value {
    let mut cur = &mut base;
    for (i, k) in path.iter().enumerate() {
        if i + 1 == path.len() {
            cur[*k] = value;
            break;
        }
        if cur.get(*k).is_none() {
            cur[*k] = json!({});
        }
        cur = &mut cur[*k];
    }
    base
}

fn cases(user: &str, group: &str, domain: &str) -> Vec<Case> {
    let mut v = Vec::new();
    let deep = |open: &str, close: &str, n: usize| format!("{}userName eq \"x\"{}", open.repeat(n), close.repeat(n));
    let chain = vec![r#"userName eq "x""#; 20_000].join(" and ");
    let wide = vec![r#"userName eq "x""#; 201].join(" or ");

    // Deep, long and wide filters: on every list and search.
    let bad_filters = [
        ("1,000 brackets", deep("(", ")", 1000)),
        ("1,000 nots", deep("not (", ")", 1000)),
        ("17 brackets", deep("(", ")", 17)),
        (
            "deep value filter",
            format!("emails[{}value eq \"x\"{}]", "(".repeat(300), ")".repeat(300)),
        ),
        ("unclosed brackets", "(".repeat(5000)),
        ("201 terms", wide),
        ("20,000 terms", chain),
        ("a 100 KB contains", format!("userName co \"{}\"", "a".repeat(100_000))),
        ("a 5 KB value", format!("userName eq \"{}\"", "é".repeat(2600))),
        ("NUL in a value", "userName eq \"a\\u0000b\"".to_owned()),
        (
            "a control character in a value",
            "externalId eq \"\\u001b[31m\"".to_owned(),
        ),
        ("non-ASCII attribute", "ab€x pr".to_owned()),
        ("non-ASCII before a colon", "ur€:x pr".to_owned()),
        ("bare word value", "userName eq bjensen".to_owned()),
        ("no operator", "userName".to_owned()),
        ("unknown operator", "userName zz \"x\"".to_owned()),
        ("unclosed string", "userName eq \"x".to_owned()),
        ("trailing junk", "userName eq \"x\" )".to_owned()),
        ("a bad escape", "userName eq \"\\q\"".to_owned()),
        ("a lone surrogate", "userName eq \"\\ud800\"".to_owned()),
    ];
    for (name, f) in &bad_filters {
        for res in ["Users", "Groups"] {
            let target = format!("/scim/v2/{res}?filter={}", q(f));
            // A target past 64 KiB is refused by the HTTP layer before any
            // handler, with no body: 414, or 431 past its 400 KiB buffer.
            let mut c = scim(
                format!("GET {res} filter: {name}"),
                "GET",
                target,
                Body::None,
                "invalidFilter",
            );
            if c.target.len() >= 65_534 {
                c.status = 414;
            }
            v.push(c);
            v.push(scim(
                format!("POST {res}/.search filter: {name}"),
                "POST",
                format!("/scim/v2/{res}/.search"),
                Body::Json(json!({"schemas": ["urn:ietf:params:scim:api:messages:2.0:SearchRequest"], "filter": f})),
                "invalidFilter",
            ));
        }
        v.push(scim(
            format!("POST /.search filter: {name}"),
            "POST",
            "/scim/v2/.search",
            Body::Json(json!({"filter": f})),
            "invalidFilter",
        ));
    }

    // PATCH paths: deep, long, non-ASCII.
    let bad_paths = [
        format!("emails[{}value eq \"x\"{}]", "(".repeat(1000), ")".repeat(1000)),
        format!(
            "emails[{}value eq \"x\"{}].value",
            "not (".repeat(1000),
            ")".repeat(1000)
        ),
        format!("emails[{}]", vec![r#"value eq "x""#; 20_000].join(" and ")),
        "ab€c".to_owned(),
        "urn:€:x".to_owned(),
        "name.gi€en".to_owned(),
        "emails[type eq \"work\"".to_owned(),
        "emails]type eq \"work\"[".to_owned(),
        "emails[ty€pe eq \"work\"].value".to_owned(),
        "x".repeat(200_000),
        format!("{ENTERPRISE}:€"),
        "emails[type eq \"a\\u0000\"].value".to_owned(),
    ];
    for (i, p) in bad_paths.iter().enumerate() {
        v.push(scim(
            format!("PATCH user path #{i}"),
            "PATCH",
            format!("/scim/v2/Users/{user}"),
            Body::Json(json!({"schemas": [PATCH_OP], "Operations": [{"op": "replace", "path": p, "value": "x"}]})),
            "invalidPath",
        ));
    }
    v.push(scim(
        "PATCH group path: deep members filter",
        "PATCH",
        format!("/scim/v2/Groups/{group}"),
        Body::Json(json!({"schemas": [PATCH_OP], "Operations": [{"op": "remove",
            "path": format!("members[{}value eq \"x\"{}]", "(".repeat(500), ")".repeat(500))}]})),
        "invalidPath",
    ));

    // NUL and control characters in every stored SCIM string, on create, replace and PATCH.
    let user_base = json!({"userName": "hostile"});
    let user_fields: &[&[&str]] = &[
        &["userName"],
        &["externalId"],
        &["displayName"],
        &["title"],
        &["nickName"],
        &["name", "givenName"],
        &["name", "familyName"],
        &[ENTERPRISE, "department"],
    ];
    for bad in ["a\u{0}b", "a\u{1b}b", "\u{7f}"] {
        let shown = format!("{:?}", bad);
        for f in user_fields {
            let body = with(user_base.clone(), f, json!(bad));
            v.push(scim(
                format!("POST user {f:?} = {shown}"),
                "POST",
                "/scim/v2/Users",
                Body::Json(body.clone()),
                "invalidValue",
            ));
            v.push(scim(
                format!("PUT user {f:?} = {shown}"),
                "PUT",
                format!("/scim/v2/Users/{user}"),
                Body::Json(body),
                "invalidValue",
            ));
        }
        v.push(scim(
            format!("POST user emails = {shown}"),
            "POST",
            "/scim/v2/Users",
            Body::Json(json!({"userName": "hostile", "emails": [{"value": bad}]})),
            "invalidValue",
        ));
        v.push(scim(
            format!("PATCH user title = {shown}"),
            "PATCH",
            format!("/scim/v2/Users/{user}"),
            Body::Json(
                json!({"schemas": [PATCH_OP], "Operations": [{"op": "replace", "path": "title", "value": bad}]}),
            ),
            "invalidValue",
        ));
        for f in ["displayName", "externalId"] {
            let body = with(json!({"displayName": "hostile group"}), &[f], json!(bad));
            v.push(scim(
                format!("POST group {f} = {shown}"),
                "POST",
                "/scim/v2/Groups",
                Body::Json(body.clone()),
                "invalidValue",
            ));
            v.push(scim(
                format!("PUT group {f} = {shown}"),
                "PUT",
                format!("/scim/v2/Groups/{group}"),
                Body::Json(body),
                "invalidValue",
            ));
        }
        v.push(case(
            format!("token name = {shown}"),
            "POST",
            "/api/v1/tokens",
            Body::Json(json!({"name": bad})),
            400,
        ));
        v.push(case(
            format!("sign-in e-mail = {shown}"),
            "POST",
            "/api/v1/sessions",
            Body::Json(json!({"email": bad, "password": "x"})),
            400,
        ));
        v.push(case(
            format!("domain name = {shown}"),
            "POST",
            "/api/v1/domains",
            Body::Json(json!({"name": bad})),
            400,
        ));
        v.push(case(
            format!("domain OU = {shown}"),
            "PATCH",
            format!("/api/v1/domains/{domain}"),
            Body::Json(json!({"user_ou": bad})),
            400,
        ));
    }
    // The sync scope and placement routes: NUL, deep or huge DNs, bad ids.
    for (what, body) in [
        (
            "NUL in an included OU",
            json!({"include": ["OU=a\u{0}b,DC=hostile,DC=example"]}),
        ),
        (
            "a control character in an excluded OU",
            json!({"exclude": ["OU=\u{1b},DC=hostile,DC=example"]}),
        ),
        ("an OU that is not a DN", json!({"include": ["not a dn"]})),
        (
            "an OU outside the domain",
            json!({"include": ["OU=x,DC=elsewhere,DC=test"]}),
        ),
        (
            "a 100 KB OU",
            json!({"include": [format!("OU={},DC=hostile,DC=example", "x".repeat(100_000))]}),
        ),
        (
            "10,000 OUs deep",
            json!({"include": [format!("{}DC=hostile,DC=example", "OU=x,".repeat(10_000))]}),
        ),
        ("a scope that is a string", json!("OU=x")),
    ] {
        v.push(case(
            format!("scope preview: {what}"),
            "POST",
            format!("/api/v1/domains/{domain}/scope-preview"),
            Body::Json(body),
            400,
        ));
    }
    for (what, body, status) in [
        ("ids that are not UUIDs", json!({"ids": ["x", "€"]}), 400),
        ("no ids field", json!({}), 400),
        (
            "10,000 unknown ids",
            json!({"ids": vec!["00000000-0000-4000-8000-000000000000"; 10_000]}),
            404,
        ),
    ] {
        v.push(case(
            format!("place objects: {what}"),
            "POST",
            format!("/api/v1/domains/{domain}/objects"),
            Body::Json(body),
            status,
        ));
    }

    // NUL in an object key, and in a path segment.
    v.push(scim(
        "NUL in a JSON key",
        "POST",
        "/scim/v2/Users",
        Body::Json(json!({"userName": "x", "a\u{0}b": 1})),
        "invalidValue",
    ));
    v.push(case("NUL in a user id", "GET", "/scim/v2/Users/%00", Body::None, 404));
    v.push(case(
        "NUL in a domain id",
        "GET",
        "/api/v1/domains/%00",
        Body::None,
        404,
    ));

    // Non-ASCII attribute names everywhere a name is read.
    for (what, target) in [
        ("attributes", format!("/scim/v2/Users?attributes={}", q("ab€x"))),
        (
            "excludedAttributes",
            format!("/scim/v2/Users?excludedAttributes={}", q("€")),
        ),
        (
            "attributes on one user",
            format!("/scim/v2/Users/{user}?attributes={}", q("ur€:x")),
        ),
        (
            "attributes on groups",
            format!("/scim/v2/Groups?attributes={}", q("display€Name")),
        ),
    ] {
        v.push(scim(
            format!("non-ASCII {what}"),
            "GET",
            target,
            Body::None,
            "invalidValue",
        ));
    }
    v.push(scim(
        "a non-ASCII key",
        "POST",
        "/scim/v2/Users",
        Body::Json(json!({"userName": "x", "ab€c": 1})),
        "invalidValue",
    ));
    v.push(scim(
        "a non-ASCII extension key",
        "POST",
        "/scim/v2/Users",
        Body::Json(json!({"userName": "x", "urn:€€€€:y": 1})),
        "invalidValue",
    ));

    // Malformed bodies on every JSON route.
    let json_routes: Vec<(&'static str, String)> = vec![
        ("POST", "/scim/v2/Users".into()),
        ("PUT", format!("/scim/v2/Users/{user}")),
        ("PATCH", format!("/scim/v2/Users/{user}")),
        ("POST", "/scim/v2/Groups".into()),
        ("PATCH", format!("/scim/v2/Groups/{group}")),
        ("POST", "/scim/v2/Users/.search".into()),
        ("POST", "/api/v1/tokens".into()),
        ("POST", "/api/v1/domains".into()),
        ("PATCH", format!("/api/v1/domains/{domain}")),
        ("POST", "/api/v1/sessions".into()),
        ("POST", "/agent/v1/register".into()),
    ];
    let malformed: Vec<(&str, Vec<u8>)> = vec![
        ("truncated JSON", b"{\"userName\": ".to_vec()),
        ("not UTF-8", vec![b'{', b'"', 0xff, 0xfe, b'"', b':', b'1', b'}']),
        ("a JSON array", b"[1, 2, 3]".to_vec()),
        (
            "nested 10,000 deep",
            format!("{}{}", "[".repeat(10_000), "]".repeat(10_000)).into_bytes(),
        ),
    ];
    for (m, route) in &json_routes {
        for (name, bytes) in &malformed {
            let mut c = case(
                format!("{m} {route}: {name}"),
                m,
                route.clone(),
                Body::Raw(bytes.clone()),
                400,
            );
            if route.starts_with("/scim/") && !route.contains("/.search") {
                c.scim_type = None;
            }
            v.push(c);
        }
        // Over the 1 MiB limit, declared and chunked.
        let big = format!("{{\"x\": \"{}\"}}", "a".repeat(2 * 1024 * 1024)).into_bytes();
        v.push(case(
            format!("{m} {route}: 2 MiB"),
            m,
            route.clone(),
            Body::Raw(big.clone()),
            413,
        ));
        v.push(case(
            format!("{m} {route}: 2 MiB chunked"),
            m,
            route.clone(),
            Body::Chunked(big),
            413,
        ));
    }

    // Paths that do not decode, methods no route serves, bad query parameters.
    for target in [
        "/scim/v2/Users/%FF%FE",
        "/scim/v2/Groups/%C0%AF",
        "/api/v1/domains/%FF%FE",
        "/api/v1/audit?limit=abc",
        "/api/v1/audit?limit=%FF",
    ] {
        v.push(case(format!("GET {target}"), "GET", target, Body::None, 400));
    }
    // Agent routes, with an admin token: a JSON 401 whatever the path holds.
    for target in [
        "/agent/v1/secrets/abc",
        "/agent/v1/secrets/%FF",
        "/agent/v1/feed?after=%FF",
    ] {
        v.push(case(format!("GET {target}"), "GET", target, Body::None, 401));
    }
    for (m, target) in [
        ("DELETE", "/scim/v2/Users"),
        ("PUT", "/api/v1/tokens"),
        ("PATCH", "/agent/v1/heartbeat"),
    ] {
        v.push(case(format!("{m} {target}"), m, target, Body::None, 405));
    }
    v.push(scim(
        "count=abc",
        "GET",
        "/scim/v2/Users?count=abc",
        Body::None,
        "invalidValue",
    ));
    // Paging at the edges: clamped as RFC 7644 says, never an overflow.
    for query in [
        "startIndex=9223372036854775807",
        "startIndex=-9223372036854775808&count=-1",
        "count=9223372036854775807",
        "startIndex=0&count=0",
        "filter=title%20pr&startIndex=9223372036854775807&count=1000",
    ] {
        for res in ["Users", "Groups"] {
            v.push(case(
                format!("GET {res}?{query}"),
                "GET",
                format!("/scim/v2/{res}?{query}"),
                Body::None,
                200,
            ));
        }
    }
    v.push(scim(
        "count past i64",
        "GET",
        "/scim/v2/Users?count=99999999999999999999",
        Body::None,
        "invalidValue",
    ));
    v.push(case(
        "/.search at the last index",
        "POST",
        "/scim/v2/.search",
        Body::Json(json!({"filter": "id pr", "startIndex": i64::MAX, "count": i64::MAX})),
        200,
    ));
    v.push(case(
        "/.search at the last index, no filter",
        "POST",
        "/scim/v2/.search",
        Body::Json(json!({"startIndex": i64::MAX})),
        200,
    ));
    v.push(scim(
        "a filter that is a number",
        "POST",
        "/scim/v2/Users/.search",
        Body::Json(json!({"filter": 7})),
        "invalidFilter",
    ));

    // Unicode that is valid: stored and read back, not refused.
    for name in [
        "ünïcödé",
        "用户",
        "عربي",
        "🦀 crab",
        "e\u{301}",
        "\u{202e}rtl",
        "zero\u{200b}width",
    ] {
        v.push(case(
            format!("valid unicode user {name:?}"),
            "POST",
            "/scim/v2/Users",
            Body::Json(json!({"userName": name, "displayName": name})),
            201,
        ));
        v.push(case(
            format!("valid unicode filter {name:?}"),
            "GET",
            format!("/scim/v2/Users?filter={}", q(&format!("displayName eq \"{name}\""))),
            Body::None,
            200,
        ));
    }
    // Tab, line feed and carriage return are text, where a name allows them.
    v.push(case(
        "a tab and new lines in a description",
        "POST",
        "/scim/v2/Users",
        Body::Json(json!({"userName": "tabbed", "displayName": "a\tb", "title": "line\r\nbreak"})),
        201,
    ));
    v
}

both_engines!(hostile_requests_get_the_right_4xx_in_json, |engine| async move {
    let s = TestServer::start(engine).await;
    let (_, u) = s
        .call(
            reqwest::Method::POST,
            "/scim/v2/Users",
            Some(json!({"userName": "target"})),
        )
        .await;
    let (_, g) = s
        .call(
            reqwest::Method::POST,
            "/scim/v2/Groups",
            Some(json!({"displayName": "target group"})),
        )
        .await;
    let (_, d) = s
        .call(
            reqwest::Method::POST,
            "/api/v1/domains",
            Some(json!({"name": "hostile.example"})),
        )
        .await;
    let (user, group, domain) = (
        u["id"].as_str().unwrap().to_owned(),
        g["id"].as_str().unwrap().to_owned(),
        d["id"].as_str().unwrap().to_owned(),
    );
    let addr = s.base.trim_start_matches("http://").to_owned();
    let all = cases(&user, &group, &domain);
    assert!(all.len() >= 150, "{} cases", all.len());
    for c in &all {
        let (status, v) = raw(&addr, &s.org.token, c.method, &c.target, &c.body).await;
        check(c, status, &v);
    }
    // With an agent's token: its routes' own refusals are JSON too.
    let (_, k) = s
        .call(
            reqwest::Method::POST,
            &format!("/api/v1/domains/{domain}/connect-keys"),
            None,
        )
        .await;
    let (_, reg) = s
        .call_as(
            "",
            reqwest::Method::POST,
            "/agent/v1/register",
            Some(
                json!({"connect_key": k["connect_key"], "hostname": "dc1.hostile.example", "version": "0.1.0",
                        "public_key": "BwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwc="}),
            ),
        )
        .await;
    let agent = reg["agent_token"].as_str().unwrap().to_owned();
    let agent_cases = [
        case(
            "agent: a secret id that is not a number",
            "GET",
            "/agent/v1/secrets/abc",
            Body::None,
            400,
        ),
        case(
            "agent: a feed cursor that is not a number",
            "GET",
            "/agent/v1/feed?after=%FF",
            Body::None,
            400,
        ),
        case(
            "agent: NUL in a heartbeat",
            "POST",
            "/agent/v1/heartbeat",
            Body::Json(json!({"state": "a\u{0}b", "ad_objects": 0, "pushed": 0, "applied": 0})),
            400,
        ),
        case(
            "agent: a heartbeat that is not JSON",
            "POST",
            "/agent/v1/heartbeat",
            Body::Raw(b"{".to_vec()),
            400,
        ),
    ];
    for c in &agent_cases {
        let (status, v) = raw(&addr, &agent, c.method, &c.target, &c.body).await;
        check(c, status, &v);
    }

    // Still serving, and nothing refused was stored.
    let (st, _) = s.call(reqwest::Method::GET, "/healthz", None).await;
    assert_eq!(st, reqwest::StatusCode::OK);
    let (_, list) = s
        .call(
            reqwest::Method::GET,
            "/scim/v2/Users?filter=userName%20eq%20%22hostile%22",
            None,
        )
        .await;
    assert_eq!(list["totalResults"], 0, "{list}");
    eprintln!("{} hostile cases on {engine:?}: 0 crashes, 0 5xx", all.len());
});

/// A connection that never finishes its headers is closed (half-open
/// connections cannot pile up), and a body that stops arriving gets a JSON
/// 408; the service keeps answering meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_clients_are_cut_off() {
    let config = ferry_cloud::app::Config {
        header_read_timeout: std::time::Duration::from_millis(500),
        body_timeout: std::time::Duration::from_millis(500),
        ..Default::default()
    };
    let s = TestServer::start_with(common::Engine::Sqlite, config).await;
    let addr = s.base.trim_start_matches("http://").to_owned();
    // Generous bounds so a stuck test fails instead of hanging; nothing is timed.
    let bound = std::time::Duration::from_secs(60);

    let mut half_open = Vec::new();
    for _ in 0..20 {
        let mut c = tokio::net::TcpStream::connect(&addr).await.unwrap();
        c.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n").await.unwrap();
        half_open.push(c);
    }
    let (st, _) = s.call(reqwest::Method::GET, "/healthz", None).await;
    assert_eq!(st, reqwest::StatusCode::OK);
    for mut c in half_open {
        let mut rest = Vec::new();
        let closed = tokio::time::timeout(bound, c.read_to_end(&mut rest)).await;
        assert!(closed.is_ok(), "a half-open connection was kept");
    }

    let mut c = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let head = format!(
        "POST /api/v1/tokens HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{{\"name\"",
        s.org.token
    );
    c.write_all(head.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(bound, c.read_to_end(&mut answer))
        .await
        .expect("answered")
        .unwrap();
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("\"code\":\"timeout\""), "{answer}");
}
