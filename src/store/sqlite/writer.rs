//! The single SQLite writer and its group commit.
//!
//! One OS thread owns the write connection. Callers send an [`Op`] with a
//! oneshot reply; the thread drains whatever is queued (up to
//! [`MAX_BATCH`] ops, a round) and runs it inside the open `BEGIN
//! IMMEDIATE` transaction. The transaction commits when the disk is free
//! for the next fsync, taking in further rounds until then. The commit
//! does not wait for the disk: its answers go to the [`Syncer`], which
//! fsyncs the WAL and only then answers every caller, while this thread
//! already runs the next round. So each fsync is shared by every request
//! that arrived meanwhile, and no op waits for a commit to start.

use std::sync::{Arc, LazyLock};

use rusqlite::{Connection, OptionalExtension, params};
use tokio::sync::{Notify, mpsc, oneshot};

use super::super::{
    AttemptRecord, CLASSIFY, ClaimedJob, InlineClassify, JobCompletion, JobNext, Lane, Millis,
    QueueCounts, QueueGauges, Rejection, ReplyClaim, ReplyResult, StoreError,
};
use super::dedup::Hash;
use super::leases::{Leases, Undo};
use super::recent::{Last, RecentContacts};
use super::record::{Entry, EventRow};
use super::syncer::Syncer;
use super::trickle::Activity;
use crate::domain::{ConversationId, EventId, Intent};

/// A leased job as read inside the transaction; its message is parsed
/// into JSON by the caller, off this thread (see [`RawClaim::into_job`]).
pub struct RawClaim {
    job_id: i64,
    message_id: String,
    source: String,
    action: String,
    attempts: u32,
    /// The message's row; `None` when the message is gone.
    doc: Option<super::queries::DocColumns>,
}

impl RawClaim {
    pub fn into_job(self) -> ClaimedJob {
        ClaimedJob {
            job_id: self.job_id,
            message_id: self.message_id,
            source: self.source,
            action: self.action,
            attempts: self.attempts,
            message: self
                .doc
                .map(super::queries::message_doc)
                .unwrap_or(serde_json::Value::Null),
        }
    }
}

/// Ops per transaction at most; bounds the latency one batch adds.
const MAX_BATCH: usize = 512;

pub type Reply<T> = oneshot::Sender<Result<T, StoreError>>;

pub enum Op {
    /// Journal records to store, and the journal position after them
    /// (see `ingest.rs`). One at a time, so positions never interleave.
    Apply {
        entries: Vec<Entry>,
        upto: u64,
        /// Classify while storing (see [`InlineClassify`]); `None`
        /// queues a `classify` job per message.
        inline: Option<Arc<InlineClassify>>,
        /// How many messages were stored.
        reply: Reply<usize>,
    },
    Claim {
        lanes: Vec<Lane>,
        limit: usize,
        lease_ms: i64,
        now: Millis,
        reply: Reply<Vec<RawClaim>>,
    },
    Complete(JobCompletion, Reply<()>),
    Reject(Rejection, i64, Reply<()>),
    Prune {
        dedup_cutoff: Millis,
        retention_cutoff: Millis,
        max_rejections: u64,
        reply: Reply<()>,
    },
    Replay {
        message_id: Option<String>,
        only_failed: bool,
        source: Option<String>,
        action: Option<String>,
        now: Millis,
        reply: Reply<usize>,
    },
    Probe(Reply<()>),
    /// Answered once everything committed so far is on disk.
    Sync(Reply<()>),
    /// From the syncer: the disk is free for the next fsync. Carries no
    /// work; it only wakes the writer to commit.
    Synced,
    FailOrphans {
        lanes: Vec<Lane>,
        now: Millis,
        reply: Reply<usize>,
    },
    BeginReply {
        message_id: String,
        action: String,
        now: Millis,
        reply: Reply<ReplyClaim>,
    },
    FinishReply {
        message_id: String,
        action: String,
        result: ReplyResult,
        detail: Option<String>,
        now: Millis,
        reply: Reply<()>,
    },
}

impl Op {
    /// Whether someone waits on this op's commit where latency counts: a
    /// request, a readiness probe, an admin call, a reply about to be sent,
    /// a worker waiting for jobs, or a completion that starts the next
    /// action. What is left (finished jobs, reply outcomes, pruning) is
    /// bookkeeping that can wait for company.
    fn urgent(&self) -> bool {
        match self {
            Op::Complete(c, _) => matches!(c.next, JobNext::Done) && !c.follow_ups.is_empty(),
            Op::FinishReply { .. } | Op::Prune { .. } | Op::Synced => false,
            _ => true,
        }
    }

    /// Whether the caller may hear of this op only once the disk holds it.
    /// A reply about to be sent must be (at most once), and so must what an
    /// operator asked for. Everything else is answered at its commit and
    /// synced within a checkpoint interval: the acknowledged messages are
    /// in the journal already, and what a power cut could take back
    /// (a finished job, an attempt record) only makes a job run again,
    /// which at-least-once allows.
    fn needs_fsync(&self) -> bool {
        matches!(
            self,
            Op::BeginReply { .. }
                | Op::Replay { .. }
                | Op::Probe(_)
                | Op::Sync(_)
                | Op::FailOrphans { .. }
        )
    }
}

/// An executed op whose answer waits for the commit and its fsync.
pub(super) enum Done {
    Claim(Reply<Vec<RawClaim>>, Result<Vec<RawClaim>, StoreError>),
    Unit(Reply<()>, Result<(), StoreError>),
    Count(Reply<usize>, Result<usize, StoreError>),
    ReplyClaim(Reply<ReplyClaim>, Result<ReplyClaim, StoreError>),
}

impl Done {
    pub(super) fn fail(self, e: &StoreError) {
        let err = || StoreError::Unavailable(e.to_string());
        match self {
            Done::Claim(tx, _) => drop(tx.send(Err(err()))),
            Done::Unit(tx, _) => drop(tx.send(Err(err()))),
            Done::Count(tx, _) => drop(tx.send(Err(err()))),
            Done::ReplyClaim(tx, _) => drop(tx.send(Err(err()))),
        }
    }
    pub(super) fn send(self) {
        match self {
            Done::Claim(tx, r) => drop(tx.send(r)),
            Done::Unit(tx, r) => drop(tx.send(r)),
            Done::Count(tx, r) => drop(tx.send(r)),
            Done::ReplyClaim(tx, r) => drop(tx.send(r)),
        }
    }
}

pub struct Writer {
    conn: Connection,
    gauges: Arc<QueueGauges>,
    /// Woken when new work became due: the dispatcher claims at once.
    work: Arc<Notify>,
    /// Answers committed batches once they are on disk.
    syncer: Syncer,
    leases: Arc<Leases>,
    /// Wakes the writeback thread (`trickle.rs`) after commits that wrote.
    activity: Arc<Activity>,
    /// Lease changes of the round being run, taken back if it fails.
    round_undo: Vec<Undo>,
    /// A commit answered without an fsync may not be on disk yet.
    unsynced: bool,
    /// For inline classification: made at the first such `Apply` unless
    /// the store hands over the one its start-up replay used.
    recent: Option<RecentContacts>,
    metrics: WriterMetrics,
}

/// Registered once, not looked up per commit.
struct WriterMetrics {
    commit_seconds: metrics::Histogram,
    batch_ops: metrics::Histogram,
}

pub(super) fn map_err(e: rusqlite::Error) -> StoreError {
    use rusqlite::ErrorCode::*;
    match e.sqlite_error_code() {
        Some(
            DatabaseBusy | DatabaseLocked | DiskFull | CannotOpen | SystemIoFailure | ReadOnly,
        ) => StoreError::Unavailable(e.to_string()),
        _ => StoreError::Internal(e.to_string()),
    }
}

/// What one op produced; its caller hears it after the commit.
enum Outcome {
    Claim(Result<(Vec<RawClaim>, usize), StoreError>),
    Complete(Result<Option<usize>, StoreError>),
    Unit(Result<(), StoreError>),
    Count(Result<usize, StoreError>),
    Applied(Result<Applied, StoreError>),
    Replay(Result<(usize, usize), StoreError>),
    ReplyClaim(Result<ReplyClaim, StoreError>),
}

impl Outcome {
    /// The op's error, if it failed.
    fn error(&self) -> Option<&StoreError> {
        match self {
            Outcome::Claim(r) => r.as_ref().err(),
            Outcome::Complete(r) => r.as_ref().err(),
            Outcome::Unit(r) => r.as_ref().err(),
            Outcome::Count(r) => r.as_ref().err(),
            Outcome::Applied(r) => r.as_ref().err(),
            Outcome::Replay(r) => r.as_ref().err(),
            Outcome::ReplyClaim(r) => r.as_ref().err(),
        }
    }
}

/// Why a transaction did not commit.
enum Aborted {
    /// An op failed outside a savepoint of its own; the round was rolled
    /// back, the transaction stands (begun again if the round was alone
    /// in it).
    Op,
    /// A statement of the transaction itself failed, or SQLite rolled the
    /// transaction back on its own.
    Batch(StoreError),
}

impl Writer {
    /// `conn` must run with `synchronous=NORMAL`: `syncer` makes each
    /// commit durable before its callers hear of it.
    pub fn new(
        conn: Connection,
        gauges: Arc<QueueGauges>,
        work: Arc<Notify>,
        syncer: Syncer,
        leases: Arc<Leases>,
        activity: Arc<Activity>,
        recent: Option<RecentContacts>,
    ) -> Self {
        Self {
            conn,
            gauges,
            work,
            syncer,
            leases,
            activity,
            round_undo: Vec::new(),
            unsynced: false,
            recent,
            metrics: WriterMetrics {
                commit_seconds: metrics::histogram!("inlet_stage_seconds", "stage" => "commit"),
                batch_ops: metrics::histogram!("inlet_commit_batch_ops"),
            },
        }
    }

    /// Runs until every sender is dropped.
    pub fn run(mut self, mut rx: mpsc::Receiver<Op>) {
        // A clock for timed waits on this plain thread.
        let rt = match tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
        {
            Ok(rt) => rt,
            Err(e) => {
                tracing::error!(error = %e, "The store writer cannot start its timer.");
                return;
            }
        };
        let mut ops = Vec::with_capacity(MAX_BATCH);
        let mut open: Option<Open> = None;
        loop {
            // Commit when the disk is free for the next fsync. Until then
            // the transaction stays open and takes in whatever arrives, so
            // there is one commit (and one rewrite of each page it touches)
            // per fsync, and no op waits for a commit to start running.
            // Bookkeeping alone (finished jobs, reply outcomes, pruning)
            // lingers a little for company: each commit rewrites whole
            // pages, and committing every completion on its own wrote about
            // 40 % more bytes per message at 1,000/s (BENCHMARKS.md).
            let mut wait = None;
            if let Some(o) = open.take() {
                let disk_free = self.syncer.idle() || o.done.len() >= MAX_OPEN_OPS;
                let lingered = o.started.elapsed();
                if disk_free && (o.urgent || lingered >= BOOKKEEPING_LINGER) {
                    self.commit(o);
                    continue;
                }
                if disk_free {
                    wait = Some(BOOKKEEPING_LINGER - lingered);
                }
                open = Some(o);
            }
            let first = match wait {
                // Woken by an op, or by the syncer (`Op::Synced`).
                None => rx.blocking_recv(),
                Some(d) => match rt.block_on(async { tokio::time::timeout(d, rx.recv()).await }) {
                    Ok(op) => op,
                    Err(_elapsed) => continue,
                },
            };
            let Some(first) = first else {
                break;
            };
            ops.push(first);
            while ops.len() < MAX_BATCH {
                match rx.try_recv() {
                    Ok(op) => ops.push(op),
                    Err(_) => break,
                }
            }
            ops.retain(|op| !matches!(op, Op::Synced));
            if !ops.is_empty() {
                open = self.run_round(&mut ops, open);
            }
        }
        if let Some(o) = open {
            self.commit(o);
        }
    }

    /// Runs `ops` inside the open transaction (beginning one if needed).
    /// Returns the transaction, or `None` when it failed as a whole (every
    /// caller in it has been answered with the error).
    pub(super) fn run_round(&mut self, ops: &mut Vec<Op>, open: Option<Open>) -> Option<Open> {
        // A round that begins its transaction needs no savepoint of its
        // own: undoing it is undoing the transaction.
        let alone = open.is_none();
        let mut open = match open {
            Some(o) => o,
            None => match exec(&self.conn, "BEGIN IMMEDIATE") {
                Ok(()) => Open::new(self.conn.total_changes()),
                Err(e) => {
                    tracing::warn!(error = %e, ops = ops.len(), "Store cannot begin a transaction.");
                    for op in ops.drain(..) {
                        fail_op(op, &e);
                    }
                    return None;
                }
            },
        };
        // Ops run without a savepoint each: a savepoint per op copies every
        // page the op touches into a statement journal, which was a fifth of
        // the writer's time, and ops fail only on I/O errors or bugs. A
        // round that joins an open transaction has one savepoint; a round
        // that begins its transaction has none (undoing it is rolling the
        // transaction back). Under a savepoint SQLite copies the first write
        // of every page into a statement journal: a sixth of the writer's
        // instructions a message at 1,000/s when every round had one. Only
        // when an op fails is the round run again with a savepoint per op,
        // so that op alone fails.
        let attempt = match self.round(ops, false, alone) {
            Err(Aborted::Op) => {
                self.leases.undo(&mut self.round_undo);
                self.round(ops, true, alone)
            }
            other => other,
        };
        let outcomes = match attempt {
            Ok(outcomes) => outcomes,
            Err(failed) => {
                let e = match failed {
                    Aborted::Batch(e) => e,
                    // Isolated ops fail alone; never seen, handled anyway.
                    Aborted::Op => StoreError::Internal("an isolated op aborted its round".into()),
                };
                tracing::warn!(error = %e, ops = ops.len() + open.done.len(), "Store transaction failed.");
                if !self.conn.is_autocommit() {
                    let _ = self.conn.execute_batch("ROLLBACK");
                }
                self.leases.undo(&mut self.round_undo);
                self.leases.undo(&mut open.undo);
                for op in ops.drain(..) {
                    fail_op(op, &e);
                }
                for d in open.done {
                    d.fail(&e);
                }
                return None;
            }
        };
        for (op, outcome) in ops.iter().zip(&outcomes) {
            account(op, outcome, &mut open);
        }
        open.undo.append(&mut self.round_undo);
        open.urgent |= ops.iter().any(Op::urgent);
        open.durable |= ops.iter().any(Op::needs_fsync);
        open.done.extend(
            ops.drain(..)
                .zip(outcomes)
                .filter_map(|(op, outcome)| answer(op, outcome)),
        );
        Some(open)
    }

    /// Runs `ops` in a savepoint of the open transaction, or, when they are
    /// `alone` in it, in the transaction itself (rolled back and begun
    /// again if an op fails). With `isolate`, each op runs in its own
    /// savepoint and a failing op only fails itself.
    fn round(&mut self, ops: &[Op], isolate: bool, alone: bool) -> Result<Vec<Outcome>, Aborted> {
        let conn = &self.conn;
        let leases = (&*self.leases, &mut self.round_undo);
        let recent = &mut self.recent;
        let batch_err = |e: StoreError| Aborted::Batch(e);
        if !alone {
            exec(conn, "SAVEPOINT round").map_err(batch_err)?;
        }
        let mut outcomes = Vec::with_capacity(ops.len());
        for op in ops {
            if isolate {
                exec(conn, "SAVEPOINT op").map_err(batch_err)?;
            }
            let outcome = execute(conn, (leases.0, &mut *leases.1), recent, op);
            if conn.is_autocommit() {
                // SQLite rolled the whole transaction back itself (disk
                // full, I/O error): nothing of it stands.
                return Err(Aborted::Batch(StoreError::Unavailable(format!(
                    "the transaction was rolled back: {}",
                    outcome.error().map(|e| e.to_string()).unwrap_or_default()
                ))));
            }
            match (outcome.error().is_some(), isolate) {
                (true, false) if alone => {
                    exec(conn, "ROLLBACK").map_err(batch_err)?;
                    exec(conn, "BEGIN IMMEDIATE").map_err(batch_err)?;
                    return Err(Aborted::Op);
                }
                (true, false) => {
                    exec(conn, "ROLLBACK TO round").map_err(batch_err)?;
                    exec(conn, "RELEASE round").map_err(batch_err)?;
                    return Err(Aborted::Op);
                }
                (true, true) => {
                    exec(conn, "ROLLBACK TO op").map_err(batch_err)?;
                    exec(conn, "RELEASE op").map_err(batch_err)?;
                }
                (false, true) => exec(conn, "RELEASE op").map_err(batch_err)?,
                (false, false) => {}
            }
            outcomes.push(outcome);
        }
        if !alone {
            exec(conn, "RELEASE round").map_err(batch_err)?;
        }
        Ok(outcomes)
    }

    /// Commits the open transaction and hands its answers to the syncer.
    pub(super) fn commit(&mut self, mut o: Open) {
        if let Err(e) = exec(&self.conn, "COMMIT") {
            tracing::warn!(error = %e, ops = o.done.len(), "Store commit failed.");
            if !self.conn.is_autocommit() {
                let _ = self.conn.execute_batch("ROLLBACK");
            }
            self.leases.undo(&mut o.undo);
            for d in o.done {
                d.fail(&e);
            }
            return;
        }
        if o.recount {
            // Re-based on the truth after a prune or orphan sweep, so any
            // drift (a worker that died, a lease that ran out) heals.
            match count_queue(&self.conn, self.leases.len()) {
                Ok(c) => self.gauges.set(c),
                Err(_) => self.gauges.add(o.delta),
            }
        } else {
            self.gauges.add(o.delta);
        }
        if o.wake {
            self.work.notify_one();
        }
        self.metrics
            .commit_seconds
            .record(o.started.elapsed().as_secs_f64());
        self.metrics.batch_ops.record(o.done.len() as f64);
        let wrote = self.conn.total_changes() != o.changes_at_begin;
        if wrote {
            self.activity.committed();
        }
        if !o.durable {
            // Answered at the commit (see `Op::needs_fsync`).
            self.unsynced |= wrote;
            for d in o.done {
                d.send();
            }
            return;
        }
        if !wrote && !self.unsynced && self.syncer.idle() {
            // Nothing was written (a probe only takes the write lock) and
            // every earlier commit is on disk, so all these answers rest on
            // is durable already; an fsync would only keep the disk busy. A
            // stuck fsync still holds a probe: the syncer is not idle then.
            for d in o.done {
                d.send();
            }
            return;
        }
        // This fsync covers every commit before it too.
        self.unsynced = false;
        self.syncer.settle(o.done);
    }
}

/// Ops in one transaction at most; past it the writer commits without
/// waiting for the syncer.
const MAX_OPEN_OPS: usize = 4096;

/// How long a transaction holding only bookkeeping waits for company
/// before it commits anyway. Delays background processing, never an ACK.
const BOOKKEEPING_LINGER: std::time::Duration = std::time::Duration::from_millis(2);

/// The transaction being filled while the previous commit is fsynced.
pub(super) struct Open {
    done: Vec<Done>,
    /// Lease changes made by it, taken back if it fails.
    undo: Vec<Undo>,
    /// Some caller waits on this commit in the request path.
    urgent: bool,
    /// Some op in it is answered only once it is on disk.
    durable: bool,
    delta: QueueCounts,
    wake: bool,
    recount: bool,
    started: std::time::Instant,
    /// The connection's `total_changes` at `BEGIN`: unchanged at commit
    /// means the transaction wrote nothing.
    changes_at_begin: u64,
}

impl Open {
    fn new(changes_at_begin: u64) -> Self {
        Self {
            done: Vec::new(),
            undo: Vec::new(),
            urgent: false,
            durable: false,
            delta: QueueCounts::default(),
            wake: false,
            recount: false,
            started: std::time::Instant::now(),
            changes_at_begin,
        }
    }
}

/// Runs one fixed statement through the statement cache.
fn exec(conn: &Connection, sql: &str) -> Result<(), StoreError> {
    conn.prepare_cached(sql)
        .and_then(|mut s| s.execute([]))
        .map(drop)
        .map_err(map_err)
}

/// Runs one op's statements inside the open transaction; lease changes go
/// to the undo log.
fn execute(
    c: &Connection,
    leases: (&Leases, &mut Vec<Undo>),
    recent: &mut Option<RecentContacts>,
    op: &Op,
) -> Outcome {
    fn run<T>(r: Result<T, rusqlite::Error>) -> Result<T, StoreError> {
        r.map_err(map_err)
    }
    match op {
        Op::Apply {
            entries,
            upto,
            inline,
            ..
        } => Outcome::Applied(run(match inline.as_deref() {
            Some(ic) => {
                recent_contacts(c, recent, ic).and_then(|r| apply(c, entries, *upto, Some((ic, r))))
            }
            None => apply(c, entries, *upto, None),
        })),
        Op::Claim {
            lanes,
            limit,
            lease_ms,
            now,
            ..
        } => Outcome::Claim(run(claim(c, leases, lanes, *limit, *lease_ms, *now))),
        Op::Complete(done, _) => Outcome::Complete(run(complete(c, leases, done))),
        Op::Reject(rej, now, _) => Outcome::Unit(run(reject(c, rej, *now))),
        Op::Prune {
            dedup_cutoff,
            retention_cutoff,
            max_rejections,
            ..
        } => Outcome::Unit(run(prune(
            c,
            *dedup_cutoff,
            *retention_cutoff,
            *max_rejections,
        ))),
        Op::Replay {
            message_id,
            only_failed,
            source,
            action,
            now,
            ..
        } => Outcome::Replay(run(replay(
            c,
            message_id.as_deref(),
            *only_failed,
            source.as_deref(),
            action.as_deref(),
            *now,
        ))),
        Op::Probe(_) | Op::Sync(_) | Op::Synced => Outcome::Unit(Ok(())),
        Op::FailOrphans { lanes, now, .. } => Outcome::Count(run(fail_orphans(c, lanes, *now))),
        Op::BeginReply {
            message_id,
            action,
            now,
            ..
        } => Outcome::ReplyClaim(run(begin_reply(c, message_id, action, *now))),
        Op::FinishReply {
            message_id,
            action,
            result,
            detail,
            now,
            ..
        } => Outcome::Unit(run(finish_reply(
            c,
            message_id,
            action,
            *result,
            detail.as_deref(),
            *now,
        ))),
    }
}

/// What a committed op changes in the queue gauges and whether workers
/// should look for new work.
fn account(op: &Op, outcome: &Outcome, open: &mut Open) {
    let Open {
        delta,
        wake,
        recount,
        ..
    } = open;
    match (op, outcome) {
        (Op::Apply { .. }, Outcome::Applied(Ok(a))) => {
            delta.pending += a.enqueued as i64;
            *wake |= a.enqueued > 0;
            if a.classified > 0 {
                metrics::counter!("inlet_job_attempts_total", "action" => CLASSIFY, "outcome" => "success")
                    .increment(a.classified as u64);
            }
        }
        (Op::Claim { .. }, Outcome::Claim(Ok((_, from_pending)))) => {
            delta.pending -= *from_pending as i64;
            delta.in_flight += *from_pending as i64;
        }
        (Op::Complete(c, _), Outcome::Complete(Ok(Some(inserted)))) => {
            delta.in_flight -= 1;
            match c.next {
                JobNext::Done => {}
                JobNext::Retry { .. } | JobNext::Defer { .. } => {
                    delta.pending += 1;
                    *wake = true;
                }
                JobNext::Dead { .. } => delta.dead += 1,
            }
            if *inserted > 0 {
                delta.pending += *inserted as i64;
                *wake = true;
            }
        }
        (Op::Replay { .. }, Outcome::Replay(Ok((n, from_dead)))) => {
            delta.pending += *n as i64;
            delta.dead -= *from_dead as i64;
            *wake |= *n > 0;
        }
        (Op::Prune { .. }, Outcome::Unit(Ok(())))
        | (Op::FailOrphans { .. }, Outcome::Count(Ok(_))) => *recount = true,
        _ => {}
    }
}

/// Pairs an op's reply channel with what it produced.
fn answer(op: Op, outcome: Outcome) -> Option<Done> {
    Some(match (op, outcome) {
        (Op::Apply { reply, .. }, Outcome::Applied(r)) => Done::Count(reply, r.map(|a| a.stored)),
        (Op::Claim { reply, .. }, Outcome::Claim(r)) => Done::Claim(reply, r.map(|(jobs, _)| jobs)),
        (Op::Complete(_, tx), Outcome::Complete(r)) => Done::Unit(tx, r.map(drop)),
        (Op::Reject(_, _, tx), Outcome::Unit(r))
        | (Op::Prune { reply: tx, .. }, Outcome::Unit(r))
        | (Op::Probe(tx), Outcome::Unit(r))
        | (Op::Sync(tx), Outcome::Unit(r))
        | (Op::FinishReply { reply: tx, .. }, Outcome::Unit(r)) => Done::Unit(tx, r),
        (Op::Replay { reply, .. }, Outcome::Replay(r)) => Done::Count(reply, r.map(|(n, _)| n)),
        (Op::FailOrphans { reply, .. }, Outcome::Count(r)) => Done::Count(reply, r),
        (Op::BeginReply { reply, .. }, Outcome::ReplyClaim(r)) => Done::ReplyClaim(reply, r),
        (Op::Synced, _) => return None,
        (op, _) => {
            // `execute` made the outcome from this very op; never seen.
            let e = StoreError::Internal("writer paired an op with another op's outcome".into());
            fail_op(op, &e);
            return None;
        }
    })
}

fn fail_op(op: Op, e: &StoreError) {
    let err = || StoreError::Unavailable(e.to_string());
    match op {
        Op::Apply { reply, .. } => drop(reply.send(Err(err()))),
        Op::Claim { reply, .. } => drop(reply.send(Err(err()))),
        Op::Complete(_, tx) => drop(tx.send(Err(err()))),
        Op::Reject(_, _, tx) => drop(tx.send(Err(err()))),
        Op::Prune { reply, .. } => drop(reply.send(Err(err()))),
        Op::Replay { reply, .. } => drop(reply.send(Err(err()))),
        Op::Probe(tx) | Op::Sync(tx) => drop(tx.send(Err(err()))),
        Op::FailOrphans { reply, .. } => drop(reply.send(Err(err()))),
        Op::BeginReply { reply, .. } => drop(reply.send(Err(err()))),
        Op::FinishReply { reply, .. } => drop(reply.send(Err(err()))),
        Op::Synced => {}
    }
}

/// The writer's [`RecentContacts`], read from the file the first time.
fn recent_contacts<'r>(
    c: &Connection,
    recent: &'r mut Option<RecentContacts>,
    ic: &InlineClassify,
) -> Result<&'r mut RecentContacts, rusqlite::Error> {
    let r = match recent.take() {
        Some(r) => r,
        None => RecentContacts::load(c, ic.session_ttl_ms, crate::store::now_millis())?,
    };
    Ok(recent.insert(r))
}

/// What [`apply`] stored.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Applied {
    /// Messages stored (not stored before).
    pub stored: usize,
    /// Jobs enqueued for workers.
    pub enqueued: usize,
    /// Messages classified inline (each one `classify` attempt).
    pub classified: usize,
}

/// Stores journal records: the acknowledged messages with their dedup
/// keys, and the events, and the journal position they reach, all in one
/// transaction. Each message gets a queued `classify` job, or with
/// `inline` is classified right here (see [`InlineClassify`]; the
/// [`RecentContacts`] are the writer's, kept across transactions). Dedup was
/// decided on the journal thread; each stored message's key is appended to
/// the `dedup_keys` log. A message already stored is skipped (its key
/// too), so applying a record twice stores it once.
pub(super) fn apply(
    c: &Connection,
    entries: &[Entry],
    upto: u64,
    inline: Option<(&InlineClassify, &mut RecentContacts)>,
) -> Result<Applied, rusqlite::Error> {
    let mut out = Applied::default();
    // (source, key, seen_at) of each message stored, in journal order.
    let mut keys: Vec<(&str, &str, Millis)> = Vec::new();
    let mut msg = c.prepare_cached(
        "INSERT OR IGNORE INTO messages
           (id, source, external_id, contact, received_at, doc, intent, intent_label, conversation_id,
            inline_classified_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
    )?;
    // With the inline path's statement, looked up once per transaction
    // rather than per message (a cache lookup hashes the SQL text).
    let mut inline = match inline {
        Some((ic, recent)) => {
            recent.prune(entries.first().map_or(0, |e| e.now));
            Some((
                ic,
                recent,
                c.prepare_cached(super::queries::LAST_CONVERSATION)?,
            ))
        }
        None => None,
    };
    for e in entries {
        for m in &e.messages {
            let classified = match inline.as_mut() {
                Some((ic, recent, last_conversation)) => Some(classify_for_insert(
                    last_conversation,
                    ic,
                    recent,
                    &e.source,
                    m,
                    e.now,
                )?),
                None => None,
            };
            let inserted = msg.execute(params![
                m.id,
                e.source,
                m.external_id,
                m.contact,
                e.now,
                m.doc,
                classified.as_ref().map(|k| k.intent_json.as_str()),
                classified.as_ref().map(|k| k.intent.label.as_str()),
                classified
                    .as_ref()
                    .and_then(|k| k.conversation.as_ref().map(|(_, c)| c.as_str())),
                classified.as_ref().map(|_| e.now),
            ])?;
            if inserted == 0 {
                continue;
            }
            keys.push((&e.source, m.dedup_key(), e.now));
            out.stored += 1;
            match inline.as_mut().zip(classified) {
                Some(((ic, recent, _), k)) => {
                    out.enqueued += record_inline_classify(c, ic, &e.source, &m.id, &k, e.now)?;
                    out.classified += 1;
                    if let Some((key, conv)) = k.conversation {
                        recent.note(key, e.now, &conv);
                    }
                }
                None => {
                    c.prepare_cached(
                        "INSERT INTO jobs (message_id, source, action, status, run_at, updated_at)
                         VALUES (?1, ?2, ?3, 'pending', ?4, ?4)",
                    )?
                    .execute(params![m.id, e.source, CLASSIFY, e.now])?;
                    out.enqueued += 1;
                }
            }
        }
        for ev in &e.events {
            insert_event(c, &e.source, ev, e.now)?;
        }
    }
    insert_dedup_keys(c, &keys)?;
    c.prepare_cached("UPDATE journal_state SET applied = ?1 WHERE id = 1")?
        .execute(params![upto as i64])?;
    Ok(out)
}

/// Rows per `INSERT` into `dedup_keys`, largest first: a full transaction
/// goes in statements of 64 rows, the rest in as few as the smaller sizes
/// allow. A statement per key costs more than its row: batching them took
/// the SQLite apply from 31,967 to 31,166 instructions a message at
/// 1,000/s (BENCHMARKS.md).
const KEY_ROWS: [usize; 4] = [64, 16, 4, 1];

/// `INSERT INTO dedup_keys ... VALUES` with each of [`KEY_ROWS`] rows.
static KEY_INSERTS: LazyLock<[String; 4]> = LazyLock::new(|| {
    KEY_ROWS.map(|rows| {
        let row = "(?, ?, ?)";
        format!(
            "INSERT INTO dedup_keys (source, key, seen_at) VALUES {}",
            vec![row; rows].join(", ")
        )
    })
});

/// Appends `keys` to the dedup log, in order.
fn insert_dedup_keys(c: &Connection, mut keys: &[(&str, &str, Millis)]) -> rusqlite::Result<()> {
    for (rows, sql) in KEY_ROWS.iter().zip(KEY_INSERTS.iter()) {
        if keys.len() < *rows {
            continue;
        }
        let mut stmt = c.prepare_cached(sql)?;
        while keys.len() >= *rows {
            let (chunk, rest) = keys.split_at(*rows);
            for (i, (source, key, seen_at)) in chunk.iter().enumerate() {
                stmt.raw_bind_parameter(3 * i + 1, source)?;
                stmt.raw_bind_parameter(3 * i + 2, key)?;
                stmt.raw_bind_parameter(3 * i + 3, seen_at)?;
            }
            stmt.raw_execute()?;
            keys = rest;
        }
    }
    Ok(())
}

/// A message classified on the writer, before its row is written.
struct Classified {
    intent: Intent,
    intent_json: String,
    /// The contact's [`RecentContacts`] key and the conversation.
    conversation: Option<(Hash, String)>,
}

/// The rules' intent and the conversation of a message about to be stored:
/// the contact's latest conversation while its last message is within the
/// session TTL (a sliding window), else a new one. Messages are applied in
/// arrival order, so "latest" is the one before this message.
fn classify_for_insert(
    last_conversation: &mut rusqlite::CachedStatement<'_>,
    ic: &InlineClassify,
    recent: &RecentContacts,
    source: &str,
    m: &super::record::Row,
    at: Millis,
) -> Result<Classified, rusqlite::Error> {
    let intent = (ic.classify)(m.text.as_deref());
    let intent_json = serde_json::to_string(&intent).unwrap_or_default();
    let conversation = match &m.contact {
        None => None,
        Some(contact) => {
            // `recent` has every message stored before this one, this
            // transaction's too; where it cannot say, the read sees them.
            let key = recent.key(source, contact);
            let last = match recent.last(key, at) {
                // Certainly no message within the TTL: a new conversation.
                Last::None => None,
                Last::Known(id, last_at) => Some((id, last_at)),
                Last::Unknown => {
                    metrics::counter!("inlet_conversation_lookups_total").increment(1);
                    super::queries::last_conversation_with(last_conversation, source, contact)?
                }
            };
            let conversation = match last {
                Some((id, last_at)) if (at - last_at).abs() <= ic.session_ttl_ms => id,
                _ => ConversationId::generate().to_string(),
            };
            Some((key, conversation))
        }
    };
    Ok(Classified {
        intent,
        intent_json,
        conversation,
    })
}

/// The rest of an inline classification once the row is stored: the
/// opt-out registry and the source's actions. The `classify` job, done,
/// and its attempt are not rows: the message's `inline_classified_at`
/// stands for them (two rows and two index entries fewer a message, a
/// fifth of this thread's time at full load; BENCHMARKS.md), and
/// `queries::get_message` and [`replay`] read it so. Returns how many jobs
/// were enqueued.
fn record_inline_classify(
    c: &Connection,
    ic: &InlineClassify,
    source: &str,
    message_id: &str,
    k: &Classified,
    now: Millis,
) -> Result<usize, rusqlite::Error> {
    record_opt_state(c, message_id, &k.intent, now)?;
    let actions = ic.follow_ups.get(source).map(Vec::as_slice).unwrap_or(&[]);
    enqueue_follow_ups(c, message_id, actions, now)
}

fn insert_event(
    c: &Connection,
    source: &str,
    e: &EventRow,
    now: Millis,
) -> Result<(), rusqlite::Error> {
    let mut stmt = c.prepare_cached(
        "INSERT INTO events (id, source, kind, external_id, at, payload) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
    )?;
    stmt.execute(params![
        EventId::generate().as_str(),
        source,
        e.kind,
        e.external_id,
        now,
        e.payload
    ])?;
    Ok(())
}

/// The journal position SQLite has applied up to.
pub(super) fn applied_position(c: &Connection) -> Result<u64, rusqlite::Error> {
    c.query_row("SELECT applied FROM journal_state WHERE id = 1", [], |r| {
        r.get::<_, i64>(0)
    })
    .map(|p| p as u64)
}

/// Leases due jobs: those whose lease ran out (their worker died or hung)
/// first, then pending ones whose time has come, earliest first, lane by
/// lane. Returns the jobs and how many were not leased before (for the
/// gauges).
fn claim(
    c: &Connection,
    (leases, undo): (&Leases, &mut Vec<Undo>),
    lanes: &[Lane],
    limit: usize,
    lease_ms: i64,
    now: Millis,
) -> Result<(Vec<RawClaim>, usize), rusqlite::Error> {
    let mut picked: Vec<(i64, bool)> = leases
        .expired(now, limit)
        .into_iter()
        .map(|id| (id, false))
        .collect();
    let room = limit.saturating_sub(picked.len());
    let held = leases.ids();
    let mut candidates = Vec::new();
    for lane in lanes.iter().filter(|l| l.limit > 0 && room > 0) {
        candidates.extend(super::queries::unleased_due(
            c,
            lane,
            now,
            lane.limit.min(room),
            &held,
        )?);
    }
    candidates.sort_unstable();
    picked.extend(candidates.into_iter().take(room).map(|(_, id)| (id, true)));
    let mut job = c.prepare_cached(
        "SELECT message_id, source, action, attempts FROM jobs WHERE id = ?1 AND status = 'pending'",
    )?;
    let mut load = c.prepare_cached(&format!(
        "SELECT {} FROM messages m WHERE m.id = ?1",
        super::queries::DOC_COLUMNS
    ))?;
    let mut jobs = Vec::with_capacity(picked.len());
    let mut from_pending = 0;
    for (id, new) in picked {
        let row: Option<(String, String, String, u32)> = job
            .query_row(params![id], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
            })
            .optional()?;
        let Some((message_id, source, action, attempts)) = row else {
            // An expired lease on a job pruned or replayed since: drop it.
            if let Some(u) = leases.release(id) {
                undo.push(u);
            }
            continue;
        };
        undo.push(leases.grant(id, now + lease_ms));
        if new {
            from_pending += 1;
        }
        let doc = load
            .query_row(params![message_id], |r| {
                super::queries::DocColumns::read(r, 0)
            })
            .optional()?;
        jobs.push(RawClaim {
            job_id: id,
            message_id,
            source,
            action,
            attempts,
            doc,
        });
    }
    Ok((jobs, from_pending))
}

/// Records the attempt and moves the job on, all at once, so a crash never
/// leaves an attempt without its outcome or the reverse. Returns how many
/// follow-up jobs were enqueued, or `None` when the job was no longer
/// leased (already completed by a twin whose lease had run out).
fn complete(
    c: &Connection,
    (leases, undo): (&Leases, &mut Vec<Undo>),
    done: &JobCompletion,
) -> Result<Option<usize>, rusqlite::Error> {
    let Some(released) = leases.release(done.job_id) else {
        return Ok(None);
    };
    undo.push(released);
    let (status, run_at, error, charge) = match &done.next {
        JobNext::Done => ("done", done.now, None, 1),
        JobNext::Retry { at } => (
            "pending",
            *at,
            done.attempt.as_ref().and_then(|a| a.error.clone()),
            1,
        ),
        JobNext::Defer { at } => ("pending", *at, None, 0),
        JobNext::Dead { error } => ("dead", done.now, Some(error.clone()), 1),
    };
    let changed = c
        .prepare_cached(
            "UPDATE jobs SET status = ?2, run_at = ?3, last_error = COALESCE(?4, last_error),
                 attempts = attempts + ?5, lease_until = NULL, updated_at = ?6
             WHERE id = ?1 AND status = 'pending'",
        )?
        .execute(params![
            done.job_id,
            status,
            run_at,
            error,
            charge,
            done.now
        ])?;
    if changed == 0 {
        return Ok(None);
    }
    if let Some(a) = &done.attempt {
        record_attempt(c, done.job_id, &done.message_id, a, done.now)?;
    }
    if done.set_intent.is_some() || done.set_conversation.is_some() {
        // One row rewrite for both: each UPDATE rewrites the whole row, raw
        // payload included.
        let intent = done.set_intent.as_ref();
        c.prepare_cached(
            "UPDATE messages SET intent = COALESCE(?2, intent), intent_label = COALESCE(?3, intent_label),
                 conversation_id = COALESCE(?4, conversation_id) WHERE id = ?1",
        )?
        .execute(params![
            done.message_id,
            intent.map(|i| serde_json::to_string(i).unwrap_or_default()),
            intent.map(|i| i.label.as_str()),
            done.set_conversation
        ])?;
    }
    if let Some(intent) = &done.set_intent {
        record_opt_state(c, &done.message_id, intent, done.now)?;
    }
    let mut inserted = 0;
    if matches!(done.next, JobNext::Done) {
        inserted = enqueue_follow_ups(c, &done.message_id, &done.follow_ups, done.now)?;
    }
    Ok(Some(inserted))
}

/// Updates the opt-out registry when `intent` opts the message's contact
/// out or back in. Newer arrivals win, whatever order classification ran in.
fn record_opt_state(
    c: &Connection,
    message_id: &str,
    intent: &Intent,
    now: Millis,
) -> Result<(), rusqlite::Error> {
    if intent.label != "opt_out" && intent.label != "opt_in" {
        return Ok(());
    }
    c.prepare_cached(
        "INSERT INTO opt_outs (source, contact, opted_out, message_id, updated_at)
         SELECT source, contact, ?2, id, ?3 FROM messages WHERE id = ?1 AND contact IS NOT NULL
         ON CONFLICT (source, contact) DO UPDATE
           SET opted_out = excluded.opted_out, message_id = excluded.message_id,
               updated_at = excluded.updated_at
           WHERE excluded.message_id > opt_outs.message_id",
    )?
    .execute(params![message_id, intent.label == "opt_out", now])?;
    Ok(())
}

/// Enqueues `actions` for a classified message; returns how many were new.
/// Guarded so a re-run classify (replay) never doubles the actions.
fn enqueue_follow_ups(
    c: &Connection,
    message_id: &str,
    actions: &[String],
    now: Millis,
) -> Result<usize, rusqlite::Error> {
    if actions.is_empty() {
        return Ok(0);
    }
    let mut job = c.prepare_cached(
        "INSERT INTO jobs (message_id, source, action, status, run_at, updated_at)
         SELECT id, source, ?2, 'pending', ?3, ?3 FROM messages WHERE id = ?1
           AND NOT EXISTS (SELECT 1 FROM jobs WHERE message_id = ?1 AND action = ?2)",
    )?;
    let mut inserted = 0;
    for action in actions {
        inserted += job.execute(params![message_id, action, now])?;
    }
    Ok(inserted)
}

const INSERT_ATTEMPT: &str = "INSERT INTO attempts
    (job_id, message_id, action, destination, outcome, status_code, duration_ms, error, at)
    VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)";

fn record_attempt(
    c: &Connection,
    job_id: i64,
    message_id: &str,
    a: &AttemptRecord,
    now: Millis,
) -> Result<(), rusqlite::Error> {
    c.prepare_cached(INSERT_ATTEMPT)?.execute(params![
        job_id,
        message_id,
        a.action,
        a.destination,
        a.outcome,
        a.status_code,
        a.duration_ms as i64,
        a.error,
        now
    ])?;
    Ok(())
}

fn reject(c: &Connection, r: &Rejection, now: Millis) -> Result<(), rusqlite::Error> {
    c.prepare_cached(
        "INSERT INTO rejections (at, at_ms, source, status, code, headers, body) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
    )?
    .execute(params![
        r.at,
        now,
        r.source,
        r.status,
        r.code,
        serde_json::Value::Object(r.headers.clone()).to_string(),
        r.body
    ])?;
    Ok(())
}

pub(super) fn prune(
    c: &Connection,
    dedup_cutoff: Millis,
    retention_cutoff: Millis,
    max_rejections: u64,
) -> Result<(), rusqlite::Error> {
    // The log is in `seen_at` order: everything before its first key
    // still within the window goes (found by reading only what goes).
    c.execute(
        "DELETE FROM dedup_keys WHERE id < coalesce(
           (SELECT id FROM dedup_keys WHERE seen_at >= ?1 ORDER BY id LIMIT 1),
           (SELECT max(id) + 1 FROM dedup_keys))",
        params![dedup_cutoff],
    )?;
    // Ids are time-ordered (see `message_id_floor`), so the primary key and
    // the message_id indexes serve these ranges.
    let floor = super::super::message_id_floor(retention_cutoff);
    c.execute("DELETE FROM attempts WHERE message_id < ?1", params![floor])?;
    c.execute("DELETE FROM jobs WHERE message_id < ?1", params![floor])?;
    c.execute(
        "DELETE FROM reply_sends WHERE message_id < ?1",
        params![floor],
    )?;
    c.execute("DELETE FROM messages WHERE id < ?1", params![floor])?;
    c.execute(
        "DELETE FROM events WHERE at < ?1",
        params![retention_cutoff],
    )?;
    c.execute(
        "DELETE FROM rejections WHERE at_ms < ?1",
        params![retention_cutoff],
    )?;
    c.execute(
        "DELETE FROM rejections WHERE id <= (SELECT MAX(id) FROM rejections) - ?1",
        params![max_rejections as i64],
    )?;
    Ok(())
}

/// Puts jobs back to pending; returns (jobs requeued, of which were dead).
pub(super) fn replay(
    c: &Connection,
    message_id: Option<&str>,
    only_failed: bool,
    source: Option<&str>,
    action: Option<&str>,
    now: Millis,
) -> Result<(usize, usize), rusqlite::Error> {
    let filter = "(?1 IS NULL OR message_id = ?1) AND (?2 IS NULL OR source = ?2) AND (?3 IS NULL OR action = ?3)";
    let statuses = if only_failed {
        "('dead')"
    } else {
        "('dead', 'done')"
    };
    let dead: i64 = c.query_row(
        &format!("SELECT COUNT(*) FROM jobs WHERE {filter} AND status = 'dead'"),
        params![message_id, source, action],
        |r| r.get(0),
    )?;
    let mut n = c.execute(
        &format!(
            "UPDATE jobs SET status = 'pending', attempts = 0, run_at = ?4, last_error = NULL, updated_at = ?4
             WHERE {filter} AND status IN {statuses}"
        ),
        params![message_id, source, action, now],
    )?;
    if !only_failed && action.is_none_or(|a| a == CLASSIFY) {
        // A message classified as it was stored has no `classify` row to
        // put back (see `record_inline_classify`): its replay gets one.
        n += c
            .prepare_cached(
                "INSERT INTO jobs (message_id, source, action, status, run_at, updated_at)
                 SELECT m.id, m.source, ?4, 'pending', ?3, ?3 FROM messages m
                 WHERE m.id = ?1 AND (?2 IS NULL OR m.source = ?2)
                   AND m.inline_classified_at IS NOT NULL
                   AND NOT EXISTS (SELECT 1 FROM jobs j WHERE j.message_id = m.id AND j.action = ?4)",
            )?
            .execute(params![message_id, source, now, CLASSIFY])?;
    }
    Ok((n, dead as usize))
}

/// Queue counts, each on its partial index. The statuses are literals on
/// purpose: with a bound `status = ?` SQLite cannot tell that a partial
/// index applies and scans every job ever run (hundreds of ms on a large
/// store, once a minute, on the writer thread).
pub(super) const COUNT_PENDING: &str = "SELECT COUNT(*) FROM jobs WHERE status = 'pending'";
pub(super) const COUNT_DEAD: &str = "SELECT COUNT(*) FROM jobs WHERE status = 'dead'";

/// The queue by status; `leased` jobs are counted in flight, not pending.
pub(super) fn count_queue(c: &Connection, leased: usize) -> Result<QueueCounts, rusqlite::Error> {
    let count = |sql: &str| -> Result<i64, rusqlite::Error> {
        c.prepare_cached(sql)?.query_row([], |r| r.get(0))
    };
    let leased = leased as i64;
    Ok(QueueCounts {
        pending: (count(COUNT_PENDING)? - leased).max(0),
        in_flight: leased,
        dead: count(COUNT_DEAD)?,
    })
}

fn begin_reply(
    c: &Connection,
    message_id: &str,
    action: &str,
    now: Millis,
) -> Result<ReplyClaim, rusqlite::Error> {
    let state: Option<String> = c
        .prepare_cached("SELECT state FROM reply_sends WHERE message_id = ?1 AND action = ?2")?
        .query_row(params![message_id, action], |r| r.get(0))
        .optional()?;
    match state.as_deref() {
        Some("sent") => Ok(ReplyClaim::AlreadySent),
        Some("sending") | Some("unknown") => Ok(ReplyClaim::Unknown),
        _ => {
            c.prepare_cached(
                "INSERT INTO reply_sends (message_id, action, state, updated_at) VALUES (?1, ?2, 'sending', ?3)
                 ON CONFLICT (message_id, action) DO UPDATE SET state = 'sending', updated_at = ?3",
            )?
            .execute(params![message_id, action, now])?;
            Ok(ReplyClaim::Proceed)
        }
    }
}

fn finish_reply(
    c: &Connection,
    message_id: &str,
    action: &str,
    result: ReplyResult,
    detail: Option<&str>,
    now: Millis,
) -> Result<(), rusqlite::Error> {
    let state = match result {
        ReplyResult::Sent => "sent",
        ReplyResult::Failed => "failed",
        ReplyResult::Unknown => "unknown",
    };
    c.prepare_cached("UPDATE reply_sends SET state = ?3, detail = ?4, updated_at = ?5 WHERE message_id = ?1 AND action = ?2")?
        .execute(params![message_id, action, state, detail, now])?;
    Ok(())
}

/// Jobs of actions that are no longer configured would never be claimed
/// (claims go by lane): make them dead letters, with the reason.
fn fail_orphans(c: &Connection, lanes: &[Lane], now: Millis) -> Result<usize, rusqlite::Error> {
    let known: Vec<String> = lanes
        .iter()
        .map(|l| format!("{}\u{1f}{}", l.source, l.action))
        .collect();
    let known = serde_json::to_string(&known).unwrap_or_else(|_| "[]".into());
    c.execute(
        "UPDATE jobs SET status = 'dead', lease_until = NULL, updated_at = ?2,
             last_error = 'action ' || action || ' is not configured for source ' || source
         WHERE status IN ('pending', 'running')
           AND (source || char(31) || action) NOT IN (SELECT value FROM json_each(?1))",
        params![known, now],
    )
}
