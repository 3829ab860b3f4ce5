//! The return-path MX: where bounces, complaints and mailto unsubscribes
//! for the configured return-path domains arrive.
//!
//! `server` receives them (the submission session in its inbound mode) and
//! stores each one raw in `inbound_reports` before answering `250`.

pub mod server;

pub use server::Inbound;

#[cfg(test)]
mod session_tests;
