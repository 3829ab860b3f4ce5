//! Query-string parameters, validated with errors that name the parameter.

use super::reply::ApiError;
use crate::events::EventType;
use std::collections::HashMap;

pub const DEFAULT_LIMIT: usize = 100;
pub const MAX_LIMIT: usize = 1000;

/// The parameters of one request. Unknown names are refused (a typo such
/// as `?sinse=` would otherwise silently widen the answer); an empty value
/// (`?type=`) counts as not given.
pub struct Params {
    values: HashMap<String, String>,
}

impl Params {
    pub fn parse(query: Option<&str>, allowed: &[&str]) -> Result<Params, ApiError> {
        let mut values = HashMap::new();
        for (name, value) in url::form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
            if !allowed.contains(&name.as_ref()) {
                let takes = if allowed.is_empty() {
                    "no parameters".to_string()
                } else {
                    allowed.join(", ")
                };
                return Err(ApiError::bad_request(format!(
                    "unknown parameter {name:?} (this endpoint takes {takes})"
                )));
            }
            if value.is_empty() {
                continue;
            }
            if values.insert(name.to_string(), value.to_string()).is_some() {
                return Err(ApiError::bad_request(format!(
                    "parameter {name:?} is given more than once"
                )));
            }
        }
        Ok(Params { values })
    }

    pub fn text(&self, name: &str) -> Option<&str> {
        self.values.get(name).map(String::as_str)
    }

    /// RFC 3339 (`2026-11-22T06:00:00Z`), a date, or a duration back from
    /// now (`24h`, `7d`), as the CLI takes them; unix ms.
    pub fn time(&self, name: &str) -> Result<Option<i64>, ApiError> {
        self.text(name)
            .map(|s| {
                crate::time::parse_time(s).ok_or_else(|| {
                    ApiError::bad_request(format!(
                        "{name}: {s:?} is not a time (RFC 3339 like 2026-11-22T06:00:00Z, a date like 2026-11-22, or a duration back from now like 24h)"
                    ))
                })
            })
            .transpose()
    }

    /// 1..=1000, 100 when not given.
    pub fn limit(&self) -> Result<usize, ApiError> {
        let Some(s) = self.text("limit") else {
            return Ok(DEFAULT_LIMIT);
        };
        match s.parse::<usize>() {
            Ok(n) if (1..=MAX_LIMIT).contains(&n) => Ok(n),
            _ => Err(ApiError::bad_request(format!(
                "limit: {s:?} is not a number from 1 to {MAX_LIMIT}"
            ))),
        }
    }

    /// An event id to page from, as given in `next_after`.
    pub fn after(&self) -> Result<Option<i64>, ApiError> {
        self.text("after")
            .map(|s| {
                s.parse::<i64>().ok().filter(|n| *n >= 0).ok_or_else(|| {
                    ApiError::bad_request(format!(
                        "after: {s:?} is not an event id (take it from next_after)"
                    ))
                })
            })
            .transpose()
    }

    /// `email.opened` or `opened`; the stored name.
    pub fn event_type(&self) -> Result<Option<String>, ApiError> {
        self.text("type")
            .map(|s| {
                EventType::parse(s)
                    .map(|t| t.as_str().to_string())
                    .ok_or_else(|| {
                        let names: Vec<&str> = EventType::ALL.iter().map(|t| t.as_str()).collect();
                        ApiError::bad_request(format!(
                            "type: {s:?} is not an event type (one of {})",
                            names.join(", ")
                        ))
                    })
            })
            .transpose()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EVENTS: &[&str] = &["type", "since", "until", "limit", "after"];

    fn err(q: &str) -> String {
        let p = match Params::parse(Some(q), EVENTS) {
            Ok(p) => p,
            Err(e) => return e.message,
        };
        let checks = [
            p.time("since").err(),
            p.time("until").err(),
            p.limit().err(),
            p.after().err(),
            p.event_type().err(),
        ];
        checks
            .into_iter()
            .flatten()
            .next()
            .map(|e| e.message)
            .unwrap_or_default()
    }

    #[test]
    fn valid_parameters() {
        let p = Params::parse(
            Some("type=opened&since=1970-01-01T00:00:01Z&limit=5&after=7&until="),
            EVENTS,
        )
        .unwrap();
        assert_eq!(p.event_type().unwrap().as_deref(), Some("email.opened"));
        assert_eq!(p.time("since").unwrap(), Some(1000));
        assert_eq!(p.time("until").unwrap(), None);
        assert_eq!(p.limit().unwrap(), 5);
        assert_eq!(p.after().unwrap(), Some(7));
        let p = Params::parse(None, EVENTS).unwrap();
        assert_eq!(p.limit().unwrap(), DEFAULT_LIMIT);
    }

    #[test]
    fn errors_name_the_parameter() {
        assert!(
            err("since=yesterday-ish").starts_with("since:"),
            "{}",
            err("since=x")
        );
        assert!(err("until=13/13/2026").starts_with("until:"));
        assert!(err("limit=0").starts_with("limit:"));
        assert!(err("limit=1001").starts_with("limit:"));
        assert!(err("limit=ten").starts_with("limit:"));
        assert!(err("after=-1").starts_with("after:"));
        assert!(err("type=email.nope").starts_with("type:"));
        assert!(err("sinse=1h").contains("\"sinse\""));
        assert!(err("limit=1&limit=2").contains("more than once"));
    }
}
