//! Logging through `tracing` with a non-blocking writer (a slow stderr
//! never stalls a request), and the process-wide Prometheus recorder.

use std::sync::OnceLock;
use std::time::Duration;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tracing_appender::non_blocking::WorkerGuard;
use tracing_subscriber::EnvFilter;

/// Installs the log subscriber; keep the guard alive until exit so buffered
/// lines are flushed. `RUST_LOG` filters (default `info`).
pub fn init_logging() -> WorkerGuard {
    let (writer, guard) = tracing_appender::non_blocking(std::io::stderr());
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer)
        .with_target(false)
        .try_init();
    guard
}

/// Latency buckets in seconds, fine-grained below 10 ms where ACKs live.
const LATENCY_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0, 2.5, 5.0, 10.0,
];

/// How often histogram samples are folded into their buckets.
pub const UPKEEP_EVERY: Duration = Duration::from_secs(5);
/// The name of the thread that does it.
pub const UPKEEP_THREAD: &str = "inlet-metrics";

/// The process-wide recorder, installed on first use (several apps in one
/// test process share it), with its upkeep thread.
///
/// The exporter keeps every histogram sample (a value and a time) until
/// the samples are folded into buckets, which only a scrape or an upkeep
/// run does. Without the upkeep thread a gateway nobody scrapes grew with
/// every ACK, forever (`unscraped_samples_pile_up_until_upkeep` below:
/// about 16 bytes of resident memory a sample).
pub fn metrics_handle() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let builder = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), LATENCY_BUCKETS)
                .expect("buckets are non-empty");
            let recorder = builder.build_recorder();
            let handle = recorder.handle();
            // Fails only if another recorder is installed: then ours just
            // renders nothing, which is not worth refusing to start.
            let _ = metrics::set_global_recorder(recorder);
            let upkeep = handle.clone();
            // A plain thread: the recorder outlives any runtime, and tests
            // make it outside one. If it cannot start, samples wait for
            // the next scrape instead.
            let started = std::thread::Builder::new()
                .name(UPKEEP_THREAD.into())
                .spawn(move || {
                    loop {
                        std::thread::sleep(UPKEEP_EVERY);
                        upkeep.run_upkeep();
                    }
                });
            if let Err(e) = started {
                tracing::warn!(error = %e, "Cannot start the metrics upkeep thread.");
            }
            handle
        })
        .clone()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn thread_names() -> Vec<String> {
        std::fs::read_dir("/proc/self/task")
            .unwrap()
            .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
            .map(|n| n.trim().to_string())
            .collect()
    }

    #[test]
    fn the_recorder_comes_with_its_upkeep_thread() {
        let handle = metrics_handle();
        // A new thread names itself once it runs, so right after the spawn
        // it may still carry its parent's name: wait for it (bounded).
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while !thread_names().iter().any(|n| n == UPKEEP_THREAD) {
            assert!(std::time::Instant::now() < deadline, "{:?}", thread_names());
            std::thread::sleep(Duration::from_millis(10));
        }
        // Samples recorded and never scraped are still rendered once.
        metrics::histogram!("inlet_test_upkeep_seconds").record(0.001);
        handle.run_upkeep();
        assert!(
            handle
                .render()
                .contains("inlet_test_upkeep_seconds_count 1"),
            "{}",
            handle.render()
        );
    }
}

/// What the upkeep thread is for, measured: run by hand, with
/// `cargo test --release --lib unscraped_samples -- --ignored --nocapture`
/// (a process of its own: resident memory is process-wide).
#[cfg(test)]
mod probe {
    use metrics::Recorder as _;

    fn resident_kb() -> u64 {
        let status = std::fs::read_to_string("/proc/self/status").unwrap();
        let line = status.lines().find(|l| l.starts_with("VmRSS")).unwrap();
        line.split_whitespace().nth(1).unwrap().parse().unwrap()
    }

    #[test]
    #[ignore = "measures process memory; run alone"]
    fn unscraped_samples_pile_up_until_upkeep() {
        const SAMPLES: u64 = 2_000_000;
        let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
        let key = metrics::Key::from_name("probe_seconds");
        let meta = metrics::Metadata::new("probe", metrics::Level::INFO, None);
        let histogram = recorder.register_histogram(&key, &meta);
        let before = resident_kb();
        for _ in 0..SAMPLES {
            histogram.record(0.001);
        }
        let grown = resident_kb() - before;
        println!(
            "{SAMPLES} samples, never scraped: resident {before} -> {} kB, {} bytes a sample",
            before + grown,
            grown * 1024 / SAMPLES
        );
        assert!(grown * 1024 >= 8 * SAMPLES, "the samples are kept");
        // After upkeep the same number of samples fits in the memory
        // the first ones freed.
        recorder.handle().run_upkeep();
        let settled = resident_kb();
        for _ in 0..SAMPLES {
            histogram.record(0.001);
        }
        recorder.handle().run_upkeep();
        let again = resident_kb().saturating_sub(settled);
        println!("another {SAMPLES} with upkeep: +{again} kB");
        assert!(again < grown / 4, "upkeep let the memory be reused");
    }
}
