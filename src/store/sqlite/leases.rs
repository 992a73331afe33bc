//! Job leases, kept in memory.
//!
//! The lock file makes this process the database's only user, so a lease
//! need not be written: a claim reads due jobs and notes them here, and the
//! job's row stays `pending` until its completion is committed. A crash
//! ends every lease at once, which leaves exactly the unfinished jobs
//! pending in the file, to run again at restart (at least once). Writing
//! the lease cost a row update and two index updates per job, in a commit
//! of its own: a third of the pages written per message.
//!
//! The writer grants and releases; the reader asks when work is next due.
//! The mutex is held for map operations only, never across I/O.

use std::collections::HashMap;
use std::sync::Mutex;

use crate::store::Millis;

#[derive(Default)]
pub struct Leases {
    /// Job id -> lease end.
    held: Mutex<HashMap<i64, Millis>>,
}

/// How to take back a grant or a release when its transaction fails.
#[derive(Debug, Clone, Copy)]
pub enum Undo {
    Granted(i64),
    Released(i64, Millis),
}

impl Leases {
    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<i64, Millis>> {
        self.held.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Leases `job` until `until` (again, if its lease had run out).
    pub fn grant(&self, job: i64, until: Millis) -> Undo {
        match self.map().insert(job, until) {
            Some(before) => Undo::Released(job, before),
            None => Undo::Granted(job),
        }
    }

    /// Ends `job`'s lease; `None` when it held none (a twin, run after its
    /// lease ran out, completed it already).
    pub fn release(&self, job: i64) -> Option<Undo> {
        self.map()
            .remove(&job)
            .map(|until| Undo::Released(job, until))
    }

    #[cfg(test)]
    pub fn holds(&self, job: i64) -> bool {
        self.map().contains_key(&job)
    }

    /// Takes back changes, newest first.
    pub fn undo(&self, log: &mut Vec<Undo>) {
        let mut map = self.map();
        while let Some(u) = log.pop() {
            match u {
                Undo::Granted(job) => {
                    map.remove(&job);
                }
                Undo::Released(job, until) => {
                    map.insert(job, until);
                }
            }
        }
    }

    /// Jobs whose lease ran out by `now`, oldest first, at most `limit`.
    pub fn expired(&self, now: Millis, limit: usize) -> Vec<i64> {
        let map = self.map();
        let mut out: Vec<(Millis, i64)> = map
            .iter()
            .filter(|(_, until)| **until <= now)
            .map(|(job, until)| (*until, *job))
            .collect();
        out.sort_unstable();
        out.into_iter().take(limit).map(|(_, job)| job).collect()
    }

    pub fn len(&self) -> usize {
        self.map().len()
    }

    /// The ids leased now (to tell them from the pending rows they are).
    pub fn ids(&self) -> std::collections::HashSet<i64> {
        self.map().keys().copied().collect()
    }

    /// When the first lease runs out.
    pub fn earliest_end(&self) -> Option<Millis> {
        self.map().values().copied().min()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn undo_restores_grants_and_releases_in_reverse() {
        let l = Leases::default();
        let mut log = vec![l.grant(1, 100)];
        log.push(l.release(1).expect("held"));
        log.push(l.grant(2, 200));
        assert!(!l.holds(1) && l.holds(2));
        l.undo(&mut log);
        assert!(log.is_empty());
        assert!(!l.holds(1), "1 was granted inside the undone work");
        assert!(!l.holds(2));

        let mut log = vec![];
        l.grant(3, 300);
        log.push(l.release(3).expect("held"));
        l.undo(&mut log);
        assert!(l.holds(3), "a release inside undone work comes back");
    }

    #[test]
    fn expired_lists_only_ended_leases_oldest_first() {
        let l = Leases::default();
        l.grant(1, 300);
        l.grant(2, 100);
        l.grant(3, 900);
        assert_eq!(l.expired(300, 10), vec![2, 1]);
        assert_eq!(l.expired(300, 1), vec![2]);
        assert_eq!(l.earliest_end(), Some(100));
        assert!(l.release(9).is_none());
    }
}
