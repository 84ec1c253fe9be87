//! `cutover init`: writes a commented `cutover.toml` that works for the repository it
//! runs in, so a newcomer's first command is not "copy 120 lines out of the README".
//!
//! What it can find out it finds (the service name from the directory, the Dockerfile,
//! the port from its `EXPOSE`, two free host ports); what it cannot it asks for on a
//! terminal, and otherwise refuses with the flag to pass. The text is parsed with
//! [`Config::parse`] before it is written, so a template that drifts from the config
//! schema fails here (and in the unit tests), never in the user's first deploy.

use std::io::Write;
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::path::{Path, PathBuf};

use crate::config::Config;

/// What `cutover init` was told on the command line.
#[derive(Debug, Clone)]
pub struct InitOptions {
    /// The service name; default: the directory's name, made valid.
    pub service: Option<String>,
    /// The Dockerfile; default: `Dockerfile` in the directory, else the one in a
    /// subdirectory.
    pub dockerfile: Option<PathBuf>,
    /// The port the app listens on in the container; default: the Dockerfile's `EXPOSE`.
    pub port: Option<u16>,
    /// The health path.
    pub health: String,
    /// Where the managed nginx listens.
    pub listen: SocketAddr,
    /// Write the variant that drives an nginx the user runs.
    pub external: bool,
}

/// What `cutover init` could not do.
#[derive(Debug, thiserror::Error)]
pub enum InitError {
    /// Never overwrite: the user's config may hold hours of tuning.
    #[error(
        "{} already exists; cutover init never overwrites a config: edit it, or pass another file with --config",
        path.display()
    )]
    Exists {
        /// The file that is there.
        path: PathBuf,
    },
    /// No Dockerfile, so no `image.build`.
    #[error(
        "no Dockerfile in {} or its subdirectories; pass --dockerfile PATH (or write [image] ref = \"…\" by hand to deploy an existing image)",
        dir.display()
    )]
    NoDockerfile {
        /// The directory searched.
        dir: PathBuf,
    },
    /// Several candidates and no way to tell which is the app's.
    #[error("several Dockerfiles: {}; pass --dockerfile with the app's", list.join(", "))]
    SeveralDockerfiles {
        /// What was found, relative to the directory.
        list: Vec<String>,
    },
    /// No `EXPOSE` and nobody at a terminal to ask.
    #[error("{} has no EXPOSE line to take the container's port from; pass --port N (the port the app listens on inside the container)", dockerfile.display())]
    NoPort {
        /// The Dockerfile read.
        dockerfile: PathBuf,
    },
    /// The directory's name cannot be made a service name.
    #[error(
        "cannot make a service name of the directory name {dir:?}; pass --service NAME (a-z, 0-9, `-`, `_`)"
    )]
    NoServiceName {
        /// The directory's name.
        dir: String,
    },
    /// A flag's value is wrong.
    #[error("--{flag}: {message}")]
    Flag {
        /// The flag, without dashes.
        flag: &'static str,
        /// What was expected.
        message: String,
    },
    /// No two free ports for the colours in the range searched.
    #[error(
        "no two free ports in 127.0.0.1:{FIRST_HOST_PORT}-{LAST_HOST_PORT} for blue and green; free some, or edit blue.host_port and green.host_port after init"
    )]
    NoFreePorts,
    /// Reading the Dockerfile or writing the config failed.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// What the system said.
        source: std::io::Error,
    },
    /// The generated text does not load: a bug in this module, said as one.
    #[error(
        "the config cutover init generated does not load ({0}); this is a bug in cutover, please report it"
    )]
    Generated(#[source] crate::config::ConfigError),
}

/// What was written.
#[derive(Debug)]
pub struct Written {
    /// The config file.
    pub path: PathBuf,
    /// Lines for the user's nginx (external mode only).
    pub include_lines: Option<String>,
    /// Choices worth telling the user about (a taken port, several EXPOSE ports).
    pub notes: Vec<String>,
}

/// Where the colours' host ports are looked for: above the usual dev-server ports and
/// below the ephemeral range, so a test or a browser does not take them a second later.
const FIRST_HOST_PORT: u16 = 18081;
const LAST_HOST_PORT: u16 = 18999;

/// Writes a new config at `path` for the repository in its directory.
///
/// `ask` is called with a question when something cannot be found out; it returns
/// `None` when nobody can answer (not a terminal).
///
/// # Errors
/// [`InitError`] naming what is missing and the flag that supplies it; nothing is
/// written then.
pub fn init(
    path: &Path,
    options: &InitOptions,
    ask: &mut dyn FnMut(&str) -> Option<String>,
) -> Result<Written, InitError> {
    if path.exists() {
        return Err(InitError::Exists {
            path: path.to_owned(),
        });
    }
    if !options.health.starts_with('/') {
        return Err(InitError::Flag {
            flag: "health",
            message: format!(
                "expected a path starting with `/`, found {:?}",
                options.health
            ),
        });
    }
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_owned(),
        _ => PathBuf::from("."),
    };
    let dir = std::fs::canonicalize(&dir).map_err(|source| InitError::Io {
        path: dir.clone(),
        source,
    })?;
    let mut notes = Vec::new();
    let service = match &options.service {
        Some(name) => name.clone(),
        None => service_name_of(&dir)?,
    };
    let dockerfile = match &options.dockerfile {
        Some(file) => file.clone(),
        None => find_dockerfile(&dir)?,
    };
    let dockerfile_text =
        std::fs::read_to_string(dir.join(&dockerfile)).map_err(|source| InitError::Io {
            path: dir.join(&dockerfile),
            source,
        })?;
    let port = match options.port {
        Some(port) => port,
        None => match exposed_ports(&dockerfile_text).as_slice() {
            [] => ask_port(&dockerfile, ask)?,
            [one] => *one,
            [first, ..] => {
                notes.push(format!(
                    "{} exposes several ports; using the first, {first} (pass --port to choose)",
                    dockerfile.display()
                ));
                *first
            }
        },
    };
    let (blue, green) = free_host_ports(options.listen.port())?;
    if TcpListener::bind(options.listen).is_err() {
        notes.push(format!(
            "{} is in use now; the managed nginx needs it at deploy time (or pass --listen)",
            options.listen
        ));
    }
    let context = dockerfile
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let dockerfile_name = dockerfile
        .file_name()
        .map_or_else(|| "Dockerfile".into(), |n| n.to_string_lossy().into_owned());
    let facts = Facts {
        service: &service,
        context: &context.display().to_string(),
        dockerfile: &dockerfile_name,
        port,
        blue,
        green,
        health: &options.health,
        listen: options.listen,
    };
    let (text, include_lines) = if options.external {
        let (text, lines) = external_text(&facts);
        (text, Some(lines))
    } else {
        (managed_text(&facts), None)
    };
    Config::parse(&text, path).map_err(InitError::Generated)?;
    // create_new: a file that appeared since the check above is still never replaced.
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
        .map_err(|source| match source.kind() {
            std::io::ErrorKind::AlreadyExists => InitError::Exists {
                path: path.to_owned(),
            },
            _ => InitError::Io {
                path: path.to_owned(),
                source,
            },
        })?;
    file.write_all(text.as_bytes())
        .map_err(|source| InitError::Io {
            path: path.to_owned(),
            source,
        })?;
    Ok(Written {
        path: path.to_owned(),
        include_lines,
        notes,
    })
}

/// The directory's name as a valid service name: lower case, anything else `-`.
fn service_name_of(dir: &Path) -> Result<String, InitError> {
    let raw = dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mapped: String = raw
        .to_ascii_lowercase()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
                c
            } else {
                '-'
            }
        })
        .collect();
    let name: String = mapped
        .trim_start_matches(['-', '_'])
        .chars()
        .take(48)
        .collect();
    if name.is_empty() {
        Err(InitError::NoServiceName { dir: raw })
    } else {
        Ok(name)
    }
}

/// `Dockerfile` in `dir`, else the only one in its direct subdirectories.
fn find_dockerfile(dir: &Path) -> Result<PathBuf, InitError> {
    if dir.join("Dockerfile").is_file() {
        return Ok(PathBuf::from("Dockerfile"));
    }
    let mut found: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|source| InitError::Io {
            path: dir.to_owned(),
            source,
        })?
        .filter_map(Result::ok)
        .filter(|entry| entry.file_type().is_ok_and(|t| t.is_dir()))
        .map(|entry| PathBuf::from(entry.file_name()).join("Dockerfile"))
        .filter(|rel| dir.join(rel).is_file())
        .collect();
    found.sort();
    match found.len() {
        0 => Err(InitError::NoDockerfile {
            dir: dir.to_owned(),
        }),
        1 => Ok(found.remove(0)),
        _ => Err(InitError::SeveralDockerfiles {
            list: found.iter().map(|p| p.display().to_string()).collect(),
        }),
    }
}

/// The ports of a Dockerfile's `EXPOSE` lines, in order (`8080`, `8080/tcp`; a
/// variable such as `$PORT` cannot be known and is skipped).
fn exposed_ports(dockerfile: &str) -> Vec<u16> {
    dockerfile
        .lines()
        .filter_map(|line| {
            let mut words = line.split_whitespace();
            words
                .next()
                .filter(|w| w.eq_ignore_ascii_case("EXPOSE"))
                .map(|_| words)
        })
        .flatten()
        .filter_map(|word| word.split('/').next()?.parse().ok())
        .collect()
}

fn ask_port(
    dockerfile: &Path,
    ask: &mut dyn FnMut(&str) -> Option<String>,
) -> Result<u16, InitError> {
    let no_port = || InitError::NoPort {
        dockerfile: dockerfile.to_owned(),
    };
    let answer = ask(&format!(
        "{} has no EXPOSE line. Which port does the app listen on inside the container? ",
        dockerfile.display()
    ))
    .ok_or_else(no_port)?;
    answer.trim().parse().map_err(|_| InitError::Flag {
        flag: "port",
        message: format!("expected a port number, found {:?}", answer.trim()),
    })
}

/// Two ports free on 127.0.0.1 now, one per colour, neither nginx's.
fn free_host_ports(listen_port: u16) -> Result<(u16, u16), InitError> {
    let mut free = (FIRST_HOST_PORT..=LAST_HOST_PORT)
        .filter(|&port| port != listen_port)
        .filter(|&port| TcpListener::bind((Ipv4Addr::LOCALHOST, port)).is_ok());
    match (free.next(), free.next()) {
        (Some(blue), Some(green)) => Ok((blue, green)),
        _ => Err(InitError::NoFreePorts),
    }
}

/// What goes into the template.
struct Facts<'a> {
    service: &'a str,
    context: &'a str,
    dockerfile: &'a str,
    port: u16,
    blue: u16,
    green: u16,
    health: &'a str,
    listen: SocketAddr,
}

/// The part both variants share: image, container, colours, health.
fn common_text(f: &Facts) -> String {
    let Facts {
        service,
        context,
        dockerfile,
        port,
        blue,
        green,
        health,
        ..
    } = f;
    // Each value line is padded so the comments line up whatever the value's width.
    let service_line = format!("service = {service:?}");
    let port_line = format!("port = {port}");
    let path_line = format!("path = {health:?}");
    format!(
        r#"# cutover's deploy config, written by `cutover init`. Every key is in README.md
# ("Configuration"). Try it: `cutover plan` shows what a deploy would do; `cutover
# deploy` builds the image, starts the idle colour, waits for its health check and
# switches nginx to it.

{service_line:<33}# names containers ({service}-blue/-green), images, the lock
# state_dir = ".cutover"         # state file, lock, audit log (add it to .gitignore)

[image]
build = {{ context = {context:?}, dockerfile = {dockerfile:?} }}
keep = 3                         # images kept for `cutover rollback`

[container]
{port_line:<33}# the port the app listens on inside the container
stop_grace = "10s"               # SIGTERM → SIGKILL; in-flight requests drain first
# env = {{ RUST_LOG = "info" }}
# volumes = ["/srv/{service}/data:/data"]

# Each colour is published on loopback on a port of its own (free when init ran).
[blue]
host_port = {blue}

[green]
host_port = {green}

[health]
{path_line:<33}# must answer 2xx once the app is ready
deadline = "60s"                 # from container start; then the deploy fails, nothing switched
"#
    )
}

fn managed_text(f: &Facts) -> String {
    format!(
        r#"{common}
# cutover runs its own nginx (under state_dir) on this address and switches it.
[proxy]
mode = "managed"
listen = "{listen}"

[drain]
timeout = "30s"                  # the most to wait for in-flight requests after the switch
"#,
        common = common_text(f),
        listen = f.listen,
    )
}

fn external_text(f: &Facts) -> (String, String) {
    let dir = format!("/etc/nginx/conf.d/{}", f.service);
    let text = format!(
        r#"{common}
# Your nginx: cutover writes {dir}/{service}-url.inc (it sets $service_url to
# the live colour), runs `nginx -t`, and reloads. Your server block needs:
#   location / {{
#       include {dir}/{service}-url.inc;
#       proxy_pass $service_url;
#   }}
[proxy]
mode = "external"
config_dir = "{dir}"
test_command = ["nginx", "-t"]
reload_command = ["nginx", "-s", "reload"]
# pid_file = "/run/nginx.pid"    # lets the drain watch the old workers

[verify]
url = "http://127.0.0.1{health}"   # the service through your nginx, checked after the switch
# host = "{service}.example.com"   # the Host header your server block answers

[drain]
timeout = "30s"
"#,
        common = common_text(f),
        health = f.health,
        service = f.service,
    );
    let lines = format!(
        "location / {{\n    include {dir}/{service}-url.inc;\n    proxy_pass $service_url;\n}}\n",
        service = f.service,
    );
    (text, lines)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts() -> Facts<'static> {
        Facts {
            service: "shop-web",
            context: "docker",
            dockerfile: "Dockerfile",
            port: 3000,
            blue: 18081,
            green: 18082,
            health: "/up",
            listen: "127.0.0.1:8080".parse().unwrap(),
        }
    }

    #[test]
    fn both_templates_load_as_configs_with_what_init_found() {
        let path = Path::new("/nowhere/cutover.toml");
        let managed = Config::parse(&managed_text(&facts()), path).unwrap();
        assert_eq!(managed.service, "shop-web");
        assert_eq!(managed.container.port, 3000);
        assert_eq!(managed.health.path, "/up");
        assert_eq!(managed.blue.host_port, Some(18081));
        assert_eq!(managed.green.host_port, Some(18082));
        let (text, lines) = external_text(&facts());
        let external = Config::parse(&text, path).unwrap();
        assert_eq!(
            external.proxy.config_dir.as_deref(),
            Some(Path::new("/etc/nginx/conf.d/shop-web"))
        );
        assert_eq!(external.verify.url.as_deref(), Some("http://127.0.0.1/up"));
        assert!(lines.contains("include /etc/nginx/conf.d/shop-web/shop-web-url.inc;"));
    }

    #[test]
    fn expose_lines_give_their_ports_in_order_and_variables_are_skipped() {
        let dockerfile = "FROM x\nexpose 8080/tcp 9090\nEXPOSE $PORT\nRUN echo EXPOSE 1\n";
        assert_eq!(exposed_ports(dockerfile), vec![8080, 9090]);
        assert!(exposed_ports("FROM scratch\n").is_empty());
    }

    #[test]
    fn a_directory_name_becomes_a_valid_service_name() {
        assert_eq!(
            service_name_of(Path::new("/src/My App.v2")).unwrap(),
            "my-app-v2"
        );
        assert_eq!(service_name_of(Path::new("/src/_x")).unwrap(), "x");
        assert!(matches!(
            service_name_of(Path::new("/src/___")),
            Err(InitError::NoServiceName { .. })
        ));
    }
}
