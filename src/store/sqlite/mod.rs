//! The embedded store. Ingest is acknowledged from an append-only journal
//! next to the database ([`journal`], [`ingest`]: dedup in memory
//! ([`dedup`]), one append and one `fdatasync` per group of requests);
//! the records are then stored in one SQLite file in WAL mode by a single
//! writer thread that group-commits ([`writer`]), with a sync thread that
//! makes each commit durable before anyone hears of it ([`syncer`]), job
//! leases in memory ([`leases`]), and a read connection for the admin API
//! ([`queries`]).
//!
//! SQLite serves one process: a lock file next to the database keeps a
//! second `inlet` off it. That is what lets leases live in memory, and why,
//! at open, jobs an older version left `running` are released at once.

mod dedup;
mod ingest;
mod journal;
mod leases;
mod pacing;
mod queries;
mod recent;
mod record;
mod syncer;
mod trickle;
mod writer;

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use rusqlite::Connection;
use serde_json::Value;
use tokio::sync::{Notify, mpsc, oneshot};

use super::{
    ClaimedJob, IngestBatch, IngestOutcome, InlineClassify, JobCompletion, Lane, ListQuery, Millis,
    OptState, Page, QueueGauges, Rejection, ReplyClaim, ReplyResult, Store, StoreError, now_millis,
};
use dedup::DedupIndex;
use ingest::{Applier, IngestReply, Journal, Prepared, Progress};
use journal::{JournalReader, JournalWriter};
use leases::Leases;
use syncer::Syncer;
use writer::{Op, Writer, map_err};

/// How many ops may wait for the writer; senders wait beyond that
/// (back-pressure instead of unbounded memory).
const QUEUE_DEPTH: usize = 16 * 1024;

pub struct SqliteStore {
    /// The journal thread: every ingest goes there.
    journal: mpsc::Sender<(Prepared, IngestReply)>,
    progress: Arc<Progress>,
    tx: mpsc::Sender<Op>,
    reader: Arc<Mutex<Connection>>,
    gauges: Arc<QueueGauges>,
    work: Arc<Notify>,
    /// Jobs handed to workers (see [`leases`]).
    leases: Arc<Leases>,
    /// `fdatasync` calls on the WAL so far.
    fsyncs: Arc<AtomicU64>,
    /// Whether the writer and checkpointer pause, and how often they
    /// have (see [`pacing`]).
    pacing: Arc<pacing::Pacing>,
    max_rejections: u64,
    path: PathBuf,
    /// The checkpoint thread runs while this lives.
    _alive: Arc<()>,
    _lock: File,
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore")
            .field("path", &self.path)
            .finish()
    }
}

fn open_conn(path: &Path, busy_timeout: Duration) -> Result<Connection, rusqlite::Error> {
    pacing::install();
    let conn = Connection::open(path)?;
    conn.busy_timeout(busy_timeout)?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    // FULL for whatever commits or checkpoints on its own. The writer
    // turns it down to NORMAL once its sync thread runs (see `syncer`).
    conn.pragma_update(None, "synchronous", "FULL")?;
    conn.pragma_update(None, "foreign_keys", "OFF")?;
    // Savepoint journals in memory: a savepoint per op must not mean a
    // temp-file write per op.
    conn.pragma_update(None, "temp_store", "MEMORY")?;
    // The writer alone keeps more distinct statements than the default 16.
    conn.set_prepared_statement_cache_capacity(64);
    // Query-planner stability: without it SQLite re-prepares a cached
    // statement whenever a value bound to `LIMIT ?` moves to or from 0/1
    // (the claim query's limit does), and re-preparing showed in profiles.
    conn.set_db_config(
        rusqlite::config::DbConfig::SQLITE_DBCONFIG_ENABLE_QPSG,
        true,
    )?;
    Ok(conn)
}

/// `store.max_backlog` when none is set.
pub const DEFAULT_MAX_BACKLOG: u64 = 1_000_000;

/// How long an admin read waits for SQLite to catch up with the journal.
const CATCH_UP_WAIT: Duration = Duration::from_secs(5);

/// Columns added after the first release, which `CREATE TABLE IF NOT
/// EXISTS` cannot add to an older file (`ADD COLUMN` is instant in SQLite).
fn add_missing_columns(c: &Connection) -> Result<(), rusqlite::Error> {
    const ADDED: &[(&str, &str, &str)] = &[("messages", "inline_classified_at", "INTEGER")];
    for (table, column, kind) in ADDED {
        let present = c
            .prepare("SELECT 1 FROM pragma_table_info(?1) WHERE name = ?2")?
            .exists([table, column])?;
        if !present {
            c.execute_batch(&format!("ALTER TABLE {table} ADD COLUMN {column} {kind}"))?;
        }
    }
    Ok(())
}

/// Moves an older file's `dedup` table (keyed by source and key) into the
/// `dedup_keys` log, oldest first, in one transaction, and drops it.
fn migrate_dedup(c: &Connection) -> Result<(), rusqlite::Error> {
    let old = c
        .prepare("SELECT 1 FROM sqlite_schema WHERE type = 'table' AND name = 'dedup'")?
        .exists([])?;
    if old {
        c.execute_batch(
            "BEGIN IMMEDIATE;
             INSERT INTO dedup_keys (source, key, seen_at)
               SELECT source, key, seen_at FROM dedup ORDER BY seen_at;
             DROP TABLE dedup;
             COMMIT;",
        )?;
    }
    Ok(())
}

/// Stores the journal's records past the applied position (a crash or stop
/// came before SQLite had them), in transactions of about a thousand
/// records, each synced (`conn` still runs `synchronous=FULL`). Returns
/// the journal's end and how many messages were stored.
fn replay(
    conn: &Connection,
    dir: &Path,
    mut inline: Option<(&InlineClassify, &mut recent::RecentContacts)>,
) -> Result<(u64, usize), StoreError> {
    let from = writer::applied_position(conn).map_err(map_err)?;
    let mut entries = Vec::new();
    let mut stored = 0;
    let mut flush = |entries: &mut Vec<record::Entry>, upto: u64| -> Result<(), StoreError> {
        let tx = conn.unchecked_transaction().map_err(map_err)?;
        let inline = inline.as_mut().map(|(ic, r)| (*ic, &mut **r));
        stored += writer::apply(&tx, entries, upto, inline)
            .map_err(map_err)?
            .stored;
        tx.commit().map_err(map_err)?;
        entries.clear();
        Ok(())
    };
    let invalid = |e| std::io::Error::new(std::io::ErrorKind::InvalidData, e);
    let end = journal::scan(dir, from, |rec| {
        entries.push(record::Entry::decode(rec.body).map_err(invalid)?);
        if entries.len() >= 1024 {
            flush(&mut entries, rec.end).map_err(std::io::Error::other)?;
        }
        Ok(())
    })
    .map_err(|e| {
        StoreError::Unavailable(format!(
            "cannot replay the journal in {}: {e}",
            dir.display()
        ))
    })?;
    if !entries.is_empty() {
        flush(&mut entries, end)?;
    }
    Ok((end, stored))
}

/// A text column borrowed from SQLite's row buffer: no allocation a key
/// while the index is rebuilt.
fn text<'r>(r: &'r rusqlite::Row<'_>, i: usize) -> Result<&'r str, StoreError> {
    r.get_ref(i)
        .and_then(|v| v.as_str().map_err(rusqlite::Error::from))
        .map_err(map_err)
}

/// The dedup keys SQLite holds, for the in-memory index.
fn load_dedup(conn: &Connection) -> Result<DedupIndex, StoreError> {
    let mut index = DedupIndex::builder();
    let mut stmt = conn
        .prepare("SELECT source, key, seen_at FROM dedup_keys")
        .map_err(map_err)?;
    let mut rows = stmt.query([]).map_err(map_err)?;
    while let Some(r) = rows.next().map_err(map_err)? {
        index.add(text(r, 0)?, text(r, 1)?, r.get(2).map_err(map_err)?);
    }
    Ok(index.finish())
}

/// How often the WAL is copied back into the database file.
const CHECKPOINT_EVERY: Duration = Duration::from_millis(250);

/// Copies committed WAL frames into the database in the background
/// (PASSIVE: never blocks the writer or readers), the writeback thread
/// passing meanwhile. Ends with the store.
fn checkpoint_loop(conn: Connection, alive: std::sync::Weak<()>, activity: &trickle::Activity) {
    while alive.upgrade().is_some() {
        std::thread::sleep(CHECKPOINT_EVERY);
        let _passing = activity.checkpoint();
        if let Err(e) = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(())) {
            tracing::debug!(error = %e, "WAL checkpoint skipped.");
        }
    }
}

impl SqliteStore {
    /// Opens (creating if needed) the database at `path`; messages get a
    /// queued `classify` job each.
    pub fn open(
        path: &Path,
        busy_timeout: Duration,
        max_rejections: u64,
    ) -> Result<Self, StoreError> {
        Self::open_with(path, busy_timeout, max_rejections, None)
    }

    /// [`SqliteStore::open`], classifying messages while storing them when
    /// `inline` is given (see [`InlineClassify`]), the journal's backlog
    /// from the last run included.
    pub fn open_with(
        path: &Path,
        busy_timeout: Duration,
        max_rejections: u64,
        inline: Option<InlineClassify>,
    ) -> Result<Self, StoreError> {
        let inline = inline.map(Arc::new);
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| {
                StoreError::Unavailable(format!("cannot create {}: {e}", dir.display()))
            })?;
        }
        let lock_path = path.with_extension("lock");
        let lock = File::create(&lock_path).map_err(|e| {
            StoreError::Unavailable(format!("cannot create {}: {e}", lock_path.display()))
        })?;
        lock.try_lock().map_err(|_| {
            StoreError::Unavailable(format!(
                "{} is in use by another inlet process (lock {} is held)",
                path.display(),
                lock_path.display()
            ))
        })?;

        let conn = open_conn(path, busy_timeout).map_err(map_err)?;
        conn.execute_batch(include_str!("schema.sql"))
            .map_err(map_err)?;
        add_missing_columns(&conn).map_err(map_err)?;
        migrate_dedup(&conn).map_err(map_err)?;
        // Most checkpointing runs on its own thread (`checkpoint_loop`), off
        // the commit path. The writer still checkpoints when the WAL passes
        // this many pages: only a checkpoint run between two of its own
        // transactions lets the WAL restart from the top under constant
        // writes, and by then the background pass has copied most frames.
        conn.pragma_update(None, "wal_autocheckpoint", 4000)
            .map_err(map_err)?;
        conn.pragma_update(None, "journal_size_limit", 64 * 1024 * 1024)
            .map_err(map_err)?;
        // We hold the lock: whatever is `running` belongs to a dead process.
        conn.execute(
            "UPDATE jobs SET status = 'pending', lease_until = NULL WHERE status = 'running'",
            [],
        )
        .map_err(map_err)?;

        // Records acknowledged before the last stop but not yet stored:
        // stored now, before anything new is accepted.
        let journal_dir = path.with_extension("journal");
        let mut recent = match &inline {
            Some(ic) => Some(
                recent::RecentContacts::load(&conn, ic.session_ttl_ms, now_millis())
                    .map_err(map_err)?,
            ),
            None => None,
        };
        let (end, replayed) = replay(&conn, &journal_dir, inline.as_deref().zip(recent.as_mut()))?;
        if replayed > 0 {
            tracing::info!(
                messages = replayed,
                "Stored the journal's backlog from the last run."
            );
        }
        let journal_writer = JournalWriter::open(&journal_dir, end).map_err(|e| {
            StoreError::Unavailable(format!(
                "cannot open the journal in {}: {e}",
                journal_dir.display()
            ))
        })?;
        let index = load_dedup(&conn)?;
        let gauges = Arc::new(QueueGauges::default());
        gauges.set(writer::count_queue(&conn, 0).map_err(map_err)?);

        let reader = open_conn(path, busy_timeout).map_err(map_err)?;
        let checkpointer = open_conn(path, busy_timeout).map_err(map_err)?;
        let alive = Arc::new(());
        let activity = Arc::new(trickle::Activity::default());
        let pacing = Arc::new(pacing::Pacing::default());
        // At normal priority: it must keep up precisely when the CPU is
        // busiest, and its work is writeback SQLite's syncs would do anyway.
        std::thread::Builder::new()
            .name("inlet-sqlite-trickle".into())
            .spawn({
                let (t, alive) = (trickle::Trickle::new(path), Arc::downgrade(&alive));
                let activity = activity.clone();
                move || t.run(alive, &activity, trickle::IDLE)
            })
            .map_err(|e| StoreError::Internal(format!("cannot start the writeback thread: {e}")))?;
        std::thread::Builder::new()
            .name("inlet-sqlite-checkpoint".into())
            .spawn({
                let (alive, activity) = (Arc::downgrade(&alive), activity.clone());
                let paced = pacing.clone();
                move || {
                    crate::priority::lower_this_thread();
                    pacing::pace_this_thread(paced);
                    checkpoint_loop(checkpointer, alive, &activity)
                }
            })
            .map_err(|e| {
                StoreError::Internal(format!("cannot start the checkpoint thread: {e}"))
            })?;
        let work = Arc::new(Notify::new());
        let (tx, rx) = mpsc::channel(QUEUE_DEPTH);
        // The schema above has written, so the WAL file exists.
        let fsyncs = Arc::new(AtomicU64::new(0));
        let syncer = Syncer::spawn(path, tx.downgrade(), fsyncs.clone())?;
        conn.pragma_update(None, "synchronous", "NORMAL")
            .map_err(map_err)?;
        let leases = Arc::new(Leases::default());
        let w = Writer::new(
            conn,
            gauges.clone(),
            work.clone(),
            syncer,
            leases.clone(),
            activity,
            recent,
        );
        std::thread::Builder::new()
            .name("inlet-sqlite-writer".into())
            .spawn({
                let paced = pacing.clone();
                move || {
                    crate::priority::lower_this_thread();
                    pacing::pace_this_thread(paced);
                    w.run(rx)
                }
            })
            .map_err(|e| StoreError::Internal(format!("cannot start the writer thread: {e}")))?;

        let progress = Arc::new(Progress::new(end, DEFAULT_MAX_BACKLOG, gauges.clone()));
        let (wake_tx, wake_rx) = std::sync::mpsc::channel();
        let applier = Applier {
            reader: JournalReader::new(&journal_dir),
            progress: progress.clone(),
            writer: tx.clone(),
            wake: wake_rx,
            inline,
            swept: None,
            pacing: pacing.clone(),
        };
        std::thread::Builder::new()
            .name("inlet-journal-apply".into())
            .spawn(move || {
                crate::priority::lower_this_thread();
                applier.run()
            })
            .map_err(|e| StoreError::Internal(format!("cannot start the applier thread: {e}")))?;
        let journal = Journal {
            writer: journal_writer,
            index,
            progress: progress.clone(),
            applier: wake_tx,
        };
        let (journal_tx, journal_rx) = mpsc::channel(QUEUE_DEPTH);
        std::thread::Builder::new()
            .name("inlet-journal".into())
            .spawn(move || journal.run(journal_rx))
            .map_err(|e| StoreError::Internal(format!("cannot start the journal thread: {e}")))?;

        Ok(Self {
            journal: journal_tx,
            progress,
            tx,
            reader: Arc::new(Mutex::new(reader)),
            gauges,
            work,
            leases,
            fsyncs,
            pacing,
            max_rejections,
            path: path.to_path_buf(),
            _alive: alive,
            _lock: lock,
        })
    }

    /// How many acknowledged messages may wait in the journal for SQLite
    /// (`store.max_backlog`); past it, ingest answers 503.
    pub fn set_max_backlog(&self, n: u64) {
        self.progress.max_backlog.store(n, Ordering::Relaxed);
    }

    /// Waits (bounded) until SQLite holds everything acknowledged so far,
    /// so an admin read right after an ACK finds the message (under steady
    /// traffic that is up to [`ingest::APPLY_EVERY`] later). When SQLite
    /// is stalled the read goes ahead after [`CATCH_UP_WAIT`] and may miss
    /// the newest messages.
    pub async fn caught_up(&self) {
        let target = self.progress.synced.load(Ordering::Acquire);
        let mut applied = self.progress.applied.subscribe();
        let reached = applied.wait_for(|p| *p >= target);
        let _ = tokio::time::timeout(CATCH_UP_WAIT, reached).await;
    }

    /// How many times the WAL was fsynced since the store opened.
    pub fn fsyncs(&self) -> u64 {
        self.fsyncs.load(Ordering::Relaxed)
    }

    /// How many times the writer and checkpointer paused their writes
    /// since the store opened (see [`pacing`]).
    pub fn write_pauses(&self) -> u64 {
        self.pacing.pauses()
    }

    async fn call<T>(&self, make: impl FnOnce(writer::Reply<T>) -> Op) -> Result<T, StoreError> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send(make(tx))
            .await
            .map_err(|_| StoreError::Unavailable("the store writer has stopped".into()))?;
        rx.await
            .map_err(|_| StoreError::Unavailable("the store writer has stopped".into()))?
    }

    async fn read<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection) -> rusqlite::Result<T> + Send + 'static,
    ) -> Result<T, StoreError> {
        let reader = self.reader.clone();
        tokio::task::spawn_blocking(move || {
            let conn = reader.lock().unwrap_or_else(|p| p.into_inner());
            f(&conn).map_err(map_err)
        })
        .await
        .map_err(|e| StoreError::Internal(e.to_string()))?
    }
}

#[async_trait]
impl Store for SqliteStore {
    async fn ingest(&self, batch: IngestBatch) -> Result<IngestOutcome, StoreError> {
        let gone = || StoreError::Unavailable("the journal thread has stopped".into());
        let (tx, rx) = oneshot::channel();
        let request = Prepared::new(batch);
        self.journal.send((request, tx)).await.map_err(|_| gone())?;
        // The request comes back with the answer, to be freed here.
        let (outcome, _request) = rx.await.map_err(|_| gone())?;
        outcome
    }

    async fn claim(
        &self,
        lanes: &[Lane],
        limit: usize,
        lease: Duration,
    ) -> Result<Vec<ClaimedJob>, StoreError> {
        let lease_ms = lease.as_millis() as i64;
        let now = now_millis();
        let lanes = lanes.to_vec();
        let raw = self
            .call(|reply| Op::Claim {
                lanes,
                limit,
                lease_ms,
                now,
                reply,
            })
            .await?;
        Ok(raw.into_iter().map(writer::RawClaim::into_job).collect())
    }

    async fn fail_orphans(&self, lanes: &[Lane]) -> Result<usize, StoreError> {
        let lanes = lanes.to_vec();
        let now = now_millis();
        self.call(|reply| Op::FailOrphans { lanes, now, reply })
            .await
    }

    async fn complete(&self, completion: JobCompletion) -> Result<(), StoreError> {
        self.call(|tx| Op::Complete(completion, tx)).await
    }

    async fn reject(&self, rejection: Rejection) -> Result<(), StoreError> {
        self.call(|tx| Op::Reject(rejection, now_millis(), tx))
            .await
    }

    async fn prune(
        &self,
        dedup_cutoff: Millis,
        retention_cutoff: Millis,
    ) -> Result<(), StoreError> {
        let max_rejections = self.max_rejections;
        self.call(|reply| Op::Prune {
            dedup_cutoff,
            retention_cutoff,
            max_rejections,
            reply,
        })
        .await
    }

    async fn next_due(&self, lanes: &[Lane]) -> Result<Option<Millis>, StoreError> {
        let lanes = lanes.to_vec();
        let leases = self.leases.clone();
        self.read(move |c| queries::next_due(c, &lanes, &leases))
            .await
    }

    async fn probe(&self) -> Result<(), StoreError> {
        if let Some(e) = self.progress.refusal(1) {
            return Err(e);
        }
        self.call(Op::Probe).await
    }

    fn gauges(&self) -> &QueueGauges {
        &self.gauges
    }

    fn work_signal(&self) -> Arc<Notify> {
        self.work.clone()
    }

    async fn list_messages(&self, q: ListQuery) -> Result<Page, StoreError> {
        self.caught_up().await;
        self.read(move |c| queries::list_messages(c, &q)).await
    }

    async fn get_message(&self, id: &str) -> Result<Value, StoreError> {
        self.caught_up().await;
        let id = id.to_string();
        self.read(move |c| queries::get_message(c, &id))
            .await?
            .ok_or(StoreError::NotFound)
    }

    async fn list_rejections(&self, q: ListQuery) -> Result<Page, StoreError> {
        self.read(move |c| queries::list_rejections(c, &q)).await
    }

    async fn list_dead_letters(&self, q: ListQuery) -> Result<Page, StoreError> {
        self.read(move |c| queries::list_dead_letters(c, &q)).await
    }

    async fn replay_message(&self, id: &str, only_failed: bool) -> Result<usize, StoreError> {
        self.caught_up().await;
        let message_id = Some(id.to_string());
        let now = now_millis();
        let n = self
            .call(|reply| Op::Replay {
                message_id,
                only_failed,
                source: None,
                action: None,
                now,
                reply,
            })
            .await?;
        if n == 0 {
            // Distinguish "nothing to replay" from "no such message".
            self.get_message(id).await?;
        }
        Ok(n)
    }

    async fn replay_dead(
        &self,
        source: Option<String>,
        action: Option<String>,
    ) -> Result<usize, StoreError> {
        let now = now_millis();
        self.call(|reply| Op::Replay {
            message_id: None,
            only_failed: true,
            source,
            action,
            now,
            reply,
        })
        .await
    }

    async fn opt_state(
        &self,
        source: &str,
        contact: &str,
        message_id: &str,
    ) -> Result<OptState, StoreError> {
        let (s, c, m) = (
            source.to_string(),
            contact.to_string(),
            message_id.to_string(),
        );
        self.read(move |conn| queries::opt_state(conn, &s, &c, &m))
            .await
    }

    async fn begin_reply(&self, message_id: &str, action: &str) -> Result<ReplyClaim, StoreError> {
        let (message_id, action, now) = (message_id.to_string(), action.to_string(), now_millis());
        self.call(|reply| Op::BeginReply {
            message_id,
            action,
            now,
            reply,
        })
        .await
    }

    async fn finish_reply(
        &self,
        message_id: &str,
        action: &str,
        result: ReplyResult,
        detail: Option<String>,
    ) -> Result<(), StoreError> {
        let (message_id, action, now) = (message_id.to_string(), action.to_string(), now_millis());
        self.call(|reply| Op::FinishReply {
            message_id,
            action,
            result,
            detail,
            now,
            reply,
        })
        .await
    }

    async fn last_conversation(
        &self,
        source: &str,
        contact: &str,
    ) -> Result<Option<(String, Millis)>, StoreError> {
        metrics::counter!("inlet_conversation_lookups_total").increment(1);
        let (s, c) = (source.to_string(), contact.to_string());
        self.read(move |conn| queries::last_conversation(conn, &s, &c))
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{Channel, InboundMessage, MessageId};
    use crate::store::{JobCompletion, Lane, ReplyClaim};
    use serde_json::json;

    fn message(guid: &str) -> InboundMessage {
        InboundMessage {
            id: MessageId::generate(),
            source: "sms".into(),
            provider: "sms-gateway",
            external_id: guid.into(),
            dedup_key: None,
            channel: Channel::Sms,
            from: None,
            to: None,
            text: Some("hi".into()),
            media: Vec::new(),
            received_at: crate::domain::now_rfc3339(),
            raw: serde_json::Value::Null.into(),
        }
    }

    async fn ingest(store: &SqliteStore, guid: &str) -> IngestOutcome {
        let now = now_millis();
        let batch = IngestBatch::new(
            "sms".into(),
            vec![message(guid)],
            Vec::new(),
            now - 3_600_000,
            now,
        );
        let out = store.ingest(batch).await.unwrap();
        store.caught_up().await;
        out
    }

    /// Ingests one request of `n` new messages (guids `{prefix}-{i}`),
    /// without waiting for SQLite.
    async fn ingest_many(store: &SqliteStore, prefix: &str, n: usize) {
        let now = now_millis();
        let messages = (0..n).map(|i| message(&format!("{prefix}-{i}"))).collect();
        let batch = IngestBatch::new("sms".into(), messages, Vec::new(), now - 3_600_000, now);
        assert_eq!(store.ingest(batch).await.unwrap().accepted, n);
    }

    /// Ingests two requests of 1,000 messages (several chunks of WAL to
    /// apply: the writer's pauses, and the checkpointer's if it ran by
    /// then), waits until SQLite has them, and returns the pauses so far.
    async fn pauses_after_two_batches(store: &SqliteStore, prefix: &str) -> u64 {
        for b in 0..2 {
            ingest_many(store, &format!("{prefix}{b}"), 1000).await;
        }
        store.caught_up().await;
        store.write_pauses()
    }

    async fn stored(store: &SqliteStore) -> usize {
        let all = ListQuery {
            limit: 10,
            ..Default::default()
        };
        store.list_messages(all).await.unwrap().items.len()
    }

    #[test]
    fn message_id_floor_orders_like_the_ids_minted_then() {
        let before = super::super::message_id_floor(now_millis() - 1);
        let id = MessageId::generate();
        let after = super::super::message_id_floor(now_millis() + 1);
        assert!(
            before.as_str() <= id.as_str() && id.as_str() < after.as_str(),
            "{before} {id} {after}"
        );
    }

    #[tokio::test]
    async fn prune_drops_what_is_past_retention_and_forgets_expired_keys() {
        let dir = tempfile::tempdir().unwrap();
        let store =
            SqliteStore::open(&dir.path().join("inlet.db"), Duration::from_secs(1), 100).unwrap();
        assert_eq!(ingest(&store, "g1").await.accepted, 1);
        let hour_ago = now_millis() - 3_600_000;
        store.prune(hour_ago, hour_ago).await.unwrap();
        assert_eq!(stored(&store).await, 1);
        assert_eq!(
            ingest(&store, "g1").await.duplicates,
            1,
            "the key is still in its window"
        );

        let later = now_millis() + 1_000;
        store.prune(later, later).await.unwrap();
        assert_eq!(stored(&store).await, 0);
        assert_eq!(
            store.gauges().snapshot().pending,
            0,
            "its jobs went with it"
        );
        // Rebuilt from the log at open, the index no longer has the key.
        drop(store);
        let store =
            SqliteStore::open(&dir.path().join("inlet.db"), Duration::from_secs(1), 100).unwrap();
        assert_eq!(
            ingest(&store, "g1").await.accepted,
            1,
            "an expired key is accepted again"
        );
    }

    /// Under steady traffic the applier gathers records into one
    /// transaction per `APPLY_EVERY` (200 ms) rather than one per sync:
    /// each commit rewrites whole pages, and those bytes slow the journal's
    /// syncs (see `APPLY_EVERY`).
    #[tokio::test]
    async fn steady_traffic_is_applied_a_few_transactions_a_second() {
        let dir = tempfile::tempdir().unwrap();
        let store =
            SqliteStore::open(&dir.path().join("inlet.db"), Duration::from_secs(1), 100).unwrap();
        let started = std::time::Instant::now();
        let mut n = 0;
        // A request every 4 ms or so for 600 ms: about 110 syncs.
        while started.elapsed() < Duration::from_millis(600) {
            let now = now_millis();
            let batch = IngestBatch::new(
                "sms".into(),
                vec![message(&format!("g{n}"))],
                Vec::new(),
                now - 3_600_000,
                now,
            );
            assert_eq!(store.ingest(batch).await.unwrap().accepted, 1);
            n += 1;
            tokio::time::sleep(Duration::from_millis(4)).await;
        }
        let elapsed = started.elapsed();
        store.caught_up().await;
        let all = ListQuery {
            limit: 1000,
            ..Default::default()
        };
        assert_eq!(store.list_messages(all).await.unwrap().items.len(), n);
        let applies = store.progress.applies.load(Ordering::Relaxed);
        // One at the first record, then one per 200 ms (pinned here, not
        // read from `APPLY_EVERY`: at 20 ms this made 31 transactions).
        let most = elapsed.as_millis() as u64 / 200 + 2;
        assert!(
            applies <= most,
            "{applies} transactions for {n} requests over {elapsed:?} (at most {most})"
        );
    }

    fn classify_lane() -> Vec<Lane> {
        vec![Lane {
            source: "sms".into(),
            action: super::super::CLASSIFY.into(),
            limit: 10,
        }]
    }

    /// Makes `fsync(2)` fail with EIO on the calling thread (a seccomp
    /// filter; `fdatasync` and everything else still run).
    fn refuse_fsync_on_this_thread() {
        use libc::{BPF_ABS, BPF_JEQ, BPF_JMP, BPF_K, BPF_LD, BPF_RET, BPF_W};
        // seccomp_data.nr is its first field.
        let filter = unsafe {
            [
                libc::BPF_STMT((BPF_LD | BPF_W | BPF_ABS) as u16, 0),
                libc::BPF_JUMP(
                    (BPF_JMP | BPF_JEQ | BPF_K) as u16,
                    libc::SYS_fsync as u32,
                    0,
                    1,
                ),
                libc::BPF_STMT(
                    (BPF_RET | BPF_K) as u16,
                    libc::SECCOMP_RET_ERRNO | libc::EIO as u32,
                ),
                libc::BPF_STMT((BPF_RET | BPF_K) as u16, libc::SECCOMP_RET_ALLOW),
            ]
        };
        let prog = libc::sock_fprog {
            len: filter.len() as u16,
            filter: filter.as_ptr() as *mut _,
        };
        // SAFETY: plain prctl calls; the program outlives the call (the
        // kernel copies it).
        unsafe {
            assert_eq!(libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), 0);
            assert_eq!(
                libc::prctl(libc::PR_SET_SECCOMP, libc::SECCOMP_MODE_FILTER, &prog),
                0,
                "{}",
                std::io::Error::last_os_error()
            );
        }
    }

    #[test]
    fn sqlite_syncs_with_fdatasync_never_fsync() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("inlet.db");
        // A thread of its own: the filter stays with the thread.
        std::thread::spawn(move || {
            refuse_fsync_on_this_thread();
            let probe = std::fs::File::create(dir.path().join("probe")).unwrap();
            assert!(probe.sync_all().is_err(), "fsync is refused here");
            probe.sync_data().expect("fdatasync is not");
            // A commit at synchronous=FULL syncs the WAL; a checkpoint
            // syncs it and then the database; a TRUNCATE restarts the WAL.
            let conn = open_conn(&path, Duration::from_secs(1)).unwrap();
            conn.execute_batch("CREATE TABLE t(x); INSERT INTO t VALUES (1);")
                .unwrap();
            conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| {
                assert_eq!(r.get::<_, i64>(0)?, 0, "the checkpoint was not blocked");
                Ok(())
            })
            .unwrap();
            conn.execute("INSERT INTO t VALUES (2)", []).unwrap();
        })
        .join()
        .expect("SQLite called fsync (built without HAVE_FDATASYNC?)");
    }

    fn done(job: &crate::store::ClaimedJob) -> JobCompletion {
        JobCompletion::done(job, now_millis())
    }

    #[tokio::test]
    async fn a_leased_job_is_not_handed_out_again_until_its_lease_runs_out() {
        let dir = tempfile::tempdir().unwrap();
        let store =
            SqliteStore::open(&dir.path().join("inlet.db"), Duration::from_secs(1), 100).unwrap();
        ingest(&store, "g1").await;
        ingest(&store, "g2").await;
        let lanes = classify_lane();
        // Long enough that a stalled test machine does not let it run out
        // between the claims below.
        let lease = Duration::from_millis(1500);
        let first = store.claim(&lanes, 1, lease).await.unwrap();
        let second = store.claim(&lanes, 10, lease).await.unwrap();
        assert_eq!((first.len(), second.len()), (1, 1));
        assert_ne!(first[0].job_id, second[0].job_id);
        assert!(store.claim(&lanes, 10, lease).await.unwrap().is_empty());
        let q = store.gauges().snapshot();
        assert_eq!((q.pending, q.in_flight), (0, 2));
        // Both jobs are due rows in the file; the next wake-up is the lease
        // end, not their (past) run time, or the dispatcher would spin.
        let next = store.next_due(&lanes).await.unwrap().expect("a lease ends");
        assert!(next > now_millis(), "next due {next} is in the past");

        tokio::time::sleep(lease + Duration::from_millis(50)).await;
        let again = store.claim(&lanes, 10, lease).await.unwrap();
        assert_eq!(again.len(), 2, "expired leases are handed out again");
        store.complete(done(&again[0])).await.unwrap();
        // The first holder of the lease finishing late changes nothing.
        store.complete(done(&again[0])).await.unwrap();
        let q = store.gauges().snapshot();
        assert_eq!((q.pending, q.in_flight), (0, 1));
        let id = again[0].message_id.clone();
        let status = store.get_message(&id).await.unwrap()["status"].clone();
        assert_eq!(status, "done");
    }

    #[tokio::test]
    async fn the_store_paces_a_large_apply() {
        let dir = tempfile::tempdir().unwrap();
        let store =
            SqliteStore::open(&dir.path().join("inlet.db"), Duration::from_secs(1), 100).unwrap();
        let pauses = pauses_after_two_batches(&store, "g").await;
        assert!(pauses >= 2, "2,000 messages applied with {pauses} pauses");
    }

    #[tokio::test]
    async fn a_backlog_of_a_whole_apply_is_stored_at_full_speed() {
        let dir = tempfile::tempdir().unwrap();
        let store =
            SqliteStore::open(&dir.path().join("inlet.db"), Duration::from_secs(1), 100).unwrap();
        // One request whose record alone is a whole apply's worth: the
        // applier finds SQLite that far behind and turns the pauses off.
        ingest_many(&store, "g", 6000).await;
        let journaled = store.progress.synced.load(Ordering::SeqCst);
        assert!(
            journaled >= ingest::MAX_APPLY_BYTES as u64,
            "the record is {journaled} bytes"
        );
        store.caught_up().await;
        let stored: i64 = store
            .read(|c| c.query_row("SELECT count(*) FROM messages", [], |r| r.get(0)))
            .await
            .unwrap();
        assert_eq!(stored, 6000);
        assert_eq!(
            store.write_pauses(),
            0,
            "a backlog of {journaled} journal bytes was stored with pauses"
        );
        // Caught up, the next applies find less waiting: paced again.
        let pauses = pauses_after_two_batches(&store, "h").await;
        assert!(
            pauses >= 2,
            "2,000 messages applied after the backlog with {pauses} pauses"
        );
    }

    #[tokio::test]
    async fn only_what_must_be_on_disk_waits_for_an_fsync() {
        let dir = tempfile::tempdir().unwrap();
        let store =
            SqliteStore::open(&dir.path().join("inlet.db"), Duration::from_secs(1), 100).unwrap();
        ingest(&store, "g1").await;
        let lanes = classify_lane();
        let lease = Duration::from_secs(30);
        let before = store.fsyncs();
        // Claims read and write nothing; a completion is answered at its
        // commit (the message is safe in the journal, and a completion a
        // power cut takes back only runs the job again).
        let claimed = store.claim(&lanes, 10, lease).await.unwrap();
        assert_eq!(claimed.len(), 1);
        for _ in 0..5 {
            assert!(store.claim(&lanes, 10, lease).await.unwrap().is_empty());
        }
        store.complete(done(&claimed[0])).await.unwrap();
        assert_eq!(store.fsyncs(), before, "claims or a completion took fsyncs");
        // A probe writes nothing, but answers for the disk: after that
        // unsynced completion it costs an fsync, and then none.
        store.probe().await.unwrap();
        assert_eq!(
            store.fsyncs(),
            before + 1,
            "a probe vouched for unsynced commits"
        );
        store.probe().await.unwrap();
        assert_eq!(store.fsyncs(), before + 1);
        // A reply about to be sent is answered only once the disk holds it.
        let id = &claimed[0].message_id;
        assert_eq!(
            store.begin_reply(id, "reply").await.unwrap(),
            ReplyClaim::Proceed
        );
        assert_eq!(store.fsyncs(), before + 2);
    }

    #[tokio::test]
    async fn a_record_sqlite_refuses_stays_in_the_journal_until_it_is_taken() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("inlet.db");
        let store = SqliteStore::open(&path, Duration::from_secs(1), 100).unwrap();
        assert_eq!(ingest(&store, "a").await.accepted, 1);
        let other = open_conn(&path, Duration::from_secs(1)).unwrap();
        other
            .execute_batch(
                "CREATE TRIGGER poison BEFORE INSERT ON messages WHEN NEW.external_id = 'poison'
                 BEGIN SELECT RAISE(ABORT, 'refused'); END;",
            )
            .unwrap();
        // Acknowledged from the journal although SQLite refuses the row...
        let now = now_millis();
        let batch = IngestBatch::new(
            "sms".into(),
            vec![message("poison")],
            Vec::new(),
            now - 1,
            now,
        );
        assert_eq!(store.ingest(batch).await.unwrap().accepted, 1);
        // ...other writes go on meanwhile...
        let rejection = Rejection {
            at: crate::domain::now_rfc3339(),
            source: "sms".into(),
            status: 400,
            code: "invalid_payload".into(),
            headers: Default::default(),
            body: String::new(),
        };
        store.reject(rejection).await.unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(stored(&store).await, 1, "the refused row is not stored");
        assert_eq!(
            store.gauges().snapshot().pending,
            2,
            "but it is pending work"
        );
        // ...and it is stored as soon as SQLite takes it.
        other.execute_batch("DROP TRIGGER poison").unwrap();
        store.caught_up().await;
        assert_eq!(stored(&store).await, 2);
        assert_eq!(
            ingest(&store, "poison").await.duplicates,
            1,
            "and its key holds"
        );
    }

    #[tokio::test]
    async fn records_acknowledged_before_a_crash_are_stored_at_open() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("inlet.db");
        // What a run that died before SQLite took anything leaves: a
        // journal with two records (one torn record after them).
        let mut w = journal::JournalWriter::open(&path.with_extension("journal"), 0).unwrap();
        let mut buf = Vec::new();
        for guid in ["x", "y"] {
            let entry = record::Entry {
                source: "sms".into(),
                now: now_millis(),
                messages: vec![record::Row {
                    id: MessageId::generate().to_string(),
                    external_id: guid.into(),
                    dedup_key: None,
                    contact: None,
                    doc: serde_json::to_string(&message(guid)).unwrap(),
                    text: message(guid).text,
                }],
                events: Vec::new(),
            };
            let mut body = Vec::new();
            entry.encode(&mut body);
            journal::frame(&mut buf, &body);
        }
        w.append(&mut buf.clone()).unwrap();
        w.append(&mut buf[..7]).unwrap();
        drop(w);

        let store = SqliteStore::open(&path, Duration::from_secs(1), 100).unwrap();
        assert_eq!(stored(&store).await, 2);
        assert_eq!(store.gauges().snapshot().pending, 2, "their classify jobs");
        assert_eq!(ingest(&store, "x").await.duplicates, 1);
        assert_eq!(ingest(&store, "z").await.accepted, 1);
        assert_eq!(stored(&store).await, 3);
    }

    #[test]
    fn a_file_of_an_older_build_gets_the_added_columns_and_keeps_its_rows() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("inlet.db");
        {
            let old = Connection::open(&path).unwrap();
            old.execute_batch(
                "CREATE TABLE messages (id TEXT PRIMARY KEY, source TEXT NOT NULL,
                   external_id TEXT NOT NULL, contact TEXT, received_at INTEGER NOT NULL,
                   doc TEXT NOT NULL, intent TEXT, intent_label TEXT, conversation_id TEXT);
                 INSERT INTO messages (id, source, external_id, received_at, doc)
                   VALUES ('msg_old', 'sms', 'g0', 0, '{}');",
            )
            .unwrap();
        }
        drop(SqliteStore::open(&path, Duration::from_secs(1), 100).unwrap());
        // Opening twice must not try to add it again.
        drop(SqliteStore::open(&path, Duration::from_secs(1), 100).unwrap());
        let conn = open_conn(&path, Duration::from_secs(1)).unwrap();
        let at: Option<i64> = conn
            .query_row(
                "SELECT inline_classified_at FROM messages WHERE id = 'msg_old'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(at, None);
        let detail = queries::get_message(&conn, "msg_old").unwrap().unwrap();
        assert_eq!(detail["attempts"], serde_json::json!([]));
    }

    #[tokio::test]
    async fn the_row_keeps_the_documents_column_fields_once_and_reads_give_them_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("inlet.db");
        let store = SqliteStore::open(&path, Duration::from_secs(1), 100).unwrap();
        let mut m = message("g-doc");
        m.from = crate::domain::PhoneNumber::parse("+15551230000");
        let id = m.id.to_string();
        let full = serde_json::to_value(&m).unwrap();
        let now = now_millis();
        let batch = IngestBatch::new("sms".into(), vec![m], Vec::new(), now - 1000, now);
        store.ingest(batch).await.unwrap();
        store.caught_up().await;
        let conn = open_conn(&path, Duration::from_secs(1)).unwrap();
        let doc: String = conn
            .query_row("SELECT doc FROM messages WHERE id = ?1", [&id], |r| {
                r.get(0)
            })
            .unwrap();
        let doc: Value = serde_json::from_str(&doc).unwrap();
        for k in ["id", "source", "external_id", "from"] {
            assert!(doc.get(k).is_none(), "{k} is a column, not in {doc}");
        }
        let read = store.get_message(&id).await.unwrap();
        for (k, v) in full.as_object().unwrap() {
            assert_eq!(&read[k], v, "{k}");
        }
        let listed = store.list_messages(ListQuery {
            limit: 5,
            ..Default::default()
        });
        assert_eq!(listed.await.unwrap().items[0]["from"], "+15551230000");

        // A document stored whole by an older build reads as it was.
        conn.execute(
            "INSERT INTO messages (id, source, external_id, contact, received_at, doc)
             VALUES ('msg_0old', 'sms', 'g-old', '+1999', 0,
                     '{\"id\":\"msg_0old\",\"source\":\"sms\",\"external_id\":\"g-old\",\"from\":\"+1999\",\"text\":\"hi\"}')",
            [],
        )
        .unwrap();
        let old = store.get_message("msg_0old").await.unwrap();
        assert_eq!(
            (
                &old["id"],
                &old["source"],
                &old["external_id"],
                &old["from"],
                &old["text"]
            ),
            (
                &json!("msg_0old"),
                &json!("sms"),
                &json!("g-old"),
                &json!("+1999"),
                &json!("hi")
            )
        );
    }

    #[tokio::test]
    async fn an_older_files_dedup_table_moves_to_the_log_and_its_keys_stay_duplicates() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("inlet.db");
        let now = now_millis();
        {
            let old = Connection::open(&path).unwrap();
            old.execute_batch(&format!(
                "CREATE TABLE dedup (source TEXT NOT NULL, key TEXT NOT NULL,
                   message_id TEXT NOT NULL, seen_at INTEGER NOT NULL,
                   PRIMARY KEY (source, key)) WITHOUT ROWID;
                 CREATE INDEX dedup_by_seen ON dedup (seen_at);
                 INSERT INTO dedup VALUES ('sms', 'g-new', 'msg_b', {now}), ('sms', 'g-old', 'msg_a', 1);"
            ))
            .unwrap();
        }
        let store = SqliteStore::open(&path, Duration::from_secs(1), 100).unwrap();
        assert_eq!(ingest(&store, "g-new").await.duplicates, 1);
        assert_eq!(ingest(&store, "g-old").await.accepted, 1, "past the window");
        drop(store);
        let conn = open_conn(&path, Duration::from_secs(1)).unwrap();
        let log: Vec<(String, i64)> = conn
            .prepare("SELECT key, seen_at FROM dedup_keys ORDER BY id")
            .unwrap()
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(log.len(), 3, "{log:?}");
        assert_eq!(log[0], ("g-old".to_string(), 1), "oldest first");
        assert_eq!(log[1], ("g-new".to_string(), now));
        assert_eq!(log[2].0, "g-old");
        let old_table: i64 = conn
            .query_row(
                "SELECT COUNT(*) FROM sqlite_schema WHERE name IN ('dedup', 'dedup_by_seen')",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(old_table, 0);
    }

    #[tokio::test]
    async fn a_large_batch_logs_every_key_in_order_and_a_restart_knows_them() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("inlet.db");
        // Spans every multi-row insert size (64 + 16 + 4 + 1 + 1 + 1).
        let guids: Vec<String> = (0..87).map(|i| format!("g-{i}")).collect();
        let batch = |guids: &[String]| {
            let now = now_millis();
            IngestBatch::new(
                "sms".into(),
                guids.iter().map(|g| message(g)).collect(),
                Vec::new(),
                now - 3_600_000,
                now,
            )
        };
        let store = SqliteStore::open(&path, Duration::from_secs(1), 100).unwrap();
        assert_eq!(store.ingest(batch(&guids)).await.unwrap().accepted, 87);
        store.caught_up().await;
        drop(store);
        let conn = open_conn(&path, Duration::from_secs(1)).unwrap();
        let log: Vec<String> = conn
            .prepare("SELECT key FROM dedup_keys ORDER BY id")
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(log, guids);
        drop(conn);
        let store = SqliteStore::open(&path, Duration::from_secs(1), 100).unwrap();
        let again = store.ingest(batch(&guids)).await.unwrap();
        assert_eq!((again.accepted, again.duplicates), (0, 87));
    }

    #[test]
    fn pruning_the_log_keeps_every_key_within_the_window() {
        let (_dir, conn) = fresh_db();
        conn.execute_batch(
            "INSERT INTO dedup_keys (source, key, seen_at)
               VALUES ('sms', 'a', 10), ('sms', 'b', 20), ('sms', 'c', 30), ('sms', 'd', 25)",
        )
        .unwrap();
        let keys = |c: &Connection| -> Vec<String> {
            c.prepare("SELECT key FROM dedup_keys ORDER BY id")
                .unwrap()
                .query_map([], |r| r.get(0))
                .unwrap()
                .collect::<Result<_, _>>()
                .unwrap()
        };
        writer::prune(&conn, 20, 0, 100).unwrap();
        assert_eq!(keys(&conn), ["b", "c", "d"]);
        writer::prune(&conn, 26, 0, 100).unwrap();
        // `d` (25), a little out of order behind `c`, goes with a later pass.
        assert_eq!(keys(&conn), ["c", "d"]);
        writer::prune(&conn, 31, 0, 100).unwrap();
        assert!(keys(&conn).is_empty());
        writer::prune(&conn, 40, 0, 100).unwrap();
    }

    /// A new, migrated database in a temp dir, and a connection to it.
    fn fresh_db() -> (tempfile::TempDir, Connection) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("inlet.db");
        drop(SqliteStore::open(&path, Duration::from_secs(1), 100).unwrap());
        let conn = open_conn(&path, Duration::from_secs(1)).unwrap();
        (dir, conn)
    }

    /// One journal record of source `sms` received at `now`.
    fn entry(now: Millis, messages: Vec<record::Row>) -> record::Entry {
        record::Entry {
            source: "sms".into(),
            now,
            messages,
            events: Vec::new(),
        }
    }

    #[test]
    fn applying_a_record_twice_stores_it_once() {
        let (_dir, conn) = fresh_db();
        let entries = [entry(
            now_millis(),
            vec![record::Row {
                id: MessageId::generate().to_string(),
                external_id: "g".into(),
                dedup_key: None,
                contact: None,
                doc: "{}".into(),
                text: None,
            }],
        )];
        let stored = |n| writer::Applied {
            stored: n,
            enqueued: n,
            classified: 0,
        };
        assert_eq!(writer::apply(&conn, &entries, 10, None).unwrap(), stored(1));
        assert_eq!(writer::apply(&conn, &entries, 10, None).unwrap(), stored(0));
        let jobs: i64 = conn
            .query_row("SELECT COUNT(*) FROM jobs", [], |r| r.get(0))
            .unwrap();
        assert_eq!(jobs, 1);
        assert_eq!(writer::applied_position(&conn).unwrap(), 10);
    }

    #[test]
    fn a_failing_op_fails_alone_when_its_round_begins_the_transaction() {
        let (dir, conn) = fresh_db();
        let path = dir.path().join("inlet.db");
        conn.execute_batch(
            "CREATE TRIGGER poison BEFORE INSERT ON messages WHEN NEW.external_id = 'poison'
             BEGIN SELECT RAISE(ABORT, 'refused'); END;",
        )
        .unwrap();
        let (tx, _rx) = mpsc::channel(8);
        let syncer = Syncer::spawn(&path, tx.downgrade(), Arc::new(AtomicU64::new(0))).unwrap();
        let gauges = Arc::new(crate::store::QueueGauges::default());
        let leases = Arc::new(Leases::default());
        let activity = Arc::new(trickle::Activity::default());
        let mut w = Writer::new(
            conn,
            gauges,
            Arc::new(Notify::new()),
            syncer,
            leases,
            activity.clone(),
            None,
        );
        let reject = |code: &str| {
            let (reply, rx) = oneshot::channel();
            let r = Rejection {
                at: crate::domain::now_rfc3339(),
                source: "sms".into(),
                status: 400,
                code: code.into(),
                headers: Default::default(),
                body: String::new(),
            };
            (Op::Reject(r, now_millis(), reply), rx)
        };
        let ((first, first_rx), (second, second_rx)) = (reject("first"), reject("second"));
        let (reply, apply_rx) = oneshot::channel();
        let apply = Op::Apply {
            entries: vec![entry(now_millis(), vec![row("poison", "+1", "hi")])],
            upto: 10,
            inline: None,
            reply,
        };
        let mut ops = vec![first, apply, second];
        let open = w.run_round(&mut ops, None).expect("the transaction stands");
        let other = open_conn(&path, Duration::from_secs(1)).unwrap();
        let count = |sql: &str| -> i64 { other.query_row(sql, [], |r| r.get(0)).unwrap() };
        assert_eq!(
            count("SELECT COUNT(*) FROM rejections"),
            0,
            "the ops before and after the failure are in one transaction"
        );
        assert_eq!(activity.commits(), 0, "nothing committed yet");
        w.commit(open);
        assert_eq!(activity.commits(), 1, "the writeback thread hears of it");
        assert!(apply_rx.blocking_recv().unwrap().is_err());
        assert!(first_rx.blocking_recv().unwrap().is_ok());
        assert!(second_rx.blocking_recv().unwrap().is_ok());
        assert_eq!(count("SELECT COUNT(*) FROM rejections"), 2);
        assert_eq!(count("SELECT COUNT(*) FROM messages"), 0);
        assert_eq!(writer::applied_position(&other).unwrap(), 0);
        drop(tx);
    }

    fn row(guid: &str, contact: &str, text: &str) -> record::Row {
        record::Row {
            id: MessageId::generate().to_string(),
            external_id: guid.into(),
            dedup_key: None,
            contact: Some(contact.into()),
            doc: serde_json::json!({"text": text, "from": contact}).to_string(),
            text: Some(text.into()),
        }
    }

    fn inline_rules() -> InlineClassify {
        let rules = crate::pipeline::RulesClassifier::new(&[]).unwrap();
        InlineClassify {
            classify: Box::new(move |text| rules.classify(text)),
            follow_ups: [("sms".to_string(), vec!["forward".to_string()])].into(),
            session_ttl_ms: 60_000,
        }
    }

    #[test]
    fn inline_classification_stores_the_message_done_once_with_its_attempt_and_actions() {
        let (_dir, conn) = fresh_db();
        let m = row("g1", "+15550001", "STOP");
        let id = m.id.clone();
        let at = now_millis();
        let entries = [entry(at, vec![m])];
        let ic = inline_rules();
        let mut recent = recent_for(&conn, at);
        let first = writer::apply(&conn, &entries, 10, Some((&ic, &mut recent))).unwrap();
        // Only the follow-up is left for workers; applying again adds nothing.
        assert_eq!((first.stored, first.enqueued), (1, 1));
        let again = writer::apply(&conn, &entries, 10, Some((&ic, &mut recent))).unwrap();
        assert_eq!((again.stored, again.enqueued), (0, 0));
        let (label, intent, conv): (String, String, Option<String>) = conn
            .query_row(
                "SELECT intent_label, intent, conversation_id FROM messages WHERE id = ?1",
                [&id],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .unwrap();
        assert_eq!(label, "opt_out");
        assert!(intent.contains(r#""by":"rules""#), "{intent}");
        assert!(conv.is_some_and(|c| c.starts_with("conv_")));
        // The classify job and its attempt are implied by the message, not
        // rows: only the follow-up is a job.
        let jobs = |conn: &Connection| -> Vec<(String, String, i64)> {
            conn.prepare(
                "SELECT action, status, attempts FROM jobs WHERE message_id = ?1 ORDER BY id",
            )
            .unwrap()
            .query_map([&id], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .unwrap()
            .map(Result::unwrap)
            .collect()
        };
        assert_eq!(jobs(&conn), [("forward".into(), "pending".into(), 0)]);
        let rows: i64 = conn
            .query_row("SELECT COUNT(*) FROM attempts", [], |r| r.get(0))
            .unwrap();
        assert_eq!(rows, 0);
        // ...and read back as the one classify attempt, at arrival.
        let detail = queries::get_message(&conn, &id).unwrap().unwrap();
        assert_eq!(
            detail["attempts"],
            serde_json::json!([{"action": "classify", "destination": null, "outcome": "success",
                "status_code": null, "duration_ms": 0, "error": null, "at": queries::rfc3339(at)}])
        );
        assert_eq!(detail["status"], "pending");
        // A full replay gives it a classify job to run again (the forward is
        // still pending, so left be), once however often it is replayed; a
        // replay of failures only does not.
        let replay = |only_failed| writer::replay(&conn, Some(&id), only_failed, None, None, at);
        assert_eq!(replay(true).unwrap(), (0, 0));
        assert_eq!(replay(false).unwrap(), (1, 0));
        assert_eq!(replay(false).unwrap(), (0, 0));
        assert_eq!(
            jobs(&conn),
            [
                ("forward".into(), "pending".into(), 0),
                ("classify".into(), "pending".into(), 0)
            ]
        );
        let opted_out: bool = conn
            .query_row(
                "SELECT opted_out FROM opt_outs WHERE source = 'sms' AND contact = '+15550001'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert!(opted_out);
    }

    /// The writer's [`recent::RecentContacts`] for `inline_rules`' TTL.
    fn recent_for(conn: &Connection, now: Millis) -> recent::RecentContacts {
        recent::RecentContacts::load(conn, 60_000, now).unwrap()
    }

    #[test]
    fn inline_conversations_slide_with_each_message_of_a_contact() {
        // Kept across transactions as the writer does, and rebuilt from the
        // file before each message as after a restart: the same answers.
        for rebuilt in [false, true] {
            let (_dir, conn) = fresh_db();
            let ic = inline_rules();
            let t0 = now_millis();
            let mut kept = recent_for(&conn, t0);
            // 50 s apart each (TTL 60 s): one conversation however long it
            // runs; then 61 s of quiet starts a new one. Another contact has
            // its own.
            let plan = [
                ("a", "+1", t0),
                ("b", "+1", t0 + 50_000),
                ("c", "+1", t0 + 100_000),
                ("d", "+2", t0 + 100_000),
                ("e", "+1", t0 + 161_001),
            ];
            let mut ids = Vec::new();
            for (n, (guid, contact, at)) in plan.iter().enumerate() {
                let m = row(guid, contact, "hello");
                ids.push(m.id.clone());
                let entries = [entry(*at, vec![m])];
                let mut fresh;
                let recent = if rebuilt {
                    fresh = recent_for(&conn, *at);
                    &mut fresh
                } else {
                    &mut kept
                };
                writer::apply(&conn, &entries, n as u64 + 1, Some((&ic, recent))).unwrap();
            }
            let conv = |id: &String| -> String {
                conn.query_row(
                    "SELECT conversation_id FROM messages WHERE id = ?1",
                    [id],
                    |r| r.get(0),
                )
                .unwrap()
            };
            let c: Vec<String> = ids.iter().map(conv).collect();
            assert_eq!(c[0], c[1], "rebuilt: {rebuilt}");
            assert_eq!(c[1], c[2], "rebuilt: {rebuilt}");
            assert_ne!(c[3], c[2]);
            assert_ne!(c[4], c[2]);
            assert_ne!(c[4], c[3]);
        }
    }

    #[test]
    fn the_queue_queries_run_on_indexes_never_over_every_job() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("inlet.db");
        let store = SqliteStore::open(&path, Duration::from_secs(1), 100).unwrap();
        let conn = open_conn(&path, Duration::from_secs(1)).unwrap();
        for sql in [writer::COUNT_PENDING, writer::COUNT_DEAD, queries::LANE_DUE] {
            let mut stmt = conn.prepare(&format!("EXPLAIN QUERY PLAN {sql}")).unwrap();
            let mut rows = stmt.raw_query();
            let mut plan = Vec::new();
            while let Some(row) = rows.next().unwrap() {
                plan.push(row.get::<_, String>(3).unwrap());
            }
            // `SCAN jobs USING .. INDEX jobs_pending` walks the pending
            // jobs only; a bare `SCAN jobs` walks every job ever run.
            let whole_table = plan
                .iter()
                .any(|l| l.starts_with("SCAN jobs") && !l.contains("INDEX"));
            let partial = plan
                .iter()
                .any(|l| l.contains("jobs_pending") || l.contains("jobs_dead"));
            assert!(!whole_table && partial, "{sql}\n  plan: {plan:?}");
        }
        drop(store);
    }

    /// How long a start takes to rebuild the dedup index from the log
    /// (BENCHMARKS.md). Keys shaped like Twilio message SIDs.
    #[test]
    #[ignore = "a measurement: KEYS=5000000 cargo test --release --lib sqlite::tests::dedup_rebuild -- --ignored --nocapture"]
    fn dedup_rebuild() {
        let n: u64 = std::env::var("KEYS").map_or(5_000_000, |s| s.parse().unwrap());
        let (_dir, mut conn) = fresh_db();
        let tx = conn.transaction().unwrap();
        {
            let mut insert = tx
                .prepare("INSERT INTO dedup_keys (source, key, seen_at) VALUES ('sms', ?1, ?2)")
                .unwrap();
            for i in 0..n {
                let sid = format!(
                    "SM{:032x}",
                    u128::from(i).wrapping_mul(0x9E37_79B9_7F4A_7C15_F39C)
                );
                insert.execute(rusqlite::params![sid, i as i64]).unwrap();
            }
        }
        tx.commit().unwrap();
        let t = std::time::Instant::now();
        let index = load_dedup(&conn).unwrap();
        let took = t.elapsed();
        drop(index);
        eprintln!(
            "{n} keys: index rebuilt in {took:?}, {:.0} keys/s",
            n as f64 / took.as_secs_f64()
        );
    }
}
