//! Test doubles for what lies outside the system, speaking the real
//! protocols on loopback: `mx` (a receiving SMTP server), `dns` (a DNS
//! server), `webhook` (a webhook endpoint), plus `dkim` (independent
//! signature checks). Use with `mod support;`.
#![allow(dead_code)]

pub mod dkim;
pub mod dns;
pub mod dnssec;
pub mod mx;
pub mod pebble;
pub mod postfix;
pub mod postgres;
pub mod sts;
pub mod tlsrpt;
pub mod webhook;
