//! Which tracking host new links use, as Resend handles a changed
//! tracking subdomain: the new one only once its DNS record is verified
//! to point at this relay; until then the one used before. Pure.

/// The host new links use, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrackingChoice {
    pub host: Option<String>,
    pub reason: String,
}

/// `configured`: `{tracking_subdomain}.{domain}`; `previous`: the
/// `previous_tracking_subdomains` hosts, most recent first; `in_use`:
/// what was chosen before (stored); `verified`: whether this check found
/// the configured host's record verified (None: not checked yet).
///
/// Once the configured host has been chosen it stays, even if its record
/// later disappears: links already sent point there, and the domain's
/// status reports the missing record.
pub fn choose(
    configured: Option<&str>,
    previous: &[String],
    in_use: Option<&str>,
    verified: Option<bool>,
) -> TrackingChoice {
    let Some(configured) = configured else {
        return TrackingChoice {
            host: None,
            reason: "no tracking_subdomain is set: links are not tracked".into(),
        };
    };
    let same = |a: &str, b: &str| a.eq_ignore_ascii_case(b);
    let choice = |host: &str, reason: String| TrackingChoice {
        host: Some(host.to_string()),
        reason,
    };
    if verified == Some(true) {
        return choice(
            configured,
            format!("{configured}: its DNS record is verified to point at this relay"),
        );
    }
    if in_use.is_some_and(|h| same(h, configured)) {
        return choice(
            configured,
            format!("{configured}: in use since its DNS record was verified"),
        );
    }
    let fallback = in_use
        .filter(|h| previous.iter().any(|p| same(p, h)))
        .or(previous.first().map(String::as_str));
    match fallback {
        Some(old) => choice(
            old,
            format!(
                "{configured} is not verified yet (its DNS record must point at this relay), \
                 so new links keep using the previous {old}"
            ),
        ),
        None => choice(
            configured,
            format!(
                "{configured}: not verified yet, but there is no previous tracking subdomain \
                 to keep using"
            ),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NEW: &str = "t2.example.com";
    const OLD: &str = "links.example.com";

    fn host(c: &TrackingChoice) -> Option<&str> {
        c.host.as_deref()
    }

    #[test]
    fn the_new_host_only_once_verified() {
        let prev = vec![OLD.to_string()];
        assert_eq!(host(&choose(Some(NEW), &prev, None, None)), Some(OLD));
        let c = choose(Some(NEW), &prev, Some(OLD), Some(false));
        assert_eq!(host(&c), Some(OLD));
        assert!(c.reason.contains("not verified yet"), "{}", c.reason);
        let c = choose(Some(NEW), &prev, Some(OLD), Some(true));
        assert_eq!(host(&c), Some(NEW));
        // Stays on the new host after a restart and if the record goes.
        assert_eq!(host(&choose(Some(NEW), &prev, Some(NEW), None)), Some(NEW));
        assert_eq!(
            host(&choose(
                Some(NEW),
                &prev,
                Some("T2.example.com"),
                Some(false)
            )),
            Some(NEW)
        );
    }

    #[test]
    fn fallbacks() {
        assert_eq!(choose(None, &[], Some(OLD), Some(true)).host, None);
        // Nothing to fall back on: the configured host, verified or not.
        assert_eq!(host(&choose(Some(NEW), &[], None, Some(false))), Some(NEW));
        // The one in use is kept when it is one of the previous ones.
        let prev = vec!["a.example.com".to_string(), OLD.to_string()];
        assert_eq!(host(&choose(Some(NEW), &prev, Some(OLD), None)), Some(OLD));
        // Something no longer configured: the most recent previous.
        assert_eq!(
            host(&choose(Some(NEW), &prev, Some("gone.example.com"), None)),
            Some("a.example.com")
        );
    }
}
