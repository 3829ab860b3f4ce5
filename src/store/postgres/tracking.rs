//! The PostgreSQL side of `TrackingStore`.

#[async_trait::async_trait]
impl crate::store::tracking::TrackingStore for super::Postgres {}
