//! The agent's side of `/agent/v1`: a small client for the cloud, and how
//! it trusts the cloud's TLS key ([`trust`]).

pub mod trust;

use std::sync::Arc;
use std::time::Duration;

use ferry_proto::cloud_pin::{KeyVouches, Pin, VOUCHES_PATH};
pub use trust::{clear_text_refusal, Pins};

use ferry_proto::agent::{
    AckRequest, AgentSelf, ApiErrorBody, ConnectKeyCheckRequest, ConnectKeyCheckResponse, FeedResponse,
    HeartbeatRequest, HeartbeatResponse, LinkInfo, LinkRefusal, LinksBatch, LinksBatchResponse, LinksResponse,
    OpenSyncErrors, PushChangesRequest, PushChangesResponse, RegisterRequest, RegisterResponse, SyncDirection,
    SyncErrorReport, SyncErrorsResolved, SyncState,
};
use serde::de::DeserializeOwned;
use serde::Serialize;

/// An error talking to the cloud.
#[derive(Debug, thiserror::Error)]
pub enum CloudError {
    /// The cloud answered with an error.
    #[error("the cloud refused: {status} {code}: {message}")]
    Refused {
        /// HTTP status.
        status: u16,
        /// Stable code, e.g. `cookie_mismatch`.
        code: String,
        /// What it said.
        message: String,
    },
    /// The cloud could not be reached.
    #[error("cannot reach the cloud at {url}: {detail}")]
    Unreachable {
        /// Base URL.
        url: String,
        /// What failed.
        detail: String,
    },
    /// The URL would carry the agent's traffic in clear text across a network.
    #[error("{0}")]
    ClearText(String),
    /// The cloud presents a TLS key that is not pinned and that no pinned
    /// key vouched for.
    #[error("the cloud at {url} presents the TLS key {presented}, not the pinned {pinned}, and the pinned key did not vouch for it. If the cloud's certificate was replaced with a new key while it was stopped, compare the key with the cloud's (its log says \"serving HTTPS\" with the pin) and re-pin with `ferry-agent trust`; otherwise something is intercepting the connection")]
    KeyChanged {
        /// Base URL.
        url: String,
        /// The key presented.
        presented: Pin,
        /// The keys trusted, `AB:…, CD:…`.
        pinned: String,
    },
}

impl CloudError {
    /// The stable code of a refusal.
    pub fn code(&self) -> Option<&str> {
        match self {
            CloudError::Refused { code, .. } => Some(code),
            CloudError::Unreachable { .. } | CloudError::ClearText(_) | CloudError::KeyChanged { .. } => None,
        }
    }
}

/// An error with its causes (reqwest's own message hides the TLS reason).
fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let m = c.to_string();
        if !s.contains(&m) {
            s.push_str(": ");
            s.push_str(&m);
        }
        cur = c.source();
    }
    s
}

/// A client bound to one agent identity.
#[derive(Clone)]
pub struct CloudClient {
    http: reqwest::Client,
    base: String,
    token: String,
    pins: Option<Arc<Pins>>,
    /// The cloud refused `members=grouped` (a cloud of before): the feed is
    /// asked for without it, one entry per member.
    ungrouped: Arc<std::sync::atomic::AtomicBool>,
}

fn http_client(base: &str, tls: Option<rustls::ClientConfig>) -> Result<reqwest::Client, CloudError> {
    let mut b = reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(10))
        .timeout(Duration::from_secs(60))
        .user_agent(concat!("ferry-agent/", env!("CARGO_PKG_VERSION")));
    if let Some(config) = tls {
        b = b.use_preconfigured_tls(config);
    }
    b.build().map_err(|e| CloudError::Unreachable {
        url: base.to_owned(),
        detail: e.to_string(),
    })
}

/// Links asked for in one request.
const LINKS_PAGE: usize = 5_000;

impl CloudClient {
    /// A client for `base` (e.g. `https://ferry.example.com`) with an agent
    /// token, trusting the cloud's certificate through the OS trust store.
    pub fn new(base: &str, token: &str) -> Result<Self, CloudError> {
        Self::with_pins(base, token, None)
    }

    /// A client that trusts exactly the `pins` keys (when given), else the
    /// OS trust store. An `http://` URL to a host other than loopback is
    /// refused here, before any connection.
    pub fn with_pins(base: &str, token: &str, pins: Option<Arc<Pins>>) -> Result<Self, CloudError> {
        if let Some(m) = clear_text_refusal(base) {
            return Err(CloudError::ClearText(m));
        }
        let tls = match &pins {
            Some(p) => Some(
                trust::pinned_config(p.clone()).map_err(|detail| CloudError::Unreachable {
                    url: base.to_owned(),
                    detail,
                })?,
            ),
            None => None,
        };
        Ok(CloudClient {
            http: http_client(base, tls)?,
            base: base.trim_end_matches('/').to_owned(),
            token: token.to_owned(),
            pins,
            ungrouped: Arc::default(),
        })
    }

    /// The keys this client trusts, when it pins.
    pub fn pins(&self) -> Option<Vec<Pin>> {
        self.pins.as_ref().map(|p| p.current())
    }

    async fn call<B: Serialize, T: DeserializeOwned>(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&B>,
    ) -> Result<T, CloudError> {
        let url = format!("{}/agent/v1{path}", self.base);
        let unreachable = |e: reqwest::Error| CloudError::Unreachable {
            url: self.base.clone(),
            detail: error_chain(&e),
        };
        let mut rotated = false;
        let resp = loop {
            let mut req = self.http.request(method.clone(), &url);
            if !self.token.is_empty() {
                req = req.bearer_auth(&self.token);
            }
            if let Some(b) = body {
                req = req.json(b);
            }
            match req.send().await {
                Ok(r) => break r,
                Err(e) => {
                    // A pinned client refused the key presented: follow a
                    // vouched rotation once, then ask again.
                    let refused = self.pins.as_ref().and_then(|p| p.take_refused());
                    match refused {
                        Some(presented) if !rotated => {
                            self.follow_rotation(presented).await?;
                            rotated = true;
                        }
                        _ => return Err(unreachable(e)),
                    }
                }
            }
        };
        let status = resp.status();
        if status.is_success() {
            let bytes = resp.bytes().await.map_err(unreachable)?;
            let bytes: &[u8] = if bytes.is_empty() { b"null" } else { &bytes };
            return serde_json::from_slice(bytes).map_err(|e| CloudError::Unreachable {
                url: self.base.clone(),
                detail: format!("unexpected answer from {url}: {e} (is this a Ferry cloud?)"),
            });
        }
        let body: ApiErrorBody = resp.json().await.unwrap_or(ApiErrorBody {
            code: "unknown".into(),
            message: format!("HTTP {status}"),
        });
        Err(CloudError::Refused {
            status: status.as_u16(),
            code: body.code,
            message: body.message,
        })
    }

    /// A client with no identity yet, for the install wizard's calls
    /// (check a Connect Key, register).
    pub fn anonymous(base: &str) -> Result<Self, CloudError> {
        Self::new(base, "")
    }

    /// The cloud presented `presented`, which no pin matches: trust it if
    /// the admin pinned it meanwhile (`ferry-agent trust`) or if a chain of
    /// the cloud's vouches leads to it from a pinned key.
    async fn follow_rotation(&self, presented: Pin) -> Result<(), CloudError> {
        let Some(pins) = &self.pins else {
            return Ok(());
        };
        let trusted = pins.current();
        if pins.pins_in_config().contains(&presented) {
            tracing::info!(pin = %presented, "the cloud's key was pinned again in the config; trusting it");
            pins.adopt(presented);
            return Ok(());
        }
        let vouches = self.vouches().await.unwrap_or_default();
        if trust::follow_vouches(&trusted, &vouches).contains(&presented) {
            tracing::info!(old = %trusted.iter().map(ToString::to_string).collect::<Vec<_>>().join(", "), pin = %presented, "the cloud moved to a new TLS key, vouched for by the pinned one; trusting it");
            pins.adopt(presented);
            return Ok(());
        }
        Err(CloudError::KeyChanged {
            url: self.base.clone(),
            presented,
            pinned: trusted.iter().map(ToString::to_string).collect::<Vec<_>>().join(", "),
        })
    }

    /// The cloud's key vouches, read over a connection that trusts any key:
    /// each statement proves itself, and nothing secret is sent.
    async fn vouches(&self) -> Result<KeyVouches, CloudError> {
        let (config, _) = trust::recording_config().map_err(|detail| CloudError::Unreachable {
            url: self.base.clone(),
            detail,
        })?;
        let http = http_client(&self.base, Some(config))?;
        let unreachable = |e: reqwest::Error| CloudError::Unreachable {
            url: self.base.clone(),
            detail: error_chain(&e),
        };
        let resp = http
            .get(format!("{}{VOUCHES_PATH}", self.base))
            .send()
            .await
            .map_err(unreachable)?;
        let bytes = resp.bytes().await.map_err(unreachable)?;
        // Bounded: the cloud keeps a few statements.
        if bytes.len() > 256 * 1024 {
            return Ok(KeyVouches::default());
        }
        Ok(serde_json::from_slice(&bytes).unwrap_or_default())
    }

    /// The certificate the cloud at `base` presents (DER), read without
    /// trusting it and without sending anything secret (`ferry-agent trust`).
    pub async fn presented_certificate(base: &str) -> Result<Vec<u8>, CloudError> {
        if let Some(m) = clear_text_refusal(base) {
            return Err(CloudError::ClearText(m));
        }
        let (config, seen) = trust::recording_config().map_err(|detail| CloudError::Unreachable {
            url: base.to_owned(),
            detail,
        })?;
        let http = http_client(base, Some(config))?;
        let sent = http.get(format!("{}/healthz", base.trim_end_matches('/'))).send().await;
        let der = seen.lock().ok().and_then(|mut s| s.take());
        match (der, sent) {
            (Some(der), _) => Ok(der),
            (None, Err(e)) => Err(CloudError::Unreachable {
                url: base.to_owned(),
                detail: error_chain(&e),
            }),
            (None, Ok(_)) => Err(CloudError::Unreachable {
                url: base.to_owned(),
                detail: "the cloud presented no certificate (is the URL https://?)".into(),
            }),
        }
    }

    /// The domain a Connect Key belongs to, without using the key.
    pub async fn check_connect_key(&self, connect_key: &str) -> Result<ConnectKeyCheckResponse, CloudError> {
        let req = ConnectKeyCheckRequest {
            connect_key: connect_key.trim().to_owned(),
        };
        self.call(reqwest::Method::POST, "/connect-key", Some(&req)).await
    }

    /// Trades a Connect Key for an agent identity.
    pub async fn register(&self, req: &RegisterRequest) -> Result<RegisterResponse, CloudError> {
        self.call(reqwest::Method::POST, "/register", Some(req)).await
    }

    /// The cloud's view of this agent.
    pub async fn me(&self) -> Result<AgentSelf, CloudError> {
        self.call::<(), _>(reqwest::Method::GET, "/me", None).await
    }

    /// Revokes this agent's own identity (uninstall).
    pub async fn deregister(&self) -> Result<(), CloudError> {
        let _: serde_json::Value = self.call::<(), _>(reqwest::Method::POST, "/deregister", None).await?;
        Ok(())
    }

    /// Heartbeat (and primary lease).
    pub async fn heartbeat(&self, req: &HeartbeatRequest) -> Result<HeartbeatResponse, CloudError> {
        self.call(reqwest::Method::POST, "/heartbeat", Some(req)).await
    }

    /// Frees this agent's primary lease (on a clean stop).
    pub async fn release(&self) -> Result<(), CloudError> {
        let _: serde_json::Value = self.call::<(), _>(reqwest::Method::POST, "/release", None).await?;
        Ok(())
    }

    /// Where the domain's sync stands.
    pub async fn state(&self) -> Result<SyncState, CloudError> {
        self.call::<(), _>(reqwest::Method::GET, "/state", None).await
    }

    /// Pushes an AD batch.
    pub async fn push(&self, req: &PushChangesRequest) -> Result<PushChangesResponse, CloudError> {
        self.call(reqwest::Method::POST, "/changes", Some(req)).await
    }

    /// Long-polls the feed, membership entries of many members as they are
    /// (`members=grouped`; a cloud asked without it sends one per member).
    pub async fn feed(&self, after: i64, wait_secs: u64) -> Result<FeedResponse, CloudError> {
        use std::sync::atomic::Ordering;
        let plain = format!("/feed?after={after}&wait={wait_secs}");
        if self.ungrouped.load(Ordering::Relaxed) {
            return self.call::<(), _>(reqwest::Method::GET, &plain, None).await;
        }
        match self
            .call::<(), _>(reqwest::Method::GET, &format!("{plain}&members=grouped"), None)
            .await
        {
            // A cloud of before knows no `members` and refuses the request.
            Err(CloudError::Refused {
                status: 400, message, ..
            }) if message.contains("members") => {
                tracing::info!("the cloud sends membership changes one member an entry (a cloud of before)");
                self.ungrouped.store(true, Ordering::Relaxed);
                self.call::<(), _>(reqwest::Method::GET, &plain, None).await
            }
            r => r,
        }
    }

    /// Acknowledges the feed up to `cursor`.
    pub async fn ack(&self, cursor: i64) -> Result<SyncState, CloudError> {
        self.call(reqwest::Method::POST, "/ack", Some(&AckRequest { cursor }))
            .await
    }

    /// The domain's links.
    pub async fn links(&self) -> Result<Vec<LinkInfo>, CloudError> {
        let mut all = Vec::new();
        self.each_link(|l| all.push(l)).await?;
        Ok(all)
    }

    /// Every link of the domain, handed to `f` page by page (5,000 a
    /// request), so what is held at once does not grow with the domain.
    pub async fn each_link(&self, mut f: impl FnMut(LinkInfo)) -> Result<(), CloudError> {
        let mut after: Option<uuid::Uuid> = None;
        loop {
            let path = match after {
                Some(a) => format!("/links?limit={LINKS_PAGE}&after={a}"),
                None => format!("/links?limit={LINKS_PAGE}"),
            };
            let r: LinksResponse = self.call::<(), _>(reqwest::Method::GET, &path, None).await?;
            r.links.into_iter().for_each(&mut f);
            match r.next {
                // A cloud that does not page answers everything, without `next`.
                Some(n) if Some(n) != after => after = Some(n),
                _ => return Ok(()),
            }
        }
    }

    /// The links of these cloud objects (those linked in the domain).
    pub async fn links_of(&self, objects: Vec<uuid::Uuid>) -> Result<Vec<LinkInfo>, CloudError> {
        let req = ferry_proto::agent::LinksOfRequest { objects };
        let r: LinksResponse = self.call(reqwest::Method::POST, "/links/of", Some(&req)).await?;
        Ok(r.links)
    }

    /// The password of feed entry `seq`, sealed to this agent.
    pub async fn sealed(&self, seq: i64) -> Result<ferry_proto::seal::Sealed, CloudError> {
        self.call::<(), _>(reqwest::Method::GET, &format!("/secrets/{seq}"), None)
            .await
    }

    /// Records a change the other side refused for good.
    pub async fn report_sync_error(&self, report: &SyncErrorReport) -> Result<(), CloudError> {
        let _: serde_json::Value = self.call(reqwest::Method::POST, "/sync-errors", Some(report)).await?;
        Ok(())
    }

    /// Clears the errors of objects a later try applied.
    pub async fn resolve_sync_errors(
        &self,
        direction: SyncDirection,
        object_keys: Vec<String>,
    ) -> Result<(), CloudError> {
        let req = SyncErrorsResolved { direction, object_keys };
        let _: serde_json::Value = self
            .call(reqwest::Method::POST, "/sync-errors/resolved", Some(&req))
            .await?;
        Ok(())
    }

    /// The objects with an open sync error.
    pub async fn open_sync_errors(&self) -> Result<OpenSyncErrors, CloudError> {
        self.call::<(), _>(reqwest::Method::GET, "/sync-errors", None).await
    }

    /// Answers a scope preview the admin asked for.
    pub async fn answer_scope_preview(
        &self,
        id: uuid::Uuid,
        answer: &ferry_proto::agent::ScopePreviewAnswer,
    ) -> Result<(), CloudError> {
        let _: serde_json::Value = self
            .call(reqwest::Method::POST, &format!("/scope-preview/{id}"), Some(answer))
            .await?;
        Ok(())
    }

    /// Starts a comparison of both sides whole: the cloud sends down what
    /// never reached AD, and answers its digest of each objectGUID range.
    pub async fn audit(&self) -> Result<ferry_proto::audit::AuditDigests, CloudError> {
        self.call::<(), _>(reqwest::Method::POST, "/audit", None).await
    }

    /// The per-object digests of some ranges.
    pub async fn audit_objects(&self, buckets: Vec<u16>) -> Result<ferry_proto::audit::AuditObjects, CloudError> {
        let req = ferry_proto::audit::AuditObjectsRequest { buckets };
        self.call(reqwest::Method::POST, "/audit/objects", Some(&req)).await
    }

    /// Records a link.
    pub async fn put_link(&self, link: &LinkInfo) -> Result<(), CloudError> {
        let _: LinkInfo = self.call(reqwest::Method::POST, "/links", Some(link)).await?;
        Ok(())
    }

    /// Records several links in one request; answers those refused.
    pub async fn put_links(&self, links: Vec<LinkInfo>) -> Result<Vec<LinkRefusal>, CloudError> {
        let r: LinksBatchResponse = self
            .call(reqwest::Method::POST, "/links/batch", Some(&LinksBatch { links }))
            .await?;
        Ok(r.refused)
    }
}

#[cfg(test)]
mod feed_tests {
    use super::CloudClient;
    use std::sync::{Arc, Mutex};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A cloud of before: `members` is an unknown query field there, refused
    /// with 400 as `deny_unknown_fields` refuses it. The agent asks again
    /// without it, and from then on never sends it.
    #[tokio::test]
    async fn a_cloud_of_before_is_asked_for_the_feed_without_members_grouped() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen: Arc<Mutex<Vec<String>>> = Arc::default();
        let log = seen.clone();
        tokio::spawn(async move {
            loop {
                let Ok((mut sock, _)) = listener.accept().await else {
                    return;
                };
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                    match sock.read(&mut chunk).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
                let head = String::from_utf8_lossy(&buf).to_string();
                let path = head.split_whitespace().nth(1).unwrap_or_default().to_owned();
                let (status, body) = if path.contains("members=") {
                    (
                        "400 Bad Request",
                        r#"{"code":"bad_request","message":"bad query parameters: unknown field `members`, expected one of `after`, `wait`, `limit`"}"#,
                    )
                } else {
                    ("200 OK", r#"{"entries":[],"next_cursor":7}"#)
                };
                log.lock().unwrap().push(path);
                let reply = format!(
                    "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = sock.write_all(reply.as_bytes()).await;
            }
        });
        let cloud = CloudClient::new(&format!("http://{addr}"), "token").unwrap();
        assert_eq!(cloud.feed(0, 0).await.unwrap().next_cursor, 7);
        assert_eq!(cloud.feed(7, 0).await.unwrap().next_cursor, 7);
        let seen = seen.lock().unwrap().clone();
        assert_eq!(
            seen,
            [
                "/agent/v1/feed?after=0&wait=0&members=grouped",
                "/agent/v1/feed?after=0&wait=0",
                "/agent/v1/feed?after=7&wait=0",
            ]
        );
    }
}
