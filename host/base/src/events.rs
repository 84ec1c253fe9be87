//! What a deploy reports as it goes: one [`Event`] per step start and end, plugin log
//! lines and the final outcome, rendered by a [`Reporter`] for a terminal, for CI logs
//! or as JSON lines.
//!
//! Reporters only format and print; they never decide anything. Nothing secret is
//! ever put into an event, so every reporter may print all of them.
//!
//! The JSON form (`--output json`) is an interface: `cutover serve` reads its child
//! deploys' events back into [`Event`], and scripts read them too, so a field is
//! added, never renamed.

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

use crate::Color;
use crate::operation::{Outcome, Step};

/// Severity of a log event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Level {
    /// Detail for debugging.
    Debug,
    /// Normal progress.
    Info,
    /// Something the user should look at.
    Warn,
    /// A failure.
    Error,
}

/// One thing that happened during a command.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "kebab-case")]
pub enum Event {
    /// A deploy, rollback or recovery began.
    Started {
        /// The deploy id.
        id: String,
        /// The service.
        service: String,
        /// `deploy`, `rollback` or `recover`.
        operation: String,
    },
    /// A step began.
    StepStarted {
        /// The step.
        step: Step,
    },
    /// A step completed.
    StepFinished {
        /// The step.
        step: Step,
        /// Its wall time.
        ms: u64,
        /// A short summary (e.g. the colour selected, the image built).
        detail: String,
    },
    /// A step failed.
    StepFailed {
        /// The step.
        step: Step,
        /// Its wall time until the failure.
        ms: u64,
        /// What went wrong.
        error: String,
    },
    /// A log line from cutover or a plugin.
    Log {
        /// Severity.
        level: Level,
        /// `cutover` or the plugin's name.
        source: String,
        /// The message.
        message: String,
    },
    /// The command ended.
    Finished {
        /// The deploy id.
        id: String,
        /// How it ended.
        outcome: Outcome,
        /// Total wall time.
        ms: u64,
        /// The colour serving traffic afterwards.
        live: Option<Color>,
        /// Why, when it did not succeed.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reason: Option<String>,
    },
    /// The command failed outside a deploy's steps (a bad config, the lock held);
    /// with `--output json` it is the last line.
    Error {
        /// What failed and what to do next.
        error: String,
    },
}

/// Receives events as they happen.
pub trait Reporter: Send + Sync {
    /// Handles one event.
    fn emit(&self, event: &Event);

    /// Convenience for a log event from cutover itself.
    fn log(&self, level: Level, message: &str) {
        self.emit(&Event::Log {
            level,
            source: "cutover".to_owned(),
            message: message.to_owned(),
        });
    }
}

/// How events are printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// Human-readable lines; progress lines that update in place on a terminal.
    Human,
    /// One JSON object per line.
    Json,
}

/// Prints events: human lines to stderr; JSON lines to stdout, or to stderr when
/// stdout is reserved for a command's report (`status`, `plan`).
pub struct Printer {
    format: Format,
    json_to_stderr: bool,
    /// On a terminal a "step started" line is rewritten in place when it ends.
    live_progress: bool,
    pending: Mutex<bool>,
}

impl Printer {
    /// A printer in `format`; progress lines update in place only on a terminal.
    pub fn new(format: Format) -> Printer {
        Printer {
            format,
            json_to_stderr: false,
            live_progress: format == Format::Human && std::io::stderr().is_terminal(),
            pending: Mutex::new(false),
        }
    }

    /// The same printer, but JSON events go to stderr so stdout carries only the
    /// command's report.
    pub fn reporting(mut self) -> Printer {
        self.json_to_stderr = true;
        self
    }

    fn human_line(event: &Event) -> Option<String> {
        Some(match event {
            Event::Started {
                id,
                service,
                operation,
            } => format!("{operation} {service} (id {id})"),
            Event::StepStarted { step } => format!("  … {step}"),
            Event::StepFinished { step, ms, detail } => {
                format!("  ✓ {step:<9} {ms:>6} ms  {detail}")
            }
            Event::StepFailed { step, ms, error } => {
                format!("  ✗ {step:<9} {ms:>6} ms  {error}")
            }
            Event::Log {
                level,
                source,
                message,
            } => {
                if *level == Level::Debug {
                    return None;
                }
                let tag = match level {
                    Level::Warn => "warning: ",
                    Level::Error => "error: ",
                    _ => "",
                };
                format!("    [{source}] {tag}{message}")
            }
            Event::Finished {
                outcome,
                ms,
                live,
                reason,
                ..
            } => {
                let live = live.map_or("nothing".to_owned(), |c| c.to_string());
                let mut line = format!("{outcome} in {ms} ms; live: {live}");
                if let Some(reason) = reason {
                    line.push_str(&format!("\n  {reason}"));
                }
                line
            }
            Event::Error { error } => format!("error: {error}"),
        })
    }
}

impl Reporter for Printer {
    fn emit(&self, event: &Event) {
        match self.format {
            Format::Json => {
                let mut line = serde_json::to_vec(event).unwrap_or_default();
                line.push(b'\n');
                let _ = if self.json_to_stderr {
                    std::io::stderr().lock().write_all(&line)
                } else {
                    let mut out = std::io::stdout().lock();
                    out.write_all(&line).and_then(|()| out.flush())
                };
            }
            Format::Human => {
                let Some(line) = Self::human_line(event) else {
                    return;
                };
                let mut err = std::io::stderr().lock();
                let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
                if self.live_progress {
                    if *pending {
                        // Replace the "… step" line rather than leaving it behind.
                        let _ = err.write_all(b"\r\x1b[2K");
                    }
                    *pending = matches!(event, Event::StepStarted { .. });
                    let end: &[u8] = if *pending { b"" } else { b"\n" };
                    let _ = err.write_all(line.as_bytes());
                    let _ = err.write_all(end);
                } else if !matches!(event, Event::StepStarted { .. }) {
                    // In CI logs a start line per step is noise: the end line has the time.
                    let _ = writeln!(err, "{line}");
                }
                let _ = err.flush();
            }
        }
    }
}

/// The `source` of the log events that carry `docker build` output, line by line.
pub const BUILD_OUTPUT: &str = "docker build";

/// Passes every event on except build output ([`BUILD_OUTPUT`] log lines): a build
/// prints pages of it and may print what a `RUN` step echoes, so it stays out of
/// `--output json` and `events.jsonl` (and so out of every dashboard stream) unless
/// `--verbose` asks for it. Human output drops it anyway (it is debug-level).
pub struct WithoutBuildOutput(pub Arc<dyn Reporter>);

impl Reporter for WithoutBuildOutput {
    fn emit(&self, event: &Event) {
        if !matches!(event, Event::Log { source, .. } if source == BUILD_OUTPUT) {
            self.0.emit(event);
        }
    }
}

/// Keeps every event in memory (for tests and for callers that render later).
#[derive(Default)]
pub struct Recorder {
    events: Mutex<Vec<Event>>,
}

impl Recorder {
    /// A copy of the events so far.
    pub fn events(&self) -> Vec<Event> {
        self.events
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

impl Reporter for Recorder {
    fn emit(&self, event: &Event) {
        self.events
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(event.clone());
    }
}

/// Discards every event.
pub struct Silent;

impl Reporter for Silent {
    fn emit(&self, _event: &Event) {}
}

/// The file in the state directory that a running deploy, rollback or recovery
/// appends its events to: the stream the dashboard tails for its live view.
pub const LOG_FILE: &str = "events.jsonl";

/// A run that starts when [`LOG_FILE`] is over this size starts it afresh, so the
/// file holds the last runs.
pub const LOG_MAX_BYTES: u64 = 256 * 1024;

/// Past this, any append starts [`LOG_FILE`] afresh, mid-run too: one run that logs
/// without end (or several that never start) must not fill the disk.
pub const LOG_HARD_MAX_BYTES: u64 = 1024 * 1024;

/// Passes every event on, and appends it as the JSON line `--output json` prints to
/// [`LOG_FILE`] in a state directory. Writing is best effort: a full or read-only
/// disk never disturbs the command (the same events still reach the terminal).
pub struct FileLog {
    inner: Arc<dyn Reporter>,
    path: PathBuf,
}

impl FileLog {
    /// Tees `inner`'s events into `state_dir`'s [`LOG_FILE`].
    pub fn tee(inner: Arc<dyn Reporter>, state_dir: &Path) -> FileLog {
        FileLog {
            inner,
            path: state_dir.join(LOG_FILE),
        }
    }

    fn append(&self, event: &Event) -> std::io::Result<()> {
        use std::os::unix::fs::OpenOptionsExt;
        let mut options = std::fs::OpenOptions::new();
        options.create(true).mode(0o600);
        let len = std::fs::metadata(&self.path).map_or(0, |m| m.len());
        let full = len > LOG_MAX_BYTES && matches!(event, Event::Started { .. });
        // Over the hard bound the file starts over rather than keeping its newest
        // half: truncating is one system call that concurrent appenders cannot
        // interleave with, and the file is a live view, not a record (the audit log
        // is). A reader notices the file shrank and starts again from its start.
        if full || len > LOG_HARD_MAX_BYTES {
            options.write(true).truncate(true);
        } else {
            options.append(true);
        }
        let mut line = serde_json::to_vec(event).map_err(std::io::Error::other)?;
        line.push(b'\n');
        // One write of a whole line on an append-mode file: lines of two processes
        // never interleave.
        options.open(&self.path)?.write_all(&line)
    }
}

impl Reporter for FileLog {
    fn emit(&self, event: &Event) {
        self.inner.emit(event);
        let _ = self.append(event);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Regression: build output reached `--output json` and `events.jsonl`.
    #[test]
    fn build_output_is_left_out_and_everything_else_passes() {
        let recorder = Arc::new(Recorder::default());
        let filter = WithoutBuildOutput(recorder.clone());
        let build = Event::Log {
            level: Level::Debug,
            source: BUILD_OUTPUT.to_owned(),
            message: "Step 1/7 : FROM scratch".to_owned(),
        };
        filter.emit(&build);
        filter.log(Level::Debug, "a debug line of cutover's own");
        filter.emit(&Event::StepStarted { step: Step::Image });
        let events = recorder.events();
        assert_eq!(events.len(), 2, "{events:?}");
        assert!(!events.contains(&build));
    }

    /// What `--output json` prints, byte for byte, and what `cutover serve` parses back.
    #[test]
    fn json_lines_are_stable_and_parse_back() {
        let lines = [
            (
                r#"{"event":"started","id":"d1","service":"hello","operation":"deploy"}"#,
                Event::Started {
                    id: "d1".to_owned(),
                    service: "hello".to_owned(),
                    operation: "deploy".to_owned(),
                },
            ),
            (
                r#"{"event":"step-finished","step":"switch","ms":12,"detail":"green"}"#,
                Event::StepFinished {
                    step: Step::Switch,
                    ms: 12,
                    detail: "green".to_owned(),
                },
            ),
            (
                r#"{"event":"log","level":"warn","source":"gate","message":"no tag"}"#,
                Event::Log {
                    level: Level::Warn,
                    source: "gate".to_owned(),
                    message: "no tag".to_owned(),
                },
            ),
            (
                r#"{"event":"finished","id":"d1","outcome":"rolled-back","ms":900,"live":"blue","reason":"health"}"#,
                Event::Finished {
                    id: "d1".to_owned(),
                    outcome: Outcome::RolledBack,
                    ms: 900,
                    live: Some(Color::Blue),
                    reason: Some("health".to_owned()),
                },
            ),
            (
                r#"{"event":"finished","id":"d2","outcome":"succeeded","ms":5,"live":null}"#,
                Event::Finished {
                    id: "d2".to_owned(),
                    outcome: Outcome::Succeeded,
                    ms: 5,
                    live: None,
                    reason: None,
                },
            ),
            (
                r#"{"event":"error","error":"the lock is held"}"#,
                Event::Error {
                    error: "the lock is held".to_owned(),
                },
            ),
        ];
        for (line, event) in lines {
            assert_eq!(serde_json::to_string(&event).unwrap(), line);
            assert_eq!(
                serde_json::from_str::<Event>(line).unwrap(),
                event,
                "{line}"
            );
        }
    }

    #[test]
    fn file_log_appends_json_lines_and_starts_afresh_when_full() {
        let dir = tempfile::tempdir().unwrap();
        let recorder = Arc::new(Recorder::default());
        let log = FileLog::tee(recorder.clone(), dir.path());
        let started = Event::Started {
            id: "d1".to_owned(),
            service: "hello".to_owned(),
            operation: "deploy".to_owned(),
        };
        log.emit(&started);
        log.log(Level::Info, "hi");
        let text = std::fs::read_to_string(dir.path().join(LOG_FILE)).unwrap();
        assert_eq!(text.lines().count(), 2);
        assert!(
            text.starts_with(r#"{"event":"started","id":"d1""#),
            "{text}"
        );
        assert_eq!(recorder.events().len(), 2, "still passed on");

        std::fs::write(
            dir.path().join(LOG_FILE),
            vec![b'x'; usize::try_from(LOG_MAX_BYTES).unwrap() + 1],
        )
        .unwrap();
        log.log(Level::Info, "mid-run lines never cut the file");
        assert!(std::fs::metadata(dir.path().join(LOG_FILE)).unwrap().len() > LOG_MAX_BYTES);
        log.emit(&started);
        let text = std::fs::read_to_string(dir.path().join(LOG_FILE)).unwrap();
        assert_eq!(text.lines().count(), 1, "{text}");
    }

    /// Regression: the file was cut only at a `Started` event, so a run that never
    /// ended (or a stream of other events) grew it without bound.
    #[test]
    fn the_event_log_never_grows_past_its_bound_without_a_started_event() {
        let dir = tempfile::tempdir().unwrap();
        let log = FileLog::tee(Arc::new(Silent), dir.path());
        let path = dir.path().join(LOG_FILE);
        let line = "x".repeat(1000);
        let mut peak = 0;
        for _ in 0..3000 {
            log.log(Level::Info, &line);
            peak = peak.max(std::fs::metadata(&path).unwrap().len());
        }
        assert!(
            peak <= LOG_HARD_MAX_BYTES + 2000,
            "3 MB of log lines, file peaked at {peak} bytes"
        );
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(
            text.lines().all(|l| l.ends_with("x\"}")),
            "whole lines only"
        );
    }
}
