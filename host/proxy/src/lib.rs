//! cutover-proxy: nginx — write the rendered files, test them, switch traffic with a
//! graceful reload, restore the previous files, and drain the old workers.
//!
//! Two modes share one surface. In managed mode cutover owns an nginx under
//! `<state_dir>/nginx/` (generated `nginx.conf`, rendered files in `conf.d/`, logs,
//! pid file, temp dirs) and starts, reloads and stops it itself. In external mode it
//! writes into an existing nginx's config directory and runs the configured test and
//! reload commands (which may go through `systemctl`, `ssh` or `docker exec`).
//!
//! [`traffic`] reads nginx's JSON access log per colour, for the canary and the
//! dashboard. This crate must not touch Docker or the state machine: it is told which
//! files to write and when, and reports what happened.
//!
//! It never reloads nginx with files that failed the config test: a failed
//! test puts the previous files back byte for byte before returning. It runs programs
//! only from argv lists, never through a shell, and every command has a deadline. It
//! never stops or signals an nginx it does not own.

#![deny(unsafe_code)]
#![warn(missing_docs)]

mod command;
mod files;
mod fronts;
mod managed_conf;
pub mod pause;
mod procs;
mod workers;

pub use fronts::Proxy;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use cutover_base::{Color, atomic_file};
use cutover_config as config;
use cutover_plugin_host as plugin;
use cutover_plugin_host::rendered;
use serde::{Deserialize, Serialize};

pub mod traffic;

/// A proxy file as it was before the switch, so it can be restored; the state file
/// keeps these through a deploy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SavedFile {
    /// Path relative to the proxy's config directory.
    pub path: String,
    /// Its contents, or none when the file did not exist.
    pub contents: Option<String>,
    /// The `[[proxy.extra]]` front end it belongs to; none for `[proxy]`'s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub front: Option<String>,
}

use command::{Argv, RunError};
use managed_conf::Layout;
use procs::ProcId;

use crate::config::{Config, ExtraFrontEnd, ProxyMode};
use crate::plugin::types::ProxyFile;

/// How long a fresh managed nginx gets to write its pid file after it daemonized.
const START_WAIT: Duration = Duration::from_secs(5);
/// How long the master gets to start new workers after SIGHUP.
const RELOAD_WAIT: Duration = Duration::from_secs(10);
/// How often the process table is looked at while waiting for workers.
const RELOAD_POLL: Duration = Duration::from_millis(2);
const DRAIN_POLL: Duration = Duration::from_millis(10);
/// How much longer than `drain.timeout` plus the old colour's `stop_grace` nginx
/// keeps an old worker: the stop that follows the drain comes first, so the app
/// closes its long-lived connections itself.
const SHUTDOWN_MARGIN: Duration = Duration::from_secs(2);
/// After a graceful quit times out, how long a fast shutdown gets.
const TERM_WAIT: Duration = Duration::from_secs(3);

/// A proxy operation failed.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// The nginx binary cannot be run.
    #[error(
        "cannot run nginx `{}`: {source}; install nginx (Debian: `apt-get install nginx`) or point `proxy.nginx` at the binary",
        program.display()
    )]
    NginxMissing {
        /// The program cutover tried to run.
        program: PathBuf,
        /// Why it could not be run.
        source: std::io::Error,
    },
    /// A configured test or reload command names a program that cannot be run.
    #[error("cannot run `{command}` from `{key}`: {source}; install the program or fix `{key}`")]
    CommandMissing {
        /// The config key the command comes from.
        key: &'static str,
        /// The command line.
        command: String,
        /// Why it could not be run.
        source: std::io::Error,
    },
    /// A command could not be started or waited for.
    #[error("`{command}` could not be run: {reason}")]
    Command {
        /// The command line.
        command: String,
        /// What went wrong.
        reason: String,
    },
    /// A command ran past `proxy.command_timeout` and was killed.
    #[error(
        "`{command}` did not finish within {}; it was killed. Check that the proxy (or the host it runs on) responds, or raise `proxy.command_timeout`",
        humantime::format_duration(*after)
    )]
    Timeout {
        /// The command line.
        command: String,
        /// The deadline it exceeded.
        after: Duration,
    },
    /// nginx rejected the files on disk; nginx was not reloaded with them.
    #[error(
        "the proxy config test `{command}` failed:\n{output}\n{}",
        if *restored {
            "The previous files were put back and nginx was not reloaded; fix the proxy-template plugin's output or its `proxy.variables`"
        } else {
            "nginx was not reloaded; fix the files it names"
        }
    )]
    ConfigTest {
        /// The test command.
        command: String,
        /// What nginx printed.
        output: String,
        /// Whether the files that failed were replaced by the previous ones.
        restored: bool,
    },
    /// The reload failed (after a switch wrote new files, or a restore put old ones back).
    #[error(
        "reloading nginx with `{command}` failed:\n{output}\nnginx may not serve the files on disk; fix the reload command (`proxy.reload_command`) or the nginx it reloads"
    )]
    Reload {
        /// The reload command (or the signal sent).
        command: String,
        /// What it printed or what the master logged.
        output: String,
    },
    /// The managed nginx did not start.
    #[error(
        "cannot start the managed nginx with `{command}`:\n{output}\nCheck that `proxy.listen` is free (`ss -ltnp`) and read {}",
        error_log.display()
    )]
    Start {
        /// The start command.
        command: String,
        /// What it printed or logged.
        output: String,
        /// The managed nginx's error log.
        error_log: PathBuf,
    },
    /// The managed nginx did not stop.
    #[error("the managed nginx (pid {pid}) did not stop: {reason}; stop it with `kill {pid}`")]
    Stop {
        /// The master's pid.
        pid: i32,
        /// What went wrong.
        reason: String,
    },
    /// A file could not be written; it keeps its previous contents.
    #[error(transparent)]
    Write(#[from] crate::atomic_file::AtomicWriteError),
    /// A file that did not exist before could not be removed again.
    #[error("cannot remove {}: {source}; remove it by hand so nginx does not load it", path.display())]
    Remove {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The template produced a file cutover refuses to write.
    #[error(
        "the proxy template produced an unusable file {path:?}, which {reason}; fix the proxy-template plugin or its config"
    )]
    InvalidFile {
        /// The path as rendered.
        path: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A current file could not be read for safe keeping.
    #[error("cannot read {} to keep its contents for a restore: {reason}", path.display())]
    Snapshot {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// A rendered file's path under the config directory goes through a symbolic
    /// link, which could point anywhere; nothing is read or written through it.
    #[error(
        "{} is a symbolic link inside the proxy's config directory {}; cutover never reads or writes a rendered file through one (it could point anywhere): replace it with a real directory or file, or point the config directory at the real one",
        link.display(),
        dir.display()
    )]
    Symlink {
        /// The link.
        link: PathBuf,
        /// The config directory.
        dir: PathBuf,
    },
    /// A directory the proxy needs is missing or cannot be prepared.
    #[error("cannot prepare {}: {reason}", path.display())]
    Layout {
        /// The directory or file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// A step failed on one of several front ends (`[proxy]` is `proxy`, the others
    /// go by their `[[proxy.extra]]` name).
    #[error("front end `{name}` ({}): {error}{}", dir.display(), extra_keys_note(name))]
    Front {
        /// The front end's name.
        name: String,
        /// Its config directory.
        dir: PathBuf,
        /// What failed there.
        error: Box<ProxyError>,
    },
    /// Putting the previous files back failed, so the proxy may be left on new files.
    #[error(
        "{cause}; then {}: {error}. Check {} by hand before the next deploy",
        if error.is_after_restored_files() {
            "the previous proxy files were put back, but making nginx serve them failed"
        } else {
            "putting the previous proxy files back failed too"
        },
        if matches!(**error, ProxyError::Several(_)) {
            "each front end's directory named above".to_owned()
        } else {
            dir.display().to_string()
        }
    )]
    Restore {
        /// What made the restore necessary.
        cause: String,
        /// The config directory (the first one, when several front ends failed).
        dir: PathBuf,
        /// Why the restore failed.
        error: Box<ProxyError>,
    },
    /// The config directory still holds the include an older cutover wrote for this
    /// service under the shared name, while the template now writes another file:
    /// nginx would keep serving the old one.
    #[error(
        "{} was written for service `{service}` by an older cutover, which named every service's include service-url.inc; the default template now writes {now} (one file per service, so several services can share {}). Change nginx's `include` to {now} and delete service-url.inc, or keep the old name with `file = \"service-url.inc\"` under [plugins.proxy-template.config]",
        dir.join(LEGACY_INCLUDE).display(),
        dir.display()
    )]
    LegacyInclude {
        /// The config directory.
        dir: PathBuf,
        /// The service.
        service: String,
        /// The include the template writes now.
        now: String,
    },
    /// One step failed on several front ends. Each front end was still tried, and
    /// each failure names its own.
    #[error("{} front ends failed: {}", .0.len(), several(.0))]
    Several(Vec<ProxyError>),
}

/// The failures of [`ProxyError::Several`], numbered, on one line each.
fn several(errors: &[ProxyError]) -> String {
    errors
        .iter()
        .enumerate()
        .map(|(i, e)| format!("\n({}) {e}", i + 1))
        .collect()
}

impl ProxyError {
    /// True when the problem is the machine (nginx missing, cannot start, a command
    /// hangs or cannot run, the config directory cannot be written: disk full,
    /// read-only or immutable), not the deploy: the CLI maps it to the "environment
    /// problem" exit code.
    pub fn is_environment(&self) -> bool {
        match self {
            ProxyError::NginxMissing { .. }
            | ProxyError::CommandMissing { .. }
            | ProxyError::Command { .. }
            | ProxyError::Timeout { .. }
            | ProxyError::Start { .. }
            | ProxyError::Write(_)
            | ProxyError::Remove { .. }
            | ProxyError::Symlink { .. }
            | ProxyError::Layout { .. } => true,
            ProxyError::Restore { error, .. } | ProxyError::Front { error, .. } => {
                error.is_environment()
            }
            ProxyError::Several(errors) => errors.iter().any(ProxyError::is_environment),
            _ => false,
        }
    }

    /// True for a failed restore that did put the previous files back, but whose
    /// config test or reload then failed: nginx may still serve the files it had
    /// before the switch, which only a request through it can tell.
    pub fn previous_files_restored(&self) -> bool {
        match self {
            ProxyError::Restore { error, .. } => error.is_after_restored_files(),
            ProxyError::Front { error, .. } => error.previous_files_restored(),
            ProxyError::Several(errors) => errors.iter().all(ProxyError::previous_files_restored),
            _ => false,
        }
    }

    /// Whether this failure, inside a restore, came after the previous files were
    /// already back on disk (their test or the reload failed, not the writing).
    fn is_after_restored_files(&self) -> bool {
        !matches!(
            self,
            ProxyError::Write(_)
                | ProxyError::Remove { .. }
                | ProxyError::InvalidFile { .. }
                | ProxyError::Symlink { .. }
                | ProxyError::Restore { .. }
                | ProxyError::Front { .. }
                | ProxyError::Several(_)
        )
    }
}

/// The include every service's default template wrote before names were per service.
const LEGACY_INCLUDE: &str = "service-url.inc";

/// Checks rendered files before anything is written: relative paths inside the
/// config directory (no `..`, not absolute, a plain alphabet), no duplicates, bounded
/// count and sizes, no control characters, and `{ }` blocks that balance the way
/// nginx reads them ([`crate::rendered`]); checked again before every write.
///
/// # Errors
/// [`ProxyError::InvalidFile`] naming the file and what is wrong.
pub fn check_rendered(files: &[ProxyFile]) -> Result<(), ProxyError> {
    files::check_files(files)
}

/// What a switch did, kept until the drain so it knows which workers to wait for.
#[derive(Debug, Clone)]
pub struct Reload {
    /// How traffic was switched.
    pub kind: ReloadKind,
    /// When the switch completed.
    pub at: Instant,
    master: Option<ProcId>,
    old_workers: Vec<ProcId>,
    /// The reloads of the `[[proxy.extra]]` front ends, in config order.
    extra: Vec<Reload>,
}

impl Reload {
    /// How many nginx workers were serving before the switch and are being retired
    /// (zero when nginx was just started or is not watched).
    pub fn old_workers(&self) -> usize {
        self.old_workers.len() + self.extra.iter().map(Reload::old_workers).sum::<usize>()
    }
}

/// How a switch reached nginx.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReloadKind {
    /// The managed nginx was not running and was started with the new files.
    Started,
    /// The managed nginx was reloaded (SIGHUP to its master) and started new workers.
    Reloaded,
    /// External mode: the reload command succeeded.
    Command,
}

/// The outcome of a drain.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DrainReport {
    /// How long the drain waited.
    pub waited: Duration,
    /// Old workers being watched.
    pub old_workers: usize,
    /// Old workers still alive when the drain ended (still serving requests to the
    /// old colour; nginx closes them at `worker_shutdown_timeout` in managed mode).
    pub remaining: usize,
    /// True when the drain watched nginx's workers; false when it could only wait the
    /// full time (external mode without `proxy.pid_file`).
    pub watched: bool,
    /// Connections to the old colour the remaining workers still held when the drain
    /// ended: the long-lived ones (WebSockets, event streams), which the old colour's
    /// stop then closes.
    pub long_lived: usize,
}

impl std::fmt::Display for DrainReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ms = self.waited.as_millis();
        match (self.watched, self.remaining) {
            (false, _) => write!(
                f,
                "waited {ms} ms (set `proxy.pid_file` to end the drain when nginx's old workers finish)"
            ),
            (true, 0) if self.old_workers == 0 => write!(f, "no old nginx workers to wait for"),
            (true, 0) => write!(
                f,
                "{} old nginx worker(s) finished their requests in {ms} ms",
                self.old_workers
            ),
            (true, n) if self.long_lived > 0 => write!(
                f,
                "{n} of {} old nginx worker(s) still busy after {ms} ms, holding {} long-lived connection(s) (WebSockets, streams) to the old colour; stopping it closes them",
                self.old_workers, self.long_lived
            ),
            (true, n) => write!(
                f,
                "{n} of {} old nginx worker(s) still busy after {ms} ms; their requests to the old colour may fail",
                self.old_workers
            ),
        }
    }
}

/// Which config key a command comes from, for messages.
#[derive(Debug, Clone, Copy)]
enum Purpose {
    Test,
    Reload,
    Start,
}

impl Purpose {
    fn key(self) -> &'static str {
        match self {
            Purpose::Test => "proxy.test_command",
            Purpose::Reload => "proxy.reload_command",
            Purpose::Start => "proxy.nginx",
        }
    }
}

/// The keys of an external nginx, from `[proxy]` or a `[[proxy.extra]]`.
struct External<'a> {
    config_dir: &'a Path,
    test_command: Option<&'a [String]>,
    reload_command: Option<&'a [String]>,
    pid_file: Option<&'a Path>,
    access_log: Option<&'a Path>,
}

#[derive(Debug, Clone)]
struct Managed {
    /// `nginx -p <prefix> -c <conf> -e <error log>`.
    start: Argv,
    layout: Layout,
    service: String,
    listen: std::net::SocketAddr,
    shutdown_timeout: Duration,
}

/// Who runs an nginx: cutover itself (then it knows its layout and start command), or
/// someone else (then cutover only writes files and runs the configured commands).
#[derive(Debug, Clone)]
enum Owner {
    Managed(Box<Managed>),
    External,
}

/// One nginx in front of the service: `[proxy]` or one `[[proxy.extra]]`.
#[derive(Debug, Clone)]
pub struct Nginx {
    owner: Owner,
    nginx: PathBuf,
    config_dir: PathBuf,
    test_command: Argv,
    reload_command: Argv,
    /// The pid file of the nginx whose workers a drain watches.
    pid_file: Option<PathBuf>,
    /// The JSON access log a canary reads (see [`crate::traffic`]).
    access_log: Option<PathBuf>,
    command_timeout: Duration,
    /// How long a restore waits for the workers of the undone config (`drain.timeout`).
    drain_timeout: Duration,
    /// Environment variables no program run here may inherit (the registry
    /// password's): none of them needs it, and the managed nginx would keep a copy in
    /// its memory for as long as it runs.
    hidden_env: Vec<String>,
    /// The service, as the files it rendered name it.
    service: String,
}

impl Nginx {
    /// The `[proxy]` nginx described by `config`. Touches nothing until a method runs.
    pub fn new(config: &Config) -> Nginx {
        let p = &config.proxy;
        let nginx = p.nginx.clone();
        let command_timeout = p.command_timeout.get();
        let drain_timeout = config.drain.timeout.get();
        let hidden_env = config.secret_env_vars();
        match p.mode {
            ProxyMode::Managed => {
                let layout = Layout::new(&config.state_dir());
                let base = Argv::new([
                    nginx.as_os_str(),
                    "-p".as_ref(),
                    layout.prefix.as_os_str(),
                    "-c".as_ref(),
                    layout.conf.as_os_str(),
                    "-e".as_ref(),
                    layout.error_log.as_os_str(),
                ]);
                let with = |extra: &[&str]| {
                    let mut argv = base.clone();
                    argv.0.extend(extra.iter().map(Into::into));
                    argv
                };
                Nginx {
                    config_dir: layout.conf_d.clone(),
                    pid_file: Some(layout.pid_file.clone()),
                    access_log: Some(layout.access_json.clone()),
                    test_command: with(&["-t", "-q"]),
                    // Managed reloads signal the master directly (see `switch`); this
                    // is the equivalent command, for messages.
                    reload_command: with(&["-s", "reload"]),
                    owner: Owner::Managed(Box::new(Managed {
                        start: base,
                        layout,
                        service: config.service.clone(),
                        // check() refuses managed mode without `listen`.
                        listen: p.listen.unwrap_or_else(|| ([127, 0, 0, 1], 8080).into()),
                        // See `worker_shutdown_timeout` in managed_conf.
                        shutdown_timeout: config.drain.timeout.get()
                            + config.container.stop_grace.get()
                            + SHUTDOWN_MARGIN,
                    })),
                    nginx,
                    command_timeout,
                    drain_timeout,
                    hidden_env,
                    service: config.service.clone(),
                }
            }
            ProxyMode::External => Nginx::external(
                config,
                External {
                    // check() refuses external mode without `config_dir`.
                    config_dir: p.config_dir.as_deref().unwrap_or(Path::new(".")),
                    test_command: p.test_command.as_deref(),
                    reload_command: p.reload_command.as_deref(),
                    pid_file: p.pid_file.as_deref(),
                    access_log: p.access_log.as_deref(),
                },
            ),
        }
    }

    /// A `[[proxy.extra]]` front end: always external.
    pub fn extra(config: &Config, front: &ExtraFrontEnd) -> Nginx {
        Nginx::external(
            config,
            External {
                config_dir: &front.config_dir,
                test_command: front.test_command.as_deref(),
                reload_command: front.reload_command.as_deref(),
                pid_file: front.pid_file.as_deref(),
                access_log: None,
            },
        )
    }

    fn external(config: &Config, e: External<'_>) -> Nginx {
        let nginx = config.proxy.nginx.clone();
        let argv = |given: Option<&[String]>, default: &[&str]| match given {
            Some(argv) => Argv::new(argv.iter().map(String::as_str)),
            None => {
                let mut argv = Argv::new([nginx.as_os_str()]);
                argv.0.extend(default.iter().map(Into::into));
                argv
            }
        };
        Nginx {
            owner: Owner::External,
            config_dir: config.resolve(e.config_dir),
            test_command: argv(e.test_command, &["-t"]),
            reload_command: argv(e.reload_command, &["-s", "reload"]),
            pid_file: e.pid_file.map(|f| config.resolve(f)),
            access_log: e.access_log.map(|f| config.resolve(f)),
            nginx,
            command_timeout: config.proxy.command_timeout.get(),
            drain_timeout: config.drain.timeout.get(),
            hidden_env: config.secret_env_vars(),
            service: config.service.clone(),
        }
    }

    /// What cutover knows of the nginx it runs itself; none for an external one.
    fn managed(&self) -> Option<&Managed> {
        match &self.owner {
            Owner::Managed(managed) => Some(managed.as_ref()),
            Owner::External => None,
        }
    }

    /// The directory the rendered files are written to.
    pub fn config_dir(&self) -> &Path {
        &self.config_dir
    }

    /// Whether the service's pause file is in the config directory.
    pub fn is_paused(&self) -> bool {
        self.config_dir.join(pause::path(&self.service)).is_file()
    }

    /// The managed nginx's generated `nginx.conf` (none in external mode).
    pub fn managed_conf(&self) -> Option<&Path> {
        self.managed().map(|m| m.layout.conf.as_path())
    }

    /// The managed nginx's error log (none in external mode).
    pub fn error_log(&self) -> Option<&Path> {
        self.managed().map(|m| m.layout.error_log.as_path())
    }

    /// The JSON access log a canary reads: the managed nginx's, or `proxy.access_log`
    /// in external mode (the config check requires it for a canary).
    pub fn access_log(&self) -> PathBuf {
        self.access_log.clone().unwrap_or_default()
    }

    /// The pid file of the nginx this proxy watches: the managed one's, or
    /// `proxy.pid_file` in external mode.
    pub fn pid_file(&self) -> Option<&Path> {
        self.pid_file.as_deref()
    }

    /// The current contents of `paths` (relative to the config directory; none for a
    /// file that does not exist), to be kept for a restore.
    ///
    /// # Errors
    /// [`ProxyError::InvalidFile`] for a bad path, [`ProxyError::Snapshot`] when a file
    /// exists but cannot be read as text.
    pub fn snapshot(&self, paths: &[String]) -> Result<Vec<SavedFile>, ProxyError> {
        files::snapshot(&self.config_dir, paths)
    }

    /// Writes `files` atomically, then runs the config test. When the test fails, the
    /// files are put back to `previous` byte for byte (files that did not exist are
    /// deleted; files missing from `previous` get the contents they had just before
    /// this call) and nginx is not reloaded.
    ///
    /// # Errors
    /// [`ProxyError::InvalidFile`] before anything is written; [`ProxyError::Write`]
    /// when a write fails (earlier files of the batch are put back);
    /// [`ProxyError::ConfigTest`] with nginx's message; [`ProxyError::Restore`] when
    /// putting the previous files back failed too; environment errors when nginx or
    /// the test command cannot run.
    pub async fn write_and_test(
        &self,
        files: &[ProxyFile],
        previous: &[SavedFile],
    ) -> Result<(), ProxyError> {
        check_rendered(files)?;
        self.prepare()?;
        self.refuse_legacy_include(files)?;
        // Whatever `previous` does not cover is restored to what is on disk now.
        let missing: Vec<String> = files
            .iter()
            .filter(|f| !previous.iter().any(|p| p.path == f.path))
            .map(|f| f.path.clone())
            .collect();
        let mut saved = self.snapshot(&missing)?;
        saved.extend(
            previous
                .iter()
                .filter(|p| files.iter().any(|f| f.path == p.path))
                .cloned(),
        );
        files::write_all(&self.config_dir, files, &saved)?;
        if let Err(mut test_error) = self.test().await {
            if let Err(error) = files::restore_all(&self.config_dir, &saved) {
                return Err(ProxyError::Restore {
                    cause: test_error.to_string(),
                    dir: self.config_dir.clone(),
                    error: Box::new(error),
                });
            }
            if let ProxyError::ConfigTest { restored, .. } = &mut test_error {
                *restored = true;
            }
            return Err(test_error);
        }
        Ok(())
    }

    /// An external nginx that includes the `service-url.inc` an older cutover wrote
    /// for this service would never load the per-service file written now, and keep
    /// serving the old colour: such a switch is refused before anything is written.
    fn refuse_legacy_include(&self, files: &[ProxyFile]) -> Result<(), ProxyError> {
        if self.managed().is_some() || files.iter().any(|f| f.path == LEGACY_INCLUDE) {
            return Ok(());
        }
        let ours = format!(
            "# Written by cutover (builtin:nginx-service-url): {} ->",
            self.service
        );
        let old = std::fs::read_to_string(self.config_dir.join(LEGACY_INCLUDE)).unwrap_or_default();
        let Some(now) = files.iter().find(|f| f.path.ends_with(".inc")) else {
            return Ok(());
        };
        if old.starts_with(&ours) {
            return Err(ProxyError::LegacyInclude {
                dir: self.config_dir.clone(),
                service: self.service.clone(),
                now: now.path.clone(),
            });
        }
        Ok(())
    }

    /// Runs the config test on what is on disk now.
    ///
    /// # Errors
    /// [`ProxyError::ConfigTest`] with nginx's message, or an environment error.
    pub async fn test(&self) -> Result<(), ProxyError> {
        let done = self.run(&self.test_command, Purpose::Test).await?;
        if done.status.success() {
            Ok(())
        } else {
            Err(ProxyError::ConfigTest {
                command: self.test_command.to_string(),
                output: done.message(),
                restored: false,
            })
        }
    }

    /// Makes nginx serve what is on disk. Managed: starts nginx when it is not
    /// running, else records its current workers, reloads it gracefully (SIGHUP to
    /// the master, which is what `nginx -s reload` sends) and waits for the hand-over:
    /// new workers started and the old ones no longer accepting (nginx waits 100 ms
    /// before it retires them). External: runs the reload command; with
    /// `proxy.pid_file` naming a local nginx it records and waits the same way.
    /// When this returns, every new connection reaches the new config; requests
    /// already in flight finish on the old workers (see [`Nginx::drain`]).
    ///
    /// # Errors
    /// [`ProxyError::Start`] or [`ProxyError::Reload`] with nginx's message (a reload
    /// the master rejects, or one that starts no new workers), or an environment
    /// error.
    pub async fn switch(&self) -> Result<Reload, ProxyError> {
        let managed = self.managed();
        let master = match managed {
            Some(managed) => {
                self.prepare()?;
                match self.managed_master() {
                    Some(master) => master,
                    None => return self.start(managed).await,
                }
            }
            None => match self
                .pid_file
                .as_deref()
                .and_then(|f| procs::master_from_pid_file(f, None))
            {
                Some(master) => master,
                None => {
                    self.reload_external().await?;
                    return Ok(Reload {
                        kind: ReloadKind::Command,
                        at: Instant::now(),
                        master: None,
                        old_workers: Vec::new(),
                        extra: Vec::new(),
                    });
                }
            },
        };
        let old_workers = procs::children(master.pid);
        let error_log = managed.map(|m| m.layout.error_log.as_path());
        let log_offset = error_log.map_or(0, file_len);
        let (command, kind) = if managed.is_some() {
            let command = format!("kill -HUP {} (what `nginx -s reload` sends)", master.pid);
            rustix::process::kill_process(pid(master.pid)?, rustix::process::Signal::HUP).map_err(
                |e| ProxyError::Reload {
                    command: command.clone(),
                    output: e.to_string(),
                },
            )?;
            (command, ReloadKind::Reloaded)
        } else {
            self.reload_external().await?;
            (self.reload_command.to_string(), ReloadKind::Command)
        };
        self.handover(master, &old_workers, error_log, log_offset)
            .await
            .map_err(|output| ProxyError::Reload { command, output })?;
        Ok(Reload {
            kind,
            at: Instant::now(),
            master: Some(master),
            old_workers,
            extra: Vec::new(),
        })
    }

    async fn reload_external(&self) -> Result<(), ProxyError> {
        let done = self.run(&self.reload_command, Purpose::Reload).await?;
        if done.status.success() {
            Ok(())
        } else {
            Err(ProxyError::Reload {
                command: self.reload_command.to_string(),
                output: done.message(),
            })
        }
    }

    /// Waits until `master` has started new workers and every old worker has stopped
    /// accepting connections. nginx tells the old workers to shut down only 100 ms
    /// after it started the new ones; until then a new connection may still land on
    /// an old worker and reach the old target. Waiting here means that when a switch
    /// returns, every new connection gets the new config.
    async fn handover(
        &self,
        master: ProcId,
        old: &[ProcId],
        error_log: Option<&Path>,
        log_offset: u64,
    ) -> Result<(), String> {
        let deadline = Instant::now() + RELOAD_WAIT.min(self.command_timeout);
        loop {
            let children = procs::children(master.pid);
            if children.iter().any(|w| !old.contains(w)) {
                break;
            }
            let logged = error_log.map_or_else(String::new, |log| log_since(log, log_offset));
            let failed = logged.contains("[emerg]") || logged.contains("[alert]");
            if failed || !procs::alive(master) || Instant::now() >= deadline {
                return Err(if !logged.trim().is_empty() {
                    logged.trim().to_owned()
                } else if !procs::alive(master) {
                    format!("the nginx master (pid {}) exited", master.pid)
                } else {
                    format!(
                        "the nginx master (pid {}) started no new workers within {} s; read its error log",
                        master.pid,
                        RELOAD_WAIT.min(self.command_timeout).as_secs()
                    )
                });
            }
            tokio::time::sleep(RELOAD_POLL).await;
        }
        // New workers serve; the old ones get their shutdown signal shortly. If they
        // never do, traffic is still served and verification has the last word.
        while Instant::now() < deadline && !old.iter().all(|w| procs::stopped_accepting(*w)) {
            tokio::time::sleep(RELOAD_POLL).await;
        }
        Ok(())
    }

    async fn start(&self, managed: &Managed) -> Result<Reload, ProxyError> {
        let layout = &managed.layout;
        let argv = &managed.start;
        let log_offset = file_len(&layout.error_log);
        let start_error = |output: String| ProxyError::Start {
            command: argv.to_string(),
            output,
            error_log: layout.error_log.clone(),
        };
        let done = self.run(argv, Purpose::Start).await?;
        if !done.status.success() {
            let mut output = done.message();
            let logged = log_since(&layout.error_log, log_offset);
            if !logged.trim().is_empty() && !output.contains(logged.trim()) {
                output = format!("{output}\n{}", logged.trim());
            }
            return Err(start_error(output));
        }
        // nginx daemonizes before writing its pid file.
        let deadline = Instant::now() + START_WAIT;
        loop {
            if let Some(master) = self.managed_master() {
                return Ok(Reload {
                    kind: ReloadKind::Started,
                    at: Instant::now(),
                    master: Some(master),
                    old_workers: Vec::new(),
                    extra: Vec::new(),
                });
            }
            if Instant::now() >= deadline {
                let logged = log_since(&layout.error_log, log_offset);
                return Err(start_error(format!(
                    "nginx exited successfully but no master process appeared in {} within {} s; {}",
                    layout.pid_file.display(),
                    START_WAIT.as_secs(),
                    logged.trim()
                )));
            }
            tokio::time::sleep(RELOAD_POLL).await;
        }
    }

    /// Puts `previous` back, tests it and reloads (used when verification fails after
    /// a switch), then waits (at most `drain.timeout`) until the workers that served
    /// the undone config have finished their requests, so the caller can remove the
    /// target they were sending them to. When the managed nginx had no files before
    /// (the first deploy started it), the files are removed and that nginx is stopped
    /// gracefully instead, since it has nothing valid to serve.
    ///
    /// # Errors
    /// [`ProxyError::Restore`] wrapping what failed: writing, the config test or the
    /// reload.
    pub async fn restore(&self, previous: &[SavedFile]) -> Result<(), ProxyError> {
        let wrap = |error: ProxyError| ProxyError::Restore {
            cause: "the switch had to be undone".to_owned(),
            dir: self.config_dir.clone(),
            error: Box::new(error),
        };
        files::restore_all(&self.config_dir, previous).map_err(wrap)?;
        if self.managed().is_some() && previous.iter().all(|p| p.contents.is_none()) {
            return self.stop().await.map_err(wrap);
        }
        self.test().await.map_err(wrap)?;
        let reload = self.switch().await.map_err(wrap)?;
        self.drain(&reload, self.drain_timeout).await;
        Ok(())
    }

    /// Checks, before a deploy starts anything, that the programs this proxy runs
    /// exist: the nginx binary in managed mode, the test and reload commands' programs
    /// in external mode. Runs nothing.
    ///
    /// # Errors
    /// [`ProxyError::NginxMissing`] or [`ProxyError::CommandMissing`] naming the
    /// program and the config key to fix.
    pub fn preflight(&self) -> Result<(), ProxyError> {
        let argvs = match self.owner {
            Owner::Managed(_) => vec![(self.managed_start_argv(), Purpose::Start)],
            Owner::External => vec![
                (self.test_command.clone(), Purpose::Test),
                (self.reload_command.clone(), Purpose::Reload),
            ],
        };
        for (argv, purpose) in &argvs {
            if let Err(source) = command::find_program(argv.program()) {
                return Err(self.missing(argv, *purpose, source));
            }
        }
        Ok(())
    }

    /// Writes `saved` back as it is (absent files removed) without testing or
    /// reloading: recovery uses it to put the files in the state a journal recorded
    /// before it decides whether to reload.
    ///
    /// # Errors
    /// [`ProxyError`] when a file cannot be written or removed.
    pub fn write_saved(&self, saved: &[SavedFile]) -> Result<(), ProxyError> {
        files::restore_all(&self.config_dir, saved)
    }

    /// Waits until the workers that served before `reload` have exited (nginx keeps
    /// each until its in-flight requests are done), at most `max`. Without workers to
    /// watch (external mode without `proxy.pid_file`), waits `max`.
    pub async fn drain(&self, reload: &Reload, max: Duration) -> DrainReport {
        let start = Instant::now();
        let deadline = start + max;
        let watched = reload.master.is_some();
        if !watched {
            tokio::time::sleep(max).await;
        }
        loop {
            let remaining = if watched {
                reload
                    .old_workers
                    .iter()
                    .filter(|w| procs::alive(**w))
                    .count()
            } else {
                0
            };
            if remaining == 0 || Instant::now() >= deadline {
                let long_lived = match reload.master {
                    Some(master) if remaining > 0 => {
                        procs::backend_connections(master, &reload.old_workers)
                    }
                    _ => 0,
                };
                return DrainReport {
                    waited: start.elapsed(),
                    old_workers: reload.old_workers.len(),
                    remaining,
                    watched,
                    long_lived,
                };
            }
            let left = deadline.saturating_duration_since(Instant::now());
            tokio::time::sleep(DRAIN_POLL.min(left)).await;
        }
    }

    /// Whether nginx is running: in managed mode, the pid file names a live nginx
    /// master started with this proxy's config. In external mode with
    /// `proxy.pid_file`, that file names a live nginx master; without one cutover
    /// cannot tell and answers true (the test and reload commands report problems).
    pub fn is_running(&self) -> bool {
        match (self.managed(), &self.pid_file) {
            (Some(_), _) => self.managed_master().is_some(),
            (None, Some(file)) => procs::master_from_pid_file(file, None).is_some(),
            (None, None) => true,
        }
    }

    /// Stops the managed nginx gracefully (SIGQUIT: workers finish their requests),
    /// waiting at most `proxy.command_timeout` before a fast shutdown. Does nothing in
    /// external mode: cutover never stops an nginx it does not own.
    ///
    /// # Errors
    /// [`ProxyError::Stop`] when the master cannot be signalled or outlives both waits.
    pub async fn stop(&self) -> Result<(), ProxyError> {
        let Some(managed) = self.managed() else {
            return Ok(());
        };
        self.stop_master().await?;
        workers::remove(&managed.layout.prefix);
        Ok(())
    }

    /// Stops the managed master (see [`Nginx::stop`]).
    async fn stop_master(&self) -> Result<(), ProxyError> {
        let Some(master) = self.managed_master() else {
            return Ok(());
        };
        let stop_error = |reason: String| ProxyError::Stop {
            pid: master.pid,
            reason,
        };
        for (signal, wait) in [
            (rustix::process::Signal::QUIT, self.command_timeout),
            (rustix::process::Signal::TERM, TERM_WAIT),
        ] {
            match rustix::process::kill_process(pid(master.pid)?, signal) {
                Ok(()) => {}
                Err(rustix::io::Errno::SRCH) => return Ok(()),
                Err(e) => return Err(stop_error(format!("cannot signal it: {e}"))),
            }
            let deadline = Instant::now() + wait;
            while procs::alive(master) && Instant::now() < deadline {
                tokio::time::sleep(DRAIN_POLL).await;
            }
            if !procs::alive(master) {
                return Ok(());
            }
        }
        Err(stop_error(format!(
            "still running after a graceful quit ({} s) and a fast shutdown ({} s)",
            self.command_timeout.as_secs(),
            TERM_WAIT.as_secs()
        )))
    }

    /// A unified-style diff from the `current` files to `next`, for `cutover plan`.
    pub fn diff(&self, current: &[SavedFile], next: &[ProxyFile]) -> String {
        files::diff(current, next)
    }

    /// The managed master, if it runs with this proxy's config.
    fn managed_master(&self) -> Option<ProcId> {
        let managed = self.managed()?;
        let marker = managed.layout.conf.to_str()?;
        procs::master_from_pid_file(&managed.layout.pid_file, Some(marker))
    }

    /// Managed: creates the prefix and (re)writes `nginx.conf` when it changed.
    /// External: checks that the config directory exists (it belongs to nginx's
    /// installation, so cutover does not create it).
    fn prepare(&self) -> Result<(), ProxyError> {
        let Some(managed) = self.managed() else {
            if self.config_dir.is_dir() {
                return Ok(());
            }
            return Err(ProxyError::Layout {
                path: self.config_dir.clone(),
                reason: "the directory does not exist; create it and include its files from nginx's config, or fix `proxy.config_dir`".to_owned(),
            });
        };
        let layout = &managed.layout;
        let layout_error = |path: &Path, reason: String| ProxyError::Layout {
            path: path.to_owned(),
            reason,
        };
        for dir in layout.dirs() {
            use std::os::unix::fs::DirBuilderExt;
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(|e| layout_error(dir, e.to_string()))?;
        }
        // Root's workers run unprivileged (see `workers`).
        let workers = if rustix::process::geteuid().is_root() {
            Some(
                workers::prepare(&layout.prefix)
                    .map_err(|reason| layout_error(&layout.prefix, reason))?,
            )
        } else {
            None
        };
        let text = managed_conf::render(
            layout,
            &managed_conf::Settings {
                service: &managed.service,
                listen: managed.listen,
                shutdown_timeout: managed.shutdown_timeout,
                worker_user: workers.as_ref().map(|w| w.user.as_str()),
                worker_temp: workers.as_ref().map(|w| w.temp.as_path()),
            },
        )
        .map_err(|reason| layout_error(&layout.conf, reason))?;
        if std::fs::read(&layout.conf).ok().as_deref() != Some(text.as_bytes()) {
            crate::atomic_file::write(&layout.conf, text.as_bytes(), 0o644)?;
        }
        Ok(())
    }

    fn managed_start_argv(&self) -> Argv {
        self.managed()
            .map_or_else(|| Argv::new([self.nginx.as_os_str()]), |m| m.start.clone())
    }

    /// The error for a program that cannot be run.
    fn missing(&self, argv: &Argv, purpose: Purpose, source: std::io::Error) -> ProxyError {
        if argv.program() == self.nginx.as_os_str() {
            ProxyError::NginxMissing {
                program: self.nginx.clone(),
                source,
            }
        } else {
            ProxyError::CommandMissing {
                key: purpose.key(),
                command: argv.to_string(),
                source,
            }
        }
    }

    async fn run(&self, argv: &Argv, purpose: Purpose) -> Result<command::Finished, ProxyError> {
        command::run(argv, self.command_timeout, &self.hidden_env)
            .await
            .map_err(|e| match e {
                RunError::Missing(source) => self.missing(argv, purpose, source),
                RunError::Timeout => ProxyError::Timeout {
                    command: argv.to_string(),
                    after: self.command_timeout,
                },
                other => ProxyError::Command {
                    command: argv.to_string(),
                    reason: other.to_string(),
                },
            })
    }
}

/// For a `[[proxy.extra]]` front end, which keys the `proxy.*` names in its error mean.
fn extra_keys_note(name: &str) -> String {
    if name == fronts::PRIMARY {
        return String::new();
    }
    format!(
        "\n(`{name}` is a `[[proxy.extra]]` front end: the `proxy.*` keys named above are its own keys in the entry with name = \"{name}\")"
    )
}

fn pid(raw: i32) -> Result<rustix::process::Pid, ProxyError> {
    rustix::process::Pid::from_raw(raw).ok_or_else(|| ProxyError::Stop {
        pid: raw,
        reason: "the pid file holds an invalid pid".to_owned(),
    })
}

fn file_len(path: &Path) -> u64 {
    std::fs::metadata(path).map_or(0, |m| m.len())
}

/// What a log file gained after `offset` (at most the last 8 KiB of it).
fn log_since(path: &Path, offset: u64) -> String {
    use std::io::{Read, Seek, SeekFrom};
    const CAP: u64 = 8 * 1024;
    let Ok(mut file) = std::fs::File::open(path) else {
        return String::new();
    };
    let len = file.metadata().map_or(0, |m| m.len());
    if len <= offset {
        return String::new();
    }
    let from = offset.max(len.saturating_sub(CAP));
    let mut bytes = Vec::new();
    if file.seek(SeekFrom::Start(from)).is_err() || file.take(CAP).read_to_end(&mut bytes).is_err()
    {
        return String::new();
    }
    String::from_utf8_lossy(&bytes).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(extra_proxy: &str) -> Config {
        Config::parse(
            &format!(
                "service = \"hello\"\n[image]\nref = \"hello:1\"\n[container]\nport = 8080\n\
                 [verify]\nurl = \"http://127.0.0.1/\"\n[proxy]\n{extra_proxy}\n"
            ),
            Path::new("/srv/app/cutover.toml"),
        )
        .unwrap()
    }

    #[test]
    fn managed_commands_point_at_the_prefix() {
        let proxy = Nginx::new(&config("mode = \"managed\"\nlisten = \"127.0.0.1:8080\""));
        assert_eq!(
            proxy.config_dir(),
            Path::new("/srv/app/.cutover/nginx/conf.d")
        );
        assert_eq!(
            proxy.test_command.to_string(),
            "nginx -p /srv/app/.cutover/nginx -c /srv/app/.cutover/nginx/nginx.conf \
             -e /srv/app/.cutover/nginx/logs/error.log -t -q"
        );
    }

    #[test]
    fn external_defaults_use_the_configured_nginx() {
        let proxy = Nginx::new(&config(
            "mode = \"external\"\nconfig_dir = \"conf.d\"\nnginx = \"/opt/nginx/sbin/nginx\"",
        ));
        assert_eq!(proxy.config_dir(), Path::new("/srv/app/conf.d"));
        assert_eq!(proxy.test_command.to_string(), "/opt/nginx/sbin/nginx -t");
        assert_eq!(
            proxy.reload_command.to_string(),
            "/opt/nginx/sbin/nginx -s reload"
        );
        let proxy = Nginx::new(&config(
            "mode = \"external\"\nconfig_dir = \"/etc/nginx/conf.d\"\n\
             reload_command = [\"ssh\", \"web1\", \"sudo\", \"systemctl\", \"reload\", \"nginx\"]",
        ));
        assert_eq!(
            proxy.reload_command.to_string(),
            "ssh web1 sudo systemctl reload nginx"
        );
    }

    #[test]
    fn environment_errors_are_classified() {
        let missing = ProxyError::NginxMissing {
            program: "nginx".into(),
            source: std::io::Error::from(std::io::ErrorKind::NotFound),
        };
        assert!(missing.is_environment());
        assert!(missing.to_string().contains("apt-get install nginx"));
        let test = ProxyError::ConfigTest {
            command: "nginx -t".into(),
            output: "bad".into(),
            restored: true,
        };
        assert!(!test.is_environment());
    }

    #[test]
    fn a_restore_that_only_failed_to_reload_says_the_files_are_back() {
        let reload = ProxyError::Restore {
            cause: "the switch had to be undone".into(),
            dir: "/etc/nginx/conf.d".into(),
            error: Box::new(ProxyError::Reload {
                command: "false".into(),
                output: "refused".into(),
            }),
        };
        assert!(reload.previous_files_restored());
        assert!(
            reload.to_string().contains(
                "the previous proxy files were put back, but making nginx serve them failed"
            ),
            "{reload}"
        );
        let write = ProxyError::Restore {
            cause: "the switch had to be undone".into(),
            dir: "/etc/nginx/conf.d".into(),
            error: Box::new(ProxyError::Remove {
                path: "/etc/nginx/conf.d/a.inc".into(),
                source: std::io::Error::from(std::io::ErrorKind::PermissionDenied),
            }),
        };
        assert!(!write.previous_files_restored());
        assert!(write.is_environment());
        assert!(
            write
                .to_string()
                .contains("putting the previous proxy files back failed too"),
            "{write}"
        );
    }

    #[test]
    fn drain_report_says_what_happened() {
        let report = DrainReport {
            waited: Duration::from_millis(1500),
            old_workers: 2,
            remaining: 0,
            watched: true,
            long_lived: 0,
        };
        assert_eq!(
            report.to_string(),
            "2 old nginx worker(s) finished their requests in 1500 ms"
        );
        let blind = DrainReport {
            watched: false,
            ..report
        };
        assert!(blind.to_string().contains("proxy.pid_file"));
    }
}
