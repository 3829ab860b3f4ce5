//! dns-check against a real DNS server on loopback (tests/support/dns.rs):
//! each status, each record, and the stub itself.

mod support;

use std::net::Ipv4Addr;
use std::path::Path;

use support::dns::{DnsStub, Rcode};
use trackrelay::config::Config;
use trackrelay::dnscheck::{self, RecordCheck, RecordKind, Status};
use trackrelay::outbound::{generate_key, DkimAlgorithm, DkimKey};

const RELAY: &str = "relay.example.com";
const LOCAL: Ipv4Addr = Ipv4Addr::LOCALHOST;

/// A config in a tempdir, pointed at the stub, with one domain described by
/// `domain` (TOML lines inside `[[domains]]`; `{dir}` is the tempdir).
struct Setup {
    dir: tempfile::TempDir,
    dns: DnsStub,
    config: Config,
}

async fn setup(domain: &str) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let dns = DnsStub::start().await;
    let config = parse(dir.path(), &dns, domain);
    Setup { dir, dns, config }
}

fn parse(dir: &Path, dns: &DnsStub, domain: &str) -> Config {
    parse_with(dir, dns, domain, "[inbound]\nlisten = [\"127.0.0.1:0\"]\n")
}

fn parse_with(dir: &Path, dns: &DnsStub, domain: &str, extra: &str) -> Config {
    let text = format!(
        "[server]\nhostname = \"{RELAY}\"\ndata_dir = \"{dir}/data\"\n\
         [[domains]]\nname = \"example.com\"\n{domain}\n\
         [delivery]\nresolver = \"{resolver}\"\n{extra}",
        dir = dir.display(),
        domain = domain.replace("{dir}", &dir.display().to_string()),
        resolver = dns.resolver(),
    );
    let path = dir.join("config.toml");
    Config::parse(&text, &path).unwrap_or_else(|e| panic!("{e}\n{text}"))
}

fn new_key(dir: &Path, file: &str) -> DkimKey {
    generate_key("example.com", "s1", DkimAlgorithm::Ed25519, &dir.join(file)).unwrap()
}

/// The full set of records a fully configured example.com needs.
fn publish_all(dns: &DnsStub, key: &DkimKey) {
    let record = key.dns_record();
    // Two character-strings, as zone tools split long keys.
    let (a, b) = record.split_at(20);
    dns.a(RELAY, LOCAL)
        .txt_chunks(&key.dns_name(), &[a, b])
        .txt("example.com", "v=spf1 a:relay.example.com ~all")
        .txt("example.com", "google-site-verification=abc123")
        .mx("bounces.example.com", 10, RELAY)
        .txt("bounces.example.com", "v=spf1 ip4:127.0.0.0/8 -all")
        .txt("_dmarc.example.com", "v=DMARC1; p=quarantine")
        .cname("links.example.com", RELAY);
}

const FULL: &str = "tracking_subdomain = \"links\"\nopen_tracking = true\n\
                    return_path = \"bounces\"\n\
                    dkim = [{ selector = \"s1\", private_key = \"{dir}/s1.pem\" }]";

async fn full_setup() -> (Setup, DkimKey) {
    let dir = tempfile::tempdir().unwrap();
    let key = new_key(dir.path(), "s1.pem");
    let dns = DnsStub::start().await;
    let config = parse(dir.path(), &dns, FULL);
    (Setup { dir, dns, config }, key)
}

async fn run_check(s: &Setup) -> Vec<RecordCheck> {
    let resolver = dnscheck::resolver(&s.config).unwrap();
    dnscheck::check(&s.config, &resolver, &s.config.domains[0]).await
}

fn get(checks: &[RecordCheck], kind: RecordKind) -> &RecordCheck {
    checks
        .iter()
        .find(|c| c.record == kind)
        .unwrap_or_else(|| panic!("no {kind:?} in {checks:#?}"))
}

fn note(c: &RecordCheck) -> &str {
    c.note.as_deref().unwrap_or("")
}

#[tokio::test]
async fn everything_published_is_verified() {
    let (s, key) = full_setup().await;
    publish_all(&s.dns, &key);
    let checks = run_check(&s).await;
    let kinds: Vec<RecordKind> = checks.iter().map(|c| c.record).collect();
    assert_eq!(
        kinds,
        [
            RecordKind::Dkim,
            RecordKind::Spf,
            RecordKind::ReturnPathMx,
            RecordKind::ReturnPathSpf,
            RecordKind::Dmarc,
            RecordKind::Tracking
        ]
    );
    for c in &checks {
        assert_eq!(c.status, Status::Verified, "{c:#?}");
    }
    let dkim = get(&checks, RecordKind::Dkim);
    assert_eq!(dkim.name, "s1._domainkey.example.com");
    assert_eq!(dkim.expected, key.dns_record());
    assert_eq!(dkim.found, vec![key.dns_record()], "chunks are joined");
    // The unrelated TXT at the apex is not shown as an SPF record.
    assert_eq!(
        get(&checks, RecordKind::Spf).found,
        vec!["v=spf1 a:relay.example.com ~all"]
    );
    assert!(
        !get(&checks, RecordKind::Spf).required,
        "return_path is set"
    );
    assert!(!get(&checks, RecordKind::Dmarc).required);
    assert!(dnscheck::all_required_verified(&checks));

    let mut out = Vec::new();
    let ok = dnscheck::run_to(&s.config, None, false, &mut out).await;
    let table = String::from_utf8(out).unwrap();
    assert_eq!(ok, Ok(true), "{table}");
    assert!(table.starts_with("example.com\n"), "{table}");
    assert!(
        table.contains("4 of 4 required records verified"),
        "{table}"
    );
    assert!(
        table.contains(&format!("expected  {}", key.dns_record())),
        "the full record, ready to copy: {table}"
    );
    let mut out = Vec::new();
    let ok = dnscheck::run_to(&s.config, Some("EXAMPLE.com"), true, &mut out).await;
    assert_eq!(ok, Ok(true));
    assert_eq!(String::from_utf8(out).unwrap().lines().count(), 6);
    assert!(dnscheck::run(&s.config, Some("example.org"), false)
        .await
        .unwrap_err()
        .contains("not a configured"));
}

#[tokio::test]
async fn json_lines_carry_the_contract_fields() {
    let (s, key) = full_setup().await;
    publish_all(&s.dns, &key);
    s.dns.remove("_dmarc.example.com");
    let checks = run_check(&s).await;
    let text = dnscheck::render_json(&checks);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), checks.len());
    let fields = [
        "domain", "record", "name", "type", "expected", "found", "status", "required", "note",
    ];
    for line in &lines {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        let keys: Vec<&str> = v.as_object().unwrap().keys().map(|k| k.as_str()).collect();
        assert_eq!(keys, fields, "{line}");
    }
    let dmarc: serde_json::Value = serde_json::from_str(lines[4]).unwrap();
    assert_eq!(dmarc["domain"], "example.com");
    assert_eq!(dmarc["record"], "dmarc");
    assert_eq!(dmarc["name"], "_dmarc.example.com");
    assert_eq!(dmarc["type"], "TXT");
    assert_eq!(dmarc["expected"], "v=DMARC1; p=none");
    assert_eq!(dmarc["found"], serde_json::json!([]));
    assert_eq!(dmarc["status"], "pending");
    assert_eq!(dmarc["required"], false);
    let mx: serde_json::Value = serde_json::from_str(lines[2]).unwrap();
    assert_eq!(mx["type"], "MX");
    assert_eq!(mx["found"], serde_json::json!(["10 relay.example.com"]));
    assert_eq!(mx["note"], serde_json::Value::Null);
    // DMARC is only recommended: still all required records verified.
    assert!(dnscheck::all_required_verified(&checks));
    let table = dnscheck::render_table(&checks);
    assert!(table.contains("DMARC (recommended)"), "{table}");
    assert!(
        table.contains("4 of 4 required records verified"),
        "{table}"
    );
}

#[tokio::test]
async fn a_right_return_path_mx_with_no_inbound_listener_says_so() {
    let (s, key) = full_setup().await;
    publish_all(&s.dns, &key);
    let config = parse_with(s.dir.path(), &s.dns, FULL, "");
    let resolver = dnscheck::resolver(&config).unwrap();
    let checks = dnscheck::check(&config, &resolver, &config.domains[0]).await;
    let mx = get(&checks, RecordKind::ReturnPathMx);
    // The record itself is right; the note says nothing takes the reports.
    assert_eq!(mx.status, Status::Verified, "{mx:#?}");
    assert!(note(mx).contains("[inbound] listen is not set"), "{mx:#?}");
    // With the listener configured, the same record has no note.
    let with = run_check(&s).await;
    assert_eq!(get(&with, RecordKind::ReturnPathMx).note, None);
}

#[tokio::test]
async fn nothing_published_is_pending() {
    let (s, _key) = full_setup().await;
    s.dns.a(RELAY, LOCAL);
    let checks = run_check(&s).await;
    for c in &checks {
        assert_eq!(c.status, Status::Pending, "{c:#?}");
        assert!(c.found.is_empty(), "{c:#?}");
    }
    assert_eq!(
        get(&checks, RecordKind::Spf).expected,
        "v=spf1 a:relay.example.com ~all"
    );
    assert_eq!(
        get(&checks, RecordKind::ReturnPathMx).expected,
        "10 relay.example.com"
    );
    assert_eq!(
        get(&checks, RecordKind::Tracking).expected,
        "CNAME relay.example.com"
    );
    assert!(!dnscheck::all_required_verified(&checks));
    let mut out = Vec::new();
    let ok = dnscheck::run_to(&s.config, None, true, &mut out).await;
    assert_eq!(ok, Ok(false), "non-zero exit");
    let out = String::from_utf8(out).unwrap();
    assert_eq!(out.matches("\"status\":\"pending\"").count(), 6, "{out}");
}

#[tokio::test]
async fn dkim_with_another_key_fails() {
    let (s, key) = full_setup().await;
    publish_all(&s.dns, &key);
    let other = new_key(s.dir.path(), "other.pem");
    s.dns
        .remove(&key.dns_name())
        .txt(&key.dns_name(), &other.dns_record());
    let checks = run_check(&s).await;
    let dkim = get(&checks, RecordKind::Dkim);
    assert_eq!(dkim.status, Status::Failed, "{dkim:#?}");
    assert!(note(dkim).contains("not the public part"), "{dkim:#?}");
    assert_eq!(dkim.expected, key.dns_record());
    assert_eq!(dkim.found, vec![other.dns_record()]);
    assert!(!dnscheck::all_required_verified(&checks));

    // Same key, wrong algorithm tag; then a revoked key.
    let p = key.dns_record();
    let p = p.rsplit_once("p=").unwrap().1;
    s.dns
        .remove(&key.dns_name())
        .txt(&key.dns_name(), &format!("v=DKIM1; k=rsa; p={p}"));
    let dkim = run_check(&s).await.remove(0);
    assert_eq!(dkim.status, Status::Failed);
    assert!(note(&dkim).contains("k=rsa"), "{dkim:#?}");
    s.dns
        .remove(&key.dns_name())
        .txt(&key.dns_name(), "v=DKIM1; k=ed25519; p=");
    let dkim = run_check(&s).await.remove(0);
    assert!(note(&dkim).contains("revoked"), "{dkim:#?}");
}

#[tokio::test]
async fn dkim_key_with_folded_whitespace_verifies() {
    let (s, key) = full_setup().await;
    publish_all(&s.dns, &key);
    let record = key.dns_record();
    let (head, p) = record.split_at(record.len() - 10);
    s.dns
        .remove(&key.dns_name())
        .txt(&key.dns_name(), &format!("{head} {p}"));
    let dkim = run_check(&s).await.remove(0);
    assert_eq!(dkim.status, Status::Verified, "{dkim:#?}");
}

#[tokio::test]
async fn managed_key_not_generated_is_not_started() {
    let s = setup("dkim = [{ selector = \"s1\" }]").await;
    s.dns.a(RELAY, LOCAL);
    let checks = run_check(&s).await;
    let dkim = get(&checks, RecordKind::Dkim);
    assert_eq!(dkim.status, Status::NotStarted, "{dkim:#?}");
    assert!(dkim.required);
    assert!(note(dkim).contains("not generated yet"), "{dkim:#?}");
    assert!(
        note(dkim).contains("data/dkim/example.com.s1.pem"),
        "{dkim:#?}"
    );
    assert!(!dnscheck::all_required_verified(&checks));
}

#[tokio::test]
async fn no_dkim_entry_is_not_started() {
    let s = setup("").await;
    s.dns
        .a(RELAY, LOCAL)
        .txt("example.com", "v=spf1 a:relay.example.com -all");
    let checks = run_check(&s).await;
    let dkim = get(&checks, RecordKind::Dkim);
    assert_eq!(dkim.status, Status::NotStarted);
    assert!(note(dkim).contains("unsigned"), "{dkim:#?}");
    let spf = get(&checks, RecordKind::Spf);
    assert_eq!(spf.status, Status::Verified, "{spf:#?}");
    assert!(
        spf.required,
        "no return_path: SPF at the domain is required"
    );
    assert_eq!(checks.len(), 3, "no return path, no tracking: {checks:#?}");
}

#[tokio::test]
async fn two_spf_records_fail() {
    let (s, key) = full_setup().await;
    publish_all(&s.dns, &key);
    s.dns.txt(
        "bounces.example.com",
        "v=spf1 include:_spf.mail.example.net ~all",
    );
    let checks = run_check(&s).await;
    let spf = get(&checks, RecordKind::ReturnPathSpf);
    assert_eq!(spf.status, Status::Failed, "{spf:#?}");
    assert!(note(spf).contains("2 SPF records"), "{spf:#?}");
    assert_eq!(spf.found.len(), 2);
    assert!(!dnscheck::all_required_verified(&checks));
}

/// SPF evaluated as a receiver would (mail-auth's check_host), for the
/// relay's address.
#[tokio::test]
async fn spf_mechanisms() {
    let (s, key) = full_setup().await;
    publish_all(&s.dns, &key);
    s.dns.a("mail.example.com", LOCAL).txt(
        "_spf.example.net",
        "v=spf1 ip4:192.0.2.0/24 include:_inner.example.net -all",
    );
    s.dns.txt("_inner.example.net", "v=spf1 ip4:127.0.0.1 -all");
    let spf_for = |record: &'static str| spf_at_return_path(&s, record);
    for ok in [
        "v=spf1 include:_spf.example.net -all",
        "v=spf1 a:mail.example.com -all",
        "v=spf1 a:mail.example.com/8 -all",
        "v=spf1 mx -all",
        "v=spf1 redirect=_spf.example.net",
        "v=spf1 ip6:::1 ip4:127.0.0.1 ~all",
    ] {
        let c = spf_for(ok).await;
        assert_eq!(c.status, Status::Verified, "{ok}: {c:#?}");
    }
    let c = spf_for("v=spf1 ip4:192.0.2.1 -all").await;
    assert_eq!(c.status, Status::Failed);
    assert!(
        note(&c).contains("does not authorise relay.example.com (127.0.0.1)")
            && note(&c).contains("\"fail\""),
        "{c:#?}"
    );
    assert_eq!(
        c.expected, "v=spf1 ip4:192.0.2.1 a:relay.example.com -all",
        "the suggestion keeps what is there"
    );
    let c = spf_for("v=spf1 ip4:192.0.2.1 ~all").await;
    assert!(note(&c).contains("\"softfail\""), "{c:#?}");
    let c = spf_for("v=spf1 ip4:192.0.2.1").await;
    assert!(note(&c).contains("\"neutral\""), "{c:#?}");
    let c = spf_for("v=spf1 -ip4:127.0.0.1 a:relay.example.com -all").await;
    assert_eq!(c.status, Status::Failed, "order matters: {c:#?}");
    let c = spf_for("v=spf1 +all").await;
    assert_eq!(c.status, Status::Failed);
    assert!(note(&c).contains("every server"), "{c:#?}");
    let c = spf_for("v=spf1 include:nowhere.example.net -all").await;
    assert_eq!(c.status, Status::Failed);
    assert!(note(&c).contains("permerror"), "{c:#?}");
    let c = spf_for("v=spf1 ip4:banana -all").await;
    assert_eq!(c.status, Status::Failed);
    assert!(note(&c).contains("permerror"), "{c:#?}");
    // A loop of includes ends at the 10-lookup limit, not in a hang.
    s.dns
        .txt("loop.example.net", "v=spf1 include:loop.example.net -all");
    let c = spf_for("v=spf1 include:loop.example.net -all").await;
    assert_eq!(c.status, Status::Failed);
    assert!(note(&c).contains("permerror"), "{c:#?}");
    assert!(note(&c).contains("10 DNS lookups"), "{c:#?}");
    // ptr is evaluated rather than skipped: the loopback address's name is
    // not under relay.example.com, so it does not match, and the mechanisms
    // after it still decide.
    let c = spf_for("v=spf1 ptr ip4:127.0.0.1 -all").await;
    assert_eq!(c.status, Status::Verified, "{c:#?}");
    let c = spf_for("v=spf1 ptr:relay.example.com -all").await;
    assert_eq!(c.status, Status::Failed, "{c:#?}");
    assert!(note(&c).contains("\"fail\""), "{c:#?}");
    // An include whose domain cannot be looked up is a temperror.
    s.dns.fail("broken.example.net", Rcode::ServFail);
    let c = spf_for("v=spf1 include:broken.example.net -all").await;
    assert_eq!(c.status, Status::Failed);
    assert!(note(&c).contains("temperror"), "{c:#?}");
}

/// Publishes `record` as the return path's SPF and checks it.
async fn spf_at_return_path(s: &Setup, record: &str) -> RecordCheck {
    s.dns
        .remove("bounces.example.com")
        .mx("bounces.example.com", 10, RELAY)
        .txt("bounces.example.com", record);
    get(&run_check(s).await, RecordKind::ReturnPathSpf).clone()
}

/// `exists:` and macros are evaluated, not skipped: they pass when the name
/// they expand to for the relay's address exists, and fail otherwise.
#[tokio::test]
async fn spf_exists_and_macros_are_evaluated() {
    let (s, key) = full_setup().await;
    publish_all(&s.dns, &key);
    let exists = "v=spf1 exists:%{i}._spf.example.net -all";
    let c = spf_at_return_path(&s, exists).await;
    assert_eq!(c.status, Status::Failed, "nothing at the name yet: {c:#?}");
    assert!(note(&c).contains("\"fail\""), "{c:#?}");
    s.dns.a("127.0.0.1._spf.example.net", LOCAL);
    let c = spf_at_return_path(&s, exists).await;
    assert_eq!(c.status, Status::Verified, "{c:#?}");
    assert_eq!(c.expected, exists, "a covering record is what to keep");
    assert_eq!(c.note, None);

    // %{ir} reversed address, %{v} "in-addr", %{d} the domain being checked.
    s.dns.a(
        "1.0.0.127.in-addr.bounces.example.com._a.example.net",
        LOCAL,
    );
    let c = spf_at_return_path(&s, "v=spf1 a:%{ir}.%{v}.%{d}._a.example.net -all").await;
    assert_eq!(c.status, Status::Verified, "{c:#?}");
    // The macro expands to another name for another domain: no match.
    let c = spf_at_return_path(&s, "v=spf1 a:%{ir}.%{v}.%{d2}._a.example.net -all").await;
    assert_eq!(c.status, Status::Failed, "{c:#?}");
    // The sender: postmaster at the domain being checked.
    s.dns
        .txt("postmaster.spf.example.net", "v=spf1 ip4:127.0.0.0/8 -all");
    let c = spf_at_return_path(&s, "v=spf1 include:%{l}.spf.example.net -all").await;
    assert_eq!(c.status, Status::Verified, "{c:#?}");
}

/// Chains of includes and redirects, without `ptr`: an include that does not
/// match hands back to the record that included it; the first match decides.
#[tokio::test]
async fn spf_include_chains() {
    let (s, key) = full_setup().await;
    publish_all(&s.dns, &key);
    s.dns
        .txt("_other.example.net", "v=spf1 ip4:192.0.2.9 -all")
        .txt(
            "_l1.example.net",
            "v=spf1 include:_other.example.net include:_l2.example.net -all",
        )
        .txt("_l2.example.net", "v=spf1 redirect=_l3.example.net")
        .txt("_l3.example.net", "v=spf1 exists:%{i}.ok.example.net ~all")
        .a("127.0.0.1.ok.example.net", LOCAL)
        .txt("_deny.example.net", "v=spf1 -ip4:127.0.0.1 +all");
    let c = spf_at_return_path(&s, "v=spf1 include:_l1.example.net -all").await;
    assert_eq!(c.status, Status::Verified, "four levels deep: {c:#?}");
    // An include's -all is "no match" for the includer, not a fail.
    let c = spf_at_return_path(
        &s,
        "v=spf1 include:_other.example.net a:relay.example.com -all",
    )
    .await;
    assert_eq!(c.status, Status::Verified, "{c:#?}");
    // An include's own fail for this address does not pass it either.
    let c = spf_at_return_path(&s, "v=spf1 include:_deny.example.net -all").await;
    assert_eq!(c.status, Status::Failed, "{c:#?}");
    s.dns.remove("127.0.0.1.ok.example.net");
    let c = spf_at_return_path(&s, "v=spf1 include:_l1.example.net -all").await;
    assert_eq!(c.status, Status::Failed, "the chain's end decides: {c:#?}");
    assert!(note(&c).contains("\"fail\""), "{c:#?}");
}

#[tokio::test]
async fn relay_without_address_matches_by_name_only() {
    let s = setup("").await;
    s.dns.txt("example.com", "v=spf1 a:relay.example.com ~all");
    let spf = get(&run_check(&s).await, RecordKind::Spf).clone();
    assert_eq!(spf.status, Status::Verified, "{spf:#?}");
    assert!(note(&spf).contains("has no A/AAAA record"), "{spf:#?}");
    s.dns
        .remove("example.com")
        .txt("example.com", "v=spf1 ip4:127.0.0.1 ~all");
    let spf = get(&run_check(&s).await, RecordKind::Spf).clone();
    assert_eq!(spf.status, Status::Failed, "{spf:#?}");
}

/// Text from DNS cannot drive the operator's terminal: control characters
/// in a found record are shown escaped in the table (JSON escapes them too).
#[tokio::test]
async fn control_characters_from_dns_are_escaped_in_the_table() {
    let (s, key) = full_setup().await;
    publish_all(&s.dns, &key);
    let hostile = "v=spf1 a:relay.example.com ~all \x1b[2K\r  verified  SPF fake\n";
    s.dns.remove("example.com").txt("example.com", hostile);
    // A DKIM record whose p= does not decode says why.
    s.dns
        .remove(&key.dns_name())
        .txt(&key.dns_name(), "v=DKIM1; k=ed25519; p=*notbase64*");
    let checks = run_check(&s).await;
    assert_eq!(get(&checks, RecordKind::Spf).found, vec![hostile]);
    let dkim = get(&checks, RecordKind::Dkim);
    assert!(
        note(dkim).starts_with("p= is not valid base64 (") && note(dkim).len() > 30,
        "{dkim:#?}"
    );
    let table = dnscheck::render_table(&checks);
    assert!(
        !table.contains('\x1b') && !table.contains('\r'),
        "{table:?}"
    );
    assert!(
        table.contains("~all \\u{1b}[2K\\r  verified  SPF fake\\n\n"),
        "{table}"
    );
    let json = dnscheck::render_json(&checks);
    assert!(!json.contains('\x1b') && !json.contains('\r'), "{json:?}");
}

#[tokio::test]
async fn tracking_host_pointing_elsewhere_fails() {
    let (s, key) = full_setup().await;
    publish_all(&s.dns, &key);
    s.dns
        .remove("links.example.com")
        .a("links.example.com", Ipv4Addr::new(127, 0, 0, 2));
    let t = get(&run_check(&s).await, RecordKind::Tracking).clone();
    assert_eq!(t.status, Status::Failed, "{t:#?}");
    assert_eq!(t.found, vec!["A 127.0.0.2"]);
    assert!(note(&t).contains("resolves to 127.0.0.2"), "{t:#?}");

    s.dns
        .remove("links.example.com")
        .cname("links.example.com", "cdn.example.net")
        .a("cdn.example.net", Ipv4Addr::new(127, 0, 0, 3));
    let t = get(&run_check(&s).await, RecordKind::Tracking).clone();
    assert_eq!(t.status, Status::Failed, "{t:#?}");
    assert!(note(&t).contains("alias of cdn.example.net"), "{t:#?}");

    // The same addresses as the relay, without a CNAME, is fine.
    s.dns
        .remove("links.example.com")
        .a("links.example.com", LOCAL);
    let t = get(&run_check(&s).await, RecordKind::Tracking).clone();
    assert_eq!(t.status, Status::Verified, "{t:#?}");
}

#[tokio::test]
async fn tracking_on_without_subdomain_is_not_started() {
    let s = setup("click_tracking = true").await;
    s.dns
        .a(RELAY, LOCAL)
        .txt("example.com", "v=spf1 a:relay.example.com ~all");
    let checks = run_check(&s).await;
    let t = get(&checks, RecordKind::Tracking);
    assert_eq!(t.status, Status::NotStarted, "{t:#?}");
    assert!(!t.required);
    assert!(note(t).contains("tracking_subdomain is not set"), "{t:#?}");
    // Tracking off and no subdomain: no tracking row at all.
    let s2 = setup("").await;
    assert!(run_check(&s2)
        .await
        .iter()
        .all(|c| c.record != RecordKind::Tracking));
}

#[tokio::test]
async fn return_path_mx_elsewhere_fails() {
    let (s, key) = full_setup().await;
    publish_all(&s.dns, &key);
    s.dns
        .remove_type(
            "bounces.example.com",
            mail_auth::hickory_resolver::proto::rr::RecordType::MX,
        )
        .mx("bounces.example.com", 10, "feedback.example.net");
    let mx = get(&run_check(&s).await, RecordKind::ReturnPathMx).clone();
    assert_eq!(mx.status, Status::Failed, "{mx:#?}");
    assert!(
        note(&mx).contains("points to feedback.example.net"),
        "{mx:#?}"
    );
}

#[tokio::test]
async fn dmarc_statuses() {
    let (s, key) = full_setup().await;
    publish_all(&s.dns, &key);
    let dmarc = |record: &'static str| {
        let s = &s;
        async move {
            s.dns
                .remove("_dmarc.example.com")
                .txt("_dmarc.example.com", record);
            get(&run_check(s).await, RecordKind::Dmarc).clone()
        }
    };
    let c = dmarc("v=DMARC1; p=none; rua=mailto:dmarc@example.com").await;
    assert_eq!(c.status, Status::Verified);
    assert!(note(&c).contains("p=none"));
    let c = dmarc("v=DMARC1 p=reject").await;
    assert_eq!(c.status, Status::Failed, "{c:#?}");
    assert!(note(&c).contains("malformed"));
    let c = dmarc("v=DMARC1; p=sometimes").await;
    assert_eq!(c.status, Status::Failed, "{c:#?}");
}

#[tokio::test]
async fn unanswered_lookup_is_failed_not_pending() {
    let (s, key) = full_setup().await;
    publish_all(&s.dns, &key);
    s.dns.fail("_dmarc.example.com", Rcode::ServFail);
    let c = get(&run_check(&s).await, RecordKind::Dmarc).clone();
    assert_eq!(c.status, Status::Failed, "{c:#?}");
    assert!(note(&c).contains("DNS lookup failed"), "{c:#?}");
    assert!(
        note(&c).contains("TXT _dmarc.example.com"),
        "which question: {c:#?}"
    );
    // A check that asks two questions says which one went unanswered.
    s.dns
        .remove("links.example.com")
        .fail("links.example.com", Rcode::ServFail);
    let t = get(&run_check(&s).await, RecordKind::Tracking).clone();
    assert_eq!(t.status, Status::Failed, "{t:#?}");
    assert!(note(&t).contains("CNAME links.example.com"), "{t:#?}");
}

// The stub itself, as other tests (MX routing) will use it.

#[tokio::test]
async fn stub_answers_mx_a_cname_and_nxdomain() {
    let dir = tempfile::tempdir().unwrap();
    let dns = DnsStub::start().await;
    dns.mx("example.net", 20, "mx2.example.net")
        .mx("example.net", 10, "mx1.example.net")
        .a("mx1.example.net", LOCAL)
        .a("mx2.example.net", LOCAL)
        .cname("alias.example.net", "mx1.example.net");
    let config = parse(dir.path(), &dns, "");
    let r = dnscheck::resolver(&config).unwrap();
    let none =
        None::<&mail_auth::common::cache::NoCache<Box<str>, mail_auth::RecordSet<mail_auth::MX>>>;
    let mx = r.mx_lookup("example.net", none).await.unwrap();
    let hosts: Vec<(u16, String)> = mx
        .rrset
        .iter()
        .flat_map(|m| m.exchanges.iter().map(|e| (m.preference, e.to_string())))
        .collect();
    assert_eq!(
        hosts,
        [
            (10, "mx1.example.net.".to_string()),
            (20, "mx2.example.net.".to_string())
        ]
    );
    let a = r.resolver().lookup_ip("alias.example.net.").await.unwrap();
    assert_eq!(
        a.iter().collect::<Vec<_>>(),
        [std::net::IpAddr::from(LOCAL)]
    );
    let err = r.mx_lookup("nowhere.example.net", none).await.unwrap_err();
    assert!(
        matches!(
            err,
            mail_auth::Error::Dns(mail_auth::DnsError::RecordNotFound(_))
        ),
        "{err:?}"
    );
    assert!(dns.queries().contains(&"MX example.net".to_string()));
}

#[tokio::test]
async fn stub_sends_big_answers_over_tcp() {
    let dir = tempfile::tempdir().unwrap();
    let dns = DnsStub::start().await;
    let big = "x".repeat(3000);
    dns.txt("big.example.net", &big);
    let config = parse(dir.path(), &dns, "");
    let r = dnscheck::resolver(&config).unwrap();
    let txt = r.txt_raw_lookup("big.example.net").await.unwrap();
    assert_eq!(txt, big.as_bytes());
    assert_eq!(dns.tcp_queries(), 1, "truncated over UDP, retried over TCP");
}

/// The queue runner keeps one resolver for its lifetime: with TTL 0
/// answers it must still see each change.
#[tokio::test]
async fn one_resolver_sees_changes() {
    let dir = tempfile::tempdir().unwrap();
    let dns = DnsStub::start().await;
    dns.a("host.example.net", LOCAL);
    let config = parse(dir.path(), &dns, "");
    let r = dnscheck::resolver(&config).unwrap();
    let ips = |r: &mail_auth::MessageAuthenticator| {
        let r = r.resolver().clone();
        async move {
            match r.lookup_ip("host.example.net.").await {
                Ok(l) => l.iter().map(|ip| ip.to_string()).collect::<Vec<_>>(),
                Err(e) if e.is_no_records_found() => vec![],
                Err(e) => panic!("{e}"),
            }
        }
    };
    assert_eq!(ips(&r).await, ["127.0.0.1"]);
    dns.remove("host.example.net")
        .a("host.example.net", Ipv4Addr::new(127, 0, 0, 2));
    assert_eq!(ips(&r).await, ["127.0.0.2"]);
    dns.remove("host.example.net");
    assert!(ips(&r).await.is_empty());
    dns.a("host.example.net", LOCAL);
    assert_eq!(
        ips(&r).await,
        ["127.0.0.1"],
        "NXDOMAIN was not cached either"
    );
}

#[tokio::test]
async fn stub_survives_malformed_packets() {
    let dir = tempfile::tempdir().unwrap();
    let dns = DnsStub::start().await;
    dns.a("ok.example.net", LOCAL);
    let sock = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let header = [0xab, 0xcd, 0x01, 0x00, 0x00, 0x05, 0, 0, 0, 0, 0, 0];
    for junk in [
        &b""[..],
        &b"\x00"[..],
        &b"\xff\xff\xff"[..],
        &header[..],
        &[0xffu8; 600][..],
    ] {
        sock.send_to(junk, dns.addr()).await.unwrap();
    }
    // Too short to answer: dropped. A header announcing 5 questions and
    // carrying none, and 600 bytes of junk: FORMERR with their ids.
    let mut ids = Vec::new();
    for _ in 0..2 {
        let mut buf = [0u8; 512];
        let (n, _) =
            tokio::time::timeout(std::time::Duration::from_secs(5), sock.recv_from(&mut buf))
                .await
                .expect("an answer")
                .unwrap();
        assert!(n >= 12);
        assert_eq!(buf[3] & 0x0f, 1, "FORMERR");
        ids.push(u16::from_be_bytes([buf[0], buf[1]]));
    }
    ids.sort();
    assert_eq!(ids, [0xabcd, 0xffff]);
    // TCP garbage, including a length prefix promising more than is sent.
    let mut tcp = tokio::net::TcpStream::connect(dns.addr()).await.unwrap();
    use tokio::io::AsyncWriteExt;
    tcp.write_all(b"\x00\x10garbage").await.unwrap();
    drop(tcp);

    let config = parse(dir.path(), &dns, "");
    let r = dnscheck::resolver(&config).unwrap();
    let ips = r.resolver().lookup_ip("ok.example.net.").await.unwrap();
    assert_eq!(ips.iter().count(), 1);
}

/// The command as an operator runs it: exit 0 when everything required is
/// verified, 1 otherwise, one JSON object per record with --json.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_command_exits_by_what_is_verified() {
    let (s, key) = full_setup().await;
    let config = s.dir.path().join("config.toml");
    std::fs::write(
        &config,
        format!(
            "[server]\nhostname = \"{RELAY}\"\ndata_dir = \"{dir}/data\"\n[[domains]]\nname = \"example.com\"\n{domain}\n\
             [delivery]\nresolver = \"{resolver}\"\n",
            dir = s.dir.path().display(),
            domain = FULL.replace("{dir}", &s.dir.path().display().to_string()),
            resolver = s.dns.resolver(),
        ),
    )
    .unwrap();
    // The stub answers on this runtime, so the command runs off it.
    let run = |json: bool| {
        let config = config.clone();
        tokio::task::spawn_blocking(move || {
            let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_trackrelay"));
            cmd.args(["dns-check", "--config"]).arg(&config);
            if json {
                cmd.arg("--json");
            }
            cmd.output().unwrap()
        })
    };
    let out = run(false).await.unwrap();
    assert_eq!(out.status.code(), Some(1), "nothing published yet");
    assert!(String::from_utf8_lossy(&out.stdout).contains("pending"));
    publish_all(&s.dns, &key);
    let out = run(true).await.unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let lines: Vec<serde_json::Value> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(lines.iter().all(|l| l["status"] == "verified"), "{lines:?}");
    assert!(lines
        .iter()
        .any(|l| l["record"] == "dkim" && l["name"] == "s1._domainkey.example.com"));
}
