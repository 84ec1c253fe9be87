//! [`DockerError`]: every way a Docker operation can fail, each with what failed, on
//! which object, and what the user should do next.
//!
//! This module only classifies and words failures; it never retries or performs an
//! operation. Errors of operations that carried registry credentials hold only text
//! that went through [`crate::secret::Secret::redact_from`], never a bollard error value
//! (whose `Debug` could show request details).

use std::fmt;
use std::net::IpAddr;
use std::path::PathBuf;

/// A Docker operation failed.
#[derive(Debug, thiserror::Error)]
pub enum DockerError {
    /// The engine cannot be reached or stopped answering.
    #[error(
        "cannot reach the Docker engine at {host}: {message}; {}",
        what_to_check(host)
    )]
    Unreachable {
        /// Where cutover looked: the address, its TLS files, and where it came from
        /// (`DOCKER_HOST`, `engine.host`, the default socket).
        host: String,
        /// What went wrong.
        message: String,
    },
    /// A container could not start because its host port is taken.
    #[error(
        "cannot start container {container}: host port {address}:{port} is already in use ({message}); stop whatever listens there (`ss -ltnp 'sport = :{port}'` shows it) or give this colour another `host_port` in cutover.toml"
    )]
    PortInUse {
        /// The host port.
        port: u16,
        /// The host address it was to be bound to.
        address: IpAddr,
        /// The container that could not start (it has been removed again).
        container: String,
        /// The engine's message.
        message: String,
    },
    /// The image build failed: a bad Dockerfile, a missing file, a failing step.
    #[error(
        "building image {tag} failed: {message}; fix the Dockerfile or the build context and try again{}",
        LastLines(last_lines)
    )]
    Build {
        /// The tag that was being built.
        tag: String,
        /// The builder's error text.
        message: String,
        /// The last lines the builder printed before failing.
        last_lines: Vec<String>,
    },
    /// The build context could not be read or is unusable.
    #[error("cannot use build context {}: {source}; check `image.build` in cutover.toml", path.display())]
    Context {
        /// The file or directory concerned.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// An object the operation needs does not exist.
    #[error("no {kind} `{name}` in the Docker engine; {}", not_found_hint(kind))]
    NotFound {
        /// `image`, `container` or `network`.
        kind: &'static str,
        /// The name or id asked for.
        name: String,
    },
    /// A push, pull or registry login failed. The message has the password redacted.
    #[error(
        "{op} {reference} failed: {message}; check that the registry is up, its address in the image reference, `image.registry.username` and the password variable"
    )]
    Registry {
        /// `push` or `pull`.
        op: &'static str,
        /// The image reference.
        reference: String,
        /// What the engine or registry said, with the password redacted.
        message: String,
    },
    /// An object cannot be removed or created because something uses it.
    #[error("cannot {op} {kind} `{name}`: {message}; remove what uses it first")]
    InUse {
        /// What was attempted: `remove`, `create`.
        op: &'static str,
        /// `image`, `container`, `network`.
        kind: &'static str,
        /// Its name or id.
        name: String,
        /// The engine's message.
        message: String,
    },
    /// A network of that name exists with a different subnet than configured.
    #[error(
        "network {name} exists with subnet {found}, but cutover.toml asks for {expected}; remove it (`docker network rm {name}`) or change `container.network.subnet`"
    )]
    NetworkMismatch {
        /// The network.
        name: String,
        /// The configured subnet.
        expected: String,
        /// The subnets it has.
        found: String,
    },
    /// Any other failure reported by the engine.
    #[error("Docker could not {op} {target}: {source}")]
    Api {
        /// The operation, e.g. `create container`.
        op: &'static str,
        /// The object, e.g. the container name.
        target: String,
        /// The engine's error.
        source: bollard::errors::Error,
    },
}

impl DockerError {
    /// Whether this is an environment problem (the engine is unreachable or not
    /// answering) rather than a problem with this deploy; the CLI maps it to the
    /// "environment problem" exit code.
    pub fn is_environment(&self) -> bool {
        matches!(self, DockerError::Unreachable { .. })
    }
}

/// What to check when the engine at `host` (as [`DockerError::Unreachable`] shows it)
/// cannot be reached, by how it is reached.
fn what_to_check(host: &str) -> String {
    let address = host.split_whitespace().next().unwrap_or(host);
    if address.starts_with("ssh://") {
        let try_it = super::ssh::SshTarget::parse(address)
            .map(|t| {
                format!(
                    "run `{}` on this machine to see the same failure; ",
                    t.ssh_command_line()
                )
            })
            .unwrap_or_default();
        format!(
            "{try_it}check the key (the ssh agent, or `IdentityFile` in ~/.ssh/config), that the host's key is in ~/.ssh/known_hosts (cutover never adds it: check its fingerprint, then `ssh-keyscan`), and that the docker CLI is installed on the remote and that user may use its engine; or set DOCKER_HOST / `engine.host` to another address"
        )
    } else if host.contains(" with TLS ") {
        "check the certificate files (the CA that signed the engine's certificate, and this client's certificate and key, signed by the CA the engine trusts), that the engine listens there with `--tlsverify`, and that its certificate names the host in the address; `docker --tlsverify -H <address> info` shows the same".to_owned()
    } else if address.starts_with("tcp://") {
        "check that the engine listens there (`dockerd -H tcp://...`); an engine on port 2376 usually wants TLS: set `engine.tls` or DOCKER_TLS_VERIFY and DOCKER_CERT_PATH; or set DOCKER_HOST / `engine.host` to another address".to_owned()
    } else {
        "start Docker (e.g. `systemctl start docker`) or set DOCKER_HOST or `engine.host` to its address (unix:///path/docker.sock, tcp://host:port or ssh://user@host), and check that this user may use it (`docker info`)".to_owned()
    }
}

fn not_found_hint(kind: &str) -> &'static str {
    match kind {
        "image" => "build or pull it first, or check the reference",
        "container" => "it may have been removed; `cutover status` shows what exists",
        _ => "check the name",
    }
}

/// Renders the builder's last lines under the message, indented.
struct LastLines<'a>(&'a [String]);

impl fmt::Display for LastLines<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            return Ok(());
        }
        f.write_str("\n  last build output:")?;
        for line in self.0 {
            write!(f, "\n    {line}")?;
        }
        Ok(())
    }
}

/// The HTTP status the engine answered with, when it answered.
pub(crate) fn status(e: &bollard::errors::Error) -> Option<u16> {
    match e {
        bollard::errors::Error::DockerResponseServerError { status_code, .. } => Some(*status_code),
        _ => None,
    }
}

/// The engine's own words, without bollard's "Docker responded with status code" frame
/// and without a final full stop (the messages continue after it).
pub(crate) fn engine_message(e: &bollard::errors::Error) -> String {
    let text = match e {
        bollard::errors::Error::DockerResponseServerError { message, .. } => message.clone(),
        bollard::errors::Error::DockerStreamError { error } => error.clone(),
        other => with_causes(other),
    };
    text.trim().trim_end_matches('.').to_owned()
}

/// `e` and its sources, e.g. "client error (Connect): tcp connect error: Connection
/// refused", since transport errors keep the useful part in their sources.
pub(super) fn with_causes(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        let part = cause.to_string();
        if !text.contains(&part) {
            text.push_str(": ");
            text.push_str(&part);
        }
        source = cause.source();
    }
    text
}

/// Whether the failure is in reaching the engine rather than in what it answered.
pub(super) fn is_transport(e: &bollard::errors::Error) -> bool {
    use bollard::errors::Error as E;
    matches!(
        e,
        E::SocketNotFoundError(_)
            | E::HyperLegacyError { .. }
            | E::IOError { .. }
            | E::RequestTimeoutError
            | E::UnsupportedURISchemeError { .. }
    )
}
