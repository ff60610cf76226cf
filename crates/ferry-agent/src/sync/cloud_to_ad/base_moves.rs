//! The link's base moves after each write of a user's fields (see
//! `rebase`); the moves go to the cloud in batches
//! (`POST /agent/v1/links/batch`), one request in flight while the agent
//! writes on: what queues meanwhile goes in the next. So a move reaches
//! the cloud about one request after its write — before the write's echo
//! comes up through DirSync (a USN poll, a DirSync round, a read and a
//! push later) — and a catch-up of thousands of writes costs a few
//! requests, not one each. The feed is acknowledged only after every move
//! is recorded ([`BaseMoves::drain`]).

use ferry_proto::agent::{LinkInfo, LinkRefusal};
use tokio::task::JoinHandle;

use super::SyncError;
use crate::cloud::{CloudClient, CloudError};

/// Most links in one request (the cloud's limit).
const MAX_BATCH: usize = 1000;

/// Base moves on their way to the cloud.
pub(super) struct BaseMoves {
    cloud: CloudClient,
    queued: Vec<LinkInfo>,
    in_flight: Option<JoinHandle<Result<Vec<LinkRefusal>, CloudError>>>,
}

impl BaseMoves {
    pub(super) fn new(cloud: CloudClient) -> BaseMoves {
        BaseMoves {
            cloud,
            queued: Vec::new(),
            in_flight: None,
        }
    }

    /// Queues a move, and sends what is queued unless a request is in
    /// flight. Answers the links the cloud refused in a finished request.
    pub(super) async fn push(&mut self, link: LinkInfo) -> Result<Vec<LinkRefusal>, SyncError> {
        self.queued.push(link);
        if self.in_flight.as_ref().is_some_and(|h| !h.is_finished()) {
            return Ok(Vec::new());
        }
        let refused = self.finish().await?;
        let batch = self.next_batch();
        let cloud = self.cloud.clone();
        self.in_flight = Some(tokio::spawn(async move { cloud.put_links(batch).await }));
        Ok(refused)
    }

    /// Waits until every queued move is recorded; answers the refused links.
    pub(super) async fn drain(&mut self) -> Result<Vec<LinkRefusal>, SyncError> {
        let mut refused = self.finish().await?;
        while !self.queued.is_empty() {
            let batch = self.next_batch();
            refused.extend(self.cloud.put_links(batch).await.map_err(failed)?);
        }
        Ok(refused)
    }

    /// The request in flight, awaited.
    async fn finish(&mut self) -> Result<Vec<LinkRefusal>, SyncError> {
        match self.in_flight.take() {
            Some(h) => h
                .await
                .map_err(|e| SyncError::Retry(format!("recording link bases: {e}")))?
                .map_err(failed),
            None => Ok(Vec::new()),
        }
    }

    fn next_batch(&mut self) -> Vec<LinkInfo> {
        let n = self.queued.len().min(MAX_BATCH);
        self.queued.drain(..n).collect()
    }
}

/// A batch the cloud did not take whole (unreachable, not primary, …): the
/// feed page is applied again (idempotent), so this is always a retry.
fn failed(e: CloudError) -> SyncError {
    SyncError::Retry(format!("recording link bases: {e}"))
}
