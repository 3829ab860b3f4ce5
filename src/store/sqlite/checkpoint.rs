//! WAL checkpoints on their own thread.
//!
//! SQLite's automatic checkpoint runs inside the commit that crosses 1,000
//! WAL pages, on the writer thread: every ~80 accepted 50 KB messages, one
//! commit (and the `250`s waiting for it) also copied all their pages into
//! the database file and synced it. In bench/relay.sh that work on the
//! writer's critical path held the load back (issue 15: end to end 1,315
//! msg/s with it, 1,394 without any checkpoint). Here the writer only wakes
//! this thread, which checkpoints with its own connection while the writer
//! goes on; SQLite allows one checkpoint beside one writer.
//!
//! A checkpoint running beside a busy writer rarely catches up with the
//! very last frame, and the WAL only starts over from its beginning when a
//! write transaction begins with every frame copied. So past
//! [`WRITER_PAGES`] the writer stops waking the thread, waits for the
//! checkpoint it may be running (they share a lock), and checkpoints itself
//! as SQLite would: cheap by then, since the thread copied nearly
//! everything, and its next transaction starts the WAL over. Without that
//! wait the writer's checkpoint found the thread at work again and again,
//! and under load the WAL never started over (234 MB in the unit test
//! below, with 6 copies of it running at once).

use super::open_connection;
use crate::store::{Result, StoreError};
use rusqlite::{Connection, OpenFlags};
use std::path::Path;
use std::sync::mpsc::{self, SyncSender};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// New WAL pages that wake the checkpointer (about 20 messages of 50 KB):
/// small steps keep each copy short and its pages still cached.
const WAKE_PAGES: i32 = 256;
/// WAL pages after which the writer checkpoints itself (64 MB of 4 KB
/// pages), as SQLite's own automatic checkpoint would after 1,000.
const WRITER_PAGES: i32 = 16_000;

/// Starts the checkpoint thread and puts the writer's connection in its
/// charge (the WAL hook replaces SQLite's automatic checkpoint). The thread
/// stops when the writer's connection is dropped.
pub(super) fn start(writer: &mut Connection, path: &Path, busy: Duration) -> Result<()> {
    let conn = open_connection(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        busy,
    )?;
    // One pending wake-up is enough: a checkpoint copies whatever is there.
    let (wake, woken) = mpsc::sync_channel::<()>(1);
    let turn = Arc::new(Mutex::new(()));
    let thread_turn = turn.clone();
    std::thread::Builder::new()
        .name("store-checkpoint".into())
        .spawn(move || {
            while woken.recv().is_ok() {
                let _turn = thread_turn.lock().unwrap_or_else(|p| p.into_inner());
                if let Err(e) = checkpoint(&conn) {
                    // The writer's own checkpoint is the fallback; a busy
                    // database (an operator's lock) is not news.
                    tracing::debug!("store: background WAL checkpoint: {e}");
                }
            }
        })
        .map_err(|e| StoreError::msg(format!("starting the checkpoint thread: {e}")))?;
    let mut hook = Hook {
        wake,
        next_wake: WAKE_PAGES,
    };
    writer
        .wal_hook(Some(move |wal: &mut rusqlite::hooks::Wal, pages: i32| {
            hook.committed(pages, || {
                let _turn = turn.lock().unwrap_or_else(|p| p.into_inner());
                wal.checkpoint()
            });
            Ok(())
        }))
        .map_err(|e| StoreError::new("installing the WAL hook", e))
}

/// What the writer does after each commit, given the pages in the WAL.
struct Hook {
    wake: SyncSender<()>,
    /// The WAL size at which the thread is woken next.
    next_wake: i32,
}

impl Hook {
    fn committed(&mut self, pages: i32, checkpoint_here: impl FnOnce() -> rusqlite::Result<()>) {
        if pages < self.next_wake - WAKE_PAGES {
            // The WAL started over.
            self.next_wake = WAKE_PAGES;
        }
        if pages >= WRITER_PAGES {
            // Never an error out of the hook: it would fail a commit that
            // is durable already. Busy (the thread is at it) is tried again
            // after the next commit.
            if let Err(e) = checkpoint_here() {
                tracing::debug!("store: WAL checkpoint on the writer: {e}");
            }
        } else if pages >= self.next_wake {
            let _ = self.wake.try_send(());
            self.next_wake = pages + WAKE_PAGES;
        }
    }
}

fn checkpoint(conn: &Connection) -> rusqlite::Result<()> {
    conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;

    #[test]
    fn wakes_once_per_step_then_the_writer_checkpoints() {
        let (wake, woken) = mpsc::sync_channel::<()>(1);
        let mut hook = Hook {
            wake,
            next_wake: WAKE_PAGES,
        };
        let ran = Cell::new(0);
        let here = || {
            ran.set(ran.get() + 1);
            Ok(())
        };
        hook.committed(10, here);
        assert!(woken.try_recv().is_err());
        hook.committed(WAKE_PAGES, here);
        assert!(woken.try_recv().is_ok());
        hook.committed(WAKE_PAGES + WAKE_PAGES / 2, here);
        assert!(woken.try_recv().is_err(), "woken again within WAKE_PAGES");
        hook.committed(2 * WAKE_PAGES + 13, here);
        hook.committed(2 * WAKE_PAGES + 26, here);
        assert!(woken.try_recv().is_ok());
        assert!(woken.try_recv().is_err());
        assert_eq!(ran.get(), 0);
        hook.committed(WRITER_PAGES, here);
        assert_eq!(ran.get(), 1);
        // A failing checkpoint is only logged.
        hook.committed(WRITER_PAGES + 13, || Err(rusqlite::Error::InvalidQuery));
        // The WAL started over: the first step wakes it again.
        hook.committed(13, here);
        hook.committed(WAKE_PAGES, here);
        assert!(woken.try_recv().is_ok());
        assert_eq!(ran.get(), 1);
    }

    #[test]
    fn the_thread_keeps_the_wal_small_while_one_connection_writes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.sqlite3");
        let mut w = Connection::open(&path).unwrap();
        w.pragma_update(None, "journal_mode", "WAL").unwrap();
        w.pragma_update(None, "synchronous", "OFF").unwrap();
        w.execute_batch("CREATE TABLE t (b BLOB)").unwrap();
        start(&mut w, &path, Duration::from_secs(5)).unwrap();
        let blob = vec![7u8; 50_000];
        // ~13 pages per row: 4,000 rows are ~52,000 pages, well past the
        // writer's own threshold, so the WAL must have started over.
        for _ in 0..4000 {
            w.execute("INSERT INTO t VALUES (?1)", [&blob]).unwrap();
        }
        let wal = std::fs::metadata(dir.path().join("c.sqlite3-wal"))
            .unwrap()
            .len();
        assert!(
            wal < 2 * WRITER_PAGES as u64 * 4200,
            "the WAL grew to {wal} bytes"
        );
        let n: i64 = w
            .query_row("SELECT count(*) FROM t", [], |r| r.get(0))
            .unwrap();
        assert_eq!(n, 4000);
    }
}
