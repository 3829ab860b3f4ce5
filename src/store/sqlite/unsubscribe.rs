//! An unsubscribe request for one recipient of one email, however it came
//! (the one-click POST, the confirmation page's button, mail to the
//! `unsubscribe+{token}` address): one `email.unsubscribed` event, and the
//! address on the sending domain's suppression list, linked to that event.
//!
//! Idempotent per recipient of an email: mail clients retry a POST, users
//! click twice, and a mailto request may come on top of a POST; only the
//! first one is an event. A repeat still puts the address back on the list
//! if it has been removed since: the recipient asked again.

use super::suppressions::{self, Reason, Suppression};
use super::Tx;
use crate::events::{EventType, NewEvent};
use rusqlite::{params, OptionalExtension};
use serde_json::json;

pub use crate::store::tracking::{
    UnsubscribeOutcome as Outcome, UnsubscribeRequest as Request, Via,
};

/// Records `req` in the caller's transaction. `suppresses` says, for a
/// sending domain (lowercased), whether its `suppress_on` has
/// `unsubscribe`.
pub fn unsubscribe(
    tx: &Tx<'_>,
    req: &Request,
    suppresses: &dyn Fn(&str) -> bool,
) -> rusqlite::Result<Outcome> {
    let Some((address, domain)) = suppressions::recipient_scope(tx, &req.email_id, req.rcpt_idx)?
    else {
        return Ok(Outcome::UnknownRecipient);
    };
    let suppress = suppresses(&domain);
    let earlier: Option<i64> = tx
        .prepare_cached(
            "SELECT id FROM events WHERE email_id = ?1 AND rcpt_idx = ?2 AND type = ?3
             ORDER BY id LIMIT 1",
        )?
        .query_row(
            params![req.email_id, req.rcpt_idx, EventType::Unsubscribed.as_str()],
            |r| r.get(0),
        )
        .optional()?;
    if let Some(event_id) = earlier {
        let suppression_added =
            suppress && suppressions::add(tx, &entry(&address, &domain, event_id, req.at))?;
        return Ok(Outcome::Repeated {
            event_id,
            suppression_added,
        });
    }
    let mut ev = NewEvent::new(req.email_id.clone(), EventType::Unsubscribed, req.at);
    ev.rcpt_idx = Some(req.rcpt_idx);
    ev.ip = req.ip.clone();
    ev.user_agent = req.user_agent.clone();
    ev.detail = Some(json!({
        "via": req.via.as_str(),
        "domain": domain,
        "suppressed": suppress,
    }));
    let event_id = super::events::insert(tx, &ev)?;
    let suppression_added =
        suppress && suppressions::add(tx, &entry(&address, &domain, event_id, req.at))?;
    Ok(Outcome::Unsubscribed {
        event_id,
        address,
        domain,
        suppression_added,
    })
}

fn entry(address: &str, domain: &str, event_id: i64, at: i64) -> Suppression {
    Suppression {
        address: address.to_owned(),
        domain: Some(domain.to_owned()),
        reason: Reason::Unsubscribe.as_str().into(),
        event_id: Some(event_id),
        created_at: at,
        expires_at: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rusqlite::Connection;

    fn db() -> Connection {
        let mut conn = Connection::open_in_memory().unwrap();
        crate::store::sqlite::schema::migrate(&mut conn).unwrap();
        conn
    }

    fn seed(conn: &Connection) {
        conn.execute_batch(
            "INSERT INTO emails (id, created_at, domain, mail_from, size)
               VALUES ('e1', 1, 'Example.COM', 'news@example.com', 0);
             INSERT INTO recipients (email_id, idx, address, status)
               VALUES ('e1', 0, 'Bob@Example.NET', 'delivered');",
        )
        .unwrap();
    }

    fn req(via: Via, at: i64) -> Request {
        Request {
            email_id: "e1".into(),
            rcpt_idx: 0,
            via,
            at,
            ip: Some("127.0.0.1".into()),
            user_agent: None,
        }
    }

    fn run(conn: &mut Connection, r: &Request, suppress: bool) -> Outcome {
        let t = conn.transaction().unwrap();
        let out = unsubscribe(&Tx::new(&t, &[]), r, &|d: &str| {
            assert_eq!(d, "example.com", "the domain comes lowercased");
            suppress
        })
        .unwrap();
        t.commit().unwrap();
        out
    }

    fn count(conn: &Connection, sql: &str) -> i64 {
        conn.query_row(sql, [], |r| r.get(0)).unwrap()
    }

    #[test]
    fn first_request_suppresses_and_links_its_event_repeat_adds_nothing() {
        let mut conn = db();
        seed(&conn);
        let Outcome::Unsubscribed {
            event_id,
            address,
            domain,
            suppression_added: true,
        } = run(&mut conn, &req(Via::OneClick, 100), true)
        else {
            panic!("not unsubscribed");
        };
        assert_eq!(
            (address.as_str(), domain.as_str()),
            ("bob@example.net", "example.com")
        );
        let (reason, scope, linked): (String, String, i64) = conn
            .query_row(
                "SELECT reason, scope, event_id FROM suppressions",
                [],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .unwrap();
        assert_eq!(
            (reason.as_str(), scope.as_str(), linked),
            ("unsubscribe", "example.com", event_id)
        );
        let (recipient, detail): (String, String) = conn
            .query_row(
                "SELECT recipient, detail FROM events WHERE id = ?1",
                [event_id],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .unwrap();
        assert_eq!(recipient, "Bob@Example.NET");
        let detail: serde_json::Value = serde_json::from_str(&detail).unwrap();
        assert_eq!(detail["via"], "one_click");
        assert_eq!(detail["suppressed"], true);

        assert_eq!(
            run(&mut conn, &req(Via::Mailto, 200), true),
            Outcome::Repeated {
                event_id,
                suppression_added: false
            }
        );
        assert_eq!(count(&conn, "SELECT count(*) FROM events"), 1);
        assert_eq!(count(&conn, "SELECT count(*) FROM suppressions"), 1);
        // Removed by the operator, asked again: back on the list, still one event.
        conn.execute("DELETE FROM suppressions", []).unwrap();
        assert_eq!(
            run(&mut conn, &req(Via::Page, 300), true),
            Outcome::Repeated {
                event_id,
                suppression_added: true
            }
        );
        assert_eq!(count(&conn, "SELECT count(*) FROM events"), 1);
    }

    #[test]
    fn without_suppress_on_unsubscribe_only_the_event() {
        let mut conn = db();
        seed(&conn);
        let out = run(&mut conn, &req(Via::Page, 100), false);
        assert!(matches!(
            out,
            Outcome::Unsubscribed {
                suppression_added: false,
                ..
            }
        ));
        assert_eq!(count(&conn, "SELECT count(*) FROM suppressions"), 0);
        assert_eq!(
            count(
                &conn,
                "SELECT count(*) FROM events WHERE type = 'email.unsubscribed'"
            ),
            1
        );
    }

    #[test]
    fn an_unknown_recipient_writes_nothing() {
        let mut conn = db();
        seed(&conn);
        let mut r = req(Via::OneClick, 100);
        r.rcpt_idx = 7;
        assert_eq!(run(&mut conn, &r, true), Outcome::UnknownRecipient);
        r.email_id = "nope".into();
        assert_eq!(run(&mut conn, &r, true), Outcome::UnknownRecipient);
        assert_eq!(count(&conn, "SELECT count(*) FROM events"), 0);
        assert_eq!(count(&conn, "SELECT count(*) FROM suppressions"), 0);
    }
}
