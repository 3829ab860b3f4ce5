use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;
use trackrelay::{cli, config};

#[derive(Parser)]
#[command(
    name = "trackrelay",
    version,
    about = "Self-hosted SMTP relay with open and click tracking"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Args, Clone)]
struct ConfigArg {
    /// Config file [default: $TRACKRELAY_CONFIG, then /etc/trackrelay/config.toml]
    #[arg(long, value_name = "PATH")]
    config: Option<PathBuf>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the relay: SMTP submission, delivery, tracking, webhooks, admin API.
    Serve {
        #[command(flatten)]
        config: ConfigArg,
        /// Create an empty database although the data directory shows one
        /// existed (its tracking key, DKIM or TLS keys are there). Without it,
        /// a missing database there stops the start: it was lost or moved.
        #[arg(long)]
        init_store: bool,
        /// Once every listener is up, write the bound addresses there as JSON
        /// (`{"submission":["127.0.0.1:2587"],"submission_tls":[..],"tracking":[..],
        /// "tracking_tls":[..],"api":[..]}`); with port 0 in the config, the
        /// ports the system chose.
        #[arg(long, value_name = "PATH")]
        ready_file: Option<PathBuf>,
    },
    /// Validate the config file and print every problem found.
    CheckConfig(ConfigArg),
    /// Read a password on stdin and print its argon2id hash.
    HashPassword,
    /// Generate a DKIM key (PKCS#8 PEM, mode 0600) and print its DNS TXT record.
    DkimKeygen {
        #[arg(long)]
        domain: String,
        #[arg(long)]
        selector: String,
        /// rsa (2048 bits) or ed25519
        #[arg(long, default_value = "rsa")]
        algorithm: String,
        /// Where to write the private key (never overwritten).
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
    },
    /// Print a message (read on stdin) exactly as it would be delivered: control
    /// headers removed, links and pixel rewritten, DKIM-signed. Stores and sends nothing.
    Preview {
        #[command(flatten)]
        config: ConfigArg,
        /// The recipient the copy is for.
        #[arg(long, value_name = "ADDR")]
        rcpt: Option<String>,
        /// Do not DKIM-sign.
        #[arg(long)]
        no_sign: bool,
    },
    /// Webhook deliveries: list them, send them again.
    Webhooks {
        #[command(subcommand)]
        action: WebhooksCommand,
    },
    #[command(about = trackrelay::dnscheck::ABOUT, after_help = trackrelay::dnscheck::HELP)]
    DnsCheck {
        #[command(flatten)]
        config: ConfigArg,
        /// Only this domain.
        #[arg(long)]
        domain: Option<String>,
        /// One JSON object per record per line.
        #[arg(long)]
        json: bool,
    },
    /// Show and manage the delivery queue.
    Queue {
        #[command(subcommand)]
        action: QueueCommand,
    },
    /// Show and manage the suppression list.
    Suppressions {
        #[command(subcommand)]
        action: SuppressionsCommand,
    },
    /// TLS reports (RFC 8460) of outbound deliveries, per policy domain and day.
    TlsReports {
        #[command(subcommand)]
        action: TlsReportsCommand,
    },
    /// Reports received at the return path (bounces, complaints).
    Reports {
        #[command(subcommand)]
        action: ReportsCommand,
    },
    /// List stored events.
    Events {
        #[command(flatten)]
        config: ConfigArg,
        /// Only events of this email id.
        #[arg(long)]
        email: Option<String>,
        /// Only this type (email.opened or opened, ...).
        #[arg(long = "type", value_name = "TYPE")]
        kind: Option<String>,
        /// From this time on (RFC 3339, a date, or a duration back like 24h).
        #[arg(long)]
        since: Option<String>,
        #[arg(long)]
        until: Option<String>,
        /// At most this many (0: all).
        #[arg(long, default_value_t = 0)]
        limit: usize,
        /// One JSON object per line.
        #[arg(long)]
        json: bool,
    },
    /// Sending statistics, unique per recipient, human and machine apart.
    Stats {
        #[command(flatten)]
        config: ConfigArg,
        #[arg(long)]
        domain: Option<String>,
        #[arg(long)]
        since: Option<String>,
        #[arg(long)]
        until: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Apply the store's pending schema migrations (SQLite or PostgreSQL) and
    /// print its version. `serve` does this too; run it before starting
    /// several nodes on a new PostgreSQL database, or to check one.
    Migrate(ConfigArg),
    /// Operations on a whole store.
    Store {
        #[command(subcommand)]
        cmd: StoreCommand,
    },
    /// Export emails (one row per recipient) or events as CSV.
    Export {
        #[command(flatten)]
        config: ConfigArg,
        /// emails or events
        what: String,
        /// CSV (the only format, and the default).
        #[arg(long)]
        csv: bool,
        #[arg(long)]
        since: Option<String>,
        #[arg(long)]
        until: Option<String>,
    },
}

#[derive(Subcommand)]
enum StoreCommand {
    /// Copy a SQLite store into an empty PostgreSQL database (migrated
    /// first), in one transaction; stop `serve` on the SQLite store first.
    /// Or back: a PostgreSQL store into a new SQLite file, from one
    /// consistent snapshot (nodes may keep running).
    Copy {
        /// sqlite:PATH, or postgres://user:password@host/database
        #[arg(long, value_name = "FROM")]
        from: String,
        /// postgres://... (from SQLite; without it, the PostgreSQL store of
        /// --config, whose store.url_file keeps the password off the command
        /// line), or sqlite:PATH (from PostgreSQL; a new file)
        #[arg(long, value_name = "TO")]
        to: Option<String>,
        /// A config whose [store] names the target.
        #[arg(long)]
        config: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum WebhooksCommand {
    /// Deliveries, newest first.
    List {
        #[command(flatten)]
        config: ConfigArg,
        /// Only the ones given up.
        #[arg(long)]
        failed: bool,
        #[arg(long, default_value_t = 100)]
        limit: usize,
        #[arg(long)]
        json: bool,
    },
    /// Send a delivery (by webhook id), or every one created since a time, again.
    Replay {
        #[command(flatten)]
        config: ConfigArg,
        id: Option<String>,
        #[arg(long)]
        since: Option<String>,
    },
}

#[derive(Subcommand)]
enum SuppressionsCommand {
    /// Suppressed addresses.
    List {
        #[command(flatten)]
        config: ConfigArg,
        /// One JSON object per line.
        #[arg(long)]
        json: bool,
        /// Only entries that apply to this sending domain (and every-domain ones).
        #[arg(long)]
        domain: Option<String>,
    },
    /// Suppress an address (for every domain, or one sending domain).
    Add {
        #[command(flatten)]
        config: ConfigArg,
        address: String,
        #[arg(long)]
        domain: Option<String>,
        /// hard_bounce, complaint, unsubscribe or manual.
        #[arg(long, default_value = "manual")]
        reason: String,
    },
    /// Deliver to an address again (its every-domain entry, or one domain's).
    Remove {
        #[command(flatten)]
        config: ConfigArg,
        address: String,
        #[arg(long)]
        domain: Option<String>,
    },
    /// The whole list as CSV on stdout.
    Export {
        #[command(flatten)]
        config: ConfigArg,
        #[arg(long, required = true)]
        csv: bool,
    },
    /// Add the rows of a CSV file (as `export` writes it); all or nothing.
    Import {
        #[command(flatten)]
        config: ConfigArg,
        #[arg(long, value_name = "FILE")]
        csv: PathBuf,
    },
}

#[derive(Subcommand)]
enum TlsReportsCommand {
    /// Per policy domain and UTC day: session counts and the report's state.
    List {
        #[command(flatten)]
        config: ConfigArg,
        /// One JSON object per line.
        #[arg(long)]
        json: bool,
        /// Only this UTC day (YYYY-MM-DD).
        #[arg(long)]
        day: Option<String>,
        /// Only this policy (recipient) domain.
        #[arg(long)]
        domain: Option<String>,
        #[arg(long, default_value_t = 1000)]
        limit: usize,
    },
    /// Send a day's reports now (default: yesterday, UTC); each is sent once.
    Send {
        #[command(flatten)]
        config: ConfigArg,
        /// UTC day, YYYY-MM-DD (today sends the counts so far).
        #[arg(long)]
        day: Option<String>,
        /// Only this policy (recipient) domain.
        #[arg(long)]
        domain: Option<String>,
    },
    /// The report's JSON as sent (or as it would be, for a day not sent).
    Show {
        #[command(flatten)]
        config: ConfigArg,
        domain: String,
        /// UTC day, YYYY-MM-DD.
        day: String,
    },
}

#[derive(Subcommand)]
enum ReportsCommand {
    /// A report's metadata and its message (control characters escaped).
    Show {
        #[command(flatten)]
        config: ConfigArg,
        /// The report id (`report_id` in events, `id` in GET /v1/reports/{id}).
        id: i64,
        /// Only the message, exactly as received.
        #[arg(long)]
        raw: bool,
    },
}

#[derive(Subcommand)]
enum QueueCommand {
    /// Recipients waiting for delivery.
    List {
        #[command(flatten)]
        config: ConfigArg,
        /// One JSON object per line.
        #[arg(long)]
        json: bool,
        /// Every recipient, delivered and bounced ones too.
        #[arg(long)]
        all: bool,
        #[arg(long, default_value_t = 0)]
        limit: usize,
    },
    /// Make an email's waiting recipients due now.
    Retry {
        #[command(flatten)]
        config: ConfigArg,
        email_id: String,
    },
    /// Remove an email's waiting recipients from the queue.
    Delete {
        #[command(flatten)]
        config: ConfigArg,
        email_id: String,
    },
}

fn load(arg: &ConfigArg) -> Result<config::Config, String> {
    let path = config::resolve_path(arg.config.as_deref());
    config::Config::load(&path).map_err(|e| e.to_string())
}

fn init_logging() {
    use std::io::IsTerminal;
    let filter = tracing_subscriber::EnvFilter::try_from_env("TRACKRELAY_LOG")
        .or_else(|_| tracing_subscriber::EnvFilter::try_from_default_env())
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Colour only for a person at a terminal: a file or the journal would
    // keep the escape codes as text.
    let colour = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none();
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .with_ansi(colour);
    // The journal adds its own timestamps.
    if stderr_is_journal() {
        builder.without_time().init();
    } else {
        builder.init();
    }
}

/// systemd sets JOURNAL_STREAM to the `device:inode` of the stream it
/// connected; a unit that redirects stderr elsewhere keeps the variable, so
/// the stream itself is compared.
fn stderr_is_journal() -> bool {
    let Some(value) = std::env::var_os("JOURNAL_STREAM") else {
        return false;
    };
    let Some((dev, ino)) = value.to_str().and_then(|v| v.split_once(':')) else {
        return false;
    };
    let (Ok(dev), Ok(ino)) = (dev.parse::<u64>(), ino.parse::<u64>()) else {
        return false;
    };
    // SAFETY: fstat fills the zeroed struct it is given, for fd 2.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    if unsafe { libc::fstat(2, &mut st) } != 0 {
        return false;
    }
    st.st_dev as u64 == dev && st.st_ino as u64 == ino
}

fn run(cli: Cli) -> Result<(), String> {
    match cli.command {
        Command::Serve {
            config,
            init_store,
            ready_file,
        } => {
            init_logging();
            let config = load(&config)?;
            let options = trackrelay::serve::ServeOptions {
                init_store,
                ready_file,
            };
            // perf (issue 15): before any thread starts; see src/alloc_tuning.rs.
            let tunables = std::env::var("GLIBC_TUNABLES").ok();
            let tuning = trackrelay::alloc_tuning::apply(tunables.as_deref());
            tracing::debug!(?tuning, "malloc trim threshold");
            // One worker more than cores: the runner prepares and signs copies
            // on up to one worker per core (src/outbound/runner.rs), and the
            // extra one keeps sockets (submission replies, tracking hits)
            // moving meanwhile. On 2 cores, 3 workers took bench/relay.sh from
            // 1,281-1,297 to 1,423-1,427 msg/s end to end (issue 15).
            let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(cores + 1)
                .enable_all()
                .build()
                .map_err(|e| format!("starting the runtime: {e}"))?;
            rt.block_on(trackrelay::serve::run(config, options))
        }
        Command::CheckConfig(c) => {
            let path = config::resolve_path(c.config.as_deref());
            let config = config::Config::load(&path).map_err(|e| e.to_string())?;
            for w in config.warnings() {
                println!("warning: {w}");
            }
            println!("{}: ok", path.display());
            Ok(())
        }
        Command::HashPassword => {
            let mut input = String::new();
            std::io::Read::read_to_string(&mut std::io::stdin(), &mut input)
                .map_err(|e| format!("reading stdin: {e}"))?;
            let password = input.strip_suffix('\n').unwrap_or(&input);
            let password = password.strip_suffix('\r').unwrap_or(password);
            if password.is_empty() {
                return Err("hash-password: empty password on stdin".into());
            }
            println!("{}", trackrelay::submission::auth::hash_password(password)?);
            Ok(())
        }
        Command::DkimKeygen {
            domain,
            selector,
            algorithm,
            out,
        } => cli::dkim_keygen(&domain, &selector, &algorithm, &out),
        Command::Preview {
            config,
            rcpt,
            no_sign,
        } => cli::preview(&load(&config)?, rcpt.as_deref(), !no_sign),
        Command::Webhooks { action } => match action {
            WebhooksCommand::List {
                config,
                failed,
                limit,
                json,
            } => cli::webhooks_list(&load(&config)?, failed, limit, json),
            WebhooksCommand::Replay { config, id, since } => {
                cli::webhooks_replay(&load(&config)?, id.as_deref(), &since)
            }
        },
        Command::DnsCheck {
            config,
            domain,
            json,
        } => {
            let config = load(&config)?;
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| format!("starting the runtime: {e}"))?;
            match rt.block_on(trackrelay::dnscheck::run(&config, domain.as_deref(), json))? {
                true => Ok(()),
                // The table says what is missing; the exit status says that something is.
                false => std::process::exit(1),
            }
        }
        Command::Queue { action } => match action {
            QueueCommand::List {
                config,
                json,
                all,
                limit,
            } => cli::queue_list(&load(&config)?, json, all, limit),
            QueueCommand::Retry { config, email_id } => {
                cli::queue_retry(&load(&config)?, &email_id)
            }
            QueueCommand::Delete { config, email_id } => {
                cli::queue_delete(&load(&config)?, &email_id)
            }
        },
        Command::Suppressions { action } => match action {
            SuppressionsCommand::List {
                config,
                json,
                domain,
            } => cli::suppressions::list(&load(&config)?, json, domain.as_deref()),
            SuppressionsCommand::Add {
                config,
                address,
                domain,
                reason,
            } => cli::suppressions::add(&load(&config)?, &address, domain.as_deref(), &reason),
            SuppressionsCommand::Remove {
                config,
                address,
                domain,
            } => cli::suppressions::remove(&load(&config)?, &address, domain.as_deref()),
            SuppressionsCommand::Export { config, csv: _ } => {
                cli::suppressions::export_csv(&load(&config)?)
            }
            SuppressionsCommand::Import { config, csv } => {
                cli::suppressions::import_csv(&load(&config)?, &csv)
            }
        },
        Command::TlsReports { action } => match action {
            TlsReportsCommand::List {
                config,
                json,
                day,
                domain,
                limit,
            } => cli::tls_reports::list(
                &load(&config)?,
                json,
                day.as_deref(),
                domain.as_deref(),
                limit,
            ),
            TlsReportsCommand::Send {
                config,
                day,
                domain,
            } => cli::tls_reports::send(&load(&config)?, day.as_deref(), domain.as_deref()),
            TlsReportsCommand::Show {
                config,
                domain,
                day,
            } => cli::tls_reports::show(&load(&config)?, &domain, &day),
        },
        Command::Reports { action } => match action {
            ReportsCommand::Show { config, id, raw } => {
                cli::reports::show(&load(&config)?, id, raw)
            }
        },
        Command::Events {
            config,
            email,
            kind,
            since,
            until,
            limit,
            json,
        } => {
            let args = cli::EventsArgs {
                email,
                kind,
                since,
                until,
                limit,
                json,
            };
            cli::events(&load(&config)?, &args)
        }
        Command::Stats {
            config,
            domain,
            since,
            until,
            json,
        } => cli::stats(&load(&config)?, domain.as_deref(), &since, &until, json),
        Command::Migrate(config) => cli::store_admin::migrate(&load(&config)?),
        Command::Store {
            cmd: StoreCommand::Copy { from, to, config },
        } => {
            let config = match config {
                Some(p) => Some(config::Config::load(&p).map_err(|e| e.to_string())?),
                None => None,
            };
            cli::store_admin::copy(&from, to.as_deref(), config.as_ref())
        }
        Command::Export {
            config,
            what,
            csv: _,
            since,
            until,
        } => cli::export(&load(&config)?, &what, &since, &until),
    }
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("trackrelay: {e}");
            ExitCode::FAILURE
        }
    }
}
