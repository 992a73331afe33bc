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

use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::Weak;
use std::time::Duration;

/// How often writeback is started. Each journal `fdatasync` flushes
/// whatever reached the device before it, so the smaller the pieces, the
/// fewer slow journal syncs: at 5,000/s, 1 ms against 10 ms made the ACKs'
/// p99 0.41–0.87x in three alternating trials (BENCHMARKS.md). The cost:
/// an idle gateway takes 1.8 % of a core (0.3 % at 10 ms).
pub const EVERY: Duration = Duration::from_millis(1);

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

    /// Runs until `alive` is gone.
    pub fn run(mut self, alive: Weak<()>) {
        while alive.upgrade().is_some() {
            std::thread::sleep(EVERY);
            self.pass();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
