//! Runs guests built against `cutover:plugin@0.1.0` on the host's v0.2.0 model:
//! inputs go down to 0.1.0, answers come back up to 0.2.0.
//!
//! Going down drops what 0.1.0 cannot carry only where that loses nothing the guest
//! could act on (task counts become "present/running", a probe's instance is implied
//! by its colour). What would change the meaning of an answer is refused instead: a
//! 0.1.0 template cannot render a traffic split, a sticky key or several servers of a
//! colour, so asking it to is an error that says the plugin needs 0.2.0. This module
//! only converts; it calls nothing.

use super::v0_1_0::types as old;
use super::v0_2_0::types as new;

/// Why a v0.2.0 input cannot go to a v0.1.0 guest: what the 0.1.0 contract lacks.
pub type Unsupported = String;

/// A colour, down.
pub fn color_down(color: new::Color) -> old::Color {
    match color {
        new::Color::Blue => old::Color::Blue,
        new::Color::Green => old::Color::Green,
    }
}

/// A colour, up.
pub fn color_up(color: old::Color) -> new::Color {
    match color {
        old::Color::Blue => new::Color::Blue,
        old::Color::Green => new::Color::Green,
    }
}

/// A log level, up (a 0.1.0 guest's `log` call).
pub fn log_level_up(level: old::LogLevel) -> new::LogLevel {
    match level {
        old::LogLevel::Debug => new::LogLevel::Debug,
        old::LogLevel::Info => new::LogLevel::Info,
        old::LogLevel::Warn => new::LogLevel::Warn,
        old::LogLevel::Error => new::LogLevel::Error,
    }
}

fn key_values_down(list: &[new::KeyValue]) -> Vec<old::KeyValue> {
    list.iter()
        .map(|kv| old::KeyValue {
            key: kv.key.clone(),
            value: kv.value.clone(),
        })
        .collect()
}

/// The gate's input, down (unchanged in 0.2.0).
pub fn gate_input_down(input: &new::GateInput) -> old::GateInput {
    old::GateInput {
        service: input.service.clone(),
        repository: input.repository.clone(),
        branch: input.branch.clone(),
        head_sha: input.head_sha.clone(),
        tags: input.tags.clone(),
        commit_subject: input.commit_subject.clone(),
        dirty: input.dirty,
        ci_system: input.ci_system.clone(),
        ci_variables: key_values_down(&input.ci_variables),
    }
}

/// The gate's decision, up.
pub fn gate_decision_up(decision: old::GateDecision) -> new::GateDecision {
    match decision {
        old::GateDecision::Allow(reason) => new::GateDecision::Allow(reason),
        old::GateDecision::Deny(reason) => new::GateDecision::Deny(reason),
    }
}

fn probe_verdict_down(verdict: new::ProbeVerdict) -> old::ProbeVerdict {
    match verdict {
        new::ProbeVerdict::Healthy => old::ProbeVerdict::Healthy,
        new::ProbeVerdict::Unhealthy => old::ProbeVerdict::Unhealthy,
        new::ProbeVerdict::Unknown => old::ProbeVerdict::Unknown,
    }
}

/// The selector's input, down: a slot is "running" when any copy runs.
pub fn selector_input_down(input: &new::SelectorInput) -> old::SelectorInput {
    old::SelectorInput {
        service: input.service.clone(),
        live: input.live.map(color_down),
        slots: input
            .slots
            .iter()
            .map(|slot| old::SlotStatus {
                color: color_down(slot.color),
                container_present: slot.present,
                running: slot.running > 0,
                image: slot.image.clone(),
                last_probe: probe_verdict_down(slot.last_probe),
            })
            .collect(),
    }
}

fn probe_down(probe: &new::ProbeResult) -> old::ProbeResult {
    old::ProbeResult {
        status: probe.status,
        headers: key_values_down(&probe.headers),
        body_prefix: probe.body_prefix.clone(),
        latency_us: probe.latency_us,
        error: probe.error.clone(),
    }
}

/// The health input, down: the instance is dropped (0.1.0 knows one per colour).
pub fn health_input_down(input: &new::HealthInput) -> old::HealthInput {
    old::HealthInput {
        service: input.service.clone(),
        color: color_down(input.color),
        attempt: input.attempt,
        elapsed_ms: input.elapsed_ms,
        probe: probe_down(&input.probe),
        history: input.history.iter().map(probe_down).collect(),
    }
}

/// The health verdict, up.
pub fn health_verdict_up(verdict: old::HealthVerdict) -> new::HealthVerdict {
    match verdict {
        old::HealthVerdict::Healthy => new::HealthVerdict::Healthy,
        old::HealthVerdict::NotYet(why) => new::HealthVerdict::NotYet(why),
        old::HealthVerdict::Failed(why) => new::HealthVerdict::Failed(why),
    }
}

fn upstream_down(upstream: &new::Upstream) -> Result<old::Upstream, Unsupported> {
    match upstream.servers.as_slice() {
        [server] => Ok(old::Upstream {
            color: color_down(upstream.color),
            address: server.address.clone(),
            port: server.port,
        }),
        servers => Err(format!(
            "the {} colour has {} servers, and 0.1.0 renders exactly one",
            color_name(upstream.color),
            servers.len()
        )),
    }
}

/// The template input, down.
///
/// # Errors
/// What 0.1.0 cannot express: a split (`target-weight` under 100), a sticky key, or a
/// colour with other than one server.
pub fn template_input_down(input: &new::TemplateInput) -> Result<old::TemplateInput, Unsupported> {
    if input.target_weight != 100 {
        return Err(format!(
            "it was asked to send {}% of traffic to {} and the rest to the previous colour, \
             and 0.1.0 can only switch all traffic",
            input.target_weight,
            color_name(input.target.color)
        ));
    }
    if input.sticky_key.is_some() {
        return Err("it was given a sticky key, which 0.1.0 has no field for".to_owned());
    }
    Ok(old::TemplateInput {
        service: input.service.clone(),
        target: upstream_down(&input.target)?,
        previous: input.previous.as_ref().map(upstream_down).transpose()?,
        variables: key_values_down(&input.variables),
    })
}

/// Rendered files, up.
pub fn proxy_files_up(files: Vec<old::ProxyFile>) -> Vec<new::ProxyFile> {
    files
        .into_iter()
        .map(|f| new::ProxyFile {
            path: f.path,
            contents: f.contents,
        })
        .collect()
}

fn color_name(color: new::Color) -> &'static str {
    match color {
        new::Color::Blue => "blue",
        new::Color::Green => "green",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn instance(port: u16) -> new::Instance {
        new::Instance {
            id: format!("hello-{port}"),
            node: None,
            address: "127.0.0.1".to_owned(),
            port,
        }
    }

    fn template(weight: u8, servers: usize) -> new::TemplateInput {
        new::TemplateInput {
            service: "hello".to_owned(),
            target: new::Upstream {
                color: new::Color::Green,
                servers: (0..servers)
                    .map(|i| instance(18082 + u16::try_from(i).unwrap()))
                    .collect(),
            },
            previous: Some(new::Upstream {
                color: new::Color::Blue,
                servers: vec![instance(18081)],
            }),
            target_weight: weight,
            sticky_key: None,
            variables: Vec::new(),
        }
    }

    #[test]
    fn a_plain_switch_to_one_server_goes_down_unchanged() {
        let old = template_input_down(&template(100, 1)).unwrap();
        assert_eq!(
            (old.target.address.as_str(), old.target.port),
            ("127.0.0.1", 18082)
        );
        assert_eq!(old.previous.unwrap().port, 18081);
    }

    #[test]
    fn what_0_1_0_cannot_render_is_refused_not_dropped() {
        let err = template_input_down(&template(10, 1)).unwrap_err();
        assert!(err.contains("10% of traffic to green"), "{err}");
        let err = template_input_down(&template(100, 3)).unwrap_err();
        assert!(err.contains("3 servers"), "{err}");
        let mut sticky = template(100, 1);
        sticky.sticky_key = Some("$cookie_session".to_owned());
        assert!(template_input_down(&sticky).unwrap_err().contains("sticky"));
    }

    #[test]
    fn task_counts_become_running() {
        let input = new::SelectorInput {
            service: "hello".to_owned(),
            live: None,
            slots: vec![new::SlotStatus {
                color: new::Color::Blue,
                present: true,
                desired: 3,
                running: 2,
                image: None,
                image_digest: Some("sha256:ab".to_owned()),
                last_probe: new::ProbeVerdict::Healthy,
            }],
        };
        let old = selector_input_down(&input);
        assert!(old.slots[0].container_present && old.slots[0].running);
    }
}
