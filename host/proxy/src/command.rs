//! Runs one external program (nginx, or a configured test/reload command) from an
//! argv list with a deadline, and captures what it printed.
//!
//! Never goes through a shell and never waits without a bound: a command that
//! outlives its deadline is killed. A daemonizing program (nginx starting) may hand its
//! output pipes to a child that lives on, so output is collected until the program
//! exits plus a short grace, not until the pipes close.

use std::ffi::OsString;
use std::io;
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::process::Command;

/// Output beyond this is dropped: an error message needs the start of nginx's complaint,
/// not megabytes of it.
const OUTPUT_CAP: usize = 16 * 1024;

/// How long output pipes are still read after the program exited.
const PIPE_GRACE: Duration = Duration::from_millis(200);

/// A command line: the program and its arguments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Argv(pub(crate) Vec<OsString>);

impl Argv {
    pub(crate) fn new<I, S>(items: I) -> Argv
    where
        I: IntoIterator<Item = S>,
        S: Into<OsString>,
    {
        Argv(items.into_iter().map(Into::into).collect())
    }

    pub(crate) fn program(&self) -> &std::ffi::OsStr {
        self.0
            .first()
            .map_or(std::ffi::OsStr::new(""), |p| p.as_os_str())
    }
}

/// Shows argv the way a user would type it, quoting words with spaces or quotes, so an
/// error message can be pasted into a terminal to reproduce the failure.
impl std::fmt::Display for Argv {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, word) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(" ")?;
            }
            let word = word.to_string_lossy();
            let plain = !word.is_empty()
                && word
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_./:=@,+%".contains(c));
            if plain {
                f.write_str(&word)?;
            } else {
                write!(f, "'{}'", word.replace('\'', r"'\''"))?;
            }
        }
        Ok(())
    }
}

/// What a finished command printed.
#[derive(Debug)]
pub(crate) struct Finished {
    pub(crate) status: ExitStatus,
    pub(crate) stdout: String,
    pub(crate) stderr: String,
}

impl Finished {
    /// stderr and stdout, trimmed, for an error message.
    pub(crate) fn message(&self) -> String {
        let mut text = self.stderr.trim().to_owned();
        let out = self.stdout.trim();
        if !out.is_empty() {
            if !text.is_empty() {
                text.push('\n');
            }
            text.push_str(out);
        }
        if text.is_empty() {
            format!("no output, {}", self.status)
        } else {
            text
        }
    }
}

/// Why a command did not finish.
#[derive(Debug)]
pub(crate) enum RunError {
    /// The program does not exist (or is not executable).
    Missing(io::Error),
    /// It could not be started for another reason.
    Spawn(io::Error),
    /// It ran past the deadline and was killed.
    Timeout,
    /// Waiting for it failed.
    Wait(io::Error),
}

impl std::fmt::Display for RunError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RunError::Missing(e) => write!(f, "program not found: {e}"),
            RunError::Spawn(e) => write!(f, "cannot start: {e}"),
            RunError::Timeout => f.write_str("timed out"),
            RunError::Wait(e) => write!(f, "cannot wait for it: {e}"),
        }
    }
}

/// Finds `program` the way `exec` would: a name with a `/` is a path, a bare name is
/// looked up in `PATH`. The result must be an executable file. The lookup is the
/// `which` crate's, so `PATH` edge cases (empty entries, relative directories) are
/// handled as a shell handles them.
///
/// # Errors
/// `NotFound` (or `PermissionDenied` for a file that is not executable).
pub(crate) fn find_program(program: &std::ffi::OsStr) -> io::Result<std::path::PathBuf> {
    if program.is_empty() {
        return Err(io::Error::new(
            io::ErrorKind::NotFound,
            "empty program name",
        ));
    }
    let is_path = program.as_encoded_bytes().contains(&b'/');
    which::which(program).map_err(|_| {
        let path = std::path::Path::new(program);
        if is_path && path.exists() {
            io::Error::new(
                io::ErrorKind::PermissionDenied,
                "the file is not an executable program",
            )
        } else if is_path {
            io::Error::new(io::ErrorKind::NotFound, "no such file")
        } else {
            io::Error::new(io::ErrorKind::NotFound, "not found in PATH")
        }
    })
}

/// Runs `argv` with stdin closed, at most `timeout`, without the environment
/// variables named in `hidden_env`.
pub(crate) async fn run(
    argv: &Argv,
    timeout: Duration,
    hidden_env: &[String],
) -> Result<Finished, RunError> {
    let Some((program, args)) = argv.0.split_first() else {
        return Err(RunError::Spawn(io::Error::new(
            io::ErrorKind::InvalidInput,
            "empty command",
        )));
    };
    let mut command = Command::new(program);
    for var in hidden_env {
        command.env_remove(var);
    }
    let mut child = command
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| match e.kind() {
            io::ErrorKind::NotFound | io::ErrorKind::PermissionDenied => RunError::Missing(e),
            _ => RunError::Spawn(e),
        })?;
    let stdout = Arc::new(Mutex::new(Vec::new()));
    let stderr = Arc::new(Mutex::new(Vec::new()));
    let readers = [
        child.stdout.take().map(|p| collect(p, stdout.clone())),
        child.stderr.take().map(|p| collect(p, stderr.clone())),
    ];
    let status = match tokio::time::timeout(timeout, child.wait()).await {
        Ok(Ok(status)) => status,
        Ok(Err(e)) => return Err(RunError::Wait(e)),
        Err(_) => {
            let _ = child.start_kill();
            let _ = tokio::time::timeout(Duration::from_secs(2), child.wait()).await;
            return Err(RunError::Timeout);
        }
    };
    for mut reader in readers.into_iter().flatten() {
        // A daemon child may keep the pipe open forever; what arrived so far is enough.
        if tokio::time::timeout(PIPE_GRACE, &mut reader).await.is_err() {
            reader.abort();
        }
    }
    let text = |buf: &Arc<Mutex<Vec<u8>>>| {
        String::from_utf8_lossy(&buf.lock().unwrap_or_else(|e| e.into_inner())).into_owned()
    };
    Ok(Finished {
        status,
        stdout: text(&stdout),
        stderr: text(&stderr),
    })
}

/// Reads a pipe into `sink` until EOF, keeping at most [`OUTPUT_CAP`] bytes.
fn collect(
    mut pipe: impl AsyncRead + Unpin + Send + 'static,
    sink: Arc<Mutex<Vec<u8>>>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut chunk = [0u8; 4096];
        loop {
            match pipe.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    let mut buf = sink.lock().unwrap_or_else(|e| e.into_inner());
                    let room = OUTPUT_CAP.saturating_sub(buf.len());
                    buf.extend_from_slice(&chunk[..n.min(room)]);
                }
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn captures_output_and_status() {
        let argv = Argv::new(["sh", "-c", "echo out; echo err >&2; exit 3"]);
        let done = run(&argv, Duration::from_secs(5), &[]).await.unwrap();
        assert_eq!(done.status.code(), Some(3));
        assert_eq!(done.message(), "err\nout");
    }

    #[tokio::test]
    async fn missing_program_is_reported_as_missing() {
        let argv = Argv::new(["/nonexistent/cutover-no-such-program"]);
        assert!(matches!(
            run(&argv, Duration::from_secs(5), &[]).await,
            Err(RunError::Missing(_))
        ));
    }

    #[tokio::test]
    async fn slow_command_is_killed_at_the_deadline() {
        let start = std::time::Instant::now();
        let argv = Argv::new(["sleep", "30"]);
        assert!(matches!(
            run(&argv, Duration::from_millis(200), &[]).await,
            Err(RunError::Timeout)
        ));
        assert!(start.elapsed() < Duration::from_secs(5));
    }

    #[tokio::test]
    async fn a_daemon_holding_the_pipe_does_not_block() {
        // The background sleep inherits stdout and outlives the shell.
        let argv = Argv::new(["sh", "-c", "sleep 5 & echo started"]);
        let start = std::time::Instant::now();
        let done = run(&argv, Duration::from_secs(10), &[]).await.unwrap();
        assert!(done.status.success());
        assert_eq!(done.stdout.trim(), "started");
        assert!(
            start.elapsed() < Duration::from_secs(2),
            "{:?}",
            start.elapsed()
        );
    }

    #[tokio::test]
    async fn hidden_variables_are_not_inherited() {
        let argv = Argv::new(["env"]);
        let all = run(&argv, Duration::from_secs(5), &[]).await.unwrap();
        assert!(all.stdout.contains("PATH="), "{}", all.stdout);
        let hidden = run(&argv, Duration::from_secs(5), &["PATH".to_owned()])
            .await
            .unwrap();
        assert!(!hidden.stdout.contains("\nPATH="), "{}", hidden.stdout);
        assert!(!hidden.stdout.starts_with("PATH="), "{}", hidden.stdout);
    }

    #[test]
    fn programs_are_found_like_exec_finds_them() {
        assert!(find_program("sh".as_ref()).is_ok());
        assert!(find_program("/bin/sh".as_ref()).is_ok());
        let missing = find_program("/nonexistent/nginx".as_ref()).unwrap_err();
        assert_eq!(missing.kind(), io::ErrorKind::NotFound);
        let missing = find_program("cutover-no-such-program".as_ref()).unwrap_err();
        assert_eq!(missing.kind(), io::ErrorKind::NotFound);
        let plain = tempfile::NamedTempFile::new().unwrap();
        let not_executable = find_program(plain.path().as_os_str()).unwrap_err();
        assert_eq!(not_executable.kind(), io::ErrorKind::PermissionDenied);
        assert!(find_program("".as_ref()).is_err());
    }

    #[test]
    fn argv_display_quotes_what_a_shell_would_split() {
        let argv = Argv::new(["ssh", "web 1", "it's", "nginx", "-s", "reload"]);
        assert_eq!(argv.to_string(), r"ssh 'web 1' 'it'\''s' nginx -s reload");
    }
}
