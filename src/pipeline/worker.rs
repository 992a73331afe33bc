//! The worker pool: a dispatcher leases due jobs (as many as there are free
//! slots), runs each on its own task, and commits the attempt together with
//! the job's next state. New work wakes the dispatcher through the store's
//! work signal, so the happy path has no polling delay; a timer covers
//! retries coming due and leases running out.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::store::{AttemptRecord, ClaimedJob, JobCompletion, JobNext, Lane, Store, now_millis};

use super::{ActionError, ActionOutput, Actions, Backoff};

/// The longest the dispatcher sleeps without a wake-up.
const IDLE_RECHECK: Duration = Duration::from_secs(5);

#[derive(Debug, Clone, Copy)]
pub struct WorkerSettings {
    pub concurrency: usize,
    pub max_attempts: u32,
    pub backoff: Backoff,
    pub lease: Duration,
}

impl WorkerSettings {
    /// A run is cut well inside its lease, so a slow action never lets a
    /// second worker pick the same job up while the first still runs.
    fn run_timeout(&self) -> Duration {
        self.lease.mul_f64(0.8)
    }
}

#[derive(Clone)]
pub struct WorkerPool {
    store: Arc<dyn Store>,
    actions: Actions,
    settings: WorkerSettings,
    /// `inlet_stage_seconds{stage="action"}`, registered once.
    action_seconds: metrics::Histogram,
}

impl WorkerPool {
    pub fn new(store: Arc<dyn Store>, actions: Actions, settings: WorkerSettings) -> Self {
        Self {
            store,
            actions,
            settings,
            action_seconds: metrics::histogram!("inlet_stage_seconds", "stage" => "action"),
        }
    }

    /// Runs until `shutdown`, then lets running jobs finish for up to
    /// `grace`; jobs still running after that are left leased and run again
    /// after a restart.
    pub async fn run_until_stopped(self, shutdown: CancellationToken, grace: Duration) {
        let slots = Arc::new(Semaphore::new(self.settings.concurrency));
        let work = self.store.work_signal();
        match self.store.fail_orphans(&self.actions.all_lanes()).await {
            Ok(0) => {}
            Ok(n) => tracing::warn!(
                jobs = n,
                "Jobs of actions no longer configured are now dead letters."
            ),
            Err(e) => tracing::warn!(error = %e, "Cannot check for jobs of removed actions."),
        }
        let mut tasks = JoinSet::new();
        let mut maybe_more = true;
        let mut wake_at = Instant::now() + IDLE_RECHECK;
        while !shutdown.is_cancelled() {
            let free = slots.available_permits();
            if maybe_more && free > 0 {
                // Lanes whose destination is cut off by an open breaker are
                // left out: their jobs wait untouched, however many there are.
                let (lanes, reopen) = self.actions.lanes(free);
                match self.store.claim(&lanes, free, self.settings.lease).await {
                    Ok(jobs) => {
                        maybe_more = jobs.len() == free;
                        for job in jobs {
                            let Ok(permit) = slots.clone().try_acquire_owned() else {
                                break;
                            };
                            let pool = self.clone();
                            tasks.spawn(async move {
                                pool.execute(job).await;
                                drop(permit);
                            });
                        }
                        if !maybe_more {
                            wake_at = self.next_wake(&lanes).await;
                            if let Some(reopen) = reopen {
                                wake_at = wake_at.min(Instant::now() + reopen);
                            }
                        }
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "Cannot claim jobs; retrying.");
                        maybe_more = false;
                        wake_at = Instant::now() + Duration::from_secs(1);
                    }
                }
            }
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = work.notified() => maybe_more = true,
                _ = tokio::time::sleep_until(wake_at.into()) => {
                    maybe_more = true;
                    wake_at = Instant::now() + IDLE_RECHECK;
                }
                Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
            }
        }
        if !tasks.is_empty() {
            tracing::info!(running = tasks.len(), "Waiting for running jobs.");
            let drained =
                tokio::time::timeout(grace, async { while tasks.join_next().await.is_some() {} })
                    .await;
            if drained.is_err() {
                tracing::warn!(
                    left = tasks.len(),
                    "Jobs still running at shutdown; they run again after restart."
                );
                tasks.abort_all();
            }
        }
    }

    /// When to look for due work next: the earliest pending run time or
    /// lease expiry, but no later than [`IDLE_RECHECK`].
    async fn next_wake(&self, lanes: &[Lane]) -> Instant {
        let cap = Instant::now() + IDLE_RECHECK;
        match self.store.next_due(lanes).await {
            Ok(Some(at)) => {
                let wait = Duration::from_millis((at - now_millis()).max(0) as u64);
                (Instant::now() + wait).min(cap)
            }
            _ => cap,
        }
    }

    /// Runs one job and commits its outcome.
    async fn execute(&self, job: ClaimedJob) {
        let started = Instant::now();
        let result = match self.actions.get(&job.source, &job.action) {
            None => Err(ActionError::Permanent {
                error: format!(
                    "action {:?} is not configured for source {:?}",
                    job.action, job.source
                ),
                destination: None,
                status_code: None,
            }),
            Some(action) => {
                match tokio::time::timeout(self.settings.run_timeout(), action.run(&job)).await {
                    Ok(r) => r,
                    Err(_) => Err(ActionError::Retryable {
                        error: format!("timed out after {:?}", self.settings.run_timeout()),
                        retry_after: None,
                        destination: None,
                        status_code: None,
                    }),
                }
            }
        };
        let elapsed = started.elapsed();
        self.action_seconds.record(elapsed.as_secs_f64());
        let completion = self.decide(&job, result, elapsed);
        if matches!(completion.next, JobNext::Defer { .. }) {
            metrics::counter!("inlet_job_deferrals_total", "action" => job.action.clone())
                .increment(1);
        }
        if let Some(a) = &completion.attempt {
            metrics::counter!("inlet_job_attempts_total", "action" => job.action.clone(), "outcome" => a.outcome.clone())
                .increment(1);
            if a.outcome != "success" && a.outcome != "skipped" {
                tracing::info!(job = job.job_id, message = %job.message_id, action = %job.action, outcome = %a.outcome, error = a.error.as_deref().unwrap_or(""), "Job attempt failed.");
            }
        }
        if let Err(e) = self.store.complete(completion).await {
            // The lease runs out and the job runs again: at least once.
            tracing::warn!(job = job.job_id, error = %e, "Cannot record job outcome; it will run again.");
        }
    }

    /// Turns an action's result into the job's next state (SPEC §4).
    fn decide(
        &self,
        job: &ClaimedJob,
        result: Result<ActionOutput, ActionError>,
        elapsed: Duration,
    ) -> JobCompletion {
        let now = now_millis();
        let attempt_no = job.attempts + 1;
        let attempt = |outcome: &str,
                       destination: Option<String>,
                       status_code: Option<u16>,
                       error: Option<String>| {
            Some(AttemptRecord {
                action: job.action.clone(),
                destination,
                outcome: outcome.to_string(),
                status_code,
                duration_ms: elapsed.as_millis() as u64,
                error,
            })
        };
        let mut c = JobCompletion::done(job, now);
        match result {
            Ok(out) => {
                let outcome = if out.skipped.is_some() {
                    "skipped"
                } else {
                    "success"
                };
                c.attempt = attempt(outcome, out.destination, out.status_code, out.skipped);
                c.set_intent = out.set_intent;
                c.set_conversation = out.set_conversation;
                c.follow_ups = out.follow_ups;
            }
            Err(ActionError::Retryable {
                error,
                retry_after,
                destination,
                status_code,
            }) => {
                if attempt_no >= self.settings.max_attempts {
                    c.attempt = attempt("dead", destination, status_code, Some(error.clone()));
                    c.next = JobNext::Dead {
                        error: format!("gave up after {attempt_no} attempts: {error}"),
                    };
                } else {
                    let wait = self.settings.backoff.delay(attempt_no, retry_after);
                    c.attempt = attempt("retry", destination, status_code, Some(error));
                    c.next = JobNext::Retry {
                        at: now + wait.as_millis() as i64,
                    };
                }
            }
            Err(ActionError::Permanent {
                error,
                destination,
                status_code,
            }) => {
                c.attempt = attempt("dead", destination, status_code, Some(error.clone()));
                c.next = JobNext::Dead { error };
            }
            Err(ActionError::Defer { after, .. }) => {
                c.next = JobNext::Defer {
                    at: now + after.as_millis() as i64,
                };
            }
        }
        c
    }
}
