//! The `ssh://` engine transport: every connection to the engine is the system's `ssh`
//! running `docker system dial-stdio` on the remote, which joins its stdin and stdout
//! to the remote engine's socket, as the docker CLI does for `DOCKER_HOST=ssh://…`.
//!
//! It owns the ssh child processes (killed when their connection is dropped) and the
//! check that ssh and the remote docker CLI work before the first request. It never
//! adds a host key to `known_hosts`, nor lets a lax `~/.ssh/config` accept one
//! (`StrictHostKeyChecking=yes` on the command line), and never picks a key by
//! itself: the user's ssh configuration (the agent, `IdentityFile`, `known_hosts`)
//! decides, as for `ssh`. Host and user are checked strictly, since ssh hands them
//! to the shell commands a user's config may run (`%h`, `%r`).
//!
//! bollard's own `ssh` feature is not used: it drops the port of `ssh://user@host:port`
//! (ssh is handed `host:port` as a host name), accepts and records unknown host keys
//! (`StrictHostKeyChecking=accept-new`), and leaves a `ControlPersist=yes` master
//! process running for every connection a process does not drop before it exits.

use std::fmt;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::process::Stdio;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use hyper_util::client::legacy::connect::{Connected, Connection};
use hyper_util::rt::TokioIo;
use tokio::io::AsyncReadExt;
use tokio::process::{Child, ChildStdin, ChildStdout, Command};

/// How long ssh may take to connect (its `ConnectTimeout`), in seconds.
const SSH_CONNECT_TIMEOUT: u64 = 15;
/// How much of ssh's error output a failed check keeps.
const STDERR_LIMIT: usize = 2_000;
/// Only a host key already in `known_hosts` is accepted, whatever ssh's config says.
const STRICT_HOST_KEYS: &str = "StrictHostKeyChecking=yes";
/// The longest host name DNS allows.
const HOST_MAX: usize = 253;
/// The longest user name cutover takes (Linux allows 32).
const USER_MAX: usize = 32;

/// A host is a name (letters, digits, `.`, `-`, `_`, not starting with `-` or `.`) or
/// an IPv6 address. ssh substitutes it for `%h` in the user's `ProxyCommand`,
/// `Match exec` and `LocalCommand`, which a shell runs: a `;`, `$(…)` or quote in it
/// would run there.
fn check_host(host: &str) -> Result<(), String> {
    if host.contains(':') {
        return host
            .parse::<std::net::Ipv6Addr>()
            .map(|_| ())
            .map_err(|_| format!("{host:?} is not an IPv6 address"));
    }
    if host.len() <= HOST_MAX && !host.starts_with(['-', '.']) && host.bytes().all(plain_byte) {
        return Ok(());
    }
    Err(format!(
        "the host {host:?} may have only letters, digits, `.`, `-` and `_` (not first: `-`, `.`), at most {HOST_MAX}, or be an IPv6 address in brackets; name anything else with a `Host` alias in ~/.ssh/config"
    ))
}

/// A byte no shell gives a meaning to: a letter, a digit, `.`, `-` or `_`.
fn plain_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_')
}

/// A user is letters, digits, `.`, `-` and `_`, not starting with `-`: ssh
/// substitutes it for `%r` where a shell runs it, as [`check_host`] says for `%h`.
fn check_user(user: &str) -> Result<(), String> {
    if user.len() <= USER_MAX && !user.starts_with('-') && user.bytes().all(plain_byte) {
        return Ok(());
    }
    Err(format!(
        "the user {user:?} may have only letters, digits, `.`, `-` and `_` (not first: `-`), at most {USER_MAX}; set any other with `User` in ~/.ssh/config"
    ))
}

/// An `ssh://[user@]host[:port]` engine address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SshTarget {
    /// The remote user; ssh's configuration decides when none is given.
    pub user: Option<String>,
    /// The host name or address, as ssh takes it (an alias from `~/.ssh/config` works).
    pub host: String,
    /// The port; ssh's configuration decides when none is given.
    pub port: Option<u16>,
}

impl SshTarget {
    /// Reads `ssh://[user@]host[:port]`.
    ///
    /// # Errors
    /// What is wrong with the address, when it is not of that form.
    pub fn parse(address: &str) -> Result<SshTarget, String> {
        let rest = address
            .strip_prefix("ssh://")
            .ok_or_else(|| format!("{address:?} does not start with ssh://"))?;
        let rest = rest.strip_suffix('/').unwrap_or(rest);
        if rest.contains(['/', '?', '#', ' ']) {
            return Err(format!(
                "{address:?}: expected ssh://[USER@]HOST[:PORT], without a path"
            ));
        }
        let (user, host_port) = match rest.rsplit_once('@') {
            Some((user, host_port)) => (Some(user.to_owned()), host_port),
            None => (None, rest),
        };
        let (host, port) = match host_port.rsplit_once(':') {
            // A bare IPv6 address has colons of its own: it needs brackets for a port.
            Some((host, port)) if !host.contains(':') || host.ends_with(']') => {
                let port = port
                    .parse::<u16>()
                    .ok()
                    .filter(|p| *p != 0)
                    .ok_or_else(|| format!("{address:?}: {port:?} is not a port"))?;
                (host, Some(port))
            }
            _ => (host_port, None),
        };
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if host.is_empty() || user.as_deref() == Some("") {
            return Err(format!(
                "{address:?}: expected ssh://[USER@]HOST[:PORT] with a host name"
            ));
        }
        check_host(host).map_err(|why| format!("{address:?}: {why}"))?;
        if let Some(user) = &user {
            check_user(user).map_err(|why| format!("{address:?}: {why}"))?;
        }
        Ok(SshTarget {
            user,
            host: host.to_owned(),
            port,
        })
    }

    /// `ssh … HOST docker system dial-stdio`: batch mode (no password or host-key
    /// prompt can hang a deploy), strict host-key checking (an option on the command
    /// line wins over `~/.ssh/config`, so a lax `StrictHostKeyChecking no` or
    /// `accept-new` there cannot make ssh trust, or record, a key nobody checked), no
    /// pseudo-terminal, the port and user when given.
    fn dial_stdio(&self) -> Command {
        let mut cmd = Command::new("ssh");
        cmd.args(["-o", "BatchMode=yes", "-o", STRICT_HOST_KEYS, "-o"])
            .arg(format!("ConnectTimeout={SSH_CONNECT_TIMEOUT}"))
            .arg("-T");
        if let Some(user) = &self.user {
            cmd.arg("-l").arg(user);
        }
        if let Some(port) = self.port {
            cmd.arg("-p").arg(port.to_string());
        }
        cmd.arg("--")
            .arg(&self.host)
            .args(["docker", "system", "dial-stdio"])
            .kill_on_drop(true);
        cmd
    }

    /// The `ssh` command line a person can run to see the same failure (strict about
    /// host keys too, so trying it cannot record an unchecked key either).
    pub fn ssh_command_line(&self) -> String {
        let mut line = format!("ssh -o {STRICT_HOST_KEYS}");
        if let Some(port) = self.port {
            line.push_str(&format!(" -p {port}"));
        }
        line.push(' ');
        if let Some(user) = &self.user {
            line.push_str(user);
            line.push('@');
        }
        line.push_str(&self.host);
        line.push_str(" docker version");
        line
    }

    /// Runs `docker system dial-stdio` on the remote once, with nothing to send, so
    /// that a failing key, host key or remote docker CLI is reported in ssh's and the
    /// remote's own words instead of as a connection that closed.
    ///
    /// # Errors
    /// What ssh or the remote printed, when the command failed.
    pub async fn check(&self) -> Result<(), String> {
        let mut child = self
            .dial_stdio()
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| spawn_error(&e))?;
        let mut stderr = Vec::new();
        if let Some(mut pipe) = child.stderr.take() {
            // A broken pipe only shortens the message.
            let _ = pipe.read_to_end(&mut stderr).await;
        }
        let status = child.wait().await.map_err(|e| e.to_string())?;
        if status.success() {
            return Ok(());
        }
        let text = String::from_utf8_lossy(&stderr);
        let text = text.trim();
        let text = match text.char_indices().nth(STDERR_LIMIT) {
            Some((cut, _)) => &text[..cut],
            None => text,
        };
        Err(match status.code() {
            Some(255) => format!("ssh failed: {}", one_line(text)),
            Some(code) => format!(
                "`docker system dial-stdio` on the remote exited with {code}: {}",
                one_line(text)
            ),
            None => format!("ssh ended by a signal: {}", one_line(text)),
        })
    }

    /// A bollard client whose every connection is a new `ssh … dial-stdio`; the client
    /// keeps idle connections open for the next request.
    pub fn client(&self, timeout: Duration) -> Result<bollard::Docker, bollard::errors::Error> {
        let connector = SshConnector {
            target: Arc::new(self.clone()),
        };
        // The authority is never resolved: the connector knows where to go.
        super::pooled_client(connector, "ssh://docker-engine".to_owned(), timeout)
    }
}

impl fmt::Display for SshTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ssh://")?;
        if let Some(user) = &self.user {
            write!(f, "{user}@")?;
        }
        if self.host.contains(':') {
            write!(f, "[{}]", self.host)?;
        } else {
            f.write_str(&self.host)?;
        }
        if let Some(port) = self.port {
            write!(f, ":{port}")?;
        }
        Ok(())
    }
}

fn spawn_error(e: &io::Error) -> String {
    if e.kind() == io::ErrorKind::NotFound {
        "cannot run `ssh`: it is not on PATH; install the OpenSSH client (Debian: `apt-get install openssh-client`)".to_owned()
    } else {
        format!("cannot run `ssh`: {e}")
    }
}

/// ssh's lines joined into one, for an error message.
fn one_line(text: &str) -> String {
    let lines: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    if lines.is_empty() {
        "no error output".to_owned()
    } else {
        // The message goes on after it: "…failed.; check…" reads badly.
        lines.join(" / ").trim_end_matches('.').to_owned()
    }
}

/// Opens an engine connection: a new ssh child running `docker system dial-stdio`.
#[derive(Clone)]
struct SshConnector {
    target: Arc<SshTarget>,
}

impl tower_service::Service<hyper::Uri> for SshConnector {
    type Response = SshStream;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<SshStream>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: hyper::Uri) -> Self::Future {
        let mut cmd = self.target.dial_stdio();
        Box::pin(async move {
            let mut child = cmd
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                // Failures are reported by [`SshTarget::check`]; later ones show as a
                // closed connection, with the host in the error around it.
                .stderr(Stdio::null())
                .spawn()
                .map_err(|e| io::Error::new(e.kind(), spawn_error(&e)))?;
            let (Some(stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
                return Err(io::Error::other("ssh started without pipes"));
            };
            Ok(SshStream {
                stdin: TokioIo::new(stdin),
                stdout: TokioIo::new(stdout),
                _child: child,
            })
        })
    }
}

/// One engine connection: writes go to ssh's stdin, reads come from its stdout. The
/// child is killed when the connection is dropped.
struct SshStream {
    stdin: TokioIo<ChildStdin>,
    stdout: TokioIo<ChildStdout>,
    _child: Child,
}

impl hyper::rt::Read for SshStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stdout).poll_read(cx, buf)
    }
}

impl hyper::rt::Write for SshStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stdin).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stdin).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stdin).poll_shutdown(cx)
    }
}

impl Connection for SshStream {
    fn connected(&self) -> Connected {
        Connected::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(user: Option<&str>, host: &str, port: Option<u16>) -> SshTarget {
        SshTarget {
            user: user.map(str::to_owned),
            host: host.to_owned(),
            port,
        }
    }

    #[test]
    fn ssh_addresses_keep_their_port_and_user() {
        for (address, expected) in [
            ("ssh://app1", target(None, "app1", None)),
            ("ssh://deploy@app1", target(Some("deploy"), "app1", None)),
            (
                "ssh://root@127.0.0.1:2222",
                target(Some("root"), "127.0.0.1", Some(2222)),
            ),
            ("ssh://[::1]:22/", target(None, "::1", Some(22))),
            ("ssh://fe80::1", target(None, "fe80::1", None)),
        ] {
            let parsed = SshTarget::parse(address).unwrap();
            assert_eq!(parsed, expected, "{address}");
            assert_eq!(
                parsed.to_string(),
                address
                    .trim_end_matches('/')
                    .replace("fe80::1", "[fe80::1]")
            );
        }
    }

    #[test]
    fn bad_ssh_addresses_are_refused() {
        for address in [
            "ssh://",
            "ssh://@host",
            "ssh://host:port",
            "ssh://host:0",
            "ssh://host/var/run/docker.sock",
            "ssh://-oProxyCommand=x",
        ] {
            assert!(SshTarget::parse(address).is_err(), "{address}");
        }
    }

    #[test]
    fn shell_metacharacters_in_the_ssh_host_or_user_are_refused() {
        // Each would reach a shell through `%h` or `%r` in a user's ProxyCommand.
        for address in [
            "ssh://app1;touch${IFS}x",
            "ssh://app1$(id)",
            "ssh://app1`id`",
            "ssh://'app1'",
            "ssh://app1|id",
            "ssh://app1&id",
            "ssh://app1\"x",
            "ssh://app1\\x",
            "ssh://app1%h",
            "ssh://.app1",
            "ssh://[::1;id]",
            "ssh://x$(id)@app1",
            "ssh://x;id@app1",
            "ssh://-oProxyCommand=x@app1",
            "ssh://a@b@app1",
        ] {
            let error = SshTarget::parse(address).expect_err(address);
            assert!(
                error.contains("may have only") || error.contains("IPv6"),
                "{address}: {error}"
            );
        }
        for address in ["ssh://deploy.bot_1@app-1.example.com", "ssh://my_alias"] {
            assert!(SshTarget::parse(address).is_ok(), "{address}");
        }
    }

    #[test]
    fn the_ssh_command_has_the_port_and_user_and_never_prompts() {
        let cmd = target(Some("deploy"), "app1", Some(2222)).dial_stdio();
        let args: Vec<String> = cmd
            .as_std()
            .get_args()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            args.join(" "),
            "-o BatchMode=yes -o StrictHostKeyChecking=yes -o ConnectTimeout=15 -T -l deploy -p 2222 -- app1 docker system dial-stdio"
        );
    }
}
