//! The PostgreSQL backend's own upkeep, against a real server: migrations
//! that several nodes may run at once, health, and what a bad URL says.

mod support;

use support::postgres;
use trackrelay::store::postgres::{PgOptions, Postgres};
use trackrelay::store::Store;

fn options(url: &str, node: &str) -> PgOptions {
    PgOptions {
        url: url.to_string(),
        pool_size: 4,
        ca_file: None,
        node_id: node.to_string(),
        webhooks: Vec::new(),
    }
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

#[test]
fn four_nodes_migrating_at_once_apply_each_migration_once() {
    if !postgres::available("four_nodes_migrating_at_once_apply_each_migration_once") {
        return;
    }
    let url = postgres::url();
    let stores = rt().block_on(async {
        let connects = (0..4).map(|i| Postgres::connect(options(&url, &format!("node-{i}"))));
        futures_join(connects.collect()).await
    });
    let versions = postgres::query(
        &url,
        "SELECT version FROM trackrelay_schema ORDER BY version",
    );
    let expected: Vec<String> = (1..=trackrelay::store::postgres::schema::version())
        .map(|v| v.to_string())
        .collect();
    assert_eq!(versions.lines().collect::<Vec<_>>(), expected);
    let rt = rt();
    for (i, s) in stores.into_iter().enumerate() {
        let s = Store::from_postgres(s.expect("every node connects"));
        assert_eq!(s.node_id(), format!("node-{i}"));
        assert_eq!(s.kind(), "postgres");
        rt.block_on(s.health()).expect("healthy");
        s.close();
    }
}

/// Runs the futures concurrently on the current runtime.
async fn futures_join<F, T>(futs: Vec<F>) -> Vec<T>
where
    F: std::future::Future<Output = T> + Send + 'static,
    T: Send + 'static,
{
    let handles: Vec<_> = futs.into_iter().map(tokio::spawn).collect();
    let mut out = Vec::new();
    for h in handles {
        out.push(h.await.unwrap());
    }
    out
}

#[test]
fn a_newer_schema_is_refused_and_health_names_the_version() {
    if !postgres::available("a_newer_schema_is_refused_and_health_names_the_version") {
        return;
    }
    let url = postgres::url();
    let rt = rt();
    let store = Store::from_postgres(rt.block_on(Postgres::connect(options(&url, "a"))).unwrap());
    postgres::query(&url, "INSERT INTO trackrelay_schema VALUES (9999, 0)");
    let err = rt.block_on(store.health()).expect_err("wrong schema");
    assert!(err.to_string().contains("schema version 9999"), "{err}");
    let err = rt
        .block_on(Postgres::connect(options(&url, "b")))
        .err()
        .expect("an older node refuses a newer schema");
    assert!(
        err.to_string().contains("newer than this trackrelay"),
        "{err}"
    );
    store.close();
}

#[test]
fn a_bad_url_is_named_without_its_password() {
    let err = rt()
        .block_on(Postgres::connect(options(
            "postgres://u:s3cret@127.0.0.1:1/db?sslmode=bogus",
            "a",
        )))
        .err()
        .expect("refused");
    let text = err.to_string();
    assert!(text.contains("store.url"), "{text}");
    assert!(!text.contains("s3cret"), "the password leaked: {text}");
}
