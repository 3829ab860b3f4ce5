//! The PostgreSQL side of `DomainStore`.

use crate::store::domains::{
    CachedPolicy, Change, CountKey, DomainRow, DomainStore, HistoryRow, ReportClaim, ReportRow,
    Summary,
};
use crate::store::{Result, StoreError};

fn todo<T>() -> Result<T> {
    Err(StoreError::msg(
        "domain statuses, MTA-STS and TLS reports are not yet stored on PostgreSQL",
    ))
}

#[async_trait::async_trait]
impl DomainStore for super::Postgres {
    async fn domain_statuses(&self) -> Result<Vec<DomainRow>> {
        todo()
    }
    async fn domain_status(&self, _: &str) -> Result<Option<DomainRow>> {
        todo()
    }
    async fn domain_history(&self, _: &str, _: usize) -> Result<Vec<HistoryRow>> {
        todo()
    }
    async fn save_domain_status(&self, _: DomainRow, _: Option<Change>) -> Result<Option<i64>> {
        todo()
    }
    async fn sts_policy(&self, _: &str) -> Result<Option<CachedPolicy>> {
        todo()
    }
    async fn put_sts_policy(&self, _: CachedPolicy) -> Result<()> {
        todo()
    }
    async fn mark_sts_used(&self, _: &str, _: i64) -> Result<()> {
        todo()
    }
    async fn sts_refresh_due(&self, _: i64, _: usize) -> Result<Vec<CachedPolicy>> {
        todo()
    }
    async fn drop_stale_sts(&self, _: i64) -> Result<usize> {
        todo()
    }
    async fn add_tls_counts(&self, _: Vec<(CountKey, i64)>) -> Result<()> {
        todo()
    }
    async fn tls_counts(&self, _: &str, _: &str) -> Result<Vec<(CountKey, i64)>> {
        todo()
    }
    async fn tls_unreported_days(&self, _: &str) -> Result<Vec<(String, String)>> {
        todo()
    }
    async fn prune_tls_reports(&self, _: &str) -> Result<usize> {
        todo()
    }
    async fn insert_tls_report(&self, _: ReportRow) -> Result<bool> {
        todo()
    }
    async fn claim_tls_reports(&self, _: ReportClaim) -> Result<Vec<ReportRow>> {
        todo()
    }
    async fn record_tls_attempt(&self, _: ReportRow) -> Result<()> {
        todo()
    }
    async fn tls_report(&self, _: &str, _: &str) -> Result<Option<ReportRow>> {
        todo()
    }
    async fn tls_report_list(
        &self,
        _: Option<&str>,
        _: Option<&str>,
        _: usize,
    ) -> Result<Vec<Summary>> {
        todo()
    }
}
