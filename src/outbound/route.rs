//! Where a recipient's mail goes next: a static route for its domain, else
//! the smarthost, else the domain's MX hosts by preference (RFC 5321 5.1),
//! falling back to the domain's own address when it has no MX.

use crate::config::{self, Config};
use mail_auth::{DnsError, MessageAuthenticator};
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

/// One host to try, with the name for SNI and logs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub addr: SocketAddr,
    pub name: String,
}

/// Why no host could be found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RouteError {
    /// DNS timed out or failed: try again later.
    Temporary(String),
    /// The domain does not exist or accepts no mail: bounce.
    Permanent(String),
}

#[derive(Debug, Clone)]
pub struct Relay {
    pub host: String,
    pub port: u16,
    pub username: Option<String>,
    pub password: Option<String>,
    pub tls: config::TlsPolicy,
    pub implicit_tls: bool,
}

pub struct Router {
    routes: HashMap<String, (String, u16)>,
    relay: Option<Relay>,
    resolver: Arc<MessageAuthenticator>,
    mx_port: u16,
}

/// Most addresses tried per delivery attempt, over all MX hosts.
const MAX_TARGETS: usize = 6;

impl Router {
    pub fn new(config: &Config, resolver: Arc<MessageAuthenticator>) -> Result<Router, String> {
        let mut routes = HashMap::new();
        for (domain, target) in &config.delivery.routes {
            let hp = config::parse_host_port(target, 25)
                .ok_or_else(|| format!("delivery.routes.{domain}: {target:?} is not host:port"))?;
            routes.insert(domain.to_ascii_lowercase(), hp);
        }
        let relay = match &config.delivery.relay {
            None => None,
            Some(r) => {
                let password = match &r.password_file {
                    Some(p) => Some(
                        std::fs::read_to_string(p)
                            .map_err(|e| {
                                format!(
                                    "delivery.relay.password_file: cannot read {}: {e}",
                                    p.display()
                                )
                            })?
                            .trim_end_matches(['\r', '\n'])
                            .to_string(),
                    ),
                    None => None,
                };
                Some(Relay {
                    host: r.host.clone(),
                    port: r.port,
                    username: r.username.clone(),
                    password,
                    tls: r.tls,
                    implicit_tls: r.implicit_tls,
                })
            }
        };
        Ok(Router {
            routes,
            relay,
            resolver,
            mx_port: config.delivery.mx_port,
        })
    }

    /// The resolver MX lookups go through (MTA-STS uses it too).
    pub fn resolver(&self) -> Arc<MessageAuthenticator> {
        self.resolver.clone()
    }

    /// True when `rcpt_domain`'s mail goes to its MX hosts (not a static
    /// route or the smarthost): only then do MTA-STS and DANE apply.
    pub fn uses_mx(&self, rcpt_domain: &str) -> bool {
        let d = rcpt_domain.to_ascii_lowercase();
        self.relay.is_none() && !self.routes.contains_key(&d)
    }

    pub fn relay(&self) -> Option<&Relay> {
        self.relay.as_ref()
    }

    /// The destination a recipient domain's mail shares connections and
    /// concurrency limits with.
    pub fn destination(&self, rcpt_domain: &str) -> String {
        let d = rcpt_domain.to_ascii_lowercase();
        if let Some((h, p)) = self.routes.get(&d) {
            return format!("route:{h}:{p}");
        }
        if let Some(r) = &self.relay {
            return format!("relay:{}:{}", r.host, r.port);
        }
        format!("mx:{d}")
    }

    /// True when this domain's mail goes to the smarthost.
    pub fn uses_relay(&self, rcpt_domain: &str) -> bool {
        self.relay.is_some() && !self.routes.contains_key(&rcpt_domain.to_ascii_lowercase())
    }

    /// The hosts to try, in order.
    pub async fn targets(&self, rcpt_domain: &str) -> Result<Vec<Target>, RouteError> {
        let d = rcpt_domain.to_ascii_lowercase();
        if let Some((host, port)) = self.routes.get(&d) {
            return self.host_targets(host, *port).await;
        }
        if let Some(r) = &self.relay {
            return self.host_targets(&r.host, r.port).await;
        }
        self.mx_targets(&d).await
    }

    async fn host_targets(&self, host: &str, port: u16) -> Result<Vec<Target>, RouteError> {
        if let Ok(ip) = host.parse::<IpAddr>() {
            return Ok(vec![Target {
                addr: SocketAddr::new(ip, port),
                name: host.to_string(),
            }]);
        }
        let ips = self.addresses(host).await?;
        Ok(ips
            .into_iter()
            .map(|ip| Target {
                addr: SocketAddr::new(ip, port),
                name: host.to_string(),
            })
            .collect())
    }

    async fn addresses(&self, host: &str) -> Result<Vec<IpAddr>, RouteError> {
        let fqdn = format!("{}.", host.trim_end_matches('.'));
        let v4 = self
            .resolver
            .ipv4_lookup(fqdn.as_str(), None::<&NoCache>)
            .await;
        let v6 = self
            .resolver
            .ipv6_lookup(fqdn.as_str(), None::<&NoCache>)
            .await;
        let mut out: Vec<IpAddr> = Vec::new();
        let mut temp = None;
        match v4 {
            Ok(set) => out.extend(set.rrset.iter().copied().map(IpAddr::V4)),
            Err(e) if !is_not_found(&e) => temp = Some(e.to_string()),
            Err(_) => {}
        }
        match v6 {
            Ok(set) => out.extend(set.rrset.iter().copied().map(IpAddr::V6)),
            Err(e) if !is_not_found(&e) => temp = Some(e.to_string()),
            Err(_) => {}
        }
        if out.is_empty() {
            return Err(match temp {
                Some(e) => RouteError::Temporary(format!("looking up {host}: {e}")),
                None => RouteError::Permanent(format!("{host} has no address")),
            });
        }
        Ok(out)
    }

    async fn mx_targets(&self, domain: &str) -> Result<Vec<Target>, RouteError> {
        let fqdn = format!("{}.", domain.trim_end_matches('.'));
        let hosts: Vec<String> = match self
            .resolver
            .mx_lookup(fqdn.as_str(), None::<&NoCache>)
            .await
        {
            Ok(set) => {
                let mut hosts = Vec::new();
                for mx in set.rrset.iter() {
                    for ex in mx.exchanges.iter() {
                        hosts.push(ex.trim_end_matches('.').to_string());
                    }
                }
                // RFC 7505: a single MX of "." means the domain takes no mail.
                if hosts.len() == 1 && hosts[0].is_empty() {
                    return Err(RouteError::Permanent(format!(
                        "{domain} accepts no mail (null MX)"
                    )));
                }
                hosts.retain(|h| !h.is_empty());
                hosts
            }
            Err(mail_auth::Error::Dns(DnsError::RecordNotFound(code))) => {
                if code == mail_auth::hickory_resolver::proto::op::ResponseCode::NXDomain {
                    return Err(RouteError::Permanent(format!(
                        "{domain} does not exist (NXDOMAIN)"
                    )));
                }
                // No MX: the domain itself is the implicit MX (RFC 5321 5.1).
                vec![domain.to_string()]
            }
            Err(e) => {
                return Err(RouteError::Temporary(format!(
                    "MX lookup for {domain}: {e}"
                )))
            }
        };
        let mut targets = Vec::new();
        let mut last_err = None;
        for host in hosts {
            match self.addresses(&host).await {
                Ok(ips) => targets.extend(ips.into_iter().map(|ip| Target {
                    addr: SocketAddr::new(ip, self.mx_port),
                    name: host.clone(),
                })),
                Err(e) => last_err = Some(e),
            }
            if targets.len() >= MAX_TARGETS {
                break;
            }
        }
        targets.truncate(MAX_TARGETS);
        if targets.is_empty() {
            return Err(match last_err {
                Some(RouteError::Temporary(e)) => RouteError::Temporary(e),
                Some(RouteError::Permanent(e)) => {
                    RouteError::Permanent(format!("no MX host of {domain} has an address ({e})"))
                }
                None => RouteError::Permanent(format!("{domain} has no MX host")),
            });
        }
        Ok(targets)
    }
}

fn is_not_found(e: &mail_auth::Error) -> bool {
    matches!(e, mail_auth::Error::Dns(DnsError::RecordNotFound(_)))
}

/// The resolver's own cache is enough; mail-auth's extra cache is not used.
type NoCache = NullCache;

pub struct NullCache;

impl<K, V> mail_auth::ResolverCache<K, V> for NullCache {
    fn get<Q>(&self, _: &Q) -> Option<V>
    where
        K: std::borrow::Borrow<Q>,
        Q: std::hash::Hash + Eq + ?Sized,
    {
        None
    }
    fn remove<Q>(&self, _: &Q) -> Option<V>
    where
        K: std::borrow::Borrow<Q>,
        Q: std::hash::Hash + Eq + ?Sized,
    {
        None
    }
    fn insert(&self, _: K, _: V, _: std::time::Instant) {}
}
