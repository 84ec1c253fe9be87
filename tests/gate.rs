//! The deploy gate's facts and decisions on real git repositories: the facts come from
//! the real `git` binary ([`GitFacts::collect`] on the directory of a real
//! `cutover.toml`), the decision from the built-in `tag-pattern` gate loaded through
//! the real plugin host, exactly as `cutover deploy` does it: once with no pattern
//! (the default: allow), once with the original script's rule (`pattern = "cicd"`:
//! a tag containing `cicd` must point at HEAD).

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use cutover::ci::CiFacts;
use cutover::config::Config;
use cutover::events::Silent;
use cutover::gate::gate_input;
use cutover::git::GitFacts;
use cutover::plugin::types::{GateDecision, GateInput, KeyValue};
use cutover::plugin::{PluginHost, PluginKind, Plugins};

use crate::support::git::Repo;

fn host() -> &'static PluginHost {
    static HOST: OnceLock<PluginHost> = OnceLock::new();
    HOST.get_or_init(|| {
        let cache = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/test-plugin-cache");
        PluginHost::new(Some(cache)).expect("plugin host")
    })
}

/// A deploy config in `dir` (not committed: an untracked file never makes a tree
/// dirty), with `gate` appended.
fn write_config(dir: &Path, gate: &str) -> PathBuf {
    let path = dir.join("cutover.toml");
    let text = format!(
        "service = \"gated\"\n[image]\nref = \"gated:1\"\n[container]\nport = 8080\n\
         [proxy]\nmode = \"managed\"\nlisten = \"127.0.0.1:8080\"\n{gate}"
    );
    std::fs::write(&path, text).expect("write cutover.toml");
    path
}

const ORIGINAL_RULE: &str =
    "[plugins.deploy-gate]\nsource = \"builtin:tag-pattern\"\nconfig = { pattern = \"cicd\" }\n";

/// What the gate saw and said for the checkout at `dir`.
struct Verdict {
    facts: GitFacts,
    input: GateInput,
    default: GateDecision,
    original: GateDecision,
}

impl Verdict {
    fn allowed_by_original_rule(&self) -> bool {
        matches!(self.original, GateDecision::Allow(_))
    }

    #[track_caller]
    fn original_reason(&self) -> &str {
        match &self.original {
            GateDecision::Allow(r) | GateDecision::Deny(r) => r,
        }
    }
}

/// Loads the config in `dir` both ways and asks each gate, with `ci` as the run.
fn judge_with(dir: &Path, ci: &CiFacts) -> Verdict {
    let mut decisions = Vec::new();
    let mut facts_and_input = None;
    for gate in ["", ORIGINAL_RULE] {
        let config = Config::load(&write_config(dir, gate)).expect("config loads");
        let plugins = Plugins::load(host(), &config, &PluginKind::ALL, Arc::new(Silent))
            .expect("plugins load");
        let gate = plugins.gate().unwrap();
        assert_eq!(gate.name(), "builtin:tag-pattern");
        let facts = GitFacts::collect(config.base_dir()).expect("git runs");
        let input = gate_input(&config.service, &facts, ci);
        decisions.push(gate.decide(&input).expect("gate answers"));
        facts_and_input = Some((facts, input));
    }
    let (facts, input) = facts_and_input.expect("two rounds");
    let original = decisions.pop().expect("original rule");
    let default = decisions.pop().expect("default");
    assert!(
        matches!(default, GateDecision::Allow(_)),
        "the default gate allows every deploy: {default:?}"
    );
    Verdict {
        facts,
        input,
        default,
        original,
    }
}

fn judge(dir: &Path) -> Verdict {
    judge_with(dir, &CiFacts::default())
}

#[test]
fn outside_any_repository_there_are_no_facts_and_the_original_rule_denies() {
    let dir = tempfile::tempdir().unwrap();
    let v = judge(dir.path());
    assert_eq!(v.facts, GitFacts::default());
    assert_eq!(v.input.head_sha, None);
    assert!(v.input.tags.is_empty());
    assert!(!v.allowed_by_original_rule());
    assert!(
        v.original_reason().contains("HEAD has no tags"),
        "{}",
        v.original_reason()
    );
    assert!(matches!(v.default, GateDecision::Allow(r) if r.contains("no tag pattern")));
}

#[test]
fn repository_without_commits_has_a_branch_but_no_head_and_is_denied() {
    let repo = Repo::new();
    let v = judge(repo.path());
    assert_eq!(v.facts.branch.as_deref(), Some("main"));
    assert_eq!(v.facts.head_sha, None);
    assert_eq!(v.facts.subject, None);
    assert!(v.facts.tags.is_empty());
    assert!(!v.facts.dirty);
    assert_eq!(
        v.facts
            .root
            .as_deref()
            .map(std::fs::canonicalize)
            .unwrap()
            .unwrap(),
        std::fs::canonicalize(repo.path()).unwrap()
    );
    assert!(!v.allowed_by_original_rule());
}

#[test]
fn branch_head_without_tags_is_denied_by_the_original_rule() {
    let repo = Repo::new();
    let sha = repo.commit("app.txt", "1", "First release candidate");
    repo.git(&["checkout", "-q", "-b", "feature/login"]);
    let v = judge(repo.path());
    assert_eq!(v.input.head_sha.as_deref(), Some(sha.as_str()));
    assert_eq!(v.input.branch.as_deref(), Some("feature/login"));
    assert_eq!(
        v.input.commit_subject.as_deref(),
        Some("First release candidate")
    );
    assert!(v.input.tags.is_empty());
    assert!(!v.input.dirty);
    assert!(!v.allowed_by_original_rule());
    assert!(
        v.original_reason().contains("HEAD has no tags"),
        "{}",
        v.original_reason()
    );
}

#[test]
fn cicd_tag_on_head_allows_lightweight_or_annotated() {
    for annotated in [false, true] {
        let repo = Repo::new();
        repo.commit("app.txt", "1", "one");
        repo.git(&["tag", "v1-cicd"]);
        let sha = repo.commit("app.txt", "2", "two");
        if annotated {
            repo.git(&["tag", "-a", "release-cicd-2", "-m", "release two"]);
        } else {
            repo.git(&["tag", "release-cicd-2"]);
        }
        repo.git(&["tag", "-a", "docs", "-m", "not a release tag"]);
        let v = judge(repo.path());
        assert_eq!(v.input.head_sha.as_deref(), Some(sha.as_str()));
        assert_eq!(
            v.input.tags,
            ["docs", "release-cicd-2"],
            "only tags pointing at HEAD, sorted; `v1-cicd` is on the parent"
        );
        assert!(
            v.allowed_by_original_rule(),
            "annotated={annotated}: {:?}",
            v.original
        );
        assert!(
            v.original_reason().contains("release-cicd-2"),
            "{}",
            v.original_reason()
        );
    }
}

#[test]
fn a_cicd_tag_on_an_older_commit_does_not_release_head() {
    let repo = Repo::new();
    repo.commit("app.txt", "1", "one");
    repo.git(&["tag", "v1-cicd"]);
    repo.commit("app.txt", "2", "two");
    repo.git(&["tag", "v2-rc", "HEAD"]);
    let v = judge(repo.path());
    assert_eq!(v.input.tags, ["v2-rc"]);
    assert!(!v.allowed_by_original_rule());
    assert!(
        v.original_reason().contains("`v2-rc`"),
        "the reason lists the tags it saw: {}",
        v.original_reason()
    );
}

#[test]
fn detached_head_has_no_branch_and_is_judged_by_its_own_tags() {
    let repo = Repo::new();
    let tagged = repo.commit("app.txt", "1", "one");
    repo.git(&["tag", "-a", "v1-cicd", "-m", "first"]);
    let untagged = repo.commit("app.txt", "2", "two");

    // What a CI checkout (and `cutover serve`) does: a detached HEAD at the sha.
    repo.git(&["checkout", "-q", "--detach", &tagged]);
    let v = judge(repo.path());
    assert_eq!(v.input.branch, None);
    assert_eq!(v.input.head_sha.as_deref(), Some(tagged.as_str()));
    assert_eq!(v.input.tags, ["v1-cicd"]);
    assert_eq!(v.input.commit_subject.as_deref(), Some("one"));
    assert!(v.allowed_by_original_rule(), "{:?}", v.original);

    repo.git(&["checkout", "-q", "--detach", &untagged]);
    let v = judge(repo.path());
    assert_eq!(v.input.branch, None);
    assert!(v.input.tags.is_empty());
    assert!(!v.allowed_by_original_rule());
}

#[test]
fn dirty_tree_is_reported_and_the_remote_names_the_repository_without_credentials() {
    let repo = Repo::new();
    repo.commit("app.txt", "1", "one");
    repo.git(&["tag", "v1-cicd"]);
    repo.git(&[
        "remote",
        "add",
        "origin",
        "https://deploy:tok3n@git.example.com/team/app.git",
    ]);
    std::fs::write(repo.path().join("app.txt"), "edited").unwrap();
    let v = judge(repo.path());
    assert!(v.input.dirty);
    assert_eq!(
        v.input.repository.as_deref(),
        Some("https://git.example.com/team/app.git")
    );
    assert!(!format!("{:?}", v.input).contains("tok3n"));
    // The default rule looks at tags only; a dirty tree is the plugin's business.
    assert!(v.allowed_by_original_rule());
}

#[test]
fn ci_facts_reach_the_gate_with_normalised_keys() {
    let repo = Repo::new();
    let sha = repo.commit("app.txt", "1", "one");
    repo.git(&["tag", "v1-cicd"]);
    repo.git(&["checkout", "-q", "--detach", "HEAD"]);
    let env = [
        ("GITLAB_CI", "true"),
        ("CI_COMMIT_TAG", "v1-cicd"),
        ("CI_COMMIT_REF_NAME", "v1-cicd"),
        ("CI_COMMIT_SHA", sha.as_str()),
        ("CI_PIPELINE_ID", "77"),
        (
            "CI_PIPELINE_URL",
            "https://gitlab.example.com/team/app/-/pipelines/77",
        ),
        ("GITLAB_USER_LOGIN", "dev"),
        ("CI_PROJECT_PATH", "team/app"),
        ("CI_JOB_TOKEN", "never-passed-on"),
    ];
    let ci = CiFacts::from_lookup(|name| {
        env.iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| (*v).to_owned())
    });
    let v = judge_with(repo.path(), &ci);
    assert_eq!(v.input.ci_system.as_deref(), Some("gitlab-ci"));
    let kv = |k: &str, v: &str| KeyValue {
        key: k.to_owned(),
        value: v.to_owned(),
    };
    assert_eq!(
        v.input.ci_variables,
        [
            kv("ref", "refs/tags/v1-cicd"),
            kv("tag", "v1-cicd"),
            kv("sha", &sha),
            kv("run-id", "77"),
            kv(
                "run-url",
                "https://gitlab.example.com/team/app/-/pipelines/77"
            ),
            kv("actor", "dev"),
            kv("repository", "team/app"),
        ]
    );
    assert!(!format!("{:?}", v.input).contains("never-passed-on"));
    assert!(v.allowed_by_original_rule());
}

#[test]
fn glob_pattern_must_match_the_whole_tag() {
    let repo = Repo::new();
    repo.commit("app.txt", "1", "one");
    repo.git(&["tag", "pre-release-1"]);
    let config = Config::load(&write_config(
        repo.path(),
        "[plugins.deploy-gate]\nsource = \"builtin:tag-pattern\"\nconfig = { pattern = \"release-*\" }\n",
    ))
    .unwrap();
    let plugins = Plugins::load(host(), &config, &PluginKind::ALL, Arc::new(Silent)).unwrap();
    let decide = || {
        let facts = GitFacts::collect(repo.path()).unwrap();
        let input = gate_input(&config.service, &facts, &CiFacts::default());
        plugins.gate().unwrap().decide(&input).unwrap()
    };
    assert!(matches!(decide(), GateDecision::Deny(_)));
    repo.git(&["tag", "release-1"]);
    assert!(matches!(decide(), GateDecision::Allow(r) if r.contains("release-1")));
}
