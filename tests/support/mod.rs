//! Shared helpers for integration tests: `mod support;` then `support::mx`,
//! `support::dkim`.
#![allow(dead_code)]

pub mod dkim;
pub mod dns;
pub mod mx;
pub mod webhook;
