//! `GET /v1/tls-reports?day=&domain=&limit=`: the TLS reports (RFC 8460)
//! of outbound deliveries, one object per policy domain and UTC day, with
//! the fields of `trackrelay tls-reports list --json`, newest day first.

use super::params::Params;
use super::reply::{self, ApiError, Reply};
use super::Api;
use crate::outbound::tls_report::check_day;
use serde_json::json;

pub async fn list(api: &Api, query: Option<&str>) -> Result<Reply, ApiError> {
    let p = Params::parse(query, &["day", "domain", "limit"])?;
    let day = p
        .text("day")
        .map(check_day)
        .transpose()
        .map_err(|e| ApiError::bad_request(format!("day: {e}")))?;
    let domain = p
        .text("domain")
        .map(|d| d.trim().trim_end_matches('.').to_ascii_lowercase());
    let limit = p.limit()?;
    let rows = api
        .store
        .tls_report_list(day.as_deref(), domain.as_deref(), limit)
        .await
        .map_err(|e| ApiError::internal("reading TLS reports from the store", e))?;
    let data: Vec<_> = rows.iter().map(|r| r.to_json()).collect();
    Ok(reply::ok(&json!({ "data": data })))
}
