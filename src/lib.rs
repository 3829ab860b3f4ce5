//! trackrelay: a self-hosted SMTP relay with open and click tracking.
//!
//! The module layout follows the pipeline:
//! `submission → prepare → outbound → events → webhooks`, with `tracking`,
//! `api` and `store` beside them.

pub mod acme;
pub mod alloc_tuning;
pub mod api;
pub mod auth;
pub mod cert;
pub mod cli;
pub mod config;
pub mod dns;
pub mod dnscheck;
pub mod domains;
pub mod events;
pub mod feedback;
pub mod inbound;
pub mod metrics;
pub mod net;
pub mod outbound;
pub mod prepare;
pub mod serve;
pub mod store;
pub mod submission;
#[cfg(test)]
mod test_rng;
pub mod text;
pub mod time;
pub mod tls;
pub mod tracking;
pub mod ui;
pub mod webhooks;
