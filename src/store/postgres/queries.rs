//! The PostgreSQL side of `QueryStore`.

use crate::events::StoredEvent;
use crate::store::queries::{
    Each, EmailInfo, EmailSearch, EventFilter, Found, Gauges, PruneBatch, Pruned, QueueGroup,
    Stats, SuppressionWhy, WebhookSent,
};
use crate::store::{Result, StoreError};

fn not_yet<T>() -> Result<T> {
    Err(StoreError::msg(
        "this query is not implemented on PostgreSQL yet",
    ))
}

#[async_trait::async_trait]
impl crate::store::queries::QueryStore for super::Postgres {
    async fn email(&self, _id: &str) -> Result<Option<EmailInfo>> {
        not_yet()
    }

    async fn email_known(&self, _id: &str) -> Result<bool> {
        not_yet()
    }

    async fn events(&self, _filter: &EventFilter) -> Result<Vec<StoredEvent>> {
        not_yet()
    }

    async fn each_event(&self, _filter: &EventFilter, _on: Each<'_, StoredEvent>) -> Result<()> {
        not_yet()
    }

    async fn each_email(
        &self,
        _since: Option<i64>,
        _until: Option<i64>,
        _on: Each<'_, EmailInfo>,
    ) -> Result<()> {
        not_yet()
    }

    async fn stats(
        &self,
        _domain: Option<&str>,
        _since: Option<i64>,
        _until: Option<i64>,
    ) -> Result<Stats> {
        not_yet()
    }

    async fn series(
        &self,
        _domain: Option<&str>,
        _from: i64,
        _to: i64,
        _bucket: i64,
    ) -> Result<Vec<(i64, Stats)>> {
        not_yet()
    }

    async fn search(&self, _s: &EmailSearch) -> Result<Found> {
        not_yet()
    }

    async fn webhooks_for_email(&self, _email_id: &str) -> Result<Vec<WebhookSent>> {
        not_yet()
    }

    async fn queue_groups(&self, _limit: usize) -> Result<Vec<QueueGroup>> {
        not_yet()
    }

    async fn retry_group(
        &self,
        _destination: &str,
        _reason: Option<&str>,
        _now: i64,
    ) -> Result<usize> {
        not_yet()
    }

    async fn suppressions_view(&self, _prefix: &str, _limit: usize) -> Result<Vec<SuppressionWhy>> {
        not_yet()
    }

    async fn gauges(&self) -> Result<Gauges> {
        not_yet()
    }

    async fn prune(&self, _p: PruneBatch) -> Result<Pruned> {
        not_yet()
    }
}
