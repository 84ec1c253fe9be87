//! A cutover `proxy-template` plugin: writes `set $service_url http://ADDR:PORT;` to
//! `service-url.inc`, which the nginx config includes.
//!
//! It switches all traffic to one server. A canary split (`target-weight` under
//! 100) or a colour with several servers (a Swarm service) needs `upstream` blocks:
//! see `builtin:nginx-service-url` for one way to render them. This one refuses.
//!
//! Config (`[plugins.proxy-template].config`; `{}` when left out):
//! - `variable` (string, default `"service_url"`): the nginx variable it sets.

use cutover_plugin::{Config, ProxyFile, ProxyTemplate, TemplateInput};
use serde::Deserialize;

/// The plugin's config.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// The nginx variable to set, without `$`.
    pub variable: Option<String>,
}

impl Config for Settings {
    fn validate(&self) -> Result<(), String> {
        match &self.variable {
            Some(v) if v.is_empty() || !v.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') => {
                Err(format!("`variable` {v:?} is not an nginx variable name (letters, digits, `_`)"))
            }
            _ => Ok(()),
        }
    }
}

pub struct Policy;

impl ProxyTemplate for Policy {
    type Config = Settings;

    fn render(config: &Settings, input: TemplateInput) -> Result<Vec<ProxyFile>, String> {
        if input.target_weight != 100 {
            return Err(format!("this template cannot split traffic ({}%)", input.target_weight));
        }
        let [server] = input.target.servers.as_slice() else {
            return Err(format!("this template renders one server, not {}", input.target.servers.len()));
        };
        if server.address.contains(|c: char| c.is_whitespace() || ";{}\"'#$".contains(c)) {
            return Err(format!("the address {:?} would inject nginx syntax", server.address));
        }
        let variable = config.variable.as_deref().unwrap_or("service_url");
        Ok(vec![ProxyFile {
            path: "service-url.inc".to_owned(),
            contents: format!("set ${variable} http://{};\n", server.socket_address()),
        }])
    }
}

cutover_plugin::export_proxy_template!(Policy);

#[cfg(test)]
mod tests {
    use super::*;
    use cutover_plugin::{Color, Instance, Upstream};

    #[test]
    fn renders_the_include() {
        let server = Instance {
            id: "app-green".to_owned(),
            node: None,
            address: "127.0.0.1".to_owned(),
            port: 8082,
        };
        let mut input = TemplateInput {
            service: "app".to_owned(),
            target: Upstream { color: Color::Green, servers: vec![server] },
            previous: None,
            target_weight: 100,
            sticky_key: None,
            variables: Vec::new(),
        };
        let files = Policy::render(&Settings::default(), input.clone()).unwrap();
        assert_eq!(files[0].contents, "set $service_url http://127.0.0.1:8082;\n");
        assert!(cutover_plugin::parse_config::<Settings>(r#"{"variable":"a b"}"#).is_err());
        input.target_weight = 10;
        assert!(Policy::render(&Settings::default(), input).is_err());
    }
}
