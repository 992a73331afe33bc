//! How much CPU the hypervisor took from this machine during a run.
//!
//! On a shared VM the other guests take the vCPUs away at times ("steal"):
//! in one 5,000/s benchmark the HTTP ceiling itself went from a p50 of
//! 0.2 to 1.3 ms while a sixth of the machine's CPU time was stolen
//! (BENCHMARKS.md). A run's latency then measures the host, not the
//! server, so every summary says how much was stolen while it ran, and a
//! comparison can tell a disturbed round from a slow server.
//!
//! Read from the first (`cpu`) line of `/proc/stat`: jiffies spent in
//! each state, all CPUs together. Nothing to read off Linux: `None`.

/// The machine's CPU time counters at one moment, in jiffies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CpuTimes {
    /// Every state: user, nice, system, idle, iowait, irq, softirq, steal
    /// (guest time is already counted in user and nice).
    total: u64,
    steal: u64,
}

impl CpuTimes {
    /// The counters now, or `None` where `/proc/stat` cannot be read.
    pub fn now() -> Option<Self> {
        Self::parse(&std::fs::read_to_string("/proc/stat").ok()?)
    }

    /// From the text of `/proc/stat`: its `cpu` line's first eight fields.
    /// Kernels before 2.6.11 have no steal field; there it counts as 0.
    fn parse(stat: &str) -> Option<Self> {
        let line = stat.lines().find(|l| l.starts_with("cpu "))?;
        let fields: Vec<u64> = line
            .split_ascii_whitespace()
            .skip(1)
            .take(8)
            .map(|f| f.parse().ok())
            .collect::<Option<_>>()?;
        if fields.len() < 4 {
            return None;
        }
        Some(Self {
            total: fields.iter().sum(),
            steal: fields.get(7).copied().unwrap_or(0),
        })
    }

    /// Percent of all CPU time between `earlier` and `self` that was
    /// stolen; `None` if no time passed (or the counters went back).
    pub fn steal_pct_since(&self, earlier: &Self) -> Option<f64> {
        let total = self.total.checked_sub(earlier.total)?;
        let steal = self.steal.checked_sub(earlier.steal)?;
        (total > 0).then(|| (steal as f64 * 1000.0 / total as f64).round() / 10.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const STAT: &str = "cpu  55518 986 27165 108786 6182 0 6186 8101 0 0\n\
                        cpu0 27000 500 13000 54000 3000 0 3000 4000 0 0\n\
                        intr 1 2 3\n";

    #[test]
    fn the_cpu_line_gives_total_and_steal() {
        let t = CpuTimes::parse(STAT).unwrap();
        assert_eq!(t.steal, 8101);
        assert_eq!(t.total, 55518 + 986 + 27165 + 108786 + 6182 + 6186 + 8101);
    }

    #[test]
    fn steal_is_a_share_of_the_time_between_two_readings() {
        let a = CpuTimes::parse("cpu  100 0 100 700 0 0 0 100 0 0").unwrap();
        let b = CpuTimes::parse("cpu  200 0 150 800 0 0 0 150 0 0").unwrap();
        // 50 of 300 jiffies stolen.
        assert_eq!(b.steal_pct_since(&a), Some(16.7));
        assert_eq!(a.steal_pct_since(&a), None, "no time passed");
        assert_eq!(a.steal_pct_since(&b), None, "counters went back");
    }

    #[test]
    fn an_old_kernel_without_steal_counts_none_stolen() {
        let t = CpuTimes::parse("cpu  1 2 3 4").unwrap();
        assert_eq!((t.total, t.steal), (10, 0));
        assert_eq!(CpuTimes::parse("cpu  1 2 x 4"), None);
        assert_eq!(CpuTimes::parse("intr 1 2"), None);
    }

    #[test]
    #[cfg(target_os = "linux")]
    fn this_machine_has_counters() {
        let a = CpuTimes::now().expect("/proc/stat is readable on Linux");
        assert!(a.total > 0);
    }
}
