//! The SQLite store keeps accepted bodies in segment files beside the
//! database (`<db>-bodies/`): what the rows say, what the files hold, what
//! a restart and retention do to them, and rows from before the spool.

use rusqlite::Connection;
use std::path::Path;
use trackrelay::store::queries::PruneBatch;
use trackrelay::store::sqlite::emails::NewEmail;
use trackrelay::store::sqlite::spool;
use trackrelay::store::{Store, StoreOptions};

/// 2026-01-01T00:00:00Z
const T0: i64 = 1_767_225_600_000;
const HOUR: i64 = 3_600_000;

fn email(id: &str, created_at: i64, body: &[u8]) -> NewEmail {
    NewEmail {
        id: id.to_string(),
        created_at,
        domain: "example.com".into(),
        mail_from: "news@example.com".into(),
        header_from: Some("news@example.com".into()),
        to_header: None,
        subject: Some("hi".into()),
        message_id: None,
        tags: Vec::new(),
        auth_user: None,
        client_ip: None,
        smtputf8: false,
        received: b"Received: from test\r\n".to_vec(),
        body: body.to_vec().into(),
        recipients: vec!["ann@example.net".into()],
    }
}

/// A body of `n` bytes that differs from every other test body.
fn body(tag: u8, n: usize) -> Vec<u8> {
    let mut b = format!("Subject: {tag}\r\n\r\n").into_bytes();
    b.extend((0..n).map(|i| b'a' + ((i + tag as usize) % 26) as u8));
    b.extend_from_slice(b"\r\n");
    b
}

/// (inline body present, segment, offset) of the row.
fn row(db: &Path, id: &str) -> (bool, Option<i64>, Option<i64>) {
    Connection::open(db)
        .unwrap()
        .query_row(
            "SELECT body IS NOT NULL, body_seg, body_off FROM emails WHERE id = ?1",
            [id],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .unwrap()
}

fn segments(db: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(spool::dir_for(db))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

fn finish(db: &Path, id: &str) {
    Connection::open(db)
        .unwrap()
        .execute(
            "UPDATE recipients SET status = 'delivered', next_attempt_at = NULL WHERE email_id = ?1",
            [id],
        )
        .unwrap();
}

async fn stored(store: &Store, id: &str) -> Option<Vec<u8>> {
    store.body(id).await.unwrap().map(|b| b.body.to_vec())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_live_in_segments_beside_the_database_until_retention_empties_them() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("data/store.db");
    let (a, b, c, d) = (body(1, 70_000), body(2, 10), body(3, 5_000), body(4, 300));

    let store = Store::open(&db, StoreOptions::default()).unwrap();
    assert!(
        !spool::dir_for(&db).exists(),
        "no segment before the first body"
    );
    store.accept(email("a", T0, &a)).await.unwrap();
    store.accept(email("b", T0 + HOUR, &b)).await.unwrap();
    // The row says where; the bytes are not in it.
    assert_eq!(row(&db, "a"), (false, Some(1), Some(0)));
    assert_eq!(row(&db, "b"), (false, Some(1), Some(a.len() as i64)));
    assert_eq!(segments(&db), ["000000000001.seg"]);
    assert_eq!(
        std::fs::metadata(spool::dir_for(&db).join("000000000001.seg"))
            .unwrap()
            .len(),
        (a.len() + b.len()) as u64
    );
    assert_eq!(stored(&store, "a").await.unwrap(), a);
    let got = store.body("b").await.unwrap().unwrap();
    assert_eq!(
        (got.received.as_slice(), got.body.to_vec()),
        (&b"Received: from test\r\n"[..], b.clone())
    );
    store.close();

    // A row from before the spool keeps its body in the row; both read.
    Connection::open(&db)
        .unwrap()
        .execute(
            "UPDATE emails SET body = ?1, body_seg = NULL, body_off = NULL WHERE id = 'b'",
            [&b],
        )
        .unwrap();

    // A restart appends to a new segment, never after bytes a crash may
    // have torn.
    let store = Store::open(&db, StoreOptions::default()).unwrap();
    store.accept(email("c", T0 + 2 * HOUR, &c)).await.unwrap();
    assert_eq!(row(&db, "c"), (false, Some(2), Some(0)));
    assert_eq!(stored(&store, "b").await.unwrap(), b);
    assert_eq!(stored(&store, "c").await.unwrap(), c);

    // Retention: a and b are done and old enough, c is not old enough.
    finish(&db, "a");
    finish(&db, "b");
    finish(&db, "c");
    let batch = PruneBatch {
        bodies_before: T0 + 90 * 60_000,
        events_before: 0,
        now: T0 + 10 * HOUR,
        batch: 500,
    };
    assert_eq!(store.prune(batch).await.unwrap().bodies, 2);
    assert!(stored(&store, "a").await.is_none());
    assert!(stored(&store, "b").await.is_none());
    assert_eq!(row(&db, "a"), (false, None, None));
    assert!(store.email("a").await.unwrap().unwrap().pruned);
    assert!(!store.email("c").await.unwrap().unwrap().pruned);
    // The emptied segment goes on the next pass, not in the transaction
    // that emptied it; the one in use stays.
    assert_eq!(segments(&db), ["000000000001.seg", "000000000002.seg"]);
    assert_eq!(store.prune(batch).await.unwrap().bodies, 0);
    assert_eq!(segments(&db), ["000000000002.seg"]);
    assert_eq!(stored(&store, "c").await.unwrap(), c);

    // New bodies keep going to the active segment, after c.
    store.accept(email("d", T0 + 3 * HOUR, &d)).await.unwrap();
    assert_eq!(row(&db, "d"), (false, Some(2), Some(c.len() as i64)));
    assert_eq!(stored(&store, "d").await.unwrap(), d);
    store.close();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_segment_is_an_error_not_an_empty_body() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("store.db");
    let store = Store::open(&db, StoreOptions::default()).unwrap();
    store.accept(email("a", T0, &body(5, 100))).await.unwrap();
    std::fs::remove_dir_all(spool::dir_for(&db)).unwrap();
    let err = store.body("a").await.unwrap_err().to_string();
    assert!(err.contains("000000000001.seg"), "{err}");
    // The write into the deleted segment is refused, not acknowledged...
    let err = store
        .accept(email("b", T0, &body(6, 100)))
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("deleted or replaced"), "{err}");
    assert!(store.email("b").await.unwrap().is_none());
    // ...and the next one goes to a new segment, in a directory made again.
    store.accept(email("c", T0, &body(7, 100))).await.unwrap();
    assert_eq!(row(&db, "c"), (false, Some(2), Some(0)));
    assert_eq!(stored(&store, "c").await.unwrap(), body(7, 100));
    store.close();
}
