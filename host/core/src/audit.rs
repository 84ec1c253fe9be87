//! The audit log: one JSON line per finished deploy, rollback or denial, appended to
//! `<state_dir>/audit.jsonl`: who ran it (CI facts or the local user), the git sha,
//! the image, the target colour, the outcome, per-step timings and the gate's reason.
//!
//! Entries are only ever appended (one `write` of a whole line on an `O_APPEND` file).
//! Writers take an exclusive lock on `audit.jsonl.lock` around "rotate if full, then
//! append", because the deploy lock is already released when a run's entry is written
//! and two rotations racing would drop a whole file of history. The log is rotated to
//! `audit.jsonl.1` when it reaches [`MAX_BYTES`], and a reason is cut to
//! [`MAX_REASON_BYTES`], so the two files together never exceed about
//! 2 × ([`MAX_BYTES`] + one entry); `cutover history` reads both. It never records a
//! secret: actors, shas, image names and reasons only.

use std::fs::OpenOptions;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::Color;
use crate::ci::CiFacts;
use crate::operation::{OperationKind, Outcome, StepTiming};

/// The log's file name in the state directory.
pub const FILE_NAME: &str = "audit.jsonl";

/// The size at which the log is rotated.
pub const MAX_BYTES: u64 = 1024 * 1024;

/// The longest reason kept in an entry; longer ones (a compiler's or nginx's whole
/// output) are cut, so one entry cannot defeat the size cap.
pub const MAX_REASON_BYTES: usize = 4096;

/// Who ran a deploy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Actor {
    /// The CI system, or `local`.
    pub via: String,
    /// The CI actor or the local user name.
    pub name: Option<String>,
    /// The CI run's URL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_url: Option<String>,
    /// The host cutover ran on.
    pub host: String,
}

impl Actor {
    /// The actor from the CI facts, else the local user.
    pub fn from_facts(ci: &CiFacts) -> Actor {
        let host = crate::lock::hostname();
        match ci.system {
            Some(system) => Actor {
                via: system.to_owned(),
                name: ci.get("actor").map(str::to_owned),
                run_url: ci.run_url(),
                host,
            },
            None => Actor {
                via: "local".to_owned(),
                name: std::env::var("USER")
                    .ok()
                    .or_else(|| std::env::var("LOGNAME").ok()),
                run_url: None,
                host,
            },
        }
    }
}

/// One line of the audit log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// The deploy id.
    pub deploy_id: String,
    /// When it finished (RFC 3339).
    pub time: String,
    /// Deploy or rollback.
    pub kind: OperationKind,
    /// Who ran it.
    pub actor: Actor,
    /// HEAD's sha.
    pub git_sha: Option<String>,
    /// The image reference.
    pub image: Option<String>,
    /// The image's repository digest, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digest: Option<String>,
    /// The colour deployed to.
    pub target: Option<Color>,
    /// How it ended.
    pub outcome: Outcome,
    /// Why it failed, or the gate's reason when denied.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Step timings.
    pub steps: Vec<StepTiming>,
}

/// The audit log could not be written or read.
#[derive(Debug, thiserror::Error)]
#[error("audit log {}: {source}", path.display())]
pub struct AuditError {
    /// The log file.
    pub path: PathBuf,
    /// Why.
    pub source: std::io::Error,
}

/// A service's audit log.
#[derive(Debug, Clone)]
pub struct AuditLog {
    path: PathBuf,
    max_bytes: u64,
}

impl AuditLog {
    /// The log in `state_dir`.
    pub fn new(state_dir: &Path) -> AuditLog {
        AuditLog {
            path: state_dir.join(FILE_NAME),
            max_bytes: MAX_BYTES,
        }
    }

    /// The same log with another rotation size (tests).
    pub fn with_max_bytes(mut self, max_bytes: u64) -> AuditLog {
        self.max_bytes = max_bytes;
        self
    }

    fn sibling(&self, suffix: &str) -> PathBuf {
        let mut name = self.path.clone().into_os_string();
        name.push(suffix);
        PathBuf::from(name)
    }

    fn rotated(&self) -> PathBuf {
        self.sibling(".1")
    }

    /// The log file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends one entry, rotating first when the log has reached its cap.
    ///
    /// # Errors
    /// [`AuditError`] when the file cannot be locked, rotated or written.
    pub fn append(&self, entry: &Entry) -> Result<(), AuditError> {
        use std::os::unix::fs::OpenOptionsExt;
        let err = |path: &Path| {
            let path = path.to_owned();
            move |source| AuditError { path, source }
        };
        let lock_path = self.sibling(".lock");
        let lock = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&lock_path)
            .map_err(err(&lock_path))?;
        // Released when `lock` is dropped at the end of this function.
        lock.lock().map_err(err(&lock_path))?;
        if std::fs::metadata(&self.path).is_ok_and(|m| m.len() >= self.max_bytes) {
            std::fs::rename(&self.path, self.rotated()).map_err(err(&self.path))?;
        }
        let mut file = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .mode(0o600)
            .open(&self.path)
            .map_err(err(&self.path))?;
        // A crash mid-write leaves a torn last line; appending to it would glue the new
        // entry onto the fragment and the reader would skip both. Ending the fragment
        // first keeps the new entry on a line of its own.
        let mut line = if ends_torn(&file).map_err(err(&self.path))? {
            vec![b'\n']
        } else {
            Vec::new()
        };
        serde_json::to_writer(&mut line, &bounded(entry))
            .map_err(|e| err(&self.path)(std::io::Error::other(e)))?;
        line.push(b'\n');
        file.write_all(&line).map_err(err(&self.path))?;
        file.sync_data().map_err(err(&self.path))
    }

    /// Every entry, oldest first (the rotated file, then the current one). Lines that
    /// do not parse (e.g. a torn last line after a crash) are skipped.
    ///
    /// # Errors
    /// [`AuditError`] when a file exists but cannot be read.
    pub fn read(&self) -> Result<Vec<Entry>, AuditError> {
        let mut entries = Vec::new();
        for path in [self.rotated(), self.path.clone()] {
            let text = match std::fs::read_to_string(&path) {
                Ok(text) => text,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(source) => return Err(AuditError { path, source }),
            };
            entries.extend(text.lines().filter_map(|l| serde_json::from_str(l).ok()));
        }
        Ok(entries)
    }
}

/// True when `file` is not empty and does not end with a newline.
fn ends_torn(file: &std::fs::File) -> std::io::Result<bool> {
    use std::os::unix::fs::FileExt;
    let len = file.metadata()?.len();
    if len == 0 {
        return Ok(false);
    }
    let mut last = [0u8];
    file.read_exact_at(&mut last, len - 1)?;
    Ok(last != *b"\n")
}

/// `entry` with its reason cut to [`MAX_REASON_BYTES`] (on a character boundary).
fn bounded(entry: &Entry) -> std::borrow::Cow<'_, Entry> {
    match &entry.reason {
        Some(reason) if reason.len() > MAX_REASON_BYTES => {
            let mut end = MAX_REASON_BYTES;
            while !reason.is_char_boundary(end) {
                end -= 1;
            }
            let mut short = entry.clone();
            short.reason = Some(format!("{}… (cut)", &reason[..end]));
            std::borrow::Cow::Owned(short)
        }
        _ => std::borrow::Cow::Borrowed(entry),
    }
}

/// The kind's name in output: `deploy` or `rollback`.
pub fn kind_name(kind: OperationKind) -> &'static str {
    match kind {
        OperationKind::Deploy => "deploy",
        OperationKind::Rollback => "rollback",
    }
}

/// The entries as a table for a terminal, newest last.
pub fn to_table(entries: &[Entry]) -> String {
    use std::fmt::Write as _;
    let mut out = format!(
        "{:<24} {:<20} {:<8} {:<11} {:<6} {:<12} {:>7} {}\n",
        "DEPLOY", "TIME", "KIND", "OUTCOME", "TO", "SHA", "SECONDS", "BY"
    );
    for e in entries {
        let kind = kind_name(e.kind);
        let secs = e.steps.iter().map(|s| s.ms).sum::<u64>() as f64 / 1000.0;
        let sha = e.git_sha.as_deref().map_or("-", |s| &s[..s.len().min(12)]);
        let by = format!("{}:{}", e.actor.via, e.actor.name.as_deref().unwrap_or("?"));
        let _ = writeln!(
            out,
            "{:<24} {:<20} {:<8} {:<11} {:<6} {:<12} {:>7.1} {}",
            e.deploy_id,
            e.time,
            kind,
            e.outcome.as_str(),
            e.target.map_or("-".to_owned(), |c| c.to_string()),
            sha,
            secs,
            by
        );
        if let Some(reason) = &e.reason {
            let _ = writeln!(out, "{:<24} {reason}", "");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(id: &str) -> Entry {
        Entry {
            deploy_id: id.to_owned(),
            time: crate::state::now_rfc3339(),
            kind: OperationKind::Deploy,
            actor: Actor::from_facts(&CiFacts::default()),
            git_sha: Some("0123456789abcdef0123".to_owned()),
            image: Some("hello:1".to_owned()),
            digest: None,
            target: Some(Color::Green),
            outcome: Outcome::Denied,
            reason: Some("no tag on HEAD matches `cicd` (tags: none)".to_owned()),
            steps: vec![],
        }
    }

    fn ids(log: &AuditLog) -> Vec<String> {
        log.read()
            .unwrap()
            .into_iter()
            .map(|e| e.deploy_id)
            .collect()
    }

    #[test]
    fn appends_and_reads_back_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let log = AuditLog::new(dir.path());
        log.append(&entry("a")).unwrap();
        log.append(&entry("b")).unwrap();
        let ids = ids(&log);
        assert_eq!(ids, ["a", "b"]);
        let table = to_table(&log.read().unwrap());
        assert!(table.contains("denied"), "{table}");
        assert!(table.contains("cicd"), "{table}");
        // Columns line up: `TO` sits above the target colour in every row.
        let lines: Vec<&str> = table.lines().collect();
        let to = lines[0].find(" TO ").unwrap() + 1;
        assert_eq!(&lines[1][to..to + 5], "green", "{table}");
    }

    #[test]
    fn rotates_at_the_cap_and_keeps_reading_both_files() {
        let dir = tempfile::tempdir().unwrap();
        let log = AuditLog::new(dir.path()).with_max_bytes(600);
        for i in 0..10 {
            log.append(&entry(&format!("d{i}"))).unwrap();
        }
        let current = std::fs::metadata(dir.path().join(FILE_NAME)).unwrap().len();
        assert!(current < 1200, "current log stays near the cap: {current}");
        let rotated = dir.path().join("audit.jsonl.1");
        assert!(rotated.exists());
        let total = log.read().unwrap().len();
        assert!(
            total < 10,
            "the oldest entries were dropped with the rotation"
        );
        assert_eq!(log.read().unwrap().last().unwrap().deploy_id, "d9");
    }

    #[test]
    fn both_files_together_stay_under_twice_the_cap_plus_one_entry() {
        let dir = tempfile::tempdir().unwrap();
        let cap = 2000;
        let log = AuditLog::new(dir.path()).with_max_bytes(cap);
        let mut long = entry("huge");
        long.reason = Some("é".repeat(MAX_REASON_BYTES));
        let max_line = serde_json::to_vec(&bounded(&long)).unwrap().len() as u64 + 1;
        for i in 0..200 {
            let e = if i % 7 == 0 {
                long.clone()
            } else {
                entry(&format!("d{i}"))
            };
            log.append(&e).unwrap();
            let current = std::fs::metadata(log.path()).unwrap().len();
            let rotated = std::fs::metadata(log.rotated()).map_or(0, |m| m.len());
            assert!(current < cap + max_line, "after {i}: current {current}");
            assert!(rotated < cap + max_line, "after {i}: rotated {rotated}");
        }
        let entries = log.read().unwrap();
        assert_eq!(entries.last().unwrap().deploy_id, "d199");
        let cut = entries.iter().find(|e| e.deploy_id == "huge").unwrap();
        let reason = cut.reason.as_deref().unwrap();
        assert!(reason.len() <= MAX_REASON_BYTES + 16, "{}", reason.len());
        assert!(reason.ends_with("(cut)"));
        let files = std::fs::read_dir(dir.path()).unwrap().count();
        assert_eq!(files, 3, "the log, one rotated file and the lock file");
    }

    #[test]
    fn concurrent_writers_lose_no_entry() {
        let dir = tempfile::tempdir().unwrap();
        // One rotation in the middle of the run (at 60 of 100 entries): without the
        // writers' lock, two writers can both rotate and drop a whole file.
        let line = serde_json::to_vec(&entry("t0-00")).unwrap().len() as u64 + 1;
        let log = AuditLog::new(dir.path()).with_max_bytes(60 * line);
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let log = log.clone();
                std::thread::spawn(move || {
                    for i in 0..25 {
                        log.append(&entry(&format!("t{t}-{i:02}"))).unwrap();
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert!(log.rotated().exists(), "the log rotated once");
        let entries = log.read().unwrap();
        assert_eq!(entries.len(), 100, "every line is whole and kept");
    }

    #[test]
    fn torn_last_line_is_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let log = AuditLog::new(dir.path());
        log.append(&entry("a")).unwrap();
        let mut f = OpenOptions::new()
            .append(true)
            .open(dir.path().join(FILE_NAME))
            .unwrap();
        f.write_all(b"{\"deploy_id\":\"tor").unwrap();
        assert_eq!(log.read().unwrap().len(), 1);
    }

    #[test]
    fn entry_after_a_torn_line_is_not_swallowed() {
        let dir = tempfile::tempdir().unwrap();
        let log = AuditLog::new(dir.path());
        log.append(&entry("a")).unwrap();
        log.append(&entry("b")).unwrap();
        // A crash in the middle of writing `b`: cut the file inside its line.
        let len = std::fs::metadata(log.path()).unwrap().len();
        OpenOptions::new()
            .write(true)
            .open(log.path())
            .unwrap()
            .set_len(len - 20)
            .unwrap();
        log.append(&entry("c")).unwrap();
        let ids = ids(&log);
        assert_eq!(ids, ["a", "c"], "the torn `b` is skipped, `c` is kept");
        let text = std::fs::read_to_string(log.path()).unwrap();
        assert_eq!(text.lines().count(), 3, "{text}");
        assert!(text.ends_with('\n'));
    }
}
