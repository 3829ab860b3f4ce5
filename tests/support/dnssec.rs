//! DNSSEC-signed test zones: signed at test time with Debian's ldnsutils
//! (`ldns-keygen`, `ldns-signzone`), served by an authoritative stub on
//! 127.0.0.1 (UDP and TCP on one random port) that answers from the signed
//! zone files: the RRset with its RRSIGs when the query sets DO; for a name
//! without the asked type (NODATA) or no name at all (NXDOMAIN), the SOA
//! and the zone's NSEC records with their RRSIGs. Several zones can be
//! served, e.g. a signed parent and an unsigned child delegated from it
//! (the parent's NSEC then proves the delegation insecure). A DS query for
//! a zone's apex is answered from its parent, as real servers do.
//!
//! The signing key's DNSKEY record ([`SignedZone::anchor`]) is the
//! validating resolver's trust anchor: the test zone is a trust-anchor
//! island, no root involved.
//!
//! Zone files are parsed with hickory-proto's zone parser; ldns writes one
//! record per line with explicit TTLs, which it reads as is.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use mail_auth::hickory_resolver::proto::op::{Edns, Message, MessageType, OpCode, ResponseCode};
use mail_auth::hickory_resolver::proto::rr::{LowerName, Name, Record, RecordType};
use mail_auth::hickory_resolver::proto::serialize::txt::Parser;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::task::JoinHandle;

const EDNS_PAYLOAD: u16 = 1232;

/// Whether ldnsutils is installed. CI installs it (.ci/run); elsewhere a
/// test that needs it says loudly that it skipped, and CI refuses to skip.
pub fn available(test: &str) -> bool {
    let ok = ["ldns-keygen", "ldns-signzone"].iter().all(|tool| {
        Command::new(tool)
            .arg("-v")
            .output()
            .map(|_| true)
            .unwrap_or(false)
    });
    if !ok {
        assert!(
            std::env::var_os("CI").is_none(),
            "{test}: ldnsutils is required in CI (apt-get install ldnsutils)"
        );
        eprintln!("SKIPPED {test}: needs ldnsutils (apt-get install ldnsutils)");
    }
    ok
}

/// A zone signed with a fresh Ed25519 key (algorithm 15, which hickory's
/// aws-lc-rs backend validates).
pub struct SignedZone {
    /// The signed zone file's text.
    pub signed: String,
    /// The DNSKEY record, zone-file form: the trust anchor.
    pub anchor: String,
}

impl SignedZone {
    /// Signs `zone_text` (origin `origin`, e.g. "dane.test") in `dir`.
    /// `extra` goes to ldns-signzone, e.g. `["-e", "20200101000000"]`.
    pub fn sign(dir: &Path, origin: &str, zone_text: &str, extra: &[&str]) -> SignedZone {
        let zone_file = dir.join(format!("{origin}.zone"));
        std::fs::write(&zone_file, zone_text).unwrap();
        let out = Command::new("ldns-keygen")
            .current_dir(dir)
            .args(["-a", "ED25519", "-k", origin])
            .output()
            .expect("ldns-keygen");
        assert!(out.status.success(), "ldns-keygen: {out:?}");
        let base = String::from_utf8(out.stdout).unwrap().trim().to_string();
        let out = Command::new("ldns-signzone")
            .current_dir(dir)
            .args(extra)
            .arg(&zone_file)
            .arg(&base)
            .output()
            .expect("ldns-signzone");
        assert!(out.status.success(), "ldns-signzone: {out:?}");
        let signed = std::fs::read_to_string(dir.join(format!("{origin}.zone.signed"))).unwrap();
        let anchor = std::fs::read_to_string(dir.join(format!("{base}.key"))).unwrap();
        SignedZone { signed, anchor }
    }
}

struct Zones {
    zones: Vec<Zone>,
    servfail: Vec<LowerName>,
}

struct Zone {
    origin: LowerName,
    records: Vec<Record>,
}

impl Zone {
    /// hickory's zone parser refuses DNSSEC records (it expects to sign
    /// zones itself), so those lines (one record each, as ldns writes
    /// them) are read here and the rest by it.
    fn parse(text: &str) -> Zone {
        let (dnssec, rest): (Vec<&str>, Vec<&str>) = text.lines().partition(|l| {
            matches!(
                l.split_whitespace().nth(3),
                Some("RRSIG" | "NSEC" | "DNSKEY")
            )
        });
        let rest = rest.join("\n");
        // ldns writes absolute names and no $ORIGIN; the SOA owner is it.
        let origin = text
            .lines()
            .find_map(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                match f.as_slice() {
                    ["$ORIGIN", o, ..] => Some(*o),
                    [o, _, _, "SOA", ..] if o.ends_with('.') => Some(*o),
                    _ => None,
                }
            })
            .map(|o| Name::from_ascii(o).expect("origin"));
        let (origin, sets) = Parser::new(rest.as_str(), None, origin)
            .parse()
            .unwrap_or_else(|e| panic!("zone file: {e}\n{text}"));
        let mut records = Vec::new();
        for set in sets.into_values() {
            records.extend(set.records_without_rrsigs().cloned());
        }
        records.extend(dnssec.into_iter().map(parse_dnssec));
        Zone {
            origin: LowerName::new(&origin),
            records,
        }
    }

    fn of_type(&self, name: &LowerName, t: RecordType) -> Vec<Record> {
        self.records
            .iter()
            .filter(|r| LowerName::new(&r.name) == *name && r.record_type() == t)
            .cloned()
            .collect()
    }

    fn rrsigs_for(&self, name: &LowerName, covered: RecordType) -> Vec<Record> {
        use mail_auth::hickory_resolver::proto::dnssec::rdata::DNSSECRData;
        use mail_auth::hickory_resolver::proto::rr::RData;
        self.records
            .iter()
            .filter(|r| {
                LowerName::new(&r.name) == *name
                    && matches!(&r.data, RData::DNSSEC(DNSSECRData::RRSIG(sig))
                        if sig.input().type_covered == covered)
            })
            .cloned()
            .collect()
    }

    fn name_exists(&self, name: &LowerName) -> bool {
        self.records.iter().any(|r| {
            let n = LowerName::new(&r.name);
            n == *name || name.zone_of(&n)
        })
    }
}

/// One RRSIG, NSEC or DNSKEY line as ldns-signzone writes it: `name ttl
/// IN TYPE rdata`, RRSIG times as YYYYMMDDHHmmSS.
fn parse_dnssec(line: &str) -> Record {
    use mail_auth::hickory_resolver::proto::dnssec::rdata::{DNSSECRData, SigInput, NSEC, RRSIG};
    use mail_auth::hickory_resolver::proto::dnssec::Algorithm;
    use mail_auth::hickory_resolver::proto::rr::RData;
    use mail_auth::hickory_resolver::proto::serialize::txt::trust_anchor;
    use std::str::FromStr;
    let f: Vec<&str> = line.split_whitespace().collect();
    let owner = Name::from_ascii(f[0]).expect("owner");
    let ttl: u32 = f[1].parse().expect("ttl");
    match f[3] {
        "NSEC" => {
            let types = f[5..]
                .iter()
                .map(|t| RecordType::from_str(t).expect("NSEC type"));
            let next = Name::from_ascii(f[4]).expect("NSEC next name");
            return Record::from_rdata(
                owner,
                ttl,
                RData::DNSSEC(DNSSECRData::NSEC(NSEC::new(next, types))),
            );
        }
        "DNSKEY" => {
            let entries = trust_anchor::Parser::new(line).parse().expect("DNSKEY");
            #[allow(irrefutable_let_patterns)]
            let Some(trust_anchor::Entry::DNSKEY(key)) = entries.into_iter().next() else {
                panic!("DNSKEY line: {line}");
            };
            return Record::from_rdata(
                owner,
                ttl,
                RData::DNSSEC(DNSSECRData::DNSKEY(key.data().clone())),
            );
        }
        _ => {}
    }
    assert!(f.len() >= 13, "RRSIG line: {line}");
    let input = SigInput {
        type_covered: RecordType::from_str(f[4]).expect("type covered"),
        algorithm: Algorithm::from_u8(f[5].parse().expect("algorithm")),
        num_labels: f[6].parse().expect("labels"),
        original_ttl: f[7].parse().expect("original ttl"),
        sig_expiration: timestamp(f[8]).into(),
        sig_inception: timestamp(f[9]).into(),
        key_tag: f[10].parse().expect("key tag"),
        signer_name: Name::from_ascii(f[11]).expect("signer"),
    };
    let sig = data_encoding::BASE64
        .decode(f[12..].concat().as_bytes())
        .expect("signature base64");
    Record::from_rdata(
        owner,
        ttl,
        RData::DNSSEC(DNSSECRData::RRSIG(RRSIG::from_sig(input, sig))),
    )
}

/// YYYYMMDDHHmmSS (UTC) to Unix seconds.
fn timestamp(s: &str) -> u32 {
    let n = |r: std::ops::Range<usize>| -> i64 { s[r].parse().expect("timestamp") };
    let (y, m, d) = (n(0..4), n(4..6), n(6..8));
    // Days from civil (proleptic Gregorian), March-based year.
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146097 + doe - 719468;
    (days * 86400 + n(8..10) * 3600 + n(10..12) * 60 + n(12..14)) as u32
}

pub struct DnssecStub {
    addr: SocketAddr,
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for DnssecStub {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

impl DnssecStub {
    /// Serves these zone files (signed or not); queries for the names in
    /// `servfail` get SERVFAIL (a broken or attacked server).
    pub async fn start(zone_texts: &[&str], servfail: &[&str]) -> DnssecStub {
        let servfail = servfail
            .iter()
            .map(|n| LowerName::new(&Name::from_ascii(n).expect("servfail name")))
            .collect();
        let zones = Arc::new(Zones {
            zones: zone_texts.iter().map(|t| Zone::parse(t)).collect(),
            servfail,
        });
        let (udp, tcp) = bind_pair().await;
        let addr = udp.local_addr().unwrap();
        let tasks = vec![
            tokio::spawn(serve_udp(udp, zones.clone())),
            tokio::spawn(serve_tcp(tcp, zones)),
        ];
        DnssecStub { addr, tasks }
    }

    /// The value for `[delivery] resolver`.
    pub fn resolver(&self) -> String {
        self.addr.to_string()
    }
}

async fn bind_pair() -> (UdpSocket, TcpListener) {
    for _ in 0..50 {
        let udp = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let port = udp.local_addr().unwrap().port();
        if let Ok(tcp) = TcpListener::bind(("127.0.0.1", port)).await {
            return (udp, tcp);
        }
    }
    panic!("no loopback port free for both UDP and TCP");
}

async fn serve_udp(socket: UdpSocket, zones: Arc<Zones>) {
    let mut buf = vec![0u8; 65535];
    loop {
        let Ok((len, peer)) = socket.recv_from(&mut buf).await else {
            continue;
        };
        if let Some(reply) = handle(&buf[..len], &zones, true) {
            let _ = socket.send_to(&reply, peer).await;
        }
    }
}

async fn serve_tcp(listener: TcpListener, zones: Arc<Zones>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        tokio::spawn(serve_tcp_conn(stream, zones.clone()));
    }
}

async fn serve_tcp_conn(mut stream: TcpStream, zones: Arc<Zones>) {
    let idle = Duration::from_secs(10);
    loop {
        let mut len = [0u8; 2];
        if !matches!(
            tokio::time::timeout(idle, stream.read_exact(&mut len)).await,
            Ok(Ok(_))
        ) {
            return;
        }
        let mut msg = vec![0u8; u16::from_be_bytes(len) as usize];
        if !matches!(
            tokio::time::timeout(idle, stream.read_exact(&mut msg)).await,
            Ok(Ok(_))
        ) {
            return;
        }
        let Some(reply) = handle(&msg, &zones, false) else {
            return;
        };
        let mut out = (reply.len() as u16).to_be_bytes().to_vec();
        out.extend_from_slice(&reply);
        if stream.write_all(&out).await.is_err() {
            return;
        }
    }
}

fn handle(packet: &[u8], zones: &Zones, udp: bool) -> Option<Vec<u8>> {
    let query = Message::from_vec(packet).ok()?;
    if query.metadata.message_type != MessageType::Query || query.queries.len() != 1 {
        return None;
    }
    let dnssec_ok = query
        .edns
        .as_ref()
        .map(|e| e.flags().dnssec_ok)
        .unwrap_or(false);
    let mut reply = Message::response(query.metadata.id, OpCode::Query);
    reply.metadata.recursion_desired = query.metadata.recursion_desired;
    reply.metadata.recursion_available = true;
    reply.metadata.authoritative = true;
    reply.add_queries(query.queries.iter().cloned());
    if query.edns.is_some() {
        let mut edns = Edns::new();
        edns.set_max_payload(EDNS_PAYLOAD);
        edns.set_dnssec_ok(dnssec_ok);
        reply.set_edns(edns);
    }
    answer(zones, &query.queries[0], dnssec_ok, &mut reply);
    let bytes = reply.to_vec().ok()?;
    let limit = if query.edns.is_some() {
        usize::from(query.max_payload().min(EDNS_PAYLOAD))
    } else {
        512
    };
    if udp && bytes.len() > limit {
        return reply.truncate().to_vec().ok();
    }
    Some(bytes)
}

fn answer(
    zones: &Zones,
    q: &mail_auth::hickory_resolver::proto::op::Query,
    dnssec_ok: bool,
    reply: &mut Message,
) {
    let qname = LowerName::new(q.name());
    let qtype = q.query_type();
    if zones.servfail.contains(&qname) {
        reply.metadata.response_code = ResponseCode::ServFail;
        return;
    }
    // The closest enclosing zone; for DS at a zone apex, its parent.
    let zone = zones
        .zones
        .iter()
        .filter(|z| z.origin.zone_of(&qname))
        .filter(|z| !(qtype == RecordType::DS && z.origin == qname))
        .max_by_key(|z| z.origin.num_labels());
    let Some(zone) = zone else {
        reply.metadata.response_code = ResponseCode::Refused;
        return;
    };
    let found = zone.of_type(&qname, qtype);
    if !found.is_empty() {
        reply.add_answers(found);
        if dnssec_ok {
            reply.add_answers(zone.rrsigs_for(&qname, qtype));
        }
        return;
    }
    if !zone.name_exists(&qname) {
        reply.metadata.response_code = ResponseCode::NXDomain;
    }
    reply.add_authorities(zone.of_type(&zone.origin, RecordType::SOA));
    if dnssec_ok {
        reply.add_authorities(zone.rrsigs_for(&zone.origin, RecordType::SOA));
        // The NSEC at the name proves NODATA; otherwise every NSEC of the
        // (small) zone goes along, the covering ones among them.
        let exact = zone.of_type(&qname, RecordType::NSEC);
        let nsecs: Vec<Record> = if exact.is_empty() {
            zone.records
                .iter()
                .filter(|r| r.record_type() == RecordType::NSEC)
                .cloned()
                .collect()
        } else {
            exact
        };
        let owners: Vec<Name> = nsecs.iter().map(|r| r.name.clone()).collect();
        reply.add_authorities(nsecs);
        for owner in owners {
            reply.add_authorities(zone.rrsigs_for(&LowerName::new(&owner), RecordType::NSEC));
        }
    }
}
