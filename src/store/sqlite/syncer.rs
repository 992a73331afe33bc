//! Pipelined durability: the fsync of one batch overlaps the next batch's
//! work.
//!
//! The writer commits with `synchronous=NORMAL`: the commit writes its WAL
//! frames (into the page cache) but does not wait for the disk. It then
//! hands the batch's answers to this thread, which calls `fdatasync` on the
//! WAL file and only then answers them. Meanwhile the writer already runs
//! the next batch. Every frame written before an `fdatasync` starts is on
//! disk when it returns, so one call settles every batch queued by then:
//! group commit, without the writer idling through the disk's latency.
//!
//! Nothing is answered before the fsync that covers it, claims and reply
//! markers included, so no caller (HTTP client or worker) ever acts on a
//! write the disk does not hold. (A transaction that wrote nothing, such
//! as a claim, skips this thread when no earlier commit awaits its fsync:
//! what it read is on disk already.) SQLite's own guarantees for NORMAL (the
//! database stays consistent; the WAL is synced before each checkpoint)
//! are unchanged.

use std::fs::File;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::time::Instant;

use tokio::sync::mpsc::WeakSender;

use super::writer::{Done, Op};
use crate::store::StoreError;

/// Sends committed batches to the syncing thread.
pub struct Syncer {
    tx: mpsc::Sender<Vec<Done>>,
    /// Batches handed over and not yet answered.
    unsynced: Arc<AtomicUsize>,
}

impl Syncer {
    /// Starts the thread on the WAL file of the database at `db`. The WAL
    /// must exist (the writer has committed once); SQLite keeps the same file
    /// for as long as any connection is open. `writer` hears [`Op::Synced`]
    /// whenever every batch handed over is on disk (weak: the writer still
    /// ends when its last real sender goes).
    /// `fsyncs` counts the calls made.
    pub fn spawn(
        db: &Path,
        writer: WeakSender<Op>,
        fsyncs: Arc<AtomicU64>,
    ) -> Result<Self, StoreError> {
        let mut wal = db.as_os_str().to_owned();
        wal.push("-wal");
        let wal = File::open(&wal).map_err(|e| {
            StoreError::Unavailable(format!("cannot open {}: {e}", Path::new(&wal).display()))
        })?;
        let (tx, rx) = mpsc::channel::<Vec<Done>>();
        let unsynced = Arc::new(AtomicUsize::new(0));
        let counter = unsynced.clone();
        std::thread::Builder::new()
            .name("inlet-sqlite-sync".into())
            .spawn(move || run(wal, rx, counter, writer, fsyncs))
            .map_err(|e| StoreError::Internal(format!("cannot start the sync thread: {e}")))?;
        Ok(Self { tx, unsynced })
    }

    /// True when no handed-over batch waits for its fsync: the next commit
    /// can be synced at once.
    pub fn idle(&self) -> bool {
        self.unsynced.load(Ordering::Acquire) == 0
    }

    /// Answers `done` once the disk holds it.
    pub fn settle(&self, done: Vec<Done>) {
        self.unsynced.fetch_add(1, Ordering::AcqRel);
        if let Err(mpsc::SendError(done)) = self.tx.send(done) {
            self.unsynced.fetch_sub(1, Ordering::AcqRel);
            // The thread is gone (it never exits while we live): say so
            // rather than let anyone believe the write is durable.
            let e = StoreError::Unavailable("the store sync thread has stopped".into());
            for d in done {
                d.fail(&e);
            }
        }
    }
}

/// Runs until the writer drops its [`Syncer`], settling what is left.
fn run(
    wal: File,
    rx: mpsc::Receiver<Vec<Done>>,
    unsynced: Arc<AtomicUsize>,
    writer: WeakSender<Op>,
    fsyncs: Arc<AtomicU64>,
) {
    let fsync_seconds = metrics::histogram!("inlet_stage_seconds", "stage" => "fsync");
    let mut batches = Vec::new();
    while let Ok(first) = rx.recv() {
        batches.push(first);
        while let Ok(more) = rx.try_recv() {
            batches.push(more);
        }
        let taken = batches.len();
        let started = Instant::now();
        let synced = wal.sync_data();
        fsyncs.fetch_add(1, Ordering::Relaxed);
        fsync_seconds.record(started.elapsed().as_secs_f64());
        if unsynced.fetch_sub(taken, Ordering::AcqRel) == taken
            && let Some(w) = writer.upgrade()
        {
            // A full queue holds work, which wakes the writer anyway.
            let _ = w.try_send(Op::Synced);
        }
        match synced {
            Ok(()) => {
                for d in batches.drain(..).flatten() {
                    d.send();
                }
            }
            Err(e) => {
                // The rows are committed but may not be on disk: the callers
                // hear 503 and retry, and a retried message is then found as
                // a duplicate, so nothing is lost either way.
                tracing::error!(error = %e, "fsync of the SQLite WAL failed.");
                let e = StoreError::Unavailable(format!("fsync failed: {e}"));
                for d in batches.drain(..).flatten() {
                    d.fail(&e);
                }
            }
        }
    }
}
