//! Outbound delivery: DKIM signing and the SMTP client with its TLS policy.
//!
//! The queue runner (not here) picks recipients, resolves the next hop and
//! calls [`client::deliver`] with one connection's worth of messages;
//! [`dkim::sign`] runs on each prepared copy before that.

pub mod client;
pub mod dkim;
pub mod keys;
pub mod protocol;
pub mod route;
pub mod runner;
mod session;
pub mod tls;

pub use client::{deliver, ClientConfig, Outcome, OutgoingMessage, Timeouts, TlsPolicy};
pub use dkim::{generate_key, sign, DkimAlgorithm, DkimKey};
pub use tls::TlsMemory;
