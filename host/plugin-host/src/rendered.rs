//! The rules every rendered proxy file must pass before anyone writes it: a relative
//! path inside the proxy's config directory in a plain alphabet, no duplicates,
//! bounded count and sizes, no control characters, and `{ }` blocks that balance the
//! way nginx reads them.
//!
//! Two modules apply them: the plugin host, which refuses a proxy-template plugin's
//! output, and the proxy, which checks again before writing. They live here, with no
//! dependency on either, so neither has to import the other.

/// At most this many files per render.
pub const MAX_FILES: usize = 32;
/// At most this many bytes per file.
pub const MAX_FILE_BYTES: usize = 1024 * 1024;
/// At most this many bytes in all files of a render.
pub const MAX_TOTAL_BYTES: usize = 4 * 1024 * 1024;
const MAX_PATH_BYTES: usize = 200;
const MAX_DEPTH: usize = 4;

/// Why a rendered file is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// The path as rendered.
    pub path: String,
    /// What is wrong with it, worded to follow the path ("is not …", "has …").
    pub reason: String,
}

fn invalid(path: &str, reason: impl Into<String>) -> Refusal {
    Refusal {
        path: path.to_owned(),
        reason: reason.into(),
    }
}

/// Checks one path relative to the config directory.
pub fn check_path(path: &str) -> Result<(), Refusal> {
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

/// Checks a whole render of `(path, contents)` pairs: paths, duplicates, count, sizes,
/// control characters and balanced blocks.
///
/// # Errors
/// The first [`Refusal`].
pub fn check<'a>(files: impl IntoIterator<Item = (&'a str, &'a str)>) -> Result<(), Refusal> {
    let files: Vec<(&str, &str)> = files.into_iter().collect();
    if files.is_empty() {
        return Err(invalid(
            "",
            "is missing: the template rendered no files, so the proxy would have nothing to switch to",
        ));
    }
    if files.len() > MAX_FILES {
        return Err(invalid(
            files[0].0,
            format!(
                "is one of {} rendered files; at most {MAX_FILES} are accepted",
                files.len()
            ),
        ));
    }
    let mut total = 0usize;
    for (i, &(path, contents)) in files.iter().enumerate() {
        check_path(path)?;
        if files[..i].iter().any(|f| f.0 == path) {
            return Err(invalid(path, "appears twice in the render"));
        }
        if contents.len() > MAX_FILE_BYTES {
            return Err(invalid(
                path,
                format!(
                    "has {} bytes; at most {MAX_FILE_BYTES} are accepted",
                    contents.len()
                ),
            ));
        }
        if let Some(c) = contents
            .chars()
            .find(|&c| c.is_control() && !matches!(c, '\n' | '\r' | '\t'))
        {
            return Err(invalid(
                path,
                format!(
                    "contains the control character {:?}",
                    c.escape_default().to_string()
                ),
            ));
        }
        check_blocks(contents)
            .map_err(|reason| invalid(path, format!("is not well-formed nginx: {reason}")))?;
        total += contents.len();
    }
    if total > MAX_TOTAL_BYTES {
        return Err(invalid(
            files[0].0,
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
