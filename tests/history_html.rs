//! `cutover history --html`: the static report after real deploys, a denial and a
//! rollback — one self-contained file with a bar per step, outcomes and reasons.

use crate::metrics::deploy_deny_rollback;
use crate::support::service::Service;

#[test]
fn history_html_writes_one_self_contained_file_with_a_bar_per_step() {
    let svc = Service::new("report");
    deploy_deny_rollback(&svc);
    let report = svc.dir.path().join("report.html");
    let out = svc
        .cutover(&["history", "--html", report.to_str().unwrap()])
        .success();
    assert!(
        out.stdout.is_empty(),
        "the page goes to the file: {}",
        out.stdout
    );
    assert!(out.stderr.contains("(4 entries)"), "{}", out.stderr);
    let html = std::fs::read_to_string(&report).unwrap();
    assert!(html.starts_with("<!doctype html>"));
    // Self-contained: no script, stylesheet or image from anywhere else.
    for external in ["<script", "<link", "src=", "@import", "url("] {
        assert!(!html.contains(external), "{external} in the report");
    }
    let cards: Vec<&str> = html.split("<div class=\"card deploy\"").skip(1).collect();
    assert_eq!(cards.len(), 4, "{html}");
    // Newest first: the rollback, the denial, then the two deploys.
    let outcomes: Vec<&str> = cards
        .iter()
        .map(|c| {
            c.split("data-outcome=\"")
                .nth(1)
                .unwrap()
                .split('"')
                .next()
                .unwrap()
        })
        .collect();
    assert_eq!(outcomes, ["succeeded", "denied", "succeeded", "succeeded"]);
    assert!(cards[0].contains("<b>rollback</b>"));
    assert_eq!(
        cards[2].matches("<rect class=\"step").count(),
        13,
        "{}",
        cards[2]
    );
    assert_eq!(cards[1].matches("<rect class=\"step").count(), 1);
    assert!(
        cards[1].contains("no tag on HEAD matches `cicd`"),
        "{}",
        cards[1]
    );
    assert!(cards[1].contains("class=\"step failed\" data-step=\"gate\""));
}
