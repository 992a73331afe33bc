//! The contacts that wrote within the session TTL and their latest
//! conversation, so that a message is given its conversation without a
//! lookup.
//!
//! The inline classification (writer.rs `apply`) gives each message the
//! contact's latest conversation when that contact's last message is within
//! `session_ttl`, else a new one. Finding the last message is an indexed
//! read of `messages` (and of its row) per contact and transaction: a tenth
//! of the SQLite writer's time at full load when most contacts are new,
//! and more when they come back (BENCHMARKS.md). [`RecentContacts`] holds,
//! for every (source, contact) whose latest conversation-bearing message
//! is within the TTL, that message's `received_at` and conversation id,
//! noted as each message is stored and rebuilt from the file at start; so
//! [`RecentContacts::last`] answers what the lookup would: that message,
//! or "none within the TTL". Keys are 128-bit keyed hashes (dedup.rs), so
//! two contacts are taken for one only at odds of about 2^-128 a pair.
//! A note from a transaction that was then rolled back stays; the records
//! are applied again, in order, and are given the same outcome (a new
//! conversation, under an id minted the first time).
//!
//! Memory is bounded: past [`CAP`] entries a new contact is not recorded,
//! and until that contact's message is older than the TTL ("blind"), an
//! absent contact proves nothing and is looked up as before; so is one
//! whose entry is later than the message (the clock went back) or whose
//! conversation id is not of the form this build mints. Entries older than
//! the TTL are dropped every [`PRUNE_EVERY_MS`]. Times are the journal
//! thread's wall clock.

use std::collections::HashMap;

use rusqlite::{Connection, params};

use super::dedup::{ByHash, Hash, PairHasher};
use crate::domain::ConversationId;
use crate::store::Millis;

/// Entries at most: 40 bytes each plus the map's overhead, some 90 MiB at
/// worst.
pub const CAP: usize = 1 << 20;
/// How often entries past the TTL are dropped (one pass over the map).
pub const PRUNE_EVERY_MS: Millis = 10_000;
/// Message ids are made on the request path, a little before their
/// `received_at`: the start-up scan reaches back this much further.
const ID_SKEW_MS: Millis = 60_000;

/// A conversation id as 128 bits: `conv_` and 32 lowercase hex digits (a
/// UUIDv7), or [`UNKNOWN`] for any other form.
type Conv = [u64; 2];
const UNKNOWN: Conv = [0, 0];

fn pack(conversation: &str) -> Conv {
    let hex = conversation
        .strip_prefix(ConversationId::PREFIX)
        .unwrap_or("");
    let lower_hex = |h: &str| h.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
    if hex.len() != 32 || !lower_hex(hex) {
        return UNKNOWN;
    }
    match (
        u64::from_str_radix(&hex[..16], 16),
        u64::from_str_radix(&hex[16..], 16),
    ) {
        (Ok(hi), Ok(lo)) => [hi, lo],
        _ => UNKNOWN,
    }
}

fn unpack(c: Conv) -> String {
    format!("{}{:016x}{:016x}", ConversationId::PREFIX, c[0], c[1])
}

/// What [`RecentContacts::last`] knows of a contact's latest message.
#[derive(Debug, PartialEq, Eq)]
pub enum Last {
    /// None within the TTL: the message starts a conversation.
    None,
    /// Its conversation and `received_at`.
    Known(String, Millis),
    /// Cannot say: look it up.
    Unknown,
}

pub struct RecentContacts {
    hasher: PairHasher,
    /// Hash of (source, contact) -> its latest message's `received_at` and
    /// conversation.
    latest: HashMap<Hash, (Millis, Conv), ByHash>,
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
            hasher: PairHasher::new(),
            latest: HashMap::default(),
            ttl_ms,
            cap,
            blind_until: Millis::MIN,
            last_prune: Millis::MIN,
        }
    }

    /// Rebuilt from the messages stored within the TTL of `now` (message
    /// ids are time-ordered: `msg_` and a UUIDv7 whose first 12 hex digits
    /// are Unix milliseconds, so this is one range of the primary key,
    /// read in id order as the lookup orders them).
    pub fn load(c: &Connection, ttl_ms: Millis, now: Millis) -> rusqlite::Result<Self> {
        let mut recent = Self::new(ttl_ms, CAP);
        let floor = now.saturating_sub(ttl_ms).saturating_sub(ID_SKEW_MS).max(0);
        let mut stmt = c.prepare(
            "SELECT source, contact, received_at, conversation_id FROM messages
             WHERE id >= ?1 AND contact IS NOT NULL AND conversation_id IS NOT NULL
             ORDER BY id",
        )?;
        let mut rows = stmt.query(params![format!("msg_{floor:012x}")])?;
        while let Some(r) = rows.next()? {
            let (source, contact, conv): (String, String, String) =
                (r.get(0)?, r.get(1)?, r.get(3)?);
            let key = recent.key(&source, &contact);
            recent.note(key, r.get(2)?, &conv);
        }
        recent.last_prune = now;
        Ok(recent)
    }

    /// The key of (source, contact), for [`Self::last`] and [`Self::note`]:
    /// hashed once per message, not once per call.
    pub fn key(&self, source: &str, contact: &str) -> Hash {
        self.hasher.hash(source, contact)
    }

    /// What the lookup would find for a message of the contact `key`
    /// received at `at`: its latest message within the TTL, or none.
    pub fn last(&self, key: Hash, at: Millis) -> Last {
        let entry = self.latest.get(&key);
        match entry {
            None if at <= self.blind_until => Last::Unknown,
            None => Last::None,
            // The clock went back: left to the lookup.
            Some(&(last, _)) if last > at => Last::Unknown,
            Some(&(last, _)) if at - last > self.ttl_ms => Last::None,
            Some(&(_, conv)) if conv == UNKNOWN => Last::Unknown,
            Some(&(last, conv)) => Last::Known(unpack(conv), last),
        }
    }

    /// A message of the contact `key` received at `at` in `conversation`
    /// was stored (after every earlier one).
    pub fn note(&mut self, key: Hash, at: Millis, conversation: &str) {
        let conv = pack(conversation);
        if let Some(last) = self.latest.get_mut(&key) {
            if at >= last.0 {
                *last = (at, conv);
            }
        } else if self.latest.len() < self.cap {
            self.latest.insert(key, (at, conv));
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
            .retain(|_, (last, _)| now.saturating_sub(*last) <= ttl);
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

    fn conv(n: u8) -> String {
        format!("conv_{}", format!("{n:02x}").repeat(16))
    }

    #[test]
    fn a_contact_seen_within_the_ttl_has_its_latest_conversation() {
        let mut r = RecentContacts::new(TTL, 10);
        let t = 1_000_000;
        assert_eq!(r.last(r.key("sms", "+1"), t), Last::None);
        r.note(r.key("sms", "+1"), t, &conv(1));
        assert_eq!(r.last(r.key("sms", "+1"), t + TTL), Last::Known(conv(1), t));
        assert_eq!(r.last(r.key("sms", "+1"), t + TTL + 1), Last::None);
        // An earlier time (the clock went back) is left to the lookup.
        assert_eq!(r.last(r.key("sms", "+1"), t - 5 * TTL), Last::Unknown);
        // Another source's contact of the same number is another contact.
        assert_eq!(r.last(r.key("wa", "+1"), t), Last::None);
        assert_eq!(r.last(r.key("sms", "+2"), t), Last::None);
        // The latest message counts, whatever order they are noted in.
        r.note(r.key("sms", "+1"), t + 30_000, &conv(2));
        r.note(r.key("sms", "+1"), t, &conv(3));
        assert_eq!(
            r.last(r.key("sms", "+1"), t + 30_000 + TTL),
            Last::Known(conv(2), t + 30_000)
        );
        // A conversation id of another form is looked up.
        r.note(r.key("sms", "+4"), t, "conv_legacy");
        assert_eq!(r.last(r.key("sms", "+4"), t), Last::Unknown);
        r.note(
            r.key("sms", "+5"),
            t,
            &conv(0xab).to_uppercase().replace("CONV", "conv"),
        );
        assert_eq!(r.last(r.key("sms", "+5"), t), Last::Unknown);
    }

    #[test]
    fn conversation_ids_this_build_mints_round_trip() {
        for _ in 0..100 {
            let id = ConversationId::generate().to_string();
            assert_eq!(unpack(pack(&id)), id);
        }
    }

    #[test]
    fn a_full_map_makes_absent_contacts_unknown_until_the_unrecorded_ones_expire() {
        let mut r = RecentContacts::new(TTL, 2);
        let t = 1_000_000;
        r.note(r.key("sms", "+1"), t, &conv(1));
        r.note(r.key("sms", "+2"), t, &conv(2));
        r.note(r.key("sms", "+3"), t + 10, &conv(3));
        assert_eq!(r.len(), 2);
        // +3 was not recorded: nobody absent can be ruled out meanwhile.
        assert_eq!(r.last(r.key("sms", "+3"), t + 10 + TTL), Last::Unknown);
        assert_eq!(r.last(r.key("sms", "+9"), t + 10 + TTL), Last::Unknown);
        assert_eq!(r.last(r.key("sms", "+9"), t + 11 + TTL), Last::None);
        // Recorded contacts still move on.
        r.note(r.key("sms", "+1"), t + 20, &conv(4));
        assert_eq!(
            r.last(r.key("sms", "+1"), t + 20 + TTL),
            Last::Known(conv(4), t + 20)
        );
    }

    #[test]
    fn pruning_drops_only_entries_past_the_ttl_and_waits_between_passes() {
        let mut r = RecentContacts::new(TTL, 10);
        let t = 1_000_000;
        r.note(r.key("sms", "+1"), t, &conv(1));
        r.note(r.key("sms", "+2"), t + PRUNE_EVERY_MS + TTL, &conv(2));
        r.prune(t + PRUNE_EVERY_MS + TTL + 1);
        assert_eq!(r.len(), 1);
        assert_eq!(
            r.last(r.key("sms", "+2"), t + PRUNE_EVERY_MS + TTL + 1),
            Last::Known(conv(2), t + PRUNE_EVERY_MS + TTL)
        );
        r.note(r.key("sms", "+3"), t, &conv(3));
        r.prune(t + PRUNE_EVERY_MS + TTL + 2);
        assert_eq!(r.len(), 2, "too soon for another pass");
    }
}
