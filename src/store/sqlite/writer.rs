//! The single SQLite writer and its group commit.
//!
//! One OS thread owns the write connection. Callers send an [`Op`] with a
//! oneshot reply; the thread takes the first op, drains whatever else is
//! queued (up to [`MAX_BATCH`]), runs them all in one `BEGIN IMMEDIATE`
//! transaction, each inside its own savepoint so one failing op does not
//! sink the others, commits once (one WAL fsync with `synchronous=FULL`),
//! and only then answers every caller. While one batch is fsyncing, the
//! next one queues up, so the fsync cost is shared by every request that
//! arrived meanwhile.

use std::sync::Arc;

use rusqlite::{Connection, OptionalExtension, params};
use tokio::sync::{Notify, mpsc, oneshot};

use super::super::{
    AttemptRecord, CLASSIFY, ClaimedJob, IngestBatch, IngestOutcome, JobCompletion, JobNext, Lane,
    Millis, QueueCounts, QueueGauges, Rejection, ReplyClaim, ReplyResult, StoreError,
};
use crate::domain::{EventId, InboundEvent};

/// Ops per transaction at most; bounds the latency one batch adds.
const MAX_BATCH: usize = 512;

pub type Reply<T> = oneshot::Sender<Result<T, StoreError>>;

pub enum Op {
    Ingest(IngestBatch, Reply<IngestOutcome>),
    Claim {
        lanes: Vec<Lane>,
        limit: usize,
        lease_ms: i64,
        now: Millis,
        reply: Reply<Vec<ClaimedJob>>,
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

/// An executed op whose answer waits for the commit.
enum Done {
    Ingest(Reply<IngestOutcome>, Result<IngestOutcome, StoreError>),
    Claim(Reply<Vec<ClaimedJob>>, Result<Vec<ClaimedJob>, StoreError>),
    Unit(Reply<()>, Result<(), StoreError>),
    Count(Reply<usize>, Result<usize, StoreError>),
    ReplyClaim(Reply<ReplyClaim>, Result<ReplyClaim, StoreError>),
}

impl Done {
    fn fail(self, e: &StoreError) {
        let err = || StoreError::Unavailable(e.to_string());
        match self {
            Done::Ingest(tx, _) => drop(tx.send(Err(err()))),
            Done::Claim(tx, _) => drop(tx.send(Err(err()))),
            Done::Unit(tx, _) => drop(tx.send(Err(err()))),
            Done::Count(tx, _) => drop(tx.send(Err(err()))),
            Done::ReplyClaim(tx, _) => drop(tx.send(Err(err()))),
        }
    }
    fn send(self) {
        match self {
            Done::Ingest(tx, r) => drop(tx.send(r)),
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

impl Writer {
    pub fn new(conn: Connection, gauges: Arc<QueueGauges>, work: Arc<Notify>) -> Self {
        Self { conn, gauges, work }
    }

    /// Runs until every sender is dropped.
    pub fn run(mut self, mut rx: mpsc::Receiver<Op>) {
        let mut ops = Vec::with_capacity(MAX_BATCH);
        // No linger: a batch is whatever queued while the previous commit
        // ran. Waiting for company was measured (BENCHMARKS.md) and only
        // added latency.
        while let Some(first) = rx.blocking_recv() {
            ops.push(first);
            while ops.len() < MAX_BATCH {
                match rx.try_recv() {
                    Ok(op) => ops.push(op),
                    Err(_) => break,
                }
            }
            self.run_batch(&mut ops);
        }
    }

    fn run_batch(&mut self, ops: &mut Vec<Op>) {
        let started = std::time::Instant::now();
        let n = ops.len();
        if let Err(e) = self.conn.execute_batch("BEGIN IMMEDIATE").map_err(map_err) {
            tracing::warn!(error = %e, ops = n, "Store cannot begin a transaction.");
            for op in ops.drain(..) {
                fail_op(op, &e);
            }
            return;
        }
        let mut done = Vec::with_capacity(n);
        let mut delta = QueueCounts::default();
        let mut wake = false;
        let mut recount = false;
        for op in ops.drain(..) {
            done.push(self.execute(op, &mut delta, &mut wake, &mut recount));
        }
        let counts = if recount {
            count_queue(&self.conn).ok()
        } else {
            None
        };
        match self.conn.execute_batch("COMMIT").map_err(map_err) {
            Ok(()) => {
                match counts {
                    Some(c) => self.gauges.set(c),
                    None => self.gauges.add(delta),
                }
                if wake {
                    self.work.notify_one();
                }
                metrics::histogram!("inlet_stage_seconds", "stage" => "commit")
                    .record(started.elapsed().as_secs_f64());
                metrics::histogram!("inlet_commit_batch_ops").record(n as f64);
                for d in done {
                    d.send();
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, ops = n, "Store commit failed.");
                let _ = self.conn.execute_batch("ROLLBACK");
                for d in done {
                    d.fail(&e);
                }
            }
        }
    }

    /// Runs one op inside a savepoint so its failure rolls back only itself.
    fn execute(
        &mut self,
        op: Op,
        delta: &mut QueueCounts,
        wake: &mut bool,
        recount: &mut bool,
    ) -> Done {
        fn guarded<T>(
            conn: &mut Connection,
            f: impl FnOnce(&Connection) -> Result<T, rusqlite::Error>,
        ) -> Result<T, StoreError> {
            // Cached statements: parsing these anew per op showed in profiles.
            conn.prepare_cached("SAVEPOINT op")
                .and_then(|mut s| s.execute([]))
                .map_err(map_err)?;
            match f(conn) {
                Ok(v) => {
                    conn.prepare_cached("RELEASE op")
                        .and_then(|mut s| s.execute([]))
                        .map_err(map_err)?;
                    Ok(v)
                }
                Err(e) => {
                    let _ = conn.execute_batch("ROLLBACK TO op; RELEASE op");
                    Err(map_err(e))
                }
            }
        }
        match op {
            Op::Ingest(batch, tx) => {
                let r = guarded(&mut self.conn, |c| ingest(c, &batch));
                if let Ok(o) = &r {
                    delta.pending += o.accepted as i64;
                    *wake |= o.accepted > 0;
                }
                Done::Ingest(tx, r)
            }
            Op::Claim {
                lanes,
                limit,
                lease_ms,
                now,
                reply,
            } => {
                let r = guarded(&mut self.conn, |c| claim(c, &lanes, limit, lease_ms, now));
                if let Ok((jobs, from_pending)) = &r {
                    delta.pending -= *from_pending as i64;
                    delta.in_flight += *from_pending as i64;
                    let _ = jobs;
                }
                Done::Claim(reply, r.map(|(jobs, _)| jobs))
            }
            Op::Complete(c, tx) => {
                let r = guarded(&mut self.conn, |conn| complete(conn, &c));
                if let Ok(Some(inserted)) = &r {
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
                Done::Unit(tx, r.map(|_| ()))
            }
            Op::Reject(rej, now, tx) => {
                let r = guarded(&mut self.conn, |c| reject(c, &rej, now));
                Done::Unit(tx, r)
            }
            Op::Prune {
                dedup_cutoff,
                retention_cutoff,
                max_rejections,
                reply,
            } => {
                let r = guarded(&mut self.conn, |c| {
                    prune(c, dedup_cutoff, retention_cutoff, max_rejections)
                });
                // Re-base the gauges on the truth once per prune, so any
                // drift (a worker that died, a lease that ran out) heals.
                *recount |= r.is_ok();
                Done::Unit(reply, r)
            }
            Op::Replay {
                message_id,
                only_failed,
                source,
                action,
                now,
                reply,
            } => {
                let r = guarded(&mut self.conn, |c| {
                    replay(
                        c,
                        message_id.as_deref(),
                        only_failed,
                        source.as_deref(),
                        action.as_deref(),
                        now,
                    )
                });
                if let Ok((n, from_dead)) = &r {
                    delta.pending += *n as i64;
                    delta.dead -= *from_dead as i64;
                    *wake |= *n > 0;
                }
                Done::Count(reply, r.map(|(n, _)| n))
            }
            Op::Probe(tx) => Done::Unit(tx, Ok(())),
            Op::FailOrphans { lanes, now, reply } => {
                let r = guarded(&mut self.conn, |c| fail_orphans(c, &lanes, now));
                *recount |= r.is_ok();
                Done::Count(reply, r)
            }
            Op::BeginReply {
                message_id,
                action,
                now,
                reply,
            } => {
                let r = guarded(&mut self.conn, |c| {
                    begin_reply(c, &message_id, &action, now)
                });
                Done::ReplyClaim(reply, r)
            }
            Op::FinishReply {
                message_id,
                action,
                result,
                detail,
                now,
                reply,
            } => {
                let r = guarded(&mut self.conn, |c| {
                    finish_reply(c, &message_id, &action, result, detail.as_deref(), now)
                });
                Done::Unit(reply, r)
            }
        }
    }
}

fn fail_op(op: Op, e: &StoreError) {
    let err = || StoreError::Unavailable(e.to_string());
    match op {
        Op::Ingest(_, tx) => drop(tx.send(Err(err()))),
        Op::Claim { reply, .. } => drop(reply.send(Err(err()))),
        Op::Complete(_, tx) => drop(tx.send(Err(err()))),
        Op::Reject(_, _, tx) => drop(tx.send(Err(err()))),
        Op::Prune { reply, .. } => drop(reply.send(Err(err()))),
        Op::Replay { reply, .. } => drop(reply.send(Err(err()))),
        Op::Probe(tx) => drop(tx.send(Err(err()))),
        Op::FailOrphans { reply, .. } => drop(reply.send(Err(err()))),
        Op::BeginReply { reply, .. } => drop(reply.send(Err(err()))),
        Op::FinishReply { reply, .. } => drop(reply.send(Err(err()))),
    }
}

/// Dedup is decided here, inside the commit: a key is new when no row
/// exists or its row is older than the window (then it is taken over).
fn ingest(c: &Connection, b: &IngestBatch) -> Result<IngestOutcome, rusqlite::Error> {
    let mut out = IngestOutcome::default();
    let mut dedup = c.prepare_cached(
        "INSERT INTO dedup (source, key, message_id, seen_at) VALUES (?1, ?2, ?3, ?4)
         ON CONFLICT (source, key) DO UPDATE
           SET message_id = excluded.message_id, seen_at = excluded.seen_at
           WHERE dedup.seen_at < ?5",
    )?;
    let mut msg = c.prepare_cached(
        "INSERT INTO messages (id, source, external_id, contact, received_at, doc)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
    )?;
    let mut job = c.prepare_cached(
        "INSERT INTO jobs (message_id, source, action, status, run_at, updated_at)
         VALUES (?1, ?2, ?3, 'pending', ?4, ?4)",
    )?;
    for (i, m) in b.messages.iter().enumerate() {
        let id = m.id.as_str();
        if dedup.execute(params![b.source, m.dedup_key, id, b.now, b.dedup_cutoff])? == 0 {
            out.duplicates += 1;
            continue;
        }
        let doc = &b.docs[i];
        msg.execute(params![
            id,
            b.source,
            m.external_id,
            m.from.as_ref().map(|p| p.as_str()),
            b.now,
            doc
        ])?;
        job.execute(params![id, b.source, CLASSIFY, b.now])?;
        out.accepted += 1;
        out.accepted_ids.push(id.to_string());
    }
    for e in &b.events {
        insert_event(c, &b.source, e, b.now)?;
    }
    Ok(out)
}

fn insert_event(
    c: &Connection,
    source: &str,
    e: &InboundEvent,
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
        e.payload.to_string()
    ])?;
    Ok(())
}

/// Leases due jobs: pending ones whose time has come, and running ones
/// whose lease ran out (their worker died). Returns the jobs and how many
/// came from `pending` (for the gauges).
fn claim(
    c: &Connection,
    lanes: &[Lane],
    limit: usize,
    lease_ms: i64,
    now: Millis,
) -> Result<(Vec<ClaimedJob>, usize), rusqlite::Error> {
    // Index-friendly queries only (an OR across statuses, or a lane filter
    // that is not an index prefix, makes SQLite scan every job ever run):
    // expired leases first, then each lane on `jobs_lane`, earliest first.
    let mut expired = c.prepare_cached(
        "SELECT id, status, run_at FROM jobs WHERE status = 'running' AND lease_until <= ?1 LIMIT ?2",
    )?;
    let mut picked: Vec<(i64, String, i64)> = expired
        .query_map(params![now, limit as i64], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?))
        })?
        .collect::<Result<_, _>>()?;
    let mut due = c.prepare_cached(
        "SELECT id, status, run_at FROM jobs
         WHERE status = 'pending' AND source = ?1 AND action = ?2 AND run_at <= ?3
         ORDER BY run_at LIMIT ?4",
    )?;
    let room = limit.saturating_sub(picked.len());
    let mut candidates = Vec::new();
    for lane in lanes.iter().filter(|l| l.limit > 0) {
        let n = lane.limit.min(room) as i64;
        candidates.extend(
            due.query_map(params![lane.source, lane.action, now, n], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?))
            })?
            .collect::<Result<Vec<(i64, String, i64)>, _>>()?,
        );
    }
    candidates.sort_by_key(|(id, _, run_at)| (*run_at, *id));
    picked.extend(candidates.into_iter().take(room));
    let mut lease = c.prepare_cached(
        "UPDATE jobs SET status = 'running', lease_until = ?2, updated_at = ?3 WHERE id = ?1
         RETURNING message_id, source, action, attempts",
    )?;
    let mut load =
        c.prepare_cached("SELECT doc, intent, conversation_id FROM messages WHERE id = ?1")?;
    let mut jobs = Vec::with_capacity(picked.len());
    let mut from_pending = 0;
    for (id, status, _) in picked {
        if status == "pending" {
            from_pending += 1;
        }
        let (message_id, source, action, attempts): (String, String, String, u32) = lease
            .query_row(params![id, now + lease_ms, now], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
            })?;
        let message = load
            .query_row(params![message_id], |r| {
                Ok(super::queries::message_doc(r.get(0)?, r.get(1)?, r.get(2)?))
            })
            .optional()?
            .unwrap_or(serde_json::Value::Null);
        jobs.push(ClaimedJob {
            job_id: id,
            message_id,
            source,
            action,
            attempts,
            message,
        });
    }
    Ok((jobs, from_pending))
}

/// Records the attempt and moves the job on, all at once, so a crash never
/// leaves an attempt without its outcome or the reverse. Returns how many
/// follow-up jobs were enqueued, or `None` when the job was no longer
/// leased (already completed by a twin whose lease had run out).
fn complete(c: &Connection, done: &JobCompletion) -> Result<Option<usize>, rusqlite::Error> {
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
             WHERE id = ?1 AND status = 'running'",
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
    if let Some(intent) = &done.set_intent
        && (intent.label == "opt_out" || intent.label == "opt_in")
    {
        // Newer arrivals win, whatever order classification ran in.
        c.prepare_cached(
            "INSERT INTO opt_outs (source, contact, opted_out, message_id, updated_at)
             SELECT source, contact, ?2, id, ?3 FROM messages WHERE id = ?1 AND contact IS NOT NULL
             ON CONFLICT (source, contact) DO UPDATE
               SET opted_out = excluded.opted_out, message_id = excluded.message_id,
                   updated_at = excluded.updated_at
               WHERE excluded.message_id > opt_outs.message_id",
        )?
        .execute(params![
            done.message_id,
            intent.label == "opt_out",
            done.now
        ])?;
    }
    let mut inserted = 0;
    if matches!(done.next, JobNext::Done) {
        // Guarded so a re-run classify (replay) never doubles the actions.
        let mut job = c.prepare_cached(
            "INSERT INTO jobs (message_id, source, action, status, run_at, updated_at)
             SELECT id, source, ?2, 'pending', ?3, ?3 FROM messages WHERE id = ?1
               AND NOT EXISTS (SELECT 1 FROM jobs WHERE message_id = ?1 AND action = ?2)",
        )?;
        for action in &done.follow_ups {
            inserted += job.execute(params![done.message_id, action, done.now])?;
        }
    }
    Ok(Some(inserted))
}

fn record_attempt(
    c: &Connection,
    job_id: i64,
    message_id: &str,
    a: &AttemptRecord,
    now: Millis,
) -> Result<(), rusqlite::Error> {
    c.prepare_cached(
        "INSERT INTO attempts (job_id, message_id, action, destination, outcome, status_code, duration_ms, error, at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
    )?
    .execute(params![
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

fn prune(
    c: &Connection,
    dedup_cutoff: Millis,
    retention_cutoff: Millis,
    max_rejections: u64,
) -> Result<(), rusqlite::Error> {
    c.execute(
        "DELETE FROM dedup WHERE seen_at < ?1",
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
fn replay(
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
    let n = c.execute(
        &format!(
            "UPDATE jobs SET status = 'pending', attempts = 0, run_at = ?4, last_error = NULL, updated_at = ?4
             WHERE {filter} AND status IN {statuses}"
        ),
        params![message_id, source, action, now],
    )?;
    Ok((n, dead as usize))
}

pub(super) fn count_queue(c: &Connection) -> Result<QueueCounts, rusqlite::Error> {
    let count = |status: &str| -> Result<i64, rusqlite::Error> {
        c.query_row(
            "SELECT COUNT(*) FROM jobs WHERE status = ?1",
            [status],
            |r| r.get(0),
        )
    };
    Ok(QueueCounts {
        pending: count("pending")?,
        in_flight: count("running")?,
        dead: count("dead")?,
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
