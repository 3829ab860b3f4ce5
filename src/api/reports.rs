//! `GET /v1/reports/{id}`: a report the return-path MX received, for the
//! operator who wants to read the bounce or complaint an event names
//! (`detail.bounce.report_id`, `detail.report_id`).

use super::params::Params;
use super::reply::{self, ApiError, Reply};
use super::Api;
use base64::Engine;

/// The metadata (`id, received_at, peer_ip, helo, mail_from, rcpt_to,
/// size, processed_at, kind, outcome`) and `raw`, the message as text. A
/// message that is not UTF-8 also comes whole as `raw_base64`, since the
/// text then has replacement characters.
pub async fn show(api: &Api, raw_id: &str, query: Option<&str>) -> Result<Reply, ApiError> {
    Params::parse(query, &[])?;
    let id: i64 = raw_id
        .parse()
        .ok()
        .filter(|n| *n > 0)
        .ok_or_else(|| ApiError::bad_request(format!("{raw_id:?} is not a report id")))?;
    let Some(r) = api
        .store
        .report(id)
        .await
        .map_err(|e| ApiError::internal("reading the report from the store", e))?
    else {
        return Err(ApiError::not_found(format!(
            "no report with id {id} (reports that named no email are not kept)"
        )));
    };
    let mut v = r.metadata_json();
    match std::str::from_utf8(&r.raw) {
        Ok(text) => v["raw"] = text.into(),
        Err(_) => {
            v["raw"] = String::from_utf8_lossy(&r.raw).into_owned().into();
            v["raw_base64"] = base64::engine::general_purpose::STANDARD
                .encode(&r.raw)
                .into();
        }
    }
    Ok(reply::ok(&v))
}
