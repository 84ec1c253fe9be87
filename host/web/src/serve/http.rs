//! The HTTP side of the server: the routes, reading a body within its limits, and
//! turning a verified push into a queued run (or the answer that says why not). The
//! checks run in the order the module docs of `serve` list; nothing here runs git or
//! a deploy.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use futures_util::StreamExt;
use serde_json::json;

use super::App;
use super::auth::{signature_header, signature_ok};
use super::push::{Parsed, Push, parse_github, parse_trigger};
use super::queue::DeployRun;
use super::replay::{body_key, delivery_key};
use crate::access::Refusal;
use crate::sync::guard;

/// A client must send its whole body within this time.
const BODY_TIMEOUT: Duration = Duration::from_secs(30);

/// The server's routes.
pub(super) fn router(app: Arc<App>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/deploys", get(list_deploys))
        .route("/hooks/github", post(github_hook))
        .route("/hooks/trigger", post(trigger_hook))
        .with_state(app.clone())
        .merge(super::views::router(app))
}

/// A JSON answer.
pub(super) fn reply(status: StatusCode, body: serde_json::Value) -> Response {
    (status, axum::Json(body)).into_response()
}

/// Why a body could not be read.
enum BodyError {
    TooLarge,
    Timeout,
    Broken,
}

/// Reads at most `limit` bytes; refuses early on a larger `Content-Length`.
async fn read_body(headers: &HeaderMap, body: Body, limit: usize) -> Result<Vec<u8>, BodyError> {
    let declared = headers
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(BodyError::TooLarge);
    }
    let read = async {
        let mut stream = body.into_data_stream();
        let mut buf = Vec::new();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|_| BodyError::Broken)?;
            if buf.len() + chunk.len() > limit {
                return Err(BodyError::TooLarge);
            }
            buf.extend_from_slice(&chunk);
        }
        Ok(buf)
    };
    tokio::time::timeout(BODY_TIMEOUT, read)
        .await
        .unwrap_or(Err(BodyError::Timeout))
}

async fn github_hook(State(app): State<Arc<App>>, request: Request) -> Response {
    hook(&app, request, parse_github).await
}

async fn trigger_hook(State(app): State<Arc<App>>, request: Request) -> Response {
    hook(&app, request, parse_trigger).await
}

/// The checks every hook shares, in the documented order, then `parse` and queue.
async fn hook(
    app: &Arc<App>,
    request: Request,
    parse: fn(&HeaderMap, &[u8]) -> Result<Parsed, String>,
) -> Response {
    let (parts, body) = request.into_parts();
    let unauthorized = || {
        reply(
            StatusCode::UNAUTHORIZED,
            json!({"error": "missing or bad X-Hub-Signature-256 (HMAC-SHA256 of the body with the shared secret)"}),
        )
    };
    let Some(signature) = signature_header(&parts.headers) else {
        tracing::warn!(path = %parts.uri.path(), "refused a request without a well-formed signature");
        return unauthorized();
    };
    let body = match read_body(&parts.headers, body, app.max_body).await {
        Ok(body) => body,
        Err(BodyError::TooLarge) => {
            tracing::warn!(path = %parts.uri.path(), limit = app.max_body, "refused a body over the size limit");
            return reply(
                StatusCode::PAYLOAD_TOO_LARGE,
                json!({"error": format!("body over {} bytes (`max_body_bytes`)", app.max_body)}),
            );
        }
        Err(BodyError::Timeout) => {
            return reply(
                StatusCode::REQUEST_TIMEOUT,
                json!({"error": "body not received in time"}),
            );
        }
        Err(BodyError::Broken) => {
            return reply(
                StatusCode::BAD_REQUEST,
                json!({"error": "the body could not be read"}),
            );
        }
    };
    if !signature_ok(&app.secret, &signature, &body) {
        tracing::warn!(path = %parts.uri.path(), "refused a request whose signature does not match its body");
        return unauthorized();
    }
    let push = match parse(&parts.headers, &body) {
        Ok(Parsed::Push(push)) => push,
        Ok(Parsed::Reply(response)) => return response,
        Err(message) => {
            tracing::warn!(path = %parts.uri.path(), error = %message, "refused a signed request that is not a usable push");
            return reply(StatusCode::BAD_REQUEST, json!({ "error": message }));
        }
    };
    accept(app, push, body_key(&body))
}

/// Queues a verified push for its repository's worker, unless it is malformed, for
/// another repository or ref, a replay, or the server is stopping.
fn accept(app: &Arc<App>, push: Push, digest: String) -> Response {
    if !push.is_well_formed() {
        return reply(
            StatusCode::BAD_REQUEST,
            json!({"error": "expected a full hex sha, a `refs/...` ref and a delivery id of letters, digits, `-`, `_` or `.`"}),
        );
    }
    let Some(worker) = app.workers.get(&push.repository.to_lowercase()) else {
        tracing::warn!(delivery = %push.delivery, repository = %push.repository, "push for a repository that is not configured");
        return reply(
            StatusCode::NOT_FOUND,
            json!({"error": format!("repository `{}` is not configured on this server", push.repository)}),
        );
    };
    if !worker.repo.wants(&push.git_ref) {
        tracing::info!(delivery = %push.delivery, git_ref = %push.git_ref, "push to a ref this repository does not deploy");
        return reply(
            StatusCode::ACCEPTED,
            json!({"status": "ignored", "reason": format!("`{}` is not in the repository's `refs`", push.git_ref)}),
        );
    }
    // Checked before the delivery is recorded, so GitHub may deliver it again later.
    if *app.stop.borrow() {
        return reply(
            StatusCode::SERVICE_UNAVAILABLE,
            json!({"error": "the server is shutting down; deliver again once it is back"}),
        );
    }
    if !guard(&app.seen).accept(&[delivery_key(&push.delivery), digest.clone()]) {
        tracing::info!(delivery = %push.delivery, "replayed delivery ignored");
        return reply(
            StatusCode::OK,
            json!({"status": "duplicate", "delivery": push.delivery}),
        );
    }
    let run = DeployRun::accepted(push, worker.repo.name.clone(), digest);
    let superseded = guard(&app.queue).enqueue(&worker.key, run.clone());
    worker.wake.notify_one();
    tracing::info!(
        delivery = %run.delivery,
        repository = %run.repository,
        git_ref = %run.git_ref,
        sha = %run.sha,
        superseded = superseded.as_deref(),
        "push queued"
    );
    reply(
        StatusCode::ACCEPTED,
        json!({"status": "queued", "delivery": run.delivery, "sha": run.sha}),
    )
}

/// `GET /deploys`, for loopback clients or holders of the bearer token.
async fn list_deploys(
    State(app): State<Arc<App>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
) -> Response {
    match app.access.may_read(peer.ip(), &headers) {
        Ok(()) => {}
        Err(Refusal::WrongHost) => {
            tracing::warn!(%peer, "refused GET /deploys naming a host that is not allowed");
            return reply(
                StatusCode::MISDIRECTED_REQUEST,
                json!({"error": "`GET /deploys` answers requests for localhost, 127.0.0.1 and [::1] only; add the name you use to `allowed_hosts`"}),
            );
        }
        Err(Refusal::NotLoopback) => {
            tracing::warn!(%peer, "refused GET /deploys from a non-loopback client");
            return reply(
                StatusCode::FORBIDDEN,
                json!({"error": "`GET /deploys` answers loopback clients only; set `deploys_token_env` to open it to other addresses with a bearer token"}),
            );
        }
        Err(Refusal::BadToken) => {
            tracing::warn!(%peer, "refused GET /deploys without the bearer token");
            let mut response = reply(
                StatusCode::UNAUTHORIZED,
                json!({"error": "missing or wrong `Authorization: Bearer <token>` (the token is in the server's `deploys_token_env` variable)"}),
            );
            response.headers_mut().insert(
                axum::http::header::WWW_AUTHENTICATE,
                axum::http::HeaderValue::from_static("Bearer"),
            );
            return response;
        }
    }
    let runs = guard(&app.queue).runs();
    reply(StatusCode::OK, json!({ "deploys": runs }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn bodies_over_the_limit_are_refused_declared_or_streamed() {
        let mut headers = HeaderMap::new();
        let body = || Body::from(vec![b'x'; 101]);
        assert!(matches!(read_body(&headers, body(), 101).await, Ok(b) if b.len() == 101));
        assert!(matches!(
            read_body(&headers, body(), 100).await,
            Err(BodyError::TooLarge)
        ));
        headers.insert("content-length", "1000000".parse().unwrap());
        let never = Body::from_stream(futures_util::stream::pending::<
            Result<Vec<u8>, std::io::Error>,
        >());
        assert!(
            matches!(
                read_body(&headers, never, 100).await,
                Err(BodyError::TooLarge)
            ),
            "refused on the declared length, before reading"
        );
    }
}
