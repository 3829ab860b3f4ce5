//! The PostgreSQL side of `QueryStore`.

#[async_trait::async_trait]
impl crate::store::queries::QueryStore for super::Postgres {}
