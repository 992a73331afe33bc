//! Paces SQLite's bulk writes, so the journal's syncs do not queue behind
//! them.
//!
//! An apply commit writes its WAL frames, and a checkpoint its database
//! pages, into the page cache within a few milliseconds: about 1 MB each
//! at 5,000/s. The writeback thread (`trickle`) then hands the device that
//! megabyte in one or two pieces, and a journal `fdatasync` issued meanwhile
//! waits for all of it: the slowest journal syncs overlapped checkpoints
//! and commits, and those syncs made the ACKs' p99 (BENCHMARKS.md).
//!
//! On a paced thread (the writer's and the checkpointer's), after every
//! [`CHUNK`] bytes SQLite writes, this starts writeback of that file
//! (`sync_file_range(SYNC_FILE_RANGE_WRITE)`, which does not wait) and
//! sleeps [`PAUSE`], so about a chunk at a time reaches the device queue.
//! That caps each paced thread at roughly 60 MB/s of writes. Both are
//! background threads and the ACK path never waits for them; a worker's
//! claim or completion can wait out one pause behind a large apply.
//!
//! Pausing only spreads the writes out while SQLite keeps up with the
//! journal. Once the applier finds a whole apply's worth waiting
//! ([`Pacing::set_on`]), the paced threads write at full speed until it
//! finds less again: paced, a 10 s run at max ingest left 5.5–9.4 s of
//! applying behind it, against 0.8–0.9 s unpaced, and a 40 s one filled
//! a `store.max_backlog` of 100,000 and got 503s (BENCHMARKS.md).
//!
//! The hook is the unix VFS's replaceable `pwrite` (`xSetSystemCall`, the
//! interface SQLite provides for this): process-wide, but a thread that did
//! not ask to be paced writes straight through. The bytes written and
//! SQLite's own syncs are unchanged, so durability is too.

use std::cell::RefCell;
use std::ffi::{c_int, c_void};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use rusqlite::ffi;

/// Bytes a paced thread writes between pauses.
pub const CHUNK: usize = 64 * 1024;

/// How long a paced thread sleeps after each chunk: about one journal sync
/// at 5,000/s, so each sync finds at most a chunk ahead of it.
pub const PAUSE: Duration = Duration::from_millis(1);

/// What one store's paced threads share: whether they pause, and how
/// many times they have.
#[derive(Debug)]
pub struct Pacing {
    on: AtomicBool,
    pauses: AtomicU64,
}

impl Default for Pacing {
    fn default() -> Self {
        Self {
            on: AtomicBool::new(true),
            pauses: AtomicU64::new(0),
        }
    }
}

impl Pacing {
    /// Pauses on (SQLite keeps up) or off (it is behind the journal and
    /// must catch up at full speed).
    pub fn set_on(&self, on: bool) {
        self.on.store(on, Ordering::Relaxed);
    }

    /// Pauses taken so far.
    pub fn pauses(&self) -> u64 {
        self.pauses.load(Ordering::Relaxed)
    }
}

/// A paced thread's state: bytes since its last pause, and its store's
/// [`Pacing`].
struct Pacer {
    written: usize,
    pacing: Arc<Pacing>,
}

thread_local! {
    static PACER: RefCell<Option<Pacer>> = const { RefCell::new(None) };
}

/// Routes SQLite's writes through [`paced_pwrite`], once per process;
/// `false` (and a warning, once) if SQLite's default VFS offers no
/// `pwrite` to replace: pacing is then off and nothing else changes.
/// Runs before the store's first
/// connection opens: replacing the pointer while another thread writes
/// through it would be a data race, so nothing in the process should open
/// SQLite connections of its own before the store does.
pub fn install() -> bool {
    static INSTALLED: OnceLock<bool> = OnceLock::new();
    *INSTALLED.get_or_init(|| {
        let installed = replace_pwrite();
        if !installed {
            tracing::warn!("SQLite's VFS has no replaceable pwrite: its writes are not paced.");
        }
        installed
    })
}

/// Installs [`paced_pwrite`] in the default VFS; `false` if it cannot.
fn replace_pwrite() -> bool {
    type Pwrite = unsafe extern "C" fn(c_int, *const c_void, libc::size_t, libc::off_t) -> isize;
    // SAFETY: the default VFS lives for the process; `xSetSystemCall`
    // takes a type-erased pointer, and "pwrite" has `Pwrite`'s
    // signature in the unix VFS (os_unix.c: osPwrite).
    unsafe {
        let vfs = ffi::sqlite3_vfs_find(std::ptr::null());
        let Some(vfs) = vfs.as_mut() else {
            return false;
        };
        let Some(set) = vfs.xSetSystemCall else {
            return false;
        };
        let hook = std::mem::transmute::<Pwrite, unsafe extern "C" fn()>(paced_pwrite);
        set(vfs, c"pwrite".as_ptr(), Some(hook)) == ffi::SQLITE_OK
    }
}

/// Paces SQLite's writes on the calling thread from now on, as `pacing`
/// says.
pub fn pace_this_thread(pacing: Arc<Pacing>) {
    PACER.with(|p| *p.borrow_mut() = Some(Pacer { written: 0, pacing }));
}

/// SQLite's `pwrite`: the system call, then a pause where one is due.
unsafe extern "C" fn paced_pwrite(
    fd: c_int,
    buf: *const c_void,
    len: libc::size_t,
    offset: libc::off_t,
) -> isize {
    // SAFETY: the arguments are SQLite's, passed on unchanged.
    let n = unsafe { libc::pwrite(fd, buf, len, offset) };
    if n > 0 {
        after_write(fd, n as usize);
    }
    n
}

/// Counts `n` bytes written to `fd`; every [`CHUNK`], starts its writeback
/// and sleeps. Must not unwind (it runs inside SQLite's C code): no panics
/// here, and a thread-local already gone means no pacing.
fn after_write(fd: c_int, n: usize) {
    let pause = PACER
        .try_with(|p| {
            let mut p = p.try_borrow_mut().ok()?;
            let pacer = p.as_mut()?;
            if !pacer.pacing.on.load(Ordering::Relaxed) {
                pacer.written = 0;
                return None;
            }
            pacer.written += n;
            if pacer.written < CHUNK {
                return None;
            }
            pacer.written = 0;
            pacer.pacing.pauses.fetch_add(1, Ordering::Relaxed);
            Some(())
        })
        .ok()
        .flatten();
    if pause.is_some() {
        // Offset 0, length 0: the whole file, dirty pages only. A failure
        // only means the pages go with the next sync, as without pacing.
        // SAFETY: `fd` is the descriptor SQLite has just written to.
        unsafe { libc::sync_file_range(fd, 0, 0, libc::SYNC_FILE_RANGE_WRITE) };
        std::thread::sleep(PAUSE);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rusqlite::Connection;

    /// Writes `bytes` of blobs through SQLite in one transaction on a
    /// fresh WAL database, and reads them back.
    fn write_through_sqlite(dir: &std::path::Path, bytes: usize) {
        assert!(install(), "the unix VFS has a pwrite to replace");
        let conn = Connection::open(dir.join("t.db")).unwrap();
        conn.pragma_update(None, "journal_mode", "WAL").unwrap();
        conn.execute_batch("CREATE TABLE t (b BLOB)").unwrap();
        let tx = conn.unchecked_transaction().unwrap();
        for _ in 0..bytes / 4096 {
            tx.execute("INSERT INTO t VALUES (?1)", [vec![7u8; 4096]])
                .unwrap();
        }
        tx.commit().unwrap();
        let n: i64 = conn
            .query_row("SELECT count(*) FROM t", [], |r| r.get(0))
            .unwrap();
        assert_eq!(n as usize, bytes / 4096, "every row written and read back");
    }

    /// Pauses counted while a thread that called [`pace_this_thread`]
    /// runs `then`, with pauses `on` or off.
    fn paced_pauses(on: bool, then: impl FnOnce() + Send + 'static) -> u64 {
        let pacing = Arc::new(Pacing::default());
        pacing.set_on(on);
        let counted = pacing.clone();
        std::thread::spawn(move || {
            pace_this_thread(counted);
            then()
        })
        .join()
        .unwrap();
        pacing.pauses()
    }

    #[test]
    fn a_paced_thread_pauses_about_once_a_chunk() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().to_path_buf();
        // 1 MiB of rows: at least 16 chunks of WAL (more with page headers).
        let pauses = paced_pauses(true, move || write_through_sqlite(&d, 1 << 20));
        assert!(
            (16..=64).contains(&pauses),
            "1 MiB written, {pauses} pauses (one per 64 KiB expected)"
        );
    }

    #[test]
    fn a_paced_thread_with_pacing_off_writes_straight_through() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().to_path_buf();
        let pauses = paced_pauses(false, move || write_through_sqlite(&d, 1 << 20));
        assert_eq!(pauses, 0, "1 MiB written with pacing off");
    }

    #[test]
    fn sqlite_writes_through_the_hook() {
        assert!(install());
        // SAFETY: reads the default VFS's current "pwrite" pointer.
        let current = unsafe {
            let vfs = &mut *ffi::sqlite3_vfs_find(std::ptr::null());
            (vfs.xGetSystemCall.unwrap())(vfs, c"pwrite".as_ptr())
        };
        assert_eq!(
            current.map(|f| f as usize),
            Some(paced_pwrite as *const () as usize)
        );
        // Another thread asked to be paced; this one was not, so its
        // writes land intact (checked inside) and count no pause there.
        let pacing = Arc::new(Pacing::default());
        let counted = pacing.clone();
        std::thread::spawn(move || pace_this_thread(counted))
            .join()
            .unwrap();
        let dir = tempfile::tempdir().unwrap();
        write_through_sqlite(dir.path(), 256 << 10);
        assert_eq!(pacing.pauses(), 0);
    }
}
