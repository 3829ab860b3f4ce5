//! `trackrelay migrate` and `trackrelay store copy`.

use super::CliResult;
use crate::config::{Config, StoreBackend};
use crate::store::{self, postgres, sqlite};
use std::path::{Path, PathBuf};

/// Applies the migrations the configured store lacks and says where it is.
pub fn migrate(config: &Config) -> CliResult {
    match config.store.backend {
        StoreBackend::Sqlite => {
            let path = config.database_path();
            sqlite::open_writer(&path).map_err(|e| e.to_string())?;
            println!(
                "{}: schema version {}",
                path.display(),
                sqlite::schema::version()
            );
        }
        StoreBackend::Postgres => {
            let options = store::open::postgres_options(config).map_err(|e| e.to_string())?;
            let rt = runtime()?;
            rt.block_on(async {
                let db = postgres::Postgres::connect(options).await?;
                store::Backend::close(&db);
                Ok::<_, store::StoreError>(())
            })
            .map_err(|e| e.to_string())?;
            println!("postgres: schema version {}", postgres::schema::version());
        }
    }
    Ok(())
}

fn runtime() -> Result<tokio::runtime::Runtime, String> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("starting a runtime: {e}"))
}

/// Where `--from` points: a SQLite file.
fn sqlite_source(arg: &str) -> Result<PathBuf, String> {
    let path = arg.strip_prefix("sqlite:").unwrap_or(arg);
    if path.is_empty() || path.starts_with("postgres") {
        return Err(format!(
            "--from: {arg:?} is not a SQLite store (sqlite:PATH); only SQLite -> PostgreSQL copies are supported"
        ));
    }
    Ok(PathBuf::from(path))
}

/// Where `--to` points: a PostgreSQL URL, or (without `--to`) the store
/// of `--config`, so the password can stay in `store.url_file`.
fn postgres_target(
    arg: Option<&str>,
    config: Option<&Config>,
) -> Result<(String, Option<PathBuf>), String> {
    match arg {
        Some(a) => {
            let url = a
                .strip_prefix("postgres:")
                .filter(|u| u.starts_with("//"))
                .map(|u| format!("postgres:{u}"))
                .unwrap_or_else(|| a.to_string());
            if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
                return Err(
                    "--to: not a PostgreSQL URL (postgres://user:password@host/database)".into(),
                );
            }
            Ok((url, config.and_then(|c| c.store.ca_file.clone())))
        }
        None => {
            let config = config.ok_or("--to: required without --config")?;
            if config.store.backend != StoreBackend::Postgres {
                return Err("--to: required (the config's store is not PostgreSQL)".into());
            }
            Ok((config.store_url()?, config.store.ca_file.clone()))
        }
    }
}

pub fn copy(from: &str, to: Option<&str>, config: Option<&Config>) -> CliResult {
    let source = sqlite_source(from)?;
    if !Path::new(&source).exists() {
        return Err(format!("--from: no SQLite store at {}", source.display()));
    }
    let (url, ca_file) = postgres_target(to, config)?;
    let copied = store::copy::sqlite_to_postgres(&source, &url, ca_file.as_deref(), |table, n| {
        println!("{table}: {n} row(s)");
    })
    .map_err(|e| format!("store copy: {e}"))?;
    let total: u64 = copied.iter().map(|(_, n)| n).sum();
    println!("copied {total} row(s) from {}", source.display());
    Ok(())
}
