//! The accept loop every listener uses (submission, tracking, admin API),
//! and the bookkeeping that lets idle HTTP connections make room.

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Notify, OwnedSemaphorePermit, Semaphore};

/// Accepts connections until `shutdown` turns true (or its sender is
/// dropped) and runs `handle` for each on its own task.
///
/// With `slots`, each connection holds a permit for as long as it lives;
/// when none is left, `make_room` is called once and the loop waits for a
/// permit while new connections wait in the kernel's queue. Callers wait
/// for every permit to come back to know all connections ended.
pub async fn accept_loop<H, F>(
    what: &'static str,
    listener: TcpListener,
    mut shutdown: watch::Receiver<bool>,
    slots: Option<Arc<Semaphore>>,
    make_room: impl Fn(),
    mut handle: H,
) where
    H: FnMut(TcpStream, SocketAddr) -> F,
    F: Future<Output = ()> + Send + 'static,
{
    loop {
        if *shutdown.borrow_and_update() {
            return;
        }
        let permit: Option<OwnedSemaphorePermit> = match &slots {
            None => None,
            Some(slots) => match slots.clone().try_acquire_owned() {
                Ok(p) => Some(p),
                Err(_) => {
                    make_room();
                    tokio::select! {
                        p = slots.clone().acquire_owned() => match p {
                            Ok(p) => Some(p),
                            Err(_) => return,
                        },
                        changed = shutdown.changed() => {
                            if changed.is_err() {
                                return;
                            }
                            continue;
                        }
                    }
                }
            },
        };
        let accepted = tokio::select! {
            a = listener.accept() => a,
            changed = shutdown.changed() => {
                if changed.is_err() {
                    return;
                }
                continue;
            }
        };
        let (tcp, peer) = match accepted {
            Ok(x) => x,
            Err(e) => {
                // Out of file descriptors, usually: wait rather than spin.
                tracing::warn!("{what}: accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        let conn = handle(tcp, peer);
        tokio::spawn(async move {
            conn.await;
            drop(permit);
        });
    }
}

/// Open HTTP connections and whether each is idle (between requests, or
/// before its first), so that the idlest can be closed to make room for a
/// new one, and none stays idle for good.
#[derive(Default)]
pub struct IdleConns {
    next_id: AtomicU64,
    conns: Mutex<HashMap<u64, Entry>>,
}

struct Entry {
    /// None while a request is being answered.
    idle_since: Option<Instant>,
    close: Arc<Notify>,
}

impl IdleConns {
    pub fn register(self: &Arc<Self>) -> TrackedConn {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let close = Arc::new(Notify::new());
        self.lock().insert(
            id,
            Entry {
                idle_since: Some(Instant::now()),
                close: close.clone(),
            },
        );
        TrackedConn {
            id,
            set: self.clone(),
            close,
            served: AtomicBool::new(false),
        }
    }

    /// Asks the connection idle the longest to close; false if none is idle.
    pub fn close_idlest(&self) -> bool {
        let mut conns = self.lock();
        let idlest = conns
            .iter()
            .filter_map(|(id, e)| e.idle_since.map(|t| (t, *id)))
            .min();
        let Some((_, id)) = idlest else {
            return false;
        };
        if let Some(e) = conns.remove(&id) {
            e.close.notify_one();
        }
        true
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Entry>> {
        self.conns.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// One registered connection; it leaves the set when dropped.
pub struct TrackedConn {
    id: u64,
    set: Arc<IdleConns>,
    close: Arc<Notify>,
    served: AtomicBool,
}

impl TrackedConn {
    /// Marks the connection busy until the guard is dropped.
    pub fn busy(&self) -> Busy {
        self.served.store(true, Ordering::Relaxed);
        if let Some(e) = self.set.lock().get_mut(&self.id) {
            e.idle_since = None;
        }
        Busy {
            id: self.id,
            set: self.set.clone(),
        }
    }

    /// When the connection became idle, or None while busy (or after it
    /// was asked to close).
    pub fn idle_since(&self) -> Option<Instant> {
        self.set.lock().get(&self.id).and_then(|e| e.idle_since)
    }

    /// Whether a request was ever answered on it: one never used has no
    /// response in flight and can simply be dropped.
    pub fn served(&self) -> bool {
        self.served.load(Ordering::Relaxed)
    }

    /// Resolves once the connection has been picked to make room.
    pub async fn asked_to_close(&self) {
        self.close.notified().await
    }
}

impl Drop for TrackedConn {
    fn drop(&mut self) {
        self.set.lock().remove(&self.id);
    }
}

pub struct Busy {
    id: u64,
    set: Arc<IdleConns>,
}

impl Drop for Busy {
    fn drop(&mut self) {
        if let Some(e) = self.set.lock().get_mut(&self.id) {
            e.idle_since = Some(Instant::now());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_idlest_connection_makes_room() {
        let set = Arc::new(IdleConns::default());
        let a = set.register();
        let b = set.register();
        let busy = b.busy();
        assert!(b.idle_since().is_none());
        assert!(set.close_idlest(), "a is idle");
        assert!(a.idle_since().is_none(), "a was picked and left the set");
        assert!(!set.close_idlest(), "b is busy");
        drop(busy);
        assert!(b.served());
        assert!(set.close_idlest());
        drop((a, b));
        assert!(set.lock().is_empty());
    }
}
