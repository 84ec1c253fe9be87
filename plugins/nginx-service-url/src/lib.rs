//! `builtin:nginx-service-url`, the default `proxy-template` plugin: renders the
//! original script's include, `set $service_url http://ADDR:PORT;`, and optionally a
//! second file from a template (a full `upstream`/`server` block).
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
//! - `file` (default `"service-url.inc"`): the include's path, relative to the proxy's
//!   config directory.
//! - `variable` (default `"service_url"`): the nginx variable the include sets.
//! - `scheme` (`"http"` | `"https"`, default `"http"`).
//! - `template` (optional): text with `{{name}}` placeholders; single braces are
//!   literal, so nginx blocks read naturally. Names: `service`, `color`, `address`,
//!   `port`, `upstream` (`address:port`, IPv6 in brackets), `scheme`, `variable`, and
//!   every key of `[proxy.variables]` (a key that reuses a built-in name is refused).
//! - `template_file` (default `"<service>.conf"`): where the template's output goes.
//!
//! Every substituted value is refused when it holds whitespace, a control character
//! or any of `; { } " ' \ # $`: each would end an nginx directive, open a block,
//! start a comment or reference a variable, i.e. inject syntax into the output.

#![deny(unsafe_code)]

use cutover_plugin::{ProxyFile, ProxyTemplate, TemplateInput};
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
}

/// A checked config.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(try_from = "RawConfig")]
pub struct Config {
    /// The include's relative path.
    pub file: String,
    /// The nginx variable it sets.
    pub variable: String,
    /// `http` or `https`.
    pub scheme: String,
    /// The optional template, parsed.
    pub template: Option<Vec<Piece>>,
    /// Where the template goes; `None` means `<service>.conf`.
    pub template_file: Option<String>,
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
        let file = raw.file.unwrap_or_else(|| "service-url.inc".to_owned());
        check_path("file", &file)?;
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
            if *path == file {
                return Err(format!(
                    "`template_file` and `file` are both {path:?}; give the template its own file"
                ));
            }
        }
        Ok(Config {
            file,
            variable,
            scheme,
            template,
            template_file: raw.template_file,
        })
    }
}

/// `address:port`, with an IPv6 address in brackets.
fn upstream(address: &str, port: u16) -> String {
    if address.contains(':') && !address.starts_with('[') {
        format!("[{address}]:{port}")
    } else {
        format!("{address}:{port}")
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
    check_value("the target address", &target.address)?;
    let upstream = upstream(&target.address, target.port);
    let port = target.port.to_string();
    let builtins: [(&str, &str); 7] = [
        ("service", &input.service),
        ("color", color),
        ("address", &target.address),
        ("port", &port),
        ("upstream", &upstream),
        ("scheme", &config.scheme),
        ("variable", &config.variable),
    ];
    debug_assert!(builtins.iter().map(|b| b.0).eq(BUILTIN_NAMES));

    let mut files = vec![ProxyFile {
        path: config.file.clone(),
        contents: format!(
            "# Written by cutover (builtin:nginx-service-url): {} -> {color}. Do not edit.\nset ${} {}://{upstream};\n",
            input.service, config.variable, config.scheme
        ),
    }];

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

    use cutover_plugin::{Color, KeyValue, Upstream};

    fn parse_config(json: &str) -> Result<Config, String> {
        cutover_plugin::parse_config(json)
    }

    fn input(address: &str, vars: &[(&str, &str)]) -> TemplateInput {
        TemplateInput {
            service: "app".to_owned(),
            target: Upstream {
                color: Color::Green,
                address: address.to_owned(),
                port: 8080,
            },
            previous: None,
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
        assert_eq!(files[0].0, "service-url.inc");
        assert!(
            files[0]
                .1
                .ends_with("\nset $service_url http://172.20.0.3:8080;\n"),
            "{}",
            files[0].1
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
                r#"{"template":"x","template_file":"service-url.inc"}"#,
                "both",
            ),
            (r#"{"fiel":"x"}"#, "unknown field `fiel`"),
        ] {
            let err = parse_config(config).unwrap_err();
            assert!(err.contains(expected), "{config}: {err}");
        }
    }
}
