//! Background threads give way to the ACK path.
//!
//! On a small machine the background side (SQLite writer, journal applier,
//! checkpoints, segment preparation, the worker pool's runtime) competes
//! with the request path for the same cores. No request waits on any of
//! it, so while it keeps up its threads run under `SCHED_IDLE`: whenever a
//! request-path thread (HTTP runtime, journal thread) becomes runnable it
//! takes the core at once, and the background runs in the gaps.
//!
//! `SCHED_IDLE` alone would starve the background for as long as anything
//! else keeps the cores busy (a load peak, another busy process), so a
//! watcher at normal priority looks at the queue depth: when it has not
//! come back under [`CAUGHT_UP_BELOW`] for [`BEHIND_AFTER`], or passes
//! [`BEHIND_ABOVE`], the background threads move to `nice 10` (a tenth of
//! a core's share against normal threads, and all of it when nothing else
//! runs) until the queue is back under [`CAUGHT_UP_BELOW`]. Past
//! `store.max_backlog` ingest answers 503, so the backlog stays bounded
//! either way. BENCHMARKS.md has the A/B of the two policies.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, Weak};
use std::time::{Duration, Instant};

/// Queue depth (jobs due or running, journaled messages included) past
/// which the background counts as behind at once.
pub const BEHIND_ABOVE: i64 = 200_000;
/// How long the queue may stay at or above [`CAUGHT_UP_BELOW`] before the
/// background counts as behind: a burst is absorbed at idle priority for
/// this long, then processing competes for the CPU.
pub const BEHIND_AFTER: Duration = Duration::from_secs(10);
/// Depth under which it counts as caught up.
pub const CAUGHT_UP_BELOW: i64 = 500;
/// `nice` of the background threads while behind.
pub const BEHIND_NICE: i32 = 10;
const WATCH_EVERY: Duration = Duration::from_millis(200);

static BEHIND: AtomicBool = AtomicBool::new(false);
/// Thread ids of the live background threads (a few dozen at most).
static THREADS: Mutex<Vec<libc::pid_t>> = Mutex::new(Vec::new());

fn threads() -> std::sync::MutexGuard<'static, Vec<libc::pid_t>> {
    THREADS.lock().unwrap_or_else(|p| p.into_inner())
}

/// Takes the thread out of [`THREADS`] when it ends, so a recycled id is
/// never touched.
struct Registered(libc::pid_t);

impl Drop for Registered {
    fn drop(&mut self) {
        threads().retain(|t| *t != self.0);
    }
}

thread_local! {
    static REGISTERED: std::cell::OnceCell<Registered> = const { std::cell::OnceCell::new() };
}

/// Sets `tid` (a thread of this process) to the background policy.
fn apply(tid: libc::pid_t, behind: bool) {
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: `tid` is a live thread of this process (registered threads
    // leave the set before they end); `param` is valid for both policies,
    // which require priority 0.
    let rc = unsafe {
        if behind {
            let rc = libc::sched_setscheduler(tid, libc::SCHED_OTHER, &param);
            if rc == 0 {
                libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, BEHIND_NICE)
            } else {
                rc
            }
        } else {
            libc::sched_setscheduler(tid, libc::SCHED_IDLE, &param)
        }
    };
    if rc != 0 {
        tracing::debug!(error = %std::io::Error::last_os_error(), "Could not set a background thread's priority.");
    }
}

/// Makes the calling thread a background thread (see the module comment)
/// for as long as it lives. Failure only costs latency, so it is logged,
/// not returned.
pub fn lower_this_thread() {
    // SAFETY: gettid has no preconditions.
    let tid = unsafe { libc::gettid() };
    REGISTERED.with(|r| {
        if r.get().is_none() {
            let mut set = threads();
            set.push(tid);
            // Under the lock, so a flip of BEHIND cannot pass this thread by.
            apply(tid, BEHIND.load(Ordering::Acquire));
            let _ = r.set(Registered(tid));
        }
    });
}

/// Moves every background thread to the policy for `behind`.
fn set_behind(behind: bool) {
    let set = threads();
    if BEHIND.swap(behind, Ordering::AcqRel) == behind {
        return;
    }
    tracing::info!(
        behind,
        "Background processing {}.",
        if behind {
            "is behind: it now competes for the CPU at nice 10"
        } else {
            "caught up: it runs in idle time again"
        }
    );
    for tid in set.iter() {
        apply(*tid, behind);
    }
}

/// Watches `depth` (the queue) on a normal-priority thread while `alive`
/// lives, and moves the background threads between the two policies.
pub fn watch(depth: impl Fn() -> i64 + Send + 'static, alive: Weak<()>) -> std::io::Result<()> {
    std::thread::Builder::new()
        .name("inlet-bg-watch".into())
        .spawn(move || {
            // Since when the queue has not been caught up.
            let mut busy_since: Option<Instant> = None;
            while alive.upgrade().is_some() {
                std::thread::sleep(WATCH_EVERY);
                let d = depth();
                busy_since = match busy_since {
                    _ if d < CAUGHT_UP_BELOW => None,
                    None => Some(Instant::now()),
                    since => since,
                };
                let behind = BEHIND.load(Ordering::Acquire);
                set_behind(if behind {
                    d >= CAUGHT_UP_BELOW
                } else {
                    d > BEHIND_ABOVE || busy_since.is_some_and(|t| t.elapsed() >= BEHIND_AFTER)
                });
            }
        })
        .map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy_and_nice() -> (i32, i32) {
        // SAFETY: read the calling thread's policy and nice value.
        unsafe {
            (
                libc::sched_getscheduler(0),
                libc::getpriority(libc::PRIO_PROCESS, libc::gettid() as libc::id_t),
            )
        }
    }

    #[test]
    fn background_threads_idle_until_behind_then_compete_at_nice_10() {
        let (go_tx, go_rx) = std::sync::mpsc::channel::<()>();
        let (seen_tx, seen_rx) = std::sync::mpsc::channel();
        let bg = std::thread::spawn(move || {
            lower_this_thread();
            // SAFETY: gettid has no preconditions.
            seen_tx.send((unsafe { libc::gettid() }, 0)).unwrap();
            seen_tx.send(policy_and_nice()).unwrap();
            go_rx.recv().unwrap();
            seen_tx.send(policy_and_nice()).unwrap();
        });
        let tid = seen_rx.recv().unwrap().0;
        assert_eq!(seen_rx.recv().unwrap().0, libc::SCHED_IDLE);
        // Another thread (the watcher) flips the policy of a running one.
        set_behind(true);
        go_tx.send(()).unwrap();
        assert_eq!(seen_rx.recv().unwrap(), (libc::SCHED_OTHER, BEHIND_NICE));
        bg.join().unwrap();
        set_behind(false);
        // Threads that never asked keep the default.
        let other = std::thread::spawn(policy_and_nice).join().unwrap();
        assert_eq!(other, (libc::SCHED_OTHER, 0));
        assert!(!threads().contains(&tid), "an ended thread leaves the set");
    }
}
