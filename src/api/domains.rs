//! `GET /v1/domains` and `GET /v1/domains/{name}`: each configured domain's
//! verification status as the background checker stored it, its records
//! (expected against found), and the tracking host in use and why. The
//! shapes are `crate::domains::view`'s.

use super::params::Params;
use super::reply::{self, ApiError, Reply};
use super::Api;
use crate::domains::view;
use serde_json::json;

/// Status changes shown for one domain (newest first).
const HISTORY_LIMIT: usize = 100;

/// `{"data": [domain, ...]}`, in config order, without history.
pub async fn list(api: &Api, query: Option<&str>) -> Result<Reply, ApiError> {
    Params::parse(query, &[])?;
    let rows = api
        .store
        .domain_statuses()
        .await
        .map_err(|e| ApiError::internal("reading domain statuses from the store", e))?;
    let data: Vec<_> = api
        .domains
        .iter()
        .map(|d| {
            let row = rows.iter().find(|r| r.domain.eq_ignore_ascii_case(&d.name));
            view::domain_json(d, row, None)
        })
        .collect();
    Ok(reply::ok(&json!({ "data": data })))
}

/// One domain with its history; 404 for a name that is not configured.
pub async fn show(api: &Api, raw: &str, query: Option<&str>) -> Result<Reply, ApiError> {
    Params::parse(query, &[])?;
    let name = percent_encoding::percent_decode_str(raw).decode_utf8_lossy();
    let Some(d) = api
        .domains
        .iter()
        .find(|d| d.name.eq_ignore_ascii_case(&name))
    else {
        return Err(ApiError::not_found(format!(
            "{name:?} is not a configured [[domains]] entry"
        )));
    };
    let key = d.name.to_ascii_lowercase();
    let failed = |e| ApiError::internal("reading the domain status from the store", e);
    let row = api.store.domain_status(&key).await.map_err(failed)?;
    let history = api
        .store
        .domain_history(&key, HISTORY_LIMIT)
        .await
        .map_err(failed)?;
    Ok(reply::ok(&view::domain_json(
        d,
        row.as_ref(),
        Some(&history),
    )))
}
