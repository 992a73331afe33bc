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
use std::time::Duration;

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
    /// bits, for two reasons, both about the journal thread every ACK
    /// waits for: a map doubles by rehashing all it holds (inserting 2
    /// million keys, the slowest insert took 24–26 ms in one map, 0.7–0.8
    /// ms in 64), and pruning passes over one shard at a time (a full pass
    /// over 20 million keys took 108 ms; BENCHMARKS.md).
    seen: Vec<Shard>,
    /// The shard the next [`Self::prune_step`] passes over.
    next: usize,
}

struct Shard {
    map: HashMap<Hash, Millis, ByHash>,
    /// The oldest `seen_at` in `map` (a lower bound): its pass is skipped
    /// while nothing in it can have left the window.
    oldest: Millis,
}

impl Default for DedupIndex {
    fn default() -> Self {
        Self {
            hasher: PairHasher::new(),
            seen: (0..SHARDS)
                .map(|_| Shard {
                    map: HashMap::default(),
                    oldest: Millis::MAX,
                })
                .collect(),
            next: 0,
        }
    }
}

/// Keys an [`IndexBuilder`] gathers before it notes them shard by shard.
const BUILD_BATCH: usize = 1 << 16;

/// Gathers keys and notes them grouped by shard: one shard's map at a
/// time stays in the CPU's cache, where keys in log order would each land
/// in a different map (a cache miss a key). A start's rebuild of 20
/// million keys: 9.1–9.8 s against 16.2–16.8 s (BENCHMARKS.md).
pub struct IndexBuilder {
    index: DedupIndex,
    batch: Vec<(Hash, Millis)>,
}

impl IndexBuilder {
    pub fn add(&mut self, source: &str, key: &str, seen_at: Millis) {
        let h = self.index.hash(source, key);
        self.batch.push((h, seen_at));
        if self.batch.len() == BUILD_BATCH {
            self.flush();
        }
    }

    fn flush(&mut self) {
        self.batch.sort_unstable_by_key(|(h, _)| shard(*h));
        for (h, at) in self.batch.drain(..) {
            self.index.note(h, at);
        }
    }

    pub fn finish(mut self) -> DedupIndex {
        self.flush();
        self.index
    }
}

/// How many maps `seen` is split into (a power of two).
const SHARDS: usize = 1024;

/// How often [`DedupIndex::prune_step`] should run so that every shard is
/// passed over once a minute: expired hashes cost only memory (a lookup
/// compares the time itself), so a minute late is soon enough.
pub const PRUNE_STEP_EVERY: Duration = Duration::from_millis(60_000 / SHARDS as u64);

fn shard(hash: Hash) -> usize {
    (hash.0 >> (64 - SHARDS.trailing_zeros())) as usize
}

impl DedupIndex {
    fn hash(&self, source: &str, key: &str) -> Hash {
        self.hasher.hash(source, key)
    }

    fn note(&mut self, hash: Hash, seen_at: Millis) {
        let s = &mut self.seen[shard(hash)];
        let e = s.map.entry(hash).or_insert(seen_at);
        *e = (*e).max(seen_at);
        s.oldest = s.oldest.min(seen_at);
    }

    /// Builds an index from SQLite's `dedup_keys` log (start-up).
    pub fn builder() -> IndexBuilder {
        IndexBuilder {
            index: Self::default(),
            batch: Vec::with_capacity(BUILD_BATCH),
        }
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
        let s = &mut self.seen[shard(hash)];
        // One probe of the map, on the thread every ACK waits for.
        let before = match s.map.entry(hash) {
            Entry::Occupied(e) if *e.get() >= cutoff => return None,
            Entry::Occupied(mut e) => Some(e.insert(now)),
            Entry::Vacant(e) => {
                e.insert(now);
                None
            }
        };
        s.oldest = s.oldest.min(now);
        Some(PendingKey { hash, before })
    }

    /// Keys `check` took as new were not journaled after all (refused, or
    /// the write failed): they were never seen this time.
    pub fn forget(&mut self, keys: Vec<PendingKey>) {
        for PendingKey { hash, before } in keys.into_iter().rev() {
            let s = &mut self.seen[shard(hash)];
            match before {
                Some(at) => {
                    s.map.insert(hash, at);
                    s.oldest = s.oldest.min(at);
                }
                None => {
                    s.map.remove(&hash);
                }
            }
        }
    }

    /// Drops the hashes of one shard, the next in turn, whose keys all fell
    /// out of the window: a 1,024th of the index a step, so no step holds
    /// the journal thread for long. A shard that emptied out gives memory
    /// back.
    pub fn prune_step(&mut self, cutoff: Millis) {
        let s = &mut self.seen[self.next];
        self.next = (self.next + 1) % SHARDS;
        if s.oldest >= cutoff {
            return;
        }
        let mut oldest = Millis::MAX;
        s.map.retain(|_, at| {
            let keep = *at >= cutoff;
            if keep {
                oldest = oldest.min(*at);
            }
            keep
        });
        s.oldest = oldest;
        if s.map.len() < s.map.capacity() / 4 {
            s.map.shrink_to(s.map.len() * 2);
        }
    }

    #[cfg(test)]
    fn hashes(&self) -> usize {
        self.seen.iter().map(|s| s.map.len()).sum()
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

    /// An index built from these (source, key, seen_at) log rows.
    fn loaded(rows: &[(&str, &str, Millis)]) -> DedupIndex {
        let mut b = DedupIndex::builder();
        for (source, key, at) in rows {
            b.add(source, key, *at);
        }
        b.finish()
    }

    #[test]
    fn a_loaded_key_is_a_duplicate_within_the_window_and_new_past_it() {
        let mut idx = loaded(&[("sms", "old", 50)]);
        assert!(idx.check("sms", "old", 100, 40).is_none());
        assert!(idx.check("sms", "old", 100, 60).is_some());
        // Seen again at 100: a repeat inside the new window is a duplicate.
        assert!(idx.check("sms", "old", 101, 60).is_none());
    }

    #[test]
    fn a_forgotten_key_is_as_it_was_before() {
        let mut idx = loaded(&[("sms", "x", 50)]);
        let a = idx.check("sms", "a", 100, 0).unwrap();
        idx.forget(vec![a]);
        assert_eq!(idx.hashes(), 1, "x only");
        assert!(idx.check("sms", "a", 100, 0).is_some());

        // Seen at 50, past the window at 100: taken as new, then forgotten,
        // it is back to its old sighting (still past the window).
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
    fn a_built_index_holds_every_key_at_its_latest_sighting() {
        let n = 3 * BUILD_BATCH + 5;
        let mut b = DedupIndex::builder();
        for i in 0..n {
            b.add("sms", &format!("k{i}"), i as Millis);
        }
        // Seen again, in a later batch: the later sighting stands.
        b.add("sms", "k0", 1_000_000_000);
        let mut idx = b.finish();
        assert_eq!(idx.hashes(), n);
        assert!(idx.check("sms", "k0", 1_000_000_001, 999_999_999).is_none());
        let last = format!("k{}", n - 1);
        assert!(
            idx.check("sms", &last, 1_000_000_001, (n - 1) as Millis)
                .is_none()
        );
        assert!(idx.check("sms", "k1", 1_000_000_001, 2).is_some());
        // Every shard knows its oldest sighting, so pruning finds them all.
        let before = idx.hashes();
        prune_all(&mut idx, BUILD_BATCH as Millis);
        assert_eq!(
            before - idx.hashes(),
            BUILD_BATCH - 2,
            "all under the cutoff but k0, k1"
        );
    }

    /// One step after another, over every shard.
    fn prune_all(idx: &mut DedupIndex, cutoff: Millis) {
        for _ in 0..SHARDS {
            idx.prune_step(cutoff);
        }
    }

    #[test]
    fn pruning_drops_expired_hashes_only() {
        let mut idx = loaded(&[("sms", "x", 10)]);
        assert!(idx.check("sms", "a", 100, 0).is_some());
        assert_eq!(idx.hashes(), 2);
        prune_all(&mut idx, 5);
        assert_eq!(idx.hashes(), 2, "nothing expired yet");
        prune_all(&mut idx, 50);
        assert_eq!(idx.hashes(), 1);
        assert!(idx.check("sms", "a", 101, 50).is_none());
    }

    #[test]
    fn a_prune_step_passes_over_one_shard_only() {
        let mut idx = DedupIndex::default();
        for i in 0..(SHARDS as u64 * 8) {
            idx.note((i << 54, i), 10);
        }
        assert_eq!(idx.hashes(), SHARDS * 8);
        idx.prune_step(50);
        assert_eq!(idx.hashes(), (SHARDS - 1) * 8, "one shard's hashes went");
        prune_all(&mut idx, 50);
        assert_eq!(idx.hashes(), 0);
        // Emptied shards gave their memory back.
        assert!(idx.seen.iter().all(|s| s.map.capacity() < 8));
    }
}

/// The pause a prune step puts on the journal thread, against the full
/// pass an index without steps would take, and the memory a key costs
/// (BENCHMARKS.md).
#[cfg(test)]
mod measure {
    use super::*;
    use std::time::{Duration, Instant};

    #[test]
    #[ignore = "a measurement: KEYS=20000000 cargo test --release --lib dedup::measure -- --ignored --nocapture"]
    fn prune_pause() {
        let n: u64 = std::env::var("KEYS").map_or(20_000_000, |s| s.parse().unwrap());
        let rss_before = rss_bytes();
        let mut idx = DedupIndex::default();
        // Spread over a window of 1,000 ms; a cutoff of 10 expires 1 %.
        // Inserts over 0.5 ms: doublings (and the odd preemption).
        let (mut slowest_insert, mut slow_inserts) = (Duration::ZERO, 0);
        for i in 0..n {
            let t = Instant::now();
            idx.note(
                (i.wrapping_mul(0x9E37_79B9_7F4A_7C15), i),
                (i % 1000) as Millis,
            );
            let took = t.elapsed();
            slowest_insert = slowest_insert.max(took);
            slow_inserts += usize::from(took > Duration::from_micros(500));
        }
        let per_key = (rss_bytes() - rss_before) as f64 / n as f64;
        let (mut total, mut slowest) = (Duration::ZERO, Duration::ZERO);
        for _ in 0..SHARDS {
            let t = Instant::now();
            idx.prune_step(10);
            let took = t.elapsed();
            total += took;
            slowest = slowest.max(took);
        }
        eprintln!(
            "{n} keys, {SHARDS} shards: {per_key:.1} bytes of RSS a key; \
             slowest insert {slowest_insert:?}, {slow_inserts} over 0.5 ms; prune: all steps {total:?}, slowest step {slowest:?}, {} left",
            idx.hashes()
        );
    }

    /// This process's resident set (Linux).
    fn rss_bytes() -> i64 {
        let status = std::fs::read_to_string("/proc/self/status").unwrap();
        let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
        let kib: i64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
        kib * 1024
    }
}
