//! The DNS resolver shared by delivery (MX and address lookups) and
//! `dns-check`: `delivery.resolver` when set (tests point it at a stub),
//! else the system's.

use crate::config::{parse_host_port, Config};
use mail_auth::hickory_resolver::config::{
    NameServerConfig, ResolveHosts, ResolverConfig, ResolverOpts,
};
use mail_auth::MessageAuthenticator;
use std::net::IpAddr;
use std::time::Duration;

/// The resolver dns-check (and the queue runner's MX lookups) use:
/// `delivery.resolver` (`ip` or `ip:port`, UDP with TCP fallback) when set,
/// else the system's (/etc/resolv.conf). /etc/hosts is ignored, because
/// what matters is what the rest of the internet sees. Cached answers live
/// at most 5 minutes (1 minute for "no such record"), so a long-running
/// server notices changes; answers with TTL 0 are not cached at all.
pub fn resolver(config: &Config) -> Result<MessageAuthenticator, String> {
    let (servers, opts) = resolver_settings(config)?;
    MessageAuthenticator::new(servers, opts).map_err(|e| format!("cannot set up DNS resolver: {e}"))
}

/// The name servers and options every resolver of the relay starts from
/// (the DANE one adds DNSSEC validation on top): see [`resolver`].
pub(crate) fn resolver_settings(config: &Config) -> Result<(ResolverConfig, ResolverOpts), String> {
    let (servers, mut opts) = match &config.delivery.resolver {
        Some(setting) => {
            let (ip, port) = parse_host_port(setting, 53)
                .and_then(|(h, p)| Some((h.parse::<IpAddr>().ok()?, p)))
                .ok_or_else(|| {
                    format!("delivery.resolver: {setting:?} is not an IP address (optionally with :port)")
                })?;
            let mut server = NameServerConfig::udp_and_tcp(ip);
            for conn in &mut server.connections {
                conn.port = port;
            }
            let mut opts = ResolverOpts::default();
            opts.timeout = Duration::from_secs(5);
            opts.attempts = 2;
            (ResolverConfig::from_name_servers(vec![server]), opts)
        }
        None => mail_auth::hickory_resolver::system_conf::read_system_conf().map_err(|e| {
            format!("cannot read the system DNS configuration (/etc/resolv.conf): {e}")
        })?,
    };
    opts.use_hosts_file = ResolveHosts::Never;
    opts.positive_max_ttl = Some(Duration::from_secs(300));
    opts.negative_max_ttl = Some(Duration::from_secs(60));
    opts.try_tcp_on_error = true;
    Ok((servers, opts))
}
