//! trackrelay: a self-hosted SMTP relay with open and click tracking.
//!
//! The module layout follows the pipeline:
//! `submission → prepare → outbound → events → webhooks`, with `tracking`,
//! `api` and `store` beside them.

pub mod outbound;
pub mod prepare;
