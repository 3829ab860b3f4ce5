//! The runner's leases: claiming what a free slot can start, renewing
//! while a connection works, recovering expired leases and giving back
//! unfinished ones at shutdown.

use super::shelf::{Leases, ShelfKey};
use super::{rcpt_domain, Runner};
use crate::store;
use crate::store::queue::{Claimed, LeaseKeys};
use std::collections::HashMap;
use std::sync::{Arc, MutexGuard};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Due recipients read per claim round, to find a destination with a free
/// slot among them.
pub(super) const CANDIDATES: usize = 500;
/// Claim rounds before the runner waits for a slot to free up.
const CLAIM_ROUNDS: usize = 4;

/// What one claim found.
pub(super) enum Claim {
    /// A batch leased, with the destination slot it will use.
    Batch(Vec<Claimed>, OwnedSemaphorePermit),
    /// Recipients are due, but every destination they go to is busy.
    AllBusy,
    NothingDue,
}

impl Runner {
    /// Gives back the leases of the batches still in flight, so that a
    /// restart need not wait for them to expire.
    pub(super) async fn release_all(&self) {
        let connections: Vec<Leases> = self.active_leases().drain().map(|(_, l)| l).collect();
        let active: Vec<LeaseKeys> = connections
            .iter()
            .flat_map(|l| l.lock().unwrap_or_else(|p| p.into_inner()).clone())
            .collect();
        let now = store::now_ms();
        let released = self.store.release(&active, now).await;
        match released {
            Ok(n) => tracing::info!("{n} recipient(s) unfinished at shutdown queued again"),
            Err(e) => tracing::error!("giving back delivery leases at shutdown: {e}"),
        }
    }

    pub(super) async fn recover(&self) {
        let recovered = self.store.recover_expired(store::now_ms()).await;
        match recovered {
            Ok(n) if n > 0 => tracing::info!(
                "{n} recipient(s) whose delivery lease expired (their runner stopped) queued again"
            ),
            Ok(_) => {}
            Err(e) => tracing::error!("recovering expired leases: {e}"),
        }
    }

    /// Leases one connection's worth of due recipients for a destination
    /// that has a free slot, oldest due first.
    pub(super) async fn claim(&self) -> Claim {
        // Every accepted message wakes the runner. With its destination
        // full, reading the 500 oldest due recipients only to skip them all
        // was most of the claim's cost (issue 15); a destination that has
        // freed a slot since is read again.
        let mut busy: Vec<(String, String)> = self
            .busy
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .drain(..)
            .filter(|(_, dest)| self.destination_slots(dest).available_permits() == 0)
            .collect();
        let mut skip: Vec<String> = busy.iter().map(|(d, _)| d.clone()).collect();
        let claim = self.claim_skipping(&mut skip, &mut busy).await;
        if matches!(claim, Claim::AllBusy) {
            *self.busy.lock().unwrap_or_else(|p| p.into_inner()) = busy;
        }
        claim
    }

    /// [`Runner::claim`] from `skip`, adding to it (and to `busy`, with
    /// their destination) the domains it finds full.
    async fn claim_skipping(
        &self,
        skip: &mut Vec<String>,
        busy: &mut Vec<(String, String)>,
    ) -> Claim {
        for _ in 0..CLAIM_ROUNDS {
            let now = store::now_ms();
            let due = match self.store.due(now, CANDIDATES, skip).await {
                Ok(d) => d,
                Err(e) => {
                    tracing::error!("reading due recipients: {e}");
                    return Claim::NothingDue;
                }
            };
            if due.is_empty() {
                return if skip.is_empty() {
                    Claim::NothingDue
                } else {
                    Claim::AllBusy
                };
            }
            for (dest, group) in self.groups(due) {
                let Ok(slot) = self.destination_slots(&dest).try_acquire_owned() else {
                    for c in &group {
                        let d = rcpt_domain(&c.address).to_ascii_lowercase();
                        if !skip.contains(&d) {
                            skip.push(d.clone());
                            busy.push((d, dest.clone()));
                        }
                    }
                    continue;
                };
                let lease_ms = self.lease_time.as_millis() as i64;
                let claimed = self.store.claim(group, store::now_ms(), lease_ms).await;
                match claimed {
                    Ok(c) if !c.is_empty() => return Claim::Batch(c, slot),
                    // Taken by another runner since it was read.
                    Ok(_) => {}
                    Err(e) => {
                        tracing::error!("claiming due recipients: {e}");
                        return Claim::NothingDue;
                    }
                }
            }
        }
        Claim::AllBusy
    }

    /// Groups by destination and TLS policy, in order of first appearance,
    /// each cut to one connection's worth.
    pub(super) fn groups(&self, due: Vec<Claimed>) -> Vec<(String, Vec<Claimed>)> {
        let mut groups: Vec<(ShelfKey, Vec<Claimed>)> = Vec::new();
        for c in due {
            let key = self.shelf_key(&c);
            match groups.iter_mut().find(|(k, _)| *k == key) {
                Some((_, g)) if g.len() >= self.per_connection => {}
                Some((_, g)) => g.push(c),
                None => groups.push((key, vec![c])),
            }
        }
        groups.into_iter().map(|((d, _), g)| (d, g)).collect()
    }

    pub(super) fn destination_slots(&self, dest: &str) -> Arc<Semaphore> {
        let mut map = self.destinations.lock().unwrap_or_else(|p| p.into_inner());
        map.entry(dest.to_string())
            .or_insert_with(|| Arc::new(Semaphore::new(self.max_per_destination)))
            .clone()
    }

    pub(super) fn active_leases(&self) -> MutexGuard<'_, HashMap<u64, Leases>> {
        self.active.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Extends a connection's leases every third of `lease_time`, for as
    /// long as it works (the caller drops this future when it is done).
    pub(super) async fn renew(&self, leases: &Leases) {
        let every = self.lease_time / 3;
        let lease_ms = self.lease_time.as_millis() as i64;
        loop {
            tokio::time::sleep(every).await;
            let until = store::now_ms() + lease_ms;
            let held = leases.lock().unwrap_or_else(|p| p.into_inner()).clone();
            for (lease_id, keys) in &held {
                if let Err(e) = self.store.renew(lease_id, keys, until).await {
                    tracing::error!("renewing a delivery lease: {e}");
                }
            }
        }
    }
}
