//! Realistic sample inputs for each world: what `cutover plugin check` feeds a plugin
//! file, and what the benchmark and tests call the built-ins with.
//!
//! Only data lives here; nothing is called.

use super::types::{
    Color, GateInput, HealthInput, KeyValue, ProbeResult, ProbeVerdict, SelectorInput, SlotStatus,
    TemplateInput, Upstream,
};

fn kv(key: &str, value: &str) -> KeyValue {
    KeyValue {
        key: key.to_owned(),
        value: value.to_owned(),
    }
}

/// A CI run on `main` whose HEAD carries the tag `v1.4.0-cicd`.
pub fn gate_input() -> GateInput {
    GateInput {
        service: "hello".to_owned(),
        repository: Some("https://git.example.com/team/hello.git".to_owned()),
        branch: Some("main".to_owned()),
        head_sha: Some("3f786850e387550fdab836ed7e6dc881de23001b".to_owned()),
        tags: vec!["v1.4.0-cicd".to_owned()],
        commit_subject: Some("Add the greeting endpoint".to_owned()),
        dirty: false,
        ci_system: Some("jenkins".to_owned()),
        ci_variables: vec![
            kv("ref", "refs/heads/main"),
            kv("run-id", "42"),
            kv("run-url", "https://ci.example.com/job/hello/42/"),
        ],
    }
}

/// Blue is live, running and healthy; green is empty.
pub fn selector_input() -> SelectorInput {
    SelectorInput {
        service: "hello".to_owned(),
        live: Some(Color::Blue),
        slots: vec![
            SlotStatus {
                color: Color::Blue,
                container_present: true,
                running: true,
                image: Some("hello:3".to_owned()),
                last_probe: ProbeVerdict::Healthy,
            },
            SlotStatus {
                color: Color::Green,
                container_present: false,
                running: false,
                image: None,
                last_probe: ProbeVerdict::Unknown,
            },
        ],
    }
}

/// A probe answered with a status, a content type and a body, in `latency_us`.
pub fn probe(status: u16, body: &str, latency_us: u64) -> ProbeResult {
    ProbeResult {
        status: Some(status),
        headers: vec![kv("content-type", "application/json")],
        body_prefix: body.to_owned(),
        latency_us,
        error: None,
    }
}

/// The third probe of green, a Spring Boot style `{"status":"UP"}`, after one
/// refused connection and one 503.
pub fn health_input() -> HealthInput {
    HealthInput {
        service: "hello".to_owned(),
        color: Color::Green,
        attempt: 3,
        elapsed_ms: 240,
        probe: probe(200, r#"{"status":"UP"}"#, 1_800),
        history: vec![
            ProbeResult {
                status: None,
                headers: Vec::new(),
                body_prefix: String::new(),
                latency_us: 150,
                error: Some("connection refused".to_owned()),
            },
            probe(503, r#"{"status":"DOWN"}"#, 2_500),
        ],
    }
}

/// Switching from blue on 127.0.0.1:18081 to green on 127.0.0.1:18082.
pub fn template_input() -> TemplateInput {
    TemplateInput {
        service: "hello".to_owned(),
        target: Upstream {
            color: Color::Green,
            address: "127.0.0.1".to_owned(),
            port: 18082,
        },
        previous: Some(Upstream {
            color: Color::Blue,
            address: "127.0.0.1".to_owned(),
            port: 18081,
        }),
        variables: vec![kv("server_name", "hello.example.com")],
    }
}
