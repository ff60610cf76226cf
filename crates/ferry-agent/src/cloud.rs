//! The agent's side of `/agent/v1`: a small client for the cloud.

use std::time::Duration;

use ferry_proto::agent::{
    AckRequest, AgentSelf, ApiErrorBody, ConnectKeyCheckRequest, ConnectKeyCheckResponse, FeedResponse,
    HeartbeatRequest, HeartbeatResponse, LinkInfo, LinksResponse, OpenSyncErrors, PushChangesRequest,
    PushChangesResponse, RegisterRequest, RegisterResponse, SyncDirection, SyncErrorReport, SyncErrorsResolved,
    SyncState,
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
}

impl CloudError {
    /// The stable code of a refusal.
    pub fn code(&self) -> Option<&str> {
        match self {
            CloudError::Refused { code, .. } => Some(code),
            CloudError::Unreachable { .. } => None,
        }
    }
}

/// A client bound to one agent identity.
#[derive(Clone)]
pub struct CloudClient {
    http: reqwest::Client,
    base: String,
    token: String,
}

impl CloudClient {
    /// A client for `base` (e.g. `https://ferry.example.com`) with an agent token.
    pub fn new(base: &str, token: &str) -> Result<Self, CloudError> {
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .timeout(Duration::from_secs(60))
            .user_agent(concat!("ferry-agent/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| CloudError::Unreachable {
                url: base.to_owned(),
                detail: e.to_string(),
            })?;
        Ok(CloudClient {
            http,
            base: base.trim_end_matches('/').to_owned(),
            token: token.to_owned(),
        })
    }

    async fn call<B: Serialize, T: DeserializeOwned>(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&B>,
    ) -> Result<T, CloudError> {
        let url = format!("{}/agent/v1{path}", self.base);
        let mut req = self.http.request(method, &url);
        if !self.token.is_empty() {
            req = req.bearer_auth(&self.token);
        }
        if let Some(b) = body {
            req = req.json(b);
        }
        let unreachable = |e: reqwest::Error| CloudError::Unreachable {
            url: self.base.clone(),
            detail: e.to_string(),
        };
        let resp = req.send().await.map_err(unreachable)?;
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

    /// Long-polls the feed.
    pub async fn feed(&self, after: i64, wait_secs: u64) -> Result<FeedResponse, CloudError> {
        self.call::<(), _>(
            reqwest::Method::GET,
            &format!("/feed?after={after}&wait={wait_secs}"),
            None,
        )
        .await
    }

    /// Acknowledges the feed up to `cursor`.
    pub async fn ack(&self, cursor: i64) -> Result<SyncState, CloudError> {
        self.call(reqwest::Method::POST, "/ack", Some(&AckRequest { cursor }))
            .await
    }

    /// The domain's links.
    pub async fn links(&self) -> Result<Vec<LinkInfo>, CloudError> {
        let r: LinksResponse = self.call::<(), _>(reqwest::Method::GET, "/links", None).await?;
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

    /// Records a link.
    pub async fn put_link(&self, link: &LinkInfo) -> Result<(), CloudError> {
        let _: LinkInfo = self.call(reqwest::Method::POST, "/links", Some(link)).await?;
        Ok(())
    }
}
