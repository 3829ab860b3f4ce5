//! The few DNS questions dns-check asks, answered once per run.
//!
//! Lookups go to hickory through mail-auth's resolver rather than through
//! mail-auth's own helpers: `txt_raw_lookup` glues every TXT record at a name
//! into one string, and dns-check needs the records apart (two SPF records
//! are an error, one SPF record among others is fine).

use std::collections::HashMap;
use std::net::IpAddr;

use mail_auth::hickory_resolver::net::NetError;
use mail_auth::hickory_resolver::proto::rr::{Name, RData, RecordType};
use mail_auth::MessageAuthenticator;

/// Records found (empty: the name or the type does not exist), or why the
/// question could not be answered (timeout, SERVFAIL, ...).
pub(crate) type Answer<T> = Result<Vec<T>, String>;

/// Memoises answers so that a name asked about by several checks (the
/// relay's own addresses, an SPF include) costs one query.
pub(crate) struct Dns<'a> {
    resolver: &'a MessageAuthenticator,
    cache: HashMap<(String, RecordType), Answer<RData>>,
}

impl<'a> Dns<'a> {
    pub(crate) fn new(resolver: &'a MessageAuthenticator) -> Self {
        Dns {
            resolver,
            cache: HashMap::new(),
        }
    }

    /// The resolver behind the cache, for mail-auth's own verifiers (SPF).
    pub(crate) fn resolver(&self) -> &'a MessageAuthenticator {
        self.resolver
    }

    /// TXT records, each with its character-strings joined (RFC 7208 3.3,
    /// RFC 6376 3.6.2.2); bytes that are not UTF-8 are replaced, not fatal.
    pub(crate) async fn txt(&mut self, name: &str) -> Answer<String> {
        Ok(self
            .ask(name, RecordType::TXT)
            .await?
            .into_iter()
            .filter_map(|r| match r {
                RData::TXT(txt) => {
                    let bytes: Vec<u8> = txt.txt_data.iter().flatten().copied().collect();
                    Some(String::from_utf8_lossy(&bytes).into_owned())
                }
                _ => None,
            })
            .collect())
    }

    /// MX records as (preference, exchange without the final dot), lowest
    /// preference first.
    pub(crate) async fn mx(&mut self, name: &str) -> Answer<(u16, String)> {
        let mut list: Vec<(u16, String)> = self
            .ask(name, RecordType::MX)
            .await?
            .into_iter()
            .filter_map(|r| match r {
                RData::MX(mx) => Some((mx.preference, host(&mx.exchange))),
                _ => None,
            })
            .collect();
        list.sort();
        Ok(list)
    }

    /// A and AAAA together (through any CNAME). An error on either is an
    /// error: half the addresses would make an address comparison lie.
    pub(crate) async fn addrs(&mut self, name: &str) -> Answer<IpAddr> {
        let mut out = Vec::new();
        for rtype in [RecordType::A, RecordType::AAAA] {
            for r in self.ask(name, rtype).await? {
                match r {
                    RData::A(a) => out.push(IpAddr::V4(a.0)),
                    RData::AAAA(a) => out.push(IpAddr::V6(a.0)),
                    _ => {}
                }
            }
        }
        out.sort();
        out.dedup();
        Ok(out)
    }

    /// CAA records at `name` itself (RFC 8659; for ACME issuance).
    pub(crate) async fn caa(&mut self, name: &str) -> Answer<crate::acme::caa::CaaRecord> {
        Ok(self
            .ask(name, RecordType::CAA)
            .await?
            .into_iter()
            .filter_map(|r| match r {
                RData::CAA(c) => Some(crate::acme::caa::CaaRecord {
                    critical: c.issuer_critical,
                    tag: c.tag.clone(),
                    value: String::from_utf8_lossy(&c.value).into_owned(),
                }),
                _ => None,
            })
            .collect())
    }

    /// The CNAME target of `name` itself (without the final dot), if any.
    pub(crate) async fn cname(&mut self, name: &str) -> Answer<String> {
        Ok(self
            .ask(name, RecordType::CNAME)
            .await?
            .into_iter()
            .filter_map(|r| match r {
                RData::CNAME(c) => Some(host(&c.0)),
                _ => None,
            })
            .take(1)
            .collect())
    }

    async fn ask(&mut self, name: &str, rtype: RecordType) -> Answer<RData> {
        let key = (normalise(name), rtype);
        if let Some(hit) = self.cache.get(&key) {
            return hit.clone();
        }
        let answer = self.query(&key.0, rtype).await;
        self.cache.insert(key, answer.clone());
        answer
    }

    async fn query(&self, name: &str, rtype: RecordType) -> Answer<RData> {
        // The final dot makes the name absolute: no search domains appended.
        let fqdn = Name::from_str_relaxed(format!("{name}."))
            .map_err(|e| format!("{name:?} is not a valid DNS name: {e}"))?;
        match self.resolver.resolver().lookup(fqdn, rtype).await {
            // CNAMEs met on the way are in the answer too; callers pick
            // the type they asked for.
            Ok(lookup) => Ok(lookup.answers().iter().map(|r| r.data.clone()).collect()),
            Err(e) => classify(e).map_err(|e| format!("{rtype} {name}: {e}")),
        }
    }
}

/// NXDOMAIN and "no records of this type" are answers (the record is not
/// published); anything else means the question went unanswered. The
/// caller names the question: one check can ask several (a CNAME, then
/// the addresses), and the note must say which went unanswered.
fn classify(e: NetError) -> Result<Vec<RData>, NetError> {
    if e.is_no_records_found() {
        Ok(Vec::new())
    } else {
        Err(e)
    }
}

/// Lower case, no final dot: the form every comparison in dns-check uses.
pub(crate) fn normalise(name: &str) -> String {
    name.trim().trim_end_matches('.').to_ascii_lowercase()
}

fn host(name: &Name) -> String {
    normalise(&name.to_ascii())
}
