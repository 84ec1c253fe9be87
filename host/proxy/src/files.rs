//! The rendered proxy files on disk: refuse paths and contents that could escape or
//! flood the config directory, read the current contents, write new ones atomically
//! and put old ones back, and show the difference.
//!
//! Every write goes through [`crate::atomic_file`], so nginx never reads a half-written
//! file. Nothing outside the config directory is ever touched: every path is checked
//! before it is joined to the directory, and nothing is read, written or removed
//! through a symbolic link under it (an external `config_dir` is shared with whoever
//! manages nginx, and a linked subdirectory or file could point anywhere, e.g. at a
//! secret that a snapshot would copy into the state file). The directory itself may
//! be a link: that is the operator's choice in the config.

use std::fmt::Write as _;
use std::path::Path;

use super::ProxyError;
use crate::SavedFile;
use crate::atomic_file;
use crate::plugin::types::ProxyFile;
use crate::rendered::{self, Refusal};

/// Mode of the files written: nginx workers may run as another user and must read them.
const FILE_MODE: u32 = 0o644;

fn invalid(refusal: Refusal) -> ProxyError {
    ProxyError::InvalidFile {
        path: refusal.path,
        reason: refusal.reason,
    }
}

/// Checks one path relative to the config directory.
pub(crate) fn check_path(path: &str) -> Result<(), ProxyError> {
    rendered::check_path(path).map_err(invalid)
}

/// Checks a whole render: paths, duplicates, count, sizes, contents.
pub(crate) fn check_files(files: &[ProxyFile]) -> Result<(), ProxyError> {
    rendered::check(files.iter().map(|f| (f.path.as_str(), f.contents.as_str()))).map_err(invalid)
}

/// Refuses `path` under `dir` when any of its components, the file included, is a
/// symbolic link. A component that does not exist ends the check: nothing below it
/// can be a link yet (and a component that cannot be read fails the read or write
/// that follows, in its own words).
fn refuse_symlinks(dir: &Path, path: &str) -> Result<(), ProxyError> {
    let mut full = dir.to_path_buf();
    for part in path.split('/') {
        full.push(part);
        match std::fs::symlink_metadata(&full) {
            Ok(meta) if meta.file_type().is_symlink() => {
                return Err(ProxyError::Symlink {
                    link: full,
                    dir: dir.to_owned(),
                });
            }
            Ok(_) => {}
            Err(_) => return Ok(()),
        }
    }
    Ok(())
}

/// Reads the current contents of `paths` under `dir` (none for an absent file).
pub(crate) fn snapshot(dir: &Path, paths: &[String]) -> Result<Vec<SavedFile>, ProxyError> {
    paths
        .iter()
        .map(|path| {
            check_path(path)?;
            refuse_symlinks(dir, path)?;
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
                front: None,
            })
        })
        .collect()
}

/// Writes one file, creating its subdirectories inside `dir`.
fn write_one(dir: &Path, path: &str, contents: &str) -> Result<(), ProxyError> {
    refuse_symlinks(dir, path)?;
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
        // A link that appeared while the directories were made.
        refuse_symlinks(dir, path)?;
    }
    atomic_file::write(&full, contents.as_bytes(), FILE_MODE)?;
    Ok(())
}

/// Removes one file (already absent is fine) and makes the removal durable.
fn remove_one(dir: &Path, path: &str) -> Result<(), ProxyError> {
    refuse_symlinks(dir, path)?;
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
    use crate::rendered::{MAX_FILE_BYTES, MAX_FILES};

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
    fn a_symlinked_subdirectory_in_the_config_dir_is_never_written_through() {
        let dir = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink(outside.path(), dir.path().join("sub")).unwrap();
        std::fs::write(outside.path().join("secret.conf"), "password 1\n").unwrap();
        let is_symlink = |e: ProxyError, link: &str| {
            let text = e.to_string();
            assert!(
                matches!(&e, ProxyError::Symlink { link: l, .. } if l.ends_with(link)),
                "{text}"
            );
            assert!(text.contains("symbolic link"), "{text}");
        };

        let paths = ["sub/b.conf".to_owned()];
        let before = snapshot(dir.path(), &paths);
        is_symlink(before.unwrap_err(), "sub");
        let absent = [SavedFile {
            path: "sub/b.conf".into(),
            contents: None,
            front: None,
        }];
        let err = write_all(dir.path(), &[file("sub/b.conf", "b\n")], &absent).unwrap_err();
        is_symlink(err, "sub");
        assert!(
            !outside.path().join("b.conf").exists(),
            "written through the link"
        );

        // Nor read into a snapshot (and so the state file), restored or removed.
        let err = snapshot(dir.path(), &["sub/secret.conf".to_owned()]).unwrap_err();
        is_symlink(err, "sub");
        let gone = [SavedFile {
            path: "sub/secret.conf".into(),
            contents: None,
            front: None,
        }];
        is_symlink(restore_all(dir.path(), &gone).unwrap_err(), "sub");
        assert!(outside.path().join("secret.conf").exists());

        // A linked file is refused too; the directory itself may be a link.
        std::os::unix::fs::symlink(outside.path().join("secret.conf"), dir.path().join("a.inc"))
            .unwrap();
        is_symlink(
            write_all(dir.path(), &[file("a.inc", "x\n")], &[]).unwrap_err(),
            "a.inc",
        );
        let linked_dir = dir.path().join("conf");
        std::os::unix::fs::symlink(outside.path(), &linked_dir).unwrap();
        write_all(&linked_dir, &[file("c.conf", "c\n")], &[]).unwrap();
        assert!(outside.path().join("c.conf").exists());
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
            front: None,
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
            front: None,
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
                front: None,
            },
            SavedFile {
                path: "long.conf".to_owned(),
                contents: Some("1\n2\n3\n4\n5\n6\n7\n8\n9\n10\n11\n12\n".to_owned()),
                front: None,
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
