//! One budget for the message data all submission sessions hold in RAM.
//!
//! `max_message_size` bounds one message, `max_connections` the sessions,
//! but their product (25 MiB × 1000 by default) is far more memory than a
//! relay has. Each session reserves what it holds from this shared budget
//! as the data arrives; a message that finds no room is refused with a
//! temporary error (`452 4.3.1`) and the client tries again later.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// Reservations grow in steps of at least this much, so a client sending
/// one byte at a time does not cost an atomic operation per byte.
const STEP: usize = 64 * 1024;

#[derive(Debug)]
pub struct DataBudget {
    limit: usize,
    used: AtomicUsize,
}

impl DataBudget {
    pub fn new(limit: usize) -> Arc<DataBudget> {
        Arc::new(DataBudget {
            limit,
            used: AtomicUsize::new(0),
        })
    }

    pub fn limit(&self) -> usize {
        self.limit
    }

    /// Bytes reserved by all sessions together right now.
    pub fn in_use(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }

    /// Takes `n` more bytes if they fit under the limit.
    fn take(&self, n: usize) -> bool {
        self.used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                used.checked_add(n).filter(|&total| total <= self.limit)
            })
            .is_ok()
    }

    fn give_back(&self, n: usize) {
        self.used.fetch_sub(n, Ordering::AcqRel);
    }
}

/// What one message holds of the budget; returned when dropped.
#[derive(Debug)]
pub struct Reservation {
    budget: Arc<DataBudget>,
    held: usize,
}

impl Reservation {
    pub fn new(budget: &Arc<DataBudget>) -> Reservation {
        Reservation {
            budget: budget.clone(),
            held: 0,
        }
    }

    pub fn held(&self) -> usize {
        self.held
    }

    /// Makes sure `total` bytes are covered; false (and nothing more taken)
    /// when the budget has no room for them.
    pub fn cover(&mut self, total: usize) -> bool {
        if total <= self.held {
            return true;
        }
        let need = total - self.held;
        // Try a whole step first; when only the exact bytes fit, take those:
        // a message that fits must not be refused for the rounding.
        let step = need.max(STEP);
        let got = if step > need && self.budget.take(step) {
            step
        } else if self.budget.take(need) {
            need
        } else {
            return false;
        };
        self.held += got;
        true
    }

    /// Gives everything back (the message was refused or is stored).
    pub fn release(&mut self) {
        self.budget.give_back(self.held);
        self.held = 0;
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        self.release();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reservations_share_the_limit_and_give_back_on_drop() {
        let b = DataBudget::new(200_000);
        let mut a = Reservation::new(&b);
        assert!(a.cover(10));
        assert_eq!(a.held(), STEP, "grows by a step, not by the byte");
        assert!(a.cover(STEP), "already covered");
        assert_eq!(b.in_use(), STEP);
        let mut c = Reservation::new(&b);
        assert!(c.cover(100_000));
        assert!(!a.cover(150_000), "only 100,000 left in all");
        assert_eq!(a.held(), STEP, "a refused request takes nothing");
        assert_eq!(b.in_use(), STEP + 100_000);
        drop(c);
        assert!(a.cover(150_000));
        a.release();
        assert_eq!(b.in_use(), 0);
        drop(a);
        assert_eq!(b.in_use(), 0, "released once, not twice");
    }

    #[test]
    fn a_message_that_fits_exactly_is_not_refused_for_rounding() {
        let b = DataBudget::new(1000);
        let mut r = Reservation::new(&b);
        assert!(r.cover(999));
        assert!(r.cover(1000));
        assert!(!r.cover(1001));
        let b = DataBudget::new(STEP + 10);
        let mut x = Reservation::new(&b);
        let mut y = Reservation::new(&b);
        assert!(x.cover(1));
        assert!(y.cover(10), "the step did not fit, the bytes do");
        assert!(!y.cover(11));
    }
}
