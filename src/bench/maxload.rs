//! Max throughput: `--connections` closed-loop workers, each posting its
//! next request as soon as the previous one is answered, for the warmup
//! and then the measured duration. Latency here is from the actual send
//! (closed loop hides queueing; use `--rate` for honest latency).

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use super::conn::Conn;
use super::measure::{Measured, Progress};
use super::report::Summary;
use super::{BenchArgs, BodyFactory, Target};

struct Shared {
    measure_from: Instant,
    end: Instant,
    progress: Progress,
}

pub async fn run(
    args: &BenchArgs,
    target: &Target,
    bodies: BodyFactory,
) -> anyhow::Result<Summary> {
    let conns = super::connect_all(target, args.connections, args.timeout).await?;
    let start = Instant::now();
    let shared = Arc::new(Shared {
        measure_from: start + args.warmup,
        end: start + args.warmup + args.duration,
        progress: Progress::default(),
    });
    let cancel = CancellationToken::new();
    let workers: Vec<_> = conns
        .into_iter()
        .map(|c| tokio::spawn(worker(c, shared.clone(), bodies.clone(), cancel.clone())))
        .collect();

    let bar = super::progress_bar(args.quiet, args.warmup + args.duration);
    let ticker = {
        let (shared, bar) = (shared.clone(), bar.clone());
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(100)).await;
                bar.set_position(start.elapsed().as_millis() as u64);
                let done = shared.progress.finished.load(Ordering::Relaxed);
                let secs = start.elapsed().as_secs_f64().max(1e-3);
                bar.set_message(format!(
                    "done {done} ({:.0}/s) errors {}",
                    done as f64 / secs,
                    shared.progress.failed.load(Ordering::Relaxed)
                ));
            }
        })
    };

    let all_done = futures::future::join_all(workers);
    tokio::pin!(all_done);
    let mut interrupted = false;
    let results = tokio::select! {
        r = &mut all_done => r,
        _ = tokio::signal::ctrl_c() => {
            interrupted = true;
            cancel.cancel();
            all_done.await
        }
    };
    ticker.abort();
    bar.finish_and_clear();
    if interrupted {
        eprintln!("interrupted: reporting what was measured so far");
    }

    let Measured { tally, last_done } = Measured::merge(results)?;
    let window_end = last_done.unwrap_or_else(Instant::now).max(if interrupted {
        shared.measure_from
    } else {
        shared.end
    });
    Ok(Summary::new(
        "max",
        args,
        None,
        &tally,
        0,
        window_end.saturating_duration_since(shared.measure_from),
    ))
}

async fn worker(
    mut conn: Conn,
    shared: Arc<Shared>,
    bodies: BodyFactory,
    cancel: CancellationToken,
) -> Measured {
    let mut measured = Measured::new();
    loop {
        let sent = Instant::now();
        if sent >= shared.end {
            break;
        }
        let latency_from = (sent >= shared.measure_from).then_some(sent);
        if !measured
            .post_next(&mut conn, &bodies, &cancel, &shared.progress, latency_from)
            .await
        {
            break;
        }
    }
    measured
}
