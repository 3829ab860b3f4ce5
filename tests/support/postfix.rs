//! A private Postfix instance on loopback, as a receiving MX that accepts
//! mail for one domain and bounces it afterwards, the way a real receiver
//! does when it learns only after the 250 that a mailbox does not exist.
//! Its RFC 3464 report goes, by SMTP, to whatever listens at `inbound`.
//!
//! Postfix binds a port it is told, so the port cannot come from the
//! kernel: a few random high ports are tried until Postfix itself reports
//! that it listens (its banner names this instance), and a port taken by
//! someone else only costs a retry.

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

pub struct Postfix {
    dir: tempfile::TempDir,
    conf: PathBuf,
    pub addr: SocketAddr,
}

/// Whether Postfix is installed. CI installs it (.ci/run); elsewhere a test
/// that needs it says loudly that it skipped, and CI refuses to skip.
pub fn available(test: &str) -> bool {
    let ok = Path::new("/usr/sbin/postfix").exists() && unsafe { libc::geteuid() } == 0;
    if !ok {
        assert!(
            std::env::var_os("CI").is_none(),
            "{test}: Postfix is required in CI (apt-get install postfix; run as root)"
        );
        eprintln!("SKIPPED {test}: needs Postfix (apt-get install postfix) and root");
    }
    ok
}

impl Postfix {
    /// Accepts mail for `domain` and bounces each message with `error`
    /// (e.g. "5.1.1 Mailbox does not exist"); mail for `bounce_domain`
    /// (the DSNs) is relayed to `inbound`. Tries random ports.
    pub fn start(domain: &str, error: &str, bounce_domain: &str, inbound: SocketAddr) -> Postfix {
        let mut last = String::new();
        for attempt in 0..8 {
            match Self::start_on(random_port(attempt), domain, error, bounce_domain, inbound) {
                Ok(p) => return p,
                Err(e) => last = e,
            }
        }
        panic!("Postfix did not start on any of 8 ports; last: {last}");
    }

    /// The same on one given port; `Err` when that port is taken, so a
    /// caller that had to write the port somewhere first can try another.
    pub fn start_on(
        port: u16,
        domain: &str,
        error: &str,
        bounce_domain: &str,
        inbound: SocketAddr,
    ) -> Result<Postfix, String> {
        let dir = tempfile::tempdir().unwrap();
        // Postfix's own user walks into its data directory.
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let base = dir.path().join("pf");
        let conf = Self::try_start(&base, port, domain, error, bounce_domain, inbound)?;
        Ok(Postfix {
            dir,
            conf,
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
        })
    }

    fn try_start(
        base: &Path,
        port: u16,
        domain: &str,
        error: &str,
        bounce_domain: &str,
        inbound: SocketAddr,
    ) -> Result<PathBuf, String> {
        let conf = base.join("etc");
        let queue = base.join("queue");
        let data = base.join("data");
        for d in [&conf, &queue, &data] {
            std::fs::create_dir_all(d).unwrap();
        }
        let chown = Command::new("chown")
            .arg("postfix")
            .arg(&data)
            .status()
            .unwrap();
        assert!(chown.success(), "chown postfix {}", data.display());
        let hostname = format!("pf{port}.test");
        let main_cf = format!(
            "compatibility_level = 3.6
myhostname = {hostname}
mydomain = test
myorigin = $myhostname
queue_directory = {queue}
data_directory = {data}
mail_owner = postfix
setgid_group = postdrop
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
mydestination =
local_recipient_maps =
local_transport = error:local delivery disabled
alias_maps =
alias_database =
mynetworks = 127.0.0.0/8
relay_domains = {domain}
smtpd_reject_unlisted_recipient = no
smtpd_relay_restrictions = permit_mynetworks, reject_unauth_destination
transport_maps = inline:{{ {{{domain} = error:{error}}}, {{{bounce_domain} = smtp:[{ip}]:{iport}}} }}
default_transport = error:this test MX relays nowhere else
smtp_dns_support_level = disabled
smtpd_tls_security_level = none
smtp_tls_security_level = none
append_dot_mydomain = no
biff = no
maillog_file = {log}
maillog_file_prefixes = {base}
",
            queue = queue.display(),
            data = data.display(),
            ip = inbound.ip(),
            iport = inbound.port(),
            log = base.join("maillog").display(),
            base = base.display(),
        );
        std::fs::write(conf.join("main.cf"), main_cf).unwrap();
        // The package's master.cf (as shipped, whatever debconf chose) without its port-25 listener and chroots, plus
        // this instance's listener.
        let stock = std::fs::read_to_string("/usr/share/postfix/master.cf.dist").unwrap();
        let mut master = format!("127.0.0.1:{port} inet n - n - - smtpd\n");
        for line in stock.lines() {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.first() == Some(&"smtp") && f.get(1) == Some(&"inet") {
                continue;
            }
            if !line.starts_with(['#', ' ', '\t']) && f.len() >= 8 && f[4] == "y" {
                let mut f = f.clone();
                f[4] = "n";
                master.push_str(&f.join(" "));
            } else {
                master.push_str(line);
            }
            master.push('\n');
        }
        std::fs::write(conf.join("master.cf"), master).unwrap();
        let out = Command::new("postfix")
            .arg("-c")
            .arg(&conf)
            .arg("start")
            .output()
            .unwrap();
        if !out.status.success() {
            return Err(format!(
                "postfix start on {port}: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        // Listening, and it is this instance that answers.
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(s) = TcpStream::connect(("127.0.0.1", port)) {
                s.set_read_timeout(Some(Duration::from_secs(5))).ok();
                let mut banner = String::new();
                let _ = BufReader::new(s).read_line(&mut banner);
                if banner.starts_with("220 ") && banner.contains(&hostname) {
                    return Ok(conf);
                }
                stop(&conf);
                return Err(format!("port {port} is someone else's: {banner:?}"));
            }
            if !master_running(&queue) {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        stop(&conf);
        Err(format!(
            "postfix did not listen on {port}: {}",
            std::fs::read_to_string(base.join("maillog")).unwrap_or_default()
        ))
    }

    /// The instance's log (deliveries, bounces), for failure messages.
    pub fn log(&self) -> String {
        let base = self.conf.parent().unwrap();
        std::fs::read_to_string(base.join("maillog")).unwrap_or_default()
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

/// A port in 20000..60000 that differs per process and attempt.
pub fn random_port(attempt: u32) -> u16 {
    let seed = std::process::id()
        .wrapping_mul(2_654_435_761)
        .wrapping_add(attempt.wrapping_mul(7_919))
        .wrapping_add(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.subsec_nanos()),
        );
    20_000 + (seed % 40_000) as u16
}

fn master_running(queue: &Path) -> bool {
    let Ok(pid) = std::fs::read_to_string(queue.join("pid/master.pid")) else {
        return true; // not written yet
    };
    let Ok(pid) = pid.trim().parse::<i32>() else {
        return true;
    };
    unsafe { libc::kill(pid, 0) == 0 }
}

fn stop(conf: &Path) {
    let _ = Command::new("postfix")
        .arg("-c")
        .arg(conf)
        .arg("stop")
        .output();
}

impl Drop for Postfix {
    fn drop(&mut self) {
        stop(&self.conf);
    }
}
