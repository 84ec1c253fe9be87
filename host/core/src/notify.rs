//! Deploy notifications: once a deploy's or rollback's outcome is recorded in the
//! audit log, each `[[notify]]` webhook whose `on` list holds that outcome gets one
//! POST — a Slack-compatible `{"text": ...}` or the audit entry as JSON.
//!
//! A notification never changes a deploy: each attempt has a short timeout, a
//! failed one is retried a bounded number of times, and one that still fails is one
//! warning line. The webhook URL is a secret (a chat webhook URL is its own
//! credential): it is read from the environment only to send, held as a [`Secret`],
//! and never put into an event, an error, the state file or the audit log; the
//! warning names the variable, not the URL.

use std::time::Duration;

use serde::Serialize;

use crate::audit::{Entry, kind_name};
use crate::config::{NotifyConfig, NotifyFormat};
use crate::context::Context;
use crate::events::{Level, Reporter};
use crate::secret::Secret;

/// Attempts per webhook, the first included.
pub const ATTEMPTS: u32 = 3;

/// The wait before the second attempt; doubled for each one after.
const FIRST_BACKOFF: Duration = Duration::from_millis(250);

/// Sends the notifications for the run `entry` records, as the context's config
/// says. Called by the state machine after the audit append; it cannot fail.
pub async fn after_outcome(ctx: &Context, entry: &Entry) {
    send_all(&ctx.config.notify, ctx.service(), entry, &*ctx.reporter).await;
}

/// Sends `entry` to every webhook in `targets` that asked for its outcome, all at
/// once; a webhook that cannot be reached is reported through `reporter` as one
/// warning.
pub async fn send_all(
    targets: &[NotifyConfig],
    service: &str,
    entry: &Entry,
    reporter: &dyn Reporter,
) {
    let selected = targets
        .iter()
        .enumerate()
        .filter(|(_, t)| t.on.contains(&entry.outcome));
    let sends = selected.map(|(i, target)| async move {
        if let Err(why) = send(target, service, entry).await {
            reporter.log(
                Level::Warn,
                &format!(
                    "notification {} (`notify[{i}]`, URL from ${}) was not delivered: {why}; the {} result stands",
                    i + 1,
                    target.url_env,
                    kind_name(entry.kind)
                ),
            );
        }
    });
    futures_util::future::join_all(sends).await;
}

/// Posts `entry` to one webhook, retrying a timeout, a refused connection, a 429 or
/// a 5xx answer up to [`ATTEMPTS`] times in all.
///
/// # Errors
/// Why the last attempt failed, in words that never contain the URL.
async fn send(target: &NotifyConfig, service: &str, entry: &Entry) -> Result<(), String> {
    let url = match std::env::var(&target.url_env) {
        Ok(url) if !url.trim().is_empty() => Secret::new(url),
        _ => {
            return Err(format!(
                "the environment variable {} is not set; export the webhook URL in it",
                target.url_env
            ));
        }
    };
    let body = body(target.format, service, entry);
    crate::health::install_crypto_provider();
    let client = reqwest::Client::builder()
        .timeout(target.timeout.get())
        // A webhook answers where it was asked; a redirect would carry the body
        // somewhere the operator did not configure.
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .map_err(|e| format!("cannot create the HTTP client: {}", e.without_url()))?;
    let mut backoff = FIRST_BACKOFF;
    let mut why = String::new();
    for attempt in 1..=ATTEMPTS {
        if attempt > 1 {
            tokio::time::sleep(backoff).await;
            backoff *= 2;
        }
        let sent = client
            .post(url.expose())
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body.clone())
            .send()
            .await;
        let retry = match sent {
            Ok(response) if response.status().is_success() => return Ok(()),
            Ok(response) => {
                let status = response.status();
                why = format!("the webhook answered HTTP {status}");
                status.is_server_error() || status == reqwest::StatusCode::TOO_MANY_REQUESTS
            }
            Err(e) => {
                why = if e.is_timeout() {
                    format!("no answer within {}", target.timeout)
                } else if e.is_connect() {
                    "cannot connect to the webhook".to_owned()
                } else {
                    // Without the URL, and redacted in case a cause echoes it.
                    url.redact_from(&e.without_url().to_string())
                };
                true
            }
        };
        if !retry {
            break;
        }
        why = format!("{why} (attempt {attempt} of {ATTEMPTS})");
    }
    Err(why)
}

/// The audit entry with the service's name: what a `json` webhook receives.
#[derive(Serialize)]
struct JsonBody<'a> {
    service: &'a str,
    #[serde(flatten)]
    entry: &'a Entry,
}

/// The request body for `format`.
pub fn body(format: NotifyFormat, service: &str, entry: &Entry) -> Vec<u8> {
    let value = match format {
        NotifyFormat::Json => serde_json::to_value(JsonBody { service, entry }),
        NotifyFormat::Slack => Ok(serde_json::json!({ "text": slack_text(service, entry) })),
    };
    value
        .and_then(|v| serde_json::to_vec(&v))
        .unwrap_or_default()
}

/// One message for a chat: what ran, how it ended, where to, who ran it, and why.
fn slack_text(service: &str, entry: &Entry) -> String {
    let mark = match entry.outcome {
        crate::operation::Outcome::Succeeded => ":white_check_mark:",
        crate::operation::Outcome::Denied => ":no_entry:",
        _ => ":x:",
    };
    let secs = entry.steps.iter().map(|s| s.ms).sum::<u64>() as f64 / 1000.0;
    let mut text = format!(
        "{mark} cutover {} of *{}* {} in {secs:.1} s",
        kind_name(entry.kind),
        escape(service),
        entry.outcome
    );
    if let Some(target) = entry.target {
        text.push_str(&format!(" → {target}"));
    }
    if let Some(image) = &entry.image {
        text.push_str(&format!(" (`{}`)", escape(image)));
    }
    let by = entry.actor.name.as_deref().unwrap_or("?");
    text.push_str(&format!(
        "\nid {} by {}:{} on {}",
        entry.deploy_id,
        escape(&entry.actor.via),
        escape(by),
        escape(&entry.actor.host)
    ));
    if let Some(url) = &entry.actor.run_url {
        text.push_str(&format!(" <{}|run>", escape(url)));
    }
    if let Some(reason) = &entry.reason {
        text.push_str(&format!("\n> {}", escape(reason).replace('\n', "\n> ")));
    }
    text
}

/// Slack's three control characters in message text.
fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::Actor;
    use crate::operation::{OperationKind, Outcome, Step, StepTiming};

    fn entry() -> Entry {
        Entry {
            deploy_id: "01jd".to_owned(),
            time: "2026-01-01T00:00:00Z".to_owned(),
            kind: OperationKind::Deploy,
            actor: Actor {
                via: "local".to_owned(),
                name: Some("ada".to_owned()),
                run_url: None,
                host: "box".to_owned(),
            },
            git_sha: None,
            image: Some("hello:1".to_owned()),
            digest: None,
            target: Some(crate::Color::Green),
            outcome: Outcome::Failed,
            reason: Some("health: <503> & down".to_owned()),
            steps: vec![StepTiming {
                step: Step::Health,
                ms: 1500,
            }],
        }
    }

    #[test]
    fn slack_text_says_what_failed_and_escapes_the_reason() {
        let body: serde_json::Value =
            serde_json::from_slice(&body(NotifyFormat::Slack, "hello", &entry())).unwrap();
        let text = body["text"].as_str().unwrap();
        assert!(
            text.starts_with(":x: cutover deploy of *hello* failed in 1.5 s → green"),
            "{text}"
        );
        assert!(text.contains("> health: &lt;503&gt; &amp; down"), "{text}");
    }

    #[test]
    fn json_body_is_the_audit_entry_with_the_service() {
        let body: serde_json::Value =
            serde_json::from_slice(&body(NotifyFormat::Json, "hello", &entry())).unwrap();
        assert_eq!(body["service"], "hello");
        assert_eq!(body["outcome"], "failed");
        assert_eq!(body["steps"][0]["step"], "health");
    }
}
