//! The file that pauses a service at the front door: while it is in the proxy's
//! config directory, nginx answers every request of the service's location with 503
//! and the maintenance page, before it would proxy anything. It is included with the
//! rendered files (the managed nginx loads `conf.d/*.inc` in the location; an external
//! nginx needs `include <dir>/<service>-paused*.inc;`), so pausing and resuming are a
//! write, a config test and a graceful reload: the containers are not touched.

use crate::plugin::types::ProxyFile;

/// The largest maintenance page, in bytes (nginx keeps it in its config).
pub const MAX_PAGE: usize = 64 * 1024;

/// How long clients are told to wait before they retry.
const RETRY_AFTER_SECS: u32 = 30;

/// What a paused service answers when the config names no page.
pub const DEFAULT_PAGE: &str = "<!doctype html>\n<html><head><meta charset=\"utf-8\"><title>Down for maintenance</title></head>\n<body><h1>Down for maintenance</h1><p>We will be back shortly.</p></body></html>\n";

/// The pause file's path in the config directory.
pub fn path(service: &str) -> String {
    format!("{service}-paused.inc")
}

/// Why a page cannot be served from nginx's config.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PageError {
    /// Too big for a config string.
    #[error("it is {0} bytes; keep a maintenance page under {MAX_PAGE} bytes")]
    TooLarge(usize),
    /// Holds a NUL or another control character nginx's config cannot carry.
    #[error(
        "it holds the control character {0:?}; a maintenance page is text (tabs and line breaks are fine)"
    )]
    Control(char),
}

/// The pause file for `service`: 503, `Retry-After`, and `page` as HTML.
///
/// # Errors
/// [`PageError`] when `page` cannot be put into nginx's config.
pub fn file(service: &str, page: &str, since: &str) -> Result<ProxyFile, PageError> {
    if page.len() > MAX_PAGE {
        return Err(PageError::TooLarge(page.len()));
    }
    if let Some(c) = page
        .chars()
        .find(|c| c.is_control() && !matches!(c, '\n' | '\r' | '\t'))
    {
        return Err(PageError::Control(c));
    }
    Ok(ProxyFile {
        path: path(service),
        contents: format!(
            "# Written by `cutover pause` for {service} at {since}; `cutover resume` removes it.\n\
             default_type text/html;\n\
             add_header Retry-After {RETRY_AFTER_SECS} always;\n\
             add_header Cache-Control no-store always;\n\
             return 503 \"{}\";\n",
            quoted(page)
        ),
    })
}

/// `page` inside an nginx double-quoted string. A backslash and a quote are escaped;
/// `$` would start a variable (nginx has no escape for it), so it becomes `&#36;`,
/// which a browser shows as `$`.
fn quoted(page: &str) -> String {
    let mut out = String::with_capacity(page.len());
    for c in page.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '$' => out.push_str("&#36;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_cannot_break_out_of_its_string() {
        let f = file("shop", "a \"quote\" \\ and $host\n", "now").unwrap();
        assert_eq!(f.path, "shop-paused.inc");
        assert!(
            f.contents
                .contains("return 503 \"a \\\"quote\\\" \\\\ and &#36;host\n\";"),
            "{}",
            f.contents
        );
        assert!(crate::check_rendered(std::slice::from_ref(&f)).is_ok());
        assert_eq!(
            file("shop", "a\0b", "now").unwrap_err(),
            PageError::Control('\0')
        );
        assert!(matches!(
            file("shop", &"x".repeat(MAX_PAGE + 1), "now"),
            Err(PageError::TooLarge(_))
        ));
    }
}
