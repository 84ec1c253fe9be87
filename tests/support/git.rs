//! Real git repositories in temp dirs, driven by the `git` binary: commits, branches,
//! lightweight and annotated tags, bare "remotes", clones and pushes.
//!
//! Every command runs with the user's and the system's git config ignored, so a
//! developer's `commit.gpgsign` or hooks path cannot change what a test sees.

use std::path::{Path, PathBuf};
use std::process::Command;

use super::{require_tool, run_ok};

/// A repository (work tree or bare) at `dir`.
pub struct Repo {
    dir: PathBuf,
    _temp: Option<tempfile::TempDir>,
}

/// `git` with the test's isolated settings, run in `dir`.
pub fn git_command(dir: &Path) -> Command {
    require_tool("git", "git");
    let mut cmd = Command::new("git");
    cmd.arg("-C")
        .arg(dir)
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_TERMINAL_PROMPT", "0")
        .env_remove("GIT_DIR")
        .env_remove("GIT_WORK_TREE")
        .args([
            "-c",
            "user.name=cutover test",
            "-c",
            "user.email=test@cutover.invalid",
            "-c",
            "commit.gpgsign=false",
            "-c",
            "tag.gpgsign=false",
            "-c",
            "advice.detachedHead=false",
        ]);
    cmd
}

impl Repo {
    /// A fresh work tree on branch `main` in its own temp dir, no commits.
    pub fn new() -> Repo {
        let temp = tempfile::tempdir().expect("temp dir");
        let repo = Repo::at(temp.path());
        repo.git(&["init", "-q", "-b", "main"]);
        Repo {
            _temp: Some(temp),
            ..repo
        }
    }

    /// A fresh bare repository (a "remote") in its own temp dir.
    pub fn bare() -> Repo {
        let temp = tempfile::tempdir().expect("temp dir");
        let repo = Repo::at(&temp.path().join("origin.git"));
        std::fs::create_dir(repo.path()).expect("create bare dir");
        repo.git(&["init", "-q", "--bare", "-b", "main"]);
        Repo {
            _temp: Some(temp),
            ..repo
        }
    }

    /// A clone of `origin` into `dir` (which must be empty or absent).
    pub fn clone_into(origin: &Repo, dir: &Path) -> Repo {
        run_ok(
            git_command(Path::new("/"))
                .args(["clone", "-q"])
                .arg(origin.path())
                .arg(dir),
        );
        Repo::at(dir)
    }

    /// The repository at `dir`, not owned (nothing is removed on drop).
    pub fn at(dir: &Path) -> Repo {
        Repo {
            dir: dir.to_owned(),
            _temp: None,
        }
    }

    /// Its directory.
    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// Runs git with `args`; returns its trimmed stdout, panics on failure.
    #[track_caller]
    pub fn git(&self, args: &[&str]) -> String {
        run_ok(git_command(&self.dir).args(args)).trim().to_owned()
    }

    /// Writes `file` and commits it with `subject`; returns the new HEAD sha.
    #[track_caller]
    pub fn commit(&self, file: &str, contents: &str, subject: &str) -> String {
        std::fs::write(self.dir.join(file), contents).expect("write file");
        self.git(&["add", file]);
        self.git(&["commit", "-q", "-m", subject]);
        self.head()
    }

    /// HEAD's full sha.
    #[track_caller]
    pub fn head(&self) -> String {
        self.git(&["rev-parse", "HEAD"])
    }

    /// The sha `name` (a tag, branch or sha) resolves to, without peeling.
    #[track_caller]
    pub fn rev(&self, name: &str) -> String {
        self.git(&["rev-parse", name])
    }
}
