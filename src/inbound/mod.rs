//! The return-path MX: where bounces, complaints and mailto unsubscribes
//! for the configured return-path domains arrive, and what is done with
//! them.
//!
//! `server` receives them (the submission session in its inbound mode) and
//! stores each one raw in `inbound_reports` before answering `250`;
//! `process` (the feedback processor) reads them and turns them into
//! recipient states, events and suppressions.

pub mod process;
pub mod server;

pub use server::Inbound;

#[cfg(test)]
mod session_tests;
