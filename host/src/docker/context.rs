//! The build context sent to the engine: a tar of the context directory without what
//! its `.dockerignore` excludes, the way `docker build` prepares it.
//!
//! The legacy builder (Docker 20.10 without BuildKit) reads `.dockerignore` nowhere:
//! the client must apply it. This module supports the documented syntax: comments,
//! `*`, `?`, `**`, character classes, `\` escapes and `!` exceptions, with the last
//! matching line winning and a matching directory excluding everything below it. The
//! Dockerfile and `.dockerignore` are always sent, as the Docker CLI does. It only
//! reads the context; it never writes into it. The archive is built in memory, which
//! suits application contexts (tens of MB), not multi-GB ones.

use std::fs;
use std::io;
use std::path::{Component, Path, PathBuf};

use super::DockerError;

/// The tar of `dir` for a build with `dockerfile` (a path inside `dir`).
///
/// # Errors
/// [`DockerError::Context`] when `dockerfile` is not a relative path inside the
/// context or is missing, or when a file cannot be read.
pub(super) fn archive(dir: &Path, dockerfile: &str) -> Result<Vec<u8>, DockerError> {
    let context_err = |path: &Path, source: io::Error| DockerError::Context {
        path: path.to_owned(),
        source,
    };
    let dockerfile = clean_relative(dockerfile).ok_or_else(|| {
        context_err(
            Path::new(dockerfile),
            io::Error::new(
                io::ErrorKind::InvalidInput,
                "the Dockerfile must be a relative path inside the build context",
            ),
        )
    })?;
    let dockerfile_path = dir.join(&dockerfile);
    if !dockerfile_path.is_file() {
        return Err(context_err(
            &dockerfile_path,
            io::Error::new(io::ErrorKind::NotFound, "no Dockerfile at this path"),
        ));
    }
    let ignore = match fs::read_to_string(dir.join(".dockerignore")) {
        Ok(text) => Ignore::parse(&text),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ignore::default(),
        Err(e) => return Err(context_err(&dir.join(".dockerignore"), e)),
    };
    let mut walker = Walker {
        ignore,
        always: [dockerfile, ".dockerignore".to_owned()],
        tar: tar::Builder::new(Vec::new()),
    };
    walker.tar.follow_symlinks(false);
    walker
        .walk(dir, "")
        .map_err(|(path, e)| context_err(&path, e))?;
    walker.tar.into_inner().map_err(|e| context_err(dir, e))
}

/// `path` with `.` parts and separators normalised, or `None` when it is absolute or
/// climbs out with `..`.
fn clean_relative(path: &str) -> Option<String> {
    let mut parts = Vec::new();
    for c in Path::new(path).components() {
        match c {
            Component::Normal(p) => parts.push(p.to_str()?),
            Component::CurDir => {}
            _ => return None,
        }
    }
    (!parts.is_empty()).then(|| parts.join("/"))
}

struct Walker {
    ignore: Ignore,
    always: [String; 2],
    tar: tar::Builder<Vec<u8>>,
}

impl Walker {
    /// Adds the entries of `dir` (`rel` inside the context), sorted so the archive is
    /// the same for the same tree.
    fn walk(&mut self, dir: &Path, rel: &str) -> Result<(), (PathBuf, io::Error)> {
        let mut entries = fs::read_dir(dir)
            .and_then(|it| it.collect::<Result<Vec<_>, _>>())
            .map_err(|e| (dir.to_owned(), e))?;
        entries.sort_by_key(|e| e.file_name());
        for entry in entries {
            let path = entry.path();
            let name = entry.file_name();
            let name = name.to_string_lossy();
            let child = if rel.is_empty() {
                name.into_owned()
            } else {
                format!("{rel}/{name}")
            };
            let kind = entry.file_type().map_err(|e| (path.clone(), e))?;
            let excluded = self.ignore.excludes(&child) && !self.always.contains(&child);
            if kind.is_dir() {
                if !excluded {
                    self.tar
                        .append_dir(&child, &path)
                        .map_err(|e| (path.clone(), e))?;
                }
                // An exception (`!dir/keep`) can bring back a file under an excluded
                // directory, so such directories are still walked.
                if !excluded || self.ignore.has_exceptions() {
                    self.walk(&path, &child)?;
                }
            } else if !excluded && (kind.is_file() || kind.is_symlink()) {
                self.tar
                    .append_path_with_name(&path, &child)
                    .map_err(|e| (path.clone(), e))?;
            }
            // Sockets, FIFOs and devices cannot be part of an image build.
        }
        Ok(())
    }
}

/// Parsed `.dockerignore` rules.
#[derive(Debug, Default)]
struct Ignore {
    rules: Vec<Rule>,
}

#[derive(Debug)]
struct Rule {
    pattern: String,
    exception: bool,
}

impl Ignore {
    fn parse(text: &str) -> Ignore {
        let rules = text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .filter_map(|line| {
                let (exception, pattern) = match line.strip_prefix('!') {
                    Some(rest) => (true, rest.trim()),
                    None => (false, line),
                };
                let pattern = clean_pattern(pattern);
                (!pattern.is_empty()).then_some(Rule { pattern, exception })
            })
            .collect();
        Ignore { rules }
    }

    fn has_exceptions(&self) -> bool {
        self.rules.iter().any(|r| r.exception)
    }

    /// Whether `path` (relative, `/`-separated) is left out of the context.
    fn excludes(&self, path: &str) -> bool {
        let mut excluded = false;
        for rule in &self.rules {
            if matches_or_parent(&rule.pattern, path) {
                excluded = !rule.exception;
            }
        }
        excluded
    }
}

/// Patterns are relative to the context root whatever their leading `/` or `./`.
fn clean_pattern(pattern: &str) -> String {
    pattern
        .split('/')
        .filter(|p| !p.is_empty() && *p != ".")
        .collect::<Vec<_>>()
        .join("/")
}

/// Docker excludes a path when the pattern matches it or any of its parent directories.
fn matches_or_parent(pattern: &str, path: &str) -> bool {
    if glob(pattern.as_bytes(), path.as_bytes()) {
        return true;
    }
    path.match_indices('/')
        .any(|(i, _)| glob(pattern.as_bytes(), &path.as_bytes()[..i]))
}

/// Go's `filepath.Match` plus `**` (any number of directories), as Docker uses it.
fn glob(p: &[u8], s: &[u8]) -> bool {
    match p {
        [] => s.is_empty(),
        [b'*', b'*', b'/', rest @ ..] => {
            glob(rest, s)
                || s.iter()
                    .enumerate()
                    .any(|(i, &c)| c == b'/' && glob(rest, &s[i + 1..]))
        }
        [b'*', b'*', rest @ ..] => (0..=s.len()).any(|i| glob(rest, &s[i..])),
        [b'*', rest @ ..] => {
            let segment = s.iter().position(|&c| c == b'/').unwrap_or(s.len());
            (0..=segment).any(|i| glob(rest, &s[i..]))
        }
        [b'?', rest @ ..] => matches!(s, [c, tail @ ..] if *c != b'/' && glob(rest, tail)),
        [b'[', rest @ ..] => match (s, class(rest)) {
            ([c, tail @ ..], Some((matched, after))) if *c != b'/' => {
                matched(*c) && glob(after, tail)
            }
            _ => false,
        },
        [b'\\', c, rest @ ..] => matches!(s, [x, tail @ ..] if x == c && glob(rest, tail)),
        [c, rest @ ..] => matches!(s, [x, tail @ ..] if x == c && glob(rest, tail)),
    }
}

/// Parses a character class after its `[`: a predicate and the pattern after `]`.
#[allow(clippy::type_complexity)]
fn class(p: &[u8]) -> Option<(Box<dyn Fn(u8) -> bool + '_>, &[u8])> {
    let (negated, body) = match p {
        [b'^' | b'!', rest @ ..] => (true, rest),
        _ => (false, p),
    };
    let end = body.iter().skip(1).position(|&c| c == b']')? + 1;
    let items = &body[..end];
    let matched = move |c: u8| {
        let mut i = 0;
        let mut hit = false;
        while i < items.len() {
            if i + 2 < items.len() && items[i + 1] == b'-' {
                hit |= (items[i]..=items[i + 2]).contains(&c);
                i += 3;
            } else {
                hit |= items[i] == c;
                i += 1;
            }
        }
        hit != negated
    };
    Some((Box::new(matched), &body[end + 1..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn glob_semantics() {
        let yes = [
            ("*.go", "main.go"),
            ("a/*/c", "a/b/c"),
            ("**/*.go", "main.go"),
            ("**/*.go", "x/y/main.go"),
            ("dir/**", "dir/a/b"),
            ("?at", "cat"),
            ("[a-c]at", "bat"),
            ("[^a-c]at", "rat"),
            ("[!a-c]at", "rat"),
            ("\\*", "*"),
            ("target", "target"),
        ];
        for (p, s) in yes {
            assert!(glob(p.as_bytes(), s.as_bytes()), "{p} should match {s}");
        }
        let no = [
            ("*.go", "x/main.go"),
            ("a/*/c", "a/b/d/c"),
            ("?at", "at"),
            ("[a-c]at", "rat"),
            ("[^a-c]at", "bat"),
            ("\\*", "x"),
            ("target", "targets"),
            ("*", "a/b"),
        ];
        for (p, s) in no {
            assert!(
                !glob(p.as_bytes(), s.as_bytes()),
                "{p} should not match {s}"
            );
        }
    }

    #[test]
    fn dockerignore_rules() {
        let ignore = Ignore::parse(
            "# comment\n\n/target\n./logs/*.log\n*.tmp\n!keep.tmp\nbuild\n!build/keep.txt\n",
        );
        assert!(ignore.excludes("target"));
        assert!(ignore.excludes("target/debug/app"));
        assert!(ignore.excludes("logs/a.log"));
        assert!(!ignore.excludes("logs/a.txt"));
        assert!(ignore.excludes("x.tmp"));
        assert!(!ignore.excludes("keep.tmp"));
        assert!(
            !ignore.excludes("sub/x.tmp"),
            "a pattern without ** is anchored"
        );
        assert!(ignore.excludes("build/other"));
        assert!(!ignore.excludes("build/keep.txt"));
        assert!(!ignore.excludes("src/main.rs"));
        assert!(ignore.has_exceptions());
    }

    #[test]
    fn dockerfile_must_stay_inside_the_context() {
        assert_eq!(
            clean_relative("./Dockerfile").as_deref(),
            Some("Dockerfile")
        );
        assert_eq!(
            clean_relative("docker/app.Dockerfile").as_deref(),
            Some("docker/app.Dockerfile")
        );
        assert_eq!(clean_relative("../Dockerfile"), None);
        assert_eq!(clean_relative("/etc/Dockerfile"), None);
        assert_eq!(clean_relative(""), None);
    }

    fn names(tar_bytes: &[u8]) -> Vec<String> {
        let mut archive = tar::Archive::new(tar_bytes);
        archive
            .entries()
            .unwrap()
            .map(|e| e.unwrap().path().unwrap().to_string_lossy().into_owned())
            .collect()
    }

    #[test]
    fn archive_applies_dockerignore_and_keeps_the_dockerfile() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        fs::write(root.join("Dockerfile"), "FROM scratch\n").unwrap();
        fs::write(
            root.join(".dockerignore"),
            "Dockerfile\n.dockerignore\nsecret*\nbig\n!big/keep\n",
        )
        .unwrap();
        fs::write(root.join("app"), "bin").unwrap();
        fs::write(root.join("secret.txt"), "no").unwrap();
        fs::create_dir_all(root.join("big/sub")).unwrap();
        fs::write(root.join("big/sub/blob"), "no").unwrap();
        fs::write(root.join("big/keep"), "yes").unwrap();
        std::os::unix::fs::symlink("app", root.join("link")).unwrap();
        let tar_bytes = archive(root, "Dockerfile").unwrap();
        assert_eq!(
            names(&tar_bytes),
            [".dockerignore", "Dockerfile", "app", "big/keep", "link"]
        );
    }

    #[test]
    fn missing_dockerfile_names_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let err = archive(dir.path(), "Dockerfile").unwrap_err().to_string();
        assert!(err.contains("Dockerfile"), "{err}");
        assert!(err.contains("no Dockerfile"), "{err}");
        let err = archive(dir.path(), "../Dockerfile")
            .unwrap_err()
            .to_string();
        assert!(err.contains("inside the build context"), "{err}");
    }
}
