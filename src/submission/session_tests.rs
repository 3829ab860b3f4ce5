//! The session without a network: bytes in, replies and actions out.

use super::*;
use crate::config::Config;
use std::path::Path;

const HASH: &str = "$argon2id$v=19$m=19456,t=2,p=1$vVVq6pyMo/HWwFDiBzXNfQ$KHlKSqwelqUQYyobq8XZzRLNH8qcUlLuVSnd98FHfuo";

fn policy() -> Arc<Policy> {
    let text = format!(
        "[server]\nhostname = \"relay.test\"\n[submission]\ntrusted_networks = [\"10.0.0.0/8\"]\n\
         [[submission.users]]\nname = \"app\"\npassword_hash = \"{HASH}\"\ndomains = [\"example.com\"]\n\
         [[domains]]\nname = \"example.com\"\n[[domains]]\nname = \"example.org\"\n"
    );
    Arc::new(Policy::from_config(
        &Config::parse(&text, Path::new("/t.toml")).unwrap(),
    ))
}

fn cfg() -> Arc<SessionConfig> {
    cfg_with_budget(DataBudget::new(1_000_000))
}

fn cfg_with_budget(data_budget: Arc<DataBudget>) -> Arc<SessionConfig> {
    Arc::new(SessionConfig {
        hostname: "relay.test".into(),
        max_message_size: 1000,
        max_recipients: 3,
        max_errors: 5,
        starttls: true,
        require_tls_for_auth: true,
        data_budget,
    })
}

fn session(ip: &str, tls: bool) -> Session {
    session_with(cfg(), ip, tls)
}

fn session_with(cfg: Arc<SessionConfig>, ip: &str, tls: bool) -> Session {
    let mut s = Session::new(cfg, policy(), ip.parse().unwrap(), tls);
    s.greeting();
    s
}

/// Feeds everything, answering actions the way a driver would.
fn run(s: &mut Session, input: &[u8], auth_ok: bool) -> (String, Vec<Envelope>) {
    let mut envelopes = Vec::new();
    let mut pos = 0;
    while pos < input.len() {
        let (used, action) = s.feed(&input[pos..]);
        pos += used;
        match action {
            None => break,
            Some(Action::Authenticate { username, .. }) => {
                s.auth_result(auth_ok.then_some(username))
            }
            Some(Action::Queue(env)) => {
                envelopes.push(*env);
                s.queued(Ok("ID".into()));
            }
            Some(Action::StartTls) => s.tls_started(),
            Some(Action::CheckRecipient { address, .. }) => {
                s.recipient_checked(if address.starts_with("suppressed") {
                    RcptCheck::Suppressed("manual".into())
                } else {
                    RcptCheck::Clear
                })
            }
            Some(Action::Close) => break,
        }
    }
    (String::from_utf8(s.take_output()).unwrap(), envelopes)
}

fn codes(out: &str) -> Vec<String> {
    out.lines()
        .filter(|l| l.len() >= 4 && &l[3..4] == " ")
        .map(|l| l[..3].to_string())
        .collect()
}

const MSG: &str = "From: App <a@example.com>\r\nTo: b@example.net\r\nSubject: hi\r\n\r\nhello\r\n";

#[test]
fn ehlo_hides_auth_until_tls() {
    let mut s = session("192.0.2.1", false);
    let (out, _) = run(&mut s, b"EHLO client\r\n", true);
    for ext in [
        "PIPELINING",
        "SIZE 1000",
        "8BITMIME",
        "SMTPUTF8",
        "ENHANCEDSTATUSCODES",
        "CHUNKING",
        "STARTTLS",
    ] {
        assert!(out.contains(ext), "{ext} missing in {out}");
    }
    assert!(!out.contains("AUTH"), "{out}");
    let (out, _) = run(&mut s, b"STARTTLS\r\nEHLO client\r\n", true);
    assert!(out.starts_with("220 2.0.0"), "{out}");
    assert!(
        out.contains("AUTH PLAIN LOGIN") && !out.contains("STARTTLS"),
        "{out}"
    );
}

#[test]
fn starttls_drops_what_was_pipelined_after_it() {
    let mut s = session("192.0.2.1", false);
    run(&mut s, b"EHLO c\r\n", true);
    let input = b"STARTTLS\r\nMAIL FROM:<a@example.com>\r\n";
    let (used, action) = s.feed(input);
    assert!(matches!(action, Some(Action::StartTls)));
    assert_eq!(
        used,
        b"STARTTLS\r\n".len(),
        "the rest is the driver's to discard"
    );
}

#[test]
fn no_auth_no_relay() {
    let mut s = session("192.0.2.1", true);
    let (out, env) = run(
        &mut s,
        b"EHLO c\r\nMAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.net>\r\n",
        true,
    );
    assert_eq!(codes(&out), ["220", "250", "530", "530"], "{out}");
    assert!(out.contains("530 5.7.0"), "{out}");
    assert!(env.is_empty());
}

#[test]
fn trusted_network_pipelines_a_whole_message() {
    let mut s = session("10.1.2.3", false);
    let input = format!(
        "EHLO c\r\nMAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.net>\r\nRCPT TO:<c@example.net>\r\nDATA\r\n{MSG}..dot line\r\n.\r\nQUIT\r\n"
    );
    let (out, env) = run(&mut s, input.as_bytes(), true);
    assert_eq!(
        codes(&out),
        ["220", "250", "250", "250", "250", "354", "250", "221"],
        "{out}"
    );
    assert!(out.contains("250 2.0.0 Ok: queued as ID"));
    assert_eq!(env.len(), 1);
    assert_eq!(env[0].recipients, ["b@example.net", "c@example.net"]);
    assert_eq!(env[0].data, format!("{MSG}.dot line\r\n").as_bytes());
    assert_eq!(env[0].identity, Identity::Trusted);
    assert_eq!(env[0].header.domain, "example.com");
}

#[test]
fn byte_by_byte_equals_all_at_once() {
    let input = format!(
        "EHLO c\r\nMAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.net>\r\nDATA\r\n{MSG}.\r\nNOOP\r\n"
    );
    let mut whole = session("10.0.0.1", false);
    let (out_whole, env_whole) = run(&mut whole, input.as_bytes(), true);
    let mut split = session("10.0.0.1", false);
    let mut out_split = String::new();
    let mut env_split = Vec::new();
    for b in input.as_bytes() {
        let (o, e) = run(&mut split, std::slice::from_ref(b), true);
        out_split.push_str(&o);
        env_split.extend(e);
    }
    assert_eq!(out_whole, out_split);
    assert_eq!(env_whole[0].data, env_split[0].data);
}

#[test]
fn auth_plain_and_login() {
    let mut s = session("192.0.2.1", true);
    // "\0app\0pw"
    let (out, _) = run(&mut s, b"EHLO c\r\nAUTH PLAIN AGFwcABwdw==\r\n", true);
    assert!(out.contains("235 2.7.0"), "{out}");
    let (out, _) = run(&mut s, b"AUTH PLAIN AGFwcABwdw==\r\n", true);
    assert!(out.contains("503 5.5.1"), "{out}");

    let mut s = session("192.0.2.1", true);
    let (out, _) = run(&mut s, b"EHLO c\r\nAUTH LOGIN\r\nYXBw\r\ncHc=\r\n", false);
    assert_eq!(codes(&out), ["220", "250", "334", "334", "535"], "{out}");
    assert!(out.contains("334 VXNlcm5hbWU6") && out.contains("334 UGFzc3dvcmQ6"));

    let mut s = session("192.0.2.1", true);
    let (out, _) = run(&mut s, b"EHLO c\r\nAUTH PLAIN\r\n*\r\n", true);
    assert!(out.contains("501 5.0.0 Authentication cancelled"), "{out}");
}

#[test]
fn auth_before_tls_is_refused() {
    let mut s = session("192.0.2.1", false);
    let (out, _) = run(&mut s, b"EHLO c\r\nAUTH PLAIN AGFwcABwdw==\r\n", true);
    assert!(out.contains("538 5.7.11"), "{out}");
}

#[test]
fn sender_must_be_the_users() {
    let mut s = session("192.0.2.1", true);
    let input = "EHLO c\r\nAUTH PLAIN AGFwcABwdw==\r\nMAIL FROM:<a@example.org>\r\nMAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.net>\r\nDATA\r\nFrom: x@example.org\r\n\r\nbody\r\n.\r\n";
    let (out, env) = run(&mut s, input.as_bytes(), true);
    assert_eq!(
        codes(&out),
        ["220", "250", "235", "550", "250", "250", "354", "550"],
        "{out}"
    );
    assert!(
        out.contains(
            "550 5.7.1 Sender <a@example.org> refused: user app may not send as example.org"
        ),
        "{out}"
    );
    assert!(
        out.contains("550 5.7.1 From: address x@example.org refused"),
        "{out}"
    );
    assert!(env.is_empty());
}

#[test]
fn size_limits() {
    let mut s = session("10.0.0.1", false);
    let (out, _) = run(
        &mut s,
        b"EHLO c\r\nMAIL FROM:<a@example.com> SIZE=5000\r\n",
        true,
    );
    assert!(out.contains("552 5.3.4"), "{out}");
    let big = "x".repeat(2000);
    let input = format!("MAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.net>\r\nDATA\r\n{MSG}{big}\r\n.\r\nRSET\r\n");
    let (out, env) = run(&mut s, input.as_bytes(), true);
    assert_eq!(codes(&out), ["250", "250", "354", "552", "250"], "{out}");
    assert!(env.is_empty());
    // The session is still usable.
    let input =
        format!("MAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.net>\r\nDATA\r\n{MSG}.\r\n");
    let (_, env) = run(&mut s, input.as_bytes(), true);
    assert_eq!(env.len(), 1);
}

#[test]
fn too_many_recipients() {
    let mut s = session("10.0.0.1", false);
    let input = b"EHLO c\r\nMAIL FROM:<a@example.com>\r\nRCPT TO:<1@x.net>\r\nRCPT TO:<2@x.net>\r\nRCPT TO:<2@X.net>\r\nRCPT TO:<3@x.net>\r\nRCPT TO:<4@x.net>\r\n";
    let (out, _) = run(&mut s, input, true);
    assert_eq!(
        codes(&out),
        ["220", "250", "250", "250", "250", "250", "250", "452"],
        "{out}"
    );
    assert!(out.contains("452 4.5.3"));
}

#[test]
fn overlong_line_gets_one_reply() {
    let mut s = session("10.0.0.1", false);
    let mut input = b"EHLO c\r\nNOOP ".to_vec();
    input.extend(std::iter::repeat_n(b'a', 10_000));
    input.extend_from_slice(b"\r\nNOOP\r\n");
    let (out, _) = run(&mut s, &input, true);
    assert_eq!(codes(&out), ["220", "250", "500", "250"], "{out}");
    assert!(out.contains("500 5.5.2 Line too long"));
}

#[test]
fn garbage_is_answered_then_dropped() {
    let mut s = session("10.0.0.1", false);
    let mut input = Vec::new();
    for i in 0..10u8 {
        input.extend_from_slice(&[0xff, 0x00, i, b'z', b'\r', b'\n']);
    }
    let (used, action) = s.feed(&input);
    assert!(matches!(action, Some(Action::Close)));
    assert_eq!(used, input.len());
    let out = String::from_utf8_lossy(&s.take_output()).to_string();
    assert_eq!(out.matches("500 5.5.1").count(), 5, "{out}");
    assert!(
        out.ends_with("421 4.7.0 relay.test Too many errors, closing connection\r\n"),
        "{out}"
    );
}

#[test]
fn bdat_chunks() {
    let mut s = session("10.0.0.1", false);
    let part1 = &MSG[..20];
    let part2 = &MSG[20..];
    let input = format!(
        "EHLO c\r\nMAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.net>\r\nBDAT {}\r\n{part1}BDAT {} LAST\r\n{part2}",
        part1.len(),
        part2.len()
    );
    let (out, env) = run(&mut s, input.as_bytes(), true);
    assert_eq!(
        codes(&out),
        ["220", "250", "250", "250", "250", "250"],
        "{out}"
    );
    assert_eq!(
        env[0].data,
        MSG.as_bytes(),
        "BDAT bytes are taken as they are"
    );
    // Without a transaction the chunk is still read, then refused.
    let (out, _) = run(&mut s, b"BDAT 5 LAST\r\nhelloNOOP\r\n", true);
    assert_eq!(codes(&out), ["503", "250"], "{out}");
}

#[test]
fn bdat_over_the_limit() {
    let mut s = session("10.0.0.1", false);
    let big = "y".repeat(1500);
    let input = format!(
        "EHLO c\r\nMAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.net>\r\nBDAT {} LAST\r\n{big}NOOP\r\n",
        big.len()
    );
    let (out, env) = run(&mut s, input.as_bytes(), true);
    assert_eq!(
        codes(&out),
        ["220", "250", "250", "250", "552", "250"],
        "{out}"
    );
    assert!(env.is_empty());
}

#[test]
fn data_needs_recipients_and_from_header() {
    let mut s = session("10.0.0.1", false);
    let (out, _) = run(
        &mut s,
        b"EHLO c\r\nDATA\r\nMAIL FROM:<a@example.com>\r\nDATA\r\n",
        true,
    );
    assert_eq!(codes(&out), ["220", "250", "503", "250", "554"], "{out}");
    let (out, _) = run(
        &mut s,
        b"RSET\r\nMAIL FROM:<a@example.com>\r\nRCPT TO:<b@x.net>\r\nDATA\r\n.\r\n",
        true,
    );
    assert_eq!(codes(&out), ["250", "250", "250", "354", "550"], "{out}");
    assert!(
        out.contains("550 5.6.0 Message refused: it has no From: header"),
        "{out}"
    );
}

#[test]
fn vrfy_noop_help_and_unknowns() {
    let mut s = session("10.0.0.1", false);
    let (out, _) = run(
        &mut s,
        b"VRFY bob\r\nNOOP\r\nHELP\r\nEXPN list\r\nFROB\r\n",
        true,
    );
    assert_eq!(
        codes(&out),
        ["220", "252", "250", "214", "502", "500"],
        "{out}"
    );
}

#[test]
fn store_failure_is_a_451() {
    let mut s = session("10.0.0.1", false);
    let input =
        format!("EHLO c\r\nMAIL FROM:<a@example.com>\r\nRCPT TO:<b@x.net>\r\nDATA\r\n{MSG}.\r\n");
    let (used, action) = s.feed(input.as_bytes());
    assert_eq!(used, input.len());
    assert!(matches!(action, Some(Action::Queue(_))));
    s.queued(Err("disk full".into()));
    let out = String::from_utf8(s.take_output()).unwrap();
    assert!(out.ends_with("451 4.3.0 Temporary failure storing the message (disk full); please try again later\r\n"), "{out}");
}

#[test]
fn smtputf8_addresses_need_the_parameter() {
    let mut s = session("10.0.0.1", false);
    let input = "EHLO c\r\nMAIL FROM:<a@example.com>\r\nRCPT TO:<jöran@x.net>\r\nRSET\r\nMAIL FROM:<a@example.com> SMTPUTF8\r\nRCPT TO:<jöran@x.net>\r\n";
    let (out, _) = run(&mut s, input.as_bytes(), true);
    assert_eq!(
        codes(&out),
        ["220", "250", "250", "553", "250", "250", "250"],
        "{out}"
    );
}

/// No byte of the output is a control character except the CRLF that ends
/// each reply line.
fn assert_clean(out: &[u8]) {
    for line in out.split_inclusive(|&b| b == b'\n') {
        let text = line.strip_suffix(b"\r\n").expect("CRLF-terminated");
        assert!(
            !text.iter().any(|&b| b < 0x20 || b == 0x7f),
            "raw control byte in {:?}",
            String::from_utf8_lossy(line)
        );
    }
}

#[test]
fn errors_never_echo_raw_control_bytes() {
    let mut s = session("10.0.0.1", false);
    let input =
        b"EHLO c\r\nMAIL FROM:<a@example.com> X\0Y=1\r\nMAIL FROM:<a@example.com> A\rB=\x1b[2J\r\n";
    let (out, _) = run(&mut s, input, true);
    assert_clean(out.as_bytes());
    assert!(
        out.contains("555 5.5.4 Unsupported parameter X\\0Y=1"),
        "{out}"
    );
}

#[test]
fn helo_with_control_characters_is_refused() {
    let mut s = session("10.0.0.1", false);
    let (out, _) = run(
        &mut s,
        b"HELO a\x01b\r\nEHLO x\x1b\r\nMAIL FROM:<a@example.com>\r\n",
        true,
    );
    assert_eq!(codes(&out), ["220", "501", "501", "503"], "{out}");
    assert_clean(out.as_bytes());
}

#[test]
fn data_after_bdat_is_out_of_sequence() {
    let mut s = session("10.0.0.1", false);
    let input = format!(
        "EHLO c\r\nMAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.net>\r\nBDAT 20\r\n{}DATA\r\n",
        &MSG[..20]
    );
    let (out, env) = run(&mut s, input.as_bytes(), true);
    assert_eq!(
        codes(&out),
        ["220", "250", "250", "250", "250", "503"],
        "{out}"
    );
    assert!(out.contains("503 5.5.1 DATA cannot follow BDAT"), "{out}");
    assert!(env.is_empty());
    // The transaction is intact: BDAT LAST still ends it.
    let rest = &MSG[20..];
    let (out, env) = run(
        &mut s,
        format!("BDAT {} LAST\r\n{rest}", rest.len()).as_bytes(),
        true,
    );
    assert_eq!(codes(&out), ["250"], "{out}");
    assert_eq!(env[0].data, MSG.as_bytes());
}

#[test]
fn max_errors_counts_errors_in_a_row() {
    let mut s = session("10.0.0.1", false);
    // Four errors, a good command, four errors, ...: never five in a row.
    let mut input = Vec::new();
    for _ in 0..4 {
        input.extend_from_slice(b"FROB\r\nFROB\r\nFROB\r\nFROB\r\nNOOP\r\n");
    }
    let (out, _) = run(&mut s, &input, true);
    assert!(!out.contains("421"), "{out}");
    assert_eq!(out.matches("500 5.5.1").count(), 16);
    assert!(!s.is_closing());
    // Five in a row still close the session.
    let (out, _) = run(
        &mut s,
        b"FROB\r\nFROB\r\nFROB\r\nFROB\r\nFROB\r\nNOOP\r\n",
        true,
    );
    assert!(
        out.ends_with("421 4.7.0 relay.test Too many errors, closing connection\r\n"),
        "{out}"
    );
}

#[test]
fn failed_auth_attempts_do_not_reset_the_error_count() {
    let mut s = session("192.0.2.1", true);
    let mut input = b"EHLO c\r\n".to_vec();
    for _ in 0..5 {
        input.extend_from_slice(b"AUTH PLAIN AGFwcAB3cm9uZw==\r\n");
    }
    let (out, _) = run(&mut s, &input, false);
    assert_eq!(out.matches("535 5.7.8").count(), 5, "{out}");
    assert!(out.contains("421 4.7.0"), "{out}");
}

fn message_of(len: usize) -> String {
    let mut m = MSG.to_string();
    m.push_str(&"x".repeat(len - MSG.len() - 2));
    m.push_str("\r\n");
    assert_eq!(m.len(), len);
    m
}

#[test]
fn the_in_flight_budget_is_shared_and_refusal_is_temporary() {
    let budget = DataBudget::new(1500);
    let cfg = cfg_with_budget(budget.clone());
    let mut a = session_with(cfg.clone(), "10.0.0.1", false);
    let mut b = session_with(cfg, "10.0.0.2", false);
    let start = "EHLO c\r\nMAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.net>\r\nDATA\r\n";
    let big = message_of(900);
    // A holds 900 bytes, its message not yet ended.
    run(&mut a, format!("{start}{big}").as_bytes(), true);
    assert!(budget.in_use() >= 900);
    let (out, env) = run(
        &mut b,
        format!("{start}{}.\r\nNOOP\r\n", message_of(800)).as_bytes(),
        true,
    );
    assert_eq!(
        codes(&out),
        ["220", "250", "250", "250", "354", "452", "250"],
        "{out}"
    );
    assert!(
        out.contains("452 4.3.1 Insufficient system storage"),
        "{out}"
    );
    assert!(env.is_empty());
    // BDAT finds no room either, and says so for the chunk.
    let (out, _) = run(
        &mut b,
        format!(
            "MAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.net>\r\nBDAT 800 LAST\r\n{}",
            message_of(800)
        )
        .as_bytes(),
        true,
    );
    assert_eq!(codes(&out), ["250", "250", "452"], "{out}");
    // A ends its message: the budget comes back once it is stored.
    let (used, action) = a.feed(b".\r\n");
    assert_eq!(used, 3);
    let Some(Action::Queue(env)) = action else {
        panic!("not queued")
    };
    assert_eq!(env.data, big.as_bytes());
    assert!(budget.in_use() >= 900, "held until stored");
    a.queued(Ok("ID".into()));
    assert_eq!(budget.in_use(), 0);
    let (out, env) = run(
        &mut b,
        format!(
            "MAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.net>\r\nDATA\r\n{}.\r\n",
            message_of(800)
        )
        .as_bytes(),
        true,
    );
    assert_eq!(codes(&out), ["250", "250", "354", "250"], "{out}");
    assert_eq!(env.len(), 1);
    assert_eq!(budget.in_use(), 0);
}

#[test]
fn a_dropped_or_reset_transaction_gives_its_budget_back() {
    let budget = DataBudget::new(1500);
    let cfg = cfg_with_budget(budget.clone());
    let mut a = session_with(cfg, "10.0.0.1", false);
    let input = format!(
        "EHLO c\r\nMAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.net>\r\nBDAT 900\r\n{}RSET\r\n",
        &message_of(900)
    );
    run(&mut a, &input.as_bytes()[..input.len() - 6], true);
    assert!(budget.in_use() >= 900);
    run(&mut a, b"RSET\r\n", true);
    assert_eq!(budget.in_use(), 0, "RSET");
    run(
        &mut a,
        format!(
            "MAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.net>\r\nDATA\r\n{}",
            message_of(900)
        )
        .as_bytes(),
        true,
    );
    assert!(budget.in_use() >= 900);
    drop(a);
    assert_eq!(budget.in_use(), 0, "session gone");
}

#[test]
fn header_checks_run_at_the_end_of_data() {
    let mut s = session("10.0.0.1", false);
    let msg = "From: ceo@evil.test <a@example.com>\r\nSubject: x\r\n\r\nbody\r\n";
    let input = format!(
        "EHLO c\r\nMAIL FROM:<a@example.com>\r\nRCPT TO:<b@x.net>\r\nDATA\r\n{msg}.\r\nNOOP\r\n"
    );
    let (out, env) = run(&mut s, input.as_bytes(), true);
    assert!(
        out.contains("550 5.6.0 Message refused: its From: header cannot be read"),
        "{out}"
    );
    assert!(env.is_empty());
    // 8-bit headers pass with SMTPUTF8 only.
    let msg = "From: J\u{f6}rg <a@example.com>\r\n\r\nbody\r\n";
    for (param, code) in [("", "550"), (" SMTPUTF8", "250")] {
        let input =
            format!("MAIL FROM:<a@example.com>{param}\r\nRCPT TO:<b@x.net>\r\nDATA\r\n{msg}.\r\n");
        let (out, _) = run(&mut s, input.as_bytes(), true);
        assert_eq!(codes(&out).last().map(String::as_str), Some(code), "{out}");
    }
}

#[test]
fn reject_suppressed_refuses_at_rcpt_and_keeps_the_others() {
    let input = b"EHLO c\r\nMAIL FROM:<a@example.com>\r\nRCPT TO:<suppressed@example.net>\r\n\
                  RCPT TO:<ok@example.net>\r\nDATA\r\nFrom: a@example.com\r\n\r\nhi\r\n.\r\n";
    let mut off = session("10.0.0.1", false);
    let (_, envs) = run(&mut off, input, false);
    assert_eq!(envs[0].recipients.len(), 2, "off by default");

    let mut s = session("10.0.0.1", false);
    s.set_reject_suppressed(true);
    let (out, envs) = run(&mut s, input, false);
    assert!(
        out.contains("550 5.1.1 <suppressed@example.net> is on the suppression list (manual)"),
        "{out}"
    );
    assert_eq!(envs.len(), 1, "{out}");
    assert_eq!(envs[0].recipients, vec!["ok@example.net".to_string()]);
}
