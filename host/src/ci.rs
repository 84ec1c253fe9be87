//! Facts about the CI run that invoked cutover (GitHub Actions, GitLab CI, Jenkins, or
//! cutover's own webhook receiver), read from the environment variables each system
//! documents.
//!
//! Only a fixed list of non-secret variables is read, normalised to the same keys
//! for every system (`ref`, `tag`, `sha`, `run-id`, `run-url`, `actor`), so a gate
//! plugin works unchanged on any CI and nothing secret in the environment leaks into
//! a plugin, the lock or the audit log.

use serde::Serialize;

/// The CI run, when there is one.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct CiFacts {
    /// `github-actions`, `gitlab-ci`, `jenkins` or `cutover-serve`; none when run by hand.
    pub system: Option<&'static str>,
    /// Normalised variables, in a fixed order, only those the system provides.
    pub variables: Vec<(&'static str, String)>,
}

impl CiFacts {
    /// Reads the facts from this process's environment.
    pub fn from_env() -> CiFacts {
        Self::from_lookup(|name| std::env::var(name).ok().filter(|v| !v.is_empty()))
    }

    /// Reads the facts through `get` (a test passes a map).
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> CiFacts {
        let is = |name: &str, value: &str| get(name).as_deref() == Some(value);
        let (system, vars): (_, Vec<(&'static str, Option<String>)>) =
            if is("GITHUB_ACTIONS", "true") {
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
                let tag = is("GITHUB_REF_TYPE", "tag")
                    .then(|| get("GITHUB_REF_NAME"))
                    .flatten();
                (
                    "github-actions",
                    vec![
                        ("ref", get("GITHUB_REF")),
                        ("tag", tag),
                        ("sha", get("GITHUB_SHA")),
                        ("run-id", get("GITHUB_RUN_ID")),
                        ("run-url", run_url),
                        ("actor", get("GITHUB_ACTOR")),
                    ],
                )
            } else if is("GITLAB_CI", "true") {
                (
                    "gitlab-ci",
                    vec![
                        ("ref", get("CI_COMMIT_REF_NAME")),
                        ("tag", get("CI_COMMIT_TAG")),
                        ("sha", get("CI_COMMIT_SHA")),
                        ("run-id", get("CI_PIPELINE_ID")),
                        ("run-url", get("CI_PIPELINE_URL")),
                        ("actor", get("GITLAB_USER_LOGIN")),
                    ],
                )
            } else if get("JENKINS_URL").is_some() || get("JENKINS_HOME").is_some() {
                (
                    "jenkins",
                    vec![
                        ("ref", get("GIT_BRANCH").or_else(|| get("BRANCH_NAME"))),
                        ("tag", get("TAG_NAME")),
                        ("sha", get("GIT_COMMIT")),
                        ("run-id", get("BUILD_TAG").or_else(|| get("BUILD_NUMBER"))),
                        ("run-url", get("BUILD_URL")),
                        (
                            "actor",
                            get("BUILD_USER_ID").or_else(|| get("CHANGE_AUTHOR")),
                        ),
                    ],
                )
            } else if is("CUTOVER_SERVE", "1") {
                // `cutover serve` runs each deploy with the webhook's facts.
                (
                    "cutover-serve",
                    vec![
                        ("ref", get("CUTOVER_SERVE_REF")),
                        ("tag", get("CUTOVER_SERVE_TAG")),
                        ("sha", get("CUTOVER_SERVE_SHA")),
                        ("run-id", get("CUTOVER_SERVE_DELIVERY")),
                        ("run-url", None),
                        ("actor", get("CUTOVER_SERVE_ACTOR")),
                    ],
                )
            } else {
                return CiFacts::default();
            };
        CiFacts {
            system: Some(system),
            variables: vars
                .into_iter()
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
            (
                "CI_PIPELINE_URL",
                "https://gitlab.example.com/p/-/pipelines/9",
            ),
            ("GITLAB_USER_LOGIN", "dev"),
        ]);
        assert_eq!(f.system, Some("gitlab-ci"));
        assert_eq!(f.get("ref"), Some("main"));
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
        assert_eq!(f.get("ref"), Some("origin/main"));
    }
}
