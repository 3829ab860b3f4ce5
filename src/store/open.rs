//! Opening the configured backend: `[store] backend`.

use super::{postgres, sqlite, Result, Store, StoreError, Subscription};
use crate::config::{Config, StoreBackend};

/// The webhook subscriptions of `[[webhooks]]`: events of their types get
/// outbox rows in the same transaction.
pub fn subscriptions(config: &Config) -> Vec<Subscription> {
    config
        .webhooks
        .iter()
        .map(|w| Subscription {
            url: w.url.clone(),
            events: w.events.clone(),
            domains: w.domains.clone(),
        })
        .collect()
}

pub fn sqlite_options(config: &Config) -> sqlite::StoreOptions {
    sqlite::StoreOptions {
        webhooks: subscriptions(config),
        busy_timeout: config.store.busy_timeout,
        node_id: config.node_id(),
        ..sqlite::StoreOptions::default()
    }
}

pub fn postgres_options(config: &Config) -> Result<postgres::PgOptions> {
    Ok(postgres::PgOptions {
        url: config.store_url().map_err(StoreError::msg)?,
        pool_size: config.store.pool_size,
        ca_file: config.store.ca_file.clone(),
        node_id: config.node_id(),
        webhooks: subscriptions(config),
    })
}

impl Store {
    /// Opens the configured store for `serve`: a SQLite file is created if
    /// missing; a PostgreSQL database is migrated.
    pub async fn open_config(config: &Config) -> Result<Store> {
        match config.store.backend {
            StoreBackend::Sqlite => {
                let path = config.database_path();
                let options = sqlite_options(config);
                let db = tokio::task::spawn_blocking(move || sqlite::Sqlite::open(&path, options))
                    .await
                    .map_err(|e| StoreError::msg(format!("opening the store: {e}")))??;
                Ok(Store::from_sqlite(db))
            }
            StoreBackend::Postgres => Ok(Store::from_postgres(
                postgres::Postgres::connect(postgres_options(config)?).await?,
            )),
        }
    }

    /// Opens the configured store for an operator command: a SQLite store
    /// must already exist (only `serve` creates one, deliberately).
    pub async fn open_existing(config: &Config) -> Result<Store> {
        if config.store.backend == StoreBackend::Sqlite && !config.database_path().exists() {
            return Err(StoreError::msg(format!(
                "no database at {} (has `trackrelay serve` run with this config?)",
                config.database_path().display()
            )));
        }
        Store::open_config(config).await
    }

    /// Opens the configured store for reading only (the CLI's read
    /// commands): on SQLite, no writer thread, no migration, read-only
    /// connections, and an error rather than a new database where there is
    /// none.
    pub async fn open_read_only(config: &Config) -> Result<Store> {
        match config.store.backend {
            StoreBackend::Sqlite => Ok(Store::from_sqlite(sqlite::Sqlite::open_read_only(
                &config.database_path(),
                sqlite_options(config),
            )?)),
            StoreBackend::Postgres => Store::open_existing(config).await,
        }
    }
}

/// `trackrelay migrate`: applies the migrations the configured store
/// lacks (a SQLite store must exist) and returns where it is and its
/// schema version.
pub async fn migrate(config: &Config) -> Result<(String, usize)> {
    match config.store.backend {
        StoreBackend::Sqlite => {
            let path = config.database_path();
            let p = path.clone();
            tokio::task::spawn_blocking(move || sqlite::open_writer(&p).map(drop))
                .await
                .map_err(|e| StoreError::msg(format!("migrating: {e}")))??;
            Ok((path.display().to_string(), sqlite::schema::version()))
        }
        StoreBackend::Postgres => {
            let db = postgres::Postgres::connect(postgres_options(config)?).await?;
            super::Backend::close(&db);
            Ok(("postgres".to_string(), postgres::schema::version()))
        }
    }
}
