//! `trackrelay migrate` and `trackrelay store copy`.

use super::CliResult;
use crate::config::{Config, StoreBackend};
use crate::store;
use std::path::{Path, PathBuf};

/// Applies the migrations the configured store lacks and says where it is.
pub fn migrate(config: &Config) -> CliResult {
    let (what, version) = super::runtime()?
        .block_on(store::open::migrate(config))
        .map_err(|e| e.to_string())?;
    println!("{what}: schema version {version}");
    Ok(())
}

/// Where `--from` points: a SQLite file.
fn sqlite_source(arg: &str) -> Result<PathBuf, String> {
    let path = arg.strip_prefix("sqlite:").unwrap_or(arg);
    if path.is_empty() || path.starts_with("postgres") {
        return Err(format!(
            "--from: {arg:?} is neither sqlite:PATH nor a postgres:// URL"
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

fn is_postgres_url(s: &str) -> bool {
    s.starts_with("postgres://") || s.starts_with("postgresql://") || s.starts_with("postgres:")
}

pub fn copy(from: &str, to: Option<&str>, config: Option<&Config>) -> CliResult {
    if is_postgres_url(from) {
        // Back to one node: PostgreSQL -> a new SQLite file.
        let target = to.ok_or("--to: required (sqlite:PATH) when copying from PostgreSQL")?;
        let path = target
            .strip_prefix("sqlite:")
            .filter(|p| !p.is_empty())
            .ok_or("--to: must be sqlite:PATH when copying from PostgreSQL")?;
        let url = from
            .strip_prefix("postgres:")
            .filter(|u| u.starts_with("//"))
            .map(|u| format!("postgres:{u}"))
            .unwrap_or_else(|| from.to_string());
        let ca = config.and_then(|c| c.store.ca_file.clone());
        let copied =
            store::copy::postgres_to_sqlite(&url, ca.as_deref(), Path::new(path), |t, n| {
                println!("{t}: {n} row(s)");
            })
            .map_err(|e| format!("store copy: {e}"))?;
        let total: u64 = copied.iter().map(|(_, n)| n).sum();
        println!("copied {total} row(s) to {path}");
        return Ok(());
    }
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
