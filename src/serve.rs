//! `trackrelay serve`: builds every part from the config, binds every
//! listener before telling systemd it is ready, and on SIGTERM stops
//! accepting, lets sessions in flight finish, and exits 0.

use crate::config::Config;
use crate::metrics::Metrics;
use crate::store::{Store, StoreOptions};
use crate::submission::Submission;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio::sync::watch;

/// The addresses actually bound (port 0 in a config becomes a real port).
/// Written as JSON to `--ready-file` and into the ready log line.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Bound {
    pub submission: Vec<SocketAddr>,
    pub submission_tls: Vec<SocketAddr>,
    pub tracking: Vec<SocketAddr>,
    pub tracking_tls: Vec<SocketAddr>,
    pub api: Vec<SocketAddr>,
    /// The return-path MX; absent from the JSON when `[inbound]` has no listener.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub inbound: Vec<SocketAddr>,
}

fn local_addrs(listeners: &[TcpListener]) -> Vec<SocketAddr> {
    listeners
        .iter()
        .filter_map(|l| l.local_addr().ok())
        .collect()
}

async fn bind_all(key: &str, addrs: &[String]) -> Result<Vec<TcpListener>, String> {
    let mut out = Vec::new();
    for a in addrs {
        let sa: SocketAddr = a
            .parse()
            .map_err(|_| format!("{key}: {a:?} is not an address:port"))?;
        let l = TcpListener::bind(sa)
            .await
            .map_err(|e| format!("{key}: cannot listen on {sa}: {e}"))?;
        out.push(l);
    }
    Ok(out)
}

/// Makes the files trackrelay manages itself: the data directory and, when
/// no certificate is configured, a self-signed one.
fn prepare_data_dir(config: &Config) -> Result<Option<Arc<rustls::ServerConfig>>, String> {
    let dir = &config.server.data_dir;
    crate::store::create_private_dir(dir)
        .map_err(|e| format!("server.data_dir: cannot create {}: {e}", dir.display()))?;
    let s = &config.submission;
    let (cert, key) = match (&s.tls_cert, &s.tls_key) {
        (Some(c), Some(k)) => (c.clone(), k.clone()),
        _ => {
            let names = vec![config.server.hostname.clone(), "localhost".to_string()];
            if crate::tls::ensure_self_signed(dir, &names)? {
                let (c, _) = crate::tls::self_signed_paths(dir);
                tracing::warn!(
                    "no submission.tls_cert configured: generated a self-signed certificate for {} at {} \
                     (fine for development; configure a real certificate for production)",
                    config.server.hostname,
                    c.display()
                );
            }
            crate::tls::self_signed_paths(dir)
        }
    };
    crate::tls::server_config(&cert, &key).map(Some)
}

/// What `serve` is told on its command line besides the config.
#[derive(Debug, Clone, Default)]
pub struct ServeOptions {
    /// Create an empty database even though the data directory shows that
    /// one existed (see `check_store_present`).
    pub init_store: bool,
    /// Write the bound addresses here, as JSON, once every listener is up.
    pub ready_file: Option<PathBuf>,
}

pub async fn run(config: Config, options: ServeOptions) -> Result<(), String> {
    let (tx, rx) = watch::channel(false);
    let stop = tx.clone();
    let signals = tokio::spawn(async move {
        wait_for_signal().await;
        let _ = tx.send(true);
    });
    if let Some(path) = &options.ready_file {
        // A file left by an earlier run must not pass for this one's.
        if let Err(e) = std::fs::remove_file(path) {
            if e.kind() != std::io::ErrorKind::NotFound {
                return Err(format!(
                    "--ready-file: cannot remove {}: {e}",
                    path.display()
                ));
            }
        }
    }
    let mut ready_failed = None;
    let result = run_until(config, options.init_store, rx, |bound| {
        let json = serde_json::to_string(bound).unwrap_or_default();
        if let Some(path) = &options.ready_file {
            if let Err(e) = write_ready_file(path, &json) {
                // Whoever waits for the file would wait for ever: stop.
                tracing::error!("{e}; stopping");
                ready_failed = Some(e);
                let _ = stop.send(true);
                return;
            }
        }
        tracing::info!(addresses = %json, "trackrelay ready");
        let _ = sd_notify::notify(&[sd_notify::NotifyState::Ready]);
    })
    .await;
    signals.abort();
    match ready_failed {
        Some(e) => Err(e),
        None => result,
    }
}

/// Written whole under a temporary name, then renamed, so a reader never
/// sees half of it.
fn write_ready_file(path: &Path, json: &str) -> Result<(), String> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    std::fs::write(&tmp, format!("{json}\n"))
        .and_then(|_| std::fs::rename(&tmp, path))
        .map_err(|e| format!("--ready-file: cannot write {}: {e}", path.display()))
}

/// Files only an earlier `serve` makes in the data directory: when one of
/// them exists, so did a database.
fn signs_of_use(config: &Config) -> Vec<PathBuf> {
    let dir = &config.server.data_dir;
    let mut files = Vec::new();
    if config.tracking.secret_file.is_none() {
        files.push(config.tracking_secret_path());
    }
    for d in &config.domains {
        for k in d.dkim.iter().filter(|k| k.private_key.is_none()) {
            files.push(config.dkim_key_path(&d.name, k));
        }
    }
    files.push(crate::tls::self_signed_paths(dir).1);
    files.retain(|f| f.exists());
    files
}

/// Refuses to start on a missing database in a data directory that was in
/// use: a fresh empty store would hide that the real one was lost (deleted,
/// moved, or a wrong `data_dir`). A new data directory just starts.
fn check_store_present(config: &Config, init_store: bool) -> Result<(), String> {
    let db = config.database_path();
    // Only a SQLite file can vanish under data_dir; a PostgreSQL store lives
    // elsewhere and is created by its migrations.
    if init_store || db.exists() || config.store.backend != crate::config::StoreBackend::Sqlite {
        return Ok(());
    }
    let used = signs_of_use(config);
    if used.is_empty() {
        return Ok(());
    }
    let list: Vec<String> = used.iter().map(|p| p.display().to_string()).collect();
    Err(format!(
        "the database {} is missing, but server.data_dir {} was in use ({} exist{}); \
         it was deleted or moved, or data_dir points at the wrong place. Restore it from \
         a backup, or run `trackrelay serve --init-store` once to start with an empty one \
         (the queue, emails and events of the past are then gone)",
        db.display(),
        config.server.data_dir.display(),
        list.join(", "),
        if used.len() == 1 { "s" } else { "" },
    ))
}

/// Secret files that group or others may read, each with its mode.
pub fn exposed_secrets(config: &Config) -> Vec<String> {
    use std::os::unix::fs::PermissionsExt;
    let mut secrets: Vec<(String, PathBuf)> = Vec::new();
    let mut add = |what: String, p: &Option<PathBuf>| {
        if let Some(p) = p {
            secrets.push((what, p.clone()));
        }
    };
    add("submission.tls_key".into(), &config.submission.tls_key);
    add("tracking.tls_key".into(), &config.tracking.tls_key);
    for (i, d) in config.domains.iter().enumerate() {
        add(
            format!("domains[{i}].tracking_tls_key"),
            &d.tracking_tls_key,
        );
        for (j, k) in d.dkim.iter().enumerate() {
            add(
                format!("domains[{i}].dkim[{j}] key"),
                &Some(config.dkim_key_path(&d.name, k)),
            );
        }
    }
    add(
        "tracking secret".into(),
        &Some(config.tracking_secret_path()),
    );
    for (i, p) in config.tracking.previous_secret_files.iter().enumerate() {
        add(
            format!("tracking.previous_secret_files[{i}]"),
            &Some(p.clone()),
        );
    }
    if let Some(relay) = &config.delivery.relay {
        add("delivery.relay.password_file".into(), &relay.password_file);
    }
    if config.submission.tls_key.is_none() {
        add(
            "the self-signed TLS key".into(),
            &Some(crate::tls::self_signed_paths(&config.server.data_dir).1),
        );
    }
    secrets
        .into_iter()
        .filter_map(|(what, p)| {
            let mode = std::fs::metadata(&p).ok()?.permissions().mode() & 0o777;
            (mode & 0o044 != 0).then(|| {
                format!(
                    "{what} {} is readable by {} (mode {mode:04o}); make it 0600 (chmod 600)",
                    p.display(),
                    if mode & 0o004 != 0 {
                        "everyone"
                    } else {
                        "its group"
                    }
                )
            })
        })
        .collect()
}

/// Runs until `shutdown` turns true; `ready` is called once every listener
/// is bound.
pub async fn run_until(
    config: Config,
    init_store: bool,
    shutdown: watch::Receiver<bool>,
    ready: impl FnOnce(&Bound),
) -> Result<(), String> {
    check_store_present(&config, init_store)?;
    // Before any other file of the data directory is made, so that a start
    // that fails half-way does not leave keys without a database.
    let store = Store::open_config(&config)
        .await
        .map_err(|e| format!("store: {e}"))?;
    let submission_tls = prepare_data_dir(&config)?;
    for w in config.warnings() {
        tracing::warn!("{w}");
    }
    let metrics = Arc::new(Metrics::default());
    let _ = metrics
        .node
        .set((store.node_id().to_string(), store.kind()));
    let new_mail = store.queue_wake();
    let dkim_keys = crate::outbound::keys::domain_keys(&config, true)?;
    let token_keys = Arc::new(
        crate::prepare::TokenKeys::load_or_create(
            &config.tracking_secret_path(),
            &config.tracking.previous_secret_files,
        )
        .map_err(|e| format!("tracking.secret_file: {e}"))?,
    );
    for w in exposed_secrets(&config) {
        tracing::warn!("{w}");
    }
    let resolver = Arc::new(crate::dns::resolver(&config)?);
    let router = crate::outbound::route::Router::new(&config, resolver.clone())?;
    let tls_reports = Arc::new(crate::outbound::tls_report::Reporter::new(
        &config,
        store.clone(),
        resolver.clone(),
        new_mail.clone(),
    )?);
    // Before the runner starts: links use the tracking host chosen before.
    let domains = Arc::new(crate::domains::Monitor::new(
        &config,
        store.clone(),
        resolver,
    ));
    domains.start().await.map_err(|e| format!("store: {e}"))?;
    let fresh = Arc::new(crate::outbound::fresh::FreshBodies::new(
        crate::outbound::fresh::DEFAULT_MAX_BYTES,
    ));
    let mut runner = crate::outbound::runner::Runner::new(
        &config,
        store.clone(),
        router,
        token_keys.clone(),
        dkim_keys,
        metrics.clone(),
        new_mail.clone(),
    )
    .with_tracking_hosts(domains.hosts())
    .with_tls_outcome_sink(tls_reports.counter())
    .with_fresh_bodies(fresh.clone());
    if let Some(dane) = crate::outbound::dane::Dane::start(&config)? {
        runner = runner.with_dane(dane);
    }
    let mta_sts = runner.mta_sts();
    let runner = Arc::new(runner);

    let plain = bind_all("submission.listen", &config.submission.listen).await?;
    let implicit = bind_all("submission.listen_tls", &config.submission.listen_tls).await?;
    let mut bound = Bound {
        submission: local_addrs(&plain),
        submission_tls: local_addrs(&implicit),
        ..Bound::default()
    };
    let listeners: Vec<(TcpListener, bool)> = plain
        .into_iter()
        .map(|l| (l, false))
        .chain(implicit.into_iter().map(|l| (l, true)))
        .collect();

    let acme = crate::acme::Acme::start(&config, metrics.clone())?;
    let submission_tls = crate::acme::submission_tls(&config, acme.as_ref(), submission_tls);
    let tracking_acceptor = crate::tracking::server::acceptor(&config, acme.clone())?;
    let tracking_plain = bind_all("tracking.listen", &config.tracking.listen).await?;
    let tracking_tls = bind_all("tracking.listen_tls", &config.tracking.listen_tls).await?;
    bound.tracking = local_addrs(&tracking_plain);
    bound.tracking_tls = local_addrs(&tracking_tls);
    let (recorder, recorder_task) = crate::tracking::recorder::Recorder::start(
        store.clone(),
        metrics.clone(),
        config.tracking.event_queue,
        crate::tracking::recorder::StoreRules {
            machine_click_window_ms: config.tracking.machine_click_window.as_millis() as i64,
        },
    );
    let unsubscriber = crate::tracking::unsubscribe::Unsubscriber::new(
        token_keys.clone(),
        store.clone(),
        config.tracking.trusted_proxies.clone(),
        config
            .domains
            .iter()
            .filter(|d| d.suppresses_on("unsubscribe"))
            .map(|d| d.name.to_ascii_lowercase())
            .collect(),
        metrics.clone(),
    );
    let tracker = Arc::new(
        crate::tracking::listener::Tracker::new(
            token_keys.clone(),
            recorder,
            config.tracking.trusted_proxies.clone(),
            metrics.clone(),
        )
        .with_unsubscriber(unsubscriber),
    );
    let tracking_task = tokio::spawn(crate::tracking::server::serve(
        tracker,
        tracking_plain,
        tracking_tls,
        tracking_acceptor,
        acme.clone(),
        shutdown.clone(),
    ));
    let acme_task = acme.map(|a| tokio::spawn(a.run(shutdown.clone())));
    let api = Arc::new(
        crate::api::Api::new(&config, store.clone(), metrics.clone())?
            .with_queue_wake(new_mail.clone()),
    );
    let api_listeners = bind_all("api.listen", &config.api.listen).await?;
    bound.api = local_addrs(&api_listeners);
    let inbound_listeners = bind_all("inbound.listen", &config.inbound.listen).await?;
    bound.inbound = local_addrs(&inbound_listeners);
    let api_task = tokio::spawn(crate::api::serve(api, api_listeners, shutdown.clone()));
    let webhooks = Arc::new(crate::webhooks::Webhooks::new(
        &config,
        store.clone(),
        metrics.clone(),
    )?);
    let webhooks_task = tokio::spawn(webhooks.run(shutdown.clone()));
    let domains_task = config
        .domain_checks
        .enabled
        .then(|| tokio::spawn(domains.run(shutdown.clone())));
    let retention_task = tokio::spawn(crate::store::retention::run(
        store.clone(),
        config.store.retain_messages,
        config.store.retain_events,
        shutdown.clone(),
    ));

    let submission = Arc::new(
        Submission::new(
            &config,
            store.clone(),
            submission_tls.clone(),
            metrics.clone(),
            Some(new_mail.clone()),
        )
        .with_fresh_bodies(fresh),
    );
    let grace = config.server.shutdown_grace;
    let submission_task = tokio::spawn(submission.serve(listeners, shutdown.clone(), grace));

    let runner_task = tokio::spawn(runner.run(shutdown.clone(), grace));
    let tls_reports_task = tokio::spawn(tls_reports.clone().run(shutdown.clone()));
    // RFC 8461 3.3: policies in use are refreshed before they expire, not
    // only when mail happens to go to their domain.
    let sts_refresh_task = mta_sts.map(|s| tokio::spawn(s.run(shutdown.clone())));
    // The inbound listener wakes the feedback processor through
    // `new_reports` after each stored report; the processor also reads
    // what is pending at start and every 30 s.
    let new_reports = Arc::new(tokio::sync::Notify::new());
    let feedback = Arc::new(crate::inbound::process::Processor::new(
        &config,
        store.clone(),
        token_keys.clone(),
        metrics.clone(),
        new_reports.clone(),
    ));
    let feedback_task = if config.inbound.process {
        Some(tokio::spawn(feedback.run(shutdown.clone())))
    } else {
        tracing::info!("inbound.process = false: stored reports are left pending");
        None
    };
    let inbound_task = if inbound_listeners.is_empty() {
        None
    } else {
        let tls = match (&config.inbound.tls_cert, &config.inbound.tls_key) {
            (Some(c), Some(k)) => Some(crate::tls::server_config(c, k)?),
            _ => submission_tls.clone(),
        };
        let inbound = Arc::new(crate::inbound::Inbound::new(
            &config,
            store.clone(),
            tls,
            metrics.clone(),
            new_reports.clone(),
        ));
        Some(tokio::spawn(inbound.serve(
            inbound_listeners,
            shutdown.clone(),
            grace,
        )))
    };

    ready(&bound);

    let _ = submission_task.await;
    let _ = runner_task.await;
    // The last sessions counted before the runner stopped.
    let _ = tls_reports_task.await;
    tls_reports.flush().await;
    if let Some(t) = inbound_task {
        let _ = t.await;
    }
    if let Some(t) = feedback_task {
        let _ = t.await;
    }
    let _ = tracking_task.await;
    if let Some(t) = acme_task {
        let _ = t.await;
    }
    let _ = retention_task.await;
    if let Some(t) = sts_refresh_task {
        let _ = t.await;
    }
    if let Some(t) = domains_task {
        let _ = t.await;
    }
    let _ = webhooks_task.await;
    let _ = api_task.await;
    // The tracker (and with it the last recorder handle) is gone once the
    // listener has stopped: the recorder flushes what it holds and ends.
    let _ = recorder_task.await;
    let _ = sd_notify::notify(&[sd_notify::NotifyState::Stopping]);
    let store_closing = store.clone();
    let _ = tokio::task::spawn_blocking(move || store_closing.close()).await;
    tracing::info!("stopped");
    Ok(())
}

pub fn store_options(config: &Config) -> StoreOptions {
    crate::store::open::sqlite_options(config)
}

async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => return std::future::pending().await,
    };
    let mut int = match signal(SignalKind::interrupt()) {
        Ok(s) => s,
        Err(_) => return std::future::pending().await,
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: finishing sessions in flight"),
        _ = int.recv() => tracing::info!("SIGINT: finishing sessions in flight"),
    }
}
