//! Dedup decided in memory, exactly, on the journal thread.
//!
//! Every key within the window is in one of two places: SQLite's `dedup`
//! table (applied) or [`DedupIndex::pending`] (journaled, not applied yet).
//! In front of both sits a map from a 64-bit hash of (source, key) to the
//! latest `seen_at` of the keys with that hash. A hash absent from it, or
//! whose keys all fell out of the window, means "new" at once: that is
//! every first-time message, without touching the disk. Only a hash that
//! is present (a real duplicate, or, rarely, another key with the same
//! hash) is confirmed exactly, in `pending` or with one indexed read of
//! the `dedup` table; so a hash collision costs a lookup, never a message.
//!
//! The hash map is rebuilt from the `dedup` table at start-up and holds a
//! 16-byte entry a key (plus the map's overhead); `pending` holds whole
//! keys, only for the backlog
//! that SQLite has not taken in yet.

use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasher, BuildHasherDefault, Hasher, RandomState};

use crate::store::Millis;

/// The map's keys are hashes already; hashing them again is waste.
#[derive(Default)]
struct Identity(u64);

impl Hasher for Identity {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0 << 8) | u64::from(*b);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

/// What the store says of a key the hash map could not rule out.
pub trait Confirm {
    /// When `key` of `source` was first seen, if the `dedup` table has it.
    fn seen_at(
        &mut self,
        source: &str,
        key: &str,
    ) -> Result<Option<Millis>, crate::store::StoreError>;
}

/// A key [`DedupIndex::check`] took as new, until it is journaled or
/// forgotten.
#[derive(Debug)]
pub struct PendingKey(String);

pub struct DedupIndex {
    /// Random per process: the map is rebuilt at every start, and nobody
    /// outside can aim keys at one hash.
    hasher: RandomState,
    /// Hash -> latest `seen_at`, in [`SHARDS`] maps by the hash's top
    /// bits: a map doubles by rehashing all it holds, on the journal
    /// thread. Inserting 2 million keys, the slowest insert (the doubling
    /// at 1.8 million) took 24–26 ms in one map, 0.7–0.8 ms in 64
    /// (BENCHMARKS.md).
    seen: Vec<HashMap<u64, Millis, BuildHasherDefault<Identity>>>,
    /// The oldest `seen_at` in `seen` (a lower bound): pruning is skipped
    /// while nothing can have left the window.
    oldest: Millis,
    /// Journaled keys not yet in SQLite: "source\x1fkey" -> (first seen,
    /// end of its record; `u64::MAX` until [`Self::journaled`]).
    pending: HashMap<String, (Millis, u64)>,
    /// The same keys by the journal position after their record, so they
    /// can be dropped once SQLite has applied that far.
    order: VecDeque<(u64, String)>,
}

impl Default for DedupIndex {
    fn default() -> Self {
        Self {
            hasher: RandomState::new(),
            seen: (0..SHARDS).map(|_| HashMap::default()).collect(),
            oldest: Millis::MAX,
            pending: HashMap::new(),
            order: VecDeque::new(),
        }
    }
}

/// How many maps `seen` is split into (a power of two).
const SHARDS: usize = 64;

fn shard(hash: u64) -> usize {
    (hash >> (64 - SHARDS.trailing_zeros())) as usize
}

fn joined(source: &str, key: &str) -> String {
    let mut s = String::with_capacity(source.len() + 1 + key.len());
    s.push_str(source);
    s.push('\u{1f}');
    s.push_str(key);
    s
}

/// The 64-bit hash of a (source, key) pair under `hasher` (a separator
/// between the two, so ("ab", "c") and ("a", "bc") differ).
pub(super) fn hash_pair(hasher: &RandomState, source: &str, key: &str) -> u64 {
    let mut h = hasher.build_hasher();
    h.write(source.as_bytes());
    h.write_u8(0xff);
    h.write(key.as_bytes());
    h.finish()
}

impl DedupIndex {
    fn hash(&self, source: &str, key: &str) -> u64 {
        hash_pair(&self.hasher, source, key)
    }

    fn note(&mut self, hash: u64, seen_at: Millis) {
        let e = self.seen[shard(hash)].entry(hash).or_insert(seen_at);
        *e = (*e).max(seen_at);
        self.oldest = self.oldest.min(seen_at);
    }

    /// A key already in SQLite's `dedup` table (start-up).
    pub fn load(&mut self, source: &str, key: &str, seen_at: Millis) {
        let h = self.hash(source, key);
        self.note(h, seen_at);
    }

    /// `Some` when `key` is new: not seen since `cutoff`. A new key is noted
    /// as pending at `now`; hand what comes back to [`Self::journaled`] once
    /// its record's position is known, or to [`Self::forget`] if it is not
    /// journaled.
    pub fn check(
        &mut self,
        source: &str,
        key: &str,
        now: Millis,
        cutoff: Millis,
        store: &mut impl Confirm,
    ) -> Result<Option<PendingKey>, crate::store::StoreError> {
        let h = self.hash(source, key);
        let joined = joined(source, key);
        let new = match self.seen[shard(h)].get(&h) {
            None => true,
            Some(latest) if *latest < cutoff => true,
            Some(_) => match self.pending.get(&joined) {
                Some((at, _)) => *at < cutoff,
                None => store.seen_at(source, key)?.is_none_or(|at| at < cutoff),
            },
        };
        if !new {
            return Ok(None);
        }
        self.note(h, now);
        self.pending.insert(joined.clone(), (now, u64::MAX));
        Ok(Some(PendingKey(joined)))
    }

    /// Keys `check` took as new are in the journal, in the record that
    /// ends at `end`.
    pub fn journaled(&mut self, keys: Vec<PendingKey>, end: u64) {
        for PendingKey(k) in keys {
            if let Some(p) = self.pending.get_mut(&k) {
                p.1 = end;
            }
            self.order.push_back((end, k));
        }
    }

    /// Keys `check` took as new were not journaled after all (refused, or
    /// the write failed): they were never seen. Their hashes stay; that only
    /// costs a lookup.
    pub fn forget(&mut self, keys: Vec<PendingKey>) {
        for PendingKey(k) in keys {
            self.pending.remove(&k);
        }
    }

    /// SQLite has applied the journal up to `pos`: its keys are found there
    /// from now on.
    pub fn applied(&mut self, pos: u64) {
        while self.order.front().is_some_and(|(end, _)| *end <= pos) {
            if let Some((_, k)) = self.order.pop_front()
                && self.pending.get(&k).is_some_and(|(_, end)| *end <= pos)
            {
                // (A key journaled again later, past the window, stays.)
                self.pending.remove(&k);
            }
        }
    }

    /// Drops hashes whose keys all fell out of the window. A full pass, so
    /// it runs only when something can have expired.
    pub fn prune(&mut self, cutoff: Millis) {
        if self.oldest >= cutoff {
            return;
        }
        for map in &mut self.seen {
            map.retain(|_, at| *at >= cutoff);
        }
        self.oldest = self
            .seen
            .iter()
            .flat_map(|m| m.values().copied())
            .min()
            .unwrap_or(Millis::MAX);
    }

    /// Keys journaled and not yet applied.
    #[cfg(test)]
    fn backlog(&self) -> usize {
        self.order.len()
    }

    #[cfg(test)]
    fn hashes(&self) -> usize {
        self.seen.iter().map(HashMap::len).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::StoreError;

    /// The `dedup` table, as a map, counting lookups.
    #[derive(Default)]
    struct Table {
        rows: HashMap<(String, String), Millis>,
        lookups: usize,
    }

    impl Confirm for Table {
        fn seen_at(&mut self, source: &str, key: &str) -> Result<Option<Millis>, StoreError> {
            self.lookups += 1;
            Ok(self.rows.get(&(source.into(), key.into())).copied())
        }
    }

    #[test]
    fn new_keys_cost_no_lookup_and_duplicates_are_found_pending_or_applied() {
        let mut idx = DedupIndex::default();
        let mut table = Table::default();
        let a = idx.check("sms", "a", 100, 0, &mut table).unwrap();
        let b = idx.check("sms", "b", 100, 0, &mut table).unwrap();
        assert!(a.is_some() && b.is_some());
        assert_eq!(table.lookups, 0, "first-time keys never ask the store");
        // Repeated while still pending (journaled, not applied).
        assert!(idx.check("sms", "a", 101, 0, &mut table).unwrap().is_none());
        // Another source's key of the same name is another key.
        let other = idx.check("other", "a", 101, 0, &mut table).unwrap();
        assert!(other.is_some());
        idx.journaled(a.into_iter().chain(b).collect(), 10);
        idx.journaled(other.into_iter().collect(), 20);

        // SQLite applies up to 10: those keys are now only in the table.
        table.rows.insert(("sms".into(), "a".into()), 100);
        table.rows.insert(("sms".into(), "b".into()), 100);
        idx.applied(10);
        assert_eq!(idx.backlog(), 1);
        assert!(idx.check("sms", "b", 102, 0, &mut table).unwrap().is_none());
        assert_eq!(table.lookups, 1, "a duplicate is confirmed in the table");
    }

    #[test]
    fn a_key_older_than_the_window_is_new_again() {
        let mut idx = DedupIndex::default();
        let mut table = Table::default();
        idx.load("sms", "old", 50);
        table.rows.insert(("sms".into(), "old".into()), 50);
        assert!(
            idx.check("sms", "old", 100, 40, &mut table)
                .unwrap()
                .is_none()
        );
        assert!(
            idx.check("sms", "old", 100, 60, &mut table)
                .unwrap()
                .is_some()
        );
        // Now pending as of 100: a repeat inside the new window is a duplicate.
        assert!(
            idx.check("sms", "old", 101, 60, &mut table)
                .unwrap()
                .is_none()
        );
    }

    #[test]
    fn a_hash_shared_with_an_unseen_key_is_settled_by_the_store() {
        let mut idx = DedupIndex::default();
        let mut table = Table::default();
        // Force a "collision": the hash of "b" marked seen, "b" itself unknown.
        let h = idx.hash("sms", "b");
        idx.note(h, 100);
        assert!(idx.check("sms", "b", 100, 0, &mut table).unwrap().is_some());
        assert_eq!(table.lookups, 1);
    }

    #[test]
    fn forgotten_keys_are_new_and_pruning_drops_expired_hashes() {
        let mut idx = DedupIndex::default();
        let mut table = Table::default();
        let a = idx.check("sms", "a", 100, 0, &mut table).unwrap();
        assert!(a.is_some());
        idx.forget(a.into_iter().collect());
        assert!(idx.check("sms", "a", 100, 0, &mut table).unwrap().is_some());
        idx.load("sms", "x", 10);
        assert_eq!(idx.hashes(), 2);
        idx.prune(5);
        assert_eq!(idx.hashes(), 2, "nothing expired yet");
        idx.prune(50);
        assert_eq!(idx.hashes(), 1);
    }
}
