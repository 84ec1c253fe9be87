//! Test pages' inputs in which every value a user, CI or a plugin controls is
//! [`HOSTILE`], so a test can check that each page kind escapes all of them.

#![cfg(test)]

use crate::Color;
use crate::audit::{Actor, Entry};
use crate::dashboard::ServiceRow;
use crate::operation::{OperationKind, Outcome, Step, StepTiming};
use crate::state::{Journal, Slot};
use crate::status::{ColorStatus, ProxyStatus, StatusReport};
use cutover_core::lock::Owner;

/// Markup that runs a script if a page leaves it unescaped.
pub(crate) const HOSTILE: &str = "<script>alert(1)</script>";

/// The same, escaped as page text or a quoted attribute value.
pub(crate) const HOSTILE_ESCAPED: &str = "&lt;script&gt;alert(1)&lt;/script&gt;";

/// Asserts that `page` holds [`HOSTILE`] escaped after each of `fields` (the text
/// just before a value) and runs no script but its own `scripts`.
#[track_caller]
pub(crate) fn assert_escaped(page: &str, fields: &[impl AsRef<str>], scripts: usize) {
    assert_eq!(page.matches("<script").count(), scripts, "{page}");
    for field in fields {
        let escaped = format!("{}{HOSTILE_ESCAPED}", field.as_ref());
        assert!(page.contains(&escaped), "no {escaped} in {page}");
    }
}

fn hostile(tag: &str) -> String {
    format!("{tag}{HOSTILE}")
}

/// A failed deploy whose every free-text field is hostile.
pub(crate) fn entry() -> Entry {
    Entry {
        deploy_id: hostile("id"),
        time: hostile("time"),
        kind: OperationKind::Deploy,
        actor: Actor {
            via: hostile("via"),
            name: Some(hostile("name")),
            run_url: Some(format!("https://ci.example/run\"{HOSTILE}")),
            host: hostile("host"),
        },
        git_sha: Some("<script>abcdef0123".to_owned()),
        image: Some(hostile("image")),
        digest: None,
        target: Some(Color::Green),
        outcome: Outcome::Failed,
        reason: Some(hostile("reason")),
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
    }
}

/// A status whose service, images, containers, lock holder, problems and interrupted
/// deploy are hostile.
pub(crate) fn report() -> StatusReport {
    let entry = entry();
    StatusReport {
        service: hostile("service"),
        live: Some(Slot {
            color: Color::Blue,
            image_id: hostile("sha256:"),
            image_ref: hostile("image"),
            image_digest: Some(hostile("digest")),
            container: hostile("container"),
            upstream: hostile("upstream"),
            deploy_id: entry.deploy_id,
            since: hostile("since"),
        }),
        previous: None,
        colors: vec![ColorStatus {
            color: Color::Blue,
            container: hostile("container"),
            state: hostile("state"),
            image: Some(hostile("image")),
            image_id: None,
            health: hostile("health"),
            upstream: hostile("upstream"),
            running: true,
        }],
        proxy: ProxyStatus {
            config_dir: hostile("dir"),
            target: None,
            files_target: None,
            running: None,
            paused: false,
        },
        interrupted: Some(Journal {
            deploy_id: hostile("journal"),
            kind: OperationKind::Deploy,
            started_at: hostile("started"),
            owner: hostile("owner"),
            step: Step::Health,
            from: None,
            target: None,
            container: None,
            image_id: None,
            image_ref: None,
            saved_files: None,
            written_files: None,
            steps: Vec::new(),
            canary: None,
            engine_serial: None,
        }),
        lock_owner: Some(Owner {
            host: hostile("host"),
            pid: 7,
            started_at: hostile("started"),
            command: hostile("command"),
            run_url: None,
            lease_until: hostile("lease"),
            pid_space: None,
        }),
        recent: Vec::new(),
        problems: vec![hostile("problem")],
    }
}

/// Index rows: one service with a hostile name, activity and last deploy, one whose
/// config cannot be read for a hostile reason.
pub(crate) fn rows() -> Vec<ServiceRow> {
    vec![
        ServiceRow {
            repository: hostile("owner/repo"),
            service: Some(hostile("service")),
            live: Some(Color::Blue),
            last: Some(entry()),
            activity: Some(hostile("running")),
            problem: None,
        },
        ServiceRow {
            repository: hostile("owner/broken"),
            problem: Some(hostile("problem")),
            ..ServiceRow::default()
        },
    ]
}
