//! A stub DNS server for tests: a real server on 127.0.0.1 (UDP and TCP on
//! the same random port) answering from an in-memory table the test fills.
//!
//! ```ignore
//! let dns = DnsStub::start().await;
//! dns.mx("example.net", 10, "mx1.example.net")
//!     .mx("example.net", 20, "mx2.example.net")
//!     .a("mx1.example.net", Ipv4Addr::LOCALHOST)
//!     .txt("example.net", "v=spf1 -all");
//! // config: [delivery] resolver = "{dns.resolver()}"
//! ```
//!
//! It behaves like an authoritative server for every name: records of the
//! asked type, else a CNAME chain followed inside the table, else NOERROR
//! with no answer when the name exists (or has names below it), else
//! NXDOMAIN. Answers carry TTL 0 by default so that resolvers do not cache
//! them and a test can change the table between lookups. Queries are parsed
//! and answers serialised with hickory-proto; malformed packets get FORMERR
//! (or are dropped when they are too short to answer), never a panic.
#![allow(dead_code)]

use std::collections::HashMap;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use mail_auth::hickory_resolver::proto::op::{
    Edns, Message, MessageType, OpCode, Query, ResponseCode,
};
use mail_auth::hickory_resolver::proto::rr::rdata::{A, AAAA, CAA, CNAME, MX, TXT};
use mail_auth::hickory_resolver::proto::rr::{Name, RData, Record, RecordType};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::task::{JoinHandle, JoinSet};

/// For [`DnsStub::fail`], so tests need not spell out hickory's path.
#[allow(unused_imports)]
pub use mail_auth::hickory_resolver::proto::op::ResponseCode as Rcode;

/// CNAME hops followed inside the table before giving up (loops end here).
const MAX_CNAME_HOPS: usize = 8;
/// What a UDP answer may grow to when the query carries EDNS (the DNS Flag
/// Day 2020 size); larger answers are sent truncated so the client retries
/// over TCP.
const EDNS_PAYLOAD: u16 = 1232;

#[derive(Default)]
struct Zone {
    records: HashMap<String, Vec<RData>>,
    failures: HashMap<String, ResponseCode>,
    ttl: u32,
    log: Vec<String>,
    tcp_queries: usize,
}

pub struct DnsStub {
    addr: SocketAddr,
    zone: Arc<Mutex<Zone>>,
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for DnsStub {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

impl DnsStub {
    /// Binds UDP and TCP on one free loopback port and starts answering.
    pub async fn start() -> DnsStub {
        let (udp, tcp) = bind_pair().await;
        let addr = udp.local_addr().expect("udp local addr");
        let zone = Arc::new(Mutex::new(Zone::default()));
        let tasks = vec![
            tokio::spawn(serve_udp(udp, zone.clone())),
            tokio::spawn(serve_tcp(tcp, zone.clone())),
        ];
        DnsStub { addr, zone, tasks }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The value for `[delivery] resolver`, e.g. "127.0.0.1:40123".
    pub fn resolver(&self) -> String {
        self.addr.to_string()
    }

    /// TTL put on answers from now on (0 by default: nothing gets cached).
    pub fn ttl(&self, ttl: u32) -> &Self {
        self.zone().ttl = ttl;
        self
    }

    /// Adds a TXT record; values longer than 255 bytes are split into
    /// 255-byte character-strings, as zone tools do.
    pub fn txt(&self, name: &str, value: &str) -> &Self {
        let chunks: Vec<&[u8]> = if value.is_empty() {
            vec![b""]
        } else {
            value.as_bytes().chunks(255).collect()
        };
        self.add(name, RData::TXT(TXT::from_bytes(chunks)))
    }

    /// Adds a TXT record made of exactly these character-strings.
    pub fn txt_chunks(&self, name: &str, chunks: &[&str]) -> &Self {
        assert!(chunks.iter().all(|c| c.len() <= 255), "TXT chunk over 255");
        let chunks = chunks.iter().map(|c| c.as_bytes()).collect();
        self.add(name, RData::TXT(TXT::from_bytes(chunks)))
    }

    pub fn mx(&self, name: &str, preference: u16, exchange: &str) -> &Self {
        self.add(name, RData::MX(MX::new(preference, fqdn(exchange))))
    }

    pub fn a(&self, name: &str, ip: Ipv4Addr) -> &Self {
        self.add(name, RData::A(A(ip)))
    }

    pub fn aaaa(&self, name: &str, ip: Ipv6Addr) -> &Self {
        self.add(name, RData::AAAA(AAAA(ip)))
    }

    /// Adds a CAA `issue` record naming `ca` (RFC 8659), for ACME tests.
    pub fn caa_issue(&self, name: &str, ca: &str) -> &Self {
        let ca = Name::from_str_relaxed(ca).expect("CA domain");
        self.add(
            name,
            RData::CAA(CAA::new_issue(false, Some(ca), Vec::new())),
        )
    }

    /// Makes `name` an alias; a name with a CNAME should have nothing else.
    pub fn cname(&self, name: &str, target: &str) -> &Self {
        self.add(name, RData::CNAME(CNAME(fqdn(target))))
    }

    /// Removes every record at `name` (and any failure set for it).
    pub fn remove(&self, name: &str) -> &Self {
        let key = key(name);
        let mut zone = self.zone();
        zone.records.remove(&key);
        zone.failures.remove(&key);
        self
    }

    /// Removes the records of one type at `name`.
    pub fn remove_type(&self, name: &str, rtype: RecordType) -> &Self {
        if let Some(list) = self.zone().records.get_mut(&key(name)) {
            list.retain(|r| r.record_type() != rtype);
        }
        self
    }

    /// Answers every query for `name` with this response code (e.g.
    /// `Rcode::ServFail`), to test how callers handle a broken DNS.
    pub fn fail(&self, name: &str, code: ResponseCode) -> &Self {
        self.zone().failures.insert(key(name), code);
        self
    }

    /// Queries received so far, as "TYPE name" (lower case, no final dot).
    pub fn queries(&self) -> Vec<String> {
        self.zone().log.clone()
    }

    /// How many of them came over TCP.
    pub fn tcp_queries(&self) -> usize {
        self.zone().tcp_queries
    }

    fn add(&self, name: &str, data: RData) -> &Self {
        self.zone().records.entry(key(name)).or_default().push(data);
        self
    }

    fn zone(&self) -> std::sync::MutexGuard<'_, Zone> {
        // A test that panicked while holding the lock must not take the
        // other users of the stub down with it.
        self.zone.lock().unwrap_or_else(|e| e.into_inner())
    }
}

fn key(name: &str) -> String {
    name.trim_end_matches('.').to_ascii_lowercase()
}

fn fqdn(name: &str) -> Name {
    Name::from_str_relaxed(format!("{}.", key(name)))
        .unwrap_or_else(|e| panic!("stub DNS: {name:?} is not a domain name: {e}"))
}

async fn bind_pair() -> (UdpSocket, TcpListener) {
    // The two sockets must share a port, and a free UDP port may be taken
    // for TCP; a few tries are enough in practice.
    for _ in 0..50 {
        let udp = UdpSocket::bind("127.0.0.1:0").await.expect("bind udp");
        let port = udp.local_addr().expect("udp addr").port();
        if let Ok(tcp) = TcpListener::bind(("127.0.0.1", port)).await {
            return (udp, tcp);
        }
    }
    panic!("stub DNS: no loopback port free for both UDP and TCP");
}

async fn serve_udp(socket: UdpSocket, zone: Arc<Mutex<Zone>>) {
    let mut buf = vec![0u8; 65535];
    loop {
        let Ok((len, peer)) = socket.recv_from(&mut buf).await else {
            continue;
        };
        if let Some(reply) = handle(&buf[..len], &zone, true) {
            let _ = socket.send_to(&reply, peer).await;
        }
    }
}

async fn serve_tcp(listener: TcpListener, zone: Arc<Mutex<Zone>>) {
    // Dropping the set (when the stub is dropped and this task aborted)
    // aborts the connections too.
    let mut conns = JoinSet::new();
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            // Out of file descriptors, say: do not spin on the error.
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        while conns.try_join_next().is_some() {}
        conns.spawn(serve_tcp_conn(stream, zone.clone()));
    }
}

async fn serve_tcp_conn(mut stream: TcpStream, zone: Arc<Mutex<Zone>>) {
    let idle = Duration::from_secs(10);
    loop {
        let mut len = [0u8; 2];
        match tokio::time::timeout(idle, stream.read_exact(&mut len)).await {
            Ok(Ok(_)) => {}
            _ => return,
        }
        let mut msg = vec![0u8; u16::from_be_bytes(len) as usize];
        match tokio::time::timeout(idle, stream.read_exact(&mut msg)).await {
            Ok(Ok(_)) => {}
            _ => return,
        }
        let Some(reply) = handle(&msg, &zone, false) else {
            return;
        };
        let Ok(len) = u16::try_from(reply.len()) else {
            return;
        };
        let mut out = len.to_be_bytes().to_vec();
        out.extend_from_slice(&reply);
        if stream.write_all(&out).await.is_err() {
            return;
        }
    }
}

/// One query in, one serialised answer out (None: nothing sensible to send).
fn handle(packet: &[u8], zone: &Mutex<Zone>, udp: bool) -> Option<Vec<u8>> {
    let query = match Message::from_vec(packet) {
        Ok(m) => m,
        Err(_) => {
            // Enough of a header to echo the id: say FORMERR, as servers do.
            if packet.len() < 12 {
                return None;
            }
            let id = u16::from_be_bytes([packet[0], packet[1]]);
            return Message::error_msg(id, OpCode::Query, ResponseCode::FormErr)
                .to_vec()
                .ok();
        }
    };
    if query.metadata.message_type != MessageType::Query {
        return None;
    }
    let mut reply = Message::response(query.metadata.id, query.metadata.op_code);
    reply.metadata.recursion_desired = query.metadata.recursion_desired;
    reply.metadata.recursion_available = true;
    reply.metadata.authoritative = true;
    reply.add_queries(query.queries.iter().cloned());
    if query.edns.is_some() {
        let mut edns = Edns::new();
        edns.set_max_payload(EDNS_PAYLOAD);
        reply.set_edns(edns);
    }
    match (query.metadata.op_code, query.queries.as_slice()) {
        (OpCode::Query, [q]) => {
            let mut zone = zone.lock().unwrap_or_else(|e| e.into_inner());
            zone.tcp_queries += usize::from(!udp);
            answer(&mut zone, q, &mut reply);
        }
        (OpCode::Query, _) => reply.metadata.response_code = ResponseCode::FormErr,
        _ => reply.metadata.response_code = ResponseCode::NotImp,
    }
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

fn answer(zone: &mut Zone, q: &Query, reply: &mut Message) {
    let qtype = q.query_type();
    let mut name = key(&q.name().to_ascii());
    zone.log.push(format!("{qtype} {name}"));
    let mut owner = q.name().clone();
    for _ in 0..MAX_CNAME_HOPS {
        if let Some(code) = zone.failures.get(&name) {
            reply.metadata.response_code = *code;
            reply.answers.clear();
            return;
        }
        let records = zone.records.get(&name).map(Vec::as_slice).unwrap_or(&[]);
        let matching: Vec<&RData> = records
            .iter()
            .filter(|r| r.record_type() == qtype || qtype == RecordType::ANY)
            .collect();
        if !matching.is_empty() {
            for r in matching {
                reply.add_answer(Record::from_rdata(owner.clone(), zone.ttl, r.clone()));
            }
            return;
        }
        let alias = records.iter().find_map(|r| match r {
            RData::CNAME(CNAME(target)) => Some(target.clone()),
            _ => None,
        });
        match alias {
            Some(target) => {
                reply.add_answer(Record::from_rdata(
                    owner.clone(),
                    zone.ttl,
                    RData::CNAME(CNAME(target.clone())),
                ));
                name = key(&target.to_ascii());
                owner = target;
            }
            None => break,
        }
    }
    if reply.answers.is_empty() && !exists(zone, &name) {
        reply.metadata.response_code = ResponseCode::NXDomain;
    }
}

/// A name exists when it has records or names below it (RFC 8020: an
/// empty non-terminal such as `_domainkey.example.com` is NOERROR).
fn exists(zone: &Zone, name: &str) -> bool {
    let suffix = format!(".{name}");
    zone.records
        .iter()
        .any(|(n, r)| (n == name && !r.is_empty()) || n.ends_with(&suffix))
}
