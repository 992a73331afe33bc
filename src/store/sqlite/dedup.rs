//! Dedup decided in memory, exactly, on the journal thread.
//!
//! Every key within the window is in one map, from a 128-bit keyed hash
//! of (source, key) to when it was last seen: loaded from SQLite's
//! `dedup_keys` log at start-up, and noted here the moment a key is taken
//! as new (before its record is journaled; taken back if it is not). A
//! hash absent from the map, or seen before the window, means "new";
//! present within the window, "duplicate". No request ever reads the disk
//! for it.
//!
//! The hash stands for the key: two SipHash-1-3 outputs under two random
//! per-process keys. Two different keys are taken for one only if both
//! 64-bit halves collide, about 2^-128 for a given pair, so even a billion
//! keys in a window leave the odds of one false duplicate near 10^-21,
//! below those of an undetected memory or disk error. Trusting the hash is
//! what lets SQLite keep the keys as an append-only log instead of an
//! index over them: the index took one random page write per message once
//! it outgrew a transaction (random provider ids: 6.1 KB of WAL a message
//! against 1.2 KB with the log; BENCHMARKS.md).
//!
//! A key costs 24 bytes in the map (plus the map's overhead); the map is
//! rebuilt at every start, under fresh hash keys.

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::hash::{BuildHasher, BuildHasherDefault, Hasher, RandomState};

use crate::store::Millis;

/// For maps keyed by [`Hash`]: the keys are hashes already.
pub(super) type ByHash = BuildHasherDefault<Identity>;

/// The map's keys are hashes already; hashing them again is waste.
#[derive(Default)]
pub(super) struct Identity(u64);

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
        // A (u64, u64) key writes both halves: the last one stands.
        self.0 = n;
    }
}

/// A (source, key) pair's 128-bit hash.
pub(super) type Hash = (u64, u64);

/// Hashes (source, key) pairs to 128 bits: two SipHash-1-3 outputs under
/// random per-process keys, so nobody outside can aim keys at one hash.
pub(super) struct PairHasher([RandomState; 2]);

impl PairHasher {
    pub fn new() -> Self {
        Self([RandomState::new(), RandomState::new()])
    }

    /// A separator between the two, so ("ab", "c") and ("a", "bc") differ.
    pub fn hash(&self, source: &str, key: &str) -> Hash {
        let half = |state: &RandomState| {
            let mut h = state.build_hasher();
            h.write(source.as_bytes());
            h.write_u8(0xff);
            h.write(key.as_bytes());
            h.finish()
        };
        (half(&self.0[0]), half(&self.0[1]))
    }
}

/// A key [`DedupIndex::check`] took as new: hand it to
/// [`DedupIndex::forget`] if its record is not journaled after all.
#[derive(Debug)]
pub struct PendingKey {
    hash: Hash,
    /// What the map held for the hash before (a sighting past the window).
    before: Option<Millis>,
}

pub struct DedupIndex {
    hasher: PairHasher,
    /// Hash -> latest `seen_at`, in [`SHARDS`] maps by the hash's top
    /// bits: a map doubles by rehashing all it holds, on the journal
    /// thread. Inserting 2 million keys, the slowest insert (the doubling
    /// at 1.8 million) took 24–26 ms in one map, 0.7–0.8 ms in 64
    /// (BENCHMARKS.md).
    seen: Vec<HashMap<Hash, Millis, ByHash>>,
    /// The oldest `seen_at` in `seen` (a lower bound): pruning is skipped
    /// while nothing can have left the window.
    oldest: Millis,
}

impl Default for DedupIndex {
    fn default() -> Self {
        Self {
            hasher: PairHasher::new(),
            seen: (0..SHARDS).map(|_| HashMap::default()).collect(),
            oldest: Millis::MAX,
        }
    }
}

/// How many maps `seen` is split into (a power of two).
const SHARDS: usize = 64;

fn shard(hash: Hash) -> usize {
    (hash.0 >> (64 - SHARDS.trailing_zeros())) as usize
}

impl DedupIndex {
    fn hash(&self, source: &str, key: &str) -> Hash {
        self.hasher.hash(source, key)
    }

    fn note(&mut self, hash: Hash, seen_at: Millis) {
        let e = self.seen[shard(hash)].entry(hash).or_insert(seen_at);
        *e = (*e).max(seen_at);
        self.oldest = self.oldest.min(seen_at);
    }

    /// A key from SQLite's `dedup_keys` log (start-up).
    pub fn load(&mut self, source: &str, key: &str, seen_at: Millis) {
        let h = self.hash(source, key);
        self.note(h, seen_at);
    }

    /// `Some` when `key` is new: not seen since `cutoff`. It is noted as
    /// seen at `now` at once, so a repeat in the same group is a duplicate;
    /// hand what comes back to [`Self::forget`] if its record is not
    /// journaled.
    pub fn check(
        &mut self,
        source: &str,
        key: &str,
        now: Millis,
        cutoff: Millis,
    ) -> Option<PendingKey> {
        let hash = self.hash(source, key);
        // One probe of the map, on the thread every ACK waits for.
        let before = match self.seen[shard(hash)].entry(hash) {
            Entry::Occupied(e) if *e.get() >= cutoff => return None,
            Entry::Occupied(mut e) => Some(e.insert(now)),
            Entry::Vacant(e) => {
                e.insert(now);
                None
            }
        };
        self.oldest = self.oldest.min(now);
        Some(PendingKey { hash, before })
    }

    /// Keys `check` took as new were not journaled after all (refused, or
    /// the write failed): they were never seen this time.
    pub fn forget(&mut self, keys: Vec<PendingKey>) {
        for PendingKey { hash, before } in keys.into_iter().rev() {
            let map = &mut self.seen[shard(hash)];
            match before {
                Some(at) => {
                    map.insert(hash, at);
                }
                None => {
                    map.remove(&hash);
                }
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

    #[cfg(test)]
    fn hashes(&self) -> usize {
        self.seen.iter().map(HashMap::len).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_is_new_once_and_a_duplicate_after_that_per_source() {
        let mut idx = DedupIndex::default();
        assert!(idx.check("sms", "a", 100, 0).is_some());
        assert!(idx.check("sms", "b", 100, 0).is_some());
        assert!(idx.check("sms", "a", 101, 0).is_none());
        // Another source's key of the same name is another key, and the
        // separator keeps ("ab", "c") apart from ("a", "bc").
        assert!(idx.check("other", "a", 101, 0).is_some());
        assert!(idx.check("ab", "c", 101, 0).is_some());
        assert!(idx.check("a", "bc", 101, 0).is_some());
        assert!(idx.check("a", "bc", 102, 0).is_none());
        assert_eq!(idx.hashes(), 5);
    }

    #[test]
    fn a_loaded_key_is_a_duplicate_within_the_window_and_new_past_it() {
        let mut idx = DedupIndex::default();
        idx.load("sms", "old", 50);
        assert!(idx.check("sms", "old", 100, 40).is_none());
        assert!(idx.check("sms", "old", 100, 60).is_some());
        // Seen again at 100: a repeat inside the new window is a duplicate.
        assert!(idx.check("sms", "old", 101, 60).is_none());
    }

    #[test]
    fn a_forgotten_key_is_as_it_was_before() {
        let mut idx = DedupIndex::default();
        let a = idx.check("sms", "a", 100, 0).unwrap();
        idx.forget(vec![a]);
        assert_eq!(idx.hashes(), 0);
        assert!(idx.check("sms", "a", 100, 0).is_some());

        // Seen at 50, past the window at 100: taken as new, then forgotten,
        // it is back to its old sighting (still past the window).
        idx.load("sms", "x", 50);
        let x = idx.check("sms", "x", 100, 60).unwrap();
        assert!(idx.check("sms", "x", 101, 60).is_none(), "pending is seen");
        idx.forget(vec![x]);
        assert!(
            idx.check("sms", "x", 102, 40).is_none(),
            "50 is within 40.."
        );
        assert!(idx.check("sms", "x", 103, 60).is_some());
    }

    #[test]
    fn pruning_drops_expired_hashes_only() {
        let mut idx = DedupIndex::default();
        idx.load("sms", "x", 10);
        assert!(idx.check("sms", "a", 100, 0).is_some());
        assert_eq!(idx.hashes(), 2);
        idx.prune(5);
        assert_eq!(idx.hashes(), 2, "nothing expired yet");
        idx.prune(50);
        assert_eq!(idx.hashes(), 1);
        assert!(idx.check("sms", "a", 101, 50).is_none());
    }
}
