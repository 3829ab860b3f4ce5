//! The PostgreSQL side of `DomainStore`.

#[async_trait::async_trait]
impl crate::store::domains::DomainStore for super::Postgres {}
