//! `builtin:nginx-service-url`, the default `proxy-template` plugin: renders the
//! original script's include, `set $service_url http://ADDR:PORT;`, and optionally a
//! second file from a template (a full `upstream`/`server` block).
//!
//! What the include points at depends on the traffic the host asks for:
//! - all traffic to a colour with one server (one host): the server itself, exactly
//!   as the original script did, so an external nginx that includes only the
//!   include keeps working;
//! - all traffic to a colour with several servers (a Swarm service): an `upstream`
//!   block of every server, each with `max_fails`/`fail_timeout` so nginx skips a
//!   node that dies later;
//! - a canary split: one `upstream` of both colours' servers with weights that give
//!   the target its percentage; or, with a sticky key, one upstream per colour and a
//!   `split_clients` on the key that picks one of them, so a client stays on a colour.
//!
//! Upstream blocks go to `upstream_file`, which nginx must load at `http` level (the
//! managed nginx loads `conf.d/*.conf` there; an external nginx needs an `include`).
//!
//! # Config
//! ```toml
//! [plugins.proxy-template]
//! source = "builtin:nginx-service-url"
//! [plugins.proxy-template.config]
//! file = "service-url.inc"
//! variable = "service_url"
//! template_file = "app.conf"
//! template = """
//! upstream {{service}} { server {{upstream}} max_fails=3 fail_timeout=10s; }
//! server { listen 80; server_name {{server_name}}; location / { proxy_pass http://{{service}}; } }
//! """
//! ```
//! - `file` (default `"<service>-url.inc"`, so several services can share one
//!   `conf.d`; the managed nginx sets `"service-url.inc"`): the include's path,
//!   relative to the proxy's config directory.
//! - `variable` (default `"service_url"`): the nginx variable the include sets.
//! - `scheme` (`"http"` | `"https"`, default `"http"`).
//! - `template` (optional): text with `{{name}}` placeholders; single braces are
//!   literal, so nginx blocks read naturally. Names: `service`, `color`, `address`,
//!   `port`, `upstream` (`address:port`, IPv6 in brackets), `scheme`, `variable`, and
//!   every key of `[proxy.variables]` (a key that reuses a built-in name is refused).
//! - `template_file` (default `"<service>.conf"`): where the template's output goes.
//! - `upstream_file` (default `"<service>-upstream.conf"`): where upstream blocks go.
//! - `max_fails` (default 1) and `fail_timeout` (default `"5s"`): each upstream
//!   server's passive health check.
//! - `keepalive` (default 0; the managed nginx sets 32): idle connections to each
//!   colour that every nginx worker keeps open for reuse. Above 0, even a colour
//!   with one server becomes an `upstream` block (with `keepalive N;`) in
//!   `upstream_file`, since nginx pools connections only for upstream blocks; 0 keeps
//!   the original include, which names the server itself.
//!
//! Every substituted value is refused when it holds whitespace, a control character
//! or any of `; { } " ' \ # $`: each would end an nginx directive, open a block,
//! start a comment or reference a variable, i.e. inject syntax into the output.

#![deny(unsafe_code)]

use cutover_plugin::{ProxyFile, ProxyTemplate, TemplateInput, Upstream};
use serde::Deserialize;

/// Longest template accepted, in bytes.
const MAX_TEMPLATE_LEN: usize = 64 * 1024;

/// The plugin's config document, as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    file: Option<String>,
    variable: Option<String>,
    scheme: Option<String>,
    template: Option<String>,
    template_file: Option<String>,
    upstream_file: Option<String>,
    max_fails: Option<u32>,
    fail_timeout: Option<String>,
    keepalive: Option<u32>,
}

/// A checked config.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(try_from = "RawConfig")]
pub struct Config {
    /// The include's relative path; `None` means `<service>-url.inc`.
    pub file: Option<String>,
    /// The nginx variable it sets.
    pub variable: String,
    /// `http` or `https`.
    pub scheme: String,
    /// The optional template, parsed.
    pub template: Option<Vec<Piece>>,
    /// Where the template goes; `None` means `<service>.conf`.
    pub template_file: Option<String>,
    /// Where upstream blocks go; `None` means `<service>-upstream.conf`.
    pub upstream_file: Option<String>,
    /// Failed attempts before nginx skips a server for `fail_timeout`.
    pub max_fails: u32,
    /// An nginx time (`5s`, `500ms`, `1m`).
    pub fail_timeout: String,
    /// Idle backend connections each worker keeps per upstream; 0 for none.
    pub keepalive: u32,
}

/// A parsed template: literal text and placeholders.
#[derive(Debug, Clone, PartialEq)]
pub enum Piece {
    /// Copied as is.
    Text(String),
    /// Replaced by the named value.
    Var(String),
}

/// The placeholder names the plugin fills in itself.
const BUILTIN_NAMES: [&str; 7] = [
    "service", "color", "address", "port", "upstream", "scheme", "variable",
];

/// Checks a relative output path: the host checks again, but a config mistake is
/// better reported when the deploy starts.
fn check_path(key: &str, path: &str) -> Result<(), String> {
    let ok_chars = path
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '/'));
    let ok_parts = path
        .split('/')
        .all(|part| !part.is_empty() && part != "." && part != "..");
    if path.is_empty() || path.len() > 200 || !ok_chars || !ok_parts {
        return Err(format!(
            "`{key}` {path:?} must be a relative path of letters, digits, `.`, `_`, `-` and `/`, \
             without `..`, e.g. \"service-url.inc\""
        ));
    }
    Ok(())
}

/// Why `value` cannot be put into nginx syntax, if it cannot.
pub fn unsafe_char(value: &str) -> Option<char> {
    value.chars().find(|&c| {
        c.is_whitespace()
            || c.is_control()
            || matches!(c, ';' | '{' | '}' | '"' | '\'' | '\\' | '#' | '$')
    })
}

fn check_value(what: &str, value: &str) -> Result<(), String> {
    if value.is_empty() {
        return Err(format!(
            "{what} is empty, which would leave a gap in the nginx config"
        ));
    }
    match unsafe_char(value) {
        Some(c) => Err(format!(
            "{what} {value:?} contains {c:?}, which would inject nginx syntax; \
             values may not hold whitespace, control characters or any of ; {{ }} \" ' \\ # $"
        )),
        None => Ok(()),
    }
}

fn is_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Splits a template into text and `{{name}}` placeholders.
///
/// # Errors
/// A message for an unclosed `{{` or a placeholder that is not a name.
pub fn parse_template(template: &str) -> Result<Vec<Piece>, String> {
    let mut pieces = Vec::new();
    let mut rest = template;
    while let Some(start) = rest.find("{{") {
        if start > 0 {
            pieces.push(Piece::Text(rest[..start].to_owned()));
        }
        let after = &rest[start + 2..];
        let end = after.find("}}").ok_or_else(|| {
            format!(
                "`template`: `{{{{` at byte {} is never closed with `}}}}`",
                template.len() - rest.len() + start
            )
        })?;
        let name = after[..end].trim();
        if !is_name(name) {
            return Err(format!(
                "`template`: {{{{{}}}}} is not a placeholder; names are letters, digits and `_`",
                &after[..end]
            ));
        }
        pieces.push(Piece::Var(name.to_owned()));
        rest = &after[end + 2..];
    }
    if !rest.is_empty() {
        pieces.push(Piece::Text(rest.to_owned()));
    }
    Ok(pieces)
}

impl cutover_plugin::Config for Config {}

/// The checks serde's types cannot express; each message names the key.
impl TryFrom<RawConfig> for Config {
    type Error = String;

    fn try_from(raw: RawConfig) -> Result<Config, String> {
        if let Some(file) = &raw.file {
            check_path("file", file)?;
        }
        let file = raw.file;
        let variable = raw.variable.unwrap_or_else(|| "service_url".to_owned());
        if !is_name(&variable) {
            return Err(format!(
                "`variable` {variable:?} is not an nginx variable name (letters, digits, `_`; write it without `$`)"
            ));
        }
        let scheme = raw.scheme.unwrap_or_else(|| "http".to_owned());
        if scheme != "http" && scheme != "https" {
            return Err(format!(
                "`scheme` is {scheme:?}; expected \"http\" or \"https\""
            ));
        }
        let template = match raw.template {
            None => None,
            Some(t) if t.len() > MAX_TEMPLATE_LEN => {
                return Err(format!(
                    "`template` is {} bytes; keep it under {MAX_TEMPLATE_LEN}",
                    t.len()
                ));
            }
            Some(t) => Some(parse_template(&t)?),
        };
        if let Some(path) = &raw.template_file {
            if template.is_none() {
                return Err(
                    "`template_file` is set but there is no `template` to render into it"
                        .to_owned(),
                );
            }
            check_path("template_file", path)?;
            if file.as_ref() == Some(path) {
                return Err(format!(
                    "`template_file` and `file` are both {path:?}; give the template its own file"
                ));
            }
        }
        if let Some(path) = &raw.upstream_file {
            check_path("upstream_file", path)?;
            if file.as_ref() == Some(path) || raw.template_file.as_ref() == Some(path) {
                return Err(format!(
                    "`upstream_file` {path:?} is also `file` or `template_file`; give it its own file"
                ));
            }
        }
        let max_fails = raw.max_fails.unwrap_or(1);
        if max_fails > 1000 {
            return Err(format!(
                "`max_fails` is {max_fails}; expected 0 (never skip a server) to 1000"
            ));
        }
        let fail_timeout = raw.fail_timeout.unwrap_or_else(|| "5s".to_owned());
        if !is_nginx_time(&fail_timeout) {
            return Err(format!(
                "`fail_timeout` is {fail_timeout:?}; expected an nginx time such as \"5s\", \"500ms\" or \"1m\""
            ));
        }
        let keepalive = raw.keepalive.unwrap_or(0);
        if keepalive > 1024 {
            return Err(format!(
                "`keepalive` is {keepalive}; expected 0 (no pool) to 1024 idle connections per worker"
            ));
        }
        Ok(Config {
            keepalive,
            file,
            variable,
            scheme,
            template,
            template_file: raw.template_file,
            upstream_file: raw.upstream_file,
            max_fails,
            fail_timeout,
        })
    }
}

/// `5s`, `500ms`, `1m`, `30`: digits and one nginx time unit.
fn is_nginx_time(text: &str) -> bool {
    let digits = text.trim_end_matches(|c: char| c.is_ascii_alphabetic());
    let unit = &text[digits.len()..];
    !digits.is_empty()
        && digits.len() <= 9
        && digits.chars().all(|c| c.is_ascii_digit())
        && matches!(unit, "" | "ms" | "s" | "m" | "h" | "d")
}

/// True for one or more nginx variables run together: `$cookie_session`,
/// `$remote_addr$http_user_agent`.
fn is_sticky_key(key: &str) -> bool {
    let Some(rest) = key.strip_prefix('$') else {
        return false;
    };
    rest.split('$').all(is_name)
}

fn gcd(a: u64, b: u64) -> u64 {
    if b == 0 { a } else { gcd(b, a % b) }
}

/// Where the include sends traffic, and the upstream blocks that needs.
struct Routing {
    /// The host part of the include's URL: a server, an upstream or a variable.
    destination: String,
    /// Upstream blocks and `split_clients`, for `upstream_file`; empty when the
    /// include names the server itself.
    blocks: String,
}

/// The `server` lines of `upstream`'s servers, each with `weight` (when not 1) and
/// the passive health check.
fn server_lines(config: &Config, upstream: &Upstream, weight: u64, out: &mut String) {
    for address in upstream.addresses() {
        let weight = if weight == 1 {
            String::new()
        } else {
            format!(" weight={weight}")
        };
        out.push_str(&format!(
            "    server {address}{weight} max_fails={} fail_timeout={};\n",
            config.max_fails, config.fail_timeout
        ));
    }
}

/// The upstream named `name` of `upstream`'s servers.
fn upstream_block(config: &Config, name: &str, upstream: &Upstream, out: &mut String) {
    out.push_str(&format!("upstream {name} {{\n"));
    server_lines(config, upstream, 1, out);
    end_upstream(config, out);
}

/// Closes an upstream block, with its connection pool when one is configured.
fn end_upstream(config: &Config, out: &mut String) {
    if config.keepalive > 0 {
        out.push_str(&format!("    keepalive {};\n", config.keepalive));
    }
    out.push_str("}\n");
}

/// Decides where traffic goes for `input` (see the module docs).
fn routing(config: &Config, input: &TemplateInput) -> Result<Routing, String> {
    let service = &input.service;
    let target = &input.target;
    let name_of = |u: &Upstream| format!("{service}-{}", u.color.name());
    let weight = input.target_weight;
    if weight == 0 || weight > 100 {
        return Err(format!(
            "target-weight is {weight}; expected 1 to 100 percent"
        ));
    }
    let split = match (&input.previous, weight) {
        (_, 100) => None,
        (Some(previous), _) if previous.color != target.color => Some(previous),
        _ => {
            return Err(format!(
                "asked to send {weight}% to {} and the rest to a previous colour, but there is none",
                target.color.name()
            ));
        }
    };
    let mut blocks = String::new();
    let Some(previous) = split else {
        if let ([server], 0) = (target.servers.as_slice(), config.keepalive) {
            return Ok(Routing {
                destination: server.socket_address(),
                blocks,
            });
        }
        upstream_block(config, &name_of(target), target, &mut blocks);
        return Ok(Routing {
            destination: name_of(target),
            blocks,
        });
    };
    match input.sticky_key.as_deref() {
        Some(key) => {
            if !is_sticky_key(key) {
                return Err(format!(
                    "sticky key {key:?} is not an nginx variable such as \"$cookie_session\""
                ));
            }
            upstream_block(config, &name_of(target), target, &mut blocks);
            upstream_block(config, &name_of(previous), previous, &mut blocks);
            let variable: String = format!("cutover_{service}_upstream")
                .chars()
                .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
                .collect();
            blocks.push_str(&format!(
                "# {weight}% of clients (by {key}) to {}, the rest to {}.\n\
                 split_clients \"{key}\" ${variable} {{\n    {weight}% {};\n    * {};\n}}\n",
                target.color.name(),
                previous.color.name(),
                name_of(target),
                name_of(previous)
            ));
            Ok(Routing {
                destination: format!("${variable}"),
                blocks,
            })
        }
        None => {
            // Per-server weights that give each colour its share whatever its
            // number of servers: target w * |previous|, previous (100 - w) * |target|.
            let (n_target, n_previous) =
                (target.servers.len() as u64, previous.servers.len() as u64);
            let (w_target, w_previous) = (
                u64::from(weight) * n_previous,
                u64::from(100 - weight) * n_target,
            );
            let common = gcd(w_target, w_previous).max(1);
            let name = format!("{service}-split");
            blocks.push_str(&format!(
                "# {weight}% of requests to {}, the rest to {}.\nupstream {name} {{\n",
                target.color.name(),
                previous.color.name()
            ));
            server_lines(config, target, w_target / common, &mut blocks);
            server_lines(config, previous, w_previous / common, &mut blocks);
            end_upstream(config, &mut blocks);
            Ok(Routing {
                destination: name,
                blocks,
            })
        }
    }
}

/// Renders the files for `input`.
///
/// # Errors
/// A message when a value would inject nginx syntax, the template names an unknown
/// value, or a user variable reuses a built-in name.
pub fn render(config: &Config, input: &TemplateInput) -> Result<Vec<ProxyFile>, String> {
    let target = &input.target;
    let color = target.color.name();
    check_value("the service name", &input.service)?;
    let Some(first) = target.servers.first() else {
        return Err(format!("the target colour {color} has no server"));
    };
    for server in target
        .servers
        .iter()
        .chain(input.previous.iter().flat_map(|p| &p.servers))
    {
        check_value("the target address", &server.address)?;
    }
    let routing = routing(config, input)?;
    let upstream = first.socket_address();
    let port = first.port.to_string();
    let builtins: [(&str, &str); 7] = [
        ("service", &input.service),
        ("color", color),
        ("address", &first.address),
        ("port", &port),
        ("upstream", &upstream),
        ("scheme", &config.scheme),
        ("variable", &config.variable),
    ];
    debug_assert!(builtins.iter().map(|b| b.0).eq(BUILTIN_NAMES));

    let share = match input.target_weight {
        100 => String::new(),
        weight => format!(" {weight}%"),
    };
    let mut files = vec![ProxyFile {
        path: config
            .file
            .clone()
            .unwrap_or_else(|| format!("{}-url.inc", input.service)),
        contents: format!(
            "# Written by cutover (builtin:nginx-service-url): {} ->{share} {color}. Do not edit.\nset ${} {}://{};\n",
            input.service, config.variable, config.scheme, routing.destination
        ),
    }];
    if !routing.blocks.is_empty() {
        let path = config
            .upstream_file
            .clone()
            .unwrap_or_else(|| format!("{}-upstream.conf", input.service));
        check_path("upstream_file", &path)?;
        files.push(ProxyFile {
            path,
            contents: format!(
                "# Written by cutover (builtin:nginx-service-url). Do not edit.\n{}",
                routing.blocks
            ),
        });
    }

    let Some(template) = &config.template else {
        return Ok(files);
    };
    for var in &input.variables {
        if BUILTIN_NAMES.contains(&var.key.as_str()) {
            return Err(format!(
                "[proxy.variables] `{}` reuses the name of the built-in placeholder {{{{{}}}}}; rename the variable",
                var.key, var.key
            ));
        }
    }
    let mut out = String::new();
    for piece in template {
        match piece {
            Piece::Text(text) => out.push_str(text),
            Piece::Var(name) => {
                let value = builtins
                    .iter()
                    .find(|(key, _)| key == name)
                    .map(|(_, v)| *v)
                    .or_else(|| {
                        input
                            .variables
                            .iter()
                            .find(|kv| kv.key == *name)
                            .map(|kv| kv.value.as_str())
                    });
                let Some(value) = value else {
                    let mut known: Vec<&str> = BUILTIN_NAMES.to_vec();
                    known.extend(input.variables.iter().map(|kv| kv.key.as_str()));
                    return Err(format!(
                        "`template` uses {{{{{name}}}}}, which is neither built in nor in [proxy.variables]; known: {}",
                        known.join(", ")
                    ));
                };
                check_value(&format!("{{{{{name}}}}}"), value)?;
                out.push_str(value);
            }
        }
    }
    let path = match &config.template_file {
        Some(path) => path.clone(),
        None => format!("{}.conf", input.service),
    };
    check_path("template_file", &path)?;
    files.push(ProxyFile {
        path,
        contents: out,
    });
    Ok(files)
}

struct NginxServiceUrl;

impl ProxyTemplate for NginxServiceUrl {
    type Config = Config;

    fn render(config: &Config, input: TemplateInput) -> Result<Vec<ProxyFile>, String> {
        render(config, &input)
    }
}

cutover_plugin::export_proxy_template!(NginxServiceUrl);

#[cfg(test)]
mod tests {
    use super::*;

    use cutover_plugin::{Color, Instance, KeyValue};

    fn server(address: &str, port: u16) -> Instance {
        Instance {
            id: format!("task-{port}"),
            node: None,
            address: address.to_owned(),
            port,
        }
    }

    fn parse_config(json: &str) -> Result<Config, String> {
        cutover_plugin::parse_config(json)
    }

    fn input(address: &str, vars: &[(&str, &str)]) -> TemplateInput {
        TemplateInput {
            service: "app".to_owned(),
            target: Upstream {
                color: Color::Green,
                servers: vec![server(address, 8080)],
            },
            previous: None,
            target_weight: 100,
            sticky_key: None,
            variables: vars
                .iter()
                .map(|(k, v)| KeyValue {
                    key: (*k).to_owned(),
                    value: (*v).to_owned(),
                })
                .collect(),
        }
    }

    fn rendered(config: &str, input: &TemplateInput) -> Result<Vec<(String, String)>, String> {
        let files = render(&parse_config(config)?, input)?;
        Ok(files.into_iter().map(|f| (f.path, f.contents)).collect())
    }

    #[test]
    fn default_renders_the_original_include() {
        let files = rendered("{}", &input("172.20.0.3", &[])).unwrap();
        assert_eq!(files.len(), 1);
        assert_eq!(files[0].0, "app-url.inc");
        assert!(
            files[0]
                .1
                .ends_with("\nset $service_url http://172.20.0.3:8080;\n"),
            "{}",
            files[0].1
        );
    }

    #[test]
    fn keepalive_puts_even_one_server_in_a_pooled_upstream() {
        let files = rendered(r#"{"keepalive":16}"#, &input("172.20.0.3", &[])).unwrap();
        assert!(
            files[0].1.ends_with("set $service_url http://app-green;\n"),
            "{}",
            files[0].1
        );
        assert_eq!(files[1].0, "app-upstream.conf");
        assert!(
            files[1].1.ends_with(
                "upstream app-green {\n    server 172.20.0.3:8080 max_fails=1 fail_timeout=5s;\n    keepalive 16;\n}\n"
            ),
            "{}",
            files[1].1
        );
        let split = rendered(r#"{"keepalive":4}"#, &cluster(10, None)).unwrap();
        assert!(
            split[1].1.ends_with("    keepalive 4;\n}\n"),
            "{}",
            split[1].1
        );
        let sticky = rendered(r#"{"keepalive":4}"#, &cluster(10, Some("$cookie_s"))).unwrap();
        assert_eq!(
            sticky[1].1.matches("keepalive 4;").count(),
            2,
            "{}",
            sticky[1].1
        );
    }

    #[test]
    fn ipv6_addresses_are_bracketed() {
        let files = rendered(r#"{"scheme":"https","variable":"up"}"#, &input("::1", &[])).unwrap();
        assert!(
            files[0].1.contains("set $up https://[::1]:8080;"),
            "{}",
            files[0].1
        );
    }

    #[test]
    fn template_fills_builtins_and_user_variables() {
        let config = r#"{"template":"upstream {{service}} { server {{ upstream }}; }\nserver_name {{server_name}}; # {{color}}\n"}"#;
        let files = rendered(
            config,
            &input("10.0.0.2", &[("server_name", "example.com")]),
        )
        .unwrap();
        assert_eq!(files[1].0, "app.conf");
        assert_eq!(
            files[1].1,
            "upstream app { server 10.0.0.2:8080; }\nserver_name example.com; # green\n"
        );
    }

    #[test]
    fn injection_through_any_value_is_refused() {
        let config = r#"{"template":"server_name {{name}};"}"#;
        for bad in [
            "a;b", "a b", "a}b", "a{b", "a\nb", "a\"b", "a'b", "a#b", "$host", "a\\b", "",
        ] {
            let err = rendered(config, &input("10.0.0.2", &[("name", bad)])).unwrap_err();
            assert!(err.contains("{{name}}"), "{bad:?}: {err}");
        }
        let err = rendered("{}", &input("1.2.3.4;evil", &[])).unwrap_err();
        assert!(err.contains("the target address"), "{err}");
        assert!(err.contains("';'"), "{err}");
    }

    #[test]
    fn unknown_placeholder_and_shadowed_builtin_are_refused() {
        let err = rendered(r#"{"template":"{{nope}}"}"#, &input("h", &[])).unwrap_err();
        assert!(
            err.contains("{{nope}}") && err.contains("known: service"),
            "{err}"
        );
        let err =
            rendered(r#"{"template":"{{port}}"}"#, &input("h", &[("port", "1")])).unwrap_err();
        assert!(err.contains("`port` reuses"), "{err}");
    }

    /// Green on three Swarm nodes, blue on one.
    fn cluster(weight: u8, sticky: Option<&str>) -> TemplateInput {
        let mut input = input("10.0.0.11", &[]);
        input.target.servers = vec![
            server("10.0.0.11", 8080),
            server("10.0.0.12", 8080),
            server("10.0.0.13", 8080),
        ];
        input.previous = Some(Upstream {
            color: Color::Blue,
            servers: vec![server("10.0.0.11", 8081)],
        });
        input.target_weight = weight;
        input.sticky_key = sticky.map(str::to_owned);
        input
    }

    #[test]
    fn several_servers_become_an_upstream_with_passive_health() {
        let files = rendered(
            r#"{"fail_timeout":"10s","max_fails":2}"#,
            &cluster(100, None),
        )
        .unwrap();
        assert_eq!(files.len(), 2);
        assert!(
            files[0].1.ends_with("set $service_url http://app-green;\n"),
            "{}",
            files[0].1
        );
        assert_eq!(files[1].0, "app-upstream.conf");
        assert!(
            files[1].1.ends_with(
                "upstream app-green {\n    server 10.0.0.11:8080 max_fails=2 fail_timeout=10s;\n    \
                 server 10.0.0.12:8080 max_fails=2 fail_timeout=10s;\n    \
                 server 10.0.0.13:8080 max_fails=2 fail_timeout=10s;\n}\n"
            ),
            "{}",
            files[1].1
        );
    }

    #[test]
    fn a_split_weights_servers_so_each_color_gets_its_share() {
        // One server each: 10 to 90 becomes 1 to 9.
        let mut one_each = cluster(10, None);
        one_each.target.servers.truncate(1);
        let files = rendered("{}", &one_each).unwrap();
        assert!(files[0].1.contains("app -> 10% green"), "{}", files[0].1);
        assert!(
            files[0].1.ends_with("set $service_url http://app-split;\n"),
            "{}",
            files[0].1
        );
        assert!(
            files[1].1.ends_with(
                "upstream app-split {\n    server 10.0.0.11:8080 max_fails=1 fail_timeout=5s;\n    \
                 server 10.0.0.11:8081 weight=9 max_fails=1 fail_timeout=5s;\n}\n"
            ),
            "{}",
            files[1].1
        );
        // Three green servers against one blue: 25% is 25 * 1 per green server and
        // 75 * 3 per blue one, i.e. 1 : 9 each, 3 : 9 in all.
        let files = rendered("{}", &cluster(25, None)).unwrap();
        assert_eq!(
            files[1].1.matches(" weight=9 ").count(),
            1,
            "{}",
            files[1].1
        );
        assert_eq!(
            files[1].1.matches("server 10.0.0.1").count(),
            4,
            "{}",
            files[1].1
        );
    }

    #[test]
    fn a_sticky_split_picks_a_color_upstream_per_client() {
        let files = rendered("{}", &cluster(5, Some("$cookie_session"))).unwrap();
        assert!(
            files[0]
                .1
                .ends_with("set $service_url http://$cutover_app_upstream;\n"),
            "{}",
            files[0].1
        );
        let blocks = &files[1].1;
        assert!(blocks.contains("upstream app-green {"), "{blocks}");
        assert!(blocks.contains("upstream app-blue {"), "{blocks}");
        assert!(
            blocks.contains(
                "split_clients \"$cookie_session\" $cutover_app_upstream {\n    5% app-green;\n    * app-blue;\n}\n"
            ),
            "{blocks}"
        );
        for bad in ["cookie", "$cookie;", "$a b", "$"] {
            let err = rendered("{}", &cluster(5, Some(bad))).unwrap_err();
            assert!(err.contains("sticky key"), "{bad}: {err}");
        }
    }

    #[test]
    fn a_split_without_a_previous_color_or_a_bad_weight_is_refused() {
        let mut input = cluster(50, None);
        input.previous = None;
        assert!(
            rendered("{}", &input)
                .unwrap_err()
                .contains("there is none")
        );
        assert!(
            rendered("{}", &cluster(0, None))
                .unwrap_err()
                .contains("1 to 100")
        );
        let mut input = cluster(100, None);
        input.target.servers.clear();
        assert!(rendered("{}", &input).unwrap_err().contains("no server"));
    }

    #[test]
    fn config_errors_name_the_key() {
        for (config, expected) in [
            (r#"{"file":"../nginx.conf"}"#, "`file` \"../nginx.conf\""),
            (r#"{"file":"/etc/nginx/x"}"#, "`file`"),
            (r#"{"file":"a b"}"#, "`file`"),
            (r#"{"variable":"$x"}"#, "`variable`"),
            (r#"{"scheme":"ftp"}"#, "`scheme`"),
            (r#"{"template":"{{ a"}"#, "never closed"),
            (r#"{"template":"{{a-b}}"}"#, "not a placeholder"),
            (r#"{"template_file":"x.conf"}"#, "no `template`"),
            (
                r#"{"template":"x","file":"a.inc","template_file":"a.inc"}"#,
                "both",
            ),
            (r#"{"fiel":"x"}"#, "unknown field `fiel`"),
            (r#"{"fail_timeout":"5 s"}"#, "`fail_timeout`"),
            (r#"{"fail_timeout":"5y"}"#, "`fail_timeout`"),
            (r#"{"max_fails":5000}"#, "`max_fails`"),
            (r#"{"keepalive":5000}"#, "`keepalive`"),
            (
                r#"{"file":"a.inc","upstream_file":"a.inc"}"#,
                "`upstream_file`",
            ),
        ] {
            let err = parse_config(config).unwrap_err();
            assert!(err.contains(expected), "{config}: {err}");
        }
    }
}
