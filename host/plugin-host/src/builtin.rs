//! The five default plugins, compiled from `plugins/` by `host/build.rs` and embedded
//! in the binary, with what each decides and the config keys it takes.
//!
//! This module only describes and hands out bytes; loading them is the host's job.
//! The config keys listed here mirror each crate's documentation (the crates are the
//! source of truth; `cutover plugin list` prints this summary).

use super::PluginKind;

/// A built-in plugin's wasm and its sha256, embedded at build time.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Embedded {
    pub(crate) wasm: &'static [u8],
    pub(crate) sha256: &'static str,
}

mod generated {
    use super::Embedded;
    include!(concat!(env!("OUT_DIR"), "/builtins.rs"));
}

/// One built-in plugin.
#[derive(Debug, Clone, Copy)]
pub struct Builtin {
    /// The name after `builtin:`.
    pub name: &'static str,
    /// The policy kind it implements.
    pub kind: PluginKind,
    /// What it decides, in one sentence.
    pub summary: &'static str,
    /// Its config keys, one `key: meaning` per entry.
    pub config: &'static [&'static str],
    embedded: Embedded,
}

impl Builtin {
    /// The `source` value that selects it: `builtin:<name>`.
    pub fn source(&self) -> String {
        format!("builtin:{}", self.name)
    }

    /// The component's bytes.
    pub fn wasm(&self) -> &'static [u8] {
        self.embedded.wasm
    }

    /// The sha256 of [`Builtin::wasm`], lowercase hex.
    pub fn sha256(&self) -> &'static str {
        self.embedded.sha256
    }
}

/// Every built-in, one per kind, in [`PluginKind::ALL`] order.
pub static BUILTINS: [Builtin; 5] = [
    Builtin {
        name: "tag-pattern",
        kind: PluginKind::DeployGate,
        summary: "allows a deploy when a tag on HEAD matches a pattern (substring, or a glob \
                  with * and ?); allows every deploy when no pattern is set",
        config: &["pattern: the tag pattern, e.g. \"cicd\" or \"release-*\" (default: none)"],
        embedded: generated::TAG_PATTERN,
    },
    Builtin {
        name: "alternate",
        kind: PluginKind::TargetSelector,
        summary: "deploys to the colour that is not live (blue first); refuses when the live \
                  container is gone but the other colour is serving, so a human looks first",
        config: &[
            "first: \"blue\" or \"green\", the first deploy's colour (default \"blue\")",
            "live_missing: \"refuse\" or \"redeploy\" when the live container is gone and the other serves (default \"refuse\")",
        ],
        embedded: generated::ALTERNATE,
    },
    Builtin {
        name: "http-status",
        kind: PluginKind::HealthPolicy,
        summary: "healthy after N consecutive probes with a status in a set, optionally with a \
                  body substring or a JSON value (Spring Boot's {\"status\":\"UP\"})",
        config: &[
            "successes: consecutive successes needed, 1 to 32 (default 1)",
            "statuses: codes or ranges, e.g. [\"200-299\", 304] (default [\"200-399\"])",
            "body_contains: a substring the body must contain (default: none)",
            "json_pointer + equals: the JSON value at the pointer must equal `equals`, e.g. \"/status\" and \"UP\"",
        ],
        embedded: generated::HTTP_STATUS,
    },
    Builtin {
        name: "nginx-service-url",
        kind: PluginKind::ProxyTemplate,
        summary: "writes `set $service_url http://ADDR:PORT;` to <service>-url.inc for one server \
                  (with `keepalive`, a pooled `upstream` block); \
                  for several servers or a canary split, `upstream` blocks (weighted, or picked \
                  by `split_clients` on a sticky key) in upstream_file; optionally a file from a \
                  {{placeholder}} template; refuses values that would inject nginx syntax",
        config: &[
            "file: the include's path (default \"<service>-url.inc\"; the managed nginx uses \"service-url.inc\")",
            "keepalive: idle connections per worker kept to each colour, 0 to 1024 (default 0; the managed nginx uses 32)",
            "upstream_file: where upstream blocks go when needed (default \"<service>-upstream.conf\", loaded at http level)",
            "max_fails, fail_timeout: each upstream server's passive health check (default 1 and \"5s\")",
            "variable: the nginx variable it sets (default \"service_url\")",
            "scheme: \"http\" or \"https\" (default \"http\")",
            "template: text with {{service}}, {{color}}, {{address}}, {{port}}, {{upstream}}, {{scheme}}, {{variable}} and [proxy.variables] keys",
            "template_file: where the template goes (default \"<service>.conf\")",
        ],
        embedded: generated::NGINX_SERVICE_URL,
    },
    Builtin {
        name: "canary-analysis",
        kind: PluginKind::RolloutAnalysis,
        summary: "holds a canary step until it saw enough requests, aborts when the canary's 5xx \
                  rate exceeds the baseline's by a margin or its p95 latency exceeds a bound, \
                  else promotes",
        config: &[
            "min_requests: canary requests needed in a step before judging (default 20)",
            "max_5xx_margin: percentage points the canary's 5xx rate may exceed the baseline's (default 1.0)",
            "max_p95_ms: the canary's p95 latency bound in ms (default 500)",
        ],
        embedded: generated::CANARY_ANALYSIS,
    },
];

/// The built-in called `name`, if any.
pub fn find(name: &str) -> Option<&'static Builtin> {
    BUILTINS.iter().find(|b| b.name == name)
}

/// The built-in used for `kind` when the config has no `[plugins.<kind>]`.
pub fn default_for(kind: PluginKind) -> &'static Builtin {
    // BUILTINS holds exactly one plugin per kind, in PluginKind::ALL order.
    let index = PluginKind::ALL
        .iter()
        .position(|k| *k == kind)
        .unwrap_or_default();
    &BUILTINS[index]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_builtin_per_kind_in_order() {
        for (builtin, kind) in BUILTINS.iter().zip(PluginKind::ALL) {
            assert_eq!(builtin.kind, kind);
            assert_eq!(default_for(kind).name, builtin.name);
        }
    }

    #[test]
    fn embedded_digests_match_the_bytes() {
        for builtin in &BUILTINS {
            assert_eq!(
                crate::cache::sha256_hex(builtin.wasm()),
                builtin.sha256(),
                "{}",
                builtin.name
            );
            assert!(builtin.wasm().starts_with(b"\0asm"), "{}", builtin.name);
        }
    }
}
