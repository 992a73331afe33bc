//! `inlet bench`: a load generator for the ingest endpoint.
//!
//! Two modes:
//! - open loop (`--rate N`): request `i` is due at `start + i/N`, whether or
//!   not earlier requests have been answered, and its latency is counted
//!   from that *intended* time, so a stalled server is charged for every
//!   request it delayed (no coordinated omission). Requests that find every
//!   connection busy wait for one, and that wait is part of their latency.
//! - max throughput (`--max`): `--connections` closed-loop workers post as
//!   fast as the server answers; the figure that matters is requests/s.
//!
//! Each request is one `sms-gateway` message with a unique `guid`, so every
//! request is a real first-time insert, never a duplicate.
//!
//! Layout: `target` parses and checks the URL (loopback only), `conn` is one
//! keep-alive HTTP/1.1 connection, `openloop` and `maxload` drive the two
//! modes through the request loop in `measure`, `report` turns histograms
//! into the summary, `steal` reads how much CPU the hypervisor took.

mod conn;
mod maxload;
mod measure;
mod openloop;
mod report;
mod steal;
mod target;

use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use clap::{ArgGroup, Args};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

pub use report::Summary;
pub use target::Target;

/// Arguments of `inlet bench`.
#[derive(Debug, Clone, Args)]
#[command(group(ArgGroup::new("mode").required(true).args(["rate", "max"])))]
pub struct BenchArgs {
    /// Target URL. Only loopback hosts (127.0.0.0/8, ::1, localhost) are
    /// accepted: this tool must never load someone else's server.
    #[arg(long, default_value = "http://127.0.0.1:8080/hooks/sms")]
    pub url: String,
    /// Open loop: requests per second, sent on a fixed schedule.
    #[arg(long)]
    pub rate: Option<f64>,
    /// Max throughput: closed-loop workers post as fast as possible.
    #[arg(long)]
    pub max: bool,
    /// How long to measure, after the warmup ("10", "10s", "500ms").
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub duration: Duration,
    /// Load sent before measuring starts (not counted).
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    pub warmup: Duration,
    /// Keep-alive connections: the bound on requests in flight.
    #[arg(long, short = 'c', default_value_t = 32)]
    pub connections: usize,
    /// Per-request timeout; a request that takes longer counts as an error.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub timeout: Duration,
    /// Client runtime threads (default: the number of CPUs).
    #[arg(long)]
    pub threads: Option<usize>,
    /// Print a one-line JSON summary on stdout (the human report goes to
    /// stderr unless --quiet).
    #[arg(long)]
    pub json: bool,
    /// No progress bar and no human report.
    #[arg(long, short)]
    pub quiet: bool,
}

/// Entry point from the CLI: builds the client runtime and runs.
pub fn main(args: BenchArgs) -> ExitCode {
    let mut rt = tokio::runtime::Builder::new_multi_thread();
    if let Some(n) = args.threads {
        rt.worker_threads(n.max(1));
    }
    let rt = match rt.enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(args)) {
        Ok(_) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Runs one benchmark and prints its report.
pub async fn run(args: BenchArgs) -> anyhow::Result<Summary> {
    let target = Target::parse(&args.url)?;
    anyhow::ensure!(args.connections >= 1, "--connections must be at least 1");
    anyhow::ensure!(!args.duration.is_zero(), "--duration must be positive");
    if let Some(rate) = args.rate {
        anyhow::ensure!(
            rate.is_finite() && rate > 0.0,
            "--rate must be a positive number"
        );
    }
    let bodies = BodyFactory::new();
    let cpu_before = steal::CpuTimes::now();
    let mut summary = match args.rate {
        Some(rate) if !args.max => openloop::run(&args, &target, rate, bodies).await?,
        _ => maxload::run(&args, &target, bodies).await?,
    };
    summary.cpu_steal_pct = cpu_before
        .zip(steal::CpuTimes::now())
        .and_then(|(before, after)| after.steal_pct_since(&before));
    if args.json {
        println!("{}", summary.to_json_line());
        if !args.quiet {
            eprint!("{}", summary.human());
        }
    } else if !args.quiet {
        print!("{}", summary.human());
    }
    Ok(summary)
}

/// Opens `n` connections in parallel before the run starts.
pub(crate) async fn connect_all(
    target: &Target,
    n: usize,
    timeout: Duration,
) -> anyhow::Result<Vec<conn::Conn>> {
    let opens = (0..n).map(|_| async {
        let mut c = conn::Conn::new(target.clone(), timeout);
        match tokio::time::timeout(timeout, c.connect()).await {
            Ok(Ok(())) => Ok(c),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(anyhow::anyhow!("connecting timed out after {timeout:?}")),
        }
    });
    futures::future::try_join_all(opens).await.map_err(|e| {
        e.context(format!(
            "cannot reach {} (is the server running?)",
            target.url
        ))
    })
}

/// Makes request bodies: one `sms-gateway` message each, with a `guid`
/// unique across runs (a UUIDv7 run id plus a counter).
#[derive(Clone)]
pub(crate) struct BodyFactory {
    run_id: Arc<str>,
    next: Arc<AtomicU64>,
}

impl BodyFactory {
    pub(crate) fn new() -> Self {
        Self {
            run_id: uuid::Uuid::now_v7().simple().to_string().into(),
            next: Arc::new(AtomicU64::new(0)),
        }
    }

    pub(crate) fn next_body(&self) -> Bytes {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        sms_body(&self.run_id, n)
    }
}

fn sms_body(run_id: &str, n: u64) -> Bytes {
    // The fields an SMS forwarder app sends; guid changes, and
    // `time_received` carries the send time in Unix milliseconds so a
    // forward sink (examples/forward_sink.rs) can measure end to end.
    let sent_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0);
    Bytes::from(format!(
        concat!(
            r#"{{"date":"2026-01-01","hour":"12:00:00","time_received":"{sent_ms}","#,
            r#""message":"bench message {n}","number":"+1555{num:07}","guid":"bench-{run}-{n}"}}"#
        ),
        sent_ms = sent_ms,
        n = n,
        num = n % 10_000_000,
        run = run_id,
    ))
}

/// Accepts "10" (seconds), "2.5", or a humantime string ("10s", "500ms").
fn parse_duration(s: &str) -> Result<Duration, String> {
    if let Ok(secs) = s.parse::<f64>() {
        if secs.is_finite() && secs >= 0.0 {
            return Ok(Duration::from_secs_f64(secs));
        }
        return Err(format!("{s:?} is not a valid duration"));
    }
    humantime::parse_duration(s).map_err(|e| format!("{s:?}: {e}"))
}

/// A progress bar on stderr, hidden when stderr is not a terminal or with
/// `--quiet`. Its position is in milliseconds of the run.
pub(crate) fn progress_bar(quiet: bool, total: Duration) -> ProgressBar {
    use std::io::IsTerminal as _;
    if quiet || !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::with_draw_target(
        Some(total.as_millis() as u64),
        ProgressDrawTarget::stderr_with_hz(10),
    );
    if let Ok(style) =
        ProgressStyle::with_template("{spinner} [{bar:30}] {elapsed}/{duration} {msg}")
    {
        bar.set_style(style.progress_chars("=> "));
    }
    bar
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_are_valid_sms_gateway_messages_with_unique_guids() {
        let f = BodyFactory::new();
        let a: serde_json::Value = serde_json::from_slice(&f.next_body()).unwrap();
        let b: serde_json::Value = serde_json::from_slice(&f.next_body()).unwrap();
        for k in ["date", "hour", "time_received", "message", "number", "guid"] {
            assert!(a[k].is_string(), "missing {k}");
        }
        assert_ne!(a["guid"], b["guid"]);
        assert_ne!(
            BodyFactory::new().next_body(),
            BodyFactory::new().next_body()
        );
    }

    #[test]
    fn durations_accept_seconds_and_units() {
        assert_eq!(parse_duration("10").unwrap(), Duration::from_secs(10));
        assert_eq!(parse_duration("2.5").unwrap(), Duration::from_millis(2500));
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert!(parse_duration("-1").is_err());
        assert!(parse_duration("soon").is_err());
    }
}
