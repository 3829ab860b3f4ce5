//! The PostgreSQL side of `FeedbackStore`.

use crate::store::feedback::{
    Applied, FeedbackStore, NewReport, Pending, ReportInfo, ReportWork, Suppression,
};
use crate::store::{Result, StoreError};

fn missing<T>() -> Result<T> {
    Err(StoreError::msg(
        "the feedback store is not implemented on PostgreSQL yet",
    ))
}

#[async_trait::async_trait]
impl FeedbackStore for super::Postgres {
    async fn insert_report(&self, _: NewReport) -> Result<i64> {
        missing()
    }
    async fn pending_reports(&self, _: i64, _: usize) -> Result<Vec<Pending>> {
        missing()
    }
    async fn apply_reports(&self, _: Vec<ReportWork>, _: i64) -> Result<Vec<Applied>> {
        missing()
    }
    async fn report(&self, _: i64) -> Result<Option<ReportInfo>> {
        missing()
    }
    async fn suppression_lookup(&self, _: &str, _: &str, _: i64) -> Result<Option<(String, i64)>> {
        missing()
    }
    async fn add_suppression(&self, _: Suppression) -> Result<bool> {
        missing()
    }
    async fn import_suppressions(&self, _: Vec<Suppression>) -> Result<usize> {
        missing()
    }
    async fn remove_suppression(&self, _: &str, _: Option<&str>) -> Result<bool> {
        missing()
    }
    async fn suppressions(
        &self,
        _: Option<&str>,
        _: Option<(String, String)>,
        _: usize,
    ) -> Result<Vec<Suppression>> {
        missing()
    }
}
