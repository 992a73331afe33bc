//! Queue counts kept in memory so `/health` answers without the store.

use std::sync::atomic::{AtomicI64, Ordering};

use serde::Serialize;

#[derive(Debug, Default)]
pub struct QueueGauges {
    pending: AtomicI64,
    in_flight: AtomicI64,
    dead: AtomicI64,
    /// Accepted messages still in the journal only: their `classify` jobs
    /// are pending work too, not yet rows.
    journaled: AtomicI64,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct QueueCounts {
    pub pending: i64,
    pub in_flight: i64,
    pub dead: i64,
}

impl QueueGauges {
    pub fn snapshot(&self) -> QueueCounts {
        QueueCounts {
            pending: self.pending.load(Ordering::Relaxed).max(0)
                + self.journaled.load(Ordering::Relaxed).max(0),
            in_flight: self.in_flight.load(Ordering::Relaxed).max(0),
            dead: self.dead.load(Ordering::Relaxed).max(0),
        }
    }

    pub fn set(&self, c: QueueCounts) {
        self.pending.store(c.pending, Ordering::Relaxed);
        self.in_flight.store(c.in_flight, Ordering::Relaxed);
        self.dead.store(c.dead, Ordering::Relaxed);
    }

    /// Messages in the journal-only backlog.
    pub fn journaled(&self) -> i64 {
        self.journaled.load(Ordering::Relaxed)
    }

    /// Messages entering (+) or leaving (-) the journal-only backlog.
    pub fn add_journaled(&self, n: i64) {
        self.journaled.fetch_add(n, Ordering::Relaxed);
    }

    /// Adds a change of the rows' counts (the journal's backlog is apart).
    pub fn add(&self, d: QueueCounts) {
        self.pending.fetch_add(d.pending, Ordering::Relaxed);
        self.in_flight.fetch_add(d.in_flight, Ordering::Relaxed);
        self.dead.fetch_add(d.dead, Ordering::Relaxed);
    }
}

impl std::ops::AddAssign for QueueCounts {
    fn add_assign(&mut self, o: Self) {
        self.pending += o.pending;
        self.in_flight += o.in_flight;
        self.dead += o.dead;
    }
}
