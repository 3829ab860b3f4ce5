//! dns-check's DNSSEC line: whether DNSSEC validates through the configured
//! resolver, which decides whether DANE can work. A resolver that strips
//! DNSSEC records would make DANE defer every signed domain (with
//! `delivery.dane = "on"`) or silently stay off (`"auto"`); the operator
//! should see which (stalwart#1578).

use crate::config::{Config, DaneMode};
use crate::outbound::dane::{Dane, Probe};

/// One line of text, without a final newline.
pub async fn line(config: &Config) -> String {
    let resolver = match &config.delivery.resolver {
        Some(r) => format!("the resolver {r}"),
        None => "the system resolver".to_string(),
    };
    let dane = match Dane::new(config) {
        Ok(Some(d)) => d,
        Ok(None) => {
            return "DNSSEC: not checked (delivery.dane = \"off\": DANE is not used)".into()
        }
        Err(e) => return format!("DNSSEC: cannot check: {e}"),
    };
    match (dane.probe().await, dane.mode()) {
        (Probe::Validates, DaneMode::On) => format!(
            "DNSSEC: validates through {resolver}: DANE is used (delivery.dane = \"on\")"
        ),
        (Probe::Validates, _) => format!(
            "DNSSEC: validates through {resolver}: DANE is used (delivery.dane = \"auto\")"
        ),
        (Probe::DoesNot(why), DaneMode::On) => format!(
            "DNSSEC: does NOT validate through {resolver} ({why}): with delivery.dane = \"on\", mail to DANE domains will be deferred; use a resolver that passes DNSSEC through"
        ),
        (Probe::DoesNot(why), _) => format!(
            "DNSSEC: does not validate through {resolver} ({why}): DANE stays off (delivery.dane = \"auto\") until it does; use a resolver that passes DNSSEC through"
        ),
    }
}
