//! The admin console in a real browser (headless Chromium through
//! chromedriver), against a real ferry-cloud over HTTP: the install guide's
//! console steps, a directory admin's daily work, and bad input.
#![allow(clippy::unwrap_used, clippy::panic)] // a failed unwrap is a failed test

#[path = "common/browser.rs"]
mod browser;
mod common;

use browser::Browser;
use common::{create_org, Engine, TestServer};
use reqwest::{Method, StatusCode};
use serde_json::json;

async fn sign_in(b: &Browser, s: &TestServer) {
    b.goto(&format!("{}/", s.base)).await;
    b.find("form[action='/signin']").await;
    b.fill("input[name=email]", &s.org.admin_email).await;
    b.fill("input[name=password]", &s.org.admin_password).await;
    b.click("form[action='/signin'] button[type=submit]").await;
    b.wait_text("Directories").await;
}

/// Registers an agent as the install does; it has not run yet.
async fn register_only(s: &TestServer, key: &str, hostname: &str) -> String {
    use base64::Engine as _;
    let body = json!({"connect_key": key, "hostname": hostname, "version": "0.1.0",
                      "public_key": base64::engine::general_purpose::STANDARD.encode([7u8; 32])});
    let (st, r) = s.call_as("", Method::POST, "/agent/v1/register", Some(body)).await;
    assert_eq!(st, StatusCode::CREATED, "{r}");
    r["agent_token"].as_str().unwrap().to_owned()
}

/// The agent's heartbeat, as it sends it once running.
async fn heartbeat(s: &TestServer, token: &str) {
    let (st, _) = s
        .call_as(
            token,
            Method::POST,
            "/agent/v1/heartbeat",
            Some(json!({"state": "syncing"})),
        )
        .await;
    assert_eq!(st, StatusCode::OK);
}

async fn register_agent(s: &TestServer, key: &str, hostname: &str) -> String {
    let token = register_only(s, key, hostname).await;
    let (st, _) = s
        .call_as(
            &token,
            Method::POST,
            "/agent/v1/heartbeat",
            Some(json!({"state": "syncing"})),
        )
        .await;
    assert_eq!(st, StatusCode::OK);
    token
}

/// A new group with `member` added, through its page (which stays open).
async fn group_with_member(b: &Browser, s: &TestServer, name: &str, member: &str) {
    b.goto(&format!("{}/groups", s.base)).await;
    b.fill("input[name=name]", name).await;
    b.click("#new-group button[type=submit]").await;
    b.wait_text("Created.").await;
    b.fill("input[name=add]", member).await;
    b.click("#add-member button[type=submit]").await;
    b.wait_text("Saved.").await;
}

/// Nothing on the page scrolls sideways.
/// Whether the page fits the window's width (nothing scrolls sideways).
/// Layout can settle after the load event (a late style or font), so a page is
/// given 3 s to fit; one that never does fails, naming the elements that stick
/// out past the window's right edge.
async fn fits(b: &Browser, what: &str) {
    const OVERFLOW: &str = r#"
        const w = window.innerWidth;
        if (document.documentElement.scrollWidth <= w + 1) return null;
        const out = [...document.querySelectorAll('body *')]
            .filter(e => e.getBoundingClientRect().right > w + 1)
            .slice(0, 6)
            .map(e => `${e.tagName.toLowerCase()}${e.className ? '.' + e.className : ''} to ${Math.round(e.getBoundingClientRect().right)} px: ${(e.textContent || '').trim().slice(0, 50)}`);
        return `page ${document.documentElement.scrollWidth} px wide in ${w} px; ${out.join(' | ')}`;
    "#;
    let started = std::time::Instant::now();
    loop {
        let v = b.script(OVERFLOW).await;
        let Some(why) = v.as_str() else { return };
        if started.elapsed() > std::time::Duration::from_secs(3) {
            b.fail(&format!("{what}: {why}")).await;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

async fn user_count(s: &TestServer) -> u64 {
    let (_, v) = s.call(Method::GET, "/scim/v2/Users?count=0", None).await;
    v["totalResults"].as_u64().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_install_guide_console_steps_and_a_user_added_to_a_group() {
    let s = TestServer::start(Engine::Sqlite).await;
    let (_, d) = s
        .call(
            Method::POST,
            "/api/v1/domains",
            Some(json!({"name": "example.test", "netbios_name": "EXAMPLE"})),
        )
        .await;
    let domain = d["id"].as_str().unwrap().to_owned();
    let b = Browser::start("install-guide").await;

    // 2. Sign in, the directories page.
    sign_in(&b, &s).await;
    b.check(b.url().await.ends_with("/directories"), "signed in, on Directories")
        .await;
    b.wait_text("no agent installed").await;
    // 3. The domain.
    b.click(&format!("a[href='/directories/{domain}']")).await;
    b.wait_text("DC=example,DC=test").await;
    // 4. Install a new Sync Agent: the dialog shows the Connect Key and its expiry.
    b.click("#install-agent").await;
    b.find("dialog[open]").await;
    let key = b.value("#connect-key").await;
    b.check(key.starts_with("fck1."), &format!("a Connect Key is shown: {key:?}"))
        .await;
    b.wait_text("The key works once and expires").await;
    let download = b
        .script("return document.querySelector('dialog a[download]').href")
        .await;
    b.check(
        download.as_str().is_some_and(|h| h.ends_with("/downloads/ferry-agent")),
        "the dialog links the agent download",
    )
    .await;
    // "Prepare the service account": the scripts for this domain.
    let script =
        |platform: &str| format!("return document.querySelector('details.prepare.{platform} pre').textContent");
    let ps = b.script(&script("windows")).await;
    let ps = ps.as_str().unwrap_or_default();
    b.check(
        ps.contains("$Trustee = 'EXAMPLE\\svc-dirsync'")
            && ps.contains("-PasswordNeverExpires $true -ChangePasswordAtLogon $false")
            && ps.contains("dsacls $Scope /I:S /G \"${Trustee}:CA;Reset Password;user\""),
        &format!("the PowerShell is for this domain: {ps}"),
    )
    .await;
    let sh = b.script(&script("samba")).await;
    let sh = sh.as_str().unwrap_or_default();
    b.check(
        sh.contains("SCOPE='DC=example,DC=test'") && sh.contains("st user create 'svc-dirsync'"),
        &format!("the samba-tool script is for this domain: {sh}"),
    )
    .await;
    b.click("button[data-copy=connect-key]").await;
    // 17–18. The agent registers with the key (the wizard does this through the API).
    let token = register_only(&s, &key, "dc1.example.test").await;
    // 19. Close the dialog: until the agent first runs, it is waiting, not active.
    b.click("dialog button[type=submit]").await;
    b.find("tr.agent[data-status=waiting]").await;
    b.wait_text("waiting for first contact").await;
    b.check(b.text("tr.agent").await.contains("never"), "never seen yet")
        .await;
    // Its first heartbeat: the tab (refreshing itself) shows it active.
    heartbeat(&s, &token).await;
    b.find("tr.agent[data-status=active]").await;
    b.wait_text("dc1.example.test").await;
    b.wait_text("primary").await;
    // Each direction's health: AD → cloud has failed for two minutes (red,
    // with its error), cloud → AD works.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    let (st, _) = s
        .call_as(
            &token,
            Method::POST,
            "/agent/v1/heartbeat",
            Some(json!({"state": "syncing", "directions": [
                {"direction": "ad_to_cloud", "last_success_at": now - 125_000,
                 "error": "cannot reach the DC at ldaps://dc1.example.test: connection refused",
                 "failing_since": now - 120_000},
                {"direction": "cloud_to_ad", "last_success_at": now - 1_000},
            ], "audit": {"at": now - 30_000, "compared": 1200, "differed": 2, "repaired": 2, "resent": 1, "repaired_total": 3}})),
        )
        .await;
    assert_eq!(st, StatusCode::OK);
    // The last comparison of both sides whole, and what it repaired.
    let cell = b.text("td.audit[data-differed='2']").await;
    b.check(
        cell.contains("2 different in AD, 2 repaired")
            && cell.contains("1 cloud changes sent again")
            && cell.contains("1200 objects"),
        &format!("the last comparison and its repairs: {cell}"),
    )
    .await;
    b.find("td.health[data-direction=ad_to_cloud][data-status=failing]")
        .await;
    let cell = b.text("td.health[data-direction=ad_to_cloud]").await;
    b.check(
        cell.contains("failing since") && cell.contains("connection refused"),
        &format!("the failing direction, its error and since when: {cell}"),
    )
    .await;
    b.find("td.health[data-direction=cloud_to_ad][data-status=ok]").await;
    heartbeat(&s, &token).await;
    // The tab refreshes itself: a second agent appears without a reload.
    let (_, k2) = s
        .call(Method::POST, &format!("/api/v1/domains/{domain}/connect-keys"), None)
        .await;
    register_agent(&s, k2["connect_key"].as_str().unwrap(), "dc2.example.test").await;
    b.wait_text("dc2.example.test").await;
    // 20. "Save" on the Domain Agents tab: the settings stay, the tab stays.
    b.click("form.save-domain button[type=submit]").await;
    b.wait_text("Saved.").await;
    b.check(
        b.url().await.contains("tab=agents"),
        "Save on Domain Agents comes back to it",
    )
    .await;
    b.find("tr.agent[data-status=active]").await;
    let (_, same) = s.call(Method::GET, &format!("/api/v1/domains/{domain}"), None).await;
    assert_eq!(same["policies"], d["policies"], "Save there changes no setting");
    // "Save" on the Details tab.
    b.click("a[role=tab][href$='tab=details']").await;
    b.fill("input[name=delete_threshold]", "250").await;
    // What syncs: the home-domain rule is told, and the scope is set here.
    b.wait_text("Each user and group belongs to one domain").await;
    b.fill("textarea[name=scope_exclude]", "OU=Old Staff,DC=example,DC=test")
        .await;
    b.click("form.details button[type=submit]").await;
    b.wait_text("Saved.").await;
    let (_, d) = s.call(Method::GET, &format!("/api/v1/domains/{domain}"), None).await;
    assert_eq!(d["policies"]["delete_threshold"], 250);
    assert_eq!(
        d["policies"]["scope"]["exclude"],
        json!(["OU=Old Staff,DC=example,DC=test"]),
        "{d}"
    );
    assert_eq!(
        d["default_for_cloud_objects"], true,
        "the org's first domain stays the default: {d}"
    );
    // "Compare both sides now": the domain's agent is asked (its sync state says so).
    let (_, before) = s.call_as(&token, Method::GET, "/agent/v1/state", None).await;
    assert!(before["audit_requested_at"].is_null(), "{before}");
    b.click("#audit-now").await;
    b.wait_text("the agent compares both sides whole within seconds").await;
    let (_, after) = s.call_as(&token, Method::GET, "/agent/v1/state", None).await;
    assert!(after["audit_requested_at"].as_i64().is_some(), "{after}");
    // Preview a group scope before saving it: the form's unsaved scope goes
    // to the domain's agent (played here through the agent API), and the
    // page shows its answer with the values entered, still unsaved.
    heartbeat(&s, &token).await;
    let pilot = "CN=Pilot,OU=Groups,DC=example,DC=test";
    b.fill("textarea[name=scope_groups]", pilot).await;
    // The page waits for the agent's answer: click and answer together.
    let agent_side = async {
        let mut asked = None;
        for _ in 0..200 {
            let (st, state) = s.call_as(&token, Method::GET, "/agent/v1/state", None).await;
            assert_eq!(st, StatusCode::OK, "{state}");
            if !state["scope_preview"].is_null() {
                asked = Some(state["scope_preview"].clone());
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        let asked = asked.expect("the agent is asked for a preview");
        assert_eq!(asked["scope"]["groups"], json!([pilot]), "the form's scope: {asked}");
        assert_eq!(asked["scope"]["exclude"], json!(["OU=Old Staff,DC=example,DC=test"]));
        let answer = json!({
            "entering": {"users": 3, "groups": 1, "sample": ["CN=p1,OU=Staff,DC=example,DC=test"]},
            "leaving": {"users": 2, "groups": 0, "sample": ["CN=o1,OU=Staff,DC=example,DC=test"]},
            "staying": 7,
            "missing_groups": [],
        });
        let (st, v) = s
            .call_as(
                &token,
                Method::POST,
                &format!("/agent/v1/scope-preview/{}", asked["id"].as_str().unwrap()),
                Some(answer),
            )
            .await;
        assert_eq!(st, StatusCode::OK, "{v}");
    };
    tokio::join!(b.click("#preview-scope"), agent_side);
    b.wait_text("Preview: not saved yet").await;
    let shown = b.text("#scope-preview").await;
    b.check(
        shown.contains("3 users and 1 groups")
            && shown.contains("2 users and 0 groups")
            && shown.contains("CN=o1,OU=Staff"),
        &format!("the agent's numbers: {shown}"),
    )
    .await;
    b.check(
        b.value("textarea[name=scope_groups]").await == pilot,
        "the form keeps the values entered",
    )
    .await;
    let (_, d) = s.call(Method::GET, &format!("/api/v1/domains/{domain}"), None).await;
    assert!(
        d["policies"]["scope"].get("groups").is_none(),
        "a preview saves nothing: {d}"
    );

    b.goto(&format!("{}/directories", s.base)).await;
    b.wait_text("syncing (dc1.example.test)").await;

    // A user, created and added to a group.
    b.goto(&format!("{}/users", s.base)).await;
    b.fill("input[name=username]", "ann").await;
    b.fill("input[name=given_name]", "Ann").await;
    b.fill("input[name=family_name]", "Archer").await;
    b.fill("input[name=email]", "ann@example.test").await;
    b.click("#new-user button[type=submit]").await;
    b.wait_text("Created.").await;
    b.wait_text("Source: the cloud").await;
    group_with_member(&b, &s, "Engineering", "ann").await;
    b.check(b.count("tr.member").await == 1, "the group lists its member")
        .await;
    let (_, g) = s
        .call(
            Method::GET,
            "/scim/v2/Groups?filter=displayName%20eq%20%22Engineering%22",
            None,
        )
        .await;
    let members = &g["Resources"][0]["members"];
    assert_eq!(members.as_array().map(Vec::len), Some(1), "{g}");
    let (_, u) = s
        .call(Method::GET, "/scim/v2/Users?filter=userName%20eq%20%22ann%22", None)
        .await;
    assert_eq!(members[0]["value"], u["Resources"][0]["id"]);
    // The member is listed by name, not by id.
    let row = b.text("tr.member").await;
    let ann_id = u["Resources"][0]["id"].as_str().unwrap();
    b.check(
        row.contains("ann") && !row.contains(ann_id),
        &format!("the member by name: {row:?}"),
    )
    .await;
    assert_eq!(u["Resources"][0]["emails"][0]["value"], "ann@example.test");

    // Delete the group (the browser's confirm dialog is answered yes).
    let gid = g["Resources"][0]["id"].as_str().unwrap().to_owned();
    b.goto(&format!("{}/groups/{gid}", s.base)).await;
    b.script("window.confirm = () => true").await;
    b.click("form[action$='/delete'] button").await;
    b.wait_text("Deleted.").await;
    let (st, _) = s.call(Method::GET, &format!("/scim/v2/Groups/{gid}"), None).await;
    assert_eq!(st, StatusCode::NOT_FOUND);

    // The audit log shows what was done, by whom.
    b.goto(&format!("{}/audit", s.base)).await;
    b.wait_text("group.member_add").await;
    b.check(
        b.text(&format!("a[href='/users/{ann_id}']")).await == "ann",
        "the audit log names the user it was done to",
    )
    .await;
    b.wait_text(&format!("admin:{}", s.org.admin_email)).await;

    // Sign out: the session no longer works.
    b.click("form.signout button").await;
    b.find("form[action='/signin']").await;
    b.goto(&format!("{}/users", s.base)).await;
    b.find("form[action='/signin']").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_explained_and_changes_nothing() {
    let s = TestServer::start(Engine::Sqlite).await;
    let (_, d) = s
        .call(Method::POST, "/api/v1/domains", Some(json!({"name": "example.test"})))
        .await;
    let domain = d["id"].as_str().unwrap().to_owned();
    let (st, _) = s
        .call(Method::POST, "/scim/v2/Users", Some(json!({"userName": "ann"})))
        .await;
    assert_eq!(st, StatusCode::CREATED);
    // Another org's user, for the cross-org URL.
    let other = create_org(&s.store, "Other").await;
    let (_, theirs) = s
        .call_as(
            &other.token,
            Method::POST,
            "/scim/v2/Users",
            Some(json!({"userName": "theirs", "title": "Theirs"})),
        )
        .await;
    let theirs_id = theirs["id"].as_str().unwrap().to_owned();

    let b = Browser::start("bad-input").await;
    // A wrong password.
    b.goto(&format!("{}/signin", s.base)).await;
    b.fill("input[name=email]", &s.org.admin_email).await;
    b.fill("input[name=password]", "not-the-password").await;
    b.click("form[action='/signin'] button[type=submit]").await;
    b.wait_text("the e-mail or password is wrong").await;
    sign_in(&b, &s).await;

    let before = user_count(&s).await;
    let long = "x".repeat(300);
    for (username, email, expect) in [
        ("", "", "Enter a username."),
        (long.as_str(), "", "userName"),
        ("ann", "", "ann"),
        ("bob", "not-an-email", "is not a valid e-mail address"),
    ] {
        b.goto(&format!("{}/users", s.base)).await;
        b.no_client_checks().await;
        b.fill("input[name=username]", username).await;
        b.fill("input[name=email]", email).await;
        b.click("#new-user button[type=submit]").await;
        b.find("p.error[role=alert]").await;
        let msg = b.text("p.error").await;
        b.check(
            msg.contains(expect),
            &format!("{username:?}/{email:?}: {msg:?} should say {expect:?}"),
        )
        .await;
        b.check(
            b.value("input[name=email]").await == email,
            "the form keeps what was entered",
        )
        .await;
        assert_eq!(user_count(&s).await, before, "{username:?}: nothing was created");
    }

    // Another org's user, by its id in a URL: not found, and untouched.
    b.goto(&format!("{}/users/{theirs_id}", s.base)).await;
    b.wait_text("Something is not right").await;
    b.check(
        !b.source().await.contains("Theirs"),
        "nothing of the other org is shown",
    )
    .await;
    b.goto(&format!("{}/users/not-an-id", s.base)).await;
    b.wait_text("no such object").await;
    let (_, t) = s
        .call_as(&other.token, Method::GET, &format!("/scim/v2/Users/{theirs_id}"), None)
        .await;
    assert_eq!(t["title"], "Theirs");

    // Addresses that are not pages: console pages that say so (not JSON, not a bare 405).
    b.goto(&format!("{}/no-such-page", s.base)).await;
    b.wait_text("Nothing is at /no-such-page.").await;
    b.goto(&format!("{}/directories/{domain}/install", s.base)).await;
    b.wait_text("is an action, done with a button on its page, not a page to open.")
        .await;
    b.click("main a[href^='/directories/']").await;
    b.find("#install-agent").await;
    for (path, status) in [
        ("/no-such-page".to_owned(), StatusCode::NOT_FOUND),
        (format!("/directories/{domain}/install"), StatusCode::METHOD_NOT_ALLOWED),
    ] {
        let r = s.http.get(format!("{}{path}", s.base)).send().await.unwrap();
        assert_eq!(r.status(), status, "{path}");
        let html = r.text().await.unwrap();
        assert!(html.contains("/static/console.css"), "{path}: a console page: {html}");
    }
    let r = s.http.get(format!("{}/api/v1/nothing", s.base)).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    assert!(
        r.headers()["content-type"].to_str().unwrap().contains("json"),
        "an API path still answers JSON"
    );

    // Domain details: a threshold that is not a number, a NetBIOS name too long.
    for (field, value, expect) in [
        (
            "delete_threshold",
            "lots",
            "The delete threshold must be a whole number",
        ),
        ("netbios_name", "MUCH-TOO-LONG-NETBIOS", "netbios"),
        ("user_ou", "OU=Elsewhere,DC=other,DC=test", "DC=example,DC=test"),
    ] {
        b.goto(&format!("{}/directories/{domain}", s.base)).await;
        b.no_client_checks().await;
        b.fill(&format!("input[name={field}]"), value).await;
        b.click("form.details button[type=submit]").await;
        b.find("p.error[role=alert]").await;
        let msg = b.text("p.error").await.to_lowercase();
        b.check(
            msg.contains(&expect.to_lowercase()),
            &format!("{field}={value:?}: {msg:?}"),
        )
        .await;
    }
    let (_, after) = s.call(Method::GET, &format!("/api/v1/domains/{domain}"), None).await;
    assert_eq!(after["netbios_name"], d["netbios_name"]);
    assert_eq!(after["policies"], d["policies"]);
    assert_eq!(after["user_ou"], d["user_ou"]);

    // A domain twice; an empty group name; a member that does not exist.
    b.goto(&format!("{}/directories", s.base)).await;
    b.fill("input[name=name]", "example.test").await;
    b.click("form[action='/directories'] button[type=submit]").await;
    b.find("p.error[role=alert]").await;
    let (_, list) = s.call(Method::GET, "/api/v1/domains", None).await;
    assert_eq!(list["domains"].as_array().unwrap().len(), 1);
    b.goto(&format!("{}/groups", s.base)).await;
    b.no_client_checks().await;
    b.click("#new-group button[type=submit]").await;
    b.wait_text("Enter the group's name.").await;
    let (_, g) = s
        .call(Method::POST, "/scim/v2/Groups", Some(json!({"displayName": "Ops"})))
        .await;
    b.goto(&format!("{}/groups/{}", s.base, g["id"].as_str().unwrap()))
        .await;
    b.fill("input[name=add]", "nobody").await;
    b.click("#add-member button[type=submit]").await;
    b.wait_text("No user or group is called \"nobody\".").await;

    // A form without its CSRF token (another site's form) is refused.
    let r = s
        .http
        .post(format!("{}/users", s.base))
        .header("cookie", "ferry_session=fcs_forged")
        .form(&[("username", "mallory"), ("csrf", "0000")])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    assert_eq!(user_count(&s).await, before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_first_run_creates_the_organization_and_works_at_phone_width() {
    let s = TestServer::start_empty(Engine::Sqlite).await;
    let b = Browser::start("first-run").await;
    b.goto(&format!("{}/", s.base)).await;
    b.find("form[action='/setup']").await;
    b.check(b.url().await.ends_with("/setup"), "no organization: the first-run page")
        .await;
    b.no_client_checks().await;
    b.fill("input[name=org]", "Acme").await;
    b.fill("input[name=email]", "owner@acme.test").await;
    b.fill("input[name=password]", "short").await;
    b.click("form[action='/setup'] button").await;
    b.wait_text("The password needs 8 to 200 characters.").await;
    b.fill("input[name=password]", "a-long-enough-password").await;
    b.click("form[action='/setup'] button").await;
    b.wait_text("No Active Directory domain yet").await;
    let mut tx = s.store.begin().await.unwrap();
    let orgs = tx.list_orgs().await.unwrap();
    assert_eq!(orgs.len(), 1);
    assert_eq!(orgs[0].name, "Acme");
    drop(tx);
    // Once there is an organization, the first-run page is gone.
    b.goto(&format!("{}/setup", s.base)).await;
    b.find("form[action='/signin']").await;

    // At a phone's width every page fits: nothing scrolls sideways.
    b.resize(375, 800).await;
    for path in ["/signin", "/directories", "/users", "/groups", "/audit"] {
        b.goto(&format!("{}{path}", s.base)).await;
        fits(&b, &format!("{path} fits 375 px")).await;
    }
    // A group's page too, with a member and a long name that has no spaces.
    b.goto(&format!("{}/users", s.base)).await;
    b.fill("input[name=username]", "ann").await;
    b.click("#new-user button[type=submit]").await;
    b.wait_text("Created.").await;
    group_with_member(&b, &s, "EngineeringPlatformOperationsWorldwideTeam", "ann").await;
    fits(&b, "a group's page fits 375 px").await;
}

/// Sync errors where the admin looks: a count on Directories and the tab,
/// the list with what to do on Sync activity, Retry and Dismiss.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_errors_are_shown_retried_and_dismissed() {
    let s = TestServer::start(Engine::Sqlite).await;
    let (_, d) = s
        .call(
            Method::POST,
            "/api/v1/domains",
            Some(json!({"name": "example.test", "netbios_name": "EXAMPLE"})),
        )
        .await;
    let domain = d["id"].as_str().unwrap().to_owned();
    let (_, k) = s
        .call(Method::POST, &format!("/api/v1/domains/{domain}/connect-keys"), None)
        .await;
    let token = register_agent(&s, k["connect_key"].as_str().unwrap(), "dc1").await;
    let (_, u) = s
        .call(
            Method::POST,
            "/scim/v2/Users",
            Some(json!({"userName": "jsmith", "displayName": "John Smith"})),
        )
        .await;
    let uid = u["id"].as_str().unwrap().to_owned();
    for (key, name, code) in [
        (uid.clone(), "jsmith", "ldap 19 constraintViolation"),
        (
            uuid::Uuid::new_v4().to_string(),
            "CN=Other,DC=example,DC=test",
            "conflict",
        ),
    ] {
        let direction = if code == "conflict" {
            "ad_to_cloud"
        } else {
            "cloud_to_ad"
        };
        let report = json!({"direction": direction, "object_key": key, "object_kind": "user", "object_name": name,
            "operation": "create or update user", "code": code, "message": "refused <b>for good</b>"});
        let (st, v) = s
            .call_as(&token, Method::POST, "/agent/v1/sync-errors", Some(report))
            .await;
        assert_eq!(st, StatusCode::OK, "{v}");
    }
    // A user the agent brings from AD: Recent changes names it, not its id.
    let push = ferry_proto::agent::PushChangesRequest {
        from_cookie: None,
        to_cookie: Some("c1".into()),
        repair: false,
        changes: vec![ferry_proto::agent::AdChange::UpsertUser {
            guid: uuid::Uuid::new_v4(),
            dn: "CN=Dee Dee,CN=Users,DC=example,DC=test".into(),
            record: Box::new(ferry_proto::record::UserRecord {
                username: "deedee".into(),
                active: true,
                ..Default::default()
            }),
            changed_at: None,
        }],
    };
    let (st, v) = s
        .call_as(
            &token,
            Method::POST,
            "/agent/v1/changes",
            Some(serde_json::to_value(push).unwrap()),
        )
        .await;
    assert_eq!(st, StatusCode::OK, "{v}");
    let (_, dee) = s
        .call(Method::GET, "/scim/v2/Users?filter=userName%20eq%20%22deedee%22", None)
        .await;
    let dee_id = dee["Resources"][0]["id"].as_str().unwrap().to_owned();
    let b = Browser::start("sync-errors").await;
    sign_in(&b, &s).await;
    b.wait_text("2 sync errors").await;
    b.click("a.sync-errors").await;
    b.wait_text("Sync activity (2 errors)").await;
    b.find(&format!("a[href='/users/{dee_id}']")).await;
    b.check(
        b.text(&format!("a[href='/users/{dee_id}']")).await == "deedee"
            && !b.source().await.contains(&format!("user:{dee_id}")),
        "Recent changes names the user, not its id",
    )
    .await;
    b.check(b.count("tr.sync-error").await == 2, "both errors listed").await;
    b.wait_text("jsmith").await;
    b.wait_text("AD refused a value").await;
    b.check(
        b.source().await.contains("refused &lt;b&gt;for good&lt;/b&gt;"),
        "the message is escaped",
    )
    .await;
    // Retry the cloud → AD one: the user goes to the agent again.
    let head = {
        let (_, f) = s.call_as(&token, Method::GET, "/agent/v1/feed?after=0", None).await;
        f["next_cursor"].as_i64().unwrap()
    };
    let errors = s
        .call(Method::GET, &format!("/api/v1/domains/{domain}/sync-errors"), None)
        .await
        .1;
    let jsmith = errors["sync_errors"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["object_name"] == "jsmith")
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    b.click(&format!(
        "form[action='/directories/{domain}/sync-errors/{jsmith}/retry'] button"
    ))
    .await;
    b.wait_text("Sent again").await;
    let (_, f) = s
        .call_as(&token, Method::GET, &format!("/agent/v1/feed?after={head}"), None)
        .await;
    b.check(
        f["entries"].to_string().contains("jsmith"),
        "the retry re-delivers the user",
    )
    .await;
    // Dismiss it; one is left, and Retry all answers.
    b.click(&format!(
        "form[action='/directories/{domain}/sync-errors/{jsmith}/dismiss'] button"
    ))
    .await;
    b.wait_text("Dismissed.").await;
    b.check(b.count("tr.sync-error").await == 1, "one error left").await;
    b.click(&format!(
        "form[action='/directories/{domain}/sync-errors/all/retry'] button"
    ))
    .await;
    b.wait_text("Sent again").await;
    let (_, left) = s
        .call(Method::GET, &format!("/api/v1/domains/{domain}/sync-errors"), None)
        .await;
    assert_eq!(left["total"], 1, "{left}");
    // A forged form (no CSRF token) changes nothing.
    let other = left["sync_errors"][0]["id"].as_str().unwrap().to_owned();
    b.script(&format!(
        "var f = document.querySelector(\"form[action='/directories/{domain}/sync-errors/{other}/dismiss']\"); f.querySelector('input[name=csrf]').remove(); f.submit(); return 1;"
    ))
    .await;
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    let (_, left) = s
        .call(Method::GET, &format!("/api/v1/domains/{domain}/sync-errors"), None)
        .await;
    assert_eq!(left["total"], 1, "a form without its CSRF token is refused: {left}");
    // A delete made in the cloud over the domain's threshold (1 here) is
    // held back from AD, shown, and carried out once approved.
    let (st, v) = s
        .call(
            Method::PATCH,
            &format!("/api/v1/domains/{domain}"),
            Some(json!({"policies": {"delete_threshold": 1}})),
        )
        .await;
    assert_eq!(st, StatusCode::OK, "{v}");
    let push = json!({"from_cookie": "c1", "to_cookie": "c2", "changes": [{"op": "upsert_user",
        "guid": uuid::Uuid::new_v4(), "dn": "CN=First,CN=Users,DC=example,DC=test",
        "record": {"username": "first", "active": true}}]});
    let (st, v) = s.call_as(&token, Method::POST, "/agent/v1/changes", Some(push)).await;
    assert_eq!(st, StatusCode::OK, "{v}");
    let (_, first) = s
        .call(Method::GET, "/scim/v2/Users?filter=userName%20eq%20%22first%22", None)
        .await;
    let first_id = first["Resources"][0]["id"].as_str().unwrap().to_owned();
    for id in [&first_id, &dee_id] {
        let (st, _) = s.call(Method::DELETE, &format!("/scim/v2/Users/{id}"), None).await;
        assert_eq!(st, StatusCode::NO_CONTENT);
    }
    let (_, f) = s
        .call_as(&token, Method::GET, "/agent/v1/feed?after=0&limit=5000", None)
        .await;
    let head = f["next_cursor"].as_i64().unwrap();
    let deletes = f["entries"].to_string().matches(r#""op":"delete""#).count();
    b.check(
        deletes == 1,
        &format!("the first went down, the second is held: {deletes} deletes in the feed"),
    )
    .await;
    b.goto(&format!("{}/directories/{domain}?tab=activity", s.base)).await;
    let card = b.text("#held-cloud-deletes").await;
    b.check(
        card.contains("1 deletes made in the cloud") && card.contains("deedee"),
        &format!("the held delete is shown: {card}"),
    )
    .await;
    b.click(&format!(
        "form[action='/directories/{domain}/held-deletes/approve'] button"
    ))
    .await;
    b.wait_text("Done.").await;
    let (_, f) = s
        .call_as(&token, Method::GET, &format!("/agent/v1/feed?after={head}"), None)
        .await;
    b.check(
        f["entries"].to_string().contains(r#""op":"delete""#),
        &format!("approved: the delete goes to AD: {f}"),
    )
    .await;
    b.check(b.count("#held-cloud-deletes").await == 0, "nothing held any more")
        .await;
}
