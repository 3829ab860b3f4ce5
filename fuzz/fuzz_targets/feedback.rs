//! The report parser on arbitrary bytes: no panic, bounded fields, and a
//! suppression only for a permanent "no such address".
#![no_main]

use libfuzzer_sys::fuzz_target;
use trackrelay::feedback::bounce::{Bounce, BounceType, SubType, MAX_TEXT};
use trackrelay::feedback::{classify, return_path, Report};
use trackrelay::prepare::TokenKeys;

fn check(b: &Bounce) {
    assert!(b.message.len() <= MAX_TEXT);
    if b.suppress {
        assert_eq!((b.kind, b.sub_type), (BounceType::Permanent, SubType::NoEmail));
    }
}

fuzz_target!(|data: &[u8]| {
    let keys = TokenKeys::new([7; 32], vec![[8; 32]]);
    let report = classify(data);
    match &report {
        Report::Dsn(d) => {
            for r in &d.recipients {
                for f in [&r.status, &r.diagnostic_code, &r.final_recipient, &r.remote_mta] {
                    assert!(f.as_ref().is_none_or(|v| v.len() <= MAX_TEXT));
                }
                if let Some(b) = r.bounce(d.reporting_mta.as_deref()) {
                    check(&b);
                }
            }
        }
        Report::PlainBounce(p) => {
            check(&p.bounce);
            assert!(p.recipients.len() <= 10);
        }
        _ => {}
    }
    let _ = report.tokens(data, &keys);
    let _ = return_path::verify(&keys, &String::from_utf8_lossy(data));
    // Whatever the input, a token made from it round-trips.
    if data.len() >= 20 {
        let id = uuid::Uuid::from_slice(&data[..16]).unwrap();
        let idx = u32::from_be_bytes(data[16..20].try_into().unwrap());
        let t = return_path::encode(&keys, id, idx);
        let rp = return_path::verify(&keys, &t.to_ascii_uppercase()).unwrap();
        assert_eq!((rp.email_id, rp.rcpt_index), (id, idx));
    }
});
