//! Writes SQLite's dirty pages back a little at a time.
//!
//! With `synchronous=NORMAL` SQLite writes the WAL and, at checkpoints,
//! the database file into the page cache and syncs each in one go, several
//! megabytes at a time under load. The journal's `fdatasync` waits for the
//! device to flush whatever it holds, so those bursts became the journal
//! syncs' slowest moments, and so the ACKs' p99. Every [`EVERY`] this thread
//! starts writeback of whatever is dirty in both files
//! (`sync_file_range(SYNC_FILE_RANGE_WRITE)`, which does not wait and walks
//! only dirty pages), so SQLite's data goes to the disk as it is written, a
//! few hundred kilobytes at a time, and SQLite's own syncs find little left
//! to write. Durability is unchanged: it still rests on those syncs.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::Weak;
use std::time::Duration;

/// How often writeback is started.
pub const EVERY: Duration = Duration::from_millis(10);

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
            if rc == 0 {
                asked += 1;
            } else {
                // Reopened next time (say, the file was replaced).
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
