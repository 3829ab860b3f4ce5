//! SMTP submission: where applications hand mail to trackrelay.
//!
//! `session` is the protocol as a pure state machine, `policy` decides who
//! may send as whom, `auth` checks passwords, and `server` owns the sockets
//! and the durable commit. An accepted message goes to the store, from
//! which `outbound` takes it.

mod address;
pub mod auth;
pub mod budget;
pub(crate) mod driver;
pub mod policy;
pub mod reply;
pub mod server;
pub mod session;

pub use server::Submission;
