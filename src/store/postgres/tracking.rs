//! The PostgreSQL side of `TrackingStore`.

use crate::events::NewEvent;
use crate::store::tracking::{
    ClickJudge, OutboxCounts, OutboxItem, OutboxRow, Recorded, UnsubscribeOutcome,
    UnsubscribeRequest,
};
use crate::store::{Result, StoreError};
use std::collections::HashSet;
use std::sync::Arc;

fn not_yet<T>() -> Result<T> {
    Err(StoreError::msg(
        "tracking on PostgreSQL is not implemented yet",
    ))
}

#[async_trait::async_trait]
impl crate::store::tracking::TrackingStore for super::Postgres {
    async fn insert_tracking(
        &self,
        _events: Arc<[NewEvent]>,
        _judge: Arc<dyn ClickJudge>,
    ) -> Result<Vec<Recorded>> {
        not_yet()
    }

    async fn unsubscribe(
        &self,
        _req: UnsubscribeRequest,
        _suppressing: Arc<HashSet<String>>,
    ) -> Result<UnsubscribeOutcome> {
        not_yet()
    }

    async fn webhook_claim_due(
        &self,
        _endpoint: &str,
        _now: i64,
        _lease_ms: i64,
        _limit: usize,
    ) -> Result<Vec<OutboxItem>> {
        not_yet()
    }

    async fn webhook_delivered(&self, _id: &str, _at: i64) -> Result<()> {
        not_yet()
    }

    async fn webhook_failed(&self, _id: &str, _error: &str, _next: Option<i64>) -> Result<()> {
        not_yet()
    }

    async fn webhook_list(&self, _failed_only: bool, _limit: usize) -> Result<Vec<OutboxRow>> {
        not_yet()
    }

    async fn webhook_counts(&self) -> Result<OutboxCounts> {
        not_yet()
    }

    async fn webhook_replay_one(&self, _id: &str, _now: i64) -> Result<u64> {
        not_yet()
    }

    async fn webhook_replay_since(&self, _since: i64, _now: i64) -> Result<u64> {
        not_yet()
    }
}
