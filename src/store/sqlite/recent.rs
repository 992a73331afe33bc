//! Which contacts wrote within the session TTL, so that a message from any
//! other contact starts its conversation without a lookup.
//!
//! The inline classification (writer.rs `apply`) gives each message the
//! contact's latest conversation when that contact's last message is within
//! `session_ttl`, else a new one; finding the last message is an indexed
//! read of `messages` per contact and transaction, a tenth of the SQLite
//! writer's time at full load when most contacts are new (BENCHMARKS.md).
//! [`RecentContacts`] answers "certainly none" for most of those without
//! the read. It holds a superset: every (source, contact) with a stored
//! message within the TTL has an entry at least as late as that message
//! (an extra entry, from a transaction rolled back or a message pruned,
//! only costs the lookup it would have cost anyway). So the conversations
//! given are the ones the lookup alone would give.
//!
//! Memory is bounded: past [`CAP`] entries a new contact is not recorded,
//! and until that contact's message is older than the TTL ("blind"), an
//! absent contact proves nothing and is looked up as before. Entries older
//! than the TTL are dropped every [`PRUNE_EVERY_MS`]. Times are the journal
//! thread's wall clock: a clock stepped back by more than the TTL could
//! start a conversation that the lookup would have continued.

use std::collections::HashMap;
use std::hash::RandomState;

use rusqlite::{Connection, params};

use crate::store::Millis;

/// Entries at most: 16 bytes each plus the map's overhead, some 40 MiB at
/// worst.
pub const CAP: usize = 1 << 20;
/// How often entries past the TTL are dropped (one pass over the map).
pub const PRUNE_EVERY_MS: Millis = 10_000;
/// Message ids are made on the request path, a little before their
/// `received_at`: the start-up scan reaches back this much further.
const ID_SKEW_MS: Millis = 60_000;

pub struct RecentContacts {
    /// Random per process: the map is rebuilt at every start.
    hasher: RandomState,
    /// Hash of (source, contact) -> its latest message's `received_at`.
    latest: HashMap<u64, Millis>,
    ttl_ms: Millis,
    cap: usize,
    /// Until then an absent contact may have a message that was not
    /// recorded (the map was full).
    blind_until: Millis,
    last_prune: Millis,
}

impl RecentContacts {
    pub fn new(ttl_ms: Millis, cap: usize) -> Self {
        Self {
            hasher: RandomState::new(),
            latest: HashMap::new(),
            ttl_ms,
            cap,
            blind_until: Millis::MIN,
            last_prune: Millis::MIN,
        }
    }

    /// Rebuilt from the messages stored within the TTL of `now` (message
    /// ids are time-ordered: `msg_` and a UUIDv7 whose first 12 hex digits
    /// are Unix milliseconds, so this is one range of the primary key).
    pub fn load(c: &Connection, ttl_ms: Millis, now: Millis) -> rusqlite::Result<Self> {
        let mut recent = Self::new(ttl_ms, CAP);
        let floor = now.saturating_sub(ttl_ms).saturating_sub(ID_SKEW_MS).max(0);
        let mut stmt = c.prepare(
            "SELECT source, contact, received_at FROM messages
             WHERE id >= ?1 AND contact IS NOT NULL",
        )?;
        let mut rows = stmt.query(params![format!("msg_{floor:012x}")])?;
        while let Some(r) = rows.next()? {
            let (source, contact): (String, String) = (r.get(0)?, r.get(1)?);
            recent.note(&source, &contact, r.get(2)?);
        }
        recent.last_prune = now;
        Ok(recent)
    }

    fn hash(&self, source: &str, contact: &str) -> u64 {
        super::dedup::hash_pair(&self.hasher, source, contact)
    }

    /// Whether `contact` may have a message within the TTL of `at`; `false`
    /// means it has none, so its message starts a new conversation.
    pub fn may_have(&self, source: &str, contact: &str, at: Millis) -> bool {
        if at <= self.blind_until {
            return true;
        }
        match self.latest.get(&self.hash(source, contact)) {
            // Not `abs`: an entry later than `at` (the clock went back)
            // leaves it to the lookup.
            Some(&last) => at.saturating_sub(last) <= self.ttl_ms,
            None => false,
        }
    }

    /// A message of `contact` received at `at` was stored.
    pub fn note(&mut self, source: &str, contact: &str, at: Millis) {
        let h = self.hash(source, contact);
        if let Some(last) = self.latest.get_mut(&h) {
            *last = (*last).max(at);
        } else if self.latest.len() < self.cap {
            self.latest.insert(h, at);
        } else {
            self.blind_until = self.blind_until.max(at.saturating_add(self.ttl_ms));
        }
    }

    /// Drops the entries past the TTL of `now`, at most every
    /// [`PRUNE_EVERY_MS`].
    pub fn prune(&mut self, now: Millis) {
        if now.saturating_sub(self.last_prune) < PRUNE_EVERY_MS {
            return;
        }
        self.last_prune = now;
        let ttl = self.ttl_ms;
        self.latest
            .retain(|_, last| now.saturating_sub(*last) <= ttl);
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.latest.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TTL: Millis = 60_000;

    #[test]
    fn only_a_contact_seen_within_the_ttl_may_have_a_conversation() {
        let mut r = RecentContacts::new(TTL, 10);
        let t = 1_000_000;
        assert!(!r.may_have("sms", "+1", t));
        r.note("sms", "+1", t);
        assert!(r.may_have("sms", "+1", t + TTL));
        assert!(!r.may_have("sms", "+1", t + TTL + 1));
        // An earlier time (the clock went back) is left to the lookup.
        assert!(r.may_have("sms", "+1", t - 5 * TTL));
        // Another source's contact of the same number is another contact.
        assert!(!r.may_have("wa", "+1", t));
        assert!(!r.may_have("sms", "+2", t));
        // The latest message counts, whatever order they are noted in.
        r.note("sms", "+1", t + 30_000);
        r.note("sms", "+1", t);
        assert!(r.may_have("sms", "+1", t + 30_000 + TTL));
    }

    #[test]
    fn a_full_map_makes_absent_contacts_unknown_until_the_unrecorded_ones_expire() {
        let mut r = RecentContacts::new(TTL, 2);
        let t = 1_000_000;
        r.note("sms", "+1", t);
        r.note("sms", "+2", t);
        r.note("sms", "+3", t + 10);
        assert_eq!(r.len(), 2);
        // +3 was not recorded: nobody absent can be ruled out meanwhile.
        assert!(r.may_have("sms", "+3", t + 10 + TTL));
        assert!(r.may_have("sms", "+9", t + 10 + TTL));
        assert!(!r.may_have("sms", "+9", t + 11 + TTL));
        // Recorded contacts still move on.
        r.note("sms", "+1", t + 20);
        assert!(r.may_have("sms", "+1", t + 20 + TTL));
    }

    #[test]
    fn pruning_drops_only_entries_past_the_ttl_and_waits_between_passes() {
        let mut r = RecentContacts::new(TTL, 10);
        let t = 1_000_000;
        r.note("sms", "+1", t);
        r.note("sms", "+2", t + PRUNE_EVERY_MS + TTL);
        r.prune(t + PRUNE_EVERY_MS + TTL + 1);
        assert_eq!(r.len(), 1);
        assert!(r.may_have("sms", "+2", t + PRUNE_EVERY_MS + TTL + 1));
        r.note("sms", "+3", t);
        r.prune(t + PRUNE_EVERY_MS + TTL + 2);
        assert_eq!(r.len(), 2, "too soon for another pass");
    }
}
