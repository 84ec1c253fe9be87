//! The operator's HTML: deploys as rows with their outcome, trigger and reason, and
//! an SVG timeline of their steps (one bar per step), shared by the static report
//! (`cutover history --html`) and the dashboard.
//!
//! Everything is inline (CSS, SVG, no script, no external asset), so a report is one
//! file a CI system can keep as an artifact. It renders only what the audit log and
//! the state file hold, which never contain a secret; every value is escaped.

use std::fmt::Write as _;

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

/// `text` escaped for HTML text and attribute values.
pub fn esc(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// A whole page: `title`, the stylesheet, and `body` (already HTML).
pub fn page(title: &str, body: &str, script: &str) -> String {
    format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>{}</title><style>{CSS}</style></head>\n<body>\n{body}{script}</body></html>\n",
        esc(title)
    )
}

/// The static report `cutover history --html` writes: `entries` newest first.
pub fn history_report(service: &str, entries: &[Entry]) -> String {
    let mut body = format!(
        "<h1>cutover · {}</h1>\n<p class=\"meta\">{} deploys and rollbacks from the audit log, newest first; generated {}</p>\n",
        esc(service),
        entries.len(),
        crate::state::now_rfc3339()
    );
    body.push_str(&deploy_list(entries));
    page(&format!("cutover history · {service}"), &body, "")
}

/// The deploys as cards, newest first.
pub fn deploy_list(entries: &[Entry]) -> String {
    let mut out = String::from("<div id=\"deploys\">\n");
    for entry in entries.iter().rev() {
        out.push_str(&deploy_card(entry));
    }
    out.push_str("</div>\n");
    out
}

/// One deploy: outcome, what and where, who, the reason, the step timeline.
pub fn deploy_card(e: &Entry) -> String {
    let kind = crate::audit::kind_name(e.kind);
    let total: u64 = e.steps.iter().map(|s| s.ms).sum();
    let mut out = format!(
        "<div class=\"card deploy\" data-deploy=\"{id}\" data-outcome=\"{outcome}\">\n\
         <span class=\"badge {outcome}\">{outcome}</span> <b>{kind}</b>",
        id = esc(&e.deploy_id),
        outcome = e.outcome.as_str(),
    );
    if let Some(target) = e.target {
        let _ = write!(
            out,
            " → <span class=\"badge live-{target}\">{target}</span>"
        );
    }
    let _ = write!(
        out,
        " <span class=\"meta\">{:.1} s · {}</span>\n<div class=\"meta\">",
        seconds(total),
        esc(&e.time)
    );
    if let Some(image) = &e.image {
        let _ = write!(out, "<code>{}</code> ", esc(image));
    }
    if let Some(sha) = &e.git_sha {
        let _ = write!(out, "sha <code>{}</code> ", esc(&sha[..sha.len().min(12)]));
    }
    let by = e.actor.name.as_deref().unwrap_or("?");
    let _ = write!(
        out,
        "by <span class=\"trigger\">{}:{}</span> on {}",
        esc(&e.actor.via),
        esc(by),
        esc(&e.actor.host)
    );
    if let Some(url) = &e.actor.run_url
        && (url.starts_with("https://") || url.starts_with("http://"))
    {
        let _ = write!(out, " · <a href=\"{}\">CI run</a>", esc(url));
    }
    let _ = writeln!(out, " · <code>{}</code></div>", esc(&e.deploy_id));
    if let Some(reason) = &e.reason {
        let _ = writeln!(out, "<div class=\"reason\">{}</div>", esc(reason));
    }
    out.push_str(&step_bars(e));
    out.push_str("</div>\n");
    out
}

fn seconds(ms: u64) -> f64 {
    std::time::Duration::from_millis(ms).as_secs_f64()
}

/// The steps as a Gantt chart: one bar per step, starting where the one before
/// ended, scaled to the deploy's own length so a quick deploy is as legible as a
/// slow one. The last step of a run that did not succeed is drawn as the failure.
pub fn step_bars(e: &Entry) -> String {
    const WIDTH: f64 = 600.0;
    const LABEL: f64 = 70.0;
    const ROW: usize = 16;
    let total = e.steps.iter().map(|s| s.ms).sum::<u64>().max(1);
    let scale = (WIDTH - LABEL - 60.0) / seconds(total);
    let height = ROW * e.steps.len().max(1);
    let mut out = format!(
        "<svg class=\"steps\" viewBox=\"0 0 {WIDTH} {height}\" role=\"img\" aria-label=\"step timeline\">\n"
    );
    let failed = !matches!(e.outcome, Outcome::Succeeded);
    let mut start = 0u64;
    for (i, s) in e.steps.iter().enumerate() {
        let y = i * ROW;
        let x = LABEL + seconds(start) * scale;
        // A step of a few milliseconds still gets a visible sliver.
        let w = (seconds(s.ms) * scale).max(2.0);
        let class = if failed && i + 1 == e.steps.len() {
            "step failed"
        } else {
            "step"
        };
        let _ = writeln!(
            out,
            "<text x=\"0\" y=\"{ty}\">{step}</text>\
             <rect class=\"{class}\" data-step=\"{step}\" data-ms=\"{ms}\" x=\"{x:.1}\" y=\"{ry}\" width=\"{w:.1}\" height=\"{h}\" rx=\"2\"><title>{step}: {ms} ms</title></rect>\
             <text x=\"{tx:.1}\" y=\"{ty}\">{ms} ms</text>",
            ty = y + 12,
            step = s.step,
            ms = s.ms,
            ry = y + 3,
            h = ROW - 5,
            tx = x + w + 4.0,
        );
        start += s.ms;
    }
    out.push_str("</svg>\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::Actor;
    use crate::operation::{OperationKind, Step, StepTiming};

    #[test]
    fn report_is_one_escaped_file_with_a_bar_per_step() {
        let entry = Entry {
            deploy_id: "01j".to_owned(),
            time: "2026-01-01T00:00:00Z".to_owned(),
            kind: OperationKind::Deploy,
            actor: Actor {
                via: "local".to_owned(),
                name: Some("<script>".to_owned()),
                run_url: Some("javascript:alert(1)".to_owned()),
                host: "h".to_owned(),
            },
            git_sha: Some("0123456789abcdef".to_owned()),
            image: Some("hello:1".to_owned()),
            digest: None,
            target: Some(crate::Color::Green),
            outcome: Outcome::Failed,
            reason: Some("health: 503 <b>".to_owned()),
            steps: vec![
                StepTiming {
                    step: Step::Gate,
                    ms: 3,
                },
                StepTiming {
                    step: Step::Health,
                    ms: 1500,
                },
            ],
        };
        let html = history_report("hello", &[entry]);
        assert!(!html.contains("<script>"), "{html}");
        assert!(!html.contains("javascript:"), "{html}");
        assert!(html.contains("health: 503 &lt;b&gt;"));
        assert_eq!(html.matches("<rect class=\"step").count(), 2);
        assert!(html.contains("class=\"step failed\" data-step=\"health\""));
        assert!(!html.contains("src=") && !html.contains("href=\"http"));
    }
}
