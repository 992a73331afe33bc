//! The request loop both modes share: post the next body, count the
//! answer for the progress bar, and tally it when it is measured.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use tokio::task::JoinError;
use tokio_util::sync::CancellationToken;

use super::BodyFactory;
use super::conn::{Conn, Outcome};
use super::report::{Tally, record};

/// Live counts for the progress bar, warmup included.
#[derive(Debug, Default)]
pub struct Progress {
    pub finished: AtomicU64,
    pub failed: AtomicU64,
}

/// One worker's measured requests, and when the last of them ended.
pub struct Measured {
    pub tally: Tally,
    pub last_done: Option<Instant>,
}

impl Measured {
    pub fn new() -> Self {
        Self {
            tally: Tally::new(),
            last_done: None,
        }
    }

    /// All workers' results in one.
    pub fn merge(results: Vec<Result<Measured, JoinError>>) -> anyhow::Result<Measured> {
        let mut all = Measured::new();
        for r in results {
            let m = r?;
            all.tally.merge(&m.tally);
            all.last_done = all.last_done.max(m.last_done);
        }
        Ok(all)
    }

    /// Posts the next body on `conn` and counts the answer in `progress`.
    /// With `latency_from` the request is measured: tallied here, with its
    /// latency running from that instant (errors get no latency). `false`
    /// when `cancel` fired first: the worker stops.
    pub async fn post_next(
        &mut self,
        conn: &mut Conn,
        bodies: &BodyFactory,
        cancel: &CancellationToken,
        progress: &Progress,
        latency_from: Option<Instant>,
    ) -> bool {
        let outcome = tokio::select! {
            _ = cancel.cancelled() => return false,
            o = conn.post(bodies.next_body()) => o,
        };
        let done = Instant::now();
        progress.finished.fetch_add(1, Ordering::Relaxed);
        if outcome == Outcome::Error {
            progress.failed.fetch_add(1, Ordering::Relaxed);
        }
        let Some(from) = latency_from else {
            return true;
        };
        match outcome {
            Outcome::Success => self.tally.ok += 1,
            Outcome::NotSuccess => self.tally.non_2xx += 1,
            Outcome::Error => {
                self.tally.errors += 1;
                return true;
            }
        }
        record(&mut self.tally.hist, done.saturating_duration_since(from));
        self.last_done = Some(done);
        true
    }
}
