//! Writes SQLite's dirty pages back a little at a time.
//!
//! With `synchronous=NORMAL` SQLite writes the WAL and, at checkpoints,
//! the database file into the page cache and syncs each in one go, several
//! megabytes at a time under load. The journal's `fdatasync` waits for the
//! device to flush whatever it holds, so those bursts became the journal
//! syncs' slowest moments, and so the ACKs' p99. Every [`EVERY`] this thread
//! starts writeback of whatever is dirty in both files
//! (`sync_file_range(SYNC_FILE_RANGE_WRITE)`, which does not wait and walks
//! only dirty pages), so SQLite's data goes to the disk in pieces of what
//! was written in the last interval, and SQLite's own syncs find little
//! left to write. Durability is unchanged: it still rests on those syncs.
//!
//! Waking every millisecond cost an idle gateway 2 % of a core, so the
//! thread sleeps once a pass finds that nothing was committed since the one
//! before (everything written up to then has been asked already), and the
//! writer's next commit wakes it ([`Activity`]).

use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::SeqCst};
use std::sync::{OnceLock, Weak};
use std::thread::Thread;
use std::time::Duration;

/// How often writeback is started. Each journal `fdatasync` flushes
/// whatever reached the device before it, so the smaller the pieces, the
/// fewer slow journal syncs: at 5,000/s, 1 ms against 10 ms made the ACKs'
/// p99 0.41–0.87x in three alternating trials (BENCHMARKS.md). Only while
/// the writer commits: idle, the thread sleeps (see [`Activity`]).
pub const EVERY: Duration = Duration::from_millis(1);

/// The longest an idle thread sleeps unwoken: it bounds how long writes
/// nobody counted (the schema at start-up) stay dirty, and how long the
/// thread outlives its store.
pub const IDLE: Duration = Duration::from_secs(1);

/// What the writer tells the writeback thread: it committed. One atomic
/// add a commit; an unpark only for the first commit after a sleep.
#[derive(Default)]
pub struct Activity {
    commits: AtomicU64,
    /// Checkpoints running: they write the database file for as long as
    /// they take, with no commit to say so.
    checkpoints: AtomicU64,
    /// Passes made, for tests to see the thread work.
    passes: AtomicU64,
    asleep: AtomicBool,
    thread: OnceLock<Thread>,
}

impl Activity {
    /// Commits counted so far.
    #[cfg(test)]
    pub fn commits(&self) -> u64 {
        self.commits.load(SeqCst)
    }

    /// Keeps the thread passing until the guard drops (a checkpoint).
    pub fn checkpoint(&self) -> Checkpoint<'_> {
        self.checkpoints.fetch_add(1, SeqCst);
        self.committed(); // wakes it
        Checkpoint(self)
    }

    /// Called after each commit that wrote something.
    pub fn committed(&self) {
        // SeqCst on both sides (here and in `rest`): either the
        // thread sees this commit before it parks, or this sees it asleep.
        self.commits.fetch_add(1, SeqCst);
        if self.asleep.load(SeqCst)
            && self.asleep.swap(false, SeqCst)
            && let Some(t) = self.thread.get()
        {
            t.unpark();
        }
    }
}

/// A running checkpoint (see [`Activity::checkpoint`]).
pub struct Checkpoint<'a>(&'a Activity);

impl Drop for Checkpoint<'_> {
    fn drop(&mut self) {
        self.0.checkpoints.fetch_sub(1, SeqCst);
        // Counted as a commit, so one more pass takes its last writes.
        self.0.committed();
    }
}

/// The files to write back: the database and its WAL (which SQLite creates
/// and may recreate, so it is opened when it is there).
pub struct Trickle {
    paths: [PathBuf; 2],
    files: [Option<File>; 2],
}

impl Trickle {
    pub fn new(db: &Path) -> Self {
        let mut wal = db.as_os_str().to_owned();
        wal.push("-wal");
        Self {
            paths: [db.to_path_buf(), PathBuf::from(wal)],
            files: [None, None],
        }
    }

    /// Starts writeback of both files' dirty pages; returns how many files
    /// were asked.
    pub fn pass(&mut self) -> usize {
        let mut asked = 0;
        for (path, file) in self.paths.iter().zip(self.files.iter_mut()) {
            if file.is_none() {
                *file = File::open(path).ok();
            }
            let Some(f) = file else { continue };
            // Offset 0, length 0: the whole file.
            let rc =
                unsafe { libc::sync_file_range(f.as_raw_fd(), 0, 0, libc::SYNC_FILE_RANGE_WRITE) };
            // SQLite keeps its WAL file while a connection is open, and the
            // store's stay open for its life, so one open fd is enough; a
            // failed call is retried with a fresh open next time.
            if rc == 0 {
                asked += 1;
            } else {
                *file = None;
            }
        }
        asked
    }

    /// Runs until `alive` is gone: a pass every [`EVERY`] while the writer
    /// commits, asleep (up to `idle` at a time) while it does not.
    pub fn run(mut self, alive: Weak<()>, activity: &Activity, idle: Duration) {
        let _ = activity.thread.set(std::thread::current());
        let mut last = activity.commits.load(SeqCst);
        while alive.upgrade().is_some() {
            std::thread::sleep(EVERY);
            // Read before the pass: whatever those commits wrote was in the
            // page cache when it started.
            let seen = activity.commits.load(SeqCst);
            self.pass();
            activity.passes.fetch_add(1, SeqCst);
            if seen == last && activity.checkpoints.load(SeqCst) == 0 {
                rest(activity, seen, idle);
            }
            last = seen;
        }
    }
}

/// Sleeps until the writer commits past `seen` (or `idle` passes).
fn rest(activity: &Activity, seen: u64, idle: Duration) {
    activity.asleep.store(true, SeqCst);
    if activity.commits.load(SeqCst) == seen {
        std::thread::park_timeout(idle);
    }
    activity.asleep.store(false, SeqCst);
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    /// (dirty, under writeback) pages of `file`, by `cachestat(2)` (Linux
    /// 6.5+); `None` where the kernel has no such call.
    #[cfg(target_arch = "x86_64")]
    fn dirty_pages(file: &File) -> Option<(u64, u64)> {
        const SYS_CACHESTAT: libc::c_long = 451;
        let range = [0u64, 0u64]; // offset 0, length 0: the whole file
        let mut stat = [0u64; 5]; // cache, dirty, writeback, evicted, recently evicted
        let rc = unsafe {
            libc::syscall(
                SYS_CACHESTAT,
                file.as_raw_fd() as libc::c_long,
                range.as_ptr(),
                stat.as_mut_ptr(),
                0,
            )
        };
        (rc == 0).then_some((stat[1], stat[2]))
    }

    #[test]
    #[cfg(target_arch = "x86_64")]
    fn a_pass_sends_dirty_pages_to_the_disk_without_a_sync() {
        use std::io::Write;
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("inlet.db");
        let mut f = File::create(&db).unwrap();
        f.write_all(&vec![7u8; 1024 * 1024]).unwrap();
        let Some((dirty, _)) = dirty_pages(&f) else {
            eprintln!("no cachestat(2) on this kernel: nothing to observe");
            return;
        };
        assert!(
            dirty > 0,
            "a fresh buffered write is dirty in the page cache"
        );
        Trickle::new(&db).pass();
        // Left alone, the kernel would write these back after
        // dirty_expire_centisecs (30 s by default); the pass starts it now.
        // A bounded wait for the disk, not a time limit on the code.
        let mut left = dirty_pages(&f).unwrap();
        for _ in 0..500 {
            if left == (0, 0) {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
            left = dirty_pages(&f).unwrap();
        }
        assert_eq!(left, (0, 0), "(dirty, writeback) pages after a pass");
    }

    /// Starts `run` on a thread that sleeps up to `idle` unwoken.
    fn start(dir: &Path, idle: Duration) -> (Arc<()>, Arc<Activity>, std::thread::JoinHandle<()>) {
        let (alive, activity) = (Arc::new(()), Arc::new(Activity::default()));
        let t = Trickle::new(&dir.join("inlet.db"));
        let (weak, a) = (Arc::downgrade(&alive), activity.clone());
        let h = std::thread::spawn(move || t.run(weak, &a, idle));
        (alive, activity, h)
    }

    /// Bounded wait (10 s) for `activity`'s thread to be asleep.
    fn wait_asleep(activity: &Activity) {
        for _ in 0..1000 {
            if activity.asleep.load(SeqCst) {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        panic!("the writeback thread never went to sleep");
    }

    #[test]
    fn an_idle_thread_sleeps_instead_of_passing_every_interval() {
        let dir = tempfile::tempdir().unwrap();
        let (alive, activity, h) = start(dir.path(), Duration::from_millis(100));
        wait_asleep(&activity);
        // 200 intervals' worth of idleness: an every-interval loop makes a
        // pass in each (or as many as a busy machine lets it); this one
        // only one each time its 100 ms sleep runs out.
        std::thread::sleep(EVERY * 200);
        drop(alive);
        h.join().unwrap();
        let passes = activity.passes.load(SeqCst);
        assert!(passes <= 10, "{passes} passes while nothing was committed");
    }

    #[test]
    fn a_commit_wakes_the_sleeping_thread_for_more_passes() {
        let dir = tempfile::tempdir().unwrap();
        // Unwoken, it would sleep for an hour.
        let (alive, activity, h) = start(dir.path(), Duration::from_secs(3600));
        wait_asleep(&activity);
        let before = activity.passes.load(SeqCst);
        // Woken, it passes until a pass finds no new commit, then sleeps
        // again.
        activity.committed();
        let woke = (0..1000).any(|_| {
            std::thread::sleep(Duration::from_millis(10));
            activity.passes.load(SeqCst) > before
        });
        assert!(woke, "a commit did not wake the sleeping thread in 10 s");
        wait_asleep(&activity);
        drop(alive);
        activity.committed();
        h.join().unwrap();
        let passes = activity.passes.load(SeqCst);
        assert!(passes >= 3, "{passes} passes: the commits did not wake it");
    }

    #[test]
    fn a_running_checkpoint_keeps_the_thread_passing() {
        let dir = tempfile::tempdir().unwrap();
        let (alive, activity, h) = start(dir.path(), Duration::from_secs(3600));
        wait_asleep(&activity);
        let checkpoint = activity.checkpoint();
        // No commits meanwhile: without the checkpoint's hold the thread
        // would make two passes and sleep for the hour.
        let before = activity.passes.load(SeqCst);
        let kept = (0..1000).any(|_| {
            std::thread::sleep(Duration::from_millis(10));
            activity.passes.load(SeqCst) >= before + 20
        });
        assert!(kept, "the thread stopped passing during a checkpoint");
        drop(checkpoint);
        wait_asleep(&activity);
        drop(alive);
        activity.committed();
        h.join().unwrap();
    }

    #[test]
    fn both_files_are_written_back_once_they_exist() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("inlet.db");
        let mut t = Trickle::new(&db);
        assert_eq!(t.pass(), 0, "neither file exists yet");
        std::fs::write(&db, vec![1u8; 64 * 1024]).unwrap();
        assert_eq!(t.pass(), 1);
        std::fs::write(dir.path().join("inlet.db-wal"), vec![2u8; 64 * 1024]).unwrap();
        assert_eq!(t.pass(), 2, "the WAL is picked up when SQLite creates it");
        assert_eq!(t.paths[1].file_name().unwrap(), "inlet.db-wal");
    }
}
