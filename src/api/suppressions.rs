//! `/v1/suppressions`: the API's first write endpoints. They sit behind the
//! same admin token as every other path: whoever may read the API may
//! change the list (there is one token, and no read-only one).

use super::params::Params;
use super::reply::{self, ApiError, Reply};
use super::Api;
use crate::store;
use crate::store::feedback::{self as sup, check_address, check_domain, check_reason};
use base64::Engine;
use hyper::StatusCode;
use serde_json::{json, Value};

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::URL_SAFE_NO_PAD;

/// The paging cursor: the last row's key, opaque to clients.
fn cursor(s: &sup::Suppression) -> String {
    B64.encode(format!(
        "{}\n{}",
        s.address,
        s.domain.as_deref().unwrap_or("")
    ))
}

fn parse_cursor(raw: &str) -> Result<(String, String), ApiError> {
    B64.decode(raw)
        .ok()
        .and_then(|b| String::from_utf8(b).ok())
        .and_then(|s| {
            s.split_once('\n')
                .map(|(a, d)| (a.to_string(), d.to_string()))
        })
        .ok_or_else(|| {
            ApiError::bad_request(format!(
                "after: {raw:?} is not a cursor (take it from next_after)"
            ))
        })
}

/// `GET /v1/suppressions?domain=&limit=&after=`: in address order,
/// `{"data": [...], "next_after": cursor|null}` like `/v1/events`.
pub async fn list(api: &Api, query: Option<&str>) -> Result<Reply, ApiError> {
    let p = Params::parse(query, &["domain", "limit", "after"])?;
    let domain = p
        .text("domain")
        .map(check_domain)
        .transpose()
        .map_err(|e| ApiError::bad_request(format!("domain: {e}")))?;
    let limit = p.limit()?;
    let after = p.text("after").map(parse_cursor).transpose()?;
    let mut rows = api
        .store
        .suppressions(domain.as_deref(), after, limit + 1)
        .await
        .map_err(|e| ApiError::internal("reading suppressions from the store", e))?;
    let more = rows.len() > limit;
    rows.truncate(limit);
    let next_after = if more { rows.last().map(cursor) } else { None };
    Ok(reply::ok(&json!({
        "data": rows.iter().map(sup::Suppression::to_json).collect::<Vec<_>>(),
        "next_after": next_after,
    })))
}

/// `POST /v1/suppressions` with `{"address", "domain"?, "reason"?}`
/// (reason `manual` by default): 201 when added, 200 when the address was
/// already suppressed in that scope (the first entry is kept).
pub async fn add(api: &Api, query: Option<&str>, body: &[u8]) -> Result<Reply, ApiError> {
    Params::parse(query, &[])?;
    let v: Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("the body is not JSON: {e}")))?;
    let Some(obj) = v.as_object() else {
        return Err(ApiError::bad_request("the body must be a JSON object"));
    };
    for k in obj.keys() {
        if !["address", "domain", "reason"].contains(&k.as_str()) {
            return Err(ApiError::bad_request(format!(
                "unknown field {k:?} (this endpoint takes address, domain, reason)"
            )));
        }
    }
    let text = |k: &str| -> Result<Option<&str>, ApiError> {
        match obj.get(k) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.as_str())),
            Some(_) => Err(ApiError::bad_request(format!("{k}: must be a string"))),
        }
    };
    let address = text("address")?
        .ok_or_else(|| ApiError::bad_request("address: missing"))
        .and_then(|a| {
            check_address(a).map_err(|e| ApiError::bad_request(format!("address: {e}")))
        })?;
    let domain = text("domain")?
        .map(check_domain)
        .transpose()
        .map_err(|e| ApiError::bad_request(format!("domain: {e}")))?;
    let reason = text("reason")?
        .map(check_reason)
        .transpose()
        .map_err(|e| ApiError::bad_request(format!("reason: {e}")))?
        .unwrap_or(sup::Reason::Manual);
    let entry = sup::Suppression {
        address,
        domain,
        reason: reason.as_str().into(),
        event_id: None,
        created_at: store::now_ms(),
        expires_at: None,
    };
    let added = api
        .store
        .add_suppression(entry.clone())
        .await
        .map_err(|e| ApiError::internal("adding the suppression", e))?;
    let mut v = entry.to_json();
    v["added"] = json!(added);
    let status = if added {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok(reply::json(status, &v))
}

/// `DELETE /v1/suppressions/{address}?domain=`: removes the every-domain
/// entry, or the one for `domain`; 404 when there is none.
pub async fn remove(api: &Api, raw: &str, query: Option<&str>) -> Result<Reply, ApiError> {
    let p = Params::parse(query, &["domain"])?;
    let decoded = percent_encoding::percent_decode_str(raw)
        .decode_utf8()
        .map_err(|_| ApiError::bad_request("the address in the path is not UTF-8"))?;
    let address = check_address(&decoded).map_err(ApiError::bad_request)?;
    let domain = p
        .text("domain")
        .map(check_domain)
        .transpose()
        .map_err(|e| ApiError::bad_request(format!("domain: {e}")))?;
    let removed = api
        .store
        .remove_suppression(&address, domain.as_deref())
        .await
        .map_err(|e| ApiError::internal("removing the suppression", e))?;
    let scope = domain.as_deref().unwrap_or("every domain");
    if removed {
        Ok(reply::ok(
            &json!({ "address": address, "domain": domain, "removed": true }),
        ))
    } else {
        Err(ApiError::not_found(format!(
            "{address} is not suppressed for {scope}"
        )))
    }
}
