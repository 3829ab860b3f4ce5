//! Outbound delivery: DKIM signing and the SMTP client with its TLS policy.
//!
//! The queue runner (`runner`) picks recipients, resolves the next hop and
//! calls [`client::deliver_each`] with one connection's worth of messages;
//! [`dkim::sign`] runs on each copy as the connection asks for it. Bodies
//! this process just queued come from the submission listener through
//! [`fresh`], the rest from the store.

pub mod client;
pub mod dane;
pub mod dkim;
mod dkim_body;
pub mod fresh;
pub mod keys;
pub mod mta_sts;
pub mod protocol;
pub mod route;
pub mod runner;
mod session;
pub mod tls;
pub mod tls_policy;
pub mod tls_report;
mod transaction;

pub use client::{deliver, ClientConfig, Outcome, OutgoingMessage, Timeouts, TlsPolicy};
pub use dkim::{generate_key, sign, DkimAlgorithm, DkimKey};
pub use tls::TlsMemory;
