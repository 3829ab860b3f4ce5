//! The mail transactions of one open session: MAIL, RCPT, DATA and the
//! data, one message after another, each outcome reported to the source in
//! the order the source gave the messages.
//!
//! To a server offering PIPELINING (RFC 2920) the end of one message's data
//! and the next message's MAIL, RCPT and DATA go out together, before the
//! reply to the data is read: each message costs one round trip instead of
//! two. The end of data closes the transaction whatever its reply (RFC 5321
//! 4.1.1.4), so the next envelope never needs an RSET in front of it.
//!
//! The final "." waits for the next envelope and shares its write. Sent
//! apart, the server reads them apart and answers in two small writes; a
//! server that leaves Nagle's algorithm on then holds the second until we
//! acknowledge the first, which our stack delays by up to 40 ms since we
//! have nothing to send meanwhile (bench/README.md, issue 15, sixth pass:
//! the connection stood still that long, once in a few messages).

use super::client::{temp, ClientConfig, MessageSource, NotAttempted, Outcome, OutgoingMessage};
use super::protocol::{self, Capabilities, MailParams, Reply};
use super::session::{ConnError, Connection};

/// How one transaction ended, when the connection survived it.
struct Tx {
    outcome: Outcome,
    /// False when the server may hold transaction state (RSET before the
    /// next one).
    clean: bool,
}

enum TxError {
    /// The connection is gone; the message's fate is unknown.
    Conn(String),
    /// 421: the server is closing; this message's outcome is known.
    Closing(Outcome),
}

impl From<ConnError> for TxError {
    fn from(e: ConnError) -> Self {
        TxError::Conn(e.0)
    }
}

/// One message's commands and data, ready for the wire.
struct Envelope {
    mail: Vec<u8>,
    rcpt: Vec<u8>,
    /// How the RCPT stage is named in a refusal.
    rcpt_stage: String,
    /// Dot-stuffed, with the final ".".
    payload: Vec<u8>,
}

/// The end of the data, last in every payload.
const END_OF_DATA: &[u8] = b".\r\n";

impl Envelope {
    /// The data without its final ".".
    fn body(&self) -> &[u8] {
        &self.payload[..self.payload.len() - END_OF_DATA.len()]
    }
}

/// Runs one transaction per message of `source`, reporting each outcome
/// as it ends. Returns why the rest were not attempted (if so) and whether
/// the connection is still usable.
pub(super) async fn run<S: MessageSource>(
    conn: &mut Connection,
    caps: &Capabilities,
    cfg: &ClientConfig,
    source: &mut S,
) -> (Result<(), NotAttempted>, bool) {
    if caps.pipelining {
        pipelined(conn, caps, cfg, source).await
    } else {
        lockstep(conn, caps, cfg, source).await
    }
}

/// Each command waits for its reply.
async fn lockstep<S: MessageSource>(
    conn: &mut Connection,
    caps: &Capabilities,
    cfg: &ClientConfig,
    source: &mut S,
) -> (Result<(), NotAttempted>, bool) {
    let t = &cfg.timeouts;
    let mut clean = true;
    while let Some(msg) = source.next().await {
        let tls = conn.tls_version();
        if !clean {
            if let Err(stop) = reset(conn, cfg, source, &tls).await {
                return stop;
            }
            clean = true;
        }
        let env = match envelope(caps, &msg, &tls) {
            Ok(env) => env,
            Err(refusal) => {
                source.outcome(refusal).await;
                continue;
            }
        };
        drop(msg);
        let tx = async {
            let (mail_r, _) = conn.command(&env.mail, t.mail, "MAIL FROM").await?;
            if !mail_r.is_positive() {
                return rejected("MAIL FROM", &mail_r, &tls);
            }
            let (rcpt_r, _) = conn.command(&env.rcpt, t.rcpt, "RCPT TO").await?;
            if !rcpt_r.is_positive() {
                return rejected(&env.rcpt_stage, &rcpt_r, &tls);
            }
            let (data_r, _) = conn.command(b"DATA\r\n", t.data_init, "DATA").await?;
            if data_r.code != 354 {
                return rejected("DATA", &data_r, &tls);
            }
            conn.send(&env.payload, t.data_block).await?;
            end_of_data(conn, cfg, &tls).await
        };
        match tx.await {
            Ok(tx) => {
                clean = tx.clean;
                source.outcome(tx.outcome).await;
            }
            Err(e) => return (Err(lost(source, e, &tls).await), false),
        }
    }
    (Ok(()), true)
}

/// RFC 2920: the envelope in one write, and the next envelope written
/// before the reply to the last data is read.
async fn pipelined<S: MessageSource>(
    conn: &mut Connection,
    caps: &Capabilities,
    cfg: &ClientConfig,
    source: &mut S,
) -> (Result<(), NotAttempted>, bool) {
    let t = &cfg.timeouts;
    let mut clean = true;
    // The last message's data is sent but for its final ".", and its reply
    // not yet read.
    let mut in_flight = false;
    loop {
        let next = source.next().await;
        let tls = conn.tls_version();
        let Some(msg) = next else {
            if in_flight {
                if let Err(stop) = end_and_settle(conn, cfg, source, &tls).await {
                    return (Err(stop), false);
                }
            }
            return (Ok(()), true);
        };
        let env = match envelope(caps, &msg, &tls) {
            Ok(env) => env,
            Err(refusal) => {
                // Outcomes go in order: the message in flight first.
                if std::mem::take(&mut in_flight) {
                    if let Err(stop) = end_and_settle(conn, cfg, source, &tls).await {
                        source.outcome(refusal).await;
                        return (Err(stop), false);
                    }
                }
                source.outcome(refusal).await;
                continue;
            }
        };
        drop(msg);
        if !clean {
            // Only after a refused envelope, so never with data in flight.
            if let Err(stop) = reset(conn, cfg, source, &tls).await {
                return stop;
            }
            clean = true;
        }
        let mut group = Vec::with_capacity(END_OF_DATA.len() + env.mail.len() + env.rcpt.len() + 6);
        if in_flight {
            group.extend_from_slice(END_OF_DATA);
        }
        group.extend_from_slice(&env.mail);
        group.extend_from_slice(&env.rcpt);
        group.extend_from_slice(b"DATA\r\n");
        let sent = conn.send(&group, t.mail).await;
        if std::mem::take(&mut in_flight) {
            if let Err(stop) = settle(conn, cfg, source, &tls).await {
                source.outcome(temp(stop.reason.clone(), tls.clone())).await;
                return (Err(stop), false);
            }
        }
        let opened = async {
            sent?;
            let (mail_r, _) = conn.read_reply(t.mail, "MAIL FROM").await?;
            let (rcpt_r, _) = conn.read_reply(t.rcpt, "RCPT TO").await?;
            let (data_r, _) = conn.read_reply(t.data_init, "DATA").await?;
            for (stage, reply) in [("MAIL FROM", &mail_r), (&env.rcpt_stage[..], &rcpt_r)] {
                if !reply.is_positive() || reply.is_closing() {
                    if data_r.code == 354 {
                        // The server took DATA although the envelope failed
                        // (RFC 2920 says it must not); an empty message
                        // closes it, and RSET discards it.
                        conn.send(b".\r\n", t.data_block).await?;
                        conn.read_reply(t.data_term, "end of empty DATA").await?;
                    }
                    return rejected(stage, reply, &tls).map(Some);
                }
            }
            if data_r.code != 354 {
                return rejected("DATA", &data_r, &tls).map(Some);
            }
            conn.send(env.body(), t.data_block).await?;
            Ok(None)
        };
        match opened.await {
            Ok(None) => in_flight = true,
            Ok(Some(tx)) => {
                clean = tx.clean;
                source.outcome(tx.outcome).await;
            }
            Err(e) => return (Err(lost(source, e, &tls).await), false),
        }
    }
}

/// The commands and data of `msg`, or the reason this server can never
/// take it (a permanent failure decided here, without asking).
fn envelope(
    caps: &Capabilities,
    msg: &OutgoingMessage,
    tls: &Option<String>,
) -> Result<Envelope, Outcome> {
    let refuse = |reason: String| Outcome::PermFail {
        reason,
        tls: tls.clone(),
    };
    let smtputf8 = msg.needs_smtputf8 || !msg.mail_from.is_ascii() || !msg.rcpt_to.is_ascii();
    if smtputf8 && !caps.smtputf8 {
        return Err(refuse(
            "the message needs SMTPUTF8 (internationalized addresses or headers), \
             which the receiving server does not offer"
                .into(),
        ));
    }
    let (payload, size) = protocol::data_payload(&msg.data);
    if let Some(limit) = caps.size.filter(|&limit| size > limit) {
        return Err(refuse(format!(
            "message size {size} exceeds the receiving server's limit of {limit} bytes"
        )));
    }
    let params = MailParams {
        size: caps.size.map(|_| size),
        eight_bit_mime: msg.needs_8bitmime && caps.eight_bit_mime,
        smtputf8,
    };
    let mail =
        protocol::mail_from(&msg.mail_from, &params).map_err(|e| refuse(format!("sender: {e}")))?;
    let rcpt = protocol::rcpt_to(&msg.rcpt_to).map_err(|e| refuse(format!("recipient: {e}")))?;
    Ok(Envelope {
        mail,
        rcpt,
        rcpt_stage: format!("RCPT TO:<{}>", protocol::sanitize(&msg.rcpt_to)),
        payload,
    })
}

/// The reply to the end of the data.
async fn end_of_data(
    conn: &mut Connection,
    cfg: &ClientConfig,
    tls: &Option<String>,
) -> Result<Tx, TxError> {
    let (end, _) = conn
        .read_reply(cfg.timeouts.data_term, "end of DATA")
        .await?;
    if end.is_positive() {
        return Ok(Tx {
            outcome: Outcome::Delivered {
                response: end.to_string(),
                tls: tls.clone(),
            },
            clean: true,
        });
    }
    rejected("end of DATA", &end, tls)
}

/// Reads the reply to the data in flight and reports its outcome; `Err`
/// says why the messages after it are not attempted.
async fn settle<S: MessageSource>(
    conn: &mut Connection,
    cfg: &ClientConfig,
    source: &mut S,
    tls: &Option<String>,
) -> Result<(), NotAttempted> {
    match end_of_data(conn, cfg, tls).await {
        Ok(tx) => {
            source.outcome(tx.outcome).await;
            Ok(())
        }
        Err(e) => Err(lost(source, e, tls).await),
    }
}

/// Sends the final "." of the data in flight, then [`settle`]s it.
async fn end_and_settle<S: MessageSource>(
    conn: &mut Connection,
    cfg: &ClientConfig,
    source: &mut S,
    tls: &Option<String>,
) -> Result<(), NotAttempted> {
    if let Err(e) = conn.send(END_OF_DATA, cfg.timeouts.data_block).await {
        return Err(lost(source, e.into(), tls).await);
    }
    settle(conn, cfg, source, tls).await
}

/// RSET before the next transaction, after a refused one. On failure the
/// message about to be sent is reported not attempted, and the returned
/// value ends the session.
async fn reset<S: MessageSource>(
    conn: &mut Connection,
    cfg: &ClientConfig,
    source: &mut S,
    tls: &Option<String>,
) -> Result<(), (Result<(), NotAttempted>, bool)> {
    let (why, usable) = match conn
        .command(b"RSET\r\n", cfg.timeouts.command, "RSET")
        .await
    {
        Ok((reply, _)) if reply.is_positive() => return Ok(()),
        Ok((reply, _)) => (
            format!("not attempted: RSET refused: {reply}"),
            !reply.is_closing(),
        ),
        Err(e) => (format!("not attempted: connection lost: {e}"), false),
    };
    source.outcome(temp(why.clone(), tls.clone())).await;
    Err((
        Err(NotAttempted {
            reason: why,
            tls: tls.clone(),
        }),
        usable,
    ))
}

/// Reports the outcome of the message whose transaction ended the session
/// and says why the rest are not attempted.
async fn lost<S: MessageSource>(source: &mut S, e: TxError, tls: &Option<String>) -> NotAttempted {
    let reason = match e {
        TxError::Conn(reason) => {
            source.outcome(temp(reason.clone(), tls.clone())).await;
            format!("not attempted: connection lost: {reason}")
        }
        TxError::Closing(outcome) => {
            let why = format!(
                "not attempted: server closed the session: {}",
                outcome.text()
            );
            source.outcome(outcome).await;
            why
        }
    };
    NotAttempted {
        reason,
        tls: tls.clone(),
    }
}

/// A refusal at `stage`: 5xx bounces, anything else (4xx, or a reply that
/// makes no sense there) is retried.
fn rejected(stage: &str, reply: &Reply, tls: &Option<String>) -> Result<Tx, TxError> {
    let reason = format!("{stage}: {reply}");
    let tls = tls.clone();
    let outcome = if reply.is_permanent() {
        Outcome::PermFail { reason, tls }
    } else {
        Outcome::TempFail { reason, tls }
    };
    if reply.is_closing() {
        return Err(TxError::Closing(outcome));
    }
    Ok(Tx {
        outcome,
        clean: false,
    })
}
