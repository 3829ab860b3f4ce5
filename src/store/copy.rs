//! `trackrelay store copy`: moves a SQLite store into an empty PostgreSQL
//! database, table by table, in one PostgreSQL transaction (a copy that
//! fails leaves the target as empty as it found it); and back, from
//! PostgreSQL into a new SQLite file (one node again, or a snapshot to
//! inspect with sqlite3).

use super::postgres::{self, schema, PgCtx};
use super::sqlite;
use super::{Result, StoreError};
use rusqlite::types::Value;
use std::path::Path;
use tokio_postgres::types::{ToSql, Type};

/// Every table, parents before children (recipients reference emails).
const TABLES: [&str; 12] = [
    "emails",
    "recipients",
    "events",
    "webhook_outbox",
    "rollups",
    "suppressions",
    "inbound_reports",
    "domain_status",
    "domain_history",
    "mta_sts_policies",
    "tls_report_counts",
    "tls_reports",
];

/// Tables whose `id` comes from an identity column: their sequences must
/// start after the copied ids.
const IDENTITIES: [&str; 3] = ["events", "inbound_reports", "domain_history"];

/// Rows per INSERT statement.
const BATCH: usize = 500;

/// Rows copied, per table.
pub type Copied = Vec<(String, u64)>;

/// Copies the SQLite store at `from` into the PostgreSQL database at `url`,
/// which must hold no trackrelay data yet (it is migrated first). The
/// source is migrated to this build's schema too: stop `serve` first.
/// `progress` hears each table as it is done.
pub fn sqlite_to_postgres(
    from: &Path,
    url: &str,
    ca_file: Option<&Path>,
    mut progress: impl FnMut(&str, u64),
) -> Result<Copied> {
    let source = sqlite::open_writer(from)?;
    let rt = runtime()?;
    let mut client = connect(&rt, url, ca_file)?;
    rt.block_on(schema::migrate(&mut client))?;
    let existing: i64 = rt
        .block_on(client.query_one(
            "SELECT (SELECT count(*) FROM emails) + (SELECT count(*) FROM events)
                  + (SELECT count(*) FROM suppressions)",
            &[],
        ))
        .ctx("checking that the target is empty")?
        .get(0);
    if existing > 0 {
        return Err(StoreError::msg(
            "the PostgreSQL database already holds trackrelay data; copy into an empty one",
        ));
    }
    rt.block_on(client.batch_execute("BEGIN"))
        .ctx("starting the copy")?;
    let mut copied = Vec::new();
    for table in TABLES {
        let n = copy_table(&rt, &client, &source, table)?;
        progress(table, n);
        copied.push((table.to_string(), n));
    }
    for table in IDENTITIES {
        let sql = format!(
            "SELECT setval(pg_get_serial_sequence('{table}', 'id'),
                           COALESCE((SELECT MAX(id) FROM {table}), 0) + 1, false)"
        );
        rt.block_on(client.batch_execute(&sql))
            .ctx(&format!("moving the id sequence of {table}"))?;
    }
    rt.block_on(client.batch_execute("COMMIT"))
        .ctx("committing the copy")?;
    Ok(copied)
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| StoreError::msg(format!("starting a runtime: {e}")))
}

/// One connection outside any pool, driven by `rt`.
fn connect(
    rt: &tokio::runtime::Runtime,
    url: &str,
    ca_file: Option<&Path>,
) -> Result<tokio_postgres::Client> {
    let config = postgres::parse_url(url)?;
    let pem = match ca_file {
        Some(p) => Some(std::fs::read(p).map_err(|e| {
            StoreError::msg(format!("store.ca_file: reading {}: {e}", p.display()))
        })?),
        None => None,
    };
    let tls = postgres::tls::MakeRustls::new(pem.as_deref()).map_err(StoreError::msg)?;
    rt.block_on(async {
        let (client, connection) = config.connect(tls).await.ctx("connecting to PostgreSQL")?;
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::error!("store copy: the PostgreSQL connection failed: {e}");
            }
        });
        Ok(client)
    })
}

/// Copies the PostgreSQL store at `url` into a new SQLite file at `to`
/// (which must not exist), in one SQLite transaction, from one consistent
/// PostgreSQL snapshot (a repeatable-read transaction), so it may run
/// beside serving nodes.
pub fn postgres_to_sqlite(
    url: &str,
    ca_file: Option<&Path>,
    to: &Path,
    mut progress: impl FnMut(&str, u64),
) -> Result<Copied> {
    if to.exists() {
        return Err(StoreError::msg(format!(
            "{} exists; copy into a new file",
            to.display()
        )));
    }
    let rt = runtime()?;
    let client = connect(&rt, url, ca_file)?;
    let version = rt.block_on(schema::current_version(&client))?;
    if version != schema::version() {
        return Err(StoreError::msg(format!(
            "the PostgreSQL store is at schema version {version}, this trackrelay writes {}; \
             run `trackrelay migrate` with a matching version first",
            schema::version()
        )));
    }
    if let Some(dir) = to.parent().filter(|d| !d.as_os_str().is_empty()) {
        super::create_private_dir(dir)
            .map_err(|e| StoreError::msg(format!("creating {}: {e}", dir.display())))?;
    }
    let mut target = rusqlite::Connection::open(to)
        .map_err(|e| StoreError::new(format!("creating {}", to.display()), e))?;
    sqlite::schema::migrate(&mut target)
        .map_err(|e| StoreError::new("creating the SQLite schema", e))?;
    rt.block_on(client.batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY"))
        .ctx("starting a consistent read")?;
    let tx = target
        .transaction()
        .map_err(|e| StoreError::new("starting the SQLite transaction", e))?;
    let mut copied = Vec::new();
    for table in TABLES {
        let cols = shared_columns(&rt, &client, &tx, table)?;
        let names: Vec<&str> = cols.iter().map(|(n, _)| n.as_str()).collect();
        // Rollups: the folded rows plus the increments not folded yet.
        let source = if table == "rollups" {
            let sums: Vec<String> = names
                .iter()
                .map(|n| match *n {
                    "hour" | "domain" => n.to_string(),
                    c => format!("SUM({c})::BIGINT AS {c}"),
                })
                .collect();
            format!(
                "(SELECT {} FROM {} u GROUP BY hour, domain) rollups",
                sums.join(", "),
                postgres::events::ROLLUPS
            )
        } else {
            table.to_string()
        };
        let rows = rt
            .block_on(client.query(&format!("SELECT {} FROM {source}", names.join(", ")), &[]))
            .ctx(&format!("reading {table} from PostgreSQL"))?;
        let marks: Vec<String> = (1..=names.len()).map(|i| format!("?{i}")).collect();
        let mut insert = tx
            .prepare(&format!(
                "INSERT INTO {table} ({}) VALUES ({})",
                names.join(", "),
                marks.join(", ")
            ))
            .map_err(|e| StoreError::new(format!("preparing {table} in SQLite"), e))?;
        for row in &rows {
            let values: Vec<Value> = cols
                .iter()
                .enumerate()
                .map(|(i, (_, ty))| {
                    if *ty == Type::INT8 {
                        row.get::<_, Option<i64>>(i)
                            .map_or(Value::Null, Value::Integer)
                    } else if *ty == Type::BYTEA {
                        row.get::<_, Option<Vec<u8>>>(i)
                            .map_or(Value::Null, Value::Blob)
                    } else {
                        row.get::<_, Option<String>>(i)
                            .map_or(Value::Null, Value::Text)
                    }
                })
                .collect();
            insert
                .execute(rusqlite::params_from_iter(values))
                .map_err(|e| StoreError::new(format!("writing {table} to SQLite"), e))?;
        }
        drop(insert);
        progress(table, rows.len() as u64);
        copied.push((table.to_string(), rows.len() as u64));
    }
    tx.commit()
        .map_err(|e| StoreError::new("committing the SQLite copy", e))?;
    let _ = rt.block_on(client.batch_execute("COMMIT"));
    Ok(copied)
}

/// The PostgreSQL table's columns that the SQLite one has too, with their
/// PostgreSQL types: a column one backend keeps for itself alone (say, a
/// planner's helper) is not the other's business.
fn shared_columns(
    rt: &tokio::runtime::Runtime,
    client: &tokio_postgres::Client,
    sqlite: &rusqlite::Connection,
    table: &str,
) -> Result<Vec<(String, Type)>> {
    let mut stmt = sqlite
        .prepare("SELECT name FROM pragma_table_info(?1)")
        .map_err(|e| StoreError::new("reading SQLite columns", e))?;
    let names: std::collections::HashSet<String> = stmt
        .query_map([table], |r| r.get(0))
        .and_then(|rows| rows.collect())
        .map_err(|e| StoreError::new(format!("reading the columns of {table}"), e))?;
    Ok(columns(rt, client, table)?
        .into_iter()
        .filter(|(n, _)| names.contains(n))
        .collect())
}

/// The target's columns and their types, in order.
fn columns(
    rt: &tokio::runtime::Runtime,
    client: &tokio_postgres::Client,
    table: &str,
) -> Result<Vec<(String, Type)>> {
    let stmt = rt
        .block_on(client.prepare(&format!("SELECT * FROM {table} LIMIT 0")))
        .ctx(&format!("reading the columns of {table}"))?;
    Ok(stmt
        .columns()
        .iter()
        .map(|c| (c.name().to_string(), c.type_().clone()))
        .collect())
}

fn copy_table(
    rt: &tokio::runtime::Runtime,
    client: &tokio_postgres::Client,
    source: &rusqlite::Connection,
    table: &str,
) -> Result<u64> {
    let cols = shared_columns(rt, client, source, table)?;
    let names: Vec<&str> = cols.iter().map(|(n, _)| n.as_str()).collect();
    // A body in the spool beside the database is read from there; the
    // columns that say where come after the shared ones.
    let spooled = table == "emails";
    let extra = if spooled {
        ", body_seg, body_off, size"
    } else {
        ""
    };
    let select = format!("SELECT {}{extra} FROM {table}", names.join(", "));
    let mut stmt = source
        .prepare(&select)
        .map_err(|e| StoreError::new(format!("reading {table} from SQLite"), e))?;
    let mut rows = stmt
        .query([])
        .map_err(|e| StoreError::new(format!("reading {table} from SQLite"), e))?;
    let mut batch: Vec<Box<dyn ToSql + Sync + Send>> = Vec::new();
    let mut in_batch = 0usize;
    let mut total = 0u64;
    loop {
        let row = rows
            .next()
            .map_err(|e| StoreError::new(format!("reading {table} from SQLite"), e))?;
        let Some(row) = row else { break };
        for (i, (name, ty)) in cols.iter().enumerate() {
            let mut v: Value = row
                .get(i)
                .map_err(|e| StoreError::new(format!("reading {table}.{name}"), e))?;
            if spooled && name == "body" && v == Value::Null {
                v = spooled_body(source, row, cols.len())?;
            }
            batch.push(
                convert(v, ty).map_err(|why| StoreError::msg(format!("{table}.{name}: {why}")))?,
            );
        }
        in_batch += 1;
        if in_batch == BATCH {
            insert(rt, client, table, &names, &batch, in_batch)?;
            total += in_batch as u64;
            batch.clear();
            in_batch = 0;
        }
    }
    if in_batch > 0 {
        insert(rt, client, table, &names, &batch, in_batch)?;
        total += in_batch as u64;
    }
    Ok(total)
}

/// The body of an `emails` row that keeps it in the spool (`Null` for a
/// pruned one); `at` is the index of `body_seg` in the row.
fn spooled_body(
    source: &rusqlite::Connection,
    row: &rusqlite::Row<'_>,
    at: usize,
) -> Result<Value> {
    let read = |i| row.get::<_, Option<i64>>(i);
    let (seg, off, size) = (read(at), read(at + 1), read(at + 2));
    let (Some(seg), Some(off), Some(size)) = (
        seg.map_err(|e| StoreError::new("reading emails.body_seg", e))?,
        off.map_err(|e| StoreError::new("reading emails.body_off", e))?,
        size.map_err(|e| StoreError::new("reading emails.size", e))?,
    ) else {
        return Ok(Value::Null);
    };
    sqlite::emails::read_spooled(source, sqlite::spool::Loc { seg, off }, size)
        .map(Value::Blob)
        .map_err(|e| StoreError::new("reading a message body from the spool", e))
}

/// A SQLite value as the PostgreSQL column's type wants it.
fn convert(v: Value, ty: &Type) -> std::result::Result<Box<dyn ToSql + Sync + Send>, String> {
    Ok(match (v, ty) {
        (Value::Null, t) if *t == Type::INT8 => Box::new(None::<i64>),
        (Value::Null, t) if *t == Type::BYTEA => Box::new(None::<Vec<u8>>),
        (Value::Null, _) => Box::new(None::<String>),
        (Value::Integer(i), t) if *t == Type::INT8 => Box::new(i),
        (Value::Integer(i), t) if *t == Type::TEXT => Box::new(i.to_string()),
        (Value::Real(f), t) if *t == Type::INT8 => Box::new(f as i64),
        (Value::Text(s), t) if *t == Type::TEXT => Box::new(s),
        (Value::Text(s), t) if *t == Type::BYTEA => Box::new(s.into_bytes()),
        (Value::Text(s), t) if *t == Type::INT8 => Box::new(
            s.trim()
                .parse::<i64>()
                .map_err(|_| format!("{s:?} is not an integer"))?,
        ),
        (Value::Blob(b), t) if *t == Type::BYTEA => Box::new(b),
        (Value::Blob(b), t) if *t == Type::TEXT => {
            Box::new(String::from_utf8(b).map_err(|_| "a blob that is not UTF-8 text".to_string())?)
        }
        (v, t) => return Err(format!("cannot store {v:?} as {t}")),
    })
}

fn insert(
    rt: &tokio::runtime::Runtime,
    client: &tokio_postgres::Client,
    table: &str,
    names: &[&str],
    values: &[Box<dyn ToSql + Sync + Send>],
    rows: usize,
) -> Result<()> {
    let width = names.len();
    let tuples: Vec<String> = (0..rows)
        .map(|r| {
            let ps: Vec<String> = (0..width)
                .map(|c| format!("${}", r * width + c + 1))
                .collect();
            format!("({})", ps.join(", "))
        })
        .collect();
    let sql = format!(
        "INSERT INTO {table} ({}) VALUES {}",
        names.join(", "),
        tuples.join(", ")
    );
    let params: Vec<&(dyn ToSql + Sync)> = values
        .iter()
        .map(|b| b.as_ref() as &(dyn ToSql + Sync))
        .collect();
    rt.block_on(client.execute(&sql, &params))
        .ctx(&format!("writing {table} to PostgreSQL"))?;
    Ok(())
}
