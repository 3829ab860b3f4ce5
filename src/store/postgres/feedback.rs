//! The PostgreSQL side of `FeedbackStore`.

#[async_trait::async_trait]
impl crate::store::feedback::FeedbackStore for super::Postgres {}
