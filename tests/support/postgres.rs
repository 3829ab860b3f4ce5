//! A real PostgreSQL server for the tests (Debian's `postgresql`): one
//! cluster per test process, started on first use in a temporary
//! directory, on a loopback port, and a new empty database per `url()`.
//!
//! PostgreSQL binds the port it is told, so the port cannot come from the
//! kernel: random high ports are tried until the server's own log says it
//! is ready, and a port taken by someone else only costs a retry. The
//! server is this process's child and is told to stop (SIGINT, a fast
//! shutdown) when the process ends; a directory left by a process that
//! died is removed by the next one.

use std::io::Read;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

const PREFIX: &str = "trackrelay-pg-";

struct Server {
    port: u16,
}

static SERVER: OnceLock<Result<Server, String>> = OnceLock::new();
static DATABASES: AtomicU32 = AtomicU32::new(0);

/// The directory of PostgreSQL's programs, if installed.
fn bin_dir() -> Option<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path().join("bin")))
        .filter(|p| p.join("postgres").exists() && p.join("initdb").exists())
        .collect();
    dirs.sort();
    dirs.pop()
}

/// Whether PostgreSQL is installed. CI installs it (.ci/run); elsewhere a
/// test that needs it says loudly that it skipped, and CI refuses to skip.
pub fn available(test: &str) -> bool {
    let ok = bin_dir().is_some() && Path::new("/usr/bin/psql").exists();
    if !ok {
        assert!(
            std::env::var_os("CI").is_none(),
            "{test}: PostgreSQL is required in CI (apt-get install postgresql)"
        );
        eprintln!("SKIPPED {test}: needs PostgreSQL (apt-get install postgresql)");
    }
    ok
}

/// The URL of a new, empty database on this process's server.
pub fn url() -> String {
    let server = SERVER
        .get_or_init(start)
        .as_ref()
        .unwrap_or_else(|e| panic!("PostgreSQL did not start: {e}"));
    let n = DATABASES.fetch_add(1, Ordering::Relaxed);
    let name = format!("t{}_{n}", std::process::id());
    psql(server.port, "postgres", &format!("CREATE DATABASE {name}"));
    format!("postgres://trackrelay@127.0.0.1:{}/{name}", server.port)
}

/// Runs one statement as the superuser `trackrelay`; panics with psql's
/// message when it fails.
pub fn psql(port: u16, db: &str, sql: &str) -> String {
    let out = Command::new("psql")
        .args(["-X", "-q", "-t", "-A", "-v", "ON_ERROR_STOP=1"])
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &port.to_string(),
            "-U",
            "trackrelay",
        ])
        .args(["-d", db, "-c", sql])
        .output()
        .expect("running psql");
    assert!(
        out.status.success(),
        "psql {sql:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The port of this process's server (starting it if needed).
pub fn port() -> u16 {
    SERVER
        .get_or_init(start)
        .as_ref()
        .unwrap_or_else(|e| panic!("PostgreSQL did not start: {e}"))
        .port
}

/// Runs `sql` in the database of `url` (a URL from `url()`).
pub fn query(url: &str, sql: &str) -> String {
    let db = url.rsplit('/').next().expect("a database in the URL");
    psql(port(), db, sql)
}

/// The uid and gid of the `postgres` account when we are root (the server
/// refuses to run as root); None to run as ourselves.
fn server_user() -> Option<(u32, u32)> {
    if unsafe { libc::geteuid() } != 0 {
        return None;
    }
    let name = std::ffi::CString::new("postgres").unwrap();
    let pw = unsafe { libc::getpwnam(name.as_ptr()) };
    assert!(!pw.is_null(), "running as root needs a `postgres` account");
    Some(unsafe { ((*pw).pw_uid, (*pw).pw_gid) })
}

fn remove_stale_dirs() {
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(pid) = name
            .strip_prefix(PREFIX)
            .and_then(|p| p.parse::<i32>().ok())
        else {
            continue;
        };
        // kill(pid, 0) fails with ESRCH once that process is gone.
        if unsafe { libc::kill(pid, 0) } != 0 {
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
}

fn start() -> Result<Server, String> {
    remove_stale_dirs();
    let bin = bin_dir().ok_or("PostgreSQL is not installed")?;
    let dir = std::env::temp_dir().join(format!("{PREFIX}{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let user = server_user();
    if let Some((uid, gid)) = user {
        std::os::unix::fs::chown(&dir, Some(uid), Some(gid)).map_err(|e| e.to_string())?;
    }
    let mut initdb = Command::new(bin.join("initdb"));
    initdb
        .arg("-D")
        .arg(dir.join("data"))
        .args(["-A", "trust", "-U", "trackrelay", "--no-sync"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    if let Some((uid, gid)) = user {
        initdb.uid(uid).gid(gid);
    }
    let out = initdb.output().map_err(|e| format!("initdb: {e}"))?;
    if !out.status.success() {
        return Err(format!("initdb: {}", String::from_utf8_lossy(&out.stderr)));
    }
    let mut last = String::new();
    for attempt in 0..8u32 {
        let port = random_port(attempt);
        match run_on(&bin, &dir, port, user) {
            Ok(()) => return Ok(Server { port }),
            Err(e) => last = e,
        }
    }
    Err(format!("no port worked; last: {last}"))
}

fn random_port(attempt: u32) -> u16 {
    let seed = std::process::id()
        .wrapping_mul(2654435761)
        .wrapping_add(attempt.wrapping_mul(40503))
        .wrapping_add(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.subsec_nanos())
                .unwrap_or(0),
        );
    20000 + (seed % 30000) as u16
}

/// Starts the server on `port` from a thread that lives as long as the
/// process (the parent-death signal follows the thread that spawned the
/// child) and waits until its log says it accepts connections.
fn run_on(bin: &Path, dir: &Path, port: u16, user: Option<(u32, u32)>) -> Result<(), String> {
    let log = dir.join(format!("log.{port}"));
    let (tx, rx) = std::sync::mpsc::channel();
    let (bin, dir2, log2) = (bin.to_path_buf(), dir.to_path_buf(), log.clone());
    std::thread::spawn(move || {
        let file = match std::fs::File::create(&log2) {
            Ok(f) => f,
            Err(e) => return tx.send(Err(e.to_string())).unwrap_or(()),
        };
        if let Some((uid, gid)) = user {
            let _ = std::os::unix::fs::chown(&log2, Some(uid), Some(gid));
        }
        let err = file.try_clone().expect("log file handle");
        let mut cmd = Command::new(bin.join("postgres"));
        cmd.arg("-D")
            .arg(dir2.join("data"))
            .args(["-p", &port.to_string(), "-k"])
            .arg(&dir2)
            .args(["-c", "listen_addresses=127.0.0.1"])
            // Tests need durability semantics, not durability: fsync off
            // keeps a commit from costing a disk flush on a shared CI box.
            .args(["-c", "fsync=off", "-c", "max_connections=400"])
            .stdin(Stdio::null())
            .stdout(file)
            .stderr(err);
        if let Some((uid, gid)) = user {
            cmd.uid(uid).gid(gid);
        }
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGINT);
                Ok(())
            });
        }
        match cmd.spawn() {
            Ok(mut child) => {
                let _ = tx.send(Ok(()));
                let _ = child.wait();
                // Waiting keeps this thread, and so the server, alive.
            }
            Err(e) => {
                let _ = tx.send(Err(format!("starting postgres: {e}")));
            }
        }
    });
    rx.recv().map_err(|e| e.to_string())??;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let mut text = String::new();
        if let Ok(mut f) = std::fs::File::open(&log) {
            let _ = f.read_to_string(&mut text);
        }
        if text.contains("ready to accept connections") {
            return Ok(());
        }
        if text.contains("could not bind") || text.contains("could not create any TCP/IP sockets") {
            return Err(format!("port {port}: {}", text.trim()));
        }
        if Instant::now() > deadline {
            return Err(format!("not ready after 60 s: {}", text.trim()));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}
