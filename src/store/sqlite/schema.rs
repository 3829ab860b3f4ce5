//! Numbered migrations, tracked with `PRAGMA user_version`. A migration is
//! appended, never edited once released: databases in the field have run it.

use rusqlite::Connection;

const MIGRATIONS: &[&str] = &[
    // 1: the whole pipeline: accepted emails, one queue row per recipient,
    // events, and the webhook outbox.
    r#"
    CREATE TABLE emails (
        id            TEXT PRIMARY KEY,          -- UUIDv7, the email id of every reply, event and webhook
        created_at    INTEGER NOT NULL,          -- unix milliseconds
        domain        TEXT NOT NULL,             -- sending domain: the From: header's
        mail_from     TEXT NOT NULL,             -- envelope sender as submitted
        header_from   TEXT,
        to_header     TEXT,
        subject       TEXT,
        message_id    TEXT,
        tags          TEXT NOT NULL DEFAULT '[]',-- JSON array, from X-Tags
        auth_user     TEXT,
        client_ip     TEXT,
        smtputf8      INTEGER NOT NULL DEFAULT 0,
        size          INTEGER NOT NULL,
        received      BLOB,                      -- our Received: trace header, prepended at delivery
        body          BLOB,                      -- the message exactly as submitted; NULL once pruned
        pruned_at     INTEGER
    );
    CREATE INDEX emails_created ON emails(created_at);
    CREATE INDEX emails_domain_created ON emails(domain, created_at);

    CREATE TABLE recipients (
        email_id        TEXT NOT NULL REFERENCES emails(id) ON DELETE CASCADE,
        idx             INTEGER NOT NULL,        -- recipient index, carried in tracking tokens
        address         TEXT NOT NULL,
        status          TEXT NOT NULL,           -- queued, sending, deferred, delivered, bounced, failed
        attempts        INTEGER NOT NULL DEFAULT 0,
        next_attempt_at INTEGER,                 -- unix ms; set while queued/deferred
        lease_until     INTEGER,                 -- unix ms; set while sending
        last_response   TEXT,
        tls             TEXT,                    -- TLS version of the last attempt, NULL for plaintext
        mx              TEXT,                    -- host of the last attempt
        delivered_at    INTEGER,
        bounced_at      INTEGER,
        opened_at       INTEGER,
        clicked_at      INTEGER,
        PRIMARY KEY (email_id, idx)
    ) WITHOUT ROWID;
    CREATE INDEX recipients_due ON recipients(next_attempt_at)
        WHERE status IN ('queued', 'deferred');
    CREATE INDEX recipients_leased ON recipients(lease_until) WHERE status = 'sending';

    CREATE TABLE events (
        id             INTEGER PRIMARY KEY AUTOINCREMENT,
        email_id       TEXT NOT NULL,            -- no foreign key: events outlive pruned emails,
                                                 -- and tokens from `preview` name unknown ids
        rcpt_idx       INTEGER,
        recipient      TEXT,
        type           TEXT NOT NULL,
        at             INTEGER NOT NULL,         -- unix ms
        ip             TEXT,
        user_agent     TEXT,
        referer        TEXT,
        link           TEXT,
        machine        INTEGER,
        machine_reason TEXT,
        detail         TEXT                      -- JSON: delivery response, TLS, attempt ...
    );
    CREATE INDEX events_email ON events(email_id, id);
    CREATE INDEX events_at ON events(at);
    CREATE INDEX events_type_at ON events(type, at);

    CREATE TABLE webhook_outbox (
        id              TEXT PRIMARY KEY,        -- webhook-id header: stable across retries
        endpoint        TEXT NOT NULL,           -- the endpoint URL it is for
        event_id        INTEGER NOT NULL,
        payload         TEXT NOT NULL,           -- the JSON body, fixed when the event is stored
        status          TEXT NOT NULL,           -- pending, delivered, failed
        attempts        INTEGER NOT NULL DEFAULT 0,
        next_attempt_at INTEGER NOT NULL,
        last_error      TEXT,
        created_at      INTEGER NOT NULL,
        delivered_at    INTEGER
    ) WITHOUT ROWID;
    CREATE INDEX webhook_due ON webhook_outbox(next_attempt_at) WHERE status = 'pending';
    CREATE INDEX webhook_created ON webhook_outbox(created_at);
    "#,
    // 2: leases with an owner, and the start of the latest delivery attempt
    // (a scanner at the receiver follows links during or right after the
    // `250`, before `delivered_at` is known).
    r#"
    ALTER TABLE recipients ADD COLUMN lease_id TEXT;          -- owner of the lease while sending
    ALTER TABLE recipients ADD COLUMN attempt_started_at INTEGER; -- unix ms, set when an attempt is claimed
    "#,
    // 3 (queries): hourly per-domain rollups, so stats over any window read a
    // few hundred rows instead of every recipient and its events. A row
    // counts recipients, each once per counter, in the hour its email was
    // accepted (the window stats have always used). `recipients.counted`
    // holds which counters a recipient is already in (see
    // store/rollups.rs), which is what makes the counts unique. Paging
    // events of one type walks (type, id) in id order instead of sorting
    // every event of that type.
    r#"
    ALTER TABLE recipients ADD COLUMN counted INTEGER NOT NULL DEFAULT 0;
    CREATE TABLE rollups (
        hour            INTEGER NOT NULL,        -- unix ms, start of the hour the emails were accepted
        domain          TEXT NOT NULL,           -- sending domain, lower case
        sent            INTEGER NOT NULL DEFAULT 0,
        delivered       INTEGER NOT NULL DEFAULT 0,
        delayed         INTEGER NOT NULL DEFAULT 0,
        bounced         INTEGER NOT NULL DEFAULT 0,
        failed          INTEGER NOT NULL DEFAULT 0,
        complained      INTEGER NOT NULL DEFAULT 0,
        opened          INTEGER NOT NULL DEFAULT 0,
        opened_human    INTEGER NOT NULL DEFAULT 0,
        opened_machine  INTEGER NOT NULL DEFAULT 0,
        clicked         INTEGER NOT NULL DEFAULT 0,
        clicked_human   INTEGER NOT NULL DEFAULT 0,
        clicked_machine INTEGER NOT NULL DEFAULT 0,
        PRIMARY KEY (hour, domain)
    ) WITHOUT ROWID;

    -- Existing stores: what each recipient already counts for. Events
    -- pruned by retention can no longer say a recipient was delayed or a
    -- human opened; opened_at/clicked_at still say it opened or clicked.
    UPDATE recipients SET counted = 1
        | (CASE WHEN status = 'delivered' THEN 2 ELSE 0 END)
        | (CASE WHEN EXISTS (SELECT 1 FROM events v WHERE v.email_id = recipients.email_id
                AND v.rcpt_idx = recipients.idx AND v.type = 'email.delivery_delayed') THEN 4 ELSE 0 END)
        | (CASE WHEN status = 'bounced' THEN 8 ELSE 0 END)
        | (CASE WHEN status = 'failed' THEN 16 ELSE 0 END)
        | (CASE WHEN opened_at IS NOT NULL THEN 64 ELSE 0 END)
        | (CASE WHEN EXISTS (SELECT 1 FROM events v WHERE v.email_id = recipients.email_id
                AND v.rcpt_idx = recipients.idx AND v.type = 'email.opened'
                AND NOT COALESCE(v.machine, 0)) THEN 128 ELSE 0 END)
        | (CASE WHEN EXISTS (SELECT 1 FROM events v WHERE v.email_id = recipients.email_id
                AND v.rcpt_idx = recipients.idx AND v.type = 'email.opened'
                AND COALESCE(v.machine, 0)) THEN 256 ELSE 0 END)
        | (CASE WHEN clicked_at IS NOT NULL THEN 512 ELSE 0 END)
        | (CASE WHEN EXISTS (SELECT 1 FROM events v WHERE v.email_id = recipients.email_id
                AND v.rcpt_idx = recipients.idx AND v.type = 'email.clicked'
                AND NOT COALESCE(v.machine, 0)) THEN 1024 ELSE 0 END)
        | (CASE WHEN EXISTS (SELECT 1 FROM events v WHERE v.email_id = recipients.email_id
                AND v.rcpt_idx = recipients.idx AND v.type = 'email.clicked'
                AND COALESCE(v.machine, 0)) THEN 2048 ELSE 0 END);
    INSERT INTO rollups (hour, domain, sent, delivered, delayed, bounced, failed, opened, opened_human,
                         opened_machine, clicked, clicked_human, clicked_machine)
        SELECT (e.created_at / 3600000) * 3600000, lower(e.domain), COUNT(*),
               SUM((r.counted & 2) != 0), SUM((r.counted & 4) != 0), SUM((r.counted & 8) != 0),
               SUM((r.counted & 16) != 0), SUM((r.counted & 64) != 0), SUM((r.counted & 128) != 0),
               SUM((r.counted & 256) != 0), SUM((r.counted & 512) != 0), SUM((r.counted & 1024) != 0),
               SUM((r.counted & 2048) != 0)
        FROM recipients r JOIN emails e ON e.id = r.email_id
        GROUP BY 1, 2;

    DROP INDEX IF EXISTS events_type_at;
    CREATE INDEX IF NOT EXISTS events_type_id ON events(type, id);
    "#,
    // 4 (suppressions) (issue 11): addresses never delivered to. scope '' means
    // every sending domain (a NULL would defeat the primary key's
    // uniqueness); the store maps it to and from None.
    r#"
    CREATE TABLE suppressions (
        address     TEXT NOT NULL,           -- lowercased
        scope       TEXT NOT NULL DEFAULT '', -- '' = every domain, else one sending domain, lowercased
        reason      TEXT NOT NULL,           -- hard_bounce, complaint, unsubscribe, manual
        event_id    INTEGER,
        created_at  INTEGER NOT NULL,
        expires_at  INTEGER,
        PRIMARY KEY (address, scope)
    ) WITHOUT ROWID;
    -- Rollup counters for the new events (recipients.counted bits 4096 and
    -- 8192). No store before this one has such events: nothing to backfill.
    ALTER TABLE rollups ADD COLUMN suppressed INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE rollups ADD COLUMN unsubscribed INTEGER NOT NULL DEFAULT 0;
    "#,
    // 5 (inbound reports) (issue 11): what the return-path MX received, kept
    // raw so the operator can read the bounce or complaint an event names.
    // A row is written before the 250 (durable), then processed once; rows
    // that link to no email are deleted by the processor (only counted).
    r#"
    CREATE TABLE inbound_reports (
        id           INTEGER PRIMARY KEY,
        received_at  INTEGER NOT NULL,
        peer_ip      TEXT NOT NULL,
        helo         TEXT NOT NULL,
        mail_from    TEXT NOT NULL,           -- '' for the null sender <>
        rcpt_to      TEXT NOT NULL,           -- JSON array of envelope recipients
        size         INTEGER NOT NULL,
        raw          BLOB NOT NULL,
        processed_at INTEGER,                 -- NULL: waiting for the feedback processor
        kind         TEXT,                    -- dsn, arf, plain_bounce, auto_reply, unsubscribe, unknown
        outcome      TEXT                     -- JSON: what the processor did
    );
    CREATE INDEX inbound_reports_pending ON inbound_reports(id) WHERE processed_at IS NULL;
    CREATE INDEX inbound_reports_received ON inbound_reports(received_at);
    "#,
    // 6 (domain statuses) (issue 12): each configured domain's verification
    // status as `serve` re-checks its DNS records, the last result of every
    // record, the tracking host new links use, and the history of changes.
    r#"
    CREATE TABLE domain_status (
        domain          TEXT PRIMARY KEY,        -- lowercased
        status          TEXT NOT NULL,           -- not_started, pending, verified, failed, ...
        status_at       INTEGER NOT NULL,        -- unix ms: when this status began
        since           INTEGER,                 -- not fully verified since (72 h window)
        lost_since      INTEGER,                 -- a sending record missing since (temporary_failure)
        checked_at      INTEGER,
        next_check_at   INTEGER,
        records         TEXT NOT NULL DEFAULT '[]', -- JSON: the last check, one object per record
        reason          TEXT,
        tracking_host   TEXT,                    -- the host new links use
        tracking_reason TEXT
    ) WITHOUT ROWID;
    CREATE TABLE domain_history (
        id          INTEGER PRIMARY KEY,
        domain      TEXT NOT NULL,
        from_status TEXT NOT NULL,
        to_status   TEXT NOT NULL,
        at          INTEGER NOT NULL,
        reason      TEXT NOT NULL
    );
    CREATE INDEX domain_history_domain ON domain_history(domain, id);
    "#,
    // 7 (dashboard) (issue 12): the dashboard's search by recipient looks
    // an address up instead of reading every recipient, and an email's
    // page finds the webhooks of its events without reading the outbox.
    r#"
    CREATE INDEX IF NOT EXISTS recipients_address ON recipients(address COLLATE NOCASE);
    CREATE INDEX IF NOT EXISTS webhook_outbox_event ON webhook_outbox(event_id);
    "#,
    // 8 (MTA-STS) (issue 13): recipient domains' MTA-STS policies (RFC
    // 8461), cached until max_age runs out, and the TLS policy that
    // governed each recipient's last attempt.
    r#"
    CREATE TABLE mta_sts_policies (
        domain      TEXT PRIMARY KEY,            -- recipient domain, lowercased
        policy_id   TEXT NOT NULL,               -- id= of the _mta-sts TXT record it came with
        policy      TEXT NOT NULL,               -- the policy text as fetched
        fetched_at  INTEGER NOT NULL,            -- unix ms
        expires_at  INTEGER NOT NULL             -- unix ms: fetched_at + max_age
    ) WITHOUT ROWID;
    ALTER TABLE recipients ADD COLUMN tls_policy TEXT;  -- dane, mta-sts, enforced, opportunistic
    "#,
    // 9 (tlsrpt) (issue 13): TLS reporting (RFC 8460). Session counts per
    // policy domain and UTC day, one row per distinct outcome (a success
    // has result_type ''); and the daily reports built from them, each
    // sent once per (policy domain, day).
    r#"
    CREATE TABLE tls_report_counts (
        day            TEXT NOT NULL,            -- UTC day, YYYY-MM-DD
        policy_domain  TEXT NOT NULL,            -- lowercased
        policy_type    TEXT NOT NULL,            -- sts, tlsa, no-policy-found
        policy_strings TEXT NOT NULL DEFAULT '[]', -- JSON array of strings
        mx_host        TEXT NOT NULL DEFAULT '[]', -- JSON array (the MTA-STS policy's mx patterns)
        result_type    TEXT NOT NULL DEFAULT '', -- '' for success, else an RFC 8460 4.3 result type
        sending_ip     TEXT NOT NULL DEFAULT '',
        receiving_mx   TEXT NOT NULL DEFAULT '',
        receiving_ip   TEXT NOT NULL DEFAULT '',
        count          INTEGER NOT NULL,
        PRIMARY KEY (day, policy_domain, policy_type, policy_strings, mx_host,
                     result_type, sending_ip, receiving_mx, receiving_ip)
    ) WITHOUT ROWID;
    CREATE TABLE tls_reports (
        policy_domain   TEXT NOT NULL,
        day             TEXT NOT NULL,
        status          TEXT NOT NULL,           -- pending, sent, failed, no_policy
        report_id       TEXT NOT NULL DEFAULT '',
        report          TEXT,                    -- the JSON as sent (NULL for no_policy)
        rua             TEXT NOT NULL DEFAULT '[]', -- JSON array: every rua of the record
        done            TEXT NOT NULL DEFAULT '[]', -- JSON array: the ruas it reached
        attempts        INTEGER NOT NULL DEFAULT 0,
        next_attempt_at INTEGER,
        last_error      TEXT,
        created_at      INTEGER NOT NULL,
        sent_at         INTEGER,
        PRIMARY KEY (policy_domain, day)
    ) WITHOUT ROWID;
    CREATE INDEX tls_reports_due ON tls_reports(status, next_attempt_at);
    "#,
    // 10 (stsrefresh) (issue 13): when each cached MTA-STS policy last
    // served a delivery, so the background refresh keeps only policies in
    // use fresh and lets the others expire and be dropped.
    r#"
    ALTER TABLE mta_sts_policies ADD COLUMN used_at INTEGER NOT NULL DEFAULT 0;  -- unix ms
    UPDATE mta_sts_policies SET used_at = fetched_at;
    "#,
    // 11 (queue) (issue 14): the node holding each lease, so an operator
    // (and a node recovering expired leases) sees whose work a row is when
    // several nodes share one store.
    r#"
    ALTER TABLE recipients ADD COLUMN lease_node TEXT;  -- server.node_id of the lease's holder while sending
    "#,
    // 12 (tracking) (issue 14): a recipient's clicks by time, so the click
    // burst rule reads them from the store (whatever node recorded them)
    // instead of from one process's memory; clicks only, so it stays small.
    r#"
    CREATE INDEX IF NOT EXISTS events_clicks ON events(email_id, rcpt_idx, at)
        WHERE type = 'email.clicked';
    "#,
    // 13 (issue 15): bodies in append-only segment files beside the
    // database (`spool`); the row says where. Rows from before keep theirs
    // in `body`. The index finds the oldest segment still in use, so
    // emptied segments can be deleted.
    r#"
    ALTER TABLE emails ADD COLUMN body_seg INTEGER;
    ALTER TABLE emails ADD COLUMN body_off INTEGER;
    CREATE INDEX emails_body_seg ON emails(body_seg) WHERE body_seg IS NOT NULL;
    "#,
];

/// Brings the database up to the newest schema, one transaction per step.
pub fn migrate(conn: &mut Connection) -> rusqlite::Result<()> {
    let current: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    let current = current.max(0) as usize;
    if current > MIGRATIONS.len() {
        return Err(rusqlite::Error::InvalidParameterName(format!(
            "database schema version {current} is newer than this trackrelay knows ({}); refusing to run an older binary on it",
            MIGRATIONS.len()
        )));
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(current) {
        let tx = conn.transaction()?;
        tx.execute_batch(sql)?;
        tx.pragma_update(None, "user_version", (i + 1) as i64)?;
        tx.commit()?;
    }
    Ok(())
}

pub fn version() -> usize {
    MIGRATIONS.len()
}
