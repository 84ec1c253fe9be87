//! Facts about the git checkout a deploy config lives in: HEAD, branch, tags on HEAD,
//! commit subject, dirty tree, and the repository's identity.
//!
//! The facts come from the `git` binary, run with argv (never a shell) and a scrubbed
//! environment ([`command`]) so a hook's `GIT_DIR`, a pager or a credential prompt
//! cannot change the answer or hang. Collecting facts only reads: it never fetches,
//! checks out or writes to the repository (`cutover serve` does that, with the same
//! [`command`]).

use std::path::{Path, PathBuf};
use std::process::Command;

use serde::Serialize;

/// What git says about a checkout. Every field is empty outside a git repository.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct GitFacts {
    /// The top-level directory of the checkout.
    pub root: Option<PathBuf>,
    /// The `origin` remote URL, else the checkout directory's name.
    pub repository: Option<String>,
    /// The checked-out branch; none when HEAD is detached.
    pub branch: Option<String>,
    /// HEAD's full sha; none when the repository has no commit.
    pub head_sha: Option<String>,
    /// Tags (lightweight and annotated) pointing at HEAD, sorted.
    pub tags: Vec<String>,
    /// The first line of HEAD's commit message.
    pub subject: Option<String>,
    /// Tracked files differ from HEAD.
    pub dirty: bool,
}

/// git could not tell what the checkout is.
#[derive(Debug, thiserror::Error)]
pub enum GitError {
    /// The `git` binary could not be started.
    #[error("cannot run `git` to read the checkout at {}: {source}; install git or run cutover outside a repository", dir.display())]
    Spawn {
        /// The directory git was asked about.
        dir: PathBuf,
        /// Why the binary could not be started.
        source: std::io::Error,
    },
    /// git ran but refused the repository for another reason than "not a repository"
    /// (e.g. "dubious ownership" when cutover runs as another user than the checkout's
    /// owner, or a broken `.git/config`). Treating that as "no repository" would make
    /// the gate deny with a misleading "HEAD has no tags".
    #[error("git cannot read the checkout at {}: {message}; fix the repository (or mark it safe with `git config --global --add safe.directory <dir>`) and retry", dir.display())]
    Unreadable {
        /// The directory git was asked about.
        dir: PathBuf,
        /// git's own message.
        message: String,
    },
}

impl GitFacts {
    /// Reads the facts of the checkout containing `dir`. A directory outside any
    /// repository gives empty facts, not an error.
    ///
    /// # Errors
    /// [`GitError`] only when the `git` binary cannot be started.
    pub fn collect(dir: &Path) -> Result<GitFacts, GitError> {
        Self::collect_hiding(dir, &[])
    }

    /// As [`GitFacts::collect`], with the environment variables named in `hidden`
    /// (the config's secrets) removed from git's environment: git needs none of them.
    ///
    /// # Errors
    /// As [`GitFacts::collect`].
    pub fn collect_hiding(dir: &Path, hidden: &[String]) -> Result<GitFacts, GitError> {
        let git = Git { dir, hidden };
        let probe = match git.output(&["rev-parse", "--show-toplevel"]) {
            Ok(probe) => probe,
            // No git installed (cutover's image FROM scratch has none) outside any
            // checkout: there are no facts to miss. Inside one, facts a gate judges
            // would be missing, so that stays an error.
            Err(GitError::Spawn { source, .. })
                if source.kind() == std::io::ErrorKind::NotFound && !inside_a_checkout(dir) =>
            {
                return Ok(GitFacts::default());
            }
            Err(e) => return Err(e),
        };
        if !probe.status.success() {
            let message = String::from_utf8_lossy(&probe.stderr).trim().to_owned();
            if message.contains("not a git repository") {
                return Ok(GitFacts::default());
            }
            return Err(GitError::Unreadable {
                dir: dir.to_owned(),
                message,
            });
        }
        let root = PathBuf::from(String::from_utf8_lossy(&probe.stdout).trim());
        let head_sha = git.run(&["rev-parse", "--verify", "--quiet", "HEAD^{commit}"])?;
        let branch = git.run(&["symbolic-ref", "--quiet", "--short", "HEAD"])?;
        let repository = git
            .run(&["config", "--get", "remote.origin.url"])?
            .map(|url| without_credentials(&url))
            .or_else(|| root.file_name().map(|n| n.to_string_lossy().into_owned()));
        let (tags, subject) = if head_sha.is_some() {
            let mut tags: Vec<String> = git
                .run(&["tag", "--points-at", "HEAD"])?
                .map(|out| out.lines().map(str::to_owned).collect())
                .unwrap_or_default();
            tags.sort();
            (tags, git.run(&["log", "-1", "--format=%s", "HEAD"])?)
        } else {
            (Vec::new(), None)
        };
        let dirty = git
            .run(&["status", "--porcelain", "--untracked-files=no"])?
            .is_some();
        Ok(GitFacts {
            root: Some(root),
            repository,
            branch,
            head_sha,
            tags,
            subject,
            dirty,
        })
    }

    /// The short sha used in image tags, with `-dirty` when the tree has changes.
    pub fn short_sha(&self) -> Option<String> {
        let sha = self.head_sha.as_deref()?;
        let short = &sha[..sha.len().min(12)];
        Some(if self.dirty {
            format!("{short}-dirty")
        } else {
            short.to_owned()
        })
    }
}

/// Whether `dir` or a directory above it holds `.git` (a directory, or the file a
/// worktree or submodule has), as git itself looks for one.
fn inside_a_checkout(dir: &Path) -> bool {
    let dir = std::path::absolute(dir).unwrap_or_else(|_| dir.to_owned());
    dir.ancestors().any(|d| d.join(".git").exists())
}

/// `url` without a `user:password@` part: a remote cloned with a token in its URL
/// must not hand that token to a plugin, a log line or the audit log.
fn without_credentials(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        // scp-like `git@host:path`: the user is a name, never a secret.
        return url.to_owned();
    };
    let authority_end = rest.find('/').unwrap_or(rest.len());
    match rest[..authority_end].rfind('@') {
        Some(at) => format!("{scheme}://{}", &rest[at + 1..]),
        None => url.to_owned(),
    }
}

struct Git<'a> {
    dir: &'a Path,
    hidden: &'a [String],
}

impl Git<'_> {
    /// Runs git; `Ok(None)` when it fails or prints nothing (no HEAD, detached HEAD
    /// for symbolic-ref, no remote): each of those is a fact, not an error.
    fn run(&self, args: &[&str]) -> Result<Option<String>, GitError> {
        let output = self.output(args)?;
        if !output.status.success() {
            return Ok(None);
        }
        let text = String::from_utf8_lossy(&output.stdout).trim().to_owned();
        Ok((!text.is_empty()).then_some(text))
    }

    fn output(&self, args: &[&str]) -> Result<std::process::Output, GitError> {
        let mut cmd = command(self.dir);
        for var in self.hidden {
            cmd.env_remove(var);
        }
        cmd.args(args).output().map_err(|source| GitError::Spawn {
            dir: self.dir.to_owned(),
            source,
        })
    }
}

/// `git -C <dir>` with a scrubbed environment: no inherited `GIT_DIR`/work tree/index,
/// no pager, no credential prompt (it would hang a CI job or the server), C locale
/// (messages are matched), stdin closed. Add the arguments and run it.
pub fn command(dir: &Path) -> Command {
    let mut cmd = Command::new("git");
    cmd.arg("-C")
        .arg(dir)
        .env_remove("GIT_DIR")
        .env_remove("GIT_WORK_TREE")
        .env_remove("GIT_INDEX_FILE")
        .env("GIT_TERMINAL_PROMPT", "0")
        .env("GIT_PAGER", "cat")
        .env("LC_ALL", "C")
        .stdin(std::process::Stdio::null());
    cmd
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_checkout_is_found_from_a_subdirectory_and_a_worktree_file_and_not_outside() {
        let top = tempfile::tempdir().unwrap();
        let sub = top.path().join("a/b");
        std::fs::create_dir_all(&sub).unwrap();
        assert!(!inside_a_checkout(&sub), "no .git above a fresh temp dir");
        std::fs::write(top.path().join("a/.git"), "gitdir: /elsewhere\n").unwrap();
        assert!(inside_a_checkout(&sub), "a worktree's .git file counts");
        assert!(!inside_a_checkout(top.path()), "nothing above the top");
    }

    /// A scratch repository driven by the real git binary.
    struct Repo {
        dir: tempfile::TempDir,
    }

    impl Repo {
        fn new() -> Repo {
            let repo = Repo {
                dir: tempfile::tempdir().unwrap(),
            };
            repo.git(&["init", "-q", "-b", "main"]);
            repo.git(&["config", "user.email", "t@example.com"]);
            repo.git(&["config", "user.name", "t"]);
            repo.git(&["config", "commit.gpgsign", "false"]);
            repo.git(&["config", "tag.gpgsign", "false"]);
            repo
        }

        fn git(&self, args: &[&str]) {
            let status = Command::new("git")
                .arg("-C")
                .arg(self.dir.path())
                .args(args)
                .status()
                .unwrap();
            assert!(status.success(), "git {args:?}");
        }

        fn commit(&self, file: &str, subject: &str) {
            std::fs::write(self.dir.path().join(file), subject).unwrap();
            self.git(&["add", file]);
            self.git(&["commit", "-q", "-m", subject]);
        }

        fn facts(&self) -> GitFacts {
            GitFacts::collect(self.dir.path()).unwrap()
        }
    }

    #[test]
    fn outside_a_repository_gives_empty_facts() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(GitFacts::collect(dir.path()).unwrap(), GitFacts::default());
    }

    #[test]
    fn repository_without_commits_has_a_root_but_no_head() {
        let repo = Repo::new();
        let facts = repo.facts();
        assert!(facts.root.is_some());
        assert_eq!(facts.head_sha, None);
        assert_eq!(facts.branch.as_deref(), Some("main"));
        assert!(facts.tags.is_empty());
    }

    #[test]
    fn lightweight_and_annotated_tags_on_head_are_listed() {
        let repo = Repo::new();
        repo.commit("a", "first");
        repo.git(&["tag", "old"]);
        repo.commit("a", "second: deploy me");
        repo.git(&["tag", "v2-cicd"]);
        repo.git(&["tag", "-a", "release-2", "-m", "annotated"]);
        let facts = repo.facts();
        assert_eq!(facts.tags, ["release-2", "v2-cicd"]);
        assert_eq!(facts.subject.as_deref(), Some("second: deploy me"));
        assert_eq!(facts.head_sha.as_ref().map(String::len), Some(40));
        assert!(!facts.dirty);
    }

    #[test]
    fn detached_head_has_no_branch() {
        let repo = Repo::new();
        repo.commit("a", "first");
        repo.commit("a", "second");
        repo.git(&["checkout", "-q", "--detach", "HEAD~1"]);
        let facts = repo.facts();
        assert_eq!(facts.branch, None);
        assert_eq!(facts.subject.as_deref(), Some("first"));
    }

    #[test]
    fn modified_tracked_file_is_dirty_and_tagged_in_the_short_sha() {
        let repo = Repo::new();
        repo.commit("a", "first");
        std::fs::write(repo.dir.path().join("a"), "changed").unwrap();
        let facts = repo.facts();
        assert!(facts.dirty);
        assert!(facts.short_sha().unwrap().ends_with("-dirty"));
    }

    #[test]
    fn broken_repository_is_an_error_not_an_empty_checkout() {
        let repo = Repo::new();
        std::fs::write(repo.dir.path().join(".git/config"), "[core\n").unwrap();
        let err = GitFacts::collect(repo.dir.path()).unwrap_err();
        assert!(matches!(err, GitError::Unreadable { .. }), "{err:?}");
        assert!(err.to_string().contains("bad config"), "{err}");
    }

    #[test]
    fn credentials_in_the_origin_url_are_dropped() {
        assert_eq!(
            without_credentials("https://ci:ghp_token@github.com/team/app.git"),
            "https://github.com/team/app.git"
        );
        assert_eq!(
            without_credentials("https://github.com/team/a@b.git"),
            "https://github.com/team/a@b.git"
        );
        assert_eq!(
            without_credentials("git@github.com:team/app.git"),
            "git@github.com:team/app.git"
        );
        let repo = Repo::new();
        repo.git(&[
            "remote",
            "add",
            "origin",
            "https://u:s3cret@example.com/app.git",
        ]);
        let facts = repo.facts();
        assert_eq!(
            facts.repository.as_deref(),
            Some("https://example.com/app.git")
        );
    }

    #[test]
    fn origin_url_names_the_repository() {
        let repo = Repo::new();
        repo.git(&[
            "remote",
            "add",
            "origin",
            "https://example.com/team/app.git",
        ]);
        assert_eq!(
            repo.facts().repository.as_deref(),
            Some("https://example.com/team/app.git")
        );
    }
}
