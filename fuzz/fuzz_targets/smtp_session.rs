//! The submission session on arbitrary client bytes, fed in arbitrary
//! chunks: it must never panic or stall, every reply must be well formed,
//! what it queues must have passed the checks, and the shared data budget
//! must be whole again once the session is gone.
#![no_main]

#[path = "common.rs"]
mod common;

use libfuzzer_sys::fuzz_target;
use std::sync::Arc;
use trackrelay::submission::budget::DataBudget;
use trackrelay::submission::session::{Action, Session, SessionConfig};

fuzz_target!(|data: &[u8]| {
    // Options come from the length so that seeds stay plain transcripts.
    let mode = data.len();
    let budget = DataBudget::new(if mode & 8 == 0 { 1 << 20 } else { 1500 });
    let cfg = Arc::new(SessionConfig {
        hostname: "relay.test".into(),
        max_message_size: 1000,
        max_recipients: 3,
        max_errors: 5,
        starttls: true,
        require_tls_for_auth: mode & 4 == 0,
        data_budget: budget.clone(),
    });
    let peer = if mode & 1 == 0 {
        "10.0.0.1"
    } else {
        "192.0.2.1"
    };
    let auth_ok = mode & 2 == 0;
    let mut s = Session::new(cfg, common::policy(), peer.parse().unwrap(), mode & 16 != 0);
    s.greeting();

    // Chunk sizes from a small generator seeded by the length: 1 byte at a
    // time, a few, or a whole read's worth.
    let mut rng = (mode as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let mut pos = 0;
    let mut output = s.take_output();
    'outer: while pos < data.len() {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        let size = match rng % 4 {
            0 => 1,
            1 => 1 + (rng >> 8) as usize % 16,
            2 => 1 + (rng >> 8) as usize % 512,
            _ => data.len(),
        };
        let end = data.len().min(pos + size);
        let mut chunk = &data[pos..end];
        pos = end;
        while !chunk.is_empty() {
            let (used, action) = s.feed(chunk);
            assert!(used <= chunk.len());
            chunk = &chunk[used..];
            match action {
                None => assert!(chunk.is_empty(), "stopped without an action"),
                Some(Action::Authenticate { username, .. }) => {
                    s.auth_result(auth_ok.then_some(username))
                }
                Some(Action::Queue(env)) => {
                    assert!(!env.recipients.is_empty());
                    assert!(env.data.len() <= 1000);
                    assert!(budget.in_use() >= env.data.len(), "queued data is budgeted");
                    let result = if env.data.len() % 3 == 0 {
                        Err("disk full".to_string())
                    } else {
                        Ok("ID".to_string())
                    };
                    s.queued(result);
                }
                // Never asked for: reject_suppressed is off here.
                Some(Action::CheckRecipient { .. }) => unreachable!("reject_suppressed is off"),
                // The server drops bytes pipelined after STARTTLS.
                Some(Action::StartTls) => {
                    s.tls_started();
                    chunk = &[];
                }
                Some(Action::Close) => {
                    output.extend(s.take_output());
                    break 'outer;
                }
            }
        }
        output.extend(s.take_output());
    }
    common::assert_replies_well_formed(&output);
    drop(s);
    assert_eq!(budget.in_use(), 0, "every reservation returned");
});
