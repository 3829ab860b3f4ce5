//! Response builders: JSON bodies, JSON errors, plain text.

use http_body_util::Full;
use hyper::body::Bytes;
use hyper::header::{HeaderValue, ALLOW, CACHE_CONTROL, CONTENT_TYPE, WWW_AUTHENTICATE};
use hyper::{Response, StatusCode};

pub type Reply = Response<Full<Bytes>>;

fn build(status: StatusCode, content_type: &'static str, body: Vec<u8>) -> Reply {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    let h = r.headers_mut();
    h.insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    // Operator data, possibly about people: no cache keeps a copy.
    h.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

pub fn json(status: StatusCode, v: &serde_json::Value) -> Reply {
    let mut body = v.to_string().into_bytes();
    body.push(b'\n');
    build(status, "application/json", body)
}

pub fn ok(v: &serde_json::Value) -> Reply {
    json(StatusCode::OK, v)
}

pub fn text(status: StatusCode, content_type: &'static str, body: String) -> Reply {
    build(status, content_type, body.into_bytes())
}

/// An error the client can act on: the status and a sentence saying what
/// was wrong, `{"error": "..."}`.
#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        ApiError {
            status,
            message: message.into(),
        }
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message)
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, message)
    }

    /// A failure on our side: logged with its detail, reported with it too
    /// (the API is for the operator, who needs the detail to fix it).
    pub fn internal(context: &str, e: impl std::fmt::Display) -> Self {
        tracing::error!("admin API: {context}: {e}");
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, format!("{context}: {e}"))
    }

    pub fn reply(&self) -> Reply {
        json(self.status, &serde_json::json!({ "error": self.message }))
    }
}

pub fn method_not_allowed() -> Reply {
    let mut r = ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "only GET (and HEAD) requests are served here",
    )
    .reply();
    r.headers_mut()
        .insert(ALLOW, HeaderValue::from_static("GET, HEAD"));
    r
}

/// 401 with the RFC 6750 challenge; `invalid_token` when a token was sent.
pub fn unauthorized(message: &str, token_sent: bool) -> Reply {
    let mut r = ApiError::new(StatusCode::UNAUTHORIZED, message).reply();
    let challenge = if token_sent {
        "Bearer realm=\"trackrelay\", error=\"invalid_token\""
    } else {
        "Bearer realm=\"trackrelay\""
    };
    r.headers_mut()
        .insert(WWW_AUTHENTICATE, HeaderValue::from_static(challenge));
    r
}
