//! The PostgreSQL side of `QueueStore`.

use crate::store::queue::{Attempt, Claimed, LeaseKeys, NewEmail, QueueEntry, StoredBody};
use crate::store::{Result, StoreError};
use std::collections::HashSet;

fn todo<T>() -> Result<T> {
    Err(StoreError::msg(
        "the queue is not implemented on PostgreSQL yet",
    ))
}

#[async_trait::async_trait]
impl crate::store::queue::QueueStore for super::Postgres {
    async fn accept(&self, _email: NewEmail) -> Result<()> {
        todo()
    }
    async fn body(&self, _email_id: &str) -> Result<Option<StoredBody>> {
        todo()
    }
    async fn due(&self, _now: i64, _limit: usize, _skip: &[String]) -> Result<Vec<Claimed>> {
        todo()
    }
    async fn claim(
        &self,
        _wanted: Vec<Claimed>,
        _now: i64,
        _lease_ms: i64,
    ) -> Result<Vec<Claimed>> {
        todo()
    }
    async fn claim_due(&self, _now: i64, _lease_ms: i64, _limit: usize) -> Result<Vec<Claimed>> {
        todo()
    }
    async fn renew(&self, _lease_id: &str, _keys: &[(String, u32)], _until: i64) -> Result<usize> {
        todo()
    }
    async fn release(&self, _leases: &[LeaseKeys], _now: i64) -> Result<usize> {
        todo()
    }
    async fn recover_expired(&self, _now: i64) -> Result<usize> {
        todo()
    }
    async fn next_due(&self) -> Result<Option<i64>> {
        todo()
    }
    async fn depth(&self) -> Result<i64> {
        todo()
    }
    async fn record(
        &self,
        _attempts: Vec<Attempt>,
        _suppress: &HashSet<String>,
    ) -> Result<Vec<(String, u32)>> {
        todo()
    }
    async fn list(
        &self,
        _all: bool,
        _after: Option<(String, u32)>,
        _limit: usize,
    ) -> Result<Vec<QueueEntry>> {
        todo()
    }
    async fn retry(&self, _email_id: &str, _now: i64) -> Result<usize> {
        todo()
    }
    async fn delete(&self, _email_id: &str, _now: i64) -> Result<usize> {
        todo()
    }
}
