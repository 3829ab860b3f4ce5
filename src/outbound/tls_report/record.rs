//! The `_smtp._tls` TXT record (RFC 8460 section 3): where a policy
//! domain wants its reports. The record comes from anyone's DNS, so only
//! what can be used safely is kept: `mailto:` addresses that are plain
//! addresses, and `https:` URLs.

/// One report destination.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rua {
    /// The address (without `mailto:` and without any `?` query).
    Mailto(String),
    Https(String),
}

impl Rua {
    /// As the record wrote it (and as the store keeps it).
    pub fn uri(&self) -> String {
        match self {
            Rua::Mailto(a) => format!("mailto:{a}"),
            Rua::Https(u) => u.clone(),
        }
    }
}

/// The answer to `_smtp._tls.{domain}` TXT: records that do not start
/// with `v=TLSRPTv1` are ignored, and anything but exactly one left means
/// the domain does not take reports (section 3). `Ok(None)`: no reports;
/// `Err`: the one record is malformed (also no reports, with the reason).
pub fn parse_records(txts: &[String]) -> Result<Option<Vec<Rua>>, String> {
    let ours: Vec<&String> = txts
        .iter()
        .filter(|t| {
            let t = t.trim_start();
            t.strip_prefix("v=TLSRPTv1").is_some_and(|rest| {
                rest.trim_start().is_empty() || rest.trim_start().starts_with(';')
            })
        })
        .collect();
    match ours.as_slice() {
        [] => Ok(None),
        [one] => parse_record(one).map(Some),
        _ => Err(format!(
            "{} v=TLSRPTv1 records (exactly one is needed)",
            ours.len()
        )),
    }
}

/// One record: `v=TLSRPTv1; rua=mailto:a@b.example,https://r.example/x`.
/// Unknown fields are ignored (section 3 allows extensions); destinations
/// other than mailto: and https:, or that are not usable as written, are
/// skipped. A record left with no destination is an error.
pub fn parse_record(txt: &str) -> Result<Vec<Rua>, String> {
    let mut fields = txt.split(';').map(str::trim);
    if fields.next() != Some("v=TLSRPTv1") {
        return Err("the record does not start with v=TLSRPTv1".into());
    }
    let mut rua = None;
    for f in fields.filter(|f| !f.is_empty()) {
        let Some((name, value)) = f.split_once('=') else {
            return Err(format!("field {f:?} has no '='"));
        };
        if name.trim() == "rua" {
            if rua.is_some() {
                return Err("rua appears twice".into());
            }
            rua = Some(value.trim());
        }
    }
    let rua = rua.ok_or("the record has no rua")?;
    let list: Vec<Rua> = rua
        .split(',')
        .map(str::trim)
        .filter_map(destination)
        .collect();
    if list.is_empty() {
        return Err(format!(
            "rua {rua:?} names no usable mailto: or https: destination"
        ));
    }
    Ok(list)
}

/// One `rua` URI, if usable (also for the URIs kept in the store).
pub(super) fn destination(uri: &str) -> Option<Rua> {
    let lower = uri.to_ascii_lowercase();
    if lower.starts_with("mailto:") {
        let rest = &uri["mailto:".len()..];
        let addr = rest.split('?').next().unwrap_or_default();
        let addr = percent_encoding::percent_decode_str(addr)
            .decode_utf8()
            .ok()?
            .into_owned();
        plain_address(&addr).then_some(Rua::Mailto(addr))
    } else if lower.starts_with("https://") {
        let url = url::Url::parse(uri).ok()?;
        (url.scheme() == "https" && url.host_str().is_some_and(|h| !h.is_empty()))
            .then(|| Rua::Https(url.to_string()))
    } else {
        None
    }
}

/// An address we can put in RCPT TO and a To: header as it is: one `@`,
/// a dotted domain, and no space, control, quote or angle bracket that
/// could change what the header or the command says.
fn plain_address(a: &str) -> bool {
    let Some((local, domain)) = a.rsplit_once('@') else {
        return false;
    };
    let local_ok = !local.is_empty()
        && local.len() <= 64
        && local
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "!#$%&'*+-/=^_`{|}~.".contains(c));
    let domain_ok = domain.contains('.')
        && domain.len() <= 253
        && domain
            .split('.')
            .all(|l| !l.is_empty() && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-'));
    local_ok && domain_ok
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rfc_examples_parse() {
        assert_eq!(
            parse_record("v=TLSRPTv1; rua=mailto:reports@example.com").unwrap(),
            [Rua::Mailto("reports@example.com".into())]
        );
        assert_eq!(
            parse_record("v=TLSRPTv1; rua=https://reporting.example.com/v1/tlsrpt").unwrap(),
            [Rua::Https("https://reporting.example.com/v1/tlsrpt".into())]
        );
        assert_eq!(
            parse_record("v=TLSRPTv1;rua=mailto:a@x.example, https://r.example/p ;ext=1;").unwrap(),
            [
                Rua::Mailto("a@x.example".into()),
                Rua::Https("https://r.example/p".into())
            ]
        );
    }

    #[test]
    fn unusable_destinations_are_skipped_and_none_left_is_an_error() {
        // http:, a header-breaking address, and a query that is dropped.
        let r = parse_record(
            "v=TLSRPTv1; rua=http://r.example/x,mailto:a@b.example%0d%0aBcc:%20x@y.example,mailto:ok@b.example?subject=hi",
        )
        .unwrap();
        assert_eq!(r, [Rua::Mailto("ok@b.example".into())]);
        // Our report mail is not SMTPUTF8: an address that needs it is skipped.
        assert!(parse_record("v=TLSRPTv1; rua=mailto:r%C3%A9@b.example").is_err());
        // A URL keeps its ';' and ',' once stored.
        let url = Rua::Https("https://r.example/a;b,c".into());
        assert_eq!(destination(&url.uri()), Some(url));
        assert!(parse_record("v=TLSRPTv1; rua=ftp://x.example/").is_err());
        assert!(parse_record("v=TLSRPTv1;").is_err());
        assert!(
            parse_record("v=TLSRPTv1; rua=mailto:a@b.example; rua=mailto:c@d.example").is_err()
        );
        assert!(parse_record("rua=mailto:a@b.example; v=TLSRPTv1").is_err());
        assert!(parse_record("v=TLSRPTv1; rua").is_err());
    }

    #[test]
    fn exactly_one_tlsrpt_record_counts() {
        let other = "v=spf1 -all".to_string();
        let one = "v=TLSRPTv1; rua=mailto:a@b.example".to_string();
        assert_eq!(parse_records(std::slice::from_ref(&other)).unwrap(), None);
        assert_eq!(parse_records(&[]).unwrap(), None);
        assert_eq!(
            parse_records(&[other.clone(), one.clone()]).unwrap(),
            Some(vec![Rua::Mailto("a@b.example".into())])
        );
        assert!(parse_records(&[one.clone(), one]).is_err());
        // A prefix is not the version.
        assert_eq!(
            parse_records(&["v=TLSRPTv10; rua=mailto:a@b.example".into()]).unwrap(),
            None
        );
    }
}
