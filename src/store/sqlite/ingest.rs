//! The ACK path of the SQLite store: dedup in memory, one append and one
//! `fdatasync` to the journal per group of requests, then the answer.
//! SQLite is filled from the journal afterwards, by the applier.
//!
//! ```text
//! requests ─▶ journal thread: dedup (DedupIndex) ─▶ append ─▶ fdatasync ─▶ answers
//!                                                        │ synced position
//!                                                        ▼
//!             applier thread: read records ─▶ writer Op::Apply (one transaction:
//!                             rows, classify jobs, applied position) ─▶ workers woken
//! ```
//!
//! The journal thread is the group commit: it takes every request queued
//! while the previous `fdatasync` ran, decides their keys, writes their
//! records in one `write` and syncs once, so an ACK costs what the
//! group-commit ceiling costs plus the parse. Dedup stays exact: one
//! thread decides every key in arrival order, against every key seen
//! within the window (see [`super::dedup`]), without reading the disk.
//!
//! The applier stores each record's rows and moves the applied position in
//! the same SQLite transaction, so a record is applied exactly once, and
//! after a crash the records past that position are applied at start-up,
//! before anything new is accepted. Segments are recycled or deleted once
//! applied.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot, watch};

use super::dedup::{DedupIndex, PRUNE_STEP_EVERY, PendingKey};
use super::journal::{AppendError, JournalReader, JournalWriter, frame_with};
use super::record::{Entry, EventRow, Row};
use super::writer::Op;
use crate::domain::PhoneNumber;
use crate::store::{IngestBatch, IngestOutcome, InlineClassify, Millis, QueueGauges, StoreError};

/// The outcome, and the request handed back: its memory is freed on the
/// request's thread, not on the journal thread that every ACK waits for
/// (freeing another thread's allocations was a fifth of that thread's time).
pub type IngestReply = oneshot::Sender<(Result<IngestOutcome, StoreError>, Prepared)>;

/// A request made ready for the journal on its own thread: its rows, and
/// its record encoded and framed as if every message is new (the usual
/// case), so that the journal thread only copies it.
pub struct Prepared {
    entry: Entry,
    framed: Vec<u8>,
    dedup_cutoff: Millis,
    /// When it was made, just before it is sent to the journal thread.
    made: Instant,
}

impl Prepared {
    pub fn new(b: IngestBatch) -> Self {
        let entry = Entry {
            source: b.source,
            now: b.now,
            messages: b
                .messages
                .into_iter()
                .zip(b.docs)
                .map(|(m, doc)| Row {
                    id: m.id.into_string(),
                    external_id: m.external_id,
                    dedup_key: m.dedup_key,
                    contact: m.from.map(PhoneNumber::into_string),
                    doc,
                    text: m.text,
                })
                .collect(),
            events: b
                .events
                .into_iter()
                .map(|e| EventRow {
                    kind: e.kind,
                    external_id: e.external_id,
                    payload: e.payload.to_string(),
                })
                .collect(),
        };
        let mut framed = Vec::new();
        if !entry.messages.is_empty() || !entry.events.is_empty() {
            framed.reserve_exact(entry.encoded_len() + 8);
            frame_with(&mut framed, |body| entry.encode(body));
        }
        Self {
            entry,
            framed,
            dedup_cutoff: b.dedup_cutoff,
            made: Instant::now(),
        }
    }
}

/// Requests per group at most; bounds one group's write.
const MAX_GROUP: usize = 1024;
/// Journal bytes per SQLite transaction at most: about 2,200 of `inlet
/// bench`'s messages (a record takes about 470 bytes a message; measured
/// from the segment positions of 5,000/s runs).
pub const MAX_APPLY_BYTES: usize = 1024 * 1024;
/// While the backlog is small, at most one apply per this interval. Each
/// commit rewrites every page it touches (a dozen b-trees per message), so
/// applying each synced group on its own had the process write 59 KB per
/// message (syscall bytes, 1,000/s); gathering the records of 20 ms: 12 KB
/// (BENCHMARKS.md). Those bytes reach the disk between the journal's
/// syncs, and each sync waits for them: they are most of the ACKs' p99.
/// 200 ms wrote 27 % fewer bytes a message than 20 ms at 1,000/s and took
/// the p99 from 1.88x to 1.11x the group-commit ceiling's (1.27x to 1.06x
/// at 5,000/s; one A/B of five rounds). Only background work waits for
/// it, and only under steady traffic: the first record after a quiet
/// spell is applied at once.
pub const APPLY_EVERY: Duration = Duration::from_millis(200);

/// What the journal thread, the applier and the store share.
pub struct Progress {
    /// Journal position of the last byte synced (acknowledged).
    pub synced: AtomicU64,
    /// Journal position SQLite has applied (and synced) up to.
    pub applied: watch::Sender<u64>,
    /// Messages journaled, not yet applied, at most (`store.max_backlog`).
    pub max_backlog: AtomicU64,
    /// The journal's end is unknown after a failed write that could not be
    /// undone: nothing more is accepted until a restart.
    pub broken: AtomicBool,
    /// Counts the backlog (messages journaled, not yet applied) for
    /// `/health` and for `max_backlog`.
    pub gauges: Arc<QueueGauges>,
    /// The applier waits for records (has applied all that was synced).
    /// Only then does a sync wake it: while it gathers records it sleeps
    /// its interval out, instead of being woken by every group.
    pub applier_waiting: AtomicBool,
    /// Transactions the applier has started, to see it gather records.
    pub applies: AtomicU64,
}

impl Progress {
    pub fn new(end: u64, max_backlog: u64, gauges: Arc<QueueGauges>) -> Self {
        Self {
            synced: AtomicU64::new(end),
            applied: watch::Sender::new(end),
            max_backlog: AtomicU64::new(max_backlog),
            broken: AtomicBool::new(false),
            gauges,
            applier_waiting: AtomicBool::new(false),
            applies: AtomicU64::new(0),
        }
    }

    /// Why `adding` more messages (and a write) cannot be acknowledged now,
    /// if they cannot.
    pub fn refusal(&self, adding: u64) -> Option<StoreError> {
        if self.broken.load(Ordering::Acquire) {
            return Some(StoreError::Unavailable(
                "the journal could not be written; restart inlet".into(),
            ));
        }
        let waiting = self.gauges.journaled().max(0) as u64;
        (adding > 0 && waiting + adding > self.max_backlog.load(Ordering::Relaxed))
            .then_some(StoreError::Backlogged(waiting))
    }
}

/// The journal thread's state.
pub struct Journal {
    pub writer: JournalWriter,
    pub index: DedupIndex,
    pub progress: Arc<Progress>,
    /// Wakes the applier after each sync.
    pub applier: std::sync::mpsc::Sender<()>,
}

/// One request's share of a group, until the group is synced.
struct Pending {
    reply: IngestReply,
    request: Prepared,
    result: Result<IngestOutcome, StoreError>,
    /// Keys taken as new, taken back if the group is not journaled.
    keys: Vec<PendingKey>,
}

impl Journal {
    /// Runs until every sender is dropped.
    pub fn run(mut self, mut rx: mpsc::Receiver<(Prepared, IngestReply)>) {
        let fsync_seconds = metrics::histogram!("inlet_stage_seconds", "stage" => "journal");
        // How long requests wait for this thread, mostly behind the sync in
        // progress: where the ACK tail shows (BENCHMARKS.md).
        let wait_seconds = metrics::histogram!("inlet_stage_seconds", "stage" => "journal_wait");
        let mut group = Vec::with_capacity(MAX_GROUP);
        let mut pending: Vec<Pending> = Vec::with_capacity(MAX_GROUP);
        let mut buf = Vec::new();
        let mut last_prune = Instant::now();
        while let Some(first) = rx.blocking_recv() {
            group.push(first);
            while group.len() < MAX_GROUP {
                match rx.try_recv() {
                    Ok(r) => group.push(r),
                    Err(_) => break,
                }
            }
            if last_prune.elapsed() >= PRUNE_STEP_EVERY {
                last_prune = Instant::now();
                self.index.prune_step(group[0].0.dedup_cutoff);
            }
            buf.clear();
            let mut adds = 0;
            let taken = Instant::now();
            for (request, reply) in group.drain(..) {
                wait_seconds.record(taken.saturating_duration_since(request.made).as_secs_f64());
                let (result, keys) = self.decide(&request, &mut buf, &mut adds);
                pending.push(Pending {
                    reply,
                    request,
                    result,
                    keys,
                });
            }
            if !buf.is_empty() {
                let started = Instant::now();
                let appended = self.writer.append(&mut buf);
                fsync_seconds.record(started.elapsed().as_secs_f64());
                match appended {
                    Ok(end) => {
                        let accepted: usize = pending
                            .iter()
                            .filter_map(|p| p.result.as_ref().ok())
                            .map(|o| o.accepted)
                            .sum();
                        self.progress.gauges.add_journaled(accepted as i64);
                        self.progress.synced.store(end, Ordering::SeqCst);
                        if self.progress.applier_waiting.swap(false, Ordering::SeqCst) {
                            let _ = self.applier.send(());
                        }
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "Journal write failed; the group gets 503.");
                        if matches!(e, AppendError::Broken(_)) {
                            self.progress.broken.store(true, Ordering::Release);
                        }
                        let why = e.to_string();
                        // Latest first, so each hash gets back what it held.
                        for p in pending.iter_mut().rev() {
                            self.index.forget(std::mem::take(&mut p.keys));
                            p.result = Err(StoreError::Unavailable(why.clone()));
                        }
                    }
                }
            }
            // Answered only now: a duplicate too rests on the group before
            // it being on disk.
            for p in pending.drain(..) {
                let _ = p.reply.send((p.result, p.request));
            }
        }
    }

    /// Decides one request's keys and frames its record into `buf`.
    /// `group_adds` counts the new messages of the group so far.
    fn decide(
        &mut self,
        r: &Prepared,
        buf: &mut Vec<u8>,
        group_adds: &mut u64,
    ) -> (Result<IngestOutcome, StoreError>, Vec<PendingKey>) {
        let b = &r.entry;
        let mut keys = Vec::new();
        // Which messages are duplicates: usually none, and then this never
        // allocates.
        let mut duplicate = Vec::new();
        for (i, m) in b.messages.iter().enumerate() {
            match (self.index).check(&b.source, m.dedup_key(), b.now, r.dedup_cutoff) {
                Some(key) => keys.push(key),
                None => duplicate.push(i),
            }
        }
        let out = IngestOutcome {
            accepted: keys.len(),
            duplicates: duplicate.len(),
        };
        if keys.is_empty() && b.events.is_empty() {
            // Nothing to write: duplicates are answered even while new
            // messages are refused.
            return (Ok(out), keys);
        }
        if let Some(e) = self.progress.refusal(keys.len() as u64 + *group_adds) {
            self.index.forget(keys);
            return (Err(e), Vec::new());
        }
        *group_adds += keys.len() as u64;
        if out.duplicates == 0 {
            buf.extend_from_slice(&r.framed);
        } else {
            // Some were duplicates: the record holds only the new ones.
            // (`duplicate` is in index order.)
            let entry = Entry {
                source: b.source.clone(),
                now: b.now,
                messages: (b.messages.iter().enumerate())
                    .filter(|(i, _)| duplicate.binary_search(i).is_err())
                    .map(|(_, m)| m.clone())
                    .collect(),
                events: b.events.clone(),
            };
            frame_with(buf, |body| entry.encode(body));
        }
        (Ok(out), keys)
    }
}

/// Fills SQLite from the journal, in order, one transaction at a time.
pub struct Applier {
    pub reader: JournalReader,
    pub progress: Arc<Progress>,
    pub writer: mpsc::Sender<Op>,
    pub wake: std::sync::mpsc::Receiver<()>,
    /// Classify while storing (see [`InlineClassify`]), when set at open.
    pub inline: Option<Arc<InlineClassify>>,
    /// The segment being read when segments were last deleted (or first
    /// read): once reading moves on, the ones before are recycled or deleted.
    pub swept: Option<u64>,
    /// The writer's and checkpointer's pauses: off while a whole apply's
    /// worth is waiting (see [`super::pacing`]).
    pub pacing: Arc<super::pacing::Pacing>,
}

impl Applier {
    /// Runs until the journal thread is gone and everything synced is applied.
    pub fn run(mut self) {
        let mut applied = *self.progress.applied.borrow();
        let mut retry = Duration::from_millis(10);
        let mut last_apply: Option<Instant> = None;
        loop {
            let synced = self.progress.synced.load(Ordering::SeqCst);
            if applied >= synced {
                // Say so, then look again: a sync in between either saw
                // the flag (and wakes us) or is seen now.
                self.progress.applier_waiting.store(true, Ordering::SeqCst);
                if self.progress.synced.load(Ordering::SeqCst) > applied {
                    self.progress.applier_waiting.store(false, Ordering::SeqCst);
                    continue;
                }
                match self.wake.recv() {
                    Ok(()) => {
                        while self.wake.try_recv().is_ok() {}
                        continue;
                    }
                    Err(_) => return,
                }
            }
            let wait =
                last_apply.map_or(Duration::ZERO, |t| APPLY_EVERY.saturating_sub(t.elapsed()));
            // Behind by a whole apply: SQLite writes at full speed until an
            // apply finds less waiting.
            let behind = synced - applied >= MAX_APPLY_BYTES as u64;
            self.pacing.set_on(!behind);
            if !behind && !wait.is_zero() {
                // Gather more records: the interval is slept out (a
                // backlog passing MAX_APPLY_BYTES meanwhile waits for it).
                std::thread::sleep(wait);
                continue;
            }
            last_apply = Some(Instant::now());
            self.progress.applies.fetch_add(1, Ordering::Relaxed);
            match self.apply_once(applied, synced) {
                Ok(end) => {
                    applied = end;
                    retry = Duration::from_millis(10);
                }
                Err(e) => {
                    tracing::warn!(error = %e, retry_in = ?retry, "Could not store journaled messages in SQLite; they stay in the journal.");
                    std::thread::sleep(retry);
                    retry = (retry * 2).min(Duration::from_secs(1));
                }
            }
        }
    }

    /// Applies the records after `from` (up to `synced`, at most
    /// [`MAX_APPLY_BYTES`]) in one transaction; returns the new position.
    fn apply_once(&mut self, from: u64, synced: u64) -> Result<u64, StoreError> {
        let mut entries = Vec::new();
        let io = |e: std::io::Error| StoreError::Internal(format!("reading the journal: {e}"));
        let end = self
            .reader
            .read(from, synced, MAX_APPLY_BYTES, |rec| {
                let entry = Entry::decode(rec.body)
                    .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))?;
                entries.push(entry);
                Ok(())
            })
            .map_err(io)?;
        if end == from {
            return Err(StoreError::Internal(format!(
                "no whole journal record at position {from} (synced up to {synced})"
            )));
        }
        let messages: usize = entries.iter().map(|e| e.messages.len()).sum();
        self.call(|reply| Op::Apply {
            entries,
            upto: end,
            inline: self.inline.clone(),
            reply,
        })?;
        // Applied: the keys are found in SQLite from now on.
        self.progress.gauges.add_journaled(-(messages as i64));
        self.progress.applied.send_replace(end);
        // Segments are removed once reading has moved on to a later one,
        // and only after SQLite's commits are on disk (they are answered at
        // commit, not synced).
        let reading = self.reader.current_segment();
        match self.swept {
            None => self.swept = reading,
            Some(s) if Some(s) != reading => {
                self.call(Op::Sync)?;
                match self.reader.delete_before(end) {
                    Ok(_) => self.swept = reading,
                    Err(e) => {
                        tracing::warn!(error = %e, "Could not delete applied journal segments.")
                    }
                }
            }
            Some(_) => {}
        }
        Ok(end)
    }

    /// Runs one op on the writer and waits for its answer.
    fn call<T>(&self, op: impl FnOnce(super::writer::Reply<T>) -> Op) -> Result<T, StoreError> {
        let gone = || StoreError::Unavailable("the store writer has stopped".into());
        let (tx, rx) = oneshot::channel();
        self.writer.blocking_send(op(tx)).map_err(|_| gone())?;
        rx.blocking_recv().map_err(|_| gone())?
    }
}
