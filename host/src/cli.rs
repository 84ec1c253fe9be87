//! The command line: argument parsing, wiring the library together, and the mapping
//! from outcomes to the documented exit codes.
//!
//! This is the only place that prints to the user and the only place `anyhow` is
//! used. Everything it calls is library code a test can drive directly.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};

use crate::ci::CiFacts;

use crate::config::{self, Config};
use crate::context::Context;
use crate::deploy::{self, DeployOptions, DeployReport};
use crate::error::{DeployError, ErrorClass};
use crate::events::{Format, Printer, Reporter};
use crate::git::GitFacts;
use crate::operation::Outcome;
use crate::plugin::{PluginHost, PluginKind};

/// The exit codes, documented in the README.
pub mod exit {
    /// Success.
    pub const OK: u8 = 0;
    /// An unexpected error.
    pub const FAILURE: u8 = 1;
    /// Bad command-line usage (clap's own code).
    pub const USAGE: u8 = 2;
    /// The deploy gate denied the deploy; nothing changed. Not an error in CI.
    pub const GATE_DENIED: u8 = 3;
    /// The deploy failed and the previous colour still serves (cleaned up or rolled back).
    pub const DEPLOY_FAILED: u8 = 4;
    /// The config file (or a plugin's config) is wrong.
    pub const CONFIG: u8 = 5;
    /// Another deploy of the service holds the lock.
    pub const LOCK_HELD: u8 = 6;
    /// Docker, nginx or git is missing or unreachable.
    pub const ENVIRONMENT: u8 = 7;
    /// A failure could not be undone; a human must look (`cutover status`).
    pub const CRITICAL: u8 = 8;
}

/// Zero-downtime blue/green deploys of a containerized service behind nginx.
#[derive(Debug, Parser)]
#[command(name = "cutover", version, about, long_about = None)]
pub struct Cli {
    /// The deploy config.
    #[arg(long, short = 'c', global = true, default_value = config::DEFAULT_FILE, env = "CUTOVER_CONFIG")]
    pub config: PathBuf,
    /// How to print progress and results.
    #[arg(long, short = 'o', global = true, value_enum, default_value_t = OutputFormat::Human)]
    pub output: OutputFormat,
    /// Also put `docker build` output (build-argument values redacted) into
    /// `--output json` and the state directory's events.jsonl, where dashboards
    /// stream it; left out by default.
    #[arg(long, global = true)]
    pub verbose: bool,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// `--output`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OutputFormat {
    /// Lines for people (progress lines on a terminal, plain lines in CI logs).
    Human,
    /// One JSON object per event / report.
    Json,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Write a commented cutover.toml for the repository here (never overwrites one).
    Init {
        /// The service name (default: this directory's name).
        #[arg(long)]
        service: Option<String>,
        /// The app's Dockerfile (default: ./Dockerfile, else the one in a subdirectory).
        #[arg(long, value_name = "PATH")]
        dockerfile: Option<PathBuf>,
        /// The port the app listens on inside the container (default: its EXPOSE).
        #[arg(long)]
        port: Option<u16>,
        /// The path that answers 2xx when the app is ready.
        #[arg(long, default_value = "/health")]
        health: String,
        /// Where the managed nginx listens.
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: std::net::SocketAddr,
        /// Drive an nginx you run instead (prints the lines to add to it).
        #[arg(long)]
        external: bool,
    },
    /// Print a shell completion script (e.g. `cutover completions bash > /etc/bash_completion.d/cutover`).
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
    /// Print the man page (roff) on stdout (e.g. `cutover man | man -l -`).
    Man,
    /// Deploy the service to the idle colour and switch traffic to it.
    Deploy {
        /// Wait this long for another deploy's lock (e.g. `5m`) instead of failing.
        #[arg(long, value_parser = parse_duration, default_value = "0s", env = "CUTOVER_LOCK_WAIT")]
        lock_wait: Duration,
        /// Override a build argument (`KEY=VALUE`), repeatable.
        #[arg(long = "build-arg", value_parser = parse_key_value)]
        build_args: Vec<(String, String)>,
        /// Deploy this image reference instead of what the config says.
        #[arg(long)]
        image: Option<String>,
    },
    /// Show what runs, from Docker and the proxy files, and any disagreement with the state file.
    Status,
    /// Switch traffic back to the previous colour.
    Rollback {
        /// Wait this long for another deploy's lock.
        #[arg(long, value_parser = parse_duration, default_value = "0s", env = "CUTOVER_LOCK_WAIT")]
        lock_wait: Duration,
    },
    /// Show what a deploy would do, changing nothing.
    Plan {
        /// As `deploy --build-arg`.
        #[arg(long = "build-arg", value_parser = parse_key_value)]
        build_args: Vec<(String, String)>,
        /// As `deploy --image`.
        #[arg(long)]
        image: Option<String>,
    },
    /// Reconcile a deploy that was interrupted (the next deploy also does this first).
    Recover {
        /// Wait this long for another deploy's lock.
        #[arg(long, value_parser = parse_duration, default_value = "0s", env = "CUTOVER_LOCK_WAIT")]
        lock_wait: Duration,
    },
    /// Skip a running canary's remaining pauses (with `pause = "manual"`: go past the
    /// one it waits at).
    Promote,
    /// Abort a running canary: all traffic back to the live colour, the canary removed.
    Abort {
        /// Why, for the history.
        #[arg(long)]
        reason: Option<String>,
    },
    /// Run a command once in a new container from the live colour's image, with its
    /// env, secrets, volumes and network (e.g. `cutover exec -- bin/rails db:seed`).
    Exec {
        /// Stop it and fail after this long.
        #[arg(long, value_parser = parse_duration, default_value = "1h")]
        timeout: Duration,
        /// The command and its arguments, after `--`; they replace the image's CMD.
        #[arg(last = true, required = true, value_name = "ARGV")]
        argv: Vec<String>,
    },
    /// Put the service into maintenance: the front door answers 503 with
    /// `proxy.pause_page` (or a built-in page); the containers keep running.
    Pause,
    /// End a pause: the front door proxies the service's requests again.
    Resume,
    /// Stop the service: remove both colours' containers and stop the managed nginx.
    Down {
        /// Also remove the images cutover built for the service.
        #[arg(long)]
        images: bool,
    },
    /// Show the audit log: every deploy, rollback and denial, newest last.
    History {
        /// Show at most this many entries.
        #[arg(long, default_value_t = 20)]
        limit: usize,
        /// Write the entries as one self-contained HTML page (step timelines,
        /// outcomes, reasons) to this file instead of printing them.
        #[arg(long, value_name = "FILE")]
        html: Option<PathBuf>,
    },
    /// Serve a dashboard of the service (live colour, containers, last deploys with
    /// step timelines, live updates) and its `/metrics`.
    Dashboard {
        /// The address to listen on. Only loopback clients are answered unless
        /// `--token-env` names a bearer token.
        #[arg(long, default_value = "127.0.0.1:9322")]
        listen: std::net::SocketAddr,
        /// The environment variable holding a bearer token; when set, every request
        /// (loopback too) must send `Authorization: Bearer <token>`.
        #[arg(long, value_name = "VAR")]
        token_env: Option<String>,
        /// A host name besides localhost, 127.0.0.1 and [::1] that requests may name
        /// when no token is set (others get 421, against DNS rebinding); repeatable.
        #[arg(long = "allowed-host", value_name = "NAME")]
        allowed_hosts: Vec<String>,
        /// A connection that has not sent a whole request head within this is closed.
        #[arg(long, value_parser = parse_duration, default_value = "10s")]
        header_timeout: Duration,
        /// Open connections at most (lowered to fit the open-file limit); at the cap
        /// the oldest idle one is closed. A quarter of them may be event streams.
        #[arg(long, default_value_t = 256, value_parser = clap::value_parser!(u32).range(1..))]
        max_connections: u32,
    },
    /// Receive GitHub push webhooks (or a generic trigger) and deploy the pushed commit.
    Serve {
        /// The server's config (repositories, listen address, secret variable).
        #[arg(default_value = "cutover-serve.toml")]
        file: PathBuf,
    },
    /// Tools for plugin authors.
    Plugin {
        /// What to do.
        #[command(subcommand)]
        command: crate::plugin::cli::PluginCommand,
    },
}

fn parse_duration(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text)
        .map_err(|e| format!("expected a duration such as 30s or 5m: {e}"))
}

fn parse_key_value(text: &str) -> Result<(String, String), String> {
    text.split_once('=')
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .filter(|(k, _)| !k.is_empty())
        .ok_or_else(|| format!("expected KEY=VALUE, found {text:?}"))
}

/// Test-only: with this variable set to `1`, the binary stops after parsing its
/// arguments (exit 0, or clap's usage error). The tests run every `cutover …` line of
/// the README and `examples/` through the real binary's parser with it; it is not a
/// user feature and says so on stderr when used.
pub const PARSE_ONLY_ENV: &str = "CUTOVER_PARSE_ONLY";

/// Runs the command line and returns the process exit code.
pub fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() {
                exit::USAGE
            } else {
                exit::OK
            });
        }
    };
    if std::env::var_os(PARSE_ONLY_ENV).is_some_and(|v| v == "1") {
        eprintln!("{PARSE_ONLY_ENV}=1: the arguments parse; nothing was run");
        return ExitCode::from(exit::OK);
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(exit::FAILURE);
        }
    };
    ExitCode::from(runtime.block_on(run(cli)))
}

/// Runs a parsed command line; returns the exit code.
pub async fn run(cli: Cli) -> u8 {
    let format = match cli.output {
        OutputFormat::Human => Format::Human,
        OutputFormat::Json => Format::Json,
    };
    let printer = Printer::new(format);
    // Commands that print one report keep stdout for it.
    let printer = match cli.command {
        Command::Status | Command::Plan { .. } | Command::History { .. } => printer.reporting(),
        _ => printer,
    };
    let reporter: Arc<dyn Reporter> = Arc::new(printer);
    match execute(&cli, reporter).await {
        Ok(code) => code,
        Err(failure) => {
            report_error(&failure.error, cli.output);
            failure.code
        }
    }
}

/// An error with the exit code it maps to.
struct Failure {
    error: anyhow::Error,
    code: u8,
}

impl From<DeployError> for Failure {
    fn from(error: DeployError) -> Failure {
        let code = class_code(error.class());
        Failure {
            error: error.into(),
            code,
        }
    }
}

impl From<config::ConfigError> for Failure {
    fn from(error: config::ConfigError) -> Failure {
        Failure {
            error: error.into(),
            code: exit::CONFIG,
        }
    }
}

fn class_code(class: ErrorClass) -> u8 {
    match class {
        ErrorClass::Config => exit::CONFIG,
        ErrorClass::LockHeld => exit::LOCK_HELD,
        ErrorClass::Environment => exit::ENVIRONMENT,
        ErrorClass::DeployFailed => exit::DEPLOY_FAILED,
        ErrorClass::Critical => exit::CRITICAL,
    }
}

fn report_error(error: &anyhow::Error, output: OutputFormat) {
    let text = one_line(error);
    match output {
        OutputFormat::Json => {
            let event = crate::events::Event::Error { error: text };
            println!("{}", serde_json::to_string(&event).unwrap_or_default());
        }
        OutputFormat::Human => eprintln!("error: {text}"),
    }
}

/// The error and its causes on one line, leaving out a cause whose text is already
/// there: many of our errors write their source into their own message (to put the
/// fix after it), and anyhow's `{:#}` would print it a second time.
fn one_line(error: &anyhow::Error) -> String {
    let mut text = error.to_string();
    for cause in error.chain().skip(1) {
        let cause = cause.to_string();
        if !text.contains(&cause) {
            text.push_str(": ");
            text.push_str(&cause);
        }
    }
    text
}

/// Writes generated text to stdout. A reader that stops early (`| head`) is no
/// error: the writer stops too, instead of panicking as `print!` would.
fn print_generated(text: &[u8], what: &str) -> Result<u8, Failure> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    match out.write_all(text).and_then(|()| out.flush()) {
        Ok(()) => Ok(exit::OK),
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(exit::OK),
        Err(e) => Err(Failure {
            error: anyhow::Error::new(e).context(format!("cannot write {what}")),
            code: exit::FAILURE,
        }),
    }
}

async fn execute(cli: &Cli, reporter: Arc<dyn Reporter>) -> Result<u8, Failure> {
    match &cli.command {
        Command::Init { .. } => return init(cli),
        Command::Completions { shell } => {
            let mut command = <Cli as clap::CommandFactory>::command();
            let mut text = Vec::new();
            clap_complete::generate(*shell, &mut command, "cutover", &mut text);
            return print_generated(&text, "the completions");
        }
        Command::Man => {
            let page = clap_mangen::Man::new(<Cli as clap::CommandFactory>::command());
            let mut text = Vec::new();
            page.render(&mut text)
                .expect("rendering into memory cannot fail");
            return print_generated(&text, "the man page");
        }
        _ => {}
    }
    if let Command::Plugin { command } = &cli.command {
        let mut out = std::io::stdout().lock();
        let format = match cli.output {
            OutputFormat::Human => Format::Human,
            OutputFormat::Json => Format::Json,
        };
        return match crate::plugin::cli::run(command, format, &mut out) {
            Ok(()) => Ok(exit::OK),
            Err(e) => Err(Failure {
                code: if e.is_config_error() {
                    exit::CONFIG
                } else {
                    exit::FAILURE
                },
                error: e.into(),
            }),
        };
    }
    if let Command::Serve { file } = &cli.command {
        use crate::serve::ServeError;
        let config = crate::serve::ServeConfig::load(file)?;
        // One JSON object per line on stderr: journald and log shippers keep the
        // fields (delivery id, repository, sha, deploy id) searchable.
        let _ = tracing_subscriber::fmt()
            .json()
            .with_current_span(true)
            .with_writer(std::io::stderr)
            .try_init();
        return match crate::serve::run(config).await {
            Ok(()) => Ok(exit::OK),
            Err(e) => Err(Failure {
                code: match e {
                    ServeError::Config(_)
                    | ServeError::MissingSecret(_)
                    | ServeError::MissingToken(_)
                    | ServeError::Checkout { .. }
                    | ServeError::Trust { .. } => exit::CONFIG,
                    ServeError::Listen { .. } | ServeError::State { .. } => exit::ENVIRONMENT,
                },
                error: e.into(),
            }),
        };
    }
    let config = Config::load(&cli.config)?;
    if let Command::History { limit, html } = &cli.command {
        let log = crate::audit::AuditLog::new(&config.state_dir());
        let entries = log.read().map_err(|e| Failure {
            error: e.into(),
            code: exit::ENVIRONMENT,
        })?;
        let entries = &entries[entries.len().saturating_sub(*limit)..];
        if let Some(path) = html {
            let page = crate::html::history_report(&config.service, entries);
            std::fs::write(path, page).map_err(|e| Failure {
                error: anyhow::anyhow!("cannot write {}: {e}", path.display()),
                code: exit::ENVIRONMENT,
            })?;
            eprintln!("wrote {} ({} entries)", path.display(), entries.len());
            return Ok(exit::OK);
        }
        print_report(cli.output, &entries, || crate::audit::to_table(entries));
        return Ok(exit::OK);
    }
    let control = match &cli.command {
        Command::Promote => Some((crate::control::Command::Promote, None)),
        Command::Abort { reason } => Some((crate::control::Command::Abort, reason.clone())),
        _ => None,
    };
    if let Some((command, reason)) = control {
        use crate::control::ControlError;
        let line = crate::control::request(&config, command, reason, Duration::from_secs(10))
            .await
            .map_err(|e| Failure {
                code: match e {
                    ControlError::State(_) | ControlError::Write { .. } => exit::ENVIRONMENT,
                    ControlError::NoCanary { .. } | ControlError::NotTaken { .. } => exit::FAILURE,
                },
                error: e.into(),
            })?;
        eprintln!("{line}");
        return Ok(exit::OK);
    }
    // A run's events also go to its state directory, where the dashboard tails them.
    let reporter: Arc<dyn Reporter> = match &cli.command {
        Command::Deploy { .. } | Command::Rollback { .. } | Command::Recover { .. } => {
            Arc::new(crate::events::FileLog::tee(reporter, &config.state_dir()))
        }
        _ => reporter,
    };
    // Outside the event log too: build output reaches neither it nor stdout.
    let reporter: Arc<dyn Reporter> = if cli.verbose {
        reporter
    } else {
        Arc::new(crate::events::WithoutBuildOutput(reporter))
    };
    let plugin_host = PluginHost::new(None).map_err(DeployError::from)?;
    let mut kinds = plugins_used(&cli.command).to_vec();
    // Only a canary asks the analysis plugin: a blue/green deploy must not depend on it.
    if matches!(cli.command, Command::Deploy { .. })
        && config.strategy.kind == crate::strategy::StrategyKind::Canary
    {
        kinds.push(PluginKind::RolloutAnalysis);
    }
    let ctx = Context::open(config, &plugin_host, &kinds, reporter).await?;
    if let Command::Dashboard {
        listen,
        token_env,
        allowed_hosts,
        header_timeout,
        max_connections,
    } = &cli.command
    {
        let limits = (
            usize::try_from(*max_connections).unwrap_or(usize::MAX),
            *header_timeout,
        );
        return dashboard(ctx, *listen, token_env.as_deref(), allowed_hosts, limits).await;
    }
    let facts = || -> Result<(GitFacts, CiFacts), DeployError> {
        Ok((
            GitFacts::collect_hiding(ctx.config.base_dir(), &ctx.config.secret_env_vars())?,
            CiFacts::from_env(),
        ))
    };
    match &cli.command {
        Command::Deploy {
            lock_wait,
            build_args,
            image,
        } => {
            let options = deploy_options(*lock_wait, build_args, image.as_ref())?;
            let (git, ci) = facts()?;
            let report = deploy::deploy(&ctx, &git, &ci, &options).await?;
            Ok(report_code(&report))
        }
        Command::Rollback { lock_wait } => {
            let report = deploy::rollback(&ctx, *lock_wait, &CiFacts::from_env()).await?;
            Ok(report_code(&report))
        }
        Command::Recover { lock_wait } => {
            use crate::recover::Recovered;
            let message = match crate::recover::recover(&ctx, *lock_wait).await? {
                Recovered::Nothing => "nothing to recover".to_owned(),
                Recovered::Interrupted => "reconciled the interrupted deploy".to_owned(),
                Recovered::Adopted(color) => format!("adopted {color} as the live colour"),
                Recovered::Followed(color) => {
                    format!("{color} is live, as the cluster records it")
                }
            };
            ctx.reporter.log(crate::events::Level::Info, &message);
            Ok(exit::OK)
        }
        Command::Status => {
            let report = crate::status::status(&ctx).await?;
            print_report(cli.output, &report, || report.to_text());
            // Scripts and monitors can tell "consistent" from "look at this".
            Ok(if report.problems.is_empty() {
                exit::OK
            } else {
                exit::FAILURE
            })
        }
        Command::Plan { build_args, image } => {
            let options = deploy_options(Duration::ZERO, build_args, image.as_ref())?;
            let (git, ci) = facts()?;
            let plan = crate::plan::plan(&ctx, &git, &ci, &options).await?;
            print_report(cli.output, &plan, || plan.to_text());
            Ok(exit::OK)
        }
        Command::Down { images } => {
            crate::down::down(&ctx, *images).await?;
            Ok(exit::OK)
        }
        Command::Pause | Command::Resume => {
            let line = if matches!(cli.command, Command::Pause) {
                crate::pause::pause(&ctx).await?
            } else {
                crate::pause::resume(&ctx).await?
            };
            ctx.reporter.log(crate::events::Level::Info, &line);
            Ok(exit::OK)
        }
        Command::Exec { timeout, argv } => {
            let code = exec(&ctx, argv, *timeout).await?;
            // The command's own exit code, as `docker run` gives it.
            Ok(u8::try_from(code).unwrap_or(exit::FAILURE))
        }
        Command::Plugin { .. }
        | Command::History { .. }
        | Command::Serve { .. }
        | Command::Promote
        | Command::Abort { .. }
        | Command::Init { .. }
        | Command::Completions { .. }
        | Command::Man
        | Command::Dashboard { .. } => {
            unreachable!("handled above")
        }
    }
}

/// `cutover exec`: on a terminal, a TTY of its size in raw mode (keystrokes, Ctrl-C
/// included, go to the container) restored afterwards; else its output line by line.
async fn exec(ctx: &Context, argv: &[String], timeout: Duration) -> Result<i64, DeployError> {
    use crate::exec::Io;
    use std::io::{IsTerminal, Read, Write};
    let stdin = std::io::stdin();
    if !stdin.is_terminal() {
        let mut out = std::io::stdout();
        let mut on_line = |line: &str| {
            let _ = writeln!(out, "{line}");
        };
        return crate::exec::exec(ctx, argv, timeout, Io::Lines(&mut on_line)).await;
    }
    let saved = rustix::termios::tcgetattr(&stdin).ok();
    if let Some(saved) = &saved {
        let mut raw = saved.clone();
        raw.make_raw();
        let _ = rustix::termios::tcsetattr(&stdin, rustix::termios::OptionalActions::Now, &raw);
    }
    let size = rustix::termios::tcgetwinsize(&stdin)
        .ok()
        .map(|w| (w.ws_row, w.ws_col));
    // A thread of its own: a blocking read of the terminal must not hold up the
    // runtime's shutdown once the command has ended.
    let (keys, input) = tokio::sync::mpsc::channel(64);
    std::thread::spawn(move || {
        let mut buffer = [0u8; 1024];
        while let Ok(n @ 1..) = std::io::stdin().lock().read(&mut buffer) {
            if keys.blocking_send(buffer[..n].to_vec()).is_err() {
                break;
            }
        }
    });
    let mut out = std::io::stdout();
    let mut output = |bytes: &[u8]| {
        let _ = out.write_all(bytes).and_then(|()| out.flush());
    };
    let io = Io::Terminal {
        size,
        input,
        output: &mut output,
    };
    let code = crate::exec::exec(ctx, argv, timeout, io).await;
    if let Some(saved) = &saved {
        let _ = rustix::termios::tcsetattr(&stdin, rustix::termios::OptionalActions::Now, saved);
    }
    code
}

/// The plugins each command calls, and only those: a broken plugin that a command
/// does not use must not stop it (`rollback`, `down` and `recover` are what you need
/// when something is broken).
fn plugins_used(command: &Command) -> &'static [PluginKind] {
    use PluginKind::{DeployGate, HealthPolicy, ProxyTemplate, TargetSelector};
    match command {
        Command::Deploy { .. } | Command::Plan { .. } => {
            &[DeployGate, TargetSelector, HealthPolicy, ProxyTemplate]
        }
        // Health to judge the colour coming back, the template to find what the
        // proxy files name (recover's adoption, status's report).
        Command::Rollback { .. }
        | Command::Recover { .. }
        | Command::Status
        | Command::Dashboard { .. } => &[HealthPolicy, ProxyTemplate],
        Command::Down { .. }
        | Command::Pause
        | Command::Resume
        | Command::Exec { .. }
        | Command::History { .. }
        | Command::Serve { .. }
        | Command::Promote
        | Command::Abort { .. }
        | Command::Init { .. }
        | Command::Completions { .. }
        | Command::Man
        | Command::Plugin { .. } => &[],
    }
}

/// `cutover init`: writes the config, then says what to do next (and, for an external
/// nginx, what to add to it).
fn init(cli: &Cli) -> Result<u8, Failure> {
    let Command::Init {
        service,
        dockerfile,
        port,
        health,
        listen,
        external,
    } = &cli.command
    else {
        unreachable!("called for init only")
    };
    let options = crate::init::InitOptions {
        service: service.clone(),
        dockerfile: dockerfile.clone(),
        port: *port,
        health: health.clone(),
        listen: *listen,
        external: *external,
    };
    // Questions only when a person can answer them: in CI a missing fact is an error
    // naming the flag, never a hang on a prompt.
    let mut ask = |question: &str| {
        use std::io::{BufRead, IsTerminal};
        if !std::io::stdin().is_terminal() {
            return None;
        }
        eprint!("{question}");
        let _ = std::io::stderr().flush();
        let mut line = String::new();
        std::io::stdin().lock().read_line(&mut line).ok()?;
        Some(line)
    };
    let written = crate::init::init(&cli.config, &options, &mut ask).map_err(|e| Failure {
        code: match e {
            crate::init::InitError::Io { .. } | crate::init::InitError::Generated(_) => {
                exit::FAILURE
            }
            _ => exit::CONFIG,
        },
        error: e.into(),
    })?;
    for note in &written.notes {
        eprintln!("note: {note}");
    }
    println!("wrote {}", written.path.display());
    if let Some(lines) = &written.include_lines {
        println!("add to your nginx's server block:\n{lines}");
    }
    println!("next: `cutover plan` shows what a deploy would do; `cutover deploy` does it");
    Ok(exit::OK)
}

/// `cutover dashboard`: reads the token (never printed), binds, serves until
/// Ctrl-C or SIGTERM.
async fn dashboard(
    ctx: Context,
    listen: std::net::SocketAddr,
    token_env: Option<&str>,
    allowed_hosts: &[String],
    (max_connections, header_timeout): (usize, Duration),
) -> Result<u8, Failure> {
    if header_timeout.is_zero() {
        return Err(Failure {
            error: anyhow::anyhow!("--header-timeout must be more than 0, e.g. 10s"),
            code: exit::CONFIG,
        });
    }
    if let Some(bad) = allowed_hosts.iter().find(|h| !crate::access::valid_host(h)) {
        return Err(Failure {
            error: anyhow::anyhow!(
                "--allowed-host {bad}: expected a host name or address without a port, e.g. deploy.example.com"
            ),
            code: exit::CONFIG,
        });
    }
    let token = match token_env {
        None => None,
        Some(var) => match std::env::var(var) {
            Ok(token) if !token.trim().is_empty() => Some(crate::secret::Secret::new(token)),
            _ => {
                return Err(Failure {
                    error: anyhow::anyhow!(
                        "--token-env {var}: the environment variable {var} is not set; export the bearer token in it"
                    ),
                    code: exit::CONFIG,
                });
            }
        },
    };
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|e| Failure {
            error: anyhow::anyhow!("cannot listen on {listen}: {e}; pass another --listen"),
            code: exit::ENVIRONMENT,
        })?;
    let access = match (&token, listen.ip().is_loopback()) {
        (Some(_), _) => format!("bearer token from ${}", token_env.unwrap_or_default()),
        (None, true) => "loopback clients only".to_owned(),
        (None, false) => {
            "loopback clients only (pass --token-env to let others in with a token)".to_owned()
        }
    };
    let addr = listener.local_addr().unwrap_or(listen);
    eprintln!(
        "dashboard of {} on http://{addr}/ (metrics on /metrics); {access}",
        ctx.service()
    );
    let access = crate::access::Access::new(token, allowed_hosts).map_err(|e| Failure {
        error: anyhow::anyhow!("cannot make a session key from /dev/urandom: {e}"),
        code: exit::ENVIRONMENT,
    })?;
    crate::dashboard::Dashboard::new(ctx)
        .serve(listener, access, max_connections, header_timeout)
        .await;
    Ok(exit::OK)
}

/// The options `deploy` and `plan` share, with `--image` checked.
fn deploy_options(
    lock_wait: Duration,
    build_args: &[(String, String)],
    image: Option<&String>,
) -> Result<DeployOptions, Failure> {
    if let Some(image) = image {
        crate::config::check_image_ref(image).map_err(|message| Failure {
            error: anyhow::anyhow!("--image {image:?}: {message}"),
            code: exit::CONFIG,
        })?;
    }
    Ok(DeployOptions {
        lock_wait,
        build_args: build_args.iter().cloned().collect::<BTreeMap<_, _>>(),
        image: image.cloned(),
    })
}

fn report_code(report: &DeployReport) -> u8 {
    match report.outcome {
        Outcome::Succeeded => exit::OK,
        Outcome::Denied => exit::GATE_DENIED,
        _ => report
            .error_class
            .map_or(exit::DEPLOY_FAILED, |class| match class {
                // A failed deploy always leaves the previous colour serving; the class
                // only refines the code for config and environment causes.
                ErrorClass::DeployFailed => exit::DEPLOY_FAILED,
                other => class_code(other),
            }),
    }
}

fn print_report<T: serde::Serialize>(
    output: OutputFormat,
    value: &T,
    text: impl FnOnce() -> String,
) {
    let mut out = std::io::stdout().lock();
    let _ = match output {
        OutputFormat::Json => serde_json::to_writer(&mut out, value)
            .map_err(std::io::Error::other)
            .and_then(|()| out.write_all(b"\n")),
        OutputFormat::Human => out.write_all(text().as_bytes()),
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_config_file_says_the_os_error_once() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.toml");
        let error = anyhow::Error::from(Config::load(&path).unwrap_err());
        let text = one_line(&error);
        assert_eq!(
            text,
            format!(
                "cannot read config file {}: No such file or directory (os error 2); \
                 create it (`cutover init` writes one) or pass another file with --config",
                path.display()
            )
        );
        // A cause the message does not already hold is still shown.
        let wrapped = anyhow::Error::from(std::io::Error::other("disk gone")).context("saving");
        assert_eq!(one_line(&wrapped), "saving: disk gone");
    }

    #[test]
    fn cli_definition_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }

    #[test]
    fn deploy_flags_parse() {
        let cli = Cli::try_parse_from([
            "cutover",
            "deploy",
            "--config",
            "app/cutover.toml",
            "--lock-wait",
            "5m",
            "--build-arg",
            "VERSION=v2",
            "--output",
            "json",
        ])
        .unwrap();
        assert_eq!(cli.config, PathBuf::from("app/cutover.toml"));
        assert_eq!(cli.output, OutputFormat::Json);
        let Command::Deploy {
            lock_wait,
            build_args,
            ..
        } = cli.command
        else {
            panic!("not deploy");
        };
        assert_eq!(lock_wait, Duration::from_secs(300));
        assert_eq!(build_args, [("VERSION".to_owned(), "v2".to_owned())]);
    }

    #[test]
    fn bad_build_arg_is_a_usage_error() {
        let err = Cli::try_parse_from(["cutover", "deploy", "--build-arg", "novalue"]).unwrap_err();
        assert!(err.to_string().contains("KEY=VALUE"), "{err}");
    }
}
