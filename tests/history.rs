//! `cutover history` end to end: real deploys (Docker, managed nginx) and a denial by
//! the original `cicd` gate rule, read back through the real binary as JSON and as a
//! table; and the audit log's size cap honoured by the real binary.

use serde_json::Value;

use crate::support::service::Service;

const STEPS: [&str; 13] = [
    "gate", "image", "select", "clear", "start", "health", "render", "validate", "switch",
    "verify", "drain", "retire", "prune",
];

fn history(svc: &Service, args: &[&str]) -> Vec<Value> {
    let mut argv = vec!["history", "--output", "json"];
    argv.extend_from_slice(args);
    let out = svc.cutover(&argv).success();
    serde_json::from_str(&out.stdout)
        .unwrap_or_else(|e| panic!("history JSON: {e}\n{}", out.stdout))
}

#[test]
fn history_lists_deploys_and_the_gate_denial_with_actor_timings_and_reason() {
    let svc = Service::new("history");
    let audit = svc.state_dir().join("audit.jsonl");
    svc.deploy("v1").success();

    // Fill the log past its cap with copies of the first entry: the next deploy must
    // rotate it rather than let it grow.
    let first = std::fs::read_to_string(&audit).expect("the first deploy wrote the audit log");
    assert_eq!(first.lines().count(), 1);
    let copies = usize::try_from(cutover::audit::MAX_BYTES)
        .unwrap()
        .div_ceil(first.len());
    std::fs::write(&audit, first.repeat(copies)).unwrap();
    let filled = std::fs::metadata(&audit).unwrap().len();
    assert!(filled >= cutover::audit::MAX_BYTES);

    svc.deploy("v2").success();
    let rotated = svc.state_dir().join("audit.jsonl.1");
    assert_eq!(
        std::fs::metadata(&rotated).map(|m| m.len()).ok(),
        Some(filled),
        "the full log was rotated whole"
    );
    assert_eq!(std::fs::read_to_string(&audit).unwrap().lines().count(), 1);

    svc.append_config(
        "\n[plugins.deploy-gate]\nsource = \"builtin:tag-pattern\"\nconfig = { pattern = \"cicd\" }\n",
    );
    let denied = svc.deploy("v3").code(3);
    assert!(denied.stderr.contains("cicd"), "{}", denied.stderr);
    assert_eq!(
        svc.get("/").body.trim(),
        "hello v2 from green",
        "nothing changed"
    );

    let all = history(&svc, &["--limit", "100000"]);
    assert_eq!(all.len(), copies + 2, "the rotated file is still read");
    let entries = &all[all.len() - 3..];
    let outcomes: Vec<&str> = entries
        .iter()
        .map(|e| e["outcome"].as_str().unwrap())
        .collect();
    assert_eq!(outcomes, ["succeeded", "succeeded", "denied"]);

    let user = std::env::var("USER")
        .or_else(|_| std::env::var("LOGNAME"))
        .ok();
    let state: Value = serde_json::from_slice(&std::fs::read(svc.state_file()).unwrap()).unwrap();
    let recent_ids: Vec<&str> = state["deploys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_str().unwrap())
        .collect();
    for (entry, target) in entries.iter().zip(["blue", "green"]) {
        assert_eq!(entry["kind"], "deploy");
        assert_eq!(entry["target"], target);
        assert!(
            entry["image"]
                .as_str()
                .unwrap()
                .starts_with(&format!("{}:", svc.name)),
            "{entry}"
        );
        let steps: Vec<&str> = entry["steps"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["step"].as_str().unwrap())
            .collect();
        assert_eq!(steps, STEPS, "{entry}");
        let total: u64 = entry["steps"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["ms"].as_u64().unwrap())
            .sum();
        assert!(total > 0, "{entry}");
        assert!(entry.get("reason").is_none(), "{entry}");
    }
    for entry in entries {
        assert_eq!(entry["actor"]["via"], "local", "{entry}");
        assert_eq!(entry["actor"]["name"].as_str(), user.as_deref(), "{entry}");
        assert_eq!(entry["actor"]["host"], cutover::lock::hostname().as_str());
        assert_eq!(entry["git_sha"], Value::Null, "not a git checkout: {entry}");
        assert!(
            recent_ids.contains(&entry["deploy_id"].as_str().unwrap()),
            "{entry} is in the state file's deploys {recent_ids:?}"
        );
    }
    let deny = &entries[2];
    let reason = deny["reason"].as_str().unwrap();
    assert!(reason.contains("no tag on HEAD matches `cicd`"), "{reason}");
    assert!(reason.contains("HEAD has no tags"), "{reason}");
    assert_eq!(deny["steps"].as_array().unwrap().len(), 1);
    assert_eq!(deny["steps"][0]["step"], "gate");
    assert_eq!(deny["image"], Value::Null);
    assert_eq!(deny["target"], Value::Null);

    // --limit keeps the newest.
    let last = history(&svc, &["--limit", "1"]);
    assert_eq!(last.len(), 1);
    assert_eq!(last[0]["deploy_id"], deny["deploy_id"]);

    let table = svc.cutover(&["history", "--limit", "3"]).success().stdout;
    assert_eq!(
        table.lines().next().map(|l| l.starts_with("DEPLOY")),
        Some(true),
        "{table}"
    );
    for entry in entries {
        assert!(
            table.contains(entry["deploy_id"].as_str().unwrap()),
            "{table}"
        );
    }
    assert!(
        table.contains("denied") && table.contains("HEAD has no tags"),
        "{table}"
    );
    assert!(table.contains("local:"), "{table}");
}
