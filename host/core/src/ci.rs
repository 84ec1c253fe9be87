//! Facts about the CI run that invoked cutover (GitHub Actions, GitLab CI, Jenkins, or
//! cutover's own webhook receiver), read from the environment variables each system
//! documents.
//!
//! Only a fixed list of non-secret variables is read, normalised to the same keys and
//! the same value forms for every system (see [`KEYS`]), so a gate plugin written for
//! one CI works unchanged on another, and nothing secret in the environment (tokens,
//! passwords, URLs with credentials) leaks into a plugin, the lock or the audit log.

use serde::Serialize;

/// The normalised keys, in the order they are listed:
/// - `ref`: the full ref being built, `refs/heads/<branch>` or `refs/tags/<tag>`;
/// - `tag`: the tag name, on a tag build only;
/// - `sha`: the commit the CI says it built;
/// - `run-id`, `run-url`: the CI run, for people following a deploy back to its run;
/// - `actor`: who pushed or started the run;
/// - `repository`: `owner/name` (GitHub, GitLab, cutover serve; Jenkins has no
///   standard variable for it).
pub const KEYS: [&str; 7] = [
    "ref",
    "tag",
    "sha",
    "run-id",
    "run-url",
    "actor",
    "repository",
];

/// The variables by which [`CiFacts::from_lookup`] recognises a CI system (GitHub
/// Actions, GitLab CI, Jenkins twice, cutover serve). A process that starts
/// `cutover deploy` with facts of its own (`cutover serve`, the tests) removes all of
/// them, so the facts of a CI it happens to run under cannot take precedence.
pub const SYSTEM_MARKERS: [&str; 5] = [
    "GITHUB_ACTIONS",
    "GITLAB_CI",
    "JENKINS_URL",
    "JENKINS_HOME",
    "CUTOVER_SERVE",
];

/// The CI run, when there is one.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct CiFacts {
    /// `github-actions`, `gitlab-ci`, `jenkins` or `cutover-serve`; none when run by hand.
    pub system: Option<&'static str>,
    /// Normalised variables, in the order of [`KEYS`], only those the system provides.
    pub variables: Vec<(&'static str, String)>,
}

/// A full ref from a tag or a branch name; a branch that already is a ref is kept.
fn full_ref(tag: Option<&str>, branch: Option<&str>) -> Option<String> {
    match (tag, branch) {
        (Some(tag), _) => Some(format!("refs/tags/{tag}")),
        (None, Some(branch)) if branch.starts_with("refs/") => Some(branch.to_owned()),
        (None, Some(branch)) => Some(format!("refs/heads/{branch}")),
        (None, None) => None,
    }
}

impl CiFacts {
    /// Reads the facts from this process's environment.
    pub fn from_env() -> CiFacts {
        Self::from_lookup(|name| std::env::var(name).ok().filter(|v| !v.is_empty()))
    }

    /// Reads the facts through `get` (a test passes a map). `get` should return
    /// `None` for an empty variable.
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> CiFacts {
        let is = |name: &str, value: &str| get(name).as_deref() == Some(value);
        // Values in the order of KEYS.
        let (system, values): (&'static str, [Option<String>; 7]) = if is("GITHUB_ACTIONS", "true")
        {
            let run_url = match (
                get("GITHUB_SERVER_URL"),
                get("GITHUB_REPOSITORY"),
                get("GITHUB_RUN_ID"),
            ) {
                (Some(server), Some(repo), Some(id)) => {
                    Some(format!("{server}/{repo}/actions/runs/{id}"))
                }
                _ => None,
            };
            let tag = get("GITHUB_REF")
                .and_then(|r| r.strip_prefix("refs/tags/").map(str::to_owned))
                .or_else(|| {
                    is("GITHUB_REF_TYPE", "tag")
                        .then(|| get("GITHUB_REF_NAME"))
                        .flatten()
                });
            (
                "github-actions",
                [
                    get("GITHUB_REF"),
                    tag,
                    get("GITHUB_SHA"),
                    get("GITHUB_RUN_ID"),
                    run_url,
                    get("GITHUB_ACTOR"),
                    get("GITHUB_REPOSITORY"),
                ],
            )
        } else if is("GITLAB_CI", "true") {
            let tag = get("CI_COMMIT_TAG");
            let branch = get("CI_COMMIT_BRANCH").or_else(|| get("CI_COMMIT_REF_NAME"));
            (
                "gitlab-ci",
                [
                    full_ref(tag.as_deref(), branch.as_deref()),
                    tag,
                    get("CI_COMMIT_SHA"),
                    get("CI_PIPELINE_ID"),
                    get("CI_PIPELINE_URL"),
                    get("GITLAB_USER_LOGIN"),
                    get("CI_PROJECT_PATH"),
                ],
            )
        } else if get("JENKINS_URL").is_some() || get("JENKINS_HOME").is_some() {
            let tag = get("TAG_NAME");
            // The Git plugin's GIT_BRANCH is `<remote>/<branch>`; multibranch
            // pipelines set BRANCH_NAME to the plain name.
            let branch = get("BRANCH_NAME").or_else(|| {
                get("GIT_BRANCH").map(|b| b.strip_prefix("origin/").unwrap_or(&b).to_owned())
            });
            (
                "jenkins",
                [
                    full_ref(tag.as_deref(), branch.as_deref()),
                    tag,
                    get("GIT_COMMIT"),
                    get("BUILD_TAG").or_else(|| get("BUILD_NUMBER")),
                    get("BUILD_URL"),
                    get("BUILD_USER_ID").or_else(|| get("CHANGE_AUTHOR")),
                    None,
                ],
            )
        } else if is("CUTOVER_SERVE", "1") {
            // `cutover serve` runs each deploy with the webhook's facts.
            (
                "cutover-serve",
                [
                    get("CUTOVER_SERVE_REF"),
                    get("CUTOVER_SERVE_TAG"),
                    get("CUTOVER_SERVE_SHA"),
                    get("CUTOVER_SERVE_DELIVERY"),
                    None,
                    get("CUTOVER_SERVE_ACTOR"),
                    get("CUTOVER_SERVE_REPOSITORY"),
                ],
            )
        } else {
            return CiFacts::default();
        };
        CiFacts {
            system: Some(system),
            variables: KEYS
                .into_iter()
                .zip(values)
                .filter_map(|(k, v)| v.map(|v| (k, v)))
                .collect(),
        }
    }

    /// One normalised variable.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.variables
            .iter()
            .find(|(k, _)| *k == key)
            .map(|(_, v)| v.as_str())
    }

    /// The run's URL, for lock owners and the audit log.
    pub fn run_url(&self) -> Option<String> {
        self.get("run-url").map(str::to_owned)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn facts(vars: &[(&str, &str)]) -> CiFacts {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        CiFacts::from_lookup(|name| map.get(name).cloned())
    }

    #[test]
    fn each_system_marker_selects_a_system_and_removing_them_all_leaves_none() {
        // The values each system sets; Jenkins is recognised by either variable.
        let value = |marker: &str| {
            if marker == "CUTOVER_SERVE" {
                "1"
            } else {
                "true"
            }
        };
        for marker in SYSTEM_MARKERS {
            let f = facts(&[(marker, value(marker))]);
            assert!(f.system.is_some(), "{marker} alone selects no system");
        }
        // Every system's own variables, markers removed: nothing is recognised.
        let everything = [
            ("GITHUB_REF", "refs/heads/main"),
            ("GITHUB_SHA", "abc"),
            ("CI_COMMIT_SHA", "abc"),
            ("GIT_COMMIT", "abc"),
            ("BUILD_URL", "https://ci.example.com/job/app/7/"),
            ("CUTOVER_SERVE_SHA", "abc"),
        ];
        assert_eq!(facts(&everything), CiFacts::default());
    }

    #[test]
    fn by_hand_there_are_no_facts() {
        assert_eq!(facts(&[("HOME", "/root")]), CiFacts::default());
    }

    #[test]
    fn github_actions_tag_push() {
        let f = facts(&[
            ("GITHUB_ACTIONS", "true"),
            ("GITHUB_REF", "refs/tags/v1-cicd"),
            ("GITHUB_REF_TYPE", "tag"),
            ("GITHUB_REF_NAME", "v1-cicd"),
            ("GITHUB_SHA", "abc"),
            ("GITHUB_SERVER_URL", "https://github.com"),
            ("GITHUB_REPOSITORY", "team/app"),
            ("GITHUB_RUN_ID", "42"),
            ("GITHUB_ACTOR", "octo"),
            ("GITHUB_TOKEN", "secret-never-read"),
        ]);
        assert_eq!(f.system, Some("github-actions"));
        assert_eq!(f.get("tag"), Some("v1-cicd"));
        assert_eq!(f.get("ref"), Some("refs/tags/v1-cicd"));
        assert_eq!(f.get("repository"), Some("team/app"));
        assert_eq!(f.get("actor"), Some("octo"));
        assert_eq!(
            f.run_url().as_deref(),
            Some("https://github.com/team/app/actions/runs/42")
        );
        assert!(!format!("{f:?}").contains("secret-never-read"));
    }

    #[test]
    fn github_branch_push_has_no_tag() {
        let f = facts(&[
            ("GITHUB_ACTIONS", "true"),
            ("GITHUB_REF_TYPE", "branch"),
            ("GITHUB_REF_NAME", "main"),
        ]);
        assert_eq!(f.get("tag"), None);
    }

    #[test]
    fn gitlab_pipeline() {
        let f = facts(&[
            ("GITLAB_CI", "true"),
            ("CI_COMMIT_REF_NAME", "main"),
            ("CI_COMMIT_BRANCH", "main"),
            ("CI_PROJECT_PATH", "group/app"),
            ("CI_JOB_TOKEN", "secret-never-read"),
            (
                "CI_PIPELINE_URL",
                "https://gitlab.example.com/p/-/pipelines/9",
            ),
            ("GITLAB_USER_LOGIN", "dev"),
        ]);
        assert_eq!(f.system, Some("gitlab-ci"));
        assert_eq!(f.get("ref"), Some("refs/heads/main"));
        assert_eq!(f.get("tag"), None);
        assert_eq!(f.get("repository"), Some("group/app"));
        assert!(!format!("{f:?}").contains("secret-never-read"));
        assert_eq!(f.get("actor"), Some("dev"));
        assert_eq!(
            f.run_url().as_deref(),
            Some("https://gitlab.example.com/p/-/pipelines/9")
        );
    }

    #[test]
    fn jenkins_build() {
        let f = facts(&[
            ("JENKINS_URL", "https://ci.example.com/"),
            ("GIT_BRANCH", "origin/main"),
            ("BUILD_TAG", "jenkins-app-7"),
            ("BUILD_URL", "https://ci.example.com/job/app/7/"),
        ]);
        assert_eq!(f.system, Some("jenkins"));
        assert_eq!(f.get("run-id"), Some("jenkins-app-7"));
        assert_eq!(f.get("ref"), Some("refs/heads/main"));
    }

    #[test]
    fn tag_builds_have_a_tag_ref_on_every_ci() {
        let gitlab = facts(&[
            ("GITLAB_CI", "true"),
            ("CI_COMMIT_REF_NAME", "v2-cicd"),
            ("CI_COMMIT_TAG", "v2-cicd"),
        ]);
        let jenkins = facts(&[
            ("JENKINS_HOME", "/var/lib/jenkins"),
            ("BRANCH_NAME", "v2-cicd"),
            ("TAG_NAME", "v2-cicd"),
        ]);
        let github = facts(&[
            ("GITHUB_ACTIONS", "true"),
            ("GITHUB_REF", "refs/tags/v2-cicd"),
        ]);
        for f in [gitlab, jenkins, github] {
            assert_eq!(f.get("ref"), Some("refs/tags/v2-cicd"), "{f:?}");
            assert_eq!(f.get("tag"), Some("v2-cicd"), "{f:?}");
        }
    }

    #[test]
    fn cutover_serve_passes_the_webhook_facts() {
        let f = facts(&[
            ("CUTOVER_SERVE", "1"),
            ("CUTOVER_SERVE_REF", "refs/heads/main"),
            ("CUTOVER_SERVE_SHA", "abc"),
            ("CUTOVER_SERVE_DELIVERY", "d-1"),
            ("CUTOVER_SERVE_REPOSITORY", "team/app"),
        ]);
        assert_eq!(f.system, Some("cutover-serve"));
        assert_eq!(
            f.variables,
            [
                ("ref", "refs/heads/main".to_owned()),
                ("sha", "abc".to_owned()),
                ("run-id", "d-1".to_owned()),
                ("repository", "team/app".to_owned()),
            ]
        );
    }
}
