//! The two fields of an X.509 certificate the relay reads: its validity
//! (the domain page, ACME renewal) and its SubjectPublicKeyInfo (DANE
//! selector 1). The `der` crate is already in the graph (through
//! rsa/pkcs8); a full X.509 parser (x509-parser, x509-cert) would add a
//! crate tree to read two fields. Only the path through `tbsCertificate` is
//! walked; the rest is skipped as opaque TLVs. DANE reads a peer's
//! certificate, so anything malformed is an error, never a panic.

use der::asn1::{AnyRef, GeneralizedTime, UtcTime};
use der::{Decode, Encode, Reader, SliceReader, Tag, Tagged};

/// notAfter in Unix milliseconds.
pub fn not_after(cert_der: &[u8]) -> Result<i64, String> {
    validity(cert_der).map(|(_, after)| after)
}

/// (notBefore, notAfter) in Unix milliseconds (ACME renews at two thirds
/// of the span).
pub fn validity(cert_der: &[u8]) -> Result<(i64, i64), String> {
    walk(cert_der).map_err(|e| format!("not an X.509 certificate ({e})"))
}

/// The DER SubjectPublicKeyInfo.
pub fn spki(cert_der: &[u8]) -> Result<Vec<u8>, String> {
    tbs(cert_der)
        .and_then(|t| t.spki.to_der())
        .map_err(|e| format!("not an X.509 certificate ({e})"))
}

fn walk(cert_der: &[u8]) -> der::Result<(i64, i64)> {
    let tbs = tbs(cert_der)?;
    let mut r = SliceReader::new(tbs.validity.value())?;
    let not_before: AnyRef = r.decode()?;
    let not_after: AnyRef = r.decode()?;
    Ok((time_ms(not_before)?, time_ms(not_after)?))
}

/// The fields of `tbsCertificate` that are read, borrowed from the input.
struct Tbs<'a> {
    validity: AnyRef<'a>,
    spki: AnyRef<'a>,
}

fn tbs(cert_der: &[u8]) -> der::Result<Tbs<'_>> {
    let cert = AnyRef::from_der(cert_der)?;
    let mut r = SliceReader::new(cert.value())?;
    let tbs: AnyRef = r.decode()?;
    let mut r = SliceReader::new(tbs.value())?;
    let first: AnyRef = r.decode()?;
    // `version` is an optional explicit [0]; the serial follows it.
    if matches!(first.tag(), Tag::ContextSpecific { .. }) {
        let _serial: AnyRef = r.decode()?;
    }
    let _signature: AnyRef = r.decode()?;
    let _issuer: AnyRef = r.decode()?;
    let validity: AnyRef = r.decode()?;
    let _subject: AnyRef = r.decode()?;
    let spki: AnyRef = r.decode()?;
    Ok(Tbs { validity, spki })
}

fn time_ms(t: AnyRef) -> der::Result<i64> {
    let t = match t.tag() {
        Tag::UtcTime => t.decode_as::<UtcTime>()?.to_unix_duration(),
        Tag::GeneralizedTime => t.decode_as::<GeneralizedTime>()?.to_unix_duration(),
        t => {
            return Err(der::Error::from(der::ErrorKind::TagUnexpected {
                expected: Some(Tag::UtcTime),
                actual: t,
            }))
        }
    };
    Ok(t.as_millis() as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_not_after_of_a_generated_certificate() {
        let mut params = rcgen::CertificateParams::new(vec!["links.example.com".into()]).unwrap();
        params.not_after = rcgen::date_time_ymd(2031, 5, 17);
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        // 2031-05-17T00:00:00Z
        assert_eq!(not_after(cert.der().as_ref()).unwrap(), 1_936_742_400_000);
    }

    #[test]
    fn reads_the_subject_public_key_info() {
        let params = rcgen::CertificateParams::new(vec!["mx.example.net".into()]).unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        assert_eq!(
            spki(cert.der().as_ref()).unwrap(),
            rcgen::PublicKeyData::subject_public_key_info(&key)
        );
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        assert!(not_after(b"").is_err());
        assert!(not_after(&[0x30, 0x03, 0x02, 0x01, 0x01]).is_err());
        assert!(not_after(&[0x30, 0x82, 0xff]).is_err());
        assert!(spki(b"").is_err());
        assert!(spki(&[0x30, 0x03, 0x02, 0x01, 0x01]).is_err());
    }
}
