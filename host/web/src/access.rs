//! Who may read the operator's views (the dashboard, its event stream, `/metrics`,
//! serve's `/deploys`): clients on loopback, or — once a bearer token is configured —
//! whoever proves they hold it, loopback included (behind a reverse proxy every client
//! looks like loopback).
//!
//! A script proves it with `Authorization: Bearer <token>`. A browser cannot add that
//! header to a page load or an `EventSource`, and a token in a URL ends up in proxy and
//! history logs, so a browser posts the token once to `login` (a form, no script) and
//! gets an `HttpOnly`, `SameSite=Strict` cookie holding a signed session that expires
//! after 12 hours, ends at `logout` and at a restart (see `session`); it holds nothing
//! derived from the token. Failed logins are limited per peer address (429 with
//! `Retry-After`). Token and session are compared in constant time.
//!
//! The token comes from an environment variable and is held as a [`Secret`]: it is
//! never logged, echoed in a refusal, or stored. Links here are relative, so the views
//! work behind a proxy that mounts them under a path prefix.

mod session;

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use axum::Router;
use axum::extract::{ConnectInfo, DefaultBodyLimit, Form, Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum_extra::extract::cookie::{Cookie, CookieJar, SameSite};
use hmac::digest::CtOutput;
use maud::{Markup, html};
use sha2::{Digest, Sha256};

use crate::secret::Secret;

/// The cookie a browser holds after logging in with the token.
pub const COOKIE: &str = "cutover_session";

/// The most a login form may send; a token is far shorter.
const LOGIN_BODY_LIMIT: usize = 4096;

/// Why a client may not read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// No token is configured and the client is not on loopback.
    NotLoopback,
    /// No token is configured and the request names a host that is neither a loopback
    /// name nor an allowed one: a page of another site whose name was rebound to
    /// 127.0.0.1 (DNS rebinding) would otherwise read as a loopback client.
    WrongHost,
    /// A token is configured and the request carries neither it nor the login cookie.
    BadToken,
}

/// The names a loopback client's `Host` may carry, with any port.
const LOOPBACK_HOSTS: &[&str] = &["localhost", "127.0.0.1", "[::1]"];

/// The access rule of the operator's views: the token, when one is configured, and
/// the host names besides loopback's that requests may name.
#[derive(Debug)]
pub struct Access {
    token: Option<Secret>,
    /// Lowercase, without a port.
    allowed_hosts: Vec<String>,
    sessions: session::Sessions,
}

impl Access {
    /// The rule for `token`, answering requests whose `Host` is a loopback name or one
    /// of `allowed_hosts` (names, any port); login sessions are signed with a key made
    /// now.
    ///
    /// # Errors
    /// When the system's random source cannot be read for that key.
    pub fn new(token: Option<Secret>, allowed_hosts: &[String]) -> std::io::Result<Access> {
        Ok(Access {
            token,
            allowed_hosts: allowed_hosts
                .iter()
                .map(|h| host_name(h).to_ascii_lowercase())
                .collect(),
            sessions: session::Sessions::new()?,
        })
    }

    /// Whether a client at `peer` sending `headers` may read: with no token, only
    /// from loopback and naming a loopback or allowed host; with one, from anywhere
    /// with `Authorization: Bearer <token>` or the [`COOKIE`] that [`login`](routes)
    /// set.
    ///
    /// # Errors
    /// The [`Refusal`] when it may not.
    pub fn may_read(&self, peer: IpAddr, headers: &HeaderMap) -> Result<(), Refusal> {
        let Some(token) = &self.token else {
            if !peer.to_canonical().is_loopback() {
                return Err(Refusal::NotLoopback);
            }
            return if self.host_allowed(headers) {
                Ok(())
            } else {
                Err(Refusal::WrongHost)
            };
        };
        let bearer = headers
            .get_all(header::AUTHORIZATION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .filter_map(|v| v.strip_prefix("Bearer "))
            .any(|given| same(given, token.expose()));
        let session = CookieJar::from_headers(headers)
            .get(COOKIE)
            .is_some_and(|given| self.sessions.verify(given.value()));
        if bearer || session {
            Ok(())
        } else {
            Err(Refusal::BadToken)
        }
    }

    /// Whether the request's `Host` names loopback or an allowed host. A request with
    /// no `Host` (HTTP/1.0) names nothing and is refused.
    fn host_allowed(&self, headers: &HeaderMap) -> bool {
        let Some(host) = headers.get(header::HOST).and_then(|v| v.to_str().ok()) else {
            return false;
        };
        let name = host_name(host.trim()).to_ascii_lowercase();
        LOOPBACK_HOSTS.contains(&name.as_str()) || self.allowed_hosts.contains(&name)
    }
}

/// `host` without its port: `example.com:9322` → `example.com`, `[::1]:80` → `[::1]`.
fn host_name(host: &str) -> &str {
    if host.starts_with('[') {
        return host.find(']').map_or(host, |end| &host[..=end]);
    }
    match host.rsplit_once(':') {
        Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) => name,
        _ => host,
    }
}

/// Whether `name` may be given as an allowed host: a DNS name or an address, without
/// a port or a path.
pub fn valid_host(name: &str) -> bool {
    !name.is_empty()
        && host_name(name) == name
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-.[]:".contains(&b))
}

/// Equal strings, in time that does not depend on where they differ: their digests
/// are compared with `subtle` (through `CtOutput`), so neither the token's length nor
/// a matching prefix shows in the timing.
fn same(given: &str, expected: &str) -> bool {
    CtOutput::<Sha256>::new(Sha256::digest(given)) == CtOutput::new(Sha256::digest(expected))
}

/// The access rule, shared by the routes.
pub type Token = Arc<Access>;

/// Middleware: answers a client [`Access::may_read`] refuses with 401 (421 for a host
/// that is not allowed). A browser (it accepts HTML) gets the login form when a token
/// would let it in. Needs the connection's address (`ConnectInfo<SocketAddr>`).
pub async fn require(
    State(token): State<Token>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    request: Request,
    next: Next,
) -> Response {
    let refusal = match token.may_read(peer.ip(), request.headers()) {
        Ok(()) => return next.run(request).await,
        Err(refusal) => refusal,
    };
    let path = request.uri().path();
    tracing::warn!(%peer, path, ?refusal, "refused a read of the operator's views");
    let browser = request
        .headers()
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("text/html"));
    let mut response = match refusal {
        Refusal::NotLoopback => (
            StatusCode::UNAUTHORIZED,
            "only loopback clients may read this; configure a bearer token to let others in (then log in or send `Authorization: Bearer <token>`)\n",
        )
            .into_response(),
        Refusal::WrongHost => (
            StatusCode::MISDIRECTED_REQUEST,
            "this server answers requests for localhost, 127.0.0.1 and [::1] only; add the name you use to `allowed_hosts` (serve) or `--allowed-host` (dashboard)\n",
        )
            .into_response(),
        Refusal::BadToken if browser => (
            StatusCode::UNAUTHORIZED,
            login_page(&up_to_root(path), &root_relative(path), None),
        )
            .into_response(),
        Refusal::BadToken => (
            StatusCode::UNAUTHORIZED,
            "send `Authorization: Bearer <token>`, or log in with the token at `login` for a cookie\n",
        )
            .into_response(),
    };
    response
        .headers_mut()
        .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    response
}

/// `GET login` (the form), `POST login` (check the token, set [`COOKIE`]) and
/// `POST logout` (end the session), open to every client: layer [`require`] only on
/// the other routes.
pub fn routes(token: Token) -> Router {
    Router::new()
        .route("/login", get(login_form).post(login))
        .route("/logout", post(logout))
        .layer(DefaultBodyLimit::max(LOGIN_BODY_LIMIT))
        .with_state(token)
}

/// The login form's fields, and `GET login`'s query.
#[derive(Debug, Default, serde::Deserialize)]
struct LoginForm {
    #[serde(default)]
    token: String,
    #[serde(default)]
    next: String,
}

async fn login_form(Query(query): Query<LoginForm>) -> Markup {
    login_page("", &safe_next(&query.next), None)
}

/// The [`COOKIE`] holding `value` for `max_age`: sent on every path (the views and
/// `login` share it), never readable by a script, never sent along from another site.
fn session_cookie(value: String, max_age: std::time::Duration) -> Cookie<'static> {
    Cookie::build((COOKIE, value))
        .path("/")
        // Unreachable for the durations used here (12 hours, zero).
        .max_age(max_age.try_into().unwrap_or(time::Duration::MAX))
        .http_only(true)
        .same_site(SameSite::Strict)
        .build()
}

/// `POST logout`: revokes the session the request carries and clears its cookie.
async fn logout(
    State(access): State<Token>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    jar: CookieJar,
) -> (CookieJar, Redirect) {
    if let Some(session) = jar.get(COOKIE) {
        access.sessions.revoke(session.value());
    }
    tracing::info!(%peer, "logged out");
    // `add`, not `remove`: the cookie is cleared even when the request sent none.
    let cleared = session_cookie(String::new(), std::time::Duration::ZERO);
    (jar.add(cleared), Redirect::to("login"))
}

async fn login(
    State(access): State<Token>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Form(form): Form<LoginForm>,
) -> Response {
    let secure = headers
        .get("x-forwarded-proto")
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"https"));
    let next = safe_next(&form.next);
    let Some(token) = access.token.as_ref() else {
        return (
            StatusCode::NOT_FOUND,
            "no token is configured here: only loopback clients may read\n",
        )
            .into_response();
    };
    if let Some(wait) = access.sessions.retry_after(peer.ip()) {
        tracing::warn!(%peer, "refused a login: too many wrong tokens from this address");
        let mut response = (
            StatusCode::TOO_MANY_REQUESTS,
            format!(
                "too many wrong tokens from this address ({} a minute at most); try again in {} s\n",
                session::MAX_FAILURES,
                wait.as_secs() + 1
            ),
        )
            .into_response();
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(wait.as_secs() + 1));
        return response;
    }
    if !same(&form.token, token.expose()) {
        access.sessions.failed(peer.ip());
        tracing::warn!(%peer, "refused a login with a wrong token");
        return (
            StatusCode::UNAUTHORIZED,
            login_page("", &next, Some("That is not the token.")),
        )
            .into_response();
    }
    tracing::info!(%peer, "logged in with the token");
    let mut cookie = session_cookie(access.sessions.issue(), session::LIFETIME);
    cookie.set_secure(secure);
    // Relative to `login`, so a path prefix added by a proxy is kept; `safe_next` let
    // only path characters through, so it is a valid `Location` (`Redirect` panics on
    // one that is not).
    let location = if next.is_empty() { "./" } else { next.as_str() };
    (CookieJar::new().add(cookie), Redirect::to(location)).into_response()
}

/// The login page: a password field posted to `{up}login`, coming back to `next`
/// (relative to the views' root) afterwards.
fn login_page(up: &str, next: &str, error: Option<&str>) -> Markup {
    let body = html! {
        h1 { "cutover · log in" }
        @if let Some(error) = error {
            div class="reason" { (error) }
        }
        form class="card" method="post" action={ (up) "login" } {
            label {
                "token "
                input type="password" name="token" autocomplete="current-password" required autofocus;
            }
            input type="hidden" name="next" value=(next);
            // The space the field and the button stand apart by.
            " "
            button type="submit" { "log in" }
        }
        p class="meta" {
            "The token is the one in the server's environment variable. It is sent once, in this form's body; \
             the browser keeps a session cookie for 12 hours (or until you log out)."
        }
    };
    crate::html::page("cutover · log in", body, None)
}

/// The relative way from `path` back to the views' root: `""` for `/metrics`,
/// `"../../"` for `/services/web/events`.
fn up_to_root(path: &str) -> String {
    "../".repeat(path.trim_start_matches('/').matches('/').count())
}

/// `path` relative to the root (`services/web/`), if it is safe to redirect to.
fn root_relative(path: &str) -> String {
    safe_next(path.trim_start_matches('/'))
}

/// `next` when it is a plain relative path (letters, digits, `/ _ . -`, no `..`, not
/// starting with `/`), else empty: a login must not redirect to another site.
fn safe_next(next: &str) -> String {
    let plain = next.len() <= 256
        && !next.starts_with('/')
        && !next.contains("..")
        && next
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"/_.-".contains(&b));
    if plain {
        next.to_owned()
    } else {
        String::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with(name: &str, value: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(
            axum::http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
            value.parse().unwrap(),
        );
        headers
    }

    /// The rule for `token` and no allowed host, asked by a client naming a loopback
    /// host unless `headers` name one.
    fn may_read(token: Option<&Secret>, peer: IpAddr, headers: &HeaderMap) -> Result<(), Refusal> {
        let mut headers = headers.clone();
        headers
            .entry(header::HOST)
            .or_insert(HeaderValue::from_static("127.0.0.1:9322"));
        Access::new(token.cloned(), &[])
            .unwrap()
            .may_read(peer, &headers)
    }

    /// Regression (DNS rebinding): with no token only the peer address was checked, so
    /// a page of `evil.example` whose name was rebound to 127.0.0.1 read the views
    /// through the victim's browser.
    #[test]
    fn a_rebound_host_name_is_refused_on_loopback_without_a_token() {
        let loopback: IpAddr = "127.0.0.1".parse().unwrap();
        let access = Access::new(None, &["Deploy.Example".to_owned()]).unwrap();
        for good in [
            "localhost",
            "localhost:9322",
            "127.0.0.1:9322",
            "[::1]:9322",
            "[::1]",
            "LOCALHOST",
            "deploy.example",
            "deploy.example:443",
        ] {
            assert_eq!(
                access.may_read(loopback, &with("host", good)),
                Ok(()),
                "{good}"
            );
        }
        for bad in [
            "evil.example",
            "evil.example:9322",
            "localhost.evil.example",
            "127.0.0.1.evil.example",
            "deploy.example.evil",
        ] {
            assert_eq!(
                access.may_read(loopback, &with("host", bad)),
                Err(Refusal::WrongHost),
                "{bad}"
            );
        }
        assert_eq!(
            access.may_read(loopback, &HeaderMap::new()),
            Err(Refusal::WrongHost),
            "no Host at all"
        );
        // With a token the token decides: a rebound page holds neither it nor the cookie.
        let token = Access::new(Some(Secret::new("t0ken")), &[]).unwrap();
        let mut headers = with("host", "evil.example");
        headers.insert(header::AUTHORIZATION, "Bearer t0ken".parse().unwrap());
        assert_eq!(token.may_read(loopback, &headers), Ok(()));
        assert!(valid_host("deploy.example") && valid_host("10.0.0.5") && valid_host("[::1]"));
        for bad in ["", "a:80", "a/b", "a b", "*.example"] {
            assert!(!valid_host(bad), "{bad}");
        }
    }

    #[test]
    fn loopback_only_unless_a_token_is_configured_then_the_token_everywhere() {
        let none = HeaderMap::new();
        let loopback: IpAddr = "127.0.0.1".parse().unwrap();
        let mapped: IpAddr = "::ffff:127.0.0.1".parse().unwrap();
        let remote: IpAddr = "203.0.113.7".parse().unwrap();
        assert_eq!(may_read(None, loopback, &none), Ok(()));
        assert_eq!(may_read(None, mapped, &none), Ok(()));
        assert_eq!(may_read(None, remote, &none), Err(Refusal::NotLoopback));
        let token = Secret::new("t0ken");
        for peer in [remote, loopback] {
            let auth = |v: &str| with("authorization", v);
            assert_eq!(may_read(Some(&token), peer, &auth("Bearer t0ken")), Ok(()));
            for bad in ["Bearer t0ke", "Bearer t0ken2", "Basic t0ken", "t0ken"] {
                assert_eq!(
                    may_read(Some(&token), peer, &auth(bad)),
                    Err(Refusal::BadToken)
                );
            }
            assert_eq!(may_read(Some(&token), peer, &none), Err(Refusal::BadToken));
        }
    }

    #[test]
    fn the_login_cookie_lets_a_browser_in_from_anywhere_and_holds_no_token() {
        let token = Secret::new("t0ken");
        let remote: IpAddr = "203.0.113.7".parse().unwrap();
        let access = Access::new(Some(token.clone()), &[]).unwrap();
        let session = access.sessions.issue();
        assert!(!session.contains("t0ken"));
        let cookie = |v: &str| with("cookie", v);
        for good in [
            format!("{COOKIE}={session}"),
            format!("theme=dark; {COOKIE}={session}; x=1"),
        ] {
            assert_eq!(access.may_read(remote, &cookie(&good)), Ok(()));
        }
        let elsewhere = Access::new(Some(token), &[]).unwrap().sessions.issue();
        for bad in [
            format!("{COOKIE}={}", &session[1..]),
            format!("{COOKIE}=t0ken"),
            format!("other={session}"),
            format!("{COOKIE}={elsewhere}"),
        ] {
            assert_eq!(
                access.may_read(remote, &cookie(&bad)),
                Err(Refusal::BadToken),
                "{bad}"
            );
        }
        // No token configured: a cookie is no way past the loopback rule.
        assert_eq!(
            may_read(None, remote, &cookie(&format!("{COOKIE}={session}"))),
            Err(Refusal::NotLoopback)
        );
    }

    #[test]
    fn the_login_page_escapes_its_error_and_next() {
        use crate::html::fixtures::{HOSTILE, assert_escaped};
        let page = login_page("", HOSTILE, Some(HOSTILE)).into_string();
        assert_escaped(&page, &["value=\"", "<div class=\"reason\">"], 0);
    }

    #[test]
    fn login_redirects_only_to_relative_paths_and_links_back_to_the_root() {
        assert_eq!(safe_next("services/web/"), "services/web/");
        for bad in [
            "/x",
            "//evil.example/",
            "https://evil.example",
            "a/../../b",
            "a b",
            "a?x=1",
        ] {
            assert_eq!(safe_next(bad), "", "{bad}");
        }
        assert_eq!(up_to_root("/"), "");
        assert_eq!(up_to_root("/metrics"), "");
        assert_eq!(up_to_root("/services/web/"), "../../");
        assert_eq!(up_to_root("/services/web/events"), "../../");
        assert_eq!(root_relative("/services/web/"), "services/web/");
    }
}
