//! TLS material: loading PEM certificates and keys into rustls (aws-lc-rs is the
//! only crypto provider), and the self-signed certificate made at first
//! start when none is configured.

use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::ResolvesServerCert;
use rustls::sign::CertifiedKey;
use std::path::{Path, PathBuf};
use std::sync::Arc;

pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let pem = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let certs: Vec<_> = rustls_pemfile::certs(&mut pem.as_slice())
        .collect::<Result<_, _>>()
        .map_err(|e| format!("{}: bad PEM certificate: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("{}: no certificate found", path.display()));
    }
    Ok(certs)
}

pub fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, String> {
    let pem = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    rustls_pemfile::private_key(&mut pem.as_slice())
        .map_err(|e| format!("{}: bad PEM key: {e}", path.display()))?
        .ok_or_else(|| format!("{}: no private key found", path.display()))
}

/// A certificate chain and key ready for a resolver (SNI) or a config.
pub fn certified_key(cert: &Path, key: &Path) -> Result<Arc<CertifiedKey>, String> {
    let certs = load_certs(cert)?;
    let key = load_key(key)?;
    let signing = provider()
        .key_provider
        .load_private_key(key)
        .map_err(|e| format!("{}: unusable private key: {e}", cert.display()))?;
    Ok(Arc::new(CertifiedKey::new(certs, signing)))
}

/// A server config with TLS 1.2 and 1.3 only, for one certificate.
pub fn server_config(cert: &Path, key: &Path) -> Result<Arc<rustls::ServerConfig>, String> {
    let ck = certified_key(cert, key)?;
    server_config_with_resolver(Arc::new(rustls::sign::SingleCertAndKey::from(ck)), &[])
}

pub fn server_config_with_resolver(
    resolver: Arc<dyn ResolvesServerCert>,
    alpn: &[&[u8]],
) -> Result<Arc<rustls::ServerConfig>, String> {
    let mut config = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS setup: {e}"))?
        .with_no_client_auth()
        .with_cert_resolver(resolver);
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(Arc::new(config))
}

/// Paths of the certificate made at first start when none is configured.
pub fn self_signed_paths(data_dir: &Path) -> (PathBuf, PathBuf) {
    let dir = data_dir.join("tls");
    (
        dir.join("selfsigned-cert.pem"),
        dir.join("selfsigned-key.pem"),
    )
}

/// Makes a self-signed certificate for `hostnames` unless one exists.
/// Returns true when it was just made.
pub fn ensure_self_signed(data_dir: &Path, hostnames: &[String]) -> Result<bool, String> {
    let (cert_path, key_path) = self_signed_paths(data_dir);
    if cert_path.exists() && key_path.exists() {
        return Ok(false);
    }
    let dir = cert_path.parent().unwrap_or(data_dir);
    crate::store::create_private_dir(dir)
        .map_err(|e| format!("creating {}: {e}", dir.display()))?;
    let key = rcgen::KeyPair::generate().map_err(|e| format!("generating a TLS key: {e}"))?;
    let params = rcgen::CertificateParams::new(hostnames.to_vec())
        .map_err(|e| format!("certificate parameters: {e}"))?;
    let cert = params
        .self_signed(&key)
        .map_err(|e| format!("self-signing: {e}"))?;
    write_private(&key_path, key.serialize_pem().as_bytes())?;
    std::fs::write(&cert_path, cert.pem())
        .map_err(|e| format!("writing {}: {e}", cert_path.display()))?;
    Ok(true)
}

/// Writes a secret file readable by its owner only (created 0600, never
/// briefly world-readable).
pub fn write_private(path: &Path, contents: &[u8]) -> Result<(), String> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| format!("creating {}: {e}", path.display()))?;
    f.write_all(contents)
        .and_then(|_| f.sync_all())
        .map_err(|e| format!("writing {}: {e}", path.display()))
}

/// The negotiated protocol version as people write it (`TLSv1.3`).
pub fn version_name(v: Option<rustls::ProtocolVersion>) -> Option<String> {
    v.map(|v| match v {
        rustls::ProtocolVersion::TLSv1_2 => "TLSv1.2".to_string(),
        rustls::ProtocolVersion::TLSv1_3 => "TLSv1.3".to_string(),
        other => format!("{other:?}"),
    })
}
