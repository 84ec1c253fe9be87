//! The operator's HTML: deploys as rows with their outcome, trigger and reason, and
//! an SVG timeline of their steps (one bar per step), shared by the static report
//! (`cutover history --html`) and the dashboard.
//!
//! Everything is inline (CSS, SVG, no script, no external asset), so a report is one
//! file a CI system can keep as an artifact. It renders only what the audit log and
//! the state file hold, which never contain a secret. The pages are `maud` templates,
//! which escape every value they interpolate; only the constant stylesheet and
//! scripts go in as they are.

use maud::{Markup, PreEscaped, html};

use crate::audit::Entry;
use crate::operation::Outcome;

/// The stylesheet of every page: readable on a phone, no external font.
pub const CSS: &str = r#"
:root { color-scheme: light dark; --ok: #1a7f37; --bad: #cf222e; --warn: #9a6700; --muted: #6e7781;
  --blue: #0969da; --green: #1a7f37; --bar: #8c959f; }
body { font: 15px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; margin: 0 auto; max-width: 60rem; padding: 1rem; }
h1 { font-size: 1.35rem; margin: .2rem 0 1rem; } h2 { font-size: 1.1rem; margin: 1.5rem 0 .5rem; }
.card { border: 1px solid #d0d7de88; border-radius: 8px; padding: .75rem 1rem; margin: .6rem 0; overflow-x: auto; }
.meta { color: var(--muted); font-size: .85rem; } code { font-size: .85rem; word-break: break-all; }
.badge { display: inline-block; border-radius: 1rem; padding: 0 .55rem; font-size: .8rem; font-weight: 600; color: #fff; }
.succeeded { background: var(--ok); } .failed, .rolled-back, .interrupted { background: var(--bad); }
.denied { background: var(--warn); } .live-blue { background: var(--blue); } .live-green { background: var(--green); }
.reason { white-space: pre-wrap; border-left: 3px solid var(--bad); padding-left: .5rem; margin: .4rem 0; font-size: .85rem; }
svg.steps { width: 100%; max-width: 40rem; display: block; margin-top: .4rem; }
svg.steps text { font: 11px system-ui, sans-serif; fill: currentColor; }
svg.steps rect.step { fill: var(--bar); } svg.steps rect.step.failed { fill: var(--bad); }
table { border-collapse: collapse; width: 100%; } td, th { text-align: left; padding: .2rem .5rem .2rem 0; vertical-align: top; }
"#;

/// A whole page: `title`, the stylesheet, `body`, and `script` (the page's own
/// constant script, if it has one).
pub fn page(title: &str, body: Markup, script: Option<&'static str>) -> Markup {
    html! {
        // Lowercase, as every page and report has always begun.
        (PreEscaped("<!doctype html>"))
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) }
                style { (PreEscaped(CSS)) }
            }
            body {
                (body)
                @if let Some(script) = script {
                    script { (PreEscaped(script)) }
                }
            }
        }
    }
}

/// The static report `cutover history --html` writes: `entries` newest first.
pub fn history_report(service: &str, entries: &[Entry]) -> String {
    let body = html! {
        h1 { "cutover · " (service) }
        p class="meta" {
            (entries.len()) " deploys and rollbacks from the audit log, newest first; generated "
            (crate::state::now_rfc3339())
        }
        (deploy_list(entries))
    };
    page(&format!("cutover history · {service}"), body, None).into_string()
}

/// The deploys as cards, newest first.
pub fn deploy_list(entries: &[Entry]) -> Markup {
    html! {
        div id="deploys" {
            @for entry in entries.iter().rev() {
                (deploy_card(entry))
            }
        }
    }
}

/// One deploy: outcome, what and where, who, the reason, the step timeline.
pub fn deploy_card(e: &Entry) -> Markup {
    let kind = crate::audit::kind_name(e.kind);
    let outcome = e.outcome.as_str();
    let total: u64 = e.steps.iter().map(|s| s.ms).sum();
    // Only a web address becomes a link: never `javascript:` or another scheme.
    let run_url = e
        .actor
        .run_url
        .as_deref()
        .filter(|url| url.starts_with("https://") || url.starts_with("http://"));
    html! {
        div class="card deploy" data-deploy=(e.deploy_id) data-outcome=(outcome) {
            span class={ "badge " (outcome) } { (outcome) }
            " " b { (kind) }
            @if let Some(target) = e.target {
                " → " span class={ "badge live-" (target) } { (target) }
            }
            " " span class="meta" { (format_args!("{:.1}", seconds(total))) " s · " (e.time) }
            div class="meta" {
                @if let Some(image) = &e.image {
                    code { (image) } " "
                }
                @if let Some(sha) = &e.git_sha {
                    "sha " code { (short(sha, 12)) } " "
                }
                "by " span class="trigger" {
                    (e.actor.via) ":" (e.actor.name.as_deref().unwrap_or("?"))
                }
                " on " (e.actor.host)
                @if let Some(url) = run_url {
                    " · " a href=(url) { "CI run" }
                }
                " · " code { (e.deploy_id) }
            }
            @if let Some(reason) = &e.reason {
                div class="reason" { (reason) }
            }
            (step_bars(e))
        }
    }
}

/// At most the first `len` bytes of `text` (a sha or an image id: ASCII).
pub(crate) fn short(text: &str, len: usize) -> &str {
    &text[..text.len().min(len)]
}

fn seconds(ms: u64) -> f64 {
    std::time::Duration::from_millis(ms).as_secs_f64()
}

/// The steps as a Gantt chart: one bar per step, starting where the one before
/// ended, scaled to the deploy's own length so a quick deploy is as legible as a
/// slow one. The last step of a run that did not succeed is drawn as the failure.
pub fn step_bars(e: &Entry) -> Markup {
    const WIDTH: f64 = 600.0;
    const LABEL: f64 = 70.0;
    const ROW: usize = 16;
    let total = e.steps.iter().map(|s| s.ms).sum::<u64>().max(1);
    let scale = (WIDTH - LABEL - 60.0) / seconds(total);
    let height = ROW * e.steps.len().max(1);
    let failed = !matches!(e.outcome, Outcome::Succeeded);
    // Where each step starts: the sum of the ones before it.
    let starts = e.steps.iter().scan(0u64, |at, s| {
        let start = *at;
        *at += s.ms;
        Some(start)
    });
    html! {
        svg class="steps" viewBox={ "0 0 " (WIDTH) " " (height) } role="img" aria-label="step timeline" {
            @for ((i, s), start) in e.steps.iter().enumerate().zip(starts) {
                @let y = i * ROW;
                @let x = LABEL + seconds(start) * scale;
                // A step of a few milliseconds still gets a visible sliver.
                @let w = (seconds(s.ms) * scale).max(2.0);
                @let class = if failed && i + 1 == e.steps.len() { "step failed" } else { "step" };
                text x="0" y=(y + 12) { (s.step) }
                rect class=(class) data-step=(s.step) data-ms=(s.ms)
                    x=(format_args!("{x:.1}")) y=(y + 3) width=(format_args!("{w:.1}"))
                    height=(ROW - 5) rx="2" {
                    title { (s.step) ": " (s.ms) " ms" }
                }
                text x=(format_args!("{:.1}", x + w + 4.0)) y=(y + 12) { (s.ms) " ms" }
            }
        }
    }
}

pub(crate) mod fixtures;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn report_is_one_escaped_file_with_a_bar_per_step() {
        // The fixture's failed deploy, with a script URL and markup in its reason.
        let mut entry = fixtures::entry();
        entry.actor.run_url = Some("javascript:alert(1)".to_owned());
        entry.reason = Some("health: 503 <b>".to_owned());
        let html = history_report("hello", &[entry]);
        assert!(!html.contains("<script>"), "{html}");
        assert!(!html.contains("javascript:"), "{html}");
        assert!(html.contains("health: 503 &lt;b&gt;"));
        assert_eq!(html.matches("<rect class=\"step").count(), 2);
        assert!(html.contains("class=\"step failed\" data-step=\"health\""));
        assert!(!html.contains("src=") && !html.contains("href=\"http"));
    }

    #[test]
    fn the_report_escapes_every_value_of_a_hostile_deploy() {
        let html = history_report(fixtures::HOSTILE, &[fixtures::entry()]);
        let fields = [
            "cutover · ",
            "id",
            "time",
            "image",
            "via",
            "name",
            "host",
            "reason",
            "run&quot;",
        ];
        fixtures::assert_escaped(&html, &fields, 0);
    }
}
