//! Background threads give way to the ACK path.
//!
//! On a small machine the background side (SQLite writer, journal applier,
//! checkpoints, the worker pool's runtime) competes with the request path
//! for the same cores. Requests wait on nothing of it, so its threads run
//! at a lower CPU priority (a higher `nice`): when both want a core, the
//! request path gets it, and the background catches up in the gaps. The
//! journal thread and the HTTP runtime keep the default priority.

/// How much lower: nice 10 gets about a tenth of a core's share against a
/// thread at nice 0 when both are busy, and all of it when nothing else is.
pub const BACKGROUND_NICE: i32 = 10;

/// Lowers the calling thread's CPU priority to [`BACKGROUND_NICE`]. Threads
/// it starts inherit it. Failure only costs latency, so it is logged, not
/// returned.
pub fn lower_this_thread() {
    // SAFETY: gettid has no preconditions; setpriority with PRIO_PROCESS
    // and a thread id changes only that thread's nice value (Linux).
    let rc = unsafe {
        let tid = libc::gettid();
        libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, BACKGROUND_NICE)
    };
    if rc != 0 {
        tracing::debug!(error = %std::io::Error::last_os_error(), "Could not lower a background thread's priority.");
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_lowered_thread_runs_at_the_background_nice_value() {
        let nice = std::thread::spawn(|| {
            super::lower_this_thread();
            // SAFETY: as above; reads the calling thread's nice value.
            unsafe { libc::getpriority(libc::PRIO_PROCESS, libc::gettid() as libc::id_t) }
        })
        .join()
        .unwrap();
        assert_eq!(nice, super::BACKGROUND_NICE);
    }
}
