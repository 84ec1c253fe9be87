//! Who may read the operator's views (the dashboard, its event stream, `/metrics`):
//! clients on loopback, or — once a bearer token is configured — whoever sends it,
//! loopback included (behind a reverse proxy every client looks like loopback).
//!
//! The token comes from an environment variable and is held as a [`Secret`]: it is
//! never logged, echoed in a refusal, or stored.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};

use crate::secret::Secret;

/// Why a client may not read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// No token is configured and the client is not on loopback.
    NotLoopback,
    /// A token is configured and the request does not carry it.
    BadToken,
}

/// Whether a client at `peer` sending `headers` may read.
///
/// # Errors
/// The [`Refusal`] when it may not.
pub fn may_read(token: Option<&Secret>, peer: IpAddr, headers: &HeaderMap) -> Result<(), Refusal> {
    let Some(token) = token else {
        return if peer.to_canonical().is_loopback() {
            Ok(())
        } else {
            Err(Refusal::NotLoopback)
        };
    };
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    // Digests, not the strings: a comparison's time then says nothing of the token.
    match given {
        Some(given) if Sha256::digest(given) == Sha256::digest(token.expose()) => Ok(()),
        _ => Err(Refusal::BadToken),
    }
}

/// Middleware: 401 for a client [`may_read`] refuses. Needs the connection's
/// address (`into_make_service_with_connect_info::<SocketAddr>`).
pub async fn require(
    State(token): State<Arc<Option<Secret>>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    request: Request,
    next: Next,
) -> Response {
    match may_read(token.as_ref().as_ref(), peer.ip(), request.headers()) {
        Ok(()) => next.run(request).await,
        Err(refusal) => {
            let why = match refusal {
                Refusal::NotLoopback => {
                    "only loopback clients may read this without a bearer token; start the server with a token to allow others\n"
                }
                Refusal::BadToken => "send `Authorization: Bearer <token>`\n",
            };
            (
                StatusCode::UNAUTHORIZED,
                [(header::WWW_AUTHENTICATE, "Bearer")],
                why,
            )
                .into_response()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        let with = |value: &str| {
            let mut headers = HeaderMap::new();
            headers.insert("authorization", value.parse().unwrap());
            headers
        };
        for peer in [remote, loopback] {
            assert_eq!(may_read(Some(&token), peer, &with("Bearer t0ken")), Ok(()));
            for bad in ["Bearer t0ke", "Bearer t0ken2", "Basic t0ken", "t0ken"] {
                assert_eq!(
                    may_read(Some(&token), peer, &with(bad)),
                    Err(Refusal::BadToken)
                );
            }
            assert_eq!(may_read(Some(&token), peer, &none), Err(Refusal::BadToken));
        }
    }
}
