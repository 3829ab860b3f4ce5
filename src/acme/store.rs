//! ACME files in `data_dir/acme/` (directory 0700, files 0600): the
//! account key, and per name its certificate chain, its key and the last
//! failure (read by dns-check, which runs in another process).

use rustls::sign::CertifiedKey;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// A certificate ready to serve, with its validity in Unix milliseconds.
#[derive(Debug, Clone)]
pub struct Issued {
    pub key: Arc<CertifiedKey>,
    pub not_before: i64,
    pub not_after: i64,
}

impl Issued {
    /// Two thirds into the lifetime, as Let's Encrypt recommends.
    pub fn renew_at(&self) -> i64 {
        self.not_before + (self.not_after - self.not_before) * 2 / 3
    }
}

fn dir(data_dir: &Path) -> PathBuf {
    data_dir.join("acme")
}

fn file(data_dir: &Path, host: &str, ext: &str) -> PathBuf {
    // Names come from the config, validated as host names: no '/' or "..".
    dir(data_dir).join(format!("{}.{ext}", host.to_ascii_lowercase()))
}

/// The account key (PKCS#8 DER), made and saved on first use.
pub fn account_key(data_dir: &Path) -> Result<Vec<u8>, String> {
    let path = dir(data_dir).join("account.key");
    match std::fs::read(&path) {
        Ok(k) => return Ok(k),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(format!("reading {}: {e}", path.display())),
    }
    let key = super::client::generate_key()?;
    replace(&path, &key)?;
    Ok(key)
}

/// Saves a new certificate and its key over any previous ones.
pub fn save(data_dir: &Path, host: &str, chain_pem: &str, key_pem: &str) -> Result<(), String> {
    replace(&file(data_dir, host, "key.pem"), key_pem.as_bytes())?;
    replace(&file(data_dir, host, "crt.pem"), chain_pem.as_bytes())?;
    let _ = std::fs::remove_file(file(data_dir, host, "error"));
    Ok(())
}

/// The certificate saved for `host`, if any.
pub fn load(data_dir: &Path, host: &str) -> Result<Option<Issued>, String> {
    let cert = file(data_dir, host, "crt.pem");
    if !cert.exists() {
        return Ok(None);
    }
    let key = crate::tls::certified_key(&cert, &file(data_dir, host, "key.pem"))?;
    let (not_before, not_after) = validity_of(&key)?;
    Ok(Some(Issued {
        key,
        not_before,
        not_after,
    }))
}

/// (notBefore, notAfter) of the saved certificate, if any.
pub fn read_validity(data_dir: &Path, host: &str) -> Result<Option<(i64, i64)>, String> {
    let path = file(data_dir, host, "crt.pem");
    if !path.exists() {
        return Ok(None);
    }
    let certs = crate::tls::load_certs(&path)?;
    crate::cert::validity(certs[0].as_ref()).map(Some)
}

/// (notBefore, notAfter) of a DER certificate, Unix milliseconds.
pub fn cert_validity(der: &[u8]) -> Result<(i64, i64), String> {
    crate::cert::validity(der)
}

pub fn validity_of(key: &CertifiedKey) -> Result<(i64, i64), String> {
    let leaf = key.cert.first().ok_or("empty certificate chain")?;
    crate::cert::validity(leaf.as_ref())
}

pub fn save_last_error(data_dir: &Path, host: &str, error: &str) {
    let _ = replace(&file(data_dir, host, "error"), error.as_bytes());
}

pub fn read_last_error(data_dir: &Path, host: &str) -> Option<String> {
    let text = std::fs::read_to_string(file(data_dir, host, "error")).ok()?;
    Some(crate::text::printable(text.trim()).into_owned())
}

/// Writes through a temporary file and a rename, so a reader (or a crash)
/// never sees half a file; created 0600, never briefly readable by others.
fn replace(path: &Path, contents: &[u8]) -> Result<(), String> {
    let parent = path.parent().unwrap_or(Path::new("."));
    crate::store::create_private_dir(parent)
        .map_err(|e| format!("creating {}: {e}", parent.display()))?;
    let tmp = path.with_extension("tmp");
    let _ = std::fs::remove_file(&tmp);
    crate::tls::write_private(&tmp, contents)?;
    std::fs::rename(&tmp, path).map_err(|e| format!("renaming to {}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn files_are_private_and_replaced_whole() {
        let dir = tempfile::tempdir().unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(vec!["t.example.com".into()]).unwrap();
        params.not_before = rcgen::date_time_ymd(2030, 1, 1);
        params.not_after = rcgen::date_time_ymd(2030, 4, 1);
        let cert = params.self_signed(&key).unwrap();
        save(
            dir.path(),
            "T.example.com",
            &cert.pem(),
            &key.serialize_pem(),
        )
        .unwrap();
        save(
            dir.path(),
            "t.example.com",
            &cert.pem(),
            &key.serialize_pem(),
        )
        .unwrap();
        for f in ["t.example.com.crt.pem", "t.example.com.key.pem"] {
            let mode = std::fs::metadata(dir.path().join("acme").join(f))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600, "{f}");
        }
        let dmode = std::fs::metadata(dir.path().join("acme"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(dmode & 0o777, 0o700);
        let issued = load(dir.path(), "t.example.com").unwrap().unwrap();
        // 2030-01-01 + 2/3 of 90 days = 2030-03-02.
        assert_eq!(issued.not_before, 1_893_456_000_000);
        assert_eq!(issued.renew_at(), 1_893_456_000_000 + 60 * 86_400_000);
        assert!(load(dir.path(), "other.example.com").unwrap().is_none());
        let k1 = account_key(dir.path()).unwrap();
        assert_eq!(account_key(dir.path()).unwrap(), k1, "loaded, not remade");
    }
}
