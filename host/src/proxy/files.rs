//! The rendered proxy files on disk: refuse paths and contents that could escape or
//! flood the config directory, read the current contents, write new ones atomically
//! and put old ones back, and show the difference.
//!
//! Every write goes through [`crate::atomic_file`], so nginx never reads a half-written
//! file. Nothing outside the config directory is ever touched: every path is checked
//! before it is joined to the directory.

use std::fmt::Write as _;
use std::path::Path;

use super::ProxyError;
use crate::atomic_file;
use crate::plugin::types::ProxyFile;
use crate::state::SavedFile;

/// At most this many files per render.
pub(crate) const MAX_FILES: usize = 32;
/// At most this many bytes per file.
pub(crate) const MAX_FILE_BYTES: usize = 1024 * 1024;
/// At most this many bytes in all files of a render.
pub(crate) const MAX_TOTAL_BYTES: usize = 4 * 1024 * 1024;
const MAX_PATH_BYTES: usize = 200;
const MAX_DEPTH: usize = 4;

/// Mode of the files written: nginx workers may run as another user and must read them.
const FILE_MODE: u32 = 0o644;

fn invalid(path: &str, reason: impl Into<String>) -> ProxyError {
    ProxyError::InvalidFile {
        path: path.to_owned(),
        reason: reason.into(),
    }
}

/// Checks one path relative to the config directory.
pub(crate) fn check_path(path: &str) -> Result<(), ProxyError> {
    // Every refusal says the same first words, so a user (and a test) recognises an
    // escaping or malformed path whatever the detail.
    let refuse = |detail: String| {
        invalid(
            path,
            format!("is not a relative path inside the proxy's config directory: {detail}"),
        )
    };
    if path.is_empty() {
        return Err(refuse("it is empty".to_owned()));
    }
    if path.len() > MAX_PATH_BYTES {
        return Err(refuse(format!("it is longer than {MAX_PATH_BYTES} bytes")));
    }
    if path.contains('\0') {
        return Err(refuse("it contains a NUL byte".to_owned()));
    }
    if path.starts_with('/') {
        return Err(refuse("it is absolute".to_owned()));
    }
    let parts: Vec<&str> = path.split('/').collect();
    if parts.contains(&"..") {
        return Err(refuse("it contains `..`".to_owned()));
    }
    if parts.len() > MAX_DEPTH {
        return Err(refuse(format!(
            "it is nested deeper than {MAX_DEPTH} levels"
        )));
    }
    for part in parts {
        // Leading dots would also collide with atomic_file's temporary names.
        if part.is_empty() || part.starts_with('.') {
            return Err(refuse(
                "every component must be a non-empty name that does not start with `.`".to_owned(),
            ));
        }
        if !part
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'))
        {
            return Err(refuse(
                "names may only use a-z, A-Z, 0-9, `.`, `-` and `_`".to_owned(),
            ));
        }
    }
    Ok(())
}

/// Checks a whole render: paths, duplicates, count and sizes.
pub(crate) fn check_files(files: &[ProxyFile]) -> Result<(), ProxyError> {
    if files.is_empty() {
        return Err(invalid(
            "",
            "is missing: the template rendered no files, so the proxy would have nothing to switch to",
        ));
    }
    if files.len() > MAX_FILES {
        return Err(invalid(
            &files[0].path,
            format!(
                "is one of {} rendered files; at most {MAX_FILES} are accepted",
                files.len()
            ),
        ));
    }
    let mut total = 0usize;
    for (i, file) in files.iter().enumerate() {
        check_path(&file.path)?;
        if files[..i].iter().any(|f| f.path == file.path) {
            return Err(invalid(&file.path, "appears twice in the render"));
        }
        if file.contents.len() > MAX_FILE_BYTES {
            return Err(invalid(
                &file.path,
                format!(
                    "has {} bytes; at most {MAX_FILE_BYTES} are accepted",
                    file.contents.len()
                ),
            ));
        }
        if let Some(c) = file
            .contents
            .chars()
            .find(|&c| c.is_control() && !matches!(c, '\n' | '\r' | '\t'))
        {
            return Err(invalid(
                &file.path,
                format!(
                    "contains the control character {:?}",
                    c.escape_default().to_string()
                ),
            ));
        }
        check_blocks(&file.contents)
            .map_err(|reason| invalid(&file.path, format!("is not well-formed nginx: {reason}")))?;
        total += file.contents.len();
    }
    if total > MAX_TOTAL_BYTES {
        return Err(invalid(
            &files[0].path,
            format!("brings the files to {total} bytes; at most {MAX_TOTAL_BYTES} are accepted"),
        ));
    }
    Ok(())
}

/// Refuses contents whose `{ }` blocks do not balance, read the way nginx's lexer
/// reads them (quoted strings, `\` escapes, `#` comments and `${var}` do not count).
/// Each file is included inside a block of the main config; one that closed more
/// blocks than it opened would escape it (say, out of `location /` to add a server of
/// its own), and one that left a block open would swallow what follows. nginx's test
/// would refuse both too, but only after the file was written; this refuses it first.
fn check_blocks(contents: &str) -> Result<(), String> {
    let mut depth = 0usize;
    let mut opened_at = Vec::new();
    let mut line = 1usize;
    let mut quote: Option<char> = None;
    let (mut escaped, mut comment, mut variable_name) = (false, false, false);
    // nginx only starts a comment or a quoted string at the start of a word.
    let mut word_start = true;
    let mut after_dollar = false;
    for c in contents.chars() {
        if c == '\n' {
            line += 1;
        }
        let dollar = std::mem::replace(&mut after_dollar, false);
        if comment {
            comment = c != '\n';
            word_start = true;
            continue;
        }
        if escaped {
            escaped = false;
            continue;
        }
        if c == '\\' {
            escaped = true;
            word_start = false;
            continue;
        }
        if let Some(q) = quote {
            quote = (c != q).then_some(q);
            continue;
        }
        if variable_name {
            variable_name = c != '}';
            continue;
        }
        match c {
            '#' if word_start => comment = true,
            '"' | '\'' if word_start => quote = Some(c),
            '{' if dollar => variable_name = true,
            '{' => {
                depth += 1;
                opened_at.push(line);
                word_start = true;
            }
            '}' => {
                if depth == 0 {
                    return Err(format!(
                        "line {line}: `}}` closes a block it did not open; a rendered file must not escape the block it is included in"
                    ));
                }
                depth -= 1;
                opened_at.pop();
                word_start = true;
            }
            ';' => word_start = true,
            c if c.is_whitespace() => word_start = true,
            '$' => {
                after_dollar = true;
                word_start = false;
            }
            _ => word_start = false,
        }
    }
    if let Some(q) = quote {
        return Err(format!(
            "a string opened with {q} is never closed; it would swallow the rest of nginx's config"
        ));
    }
    match opened_at.first() {
        Some(at) => Err(format!(
            "the block opened at line {at} is never closed; it would swallow the rest of nginx's config"
        )),
        None => Ok(()),
    }
}

/// Reads the current contents of `paths` under `dir` (none for an absent file).
pub(crate) fn snapshot(dir: &Path, paths: &[String]) -> Result<Vec<SavedFile>, ProxyError> {
    paths
        .iter()
        .map(|path| {
            check_path(path)?;
            let full = dir.join(path);
            let contents = match std::fs::read(&full) {
                Ok(bytes) => Some(String::from_utf8(bytes).map_err(|_| ProxyError::Snapshot {
                    path: full.clone(),
                    reason: "it is not UTF-8 text, so it cannot be saved for a restore; move it out of the config directory".to_owned(),
                })?),
                // A parent that is not a directory means the file cannot exist either.
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::NotFound | std::io::ErrorKind::NotADirectory
                    ) =>
                {
                    None
                }
                Err(e) => {
                    return Err(ProxyError::Snapshot {
                        path: full,
                        reason: e.to_string(),
                    });
                }
            };
            Ok(SavedFile {
                path: path.clone(),
                contents,
            })
        })
        .collect()
}

/// Writes one file, creating its subdirectories inside `dir`.
fn write_one(dir: &Path, path: &str, contents: &str) -> Result<(), ProxyError> {
    let full = dir.join(path);
    if let Some(parent) = full.parent()
        && parent != dir
    {
        std::fs::create_dir_all(parent).map_err(|source| {
            ProxyError::Write(atomic_file::AtomicWriteError {
                path: full.clone(),
                source,
            })
        })?;
    }
    atomic_file::write(&full, contents.as_bytes(), FILE_MODE)?;
    Ok(())
}

/// Removes one file (already absent is fine) and makes the removal durable.
fn remove_one(dir: &Path, path: &str) -> Result<(), ProxyError> {
    let full = dir.join(path);
    let wrap = |source| ProxyError::Remove {
        path: full.clone(),
        source,
    };
    match std::fs::remove_file(&full) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(wrap(e)),
    }
    let parent = full.parent().unwrap_or(dir);
    std::fs::File::open(parent)
        .and_then(|d| d.sync_all())
        .map_err(wrap)
}

/// Writes `files`; when one fails, the ones already written get `previous` back.
pub(crate) fn write_all(
    dir: &Path,
    files: &[ProxyFile],
    previous: &[SavedFile],
) -> Result<(), ProxyError> {
    for (i, file) in files.iter().enumerate() {
        if let Err(e) = write_one(dir, &file.path, &file.contents) {
            let written: Vec<SavedFile> = files[..i]
                .iter()
                .filter_map(|f| previous.iter().find(|p| p.path == f.path).cloned())
                .collect();
            if let Err(restore) = restore_all(dir, &written) {
                return Err(ProxyError::Restore {
                    cause: e.to_string(),
                    dir: dir.to_owned(),
                    error: Box::new(restore),
                });
            }
            return Err(e);
        }
    }
    Ok(())
}

/// Puts every saved file back exactly (deleting those that did not exist). Tries every
/// file even when one fails, and reports the first failure.
pub(crate) fn restore_all(dir: &Path, saved: &[SavedFile]) -> Result<(), ProxyError> {
    let mut first = None;
    for file in saved {
        let result = check_path(&file.path).and_then(|()| match &file.contents {
            Some(contents) => write_one(dir, &file.path, contents),
            None => remove_one(dir, &file.path),
        });
        if let Err(e) = result {
            first.get_or_insert(e);
        }
    }
    first.map_or(Ok(()), Err)
}

/// A unified diff from `current` to `next`, file by file.
pub(crate) fn diff(current: &[SavedFile], next: &[ProxyFile]) -> String {
    let mut out = String::new();
    for file in next {
        let old = current
            .iter()
            .find(|c| c.path == file.path)
            .and_then(|c| c.contents.as_deref());
        if old == Some(file.contents.as_str()) {
            let _ = writeln!(out, "  {} (unchanged)", file.path);
            continue;
        }
        let from = match old {
            Some(_) => format!("a/{}", file.path),
            None => "/dev/null".to_owned(),
        };
        // Rendered files are a few lines; the timeout only bounds a pathological pair,
        // for which the diff degrades to a coarser but still correct one.
        let to = format!("b/{}", file.path);
        let text = similar::TextDiff::configure()
            .timeout(std::time::Duration::from_millis(500))
            .diff_lines(old.unwrap_or(""), &file.contents)
            .unified_diff()
            .header(&from, &to)
            .to_string();
        if text.is_empty() {
            // A new empty file has no hunk, and the diff then prints no header either.
            let _ = writeln!(out, "--- {from}\n+++ {to}");
        } else {
            out.push_str(&text);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(path: &str, contents: &str) -> ProxyFile {
        ProxyFile {
            path: path.to_owned(),
            contents: contents.to_owned(),
        }
    }

    fn refusal(files: &[ProxyFile]) -> String {
        check_files(files).unwrap_err().to_string()
    }

    #[test]
    fn accepts_plain_relative_names() {
        check_files(&[
            file("service-url.inc", "set $service_url http://127.0.0.1:1;\n"),
            file("sites/app_v2.conf", ""),
        ])
        .unwrap();
    }

    #[test]
    fn refuses_paths_that_escape_the_config_dir() {
        assert!(refusal(&[file("../x", "")]).contains("`..`"));
        assert!(refusal(&[file("a/../../x", "")]).contains("`..`"));
        assert!(refusal(&[file("/etc/x", "")]).contains("absolute"));
        assert!(refusal(&[file("a\0b", "")]).contains("NUL"));
        assert!(refusal(&[file("", "")]).contains("empty"));
        assert!(refusal(&[file("a//b", "")]).contains("non-empty"));
        assert!(refusal(&[file(".hidden", "")]).contains("`.`"));
        assert!(refusal(&[file("a b.conf", "")]).contains("a-z"));
        assert!(refusal(&[file("a\\..\\b", "")]).contains("a-z"));
        assert!(refusal(&[file("a/b/c/d/e", "")]).contains("deeper"));
        assert!(refusal(&[file(&"x".repeat(201), "")]).contains("longer"));
    }

    #[test]
    fn refuses_bad_contents_and_floods() {
        assert!(refusal(&[file("a.inc", "x\0y")]).contains("control character"));
        let huge = "x".repeat(MAX_FILE_BYTES + 1);
        assert!(refusal(&[file("a.inc", &huge)]).contains("at most"));
        let big = "x".repeat(MAX_FILE_BYTES);
        let many: Vec<ProxyFile> = (0..5).map(|i| file(&format!("f{i}.conf"), &big)).collect();
        assert!(refusal(&many).contains("brings the files to"));
        let lots: Vec<ProxyFile> = (0..=MAX_FILES)
            .map(|i| file(&format!("f{i}.conf"), ""))
            .collect();
        assert!(refusal(&lots).contains("files"));
        assert!(refusal(&[file("a.inc", ""), file("a.inc", "")]).contains("twice"));
        assert!(refusal(&[]).contains("no files"));
    }

    #[test]
    fn refuses_contents_that_escape_or_swallow_their_block() {
        let escape = refusal(&[file(
            "service-url.inc",
            "set $service_url http://127.0.0.1:1;\n}\nserver { listen 1; }\nlocation /x {\n",
        )]);
        assert!(
            escape.contains("line 2: `}` closes a block it did not open"),
            "{escape}"
        );
        let open = refusal(&[file("a.conf", "server {\n  listen 1;\n")]);
        assert!(open.contains("opened at line 1 is never closed"), "{open}");
        let quote = refusal(&[file("a.conf", "return 200 \"abc;\n")]);
        assert!(quote.contains("never closed"), "{quote}");
        // Braces nginx does not read as blocks are fine.
        check_files(&[
            file(
                "a.conf",
                "# } a comment\nmap $uri $x { default \"}\"; '~{' 1; }\n\
                 location ~ \"^/a{2}$\" { return 200 ${x}ok\\}; }\nset $a#b 1;\n",
            ),
            file("b.inc", "set $service_url http://127.0.0.1:1;\n"),
        ])
        .unwrap();
    }

    #[test]
    fn snapshot_write_restore_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a.inc"), "old a\n").unwrap();
        let paths = vec!["a.inc".to_owned(), "sub/b.conf".to_owned()];
        let before = snapshot(dir.path(), &paths).unwrap();
        assert_eq!(before[0].contents.as_deref(), Some("old a\n"));
        assert_eq!(before[1].contents, None);
        write_all(
            dir.path(),
            &[file("a.inc", "new a\n"), file("sub/b.conf", "b\n")],
            &before,
        )
        .unwrap();
        assert_eq!(
            std::fs::read_to_string(dir.path().join("sub/b.conf")).unwrap(),
            "b\n"
        );
        restore_all(dir.path(), &before).unwrap();
        assert_eq!(snapshot(dir.path(), &paths).unwrap(), before);
    }

    #[test]
    fn snapshot_refuses_binary_files() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a.inc"), [0xff, 0xfe]).unwrap();
        let err = snapshot(dir.path(), &["a.inc".to_owned()]).unwrap_err();
        assert!(err.to_string().contains("not UTF-8"), "{err}");
    }

    #[test]
    fn diff_of_a_changed_line() {
        let current = vec![SavedFile {
            path: "service-url.inc".to_owned(),
            contents: Some("# blue\nset $service_url http://127.0.0.1:18081;\n".to_owned()),
        }];
        let next = [file(
            "service-url.inc",
            "# green\nset $service_url http://127.0.0.1:18082;\n",
        )];
        assert_eq!(
            diff(&current, &next),
            "--- a/service-url.inc\n+++ b/service-url.inc\n@@ -1,2 +1,2 @@\n\
             -# blue\n-set $service_url http://127.0.0.1:18081;\n\
             +# green\n+set $service_url http://127.0.0.1:18082;\n"
        );
    }

    #[test]
    fn diff_shows_a_change_of_the_final_newline() {
        let current = vec![SavedFile {
            path: "a.inc".to_owned(),
            contents: Some("x\n".to_owned()),
        }];
        assert_eq!(
            diff(&current, &[file("a.inc", "x")]),
            "--- a/a.inc\n+++ b/a.inc\n@@ -1 +1 @@\n-x\n+x\n\\ No newline at end of file\n"
        );
        assert_eq!(
            diff(&[], &[file("empty.inc", "")]),
            "--- /dev/null\n+++ b/empty.inc\n"
        );
    }

    #[test]
    fn diff_of_new_unchanged_and_distant_changes() {
        let current = vec![
            SavedFile {
                path: "same.conf".to_owned(),
                contents: Some("x\n".to_owned()),
            },
            SavedFile {
                path: "long.conf".to_owned(),
                contents: Some("1\n2\n3\n4\n5\n6\n7\n8\n9\n10\n11\n12\n".to_owned()),
            },
        ];
        let next = [
            file("new.inc", "a\nb\n"),
            file("same.conf", "x\n"),
            file("long.conf", "one\n2\n3\n4\n5\n6\n7\n8\n9\n10\n11\n12\n13\n"),
        ];
        assert_eq!(
            diff(&current, &next),
            "--- /dev/null\n+++ b/new.inc\n@@ -0,0 +1,2 @@\n+a\n+b\n\
             \x20 same.conf (unchanged)\n\
             --- a/long.conf\n+++ b/long.conf\n\
             @@ -1,4 +1,4 @@\n-1\n+one\n 2\n 3\n 4\n\
             @@ -10,3 +10,4 @@\n 10\n 11\n 12\n+13\n"
        );
    }
}
