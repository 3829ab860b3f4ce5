//! Message bodies beside the database, in append-only segment files.
//!
//! In the database a 50 KB body was written twice (into the WAL at commit,
//! into the database file at checkpoint) and read back through a chain of
//! overflow pages: about a tenth of the CPU each message costs
//! (bench/README.md, issue 15, fourth pass). Here it is written once, with
//! one `write`, and the row keeps only where it lies.
//!
//! Durability is unchanged: the writer syncs the segment before the commit
//! of the rows that point into it, so a committed row never points at
//! bytes a crash can lose. A crash between the two leaves bytes no row
//! points at, which the next collection removes with their segment.
//!
//! Segments are numbered in the order they are opened; a process starts a
//! new one rather than append after bytes a crash may have torn. Retention
//! empties old segments row by row; [`Spool::collect`] deletes those no row
//! points into any more.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// A segment is closed once it holds this much: small enough that
/// retention frees disk space in steps, large enough that its creation
/// (a directory sync) is rare.
const SEGMENT_BYTES: u64 = 64 << 20;

/// Where one body lies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Loc {
    pub seg: i64,
    pub off: i64,
}

/// The segment directory of the database at `db`: `<db>-bodies`, beside
/// its `-wal` and `-shm`.
pub fn dir_for(db: &Path) -> PathBuf {
    let mut name = db.as_os_str().to_os_string();
    name.push("-bodies");
    PathBuf::from(name)
}

fn segment_path(dir: &Path, seg: i64) -> PathBuf {
    dir.join(format!("{seg:012}.seg"))
}

/// Segment numbers found in `dir` (none if it does not exist).
fn segments(dir: &Path) -> io::Result<Vec<i64>> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut found = Vec::new();
    for entry in entries {
        let name = entry?.file_name();
        let Some(stem) = name.to_str().and_then(|n| n.strip_suffix(".seg")) else {
            continue;
        };
        if let Ok(seg) = stem.parse::<i64>() {
            found.push(seg);
        }
    }
    found.sort_unstable();
    Ok(found)
}

/// Reads `len` bytes at `loc` in the spool of the database at `db`.
pub fn read(db: &Path, loc: Loc, len: i64) -> io::Result<Vec<u8>> {
    let path = segment_path(&dir_for(db), loc.seg);
    let file = File::open(&path)
        .map_err(|e| io::Error::new(e.kind(), format!("opening {}: {e}", path.display())))?;
    let len = usize::try_from(len).map_err(|_| io::Error::other("negative body size"))?;
    let off = u64::try_from(loc.off).map_err(|_| io::Error::other("negative body offset"))?;
    let mut buf = vec![0u8; len];
    file.read_exact_at(&mut buf, off).map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("reading {len} bytes at {off} in {}: {e}", path.display()),
        )
    })?;
    Ok(buf)
}

struct Active {
    seg: i64,
    file: File,
    len: u64,
    path: PathBuf,
    /// Device and inode when opened: a segment deleted under us (say, with
    /// its directory) would take appends and syncs and then be gone.
    id: (u64, u64),
}

fn file_id(meta: &std::fs::Metadata) -> (u64, u64) {
    use std::os::unix::fs::MetadataExt;
    (meta.dev(), meta.ino())
}

/// The writer thread's side: appends, syncs, collects. Nothing touches the
/// disk until the first append, so a store that never accepts mail (a
/// unit test, an operator command) has no segment directory.
pub struct Spool {
    dir: PathBuf,
    active: Option<Active>,
    /// The newest segment number in use or on disk; the next one opened
    /// takes the one after.
    last: Option<i64>,
    /// Segments given up after a failed write: bodies appended to them
    /// earlier in the batch still belong to rows that will commit, so the
    /// next sync syncs them too.
    retired: Vec<File>,
    unsynced: bool,
    /// Makes the next write fail, as a full disk would.
    #[cfg(test)]
    fail_next_write: bool,
}

impl Spool {
    pub fn new(db: &Path) -> Spool {
        Spool {
            dir: dir_for(db),
            active: None,
            last: None,
            retired: Vec::new(),
            unsynced: false,
            #[cfg(test)]
            fail_next_write: false,
        }
    }

    /// Appends `body` to the active segment. It is durable only after the
    /// next [`Spool::sync`].
    pub fn append(&mut self, body: &[u8]) -> io::Result<Loc> {
        if self.active.as_ref().is_none_or(|a| a.len >= SEGMENT_BYTES) {
            self.open_next()?;
        }
        let Some(active) = self.active.as_mut() else {
            return Err(io::Error::other("no active body segment"));
        };
        let off = active.len;
        self.unsynced = true;
        #[cfg(test)]
        let written = if std::mem::take(&mut self.fail_next_write) {
            Err(io::Error::other("no space left (test)"))
        } else {
            active.file.write_all(body)
        };
        #[cfg(not(test))]
        let written = active.file.write_all(body);
        if let Err(e) = written {
            // The file's end is unknown now: offsets after it could lie.
            // Earlier bodies in it still need their sync.
            if let Some(gone) = self.active.take() {
                self.retired.push(gone.file);
            }
            return Err(e);
        }
        active.len += body.len() as u64;
        Ok(Loc {
            seg: active.seg,
            off: off as i64,
        })
    }

    /// Makes every appended body durable. A failed sync leaves the pages'
    /// fate unknown, so that segment takes no more appends.
    pub fn sync(&mut self) -> io::Result<()> {
        if !self.unsynced {
            return Ok(());
        }
        for file in std::mem::take(&mut self.retired) {
            if let Err(e) = file.sync_data() {
                self.active = None;
                self.unsynced = false;
                return Err(e);
            }
        }
        let Some(active) = self.active.as_ref() else {
            self.unsynced = false;
            return Ok(());
        };
        let result = active
            .file
            .sync_data()
            .and_then(|()| match std::fs::metadata(&active.path) {
                Ok(meta) if file_id(&meta) == active.id => Ok(()),
                _ => Err(io::Error::other(format!(
                    "the message body segment {} was deleted or replaced",
                    active.path.display()
                ))),
            });
        match result {
            Ok(()) => {
                self.unsynced = false;
                Ok(())
            }
            Err(e) => {
                self.active = None;
                self.unsynced = false;
                Err(e)
            }
        }
    }

    fn open_next(&mut self) -> io::Result<()> {
        // The segment being closed must be durable before the first body
        // of the next one, whose rows may commit in the same batch.
        self.sync()?;
        super::create_private_dir(&self.dir)?;
        let mut seg = match self.last {
            Some(last) => last + 1,
            None => segments(&self.dir)?.last().map_or(1, |s| s + 1),
        };
        let (file, path) = loop {
            let path = segment_path(&self.dir, seg);
            match OpenOptions::new()
                .append(true)
                .create_new(true)
                .mode(0o600)
                .open(&path)
            {
                Ok(f) => break (f, path),
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => seg += 1,
                Err(e) => return Err(e),
            }
        };
        // The new name must survive a crash as surely as what goes in it.
        File::open(&self.dir)?.sync_all()?;
        let id = file_id(&file.metadata()?);
        self.last = Some(seg);
        self.active = Some(Active {
            seg,
            file,
            len: 0,
            path,
            id,
        });
        Ok(())
    }

    /// Deletes the segments before `oldest_used` (the lowest segment a row
    /// still points into, `None` when none does), never the active one or
    /// any after it. Returns how many went.
    pub fn collect(&mut self, oldest_used: Option<i64>) -> io::Result<usize> {
        let on_disk = segments(&self.dir)?;
        // Without an active segment, the newest on disk may be another
        // process's; it stays.
        let limit = self
            .active
            .as_ref()
            .map(|a| a.seg)
            .or(on_disk.last().copied())
            .unwrap_or(0);
        let keep_from = oldest_used.map_or(limit, |o| o.min(limit));
        let mut removed = 0;
        for seg in on_disk.into_iter().filter(|s| *s < keep_from) {
            match std::fs::remove_file(segment_path(&self.dir, seg)) {
                Ok(()) => removed += 1,
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        }
        Ok(removed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn appended_bodies_read_back_and_new_processes_start_new_segments() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("t.sqlite3");
        let mut spool = Spool::new(&db);
        assert!(!dir_for(&db).exists(), "nothing on disk before an append");
        let a = spool.append(b"first body").unwrap();
        let b = spool.append(b"second").unwrap();
        spool.sync().unwrap();
        assert_eq!(a, Loc { seg: 1, off: 0 });
        assert_eq!(b, Loc { seg: 1, off: 10 });
        assert_eq!(read(&db, a, 10).unwrap(), b"first body");
        assert_eq!(read(&db, b, 6).unwrap(), b"second");
        let mode = std::fs::metadata(segment_path(&dir_for(&db), 1))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let dir_mode = std::fs::metadata(dir_for(&db))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(dir_mode & 0o777, 0o700);

        let mut next = Spool::new(&db);
        let c = next.append(b"third").unwrap();
        assert_eq!(c, Loc { seg: 2, off: 0 });
        assert_eq!(read(&db, a, 10).unwrap(), b"first body");
        // Past the end is an error, not short or zeroed bytes.
        assert!(read(&db, c, 6).is_err());
    }

    #[test]
    fn collect_keeps_what_rows_use_and_the_active_segment() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("t.sqlite3");
        for _ in 0..3 {
            Spool::new(&db).append(b"x").unwrap();
        }
        let mut spool = Spool::new(&db);
        let active = spool.append(b"y").unwrap();
        assert_eq!(active.seg, 4);
        assert_eq!(spool.collect(Some(2)).unwrap(), 1);
        assert_eq!(segments(&dir_for(&db)).unwrap(), vec![2, 3, 4]);
        // No row uses any: everything before the active segment goes.
        assert_eq!(spool.collect(None).unwrap(), 2);
        assert_eq!(segments(&dir_for(&db)).unwrap(), vec![4]);
        assert_eq!(read(&db, active, 1).unwrap(), b"y");

        // A spool that has not appended keeps the newest segment on disk.
        let mut idle = Spool::new(&db);
        assert_eq!(idle.collect(None).unwrap(), 0);
        assert_eq!(segments(&dir_for(&db)).unwrap(), vec![4]);
    }

    #[test]
    fn a_deleted_segment_fails_the_sync_and_the_next_append_starts_anew() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("t.sqlite3");
        let mut spool = Spool::new(&db);
        spool.append(b"kept").unwrap();
        spool.sync().unwrap();
        spool.append(b"lost").unwrap();
        std::fs::remove_dir_all(dir_for(&db)).unwrap();
        let err = spool.sync().unwrap_err().to_string();
        assert!(err.contains("deleted or replaced"), "{err}");
        let next = spool.append(b"again").unwrap();
        spool.sync().unwrap();
        assert_eq!(next, Loc { seg: 2, off: 0 });
        assert_eq!(read(&db, next, 5).unwrap(), b"again");
    }

    #[test]
    fn a_failed_write_keeps_the_earlier_bodies_for_the_sync_and_moves_on() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("t.sqlite3");
        let mut spool = Spool::new(&db);
        let kept = spool.append(b"kept").unwrap();
        spool.fail_next_write = true;
        assert!(spool.append(b"lost").is_err());
        assert_eq!(
            spool.retired.len(),
            1,
            "the first segment waits for the sync"
        );
        let next = spool.append(b"next").unwrap();
        assert_eq!(next, Loc { seg: 2, off: 0 });
        spool.sync().unwrap();
        assert!(spool.retired.is_empty());
        assert_eq!(read(&db, kept, 4).unwrap(), b"kept");
        assert_eq!(read(&db, next, 4).unwrap(), b"next");
    }

    #[test]
    fn full_segments_roll_over_after_a_sync() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("t.sqlite3");
        let mut spool = Spool::new(&db);
        let big = vec![7u8; (SEGMENT_BYTES / 2) as usize + 1];
        let a = spool.append(&big).unwrap();
        let b = spool.append(&big).unwrap();
        let c = spool.append(b"tail").unwrap();
        assert_eq!((a.seg, b.seg, c.seg), (1, 1, 2));
        assert_eq!(spool.active.as_ref().map(|a| a.seg), Some(2));
        spool.sync().unwrap();
        assert_eq!(read(&db, b, big.len() as i64).unwrap(), big);
        assert_eq!(read(&db, c, 4).unwrap(), b"tail");
    }
}
