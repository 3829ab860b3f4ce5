//! One connection outside the pool that LISTENs for the other nodes'
//! notifications and wakes this node's runners and webhook senders. When it
//! drops, it reconnects; the runners' and senders' own polls cover the gap.

use super::{tls::MakeRustls, OUTBOX_CHANNEL, QUEUE_CHANNEL};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Notify;
use tokio_postgres::AsyncMessage;

pub(super) async fn run(
    config: tokio_postgres::Config,
    tls: MakeRustls,
    queue: Arc<Notify>,
    outbox: Arc<Notify>,
) {
    let mut backoff = Duration::from_millis(200);
    loop {
        match listen_once(&config, tls.clone(), &queue, &outbox).await {
            Ok(()) => backoff = Duration::from_millis(200),
            Err(e) => tracing::warn!("store: listening for other nodes' notifications: {e}"),
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(10));
    }
}

async fn listen_once(
    config: &tokio_postgres::Config,
    tls: MakeRustls,
    queue: &Notify,
    outbox: &Notify,
) -> Result<(), tokio_postgres::Error> {
    let (client, mut connection) = config.connect(tls).await?;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    // The connection only makes progress while polled: a task of its own
    // polls it and hands notifications over.
    let pump = tokio::spawn(async move {
        loop {
            match std::future::poll_fn(|cx| connection.poll_message(cx)).await {
                Some(Ok(AsyncMessage::Notification(n))) => {
                    if tx.send(n.channel().to_string()).is_err() {
                        return Ok(());
                    }
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => return Err(e),
                None => return Ok(()),
            }
        }
    });
    client
        .batch_execute(&format!("LISTEN {QUEUE_CHANNEL}; LISTEN {OUTBOX_CHANNEL}"))
        .await?;
    // Anything notified while we were not listening is found by a poll;
    // wake both once so that happens now rather than at the next poll.
    queue.notify_one();
    outbox.notify_waiters();
    while let Some(channel) = rx.recv().await {
        if channel == QUEUE_CHANNEL {
            queue.notify_one();
        } else if channel == OUTBOX_CHANNEL {
            outbox.notify_waiters();
        }
    }
    drop(client);
    match pump.await {
        Ok(r) => r,
        Err(_) => Ok(()),
    }
}
