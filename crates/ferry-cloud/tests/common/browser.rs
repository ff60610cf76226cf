//! Headless Chromium, driven over the W3C WebDriver protocol through
//! Debian's `chromedriver` (a few JSON calls; no client library needed).
//! Each `Browser` is one chromedriver process and one session; a failed
//! test leaves a screenshot and the page's HTML in `target/console-failures`.
#![allow(dead_code)]

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

pub struct Browser {
    driver: Child,
    base: String,
    session: String,
    http: reqwest::Client,
    /// Name used for failure artifacts.
    pub name: String,
}

fn chromium() -> Option<String> {
    [
        "/usr/bin/chromium",
        "/usr/bin/chromium-browser",
        "/usr/bin/google-chrome",
    ]
    .into_iter()
    .find(|p| std::path::Path::new(p).exists())
    .map(str::to_owned)
}

impl Browser {
    pub async fn start(name: &str) -> Browser {
        Browser::launch(name, None).await
    }

    /// A browser whose downloads land in `dir`, without asking.
    pub async fn start_downloading_to(name: &str, dir: &std::path::Path) -> Browser {
        Browser::launch(name, Some(dir)).await
    }

    /// A browser for a service whose test certificate no CA it knows signed
    /// (WebDriver's `acceptInsecureCerts`), downloading to `dir`.
    pub async fn start_for_test_certificate(name: &str, dir: &std::path::Path) -> Browser {
        Browser::launch_with(name, Some(dir), true).await
    }

    async fn launch(name: &str, downloads: Option<&std::path::Path>) -> Browser {
        Browser::launch_with(name, downloads, false).await
    }

    async fn launch_with(name: &str, downloads: Option<&std::path::Path>, accept_test_certs: bool) -> Browser {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let driver = Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver (apt-get install chromium chromium-driver; scripts/test installs them)");
        let base = format!("http://127.0.0.1:{port}");
        let http = reqwest::Client::new();
        let started = Instant::now();
        while http.get(format!("{base}/status")).send().await.is_err() {
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "chromedriver did not start"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let mut opts = json!({"args": ["--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu", "--window-size=1280,900"]});
        if let Some(bin) = chromium() {
            opts["binary"] = json!(bin);
        }
        if let Some(dir) = downloads {
            opts["prefs"] = json!({"download.default_directory": dir, "download.prompt_for_download": false});
        }
        let caps = json!({"capabilities": {"alwaysMatch": {"browserName": "chrome", "acceptInsecureCerts": accept_test_certs, "goog:chromeOptions": opts}}});
        let r: Value = http
            .post(format!("{base}/session"))
            .json(&caps)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let session = r["value"]["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no WebDriver session: {r}"))
            .to_owned();
        Browser {
            driver,
            base,
            session,
            http,
            name: name.to_owned(),
        }
    }

    async fn cmd(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        let url = format!("{}/session/{}{path}", self.base, self.session);
        let mut req = self.http.request(method, url);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let v: Value = req.send().await.unwrap().json().await.unwrap();
        v["value"].clone()
    }

    pub async fn goto(&self, url: &str) {
        self.cmd(reqwest::Method::POST, "/url", Some(json!({"url": url}))).await;
    }

    pub async fn url(&self) -> String {
        self.cmd(reqwest::Method::GET, "/url", None)
            .await
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }

    pub async fn source(&self) -> String {
        self.cmd(reqwest::Method::GET, "/source", None)
            .await
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }

    /// The first element matching `css`, waiting up to 15 s for it.
    pub async fn find(&self, css: &str) -> String {
        let started = Instant::now();
        loop {
            let v = self
                .cmd(
                    reqwest::Method::POST,
                    "/element",
                    Some(json!({"using": "css selector", "value": css})),
                )
                .await;
            if let Some(id) = v[ELEMENT].as_str() {
                return id.to_owned();
            }
            if started.elapsed() > Duration::from_secs(15) {
                self.fail(&format!("no element matches {css:?}: {v}")).await;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// How many elements match `css` now.
    pub async fn count(&self, css: &str) -> usize {
        let v = self
            .cmd(
                reqwest::Method::POST,
                "/elements",
                Some(json!({"using": "css selector", "value": css})),
            )
            .await;
        v.as_array().map_or(0, Vec::len)
    }

    pub async fn click(&self, css: &str) {
        let id = self.find(css).await;
        self.cmd(reqwest::Method::POST, &format!("/element/{id}/click"), Some(json!({})))
            .await;
    }

    /// Clears a field and types into it.
    pub async fn fill(&self, css: &str, text: &str) {
        let id = self.find(css).await;
        self.cmd(reqwest::Method::POST, &format!("/element/{id}/clear"), Some(json!({})))
            .await;
        self.cmd(
            reqwest::Method::POST,
            &format!("/element/{id}/value"),
            Some(json!({"text": text})),
        )
        .await;
    }

    pub async fn text(&self, css: &str) -> String {
        let id = self.find(css).await;
        self.cmd(reqwest::Method::GET, &format!("/element/{id}/text"), None)
            .await
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }

    pub async fn value(&self, css: &str) -> String {
        let id = self.find(css).await;
        self.cmd(reqwest::Method::GET, &format!("/element/{id}/property/value"), None)
            .await
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }

    /// The value of one of the page's cookies.
    pub async fn cookie(&self, name: &str) -> Option<String> {
        let v = self.cmd(reqwest::Method::GET, &format!("/cookie/{name}"), None).await;
        v["value"].as_str().map(str::to_owned)
    }

    /// Resizes the window (CSS pixels).
    pub async fn resize(&self, width: u32, height: u32) {
        self.cmd(
            reqwest::Method::POST,
            "/window/rect",
            Some(json!({"width": width, "height": height})),
        )
        .await;
    }

    /// Runs a script in the page.
    pub async fn script(&self, js: &str) -> Value {
        self.cmd(
            reqwest::Method::POST,
            "/execute/sync",
            Some(json!({"script": js, "args": []})),
        )
        .await
    }

    /// Turns off the browser's own form checks, so what reaches the server
    /// is whatever a client sends (the server's checks are under test).
    pub async fn no_client_checks(&self) {
        self.script("document.querySelectorAll('form').forEach(f => f.noValidate = true); document.querySelectorAll('[maxlength]').forEach(e => e.removeAttribute('maxlength'));").await;
    }

    /// Fails (with a screenshot) unless `ok`.
    pub async fn check(&self, ok: bool, what: &str) {
        if !ok {
            self.fail(what).await;
        }
    }

    /// Waits (15 s) until the page's text contains `needle`.
    pub async fn wait_text(&self, needle: &str) {
        let started = Instant::now();
        loop {
            let body = self.text("body").await;
            if body.contains(needle) {
                return;
            }
            if started.elapsed() > Duration::from_secs(15) {
                self.fail(&format!("the page never said {needle:?}")).await;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Saves a screenshot and the HTML, then fails the test.
    pub async fn fail(&self, why: &str) -> ! {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/console-failures");
        let _ = std::fs::create_dir_all(&dir);
        let shot = self.cmd(reqwest::Method::GET, "/screenshot", None).await;
        if let Some(b64) = shot.as_str() {
            use base64::Engine as _;
            if let Ok(png) = base64::engine::general_purpose::STANDARD.decode(b64) {
                let _ = std::fs::write(dir.join(format!("{}.png", self.name)), png);
            }
        }
        let _ = std::fs::write(dir.join(format!("{}.html", self.name)), self.source().await);
        panic!(
            "{why} (at {}; screenshot and HTML in {})",
            self.url().await,
            dir.display()
        );
    }
}

impl Drop for Browser {
    /// Ends the session first (WebDriver's quit, which closes Chromium),
    /// then chromedriver: killed alone, it can leave its Chromium running
    /// after the tests. A plain blocking request, as `drop` may run inside
    /// the tests' runtime.
    fn drop(&mut self) {
        use std::io::{Read, Write};
        let host = self.base.trim_start_matches("http://");
        if let Ok(mut s) = std::net::TcpStream::connect(host) {
            let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
            let request = format!(
                "DELETE /session/{} HTTP/1.1\r\nHost: {host}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                self.session
            );
            if s.write_all(request.as_bytes()).is_ok() {
                let _ = s.read_to_end(&mut Vec::new());
            }
        }
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}
