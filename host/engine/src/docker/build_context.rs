//! The build context sent to the engine: a tar of the context directory without what
//! its `.dockerignore` excludes, the way `docker build` prepares it.
//!
//! The legacy builder (Docker 20.10 without BuildKit) reads `.dockerignore` nowhere:
//! the client must apply it. This module supports the documented syntax: comments,
//! `*`, `?`, `**`, character classes, `\` escapes and `!` exceptions, with the last
//! matching line winning and a matching directory excluding everything below it. The
//! globs are globset's (ripgrep's), told to match the way Docker does; only the rules
//! around them (parents, exceptions, clean-up of each line) are Docker's own. The
//! Dockerfile and `.dockerignore` are always sent, as the Docker CLI does. It only
//! reads the context; it never writes into it. The archive is built in memory, which
//! suits application contexts (tens of MB), not multi-GB ones.

use std::fs;
use std::io;
use std::path::{Component, Path, PathBuf};

use globset::{Glob, GlobBuilder, GlobSet, GlobSetBuilder};

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
    let ignore_file = dir.join(".dockerignore");
    let ignore = match fs::read_to_string(&ignore_file) {
        Ok(text) => Ignore::parse(&text).map_err(|message| {
            context_err(
                &ignore_file,
                io::Error::new(io::ErrorKind::InvalidData, message),
            )
        })?,
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ignore::default(),
        Err(e) => return Err(context_err(&ignore_file, e)),
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

/// Parsed `.dockerignore` rules: one glob per line in a [`GlobSet`], and whether each
/// line is an exception.
#[derive(Debug)]
struct Ignore {
    globs: GlobSet,
    exception: Vec<bool>,
}

impl Default for Ignore {
    fn default() -> Ignore {
        Ignore {
            globs: GlobSet::empty(),
            exception: Vec::new(),
        }
    }
}

impl Ignore {
    /// Parses the text of a `.dockerignore`.
    ///
    /// # Errors
    /// A message naming the line whose pattern is malformed (Docker refuses the
    /// build for it too).
    fn parse(text: &str) -> Result<Ignore, String> {
        let mut builder = GlobSetBuilder::new();
        let mut exception = Vec::new();
        for (number, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (is_exception, pattern) = match line.strip_prefix('!') {
                Some(rest) => (true, rest.trim()),
                None => (false, line),
            };
            let pattern = clean_pattern(pattern);
            if pattern.is_empty() {
                continue;
            }
            let glob = docker_glob(&pattern).map_err(|e| {
                format!(
                    "line {}: {line:?} is not a valid pattern: {}",
                    number + 1,
                    e.kind()
                )
            })?;
            builder.add(glob);
            exception.push(is_exception);
        }
        let globs = builder
            .build()
            .map_err(|e| format!("cannot compile its patterns: {e}"))?;
        Ok(Ignore { globs, exception })
    }

    fn has_exceptions(&self) -> bool {
        self.exception.contains(&true)
    }

    /// Whether `path` (relative, `/`-separated) is left out of the context: Docker
    /// applies a pattern to the path and to each of its parent directories, and the
    /// last line that matches any of them decides.
    fn excludes(&self, path: &str) -> bool {
        let parents = path.match_indices('/').map(|(i, _)| &path[..i]);
        std::iter::once(path)
            .chain(parents)
            .flat_map(|candidate| self.globs.matches(candidate))
            .max()
            .is_some_and(|last| !self.exception[last])
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

/// A `.dockerignore` pattern as a glob with Docker's meaning: Go's `filepath.Match`
/// (`*` and `?` stop at `/`, `[...]` classes, `\` escapes) plus `**` across
/// directories. globset's `{a,b}` alternation is no part of Docker's syntax, so braces
/// are escaped to stay literal.
///
/// One difference is left: a `**` inside a path component (`**.log`, `a**`) matches
/// like `*` here, where Docker lets it cross directories; `**/*.log` means the same in
/// both.
fn docker_glob(pattern: &str) -> Result<Glob, globset::Error> {
    let mut escaped = String::with_capacity(pattern.len());
    let mut chars = pattern.chars();
    let mut in_class = false;
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                escaped.push(c);
                escaped.extend(chars.next());
            }
            '[' | ']' => {
                in_class = c == '[';
                escaped.push(c);
            }
            '{' | '}' if !in_class => {
                escaped.push('\\');
                escaped.push(c);
            }
            _ => escaped.push(c),
        }
    }
    GlobBuilder::new(&escaped)
        .literal_separator(true)
        .backslash_escape(true)
        .build()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn glob(pattern: &[u8], path: &[u8]) -> bool {
        let pattern = std::str::from_utf8(pattern).unwrap();
        docker_glob(pattern)
            .unwrap_or_else(|e| panic!("{pattern}: {e}"))
            .compile_matcher()
            .is_match(std::str::from_utf8(path).unwrap())
    }

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
            ("{a,b}", "{a,b}"),
            ("a/**/b", "a/b"),
            ("a/**/b", "a/x/y/b"),
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
            ("{a,b}", "a"),
            ("dir/**", "dir"),
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
        )
        .unwrap();
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
        assert!(!Ignore::default().excludes("anything"));
    }

    #[test]
    fn malformed_pattern_names_its_line() {
        let err = Ignore::parse("target\n[abc\n").unwrap_err();
        assert!(err.contains("line 2"), "{err}");
        assert!(err.contains("[abc"), "{err}");
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("Dockerfile"), "FROM scratch\n").unwrap();
        fs::write(dir.path().join(".dockerignore"), "[abc\n").unwrap();
        let err = archive(dir.path(), "Dockerfile").unwrap_err().to_string();
        assert!(err.contains(".dockerignore"), "{err}");
        assert!(err.contains("line 1"), "{err}");
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
