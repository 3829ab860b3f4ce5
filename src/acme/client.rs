//! A small ACME (RFC 8555) client: JWS ES256 on aws-lc-rs, HTTPS through
//! hyper-rustls (both already in the graph). instant-acme was the
//! candidate, but it pulls base64 0.22 beside the project's 0.23 (a new
//! duplicate) and its own HTTP stack features; the protocol subset needed
//! here (one account, HTTP-01, one name an order) is small.

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{EcdsaKeyPair, KeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine;
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::{Method, Request, StatusCode};
use hyper_util::client::legacy::{connect::HttpConnector, Client as HyperClient};
use hyper_util::rt::TokioExecutor;
use serde::Deserialize;
use serde_json::{json, Value};
use std::path::Path;
use std::sync::Mutex;
use std::time::Duration;

type Http = HyperClient<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>>;

/// Answers larger than this are not ACME objects.
const MAX_BODY: usize = 1 << 20;
/// Polls of an authorization or an order before giving up on it.
const MAX_POLLS: u32 = 60;

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Directory {
    new_nonce: String,
    new_account: String,
    new_order: String,
}

#[derive(Debug, Deserialize)]
pub struct Order {
    pub status: String,
    #[serde(default)]
    pub authorizations: Vec<String>,
    pub finalize: String,
    pub certificate: Option<String>,
    pub error: Option<Value>,
}

#[derive(Debug, Deserialize)]
pub struct Authorization {
    pub status: String,
    #[serde(default)]
    pub challenges: Vec<Challenge>,
}

#[derive(Debug, Deserialize)]
pub struct Challenge {
    #[serde(rename = "type")]
    pub kind: String,
    pub url: String,
    #[serde(default)]
    pub token: String,
    pub error: Option<Value>,
}

struct Reply {
    status: StatusCode,
    location: Option<String>,
    body: Bytes,
}

/// One account at one ACME server.
pub struct Client {
    http: Http,
    dir: Directory,
    key: EcdsaKeyPair,
    rng: SystemRandom,
    jwk: Value,
    kid: Option<String>,
    nonce: Mutex<Option<String>>,
}

/// A new P-256 account key, PKCS#8 DER.
pub fn generate_key() -> Result<Vec<u8>, String> {
    EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &SystemRandom::new())
        .map(|k| k.as_ref().to_vec())
        .map_err(|_| "generating the ACME account key failed".to_string())
}

impl Client {
    /// Reads the directory. `ca_file`: extra roots for the server's own
    /// HTTPS (a test CA), on top of the public ones.
    pub async fn connect(
        directory: &str,
        ca_file: Option<&Path>,
        key_pkcs8: &[u8],
    ) -> Result<Client, String> {
        let mut roots = rustls::RootCertStore {
            roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
        };
        if let Some(path) = ca_file {
            for c in crate::tls::load_certs(path).map_err(|e| format!("acme.ca_file: {e}"))? {
                roots
                    .add(c)
                    .map_err(|e| format!("acme.ca_file {}: {e}", path.display()))?;
            }
        }
        let tls = rustls::ClientConfig::builder_with_provider(crate::tls::provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("ACME TLS: {e}"))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_only()
            .enable_http1()
            .build();
        let http = HyperClient::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .build(https);
        let rng = SystemRandom::new();
        let key = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, key_pkcs8)
            .map_err(|e| format!("the ACME account key is unusable: {e}"))?;
        let jwk = jwk(key.public_key().as_ref())?;
        let mut client = Client {
            http,
            dir: Directory {
                new_nonce: String::new(),
                new_account: String::new(),
                new_order: String::new(),
            },
            key,
            rng,
            jwk,
            kid: None,
            nonce: Mutex::new(None),
        };
        let r = client.send(Method::GET, directory, None).await?;
        if !r.status.is_success() {
            return Err(format!("ACME directory {directory}: HTTP {}", r.status));
        }
        client.dir = serde_json::from_slice(&r.body)
            .map_err(|e| format!("ACME directory {directory}: not a directory: {e}"))?;
        Ok(client)
    }

    /// Registers the key (or finds its existing account: newAccount with
    /// a known key answers with that account, RFC 8555 7.3.1).
    pub async fn account(&mut self, contact: &[String]) -> Result<(), String> {
        let payload = json!({"termsOfServiceAgreed": true, "contact": contact});
        let url = self.dir.new_account.clone();
        let r = self.post(&url, Some(&payload)).await?;
        self.kid = Some(
            r.location
                .ok_or("ACME newAccount: no Location (account URL) in the answer")?,
        );
        Ok(())
    }

    /// The key authorization for a challenge token (RFC 8555 8.1).
    pub fn key_authorization(&self, token: &str) -> String {
        // The JWK members in lexicographic order, no spaces (RFC 7638).
        let canon = format!(
            r#"{{"crv":"P-256","kty":"EC","x":"{}","y":"{}"}}"#,
            self.jwk["x"].as_str().unwrap_or_default(),
            self.jwk["y"].as_str().unwrap_or_default()
        );
        let thumb = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, canon.as_bytes());
        format!("{token}.{}", B64.encode(thumb.as_ref()))
    }

    pub async fn new_order(&self, name: &str) -> Result<(String, Order), String> {
        let payload = json!({"identifiers": [{"type": "dns", "value": name}]});
        let r = self.post(&self.dir.new_order, Some(&payload)).await?;
        let url = r
            .location
            .ok_or("ACME newOrder: no Location in the answer")?;
        Ok((url, parse(&r.body, "order")?))
    }

    pub async fn authorization(&self, url: &str) -> Result<Authorization, String> {
        parse(&self.post(url, None).await?.body, "authorization")
    }

    /// Tells the server the challenge can be checked now.
    pub async fn ready(&self, challenge_url: &str) -> Result<(), String> {
        self.post(challenge_url, Some(&json!({}))).await.map(drop)
    }

    /// Polls until the authorization leaves `pending`; Err unless valid.
    pub async fn wait_authorization(&self, url: &str) -> Result<(), String> {
        for _ in 0..MAX_POLLS {
            let a = self.authorization(url).await?;
            match a.status.as_str() {
                "valid" => return Ok(()),
                "pending" | "processing" => {}
                other => {
                    let why = a
                        .challenges
                        .iter()
                        .find_map(|c| c.error.as_ref())
                        .map(problem)
                        .unwrap_or_default();
                    return Err(format!("authorization {other}: {why}"));
                }
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        Err("authorization still pending after a minute".into())
    }

    /// Sends the CSR and waits for the certificate chain (PEM).
    pub async fn finalize(
        &self,
        order_url: &str,
        order: &Order,
        csr: &[u8],
    ) -> Result<String, String> {
        let payload = json!({"csr": B64.encode(csr)});
        self.post(&order.finalize, Some(&payload)).await?;
        for _ in 0..MAX_POLLS {
            let o: Order = parse(&self.post(order_url, None).await?.body, "order")?;
            match (o.status.as_str(), &o.certificate) {
                ("valid", Some(cert)) => {
                    let body = self.post(cert, None).await?.body;
                    return String::from_utf8(body.to_vec())
                        .map_err(|_| "the certificate is not PEM text".to_string());
                }
                ("invalid", _) => {
                    return Err(format!(
                        "order invalid: {}",
                        o.error.as_ref().map(problem).unwrap_or_default()
                    ))
                }
                _ => tokio::time::sleep(Duration::from_secs(1)).await,
            }
        }
        Err("certificate not ready after a minute".into())
    }

    /// A signed POST (None: POST-as-GET), retried on badNonce as RFC 8555
    /// 6.5 asks; an error status becomes Err with the problem's detail.
    async fn post(&self, url: &str, payload: Option<&Value>) -> Result<Reply, String> {
        let mut last = String::new();
        for _ in 0..3 {
            let nonce = self.nonce().await?;
            let body = self.sign(url, &nonce, payload)?;
            let r = self.send(Method::POST, url, Some(body)).await?;
            if r.status.is_success() {
                return Ok(r);
            }
            let p: Value = serde_json::from_slice(&r.body).unwrap_or(Value::Null);
            last = format!("{url}: HTTP {}: {}", r.status, problem(&p));
            if p["type"] != "urn:ietf:params:acme:error:badNonce" {
                break;
            }
        }
        Err(last)
    }

    fn sign(&self, url: &str, nonce: &str, payload: Option<&Value>) -> Result<Bytes, String> {
        let mut protected = json!({"alg": "ES256", "nonce": nonce, "url": url});
        match &self.kid {
            Some(kid) => protected["kid"] = json!(kid),
            None => protected["jwk"] = self.jwk.clone(),
        }
        let protected = B64.encode(protected.to_string());
        let payload = payload
            .map(|p| B64.encode(p.to_string()))
            .unwrap_or_default();
        let sig = self
            .key
            .sign(&self.rng, format!("{protected}.{payload}").as_bytes())
            .map_err(|_| "signing an ACME request failed".to_string())?;
        let jws = json!({"protected": protected, "payload": payload, "signature": B64.encode(sig.as_ref())});
        Ok(Bytes::from(jws.to_string()))
    }

    async fn nonce(&self) -> Result<String, String> {
        if let Some(n) = self.nonce.lock().unwrap_or_else(|p| p.into_inner()).take() {
            return Ok(n);
        }
        self.send(Method::HEAD, &self.dir.new_nonce, None).await?;
        self.nonce
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
            .ok_or_else(|| "ACME newNonce: no Replay-Nonce header".to_string())
    }

    async fn send(&self, method: Method, url: &str, body: Option<Bytes>) -> Result<Reply, String> {
        let mut req = Request::builder().method(method).uri(url).header(
            hyper::header::USER_AGENT,
            concat!("trackrelay/", env!("CARGO_PKG_VERSION")),
        );
        if body.is_some() {
            req = req.header(hyper::header::CONTENT_TYPE, "application/jose+json");
        }
        let req = req
            .body(Full::new(body.unwrap_or_default()))
            .map_err(|e| format!("{url}: {e}"))?;
        let resp = tokio::time::timeout(Duration::from_secs(30), self.http.request(req))
            .await
            .map_err(|_| format!("{url}: no answer in 30s"))?
            .map_err(|e| format!("{url}: {}", crate::text::error_chain(&e)))?;
        let (parts, body) = resp.into_parts();
        let header = |name: &str| {
            parts
                .headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        };
        if let Some(n) = header("replay-nonce") {
            *self.nonce.lock().unwrap_or_else(|p| p.into_inner()) = Some(n);
        }
        let body = Limited::new(body, MAX_BODY)
            .collect()
            .await
            .map_err(|e| format!("{url}: reading the answer: {e}"))?
            .to_bytes();
        Ok(Reply {
            status: parts.status,
            location: header("location"),
            body,
        })
    }
}

fn jwk(public: &[u8]) -> Result<Value, String> {
    // Uncompressed point: 0x04 || x || y, 32 bytes each for P-256.
    if public.len() != 65 || public[0] != 4 {
        return Err("unexpected P-256 public key encoding".into());
    }
    Ok(
        json!({"crv": "P-256", "kty": "EC", "x": B64.encode(&public[1..33]), "y": B64.encode(&public[33..])}),
    )
}

fn parse<T: serde::de::DeserializeOwned>(body: &[u8], what: &str) -> Result<T, String> {
    serde_json::from_slice(body).map_err(|e| format!("ACME {what}: unexpected answer: {e}"))
}

/// An RFC 7807 problem as one line: its detail, else its type.
fn problem(p: &Value) -> String {
    let detail = p["detail"]
        .as_str()
        .or(p["type"].as_str())
        .unwrap_or("no detail");
    crate::text::printable(detail).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jwk_has_32_byte_coordinates_and_rejects_other_encodings() {
        let key = generate_key().unwrap();
        let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &key).unwrap();
        let j = jwk(pair.public_key().as_ref()).unwrap();
        assert_eq!(B64.decode(j["x"].as_str().unwrap()).unwrap().len(), 32);
        assert_eq!(B64.decode(j["y"].as_str().unwrap()).unwrap().len(), 32);
        assert!(jwk(&[4; 33]).is_err());
    }
}
