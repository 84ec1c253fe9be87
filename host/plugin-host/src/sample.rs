//! Realistic sample inputs for each world: what `cutover plugin check` feeds a plugin
//! file, and what the benchmark and tests call the built-ins with.
//!
//! Only data lives here; nothing is called.

use super::types::{
    AnalysisInput, Color, ColorTraffic, GateInput, HealthInput, Instance, InstanceProbe, KeyValue,
    ProbeResult, ProbeVerdict, SelectorInput, SlotStatus, TemplateInput, TrafficMetrics, Upstream,
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
                present: true,
                desired: 1,
                running: 1,
                image: Some("hello:3".to_owned()),
                image_digest: Some(
                    "sha256:2c26b46b68ffc68ff99b453c1d30413413422d706483bfa0f98a5e886266e7ae"
                        .to_owned(),
                ),
                last_probe: ProbeVerdict::Healthy,
            },
            SlotStatus {
                color: Color::Green,
                present: false,
                desired: 0,
                running: 0,
                image: None,
                image_digest: None,
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
        instance: instance(Color::Green),
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

/// The one container of `color` on one host: blue on 127.0.0.1:18081, green on 18082.
pub fn instance(color: Color) -> Instance {
    let (name, port) = match color {
        Color::Blue => ("hello-blue", 18081),
        Color::Green => ("hello-green", 18082),
    };
    Instance {
        id: name.to_owned(),
        node: None,
        address: "127.0.0.1".to_owned(),
        port,
    }
}

/// Switching all traffic from blue on 127.0.0.1:18081 to green on 127.0.0.1:18082.
pub fn template_input() -> TemplateInput {
    TemplateInput {
        service: "hello".to_owned(),
        target: Upstream {
            color: Color::Green,
            servers: vec![instance(Color::Green)],
        },
        previous: Some(Upstream {
            color: Color::Blue,
            servers: vec![instance(Color::Blue)],
        }),
        target_weight: 100,
        sticky_key: None,
        variables: vec![kv("server_name", "hello.example.com")],
    }
}

/// `requests` responses, `errors` of them 5xx and the rest 2xx, with a p95 of `p95_us`.
pub fn traffic(requests: u64, errors: u64, p95_us: u64) -> TrafficMetrics {
    let some = |us: u64| (requests > 0).then_some(us);
    TrafficMetrics {
        requests,
        success: requests - errors.min(requests),
        client_errors: 0,
        server_errors: errors.min(requests),
        latency_p50_us: some(p95_us / 3),
        latency_p95_us: some(p95_us),
        latency_p99_us: some(p95_us + p95_us / 2),
    }
}

/// The first step (10%) of a canary of green against blue, 30 s in: green answered
/// 120 requests without an error, blue 1,080 with one 5xx.
pub fn analysis_input() -> AnalysisInput {
    AnalysisInput {
        service: "hello".to_owned(),
        step_index: 0,
        step_count: 3,
        weight: 10,
        step_elapsed_ms: 30_000,
        canary_elapsed_ms: 30_000,
        canary: ColorTraffic {
            color: Color::Green,
            this_step: traffic(120, 0, 42_000),
            whole_canary: traffic(120, 0, 42_000),
        },
        baseline: ColorTraffic {
            color: Color::Blue,
            this_step: traffic(1_080, 1, 40_000),
            whole_canary: traffic(1_080, 1, 40_000),
        },
        probes: [Color::Blue, Color::Green]
            .into_iter()
            .map(|color| InstanceProbe {
                color,
                instance: instance(color),
                probe: probe(200, r#"{"status":"UP"}"#, 1_500),
                verdict: ProbeVerdict::Healthy,
            })
            .collect(),
    }
}
