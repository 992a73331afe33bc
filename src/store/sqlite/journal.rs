//! The ingest journal's files: append-only segments of checksummed records.
//!
//! A request is acknowledged once its record is written here and
//! `fdatasync`ed (see [`super::ingest`]); SQLite is filled from the journal
//! afterwards. So this is the only write on the ACK path: bytes appended to
//! one file, as in the group-commit ceiling of BENCHMARKS.md.
//!
//! Positions are byte offsets into the journal as a whole, from its first
//! byte ever written; a segment file is named after the position of its
//! first byte (`00000000000000012345.log`), so the segment holding any
//! position is found by name. A record is `len: u32 LE` (never 0; its top
//! bit is [`POSITIONED`]), `crc32: u32 LE` (of the body, XORed with
//! [`position_mask`] of the record's position), then `len` bytes of body.
//! A record never spans two segments.
//!
//! Segments are written over blocks that already exist, as PostgreSQL
//! does with its WAL: that lets `fdatasync` skip the file size update and
//! its filesystem-journal commit, about a third of its time on this
//! machine (BENCHMARKS.md). A background thread gets the next segment
//! ready ahead of need: an applied segment recycled (renamed, as it is),
//! or, when none is there, a new file zero-filled to [`SEGMENT_BYTES`].
//! A recycled segment still holds its old records, so a record's CRC is
//! sealed with its position ([`POSITIONED`]): an old record read at its
//! new place fails its check like a torn one. Reading stops at the first
//! thing that is not a whole, sealed record for its position (zeros, old
//! records, a torn write) and goes on in the segment that starts exactly
//! there, if there is one. A torn record can only be at the very end
//! (its batch was never synced, so never acknowledged): reading stops
//! there, and the writer zeroes what follows on reopening.

use std::fs::{File, OpenOptions};
use std::io::{self, BufReader, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::mpsc;

/// A segment's preallocated size; a new one starts once this is nearly used.
#[cfg(not(test))]
pub const SEGMENT_BYTES: u64 = 16 * 1024 * 1024;
/// Small in unit tests, which fill several.
#[cfg(test)]
pub const SEGMENT_BYTES: u64 = 1024 * 1024;
/// A new segment starts when less than this is left in the current one.
const ROTATE_SLACK: u64 = 256 * 1024;
/// A record body at most this large; anything larger is corruption.
const MAX_RECORD: u32 = 256 * 1024 * 1024;
const HEADER: usize = 8;
/// Set in a record's length word when its CRC is XORed with
/// [`position_mask`] of the record's position. Records of builds before
/// segment recycling have it clear and are read with the plain CRC;
/// segments holding any such record are never recycled.
const POSITIONED: u32 = 1 << 31;
/// Records up to this long are read without checking the file's length.
const FITS_UNCHECKED: u32 = 64 * 1024;
/// Applied segments kept for reuse at most; the rest are deleted.
const RECYCLED_MAX: usize = 2;
/// The reader's buffer: a few records per `read` call.
const READ_BUFFER: usize = 256 * 1024;
/// Zeros are written a page at a time: the page cache keeps a file in
/// folios as large as the writes that filled it (ext4, Linux 6.x), and
/// writeback writes whole folios, so a segment zero-filled in 64 KiB writes
/// made every later `fdatasync` of a small append write 64 KiB (1 MiB
/// writes: 1 MiB) instead of one page (python, `/proc/self/io`
/// write_bytes per sync, BENCHMARKS.md).
static ZEROS: [u8; 4096] = [0; 4096];

fn segment_name(start: u64) -> String {
    format!("{start:020}.log")
}

/// What a record's CRC is XORed with at `pos` (splitmix64's finalizer,
/// folded to 32 bits): a record read back at any other position than the
/// one it was written at fails its check, but for one in 2^32.
fn position_mask(pos: u64) -> u32 {
    let mut z = pos.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    (z ^ (z >> 32)) as u32
}

/// Seals the whole records framed in `records` with their positions, the
/// first at `at`. Framing happens on the request's thread, before the
/// position is known; the journal thread seals as it appends.
fn seal(records: &mut [u8], at: u64) {
    let mut off = 0;
    while off + HEADER <= records.len() {
        let word = u32::from_le_bytes(records[off..off + 4].try_into().expect("4 bytes"));
        let len = (word & !POSITIONED) as usize;
        if off + HEADER + len > records.len() {
            break;
        }
        if word & POSITIONED != 0 {
            let crc = u32::from_le_bytes(records[off + 4..off + 8].try_into().expect("4 bytes"));
            let sealed = crc ^ position_mask(at + off as u64);
            records[off + 4..off + 8].copy_from_slice(&sealed.to_le_bytes());
        }
        off += HEADER + len;
    }
}

/// The segments in `dir`, by start position.
pub fn segments(dir: &Path) -> io::Result<Vec<u64>> {
    let mut starts = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let name = entry?.file_name();
        let name = name.to_string_lossy();
        if let Some(start) = name.strip_suffix(".log").and_then(|n| n.parse().ok()) {
            starts.push(start);
        }
    }
    starts.sort_unstable();
    Ok(starts)
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Writes zeros over `len` bytes of `file` from `offset`.
fn zero(file: &File, mut offset: u64, len: u64) -> io::Result<()> {
    let end = offset + len;
    while offset < end {
        let n = (end - offset).min(ZEROS.len() as u64) as usize;
        file.write_all_at(&ZEROS[..n], offset)?;
        offset += n as u64;
    }
    Ok(())
}

/// How much of a spare segment is zeroed between two syncs.
const PREPARE_CHUNK: u64 = 256 * 1024;

/// A zero-filled, synced file of [`SEGMENT_BYTES`] at `path`. Synced a
/// chunk at a time: every journal `fdatasync` flushes the device's cache,
/// so it waits for whatever else is being written at that moment. With
/// 16 MiB synced in one go the slowest journal sync during a preparation
/// took 4.0–8.9 ms, with 256 KiB chunks 2.8–3.6 ms (and more syncs are a
/// little slower: p99 0.3–0.5 against 0.2 ms; BENCHMARKS.md).
fn preallocated(path: &Path) -> io::Result<File> {
    let file = OpenOptions::new()
        .create(true)
        .read(true)
        .write(true)
        .truncate(true)
        .open(path)?;
    let mut offset = 0;
    while offset < SEGMENT_BYTES {
        let len = PREPARE_CHUNK.min(SEGMENT_BYTES - offset);
        zero(&file, offset, len)?;
        file.sync_data()?;
        offset += len;
    }
    file.sync_all()?;
    Ok(file)
}

/// Frames `body` (never empty) as one record at the end of `buf`.
#[cfg(test)]
pub fn frame(buf: &mut Vec<u8>, body: &[u8]) {
    frame_with(buf, |b| b.extend_from_slice(body));
}

/// Frames what `write` appends (never nothing) as one record at the end of
/// `buf`, written in place rather than copied from a buffer of its own.
pub fn frame_with(buf: &mut Vec<u8>, write: impl FnOnce(&mut Vec<u8>)) {
    let start = buf.len();
    buf.extend_from_slice(&[0; 8]);
    write(buf);
    let body = &buf[start + 8..];
    assert!(!body.is_empty(), "a journal record is never empty");
    assert!(
        body.len() < POSITIONED as usize,
        "a journal record is under 2 GiB"
    );
    let (len, crc) = (body.len() as u32 | POSITIONED, crc32fast::hash(body));
    buf[start..start + 4].copy_from_slice(&len.to_le_bytes());
    buf[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
}

/// The segments [`JournalReader::delete_before`] kept for reuse.
fn recycled(dir: &Path) -> io::Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned());
        if name.is_some_and(|n| n.starts_with("recycle-") && n.ends_with(".tmp")) {
            out.push(path);
        }
    }
    Ok(out)
}

/// Moves a recycled segment to `spare`; `false` when there is none. Its
/// blocks exist and hold old records already on disk, so nothing needs
/// writing or syncing: the rename that puts it in use is synced then.
fn reuse_recycled(dir: &Path, spare: &Path) -> io::Result<bool> {
    for path in recycled(dir)? {
        match std::fs::rename(&path, spare) {
            Ok(()) => return Ok(true),
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(false)
}

/// Whether the segment at `path` can be reused: full size, and started by
/// a build that seals records (its first record is sealed). Such a
/// segment holds sealed records only, so none of its old records can
/// pass for a new one; a segment an older build started may hold
/// unsealed ones anywhere, and is deleted.
fn recyclable(path: &Path) -> io::Result<bool> {
    let file = File::open(path)?;
    if file.metadata()?.len() < SEGMENT_BYTES {
        return Ok(false);
    }
    let mut word = [0u8; 4];
    file.read_exact_at(&mut word, 0)?;
    Ok(u32::from_le_bytes(word) & POSITIONED != 0)
}

/// Prepares spare segments on its own thread, one ahead.
struct Spares {
    ask: mpsc::Sender<()>,
    ready: mpsc::Receiver<io::Result<PathBuf>>,
    /// A spare is being made or is ready.
    asked: bool,
    /// A spare received by [`Self::wait`] (tests), not taken yet.
    #[cfg(test)]
    held: Option<io::Result<PathBuf>>,
}

impl Spares {
    fn start(dir: &Path) -> io::Result<Self> {
        let (ask, asked) = mpsc::channel::<()>();
        let (done, ready) = mpsc::channel();
        let dir = dir.to_path_buf();
        std::thread::Builder::new()
            .name("inlet-journal-prep".into())
            .spawn(move || {
                crate::priority::lower_this_thread();
                let mut n = 0u64;
                while asked.recv().is_ok() {
                    n += 1;
                    let path = dir.join(format!("spare-{n}.tmp"));
                    let made = match reuse_recycled(&dir, &path) {
                        Ok(true) => Ok(path),
                        Ok(false) => preallocated(&path).map(|_| path),
                        Err(e) => Err(e),
                    };
                    if done.send(made).is_err() {
                        return;
                    }
                }
            })?;
        Ok(Self {
            ask,
            ready,
            asked: false,
            #[cfg(test)]
            held: None,
        })
    }

    /// Starts preparing the next segment, once per segment.
    fn prepare(&mut self) {
        if !self.asked {
            self.asked = self.ask.send(()).is_ok();
        }
    }

    /// The spare, if it is ready.
    fn take(&mut self) -> Option<PathBuf> {
        #[cfg(test)]
        if let Some(made) = self.held.take() {
            self.asked = false;
            return made.ok();
        }
        match self.ready.try_recv() {
            Ok(made) => {
                self.asked = false;
                made.inspect_err(
                    |e| tracing::warn!(error = %e, "Could not prepare a journal segment."),
                )
                .ok()
            }
            Err(_) => None,
        }
    }
}

/// Appends framed records to the last segment and makes them durable.
pub struct JournalWriter {
    dir: PathBuf,
    file: File,
    /// Position of the current segment's first byte.
    start: u64,
    /// Position after the last byte written (and synced: see [`Self::append`]).
    end: u64,
    spares: Spares,
}

impl JournalWriter {
    /// Opens the journal in `dir` for appending at `end`, the position
    /// [`scan`] found after the last whole record. Whatever follows `end`
    /// in its segment (a torn record) is zeroed. When no segment holds
    /// `end` (a new journal, or one removed), a segment starting at `end`
    /// is created.
    pub fn open(dir: &Path, end: u64) -> io::Result<Self> {
        std::fs::create_dir_all(dir)?;
        let starts = segments(dir)?;
        if let Some(later) = starts.iter().find(|s| **s > end) {
            // Records after `end` exist but cannot be reached: a record
            // before them is damaged. Appending here would bury them.
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "the journal in {} is damaged at position {end}: segment {} follows it",
                    dir.display(),
                    segment_name(*later)
                ),
            ));
        }
        for entry in std::fs::read_dir(dir)? {
            let path = entry?.path();
            if path.extension().is_some_and(|e| e == "tmp") {
                std::fs::remove_file(path)?;
            }
        }
        let holder = starts.last().copied().filter(|s| {
            std::fs::metadata(dir.join(segment_name(*s))).is_ok_and(|m| s + m.len() >= end)
        });
        let (start, file) = match holder {
            Some(start) => {
                let file = OpenOptions::new()
                    .read(true)
                    .write(true)
                    .open(dir.join(segment_name(start)))?;
                let len = file.metadata()?.len();
                zero(&file, end - start, len - (end - start))?;
                if len < SEGMENT_BYTES {
                    zero(&file, len, SEGMENT_BYTES - len)?;
                }
                file.sync_all()?;
                (start, file)
            }
            None => {
                let file = preallocated(&dir.join(segment_name(end)))?;
                sync_dir(dir)?;
                (end, file)
            }
        };
        let mut w = Self {
            dir: dir.to_path_buf(),
            file,
            start,
            end,
            spares: Spares::start(dir)?,
        };
        w.file.seek(SeekFrom::Start(end - start))?;
        Ok(w)
    }

    /// Waits until the spare asked for, if any, is ready (so that tests
    /// rotate into prepared segments, as a running journal does).
    #[cfg(test)]
    fn wait_for_spare(&mut self) {
        if self.spares.asked && self.spares.held.is_none() {
            self.spares.held = self.spares.ready.recv().ok();
        }
    }

    /// The position after the last record written.
    #[cfg(test)]
    pub fn end(&self) -> u64 {
        self.end
    }

    /// Seals `records` (already framed) in place with their positions,
    /// writes and `fdatasync`s them; returns the new end. On an error
    /// nothing of it counts: what was written is zeroed again, and if even
    /// that fails the error says so and the writer must not be used again.
    /// (Sealing again would unseal: a buffer is appended once.)
    pub fn append(&mut self, records: &mut [u8]) -> Result<u64, AppendError> {
        seal(records, self.end);
        let before = self.end - self.start;
        let written = self
            .file
            .write_all(records)
            .and_then(|()| self.file.sync_data());
        if let Err(e) = written {
            let restored = zero(&self.file, before, records.len() as u64)
                .and_then(|()| self.file.seek(SeekFrom::Start(before)).map(drop))
                .and_then(|()| self.file.sync_data());
            return Err(match restored {
                Ok(()) => AppendError::NotWritten(e),
                Err(e2) => AppendError::Broken(format!("{e}; undoing it failed too: {e2}")),
            });
        }
        self.end += records.len() as u64;
        if self.end - self.start >= SEGMENT_BYTES / 2 {
            // Half full: the next segment is zero-filled in the background
            // by the time this one is.
            self.spares.prepare();
        }
        if self.end - self.start + ROTATE_SLACK >= SEGMENT_BYTES {
            // Between batches, so a record never spans segments. A failure
            // here leaves the current segment in use (it grows past its
            // preallocated size); it is tried again after the next batch.
            if let Err(e) = self.rotate() {
                tracing::warn!(error = %e, "Could not start a new journal segment.");
            }
        }
        Ok(self.end)
    }

    fn rotate(&mut self) -> io::Result<()> {
        let path = self.dir.join(segment_name(self.end));
        let file = match self.spares.take() {
            Some(spare) => {
                std::fs::rename(&spare, &path)?;
                OpenOptions::new().read(true).write(true).open(&path)?
            }
            // The spare is not ready yet: a plain file works, only its
            // syncs are slower.
            None => OpenOptions::new()
                .create(true)
                .read(true)
                .write(true)
                .truncate(true)
                .open(&path)?,
        };
        sync_dir(&self.dir)?;
        self.file = file;
        self.start = self.end;
        Ok(())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AppendError {
    /// The batch is not in the journal; the journal is fine.
    #[error("journal write failed: {0}")]
    NotWritten(io::Error),
    /// The journal's end is unknown: no further append is safe.
    #[error("journal write failed and could not be undone: {0}")]
    Broken(String),
}

/// Reads whole records from a position on, segment by segment.
pub struct JournalReader {
    dir: PathBuf,
    /// The open segment and its start position.
    file: Option<(u64, BufReader<File>)>,
    /// The body of the record being handed out.
    body: Vec<u8>,
}

/// One record read back: its body and the position after it.
pub struct Record<'a> {
    pub body: &'a [u8],
    pub end: u64,
}

/// Reads exactly `buf`; `false` when the file ends first (a torn record).
fn read_whole(r: &mut impl Read, buf: &mut [u8]) -> io::Result<bool> {
    match r.read_exact(buf) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Ok(false),
        Err(e) => Err(e),
    }
}

impl JournalReader {
    pub fn new(dir: &Path) -> Self {
        Self {
            dir: dir.to_path_buf(),
            file: None,
            body: Vec::new(),
        }
    }

    /// Reads the whole records from `from` on, up to `upto` (about
    /// `max_bytes` of them, but at least one when one is there), and calls
    /// `f` on each in order. Stops at the end of the records (zeros, a torn
    /// or damaged record); returns the position after the last record
    /// passed to `f`.
    pub fn read(
        &mut self,
        from: u64,
        upto: u64,
        max_bytes: usize,
        mut f: impl FnMut(Record<'_>) -> io::Result<()>,
    ) -> io::Result<u64> {
        // Positioning drops what the buffer held: bytes past the last read
        // may have been written since.
        self.seek(from)?;
        let mut pos = from;
        while pos < upto && (pos == from || pos - from < max_bytes as u64) {
            let (start, file) = self.file.as_mut().expect("seek opened it");
            let start = *start;
            let mut head = [0u8; HEADER];
            let word = if read_whole(file, &mut head)? {
                u32::from_le_bytes(head[..4].try_into().expect("4 bytes"))
            } else {
                0
            };
            let len = word & !POSITIONED;
            // A large length is checked against the file before a buffer is
            // sized for it: old bytes read as a header can claim anything up
            // to MAX_RECORD.
            let whole = len != 0
                && len <= MAX_RECORD
                && (len <= FITS_UNCHECKED
                    || file.get_ref().metadata()?.len()
                        >= pos - start + (HEADER as u64) + u64::from(len))
                && {
                    self.body.resize(len as usize, 0);
                    let mask = if word & POSITIONED != 0 {
                        position_mask(pos)
                    } else {
                        0
                    };
                    let crc = u32::from_le_bytes(head[4..].try_into().expect("4 bytes"));
                    read_whole(file, &mut self.body)? && crc32fast::hash(&self.body) ^ mask == crc
                };
            if !whole {
                // Zeros, old records of a recycled segment, the segment's
                // last byte or a torn write: this segment's records end
                // here, and the next segment, if any, starts at exactly
                // `pos`.
                if start != pos && self.open_next(pos)? {
                    continue;
                }
                break;
            }
            pos += (HEADER + len as usize) as u64;
            f(Record {
                body: &self.body,
                end: pos,
            })?;
        }
        Ok(pos)
    }

    /// Opens the segment holding `pos` (unless it is open) and positions
    /// the reader there.
    fn seek(&mut self, pos: u64) -> io::Result<()> {
        if !matches!(&self.file, Some((start, _)) if *start <= pos) {
            let start = segments(&self.dir)?
                .into_iter()
                .rev()
                .find(|s| *s <= pos)
                .ok_or_else(|| {
                    io::Error::new(
                        io::ErrorKind::NotFound,
                        format!("no journal segment holds position {pos}"),
                    )
                })?;
            let file = File::open(self.dir.join(segment_name(start)))?;
            self.file = Some((start, BufReader::with_capacity(READ_BUFFER, file)));
        }
        let (start, file) = self.file.as_mut().expect("just opened");
        file.seek(SeekFrom::Start(pos - *start))?;
        Ok(())
    }

    /// Moves to the segment starting at `pos`, if there is one.
    fn open_next(&mut self, pos: u64) -> io::Result<bool> {
        match File::open(self.dir.join(segment_name(pos))) {
            Ok(f) => {
                self.file = Some((pos, BufReader::with_capacity(READ_BUFFER, f)));
                Ok(true)
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// The start of the segment read last.
    pub fn current_segment(&self) -> Option<u64> {
        self.file.as_ref().map(|(start, _)| *start)
    }

    /// Removes every segment that ends at or before `pos` (all of whose
    /// records are applied), never the one holding `pos`: up to
    /// [`RECYCLED_MAX`] are kept for reuse as later segments (renamed
    /// `recycle-START.tmp`; removed at start-up like any `.tmp`), the rest
    /// deleted.
    pub fn delete_before(&mut self, pos: u64) -> io::Result<usize> {
        let starts = segments(&self.dir)?;
        let mut kept = recycled(&self.dir)?.len();
        let mut deleted = 0;
        for pair in starts.windows(2) {
            if pair[1] <= pos {
                let path = self.dir.join(segment_name(pair[0]));
                if kept < RECYCLED_MAX && recyclable(&path)? {
                    std::fs::rename(&path, self.dir.join(format!("recycle-{}.tmp", pair[0])))?;
                    kept += 1;
                } else {
                    std::fs::remove_file(&path)?;
                }
                if matches!(&self.file, Some((start, _)) if *start == pair[0]) {
                    self.file = None;
                }
                deleted += 1;
            }
        }
        Ok(deleted)
    }
}

/// Walks every whole record from `from` to the end of the journal, calling
/// `f` on each; returns the position after the last whole one. Used at
/// start-up, before anything is appended.
pub fn scan(
    dir: &Path,
    from: u64,
    mut f: impl FnMut(Record<'_>) -> io::Result<()>,
) -> io::Result<u64> {
    if !dir.exists() || segments(dir)?.is_empty() {
        return Ok(from);
    }
    let mut reader = JournalReader::new(dir);
    // A position before every segment (the journal was removed, or is new
    // next to an older database): nothing to read.
    if reader.seek(from).is_err() {
        return Ok(from);
    }
    let mut pos = from;
    loop {
        let next = reader.read(pos, u64::MAX, 8 * 1024 * 1024, &mut f)?;
        if next == pos {
            return Ok(pos);
        }
        pos = next;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Bytes this thread has caused to be written to storage so far.
    fn thread_write_bytes() -> Option<u64> {
        std::fs::read_to_string("/proc/thread-self/io")
            .ok()?
            .lines()
            .find_map(|l| l.strip_prefix("write_bytes: "))?
            .trim()
            .parse()
            .ok()
    }

    #[test]
    fn a_small_append_to_a_prepared_segment_writes_about_a_page_per_sync() {
        let dir = tempfile::tempdir().unwrap();
        let mut file = preallocated(&dir.path().join("seg.log")).unwrap();
        let Some(before) = thread_write_bytes() else {
            return; // no per-thread I/O accounting here
        };
        const SYNCS: u64 = 64;
        for _ in 0..SYNCS {
            file.write_all(&[7u8; 700]).unwrap();
            file.sync_data().unwrap();
        }
        let per_sync = (thread_write_bytes().unwrap() - before) / SYNCS;
        // One or two 4 KiB pages; zeros written in 64 KiB chunks made it 64 KiB.
        assert!(per_sync <= 12 * 1024, "{per_sync} bytes written per sync");
    }

    fn bodies(dir: &Path, from: u64) -> (Vec<Vec<u8>>, u64) {
        let mut out = Vec::new();
        let end = scan(dir, from, |r| {
            out.push(r.body.to_vec());
            Ok(())
        })
        .unwrap();
        (out, end)
    }

    fn framed(bodies: &[&[u8]]) -> Vec<u8> {
        let mut buf = Vec::new();
        for b in bodies {
            frame(&mut buf, b);
        }
        buf
    }

    #[test]
    fn records_read_back_in_order_from_any_record_boundary() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = JournalWriter::open(dir.path(), 0).unwrap();
        let first = w.append(&mut framed(&[b"one", b"two"])).unwrap();
        let end = w.append(&mut framed(&[b"three"])).unwrap();
        assert_eq!(end, w.end());
        let (all, scanned) = bodies(dir.path(), 0);
        assert_eq!(
            all,
            vec![b"one".to_vec(), b"two".to_vec(), b"three".to_vec()]
        );
        assert_eq!(scanned, end);
        let (tail, _) = bodies(dir.path(), first);
        assert_eq!(tail, vec![b"three".to_vec()]);
        // Segments are written over zeros, never grown.
        let seg = dir.path().join(segment_name(0));
        assert_eq!(std::fs::metadata(seg).unwrap().len(), SEGMENT_BYTES);
    }

    #[test]
    fn a_torn_tail_is_not_read_and_is_zeroed_on_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = JournalWriter::open(dir.path(), 0).unwrap();
        let end = w.append(&mut framed(&[b"kept"])).unwrap();
        drop(w);
        // A crash in the middle of the next write: half a record.
        let seg = dir.path().join(segment_name(0));
        let f = OpenOptions::new().write(true).open(&seg).unwrap();
        f.write_all_at(&framed(&[b"never acknowledged"])[..10], end)
            .unwrap();
        let (all, scanned) = bodies(dir.path(), 0);
        assert_eq!((all, scanned), (vec![b"kept".to_vec()], end));

        let mut w = JournalWriter::open(dir.path(), scanned).unwrap();
        let mut tail = [1u8; 10];
        let f = File::open(&seg).unwrap();
        f.read_exact_at(&mut tail, end).unwrap();
        assert_eq!(tail, [0; 10], "the torn bytes are gone");
        w.append(&mut framed(&[b"next"])).unwrap();
        let (all, _) = bodies(dir.path(), 0);
        assert_eq!(all, vec![b"kept".to_vec(), b"next".to_vec()]);
    }

    #[test]
    fn a_flipped_byte_ends_the_readable_journal_there() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = JournalWriter::open(dir.path(), 0).unwrap();
        let first = w.append(&mut framed(&[b"good"])).unwrap();
        let end = w.append(&mut framed(&[b"bad!"])).unwrap();
        let seg = dir.path().join(segment_name(0));
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&seg)
            .unwrap();
        let mut last = [0u8];
        f.read_exact_at(&mut last, end - 1).unwrap();
        f.write_all_at(&[last[0] ^ 0x20], end - 1).unwrap();
        let (all, scanned) = bodies(dir.path(), 0);
        assert_eq!((all, scanned), (vec![b"good".to_vec()], first));
    }

    #[test]
    fn segments_rotate_and_applied_ones_are_deleted() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = JournalWriter::open(dir.path(), 0).unwrap();
        let big = vec![7u8; (SEGMENT_BYTES - ROTATE_SLACK) as usize];
        let first = w.append(&mut framed(&[&big])).unwrap();
        let end = w.append(&mut framed(&[b"in the second segment"])).unwrap();
        assert_eq!(segments(dir.path()).unwrap(), vec![0, first]);
        let mut r = JournalReader::new(dir.path());
        let mut seen = Vec::new();
        let mut pos = 0;
        while pos < end {
            let next = r
                .read(pos, end, 1024, |rec| {
                    seen.push(rec.body.len());
                    Ok(())
                })
                .unwrap();
            assert!(next > pos, "no progress at {pos}");
            pos = next;
        }
        assert_eq!(seen, vec![big.len(), 21]);
        assert_eq!(r.delete_before(first - 1).unwrap(), 0);
        assert_eq!(r.delete_before(first).unwrap(), 1);
        assert_eq!(segments(dir.path()).unwrap(), vec![first]);
        // Reopening after the deletion appends to the live segment.
        drop(w);
        let mut w = JournalWriter::open(dir.path(), end).unwrap();
        w.append(&mut framed(&[b"more"])).unwrap();
        let (all, _) = bodies(dir.path(), first);
        assert_eq!(all.len(), 2);
    }

    /// Appends `body` as one record, into a prepared segment when it
    /// rotates; returns the end.
    fn append_one(w: &mut JournalWriter, body: &[u8]) -> u64 {
        w.wait_for_spare();
        w.append(&mut framed(&[body])).unwrap()
    }

    #[test]
    fn applied_segments_are_reused_and_their_old_records_never_read_again() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = JournalWriter::open(dir.path(), 0).unwrap();
        // Same-sized records, so a reused segment's old records sit exactly
        // where new ones would: only the position seal tells them apart.
        let body = |i: usize| vec![i as u8; 64 * 1024];
        let mut i = 0;
        while segments(dir.path()).unwrap().len() < 3 {
            append_one(&mut w, &body(i));
            i += 1;
        }
        let third = *segments(dir.path()).unwrap().last().unwrap();
        let mut r = JournalReader::new(dir.path());
        assert_eq!(r.delete_before(third).unwrap(), 2);
        assert_eq!(segments(dir.path()).unwrap(), vec![third]);
        assert_eq!(
            recycled(dir.path()).unwrap().len(),
            2,
            "both kept for reuse"
        );

        let mut expected = Vec::new();
        while segments(dir.path()).unwrap().len() < 3 {
            append_one(&mut w, &body(100 + i));
            expected.push(body(100 + i));
            i += 1;
        }
        assert!(recycled(dir.path()).unwrap().is_empty(), "both reused");
        let (all, end) = bodies(dir.path(), third);
        assert_eq!(end, w.end());
        assert_eq!(all.len(), expected.len(), "no old record read back");
        assert!(all == expected);
    }

    #[test]
    fn a_segment_of_an_older_build_is_read_and_deleted_not_reused() {
        let dir = tempfile::tempdir().unwrap();
        // Records as builds before position seals framed them.
        let seg = preallocated(&dir.path().join(segment_name(0))).unwrap();
        let mut old = Vec::new();
        for body in [&b"older"[..], b"build"] {
            old.extend_from_slice(&(body.len() as u32).to_le_bytes());
            old.extend_from_slice(&crc32fast::hash(body).to_le_bytes());
            old.extend_from_slice(body);
        }
        seg.write_all_at(&old, 0).unwrap();
        let (all, end) = bodies(dir.path(), 0);
        assert_eq!(all, vec![b"older".to_vec(), b"build".to_vec()]);
        assert_eq!(end, old.len() as u64);

        let mut w = JournalWriter::open(dir.path(), end).unwrap();
        let big = vec![7u8; (SEGMENT_BYTES - ROTATE_SLACK) as usize];
        let second = append_one(&mut w, &big);
        append_one(&mut w, b"new");
        assert_eq!(segments(dir.path()).unwrap(), vec![0, second]);
        let (all, _) = bodies(dir.path(), 0);
        assert_eq!(all.len(), 4);
        let mut r = JournalReader::new(dir.path());
        assert_eq!(r.delete_before(second).unwrap(), 1);
        assert!(
            recycled(dir.path()).unwrap().is_empty(),
            "deleted, not kept"
        );
    }

    #[test]
    fn a_position_past_the_journal_starts_a_fresh_segment_there() {
        let dir = tempfile::tempdir().unwrap();
        let (none, end) = bodies(dir.path(), 500);
        assert!(none.is_empty());
        assert_eq!(end, 500);
        let mut w = JournalWriter::open(dir.path(), 500).unwrap();
        let end = w.append(&mut framed(&[b"x"])).unwrap();
        assert_eq!(segments(dir.path()).unwrap(), vec![500]);
        let (all, scanned) = bodies(dir.path(), 500);
        assert_eq!((all.len(), scanned), (1, end));
    }
}
