//! Whether CAA records (RFC 8659) let the ACME CA issue for a name. Pure:
//! the lookups (climbing from the name towards the root until a name has
//! CAA records) are dnscheck's.

/// One CAA record as published.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaaRecord {
    pub critical: bool,
    pub tag: String,
    pub value: String,
}

impl std::fmt::Display for CaaRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let flags = if self.critical { 128 } else { 0 };
        write!(f, "{flags} {} \"{}\"", self.tag, self.value)
    }
}

/// The record an operator publishes to let `identity` issue.
pub fn needed(identity: &str) -> String {
    format!("0 issue \"{identity}\"")
}

/// Ok when `identity` (e.g. "letsencrypt.org") may issue a non-wildcard
/// certificate under the relevant record set (`records`: the CAA records
/// of the closest name that has any; empty: none anywhere, anyone may).
/// Err says why not.
pub fn authorises(records: &[CaaRecord], identity: &str) -> Result<(), String> {
    // RFC 8659 4.1: a critical property the CA does not understand forbids
    // issuance.
    if let Some(r) = records.iter().find(|r| {
        r.critical
            && !["issue", "issuewild", "iodef"].contains(&r.tag.to_ascii_lowercase().as_str())
    }) {
        return Err(format!(
            "the CAA record {r} is critical and not understood, which forbids any issuance"
        ));
    }
    let issue: Vec<&CaaRecord> = records
        .iter()
        .filter(|r| r.tag.eq_ignore_ascii_case("issue"))
        .collect();
    if issue.is_empty() {
        return Ok(());
    }
    let allowed = issue.iter().any(|r| {
        let domain = r.value.split(';').next().unwrap_or_default().trim();
        domain.eq_ignore_ascii_case(identity.trim_end_matches('.'))
    });
    if allowed {
        Ok(())
    } else {
        Err(format!(
            "CAA records exist and none authorises {identity}: add {}",
            needed(identity)
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(critical: bool, tag: &str, value: &str) -> CaaRecord {
        CaaRecord {
            critical,
            tag: tag.into(),
            value: value.into(),
        }
    }

    const LE: &str = "letsencrypt.org";

    #[test]
    fn no_records_or_no_issue_tag_allows_any_ca() {
        assert!(authorises(&[], LE).is_ok());
        assert!(authorises(&[rec(false, "iodef", "mailto:a@example.com")], LE).is_ok());
        assert!(authorises(&[rec(false, "issuewild", "other.example")], LE).is_ok());
    }

    #[test]
    fn issue_must_name_the_ca() {
        assert!(authorises(&[rec(false, "issue", "letsencrypt.org")], LE).is_ok());
        assert!(authorises(
            &[rec(
                false,
                "ISSUE",
                " LetsEncrypt.org; validationmethods=http-01"
            )],
            LE
        )
        .is_ok());
        let both = [rec(false, "issue", "sectigo.com"), rec(false, "issue", LE)];
        assert!(authorises(&both, LE).is_ok());
        let e = authorises(&[rec(false, "issue", "sectigo.com")], LE).unwrap_err();
        assert!(e.contains("0 issue \"letsencrypt.org\""), "{e}");
        // ";" alone: no CA may issue.
        assert!(authorises(&[rec(false, "issue", ";")], LE).is_err());
    }

    #[test]
    fn unknown_critical_tag_forbids() {
        let r = [rec(true, "tbs", "x"), rec(false, "issue", LE)];
        assert!(authorises(&r, LE).unwrap_err().contains("critical"));
        assert_eq!(
            rec(true, "issue", LE).to_string(),
            "128 issue \"letsencrypt.org\""
        );
    }
}
