//! Histograms, counters and the summary printed at the end.

use std::fmt::Write as _;
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;

/// Latencies are recorded in microseconds, 1 µs to 10 min, 3 significant
/// digits.
pub fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 600_000_000, 3).expect("valid histogram bounds")
}

pub fn record(hist: &mut Histogram<u64>, latency: Duration) {
    let us = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
    hist.saturating_record(us.max(1));
}

/// Per-worker tallies, merged at the end.
pub struct Tally {
    pub hist: Histogram<u64>,
    pub ok: u64,
    pub non_2xx: u64,
    pub errors: u64,
}

impl Tally {
    pub fn new() -> Self {
        Self {
            hist: new_histogram(),
            ok: 0,
            non_2xx: 0,
            errors: 0,
        }
    }

    pub fn merge(&mut self, other: &Tally) {
        // Same bounds on both sides, so `add` cannot fail.
        let _ = self.hist.add(&other.hist);
        self.ok += other.ok;
        self.non_2xx += other.non_2xx;
        self.errors += other.errors;
    }
}

/// Latency percentiles in milliseconds.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Latency {
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
    pub mean: f64,
}

impl Latency {
    pub fn from_histogram(h: &Histogram<u64>) -> Self {
        let ms = |us: u64| round3(us as f64 / 1000.0);
        if h.is_empty() {
            return Latency {
                p50: 0.0,
                p90: 0.0,
                p99: 0.0,
                p999: 0.0,
                max: 0.0,
                mean: 0.0,
            };
        }
        Latency {
            p50: ms(h.value_at_quantile(0.50)),
            p90: ms(h.value_at_quantile(0.90)),
            p99: ms(h.value_at_quantile(0.99)),
            p999: ms(h.value_at_quantile(0.999)),
            max: ms(h.max()),
            mean: round3(h.mean() / 1000.0),
        }
    }
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

/// What one run measured. Serialized as the `--json` line.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    /// `"rate"` (open loop) or `"max"` (closed loop, max throughput).
    pub mode: &'static str,
    pub url: String,
    pub connections: usize,
    /// Open loop: the requested rate.
    pub target_rate: Option<f64>,
    pub warmup_s: f64,
    /// The measured window (warmup excluded), in seconds.
    pub elapsed_s: f64,
    /// Requests of the measured window that got an answer or an error.
    pub requests: u64,
    pub ok: u64,
    pub non_2xx: u64,
    pub errors: u64,
    /// Open loop: requests of the window still queued or in flight when
    /// the run gave up waiting for them.
    pub unfinished: u64,
    /// Answered requests (any status) per second.
    pub achieved_rps: f64,
    /// 2xx answers per second.
    pub ok_rps: f64,
    /// Open loop: from each request's intended send time; max: from the
    /// actual send. Answered requests only (errors are counted, not timed).
    pub latency_ms: Latency,
    /// Percent of the machine's CPU time the hypervisor took during the
    /// whole run, warmup included (`/proc/stat`; `null` where unknown). A
    /// run with much of it measured the host as much as the server.
    pub cpu_steal_pct: Option<f64>,
}

impl Summary {
    pub fn new(
        mode: &'static str,
        args: &super::BenchArgs,
        target_rate: Option<f64>,
        tally: &Tally,
        unfinished: u64,
        elapsed: Duration,
    ) -> Self {
        let secs = elapsed.as_secs_f64().max(1e-9);
        let answered = tally.ok + tally.non_2xx;
        Summary {
            mode,
            url: args.url.clone(),
            connections: args.connections,
            target_rate,
            warmup_s: args.warmup.as_secs_f64(),
            elapsed_s: round3(secs),
            requests: answered + tally.errors,
            ok: tally.ok,
            non_2xx: tally.non_2xx,
            errors: tally.errors,
            unfinished,
            achieved_rps: round1(answered as f64 / secs),
            ok_rps: round1(tally.ok as f64 / secs),
            latency_ms: Latency::from_histogram(&tally.hist),
            cpu_steal_pct: None,
        }
    }

    pub fn to_json_line(&self) -> String {
        serde_json::to_string(self).expect("a summary always serializes")
    }

    /// The report for people, several lines, ending in a newline.
    pub fn human(&self) -> String {
        let mut s = String::new();
        let mode = match self.target_rate {
            Some(r) => format!("open loop at {r} req/s"),
            None => "max throughput (closed loop)".to_string(),
        };
        let _ = writeln!(
            s,
            "{} -> {} for {:.1}s after {:.1}s warmup, {} connections",
            mode, self.url, self.elapsed_s, self.warmup_s, self.connections
        );
        let _ = writeln!(
            s,
            "  requests {}  2xx {}  non-2xx {}  errors {}  unfinished {}",
            self.requests, self.ok, self.non_2xx, self.errors, self.unfinished
        );
        let _ = writeln!(
            s,
            "  achieved {:.1} req/s ({:.1} 2xx/s)",
            self.achieved_rps, self.ok_rps
        );
        let from = if self.target_rate.is_some() {
            "from intended send time"
        } else {
            "from send"
        };
        let l = &self.latency_ms;
        let _ = writeln!(
            s,
            "  latency ms ({from}): p50 {:.3}  p90 {:.3}  p99 {:.3}  p99.9 {:.3}  max {:.3}  mean {:.3}",
            l.p50, l.p90, l.p99, l.p999, l.max, l.mean
        );
        if let Some(pct) = self.cpu_steal_pct {
            let _ = writeln!(
                s,
                "  CPU time stolen by the hypervisor during the run: {pct:.1} %"
            );
        }
        s
    }
}

fn round1(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tally_of(us: impl IntoIterator<Item = u64>) -> Tally {
        let mut t = Tally::new();
        for v in us {
            record(&mut t.hist, Duration::from_micros(v));
            t.ok += 1;
        }
        t
    }

    #[test]
    fn percentiles_are_in_milliseconds() {
        // 1..=1000 µs: p50 ≈ 0.5 ms, p99 ≈ 0.99 ms, max 1 ms.
        let l = Latency::from_histogram(&tally_of(1..=1000).hist);
        assert!((l.p50 - 0.5).abs() < 0.002, "{l:?}");
        assert!((l.p90 - 0.9).abs() < 0.002, "{l:?}");
        assert!((l.p99 - 0.99).abs() < 0.002, "{l:?}");
        assert!((l.p999 - 0.999).abs() < 0.002, "{l:?}");
        assert!((l.max - 1.0).abs() < 0.002, "{l:?}");
        assert!((l.mean - 0.5005).abs() < 0.002, "{l:?}");
    }

    #[test]
    fn empty_histogram_reports_zeros() {
        let l = Latency::from_histogram(&new_histogram());
        assert_eq!(l.p99, 0.0);
        assert_eq!(l.max, 0.0);
    }

    #[test]
    fn tallies_merge() {
        let mut a = tally_of([100, 200]);
        let mut b = tally_of([300]);
        b.errors = 2;
        b.non_2xx = 1;
        a.merge(&b);
        assert_eq!((a.ok, a.non_2xx, a.errors), (3, 1, 2));
        assert_eq!(a.hist.len(), 3);
    }

    fn args() -> crate::bench::BenchArgs {
        use clap::Parser as _;
        #[derive(clap::Parser)]
        struct P {
            #[command(flatten)]
            a: crate::bench::BenchArgs,
        }
        P::parse_from(["x", "--rate", "1000", "-c", "8"]).a
    }

    #[test]
    fn summary_formats_for_people_and_scripts() {
        let mut t = tally_of([250, 500, 1500]);
        t.non_2xx = 1;
        t.errors = 1;
        let mut s = Summary::new("rate", &args(), Some(1000.0), &t, 2, Duration::from_secs(2));
        s.cpu_steal_pct = Some(12.5);
        assert_eq!(s.requests, 5);
        assert_eq!(s.achieved_rps, 2.0);
        assert_eq!(s.ok_rps, 1.5);

        let human = s.human();
        assert!(human.contains("open loop at 1000 req/s"), "{human}");
        assert!(human.contains("p50 0.500"), "{human}");
        assert!(human.contains("p99.9 1.500"), "{human}");
        assert!(
            human.contains("2xx 3  non-2xx 1  errors 1  unfinished 2"),
            "{human}"
        );
        assert!(
            human.contains("stolen by the hypervisor during the run: 12.5 %"),
            "{human}"
        );

        let line = s.to_json_line();
        assert!(!line.contains('\n'));
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["mode"], "rate");
        assert_eq!(v["connections"], 8);
        assert_eq!(v["ok"], 3);
        assert_eq!(v["latency_ms"]["p50"], 0.5);
        assert_eq!(v["latency_ms"]["max"], 1.5);
        assert_eq!(v["cpu_steal_pct"], 12.5);
    }
}
