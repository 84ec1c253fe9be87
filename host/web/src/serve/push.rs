//! What a verified webhook body asks for: a [`Push`] (from a GitHub push event or the
//! generic trigger) or an answer without a deploy (ping, other events, deleted refs),
//! and the checks that keep a push's ref, sha and delivery id plain. It sees only
//! bodies whose signature was already checked.

use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use serde::Deserialize;
use serde_json::json;

use super::http::reply;

/// A push, from GitHub or the generic trigger.
pub(super) struct Push {
    pub(super) delivery: String,
    pub(super) repository: String,
    pub(super) git_ref: String,
    pub(super) sha: String,
    pub(super) actor: Option<String>,
}

impl Push {
    /// Whether the sha, ref and delivery id are plain enough to pass to git, log and
    /// put in the environment.
    pub(super) fn is_well_formed(&self) -> bool {
        valid_sha(&self.sha) && valid_ref(&self.git_ref) && valid_delivery(&self.delivery)
    }
}

/// What a verified body asks for.
pub(super) enum Parsed {
    Push(Push),
    /// Answered without queueing anything (ping, other events, deleted refs).
    Reply(Response),
}

/// A GitHub webhook (`X-GitHub-Event`): a push, or a reply for the other events.
pub(super) fn parse_github(headers: &HeaderMap, body: &[u8]) -> Result<Parsed, String> {
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let event = header("x-github-event").unwrap_or("");
    match event {
        "ping" => {
            return Ok(Parsed::Reply(reply(
                StatusCode::OK,
                json!({"status": "pong"}),
            )));
        }
        "push" => {}
        other => {
            return Ok(Parsed::Reply(reply(
                StatusCode::ACCEPTED,
                json!({"status": "ignored", "reason": format!("event `{other}` is not a push")}),
            )));
        }
    }
    let Some(delivery) = header("x-github-delivery") else {
        return Err("missing X-GitHub-Delivery".to_owned());
    };
    #[derive(Deserialize)]
    struct Payload {
        #[serde(rename = "ref")]
        git_ref: String,
        after: String,
        #[serde(default)]
        deleted: bool,
        repository: Repository,
        pusher: Option<Named>,
        sender: Option<Login>,
    }
    #[derive(Deserialize)]
    struct Repository {
        full_name: String,
    }
    #[derive(Deserialize)]
    struct Named {
        name: Option<String>,
    }
    #[derive(Deserialize)]
    struct Login {
        login: Option<String>,
    }
    let payload: Payload = serde_json::from_slice(body).map_err(|e| {
        format!(
            "not a GitHub push payload ({e}); set the webhook's content type to application/json"
        )
    })?;
    if payload.deleted || payload.after.bytes().all(|b| b == b'0') {
        return Ok(Parsed::Reply(reply(
            StatusCode::ACCEPTED,
            json!({"status": "ignored", "reason": "the ref was deleted"}),
        )));
    }
    Ok(Parsed::Push(Push {
        delivery: delivery.to_owned(),
        repository: payload.repository.full_name,
        git_ref: payload.git_ref,
        sha: payload.after,
        actor: payload
            .sender
            .and_then(|s| s.login)
            .or_else(|| payload.pusher.and_then(|p| p.name)),
    }))
}

/// The generic trigger's JSON body.
pub(super) fn parse_trigger(_headers: &HeaderMap, body: &[u8]) -> Result<Parsed, String> {
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Trigger {
        repository: String,
        #[serde(rename = "ref")]
        git_ref: String,
        sha: String,
        delivery: String,
        actor: Option<String>,
    }
    let t: Trigger = serde_json::from_slice(body).map_err(|e| {
        format!("expected {{\"repository\", \"ref\", \"sha\", \"delivery\", \"actor\"?}}: {e}")
    })?;
    Ok(Parsed::Push(Push {
        delivery: t.delivery,
        repository: t.repository,
        git_ref: t.git_ref,
        sha: t.sha,
        actor: t.actor,
    }))
}

/// A ref git accepts as a plain ref name and that cannot act as a refspec or option.
fn valid_ref(git_ref: &str) -> bool {
    git_ref.starts_with("refs/")
        && git_ref.len() <= 1024
        && !git_ref.ends_with(['/', '.'])
        && !git_ref.ends_with(".lock")
        && !git_ref.contains("..")
        && !git_ref.contains("//")
        && !git_ref.contains("@{")
        && git_ref
            .bytes()
            .all(|b| b.is_ascii_graphic() && !b":?*[\\^~".contains(&b))
}

fn valid_sha(sha: &str) -> bool {
    matches!(sha.len(), 40 | 64) && sha.bytes().all(|b| b.is_ascii_hexdigit())
}

/// Delivery ids are echoed in logs, files and env vars: keep them plain.
fn valid_delivery(delivery: &str) -> bool {
    (1..=128).contains(&delivery.len())
        && delivery
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refs_and_shas_that_could_act_as_options_or_refspecs_are_refused() {
        assert!(valid_ref("refs/heads/main"));
        assert!(valid_ref("refs/tags/v1.2-cicd"));
        assert!(valid_ref("refs/heads/feature/login"));
        for bad in [
            "main",
            "--upload-pack=x",
            "refs/heads/a:refs/heads/b",
            "refs/heads/../x",
            "refs/heads/x y",
            "refs/heads/*",
            "refs/heads/a@{1}",
            "refs/heads/x.lock",
            "refs/heads/",
        ] {
            assert!(!valid_ref(bad), "{bad}");
        }
        assert!(valid_sha(&"a".repeat(40)));
        assert!(!valid_sha("abc1234"), "short shas are ambiguous");
        assert!(!valid_sha(&format!("-{}", "a".repeat(39))));
        assert!(valid_delivery("72d3162e-cc78-11e3-81ab-4c9367dc0958"));
        assert!(!valid_delivery("a\nb"));
        assert!(!valid_delivery(""));
    }
}
