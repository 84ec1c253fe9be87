//! Following a file of lines that another process appends to: nginx's access log for
//! the canary, a state directory's event log for the dashboard's live view.
//!
//! A [`Tail`] remembers the offset just past the last whole line it returned, so a
//! line still being written is read again, whole, on a later look (nothing is held
//! in memory between looks, and UTF-8 is decoded per whole line). A file that is
//! missing or shorter than the offset was rotated or truncated: reading starts again
//! from its beginning. A line longer than the tail's chunk is skipped, never waited
//! for, so one oversized line cannot stop the tail for good.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

/// The longest line a [`Tail`] returns unless told otherwise; a longer one is skipped.
pub const DEFAULT_CHUNK: u64 = 256 * 1024;

/// Where a reader of a growing file of lines is.
#[derive(Debug, Clone)]
pub struct Tail {
    path: PathBuf,
    /// The next byte to read: just past the last whole line returned or skipped.
    offset: u64,
    /// Inside a line longer than `chunk`, dropped up to its end.
    skipping: bool,
    /// The size of one read, and so the longest line returned.
    chunk: u64,
    /// The most bytes one [`Tail::read_lines`] reads; the rest comes on the next call.
    budget: u64,
    /// Lines skipped for being longer than `chunk`, since the tail was made.
    skipped: u64,
}

impl Tail {
    /// A tail that starts at the file's current end: only lines from now on count.
    /// A file that does not exist yet starts at 0.
    pub fn from_end(path: &Path) -> Tail {
        let offset = std::fs::metadata(path).map_or(0, |m| m.len());
        Tail::at(path, offset)
    }

    /// A tail that starts at `offset` (0: the whole file), which should be the start
    /// of a line.
    pub fn at(path: &Path, offset: u64) -> Tail {
        Tail {
            path: path.to_owned(),
            offset,
            skipping: false,
            chunk: DEFAULT_CHUNK,
            budget: u64::MAX,
            skipped: 0,
        }
    }

    /// Reads `chunk` bytes at a time (at least 1): a line longer than that is skipped.
    #[must_use]
    pub fn chunk(mut self, chunk: u64) -> Tail {
        self.chunk = chunk.max(1);
        self
    }

    /// Reads at most about `bytes` per call (at least one chunk); without it a call
    /// reads up to the file's end.
    #[must_use]
    pub fn budget(mut self, bytes: u64) -> Tail {
        self.budget = bytes.max(1);
        self
    }

    /// The next byte to read: just past the last whole line returned or skipped.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// How many lines were skipped for being longer than the chunk.
    pub fn skipped(&self) -> u64 {
        self.skipped
    }

    /// The whole, non-empty lines appended since the last call, without their line
    /// ends. A missing file has none (and is read from its start when it comes back).
    ///
    /// # Errors
    /// The file exists but cannot be opened or read; the tail stays where it was.
    pub fn read_lines(&mut self) -> std::io::Result<Vec<String>> {
        let mut file = match File::open(&self.path) {
            Ok(file) => file,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                self.restart();
                return Ok(Vec::new());
            }
            Err(e) => return Err(e),
        };
        let len = file.metadata()?.len();
        if len < self.offset {
            self.restart();
        }
        let mut lines = Vec::new();
        let mut read = 0u64;
        let mut bytes = Vec::new();
        while self.offset < len && read < self.budget {
            bytes.clear();
            let chunk = file
                .seek(SeekFrom::Start(self.offset))
                .and_then(|_| (&mut file).take(self.chunk).read_to_end(&mut bytes));
            match chunk {
                Ok(n) => read += n as u64,
                // The lines already taken are returned (the offset is past them); the
                // error comes back on the next call.
                Err(_) if !lines.is_empty() => break,
                Err(e) => return Err(e),
            }
            let consumed = self.take_lines(&bytes, &mut lines);
            if consumed == 0 {
                // Only the start of a line still being written: it waits for its end.
                break;
            }
            self.offset += consumed;
        }
        Ok(lines)
    }

    fn restart(&mut self) {
        self.offset = 0;
        self.skipping = false;
    }

    /// Moves the whole lines of one chunk read at `offset` into `lines`; returns how
    /// many bytes they (and any skipped part of an overlong line) took.
    fn take_lines(&mut self, bytes: &[u8], lines: &mut Vec<String>) -> u64 {
        let mut start = 0;
        if self.skipping {
            match bytes.iter().position(|b| *b == b'\n') {
                Some(i) => {
                    start = i + 1;
                    self.skipping = false;
                }
                None => return bytes.len() as u64,
            }
        }
        // A line still being written stays for the next look, unless it already fills a
        // whole chunk: then it is too long to ever be read, and is skipped.
        let whole = match bytes[start..].iter().rposition(|b| *b == b'\n') {
            Some(i) => start + i + 1,
            None if start == 0 && bytes.len() as u64 == self.chunk => {
                self.skipping = true;
                self.skipped += 1;
                return bytes.len() as u64;
            }
            None => start,
        };
        lines.extend(
            String::from_utf8_lossy(&bytes[start..whole])
                .lines()
                .filter(|l| !l.is_empty())
                .map(str::to_owned),
        );
        whole as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write as _;

    #[test]
    fn reads_only_new_complete_lines_and_survives_rotation() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("access.json");
        std::fs::write(&path, "old\n").unwrap();
        let mut tail = Tail::from_end(&path);
        assert!(tail.read_lines().unwrap().is_empty());
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap();
        write!(f, "one\ntw").unwrap();
        assert_eq!(tail.read_lines().unwrap(), vec!["one"]);
        writeln!(f, "o").unwrap();
        assert_eq!(tail.read_lines().unwrap(), vec!["two"]);
        std::fs::write(&path, "new\n").unwrap();
        assert_eq!(tail.read_lines().unwrap(), vec!["new"]);
        let mut missing = Tail::from_end(&dir.path().join("none"));
        assert!(missing.read_lines().unwrap().is_empty());
    }

    #[test]
    fn reads_whole_lines_and_restarts_a_shrunk_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.jsonl");
        std::fs::write(&path, "{\"a\":1}\n{\"b\":").unwrap();
        let mut tail = Tail::at(&path, 0);
        assert_eq!(tail.read_lines().unwrap(), ["{\"a\":1}"]);
        assert_eq!(tail.offset(), 8);
        std::fs::write(&path, "{\"a\":1}\n{\"b\":2}\n").unwrap();
        assert_eq!(tail.read_lines().unwrap(), ["{\"b\":2}"]);
        assert_eq!(tail.offset(), 16);
        std::fs::write(&path, "{\"c\":3}\n").unwrap();
        assert_eq!(
            tail.read_lines().unwrap(),
            ["{\"c\":3}"],
            "shrank: from the start"
        );
    }

    #[test]
    fn a_file_that_disappears_is_read_from_its_start_when_it_comes_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("access.json");
        std::fs::write(&path, "old line\n").unwrap();
        let mut tail = Tail::from_end(&path);
        std::fs::remove_file(&path).unwrap();
        assert!(tail.read_lines().unwrap().is_empty());
        // Longer than the old offset: without the restart, its start would be lost.
        std::fs::write(&path, "first\nsecond\n").unwrap();
        assert_eq!(tail.read_lines().unwrap(), ["first", "second"]);
    }

    /// Regression: a line over 256 KiB never fit a read, so the tail waited for its
    /// end forever and no later event reached the dashboard.
    #[test]
    fn skips_a_line_over_the_chunk_and_goes_on() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.jsonl");
        let huge = "y".repeat(usize::try_from(DEFAULT_CHUNK).unwrap() * 2 + 17);
        std::fs::write(
            &path,
            format!("{{\"a\":1}}\n{huge}\n{{\"b\":2}}\n{{\"c\":3}}\n"),
        )
        .unwrap();
        // One chunk per look, as the dashboard reads.
        let mut tail = Tail::at(&path, 0).budget(DEFAULT_CHUNK);
        let mut seen = Vec::new();
        for _ in 0..10 {
            seen.extend(tail.read_lines().unwrap());
        }
        assert_eq!(seen, ["{\"a\":1}", "{\"b\":2}", "{\"c\":3}"]);
        assert_eq!(tail.offset(), std::fs::metadata(&path).unwrap().len());
        assert_eq!(tail.skipped(), 1);
        // Without a budget one look reads past the long line to the end.
        let mut tail = Tail::at(&path, 0);
        assert_eq!(
            tail.read_lines().unwrap(),
            ["{\"a\":1}", "{\"b\":2}", "{\"c\":3}"]
        );
        assert_eq!(tail.skipped(), 1);
    }

    /// Without a budget one call catches up however much was appended, a chunk at a
    /// time, and a budget leaves the rest for later calls.
    #[test]
    fn a_call_reads_to_the_end_chunk_by_chunk_unless_budgeted() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("access.json");
        let all: Vec<String> = (0..100).map(|i| format!("line {i:03}")).collect();
        std::fs::write(&path, all.join("\n") + "\npartial").unwrap();
        let mut tail = Tail::at(&path, 0).chunk(20);
        assert_eq!(tail.read_lines().unwrap(), all);
        assert_eq!(tail.skipped(), 0);
        let mut tail = Tail::at(&path, 0).chunk(20).budget(20);
        let mut seen = tail.read_lines().unwrap();
        assert_eq!(seen.len(), 2, "9-byte lines, two in one 20-byte chunk");
        while seen.len() < all.len() {
            let more = tail.read_lines().unwrap();
            assert!(!more.is_empty());
            seen.extend(more);
        }
        assert_eq!(seen, all);
        assert!(tail.read_lines().unwrap().is_empty(), "partial waits");
    }
}
