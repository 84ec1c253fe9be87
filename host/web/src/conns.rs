//! The server's TCP connections: accepting them, bounding how many are open and how
//! long a client may take to send a request head, and closing them at shutdown. It
//! never reads or answers a request itself; the router does. `cutover serve` and
//! `cutover dashboard` both run on it.
//!
//! Every connection holds a file descriptor, and one client that opens thousands of
//! connections and never finishes a request (slowloris) must not starve the webhooks
//! or the deploys (which need descriptors for git and for their pipes). So:
//! - hyper closes a connection whose request head has not arrived within
//!   `header_timeout` (the timer also runs on an idle keep-alive connection);
//! - at most `max_connections` are open, lowered to fit under the process's
//!   open-file limit;
//! - at the cap a new connection is still taken, and the oldest connection with no
//!   request in progress is closed to make room: a flood of half-sent requests pushes
//!   out its own connections rather than a webhook whose request arrives whole. The
//!   newcomer waits (at most [`ADMIT_WAIT`]) until that connection's socket is really
//!   closed, so the cap counts descriptors held, not promises. Only when every open
//!   connection has a request in progress is the newcomer closed instead. Either way
//!   the accept queue keeps moving, so a webhook does not wait long in it behind the
//!   flood.
//!
//! A request is in progress until its whole response has been written, body
//! included: an event stream is a response that never ends, so its connection is
//! busy for as long as the stream is open (closing it gracefully would never finish).
//!
//! A connection that never completed a request head is dropped outright (hyper's
//! graceful shutdown would leave it open until its header timeout); one that has
//! answered a request is shut down gracefully, so a response being written is not cut
//! off.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, oneshot, watch};
use tokio::task::JoinSet;
use tower::ServiceExt;

use crate::sync::guard;

/// Descriptors kept free for everything but client connections: the runtime, the
/// listener, the state files, and per repository a git or deploy child's pipes.
const RESERVED_FDS: u64 = 64;
const RESERVED_FDS_PER_REPOSITORY: u64 = 8;
/// The fewest connections the open-file limit may lower the cap to.
const MIN_CONNECTIONS: usize = 8;
/// At most one "connections closed to make room" log line per this period, so a flood
/// does not become a flood of log lines.
const SHED_REPORT_EVERY: Duration = Duration::from_secs(10);
/// How long a newcomer waits at the cap for the connection closed to make room.
const ADMIT_WAIT: Duration = Duration::from_secs(2);

/// How many connections may be open and how long a request head may take.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    /// Open connections at most.
    pub(crate) max_connections: usize,
    /// A connection that has not sent a whole request head within this is closed.
    pub(crate) header_timeout: Duration,
}

impl Limits {
    /// `configured`, with the connection cap lowered when the process's open-file
    /// limit could not hold it next to what `repositories` deploys need.
    pub(crate) fn fitted(configured: Limits, repositories: usize) -> Limits {
        let soft = rustix::process::getrlimit(rustix::process::Resource::Nofile).current;
        let Some(soft) = soft else {
            return configured;
        };
        let reserved = RESERVED_FDS + RESERVED_FDS_PER_REPOSITORY * repositories as u64;
        let room = usize::try_from(soft.saturating_sub(reserved))
            .unwrap_or(usize::MAX)
            .max(MIN_CONNECTIONS);
        if room >= configured.max_connections {
            return configured;
        }
        tracing::warn!(
            configured = configured.max_connections,
            max_connections = room,
            open_file_limit = soft,
            "max_connections lowered to fit the open-file limit; raise the limit (LimitNOFILE=) to allow more"
        );
        Limits {
            max_connections: room,
            ..configured
        }
    }
}

/// No request head has arrived yet.
const FRESH: u8 = 0;
/// A request is in the router, or its response is still being written.
const BUSY: u8 = 1;
/// At least one request was answered and none is in progress.
const SERVED: u8 = 2;
/// Chosen to be closed before any request arrived: the service refuses one that
/// arrives anyway, and the connection is dropped.
const DROPPED: u8 = 3;

/// A connection's state (one of the constants above), shared by the accept loop, the
/// connection's task and its service.
#[derive(Clone, Default)]
struct State(Arc<AtomicU8>);

impl State {
    /// Marks a connection that has not sent a whole request head as to be dropped;
    /// false when a request has arrived.
    fn drop_if_fresh(&self) -> bool {
        match self
            .0
            .compare_exchange(FRESH, DROPPED, Ordering::AcqRel, Ordering::Acquire)
        {
            Ok(_) => true,
            Err(state) => state == DROPPED,
        }
    }

    /// A request arrived: busy until the returned guard drops; none when the
    /// connection is being dropped.
    fn start_request(&self) -> Option<Busy> {
        self.0
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |state| {
                (state != DROPPED).then_some(BUSY)
            })
            .ok()
            .map(|_| Busy(self.clone()))
    }

    fn is_busy(&self) -> bool {
        self.0.load(Ordering::Acquire) == BUSY
    }
}

/// Marks a connection busy while a request is in the router and its response body
/// is being written.
struct Busy(State);

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.0.store(SERVED, Ordering::Release);
    }
}

/// A response body that keeps its connection busy until the body is written (or
/// dropped): a stream is a request in progress, not an idle connection.
struct Answering {
    body: Body,
    _busy: Option<Busy>,
}

impl hyper::body::Body for Answering {
    type Data = bytes::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Self::Data>, Self::Error>>> {
        std::pin::Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.body.size_hint()
    }
}

/// An open connection, as the accept loop sees it.
struct Open {
    state: State,
    /// Dropped to ask the connection to close (after its request, if one is running);
    /// none once asked.
    close: Option<oneshot::Sender<()>>,
}

/// The open connections, oldest first (ids only grow). An entry stays until its task
/// has ended, so the count is of descriptors really held.
#[derive(Default)]
struct Table {
    next_id: u64,
    open: BTreeMap<u64, Open>,
    /// Connections closed to make room, or refused, since the last report.
    shed: u64,
    last_report: Option<Instant>,
}

impl Table {
    /// Asks the oldest connection with no request in progress (and not already
    /// asked) to close; false when there is none.
    fn close_oldest_idle(&mut self) -> bool {
        // A fresh connection is marked so that a request arriving now is refused; one
        // that has been served is shut down gracefully by its task.
        let idle = self.open.values_mut().find(|conn| {
            conn.close.is_some() && (conn.state.drop_if_fresh() || !conn.state.is_busy())
        });
        match idle {
            Some(conn) => {
                conn.close = None;
                true
            }
            None => false,
        }
    }

    /// Logs how many connections were shed, at most once per [`SHED_REPORT_EVERY`].
    fn report_shedding(&mut self, max: usize) {
        if self.shed == 0
            || self
                .last_report
                .is_some_and(|t| t.elapsed() < SHED_REPORT_EVERY)
        {
            return;
        }
        tracing::warn!(
            max_connections = max,
            closed = self.shed,
            "connection cap reached: closed the oldest connections that had no request in progress (a client opening many connections without sending requests?)"
        );
        self.shed = 0;
        self.last_report = Some(Instant::now());
    }
}

/// The table, and the signal that a connection's task has ended.
#[derive(Default)]
struct Conns {
    table: Mutex<Table>,
    released: Notify,
}

impl Conns {
    /// Waits until one more connection fits under `max`, closing the oldest idle one
    /// if needed; false (refuse the newcomer) when every open connection has a request
    /// in progress, or room did not appear within [`ADMIT_WAIT`].
    async fn admit(&self, max: usize) -> bool {
        let deadline = tokio::time::Instant::now() + ADMIT_WAIT;
        let mut asked = false;
        loop {
            // Registered before looking, so a release in between is not missed.
            let released = self.released.notified();
            tokio::pin!(released);
            released.as_mut().enable();
            {
                let mut table = guard(&self.table);
                if table.open.len() < max {
                    return true;
                }
                if !asked {
                    asked = true;
                    table.shed += 1;
                    let closing = table.close_oldest_idle();
                    table.report_shedding(max);
                    if !closing {
                        return false;
                    }
                }
            }
            if tokio::time::timeout_at(deadline, released).await.is_err() {
                return false;
            }
        }
    }

    /// Adds a connection: its id, state and the receiver that fires when it is asked
    /// to close.
    fn register(&self) -> (u64, State, oneshot::Receiver<()>) {
        let mut table = guard(&self.table);
        let id = table.next_id;
        table.next_id += 1;
        let state = State::default();
        let (close, closed) = oneshot::channel();
        table.open.insert(
            id,
            Open {
                state: state.clone(),
                close: Some(close),
            },
        );
        (id, state, closed)
    }
}

/// Removes a connection from the table when its task ends, however it ends.
struct Registered {
    conns: Arc<Conns>,
    id: u64,
}

impl Drop for Registered {
    fn drop(&mut self) {
        guard(&self.conns.table).open.remove(&self.id);
        self.conns.released.notify_one();
    }
}

/// Accepts connections on `listener` and serves `router` on them until `stop` turns
/// true; then stops accepting and waits for the open connections to finish their
/// requests and close (the caller bounds that wait).
pub(crate) async fn serve(
    listener: TcpListener,
    router: Router,
    limits: Limits,
    mut stop: watch::Receiver<bool>,
) {
    let conns = Arc::new(Conns::default());
    let mut tasks = JoinSet::new();
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = stop.wait_for(|stop| *stop) => break,
        };
        // Reap finished tasks so the set does not grow with every connection ever made.
        while tasks.try_join_next().is_some() {}
        let (stream, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(e) => {
                // Out of descriptors or memory: the cap should prevent it, but do not
                // spin; per-connection errors (reset before accept) pass quickly.
                tracing::warn!(error = %e, "accepting a connection failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        if !conns.admit(limits.max_connections).await {
            // Dropping the stream closes it.
            continue;
        }
        let (id, state, closed) = conns.register();
        let registered = Registered {
            conns: conns.clone(),
            id,
        };
        tasks.spawn(connection(
            stream,
            peer,
            router.clone(),
            limits.header_timeout,
            state,
            closed,
            stop.clone(),
            registered,
        ));
    }
    drop(listener);
    while tasks.join_next().await.is_some() {}
}

/// Serves one connection until the client closes it, hyper gives up on it (header
/// timeout, bad request), it is closed to make room, or the server stops.
#[allow(clippy::too_many_arguments)]
async fn connection(
    stream: TcpStream,
    peer: SocketAddr,
    router: Router,
    header_timeout: Duration,
    state: State,
    mut closed: oneshot::Receiver<()>,
    mut stop: watch::Receiver<bool>,
    _registered: Registered,
) {
    let service_state = state.clone();
    let service = hyper::service::service_fn(move |mut request: hyper::Request<Incoming>| {
        // What `ConnectInfo<SocketAddr>` extracts: the routes decide by the peer.
        request.extensions_mut().insert(ConnectInfo(peer));
        let busy = service_state.start_request();
        let router = router.clone();
        async move {
            let Some(busy) = busy else {
                // Closed to make room the moment this request arrived.
                let refused = StatusCode::SERVICE_UNAVAILABLE.into_response();
                return Ok::<_, std::convert::Infallible>(
                    refused.map(|body| Answering { body, _busy: None }),
                );
            };
            let response = router.oneshot(request.map(Body::new)).await?;
            Ok(response.map(|body| Answering {
                body,
                _busy: Some(busy),
            }))
        }
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(header_timeout);
    let conn = builder.serve_connection(TokioIo::new(stream), service);
    tokio::pin!(conn);
    tokio::select! {
        _ = conn.as_mut() => return,
        _ = &mut closed => {}
        _ = stop.wait_for(|stop| *stop) => {}
    }
    if state.drop_if_fresh() {
        // Returning drops the connection, which closes the socket now.
        return;
    }
    // Closes once the request in progress, if any, has been answered.
    conn.as_mut().graceful_shutdown();
    let _ = conn.await;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table_with(states: &[u8]) -> (Table, Vec<State>) {
        let mut table = Table::default();
        let mut handles = Vec::new();
        for &s in states {
            let id = table.next_id;
            table.next_id += 1;
            let (close, _) = oneshot::channel();
            let state = State(Arc::new(AtomicU8::new(s)));
            handles.push(state.clone());
            table.open.insert(
                id,
                Open {
                    state,
                    close: Some(close),
                },
            );
        }
        (table, handles)
    }

    #[test]
    fn the_oldest_idle_connection_is_closed_to_make_room_and_busy_ones_stay() {
        let (mut table, states) = table_with(&[BUSY, SERVED, FRESH, FRESH]);
        let asked = |table: &Table| {
            table
                .open
                .iter()
                .filter(|(_, c)| c.close.is_none())
                .map(|(id, _)| *id)
                .collect::<Vec<_>>()
        };
        assert!(table.close_oldest_idle());
        assert_eq!(asked(&table), [1]);
        assert!(table.close_oldest_idle());
        assert_eq!(asked(&table), [1, 2]);
        // The fresh one asked to close refuses a request that arrives now.
        assert!(states[2].start_request().is_none());
        let request = states[3].start_request();
        assert!(request.is_some(), "still open");
        assert!(
            !table.close_oldest_idle(),
            "only busy or closing ones are left"
        );
        assert_eq!(table.open.len(), 4, "entries stay until their task ends");
        drop(request);
        assert!(table.close_oldest_idle(), "answered: idle again");
        let (mut all_busy, _) = table_with(&[BUSY, BUSY]);
        assert!(!all_busy.close_oldest_idle());
    }

    #[test]
    fn the_cap_fits_under_the_open_file_limit() {
        let huge = Limits {
            max_connections: usize::MAX,
            header_timeout: Duration::from_secs(1),
        };
        let fitted = Limits::fitted(huge, 2);
        let soft = rustix::process::getrlimit(rustix::process::Resource::Nofile)
            .current
            .unwrap_or(u64::MAX);
        assert!(
            (fitted.max_connections as u64) < soft,
            "{} connections under a limit of {soft}",
            fitted.max_connections
        );
        let small = Limits {
            max_connections: 4,
            ..huge
        };
        assert_eq!(Limits::fitted(small, 2).max_connections, 4);
    }
}
