//! Pieces of SQL the store's queries share: a `WHERE` clause built from the
//! filters actually given, and the event columns.
//!
//! Why a builder: an optional filter written `(?1 IS NULL OR col = ?1)`
//! is one statement for every combination, so SQLite plans it once without
//! knowing which filters are set, and can use no index for any of them.

use crate::events::StoredEvent;
use rusqlite::types::Value;
use rusqlite::Row;
use std::sync::LazyLock;

/// A query with its `WHERE` clause made of the filters given, and the
/// values bound to its `?` placeholders in order.
#[derive(Debug, Clone, Default)]
pub struct Where {
    clauses: Vec<&'static str>,
    params: Vec<Value>,
    sql: String,
}

impl Where {
    /// Adds `clause` (with one `?`) bound to `value`.
    pub fn and(&mut self, clause: &'static str, value: impl Into<Value>) {
        self.clauses.push(clause);
        self.params.push(value.into());
    }

    /// Binds one more value, for a placeholder in the text after the clause
    /// (a `LIMIT ?`).
    pub fn bind(&mut self, value: impl Into<Value>) {
        self.params.push(value.into());
    }

    /// The full statement: `head WHERE ... tail`.
    pub fn wrap(mut self, head: &str, tail: &str) -> Where {
        let mut sql = head.to_string();
        if !self.clauses.is_empty() {
            sql.push_str(" WHERE ");
            sql.push_str(&self.clauses.join(" AND "));
        }
        if !tail.is_empty() {
            sql.push(' ');
            sql.push_str(tail);
        }
        self.sql = sql;
        self
    }

    pub fn sql(&self) -> &str {
        &self.sql
    }

    pub fn params(&self) -> rusqlite::ParamsFromIter<std::slice::Iter<'_, Value>> {
        rusqlite::params_from_iter(self.params.iter())
    }
}

pub use crate::store::queries::EVENT_FIELDS;

/// `SELECT` list for `event_from_row`: the fields, then `detail`.
pub static EVENT_COLUMNS: LazyLock<String> =
    LazyLock::new(|| format!("{}, detail", EVENT_FIELDS.join(", ")));

pub fn event_from_row(r: &Row<'_>) -> rusqlite::Result<StoredEvent> {
    let detail: Option<String> = r.get(11)?;
    Ok(StoredEvent {
        id: r.get(0)?,
        email_id: r.get(1)?,
        kind: r.get(2)?,
        recipient: r.get(3)?,
        at: r.get(4)?,
        ip: r.get(5)?,
        user_agent: r.get(6)?,
        referer: r.get(7)?,
        link: r.get(8)?,
        machine: r.get(9)?,
        machine_reason: r.get(10)?,
        detail: detail.and_then(|d| serde_json::from_str(&d).ok()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_given_filters_reach_the_statement() {
        let w = Where::default().wrap("SELECT 1 FROM t", "LIMIT 5");
        assert_eq!(w.sql(), "SELECT 1 FROM t LIMIT 5");
        let mut w = Where::default();
        w.and("a = ?", 1);
        w.and("b < ?", "x".to_string());
        w.bind(10);
        let w = w.wrap("SELECT 1 FROM t", "LIMIT ?");
        assert_eq!(w.sql(), "SELECT 1 FROM t WHERE a = ? AND b < ? LIMIT ?");
        assert_eq!(w.params.len(), 3);
    }

    #[test]
    fn event_columns_follow_the_contract_order() {
        let mut c = rusqlite::Connection::open_in_memory().unwrap();
        super::super::schema::migrate(&mut c).unwrap();
        let stmt = c
            .prepare(&format!("SELECT {} FROM events", *EVENT_COLUMNS))
            .unwrap();
        let names: Vec<&str> = stmt.column_names().collect();
        assert_eq!(&names[..11], &EVENT_FIELDS);
        assert_eq!(names[11], "detail");
    }
}
