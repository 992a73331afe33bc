//! Open loop: request `i` is due at `start + i/rate`. A scheduler thread
//! releases each request at its due time into a queue; `--connections`
//! workers, each owning one connection, take them in order. Latency runs
//! from the due time, so time spent queued behind a slow server counts.
//!
//! The scheduler is an OS thread with `std::thread::sleep` rather than a
//! tokio timer: tokio's timer wheel has 1 ms granularity, which at
//! thousands of requests per second would delay most requests past their
//! due time and show up as client-made latency.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::{Mutex, mpsc};
use tokio_util::sync::CancellationToken;

use super::conn::Conn;
use super::measure::{Measured, Progress};
use super::report::Summary;
use super::{BenchArgs, BodyFactory, Target};

/// How many requests a window of `window` holds at `rate` per second.
pub fn planned_requests(rate: f64, window: Duration) -> u64 {
    // Round, not floor: 1000/s for 0.3 s is 300 even if the float is 299.99…
    (rate * window.as_secs_f64()).round() as u64
}

/// When request `i` is due, relative to the start. Computed from `i`
/// directly (never by adding intervals), so the schedule does not drift.
pub fn intended_offset(i: u64, rate: f64) -> Duration {
    Duration::from_nanos((i as f64 * 1e9 / rate).round() as u64)
}

/// Shared between the scheduler, workers and progress bar.
struct Shared {
    start: Instant,
    rate: f64,
    /// Requests before this index are warmup: sent, not measured.
    warmup_n: u64,
    dispatched: AtomicU64,
    progress: Progress,
    stop: AtomicBool,
}

pub async fn run(
    args: &BenchArgs,
    target: &Target,
    rate: f64,
    bodies: BodyFactory,
) -> anyhow::Result<Summary> {
    let conns = super::connect_all(target, args.connections, args.timeout).await?;
    let warmup_n = planned_requests(rate, args.warmup);
    let total = planned_requests(rate, args.warmup + args.duration);
    anyhow::ensure!(
        total > warmup_n,
        "--rate {rate} for --duration {:?} schedules no request",
        args.duration
    );
    // A little lead so every worker is waiting before the first is due.
    let start = Instant::now() + Duration::from_millis(20);
    let shared = Arc::new(Shared {
        start,
        rate,
        warmup_n,
        dispatched: AtomicU64::new(0),
        progress: Progress::default(),
        stop: AtomicBool::new(false),
    });

    let (tx, rx) = mpsc::unbounded_channel::<u64>();
    let rx = Arc::new(Mutex::new(rx));
    let cancel = CancellationToken::new();
    let mut workers = Vec::with_capacity(conns.len());
    for conn in conns {
        workers.push(tokio::spawn(worker(
            conn,
            rx.clone(),
            shared.clone(),
            bodies.clone(),
            cancel.clone(),
        )));
    }

    let scheduler = {
        let shared = shared.clone();
        std::thread::Builder::new()
            .name("bench-schedule".into())
            .spawn(move || schedule(&shared, total, tx))?
    };

    let bar = super::progress_bar(args.quiet, args.warmup + args.duration);
    let ticker = {
        let (shared, bar) = (shared.clone(), bar.clone());
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(100)).await;
                bar.set_position(shared.start.elapsed().as_millis() as u64);
                bar.set_message(format!(
                    "sent {} done {} errors {}",
                    shared.dispatched.load(Ordering::Relaxed),
                    shared.progress.finished.load(Ordering::Relaxed),
                    shared.progress.failed.load(Ordering::Relaxed),
                ));
            }
        })
    };

    // Wait for the schedule to end and the queue to drain, giving late
    // requests up to `--timeout` after the last one was due.
    let deadline = start + intended_offset(total, rate) + args.timeout;
    let all_done = futures::future::join_all(workers);
    tokio::pin!(all_done);
    let mut interrupted = false;
    let results = tokio::select! {
        r = &mut all_done => r,
        _ = tokio::time::sleep_until(deadline.into()) => {
            cancel.cancel();
            all_done.await
        }
        _ = tokio::signal::ctrl_c() => {
            interrupted = true;
            cancel.cancel();
            all_done.await
        }
    };
    shared.stop.store(true, Ordering::Relaxed);
    ticker.abort();
    bar.finish_and_clear();
    if interrupted {
        eprintln!("interrupted: reporting what was measured so far");
    }
    // The scheduler stops at its next wakeup (at most 50 ms).
    let _ = tokio::task::spawn_blocking(move || scheduler.join()).await;

    let Measured { tally, last_done } = Measured::merge(results)?;
    let measured_dispatched = shared
        .dispatched
        .load(Ordering::Relaxed)
        .saturating_sub(warmup_n);
    let measured_finished = tally.ok + tally.non_2xx + tally.errors;
    let unfinished = measured_dispatched.saturating_sub(measured_finished);

    let window_start = start + intended_offset(warmup_n, rate);
    let window_end = if interrupted {
        Instant::now()
    } else {
        (start + intended_offset(total, rate)).max(last_done.unwrap_or(window_start))
    };
    Ok(Summary::new(
        "rate",
        args,
        Some(rate),
        &tally,
        unfinished,
        window_end.saturating_duration_since(window_start),
    ))
}

/// The scheduler thread: releases request `i` at its due time.
fn schedule(shared: &Shared, total: u64, tx: mpsc::UnboundedSender<u64>) {
    for i in 0..total {
        let due = shared.start + intended_offset(i, shared.rate);
        loop {
            if shared.stop.load(Ordering::Relaxed) {
                return;
            }
            let now = Instant::now();
            if now >= due {
                break;
            }
            // Short naps so a stop request is seen promptly at low rates.
            std::thread::sleep((due - now).min(Duration::from_millis(50)));
        }
        if tx.send(i).is_err() {
            return;
        }
        shared.dispatched.fetch_add(1, Ordering::Relaxed);
    }
}

async fn worker(
    mut conn: Conn,
    queue: Arc<Mutex<mpsc::UnboundedReceiver<u64>>>,
    shared: Arc<Shared>,
    bodies: BodyFactory,
    cancel: CancellationToken,
) -> Measured {
    let mut measured = Measured::new();
    loop {
        let next = tokio::select! {
            _ = cancel.cancelled() => break,
            i = async { queue.lock().await.recv().await } => i,
        };
        let Some(i) = next else { break };
        let due = shared.start + intended_offset(i, shared.rate);
        let latency_from = (i >= shared.warmup_n).then_some(due);
        if !measured
            .post_next(&mut conn, &bodies, &cancel, &shared.progress, latency_from)
            .await
        {
            break;
        }
    }
    measured
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedule_is_evenly_spaced_and_does_not_drift() {
        assert_eq!(intended_offset(0, 1000.0), Duration::ZERO);
        assert_eq!(intended_offset(1, 1000.0), Duration::from_millis(1));
        assert_eq!(intended_offset(1, 5000.0), Duration::from_micros(200));
        assert_eq!(intended_offset(3, 3.0), Duration::from_secs(1));
        // A million intervals of 1/3 ms land exactly on the second.
        assert_eq!(
            intended_offset(3_000_000, 3000.0),
            Duration::from_secs(1000)
        );
        let gaps: Vec<_> = (0..5)
            .map(|i| intended_offset(i + 1, 4000.0) - intended_offset(i, 4000.0))
            .collect();
        assert!(gaps.iter().all(|g| *g == Duration::from_micros(250)));
    }

    #[test]
    fn planned_counts_round_to_the_nearest_request() {
        assert_eq!(planned_requests(1000.0, Duration::from_secs(10)), 10_000);
        assert_eq!(planned_requests(5000.0, Duration::from_millis(300)), 1_500);
        assert_eq!(planned_requests(1000.0, Duration::from_millis(300)), 300);
        assert_eq!(planned_requests(1000.0, Duration::ZERO), 0);
        assert_eq!(planned_requests(0.5, Duration::from_secs(3)), 2);
    }
}
