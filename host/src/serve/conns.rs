//! The server's TCP connections: accepting them, bounding how many are open and how
//! long a client may take to send a request head, and closing them at shutdown. It
//! never reads or answers a request itself; the router does.
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
//!   out its own connections rather than a webhook whose request arrives whole. Only
//!   when every open connection has a request in progress is the new one closed at
//!   once. Either way the kernel's accept queue stays empty, so a webhook never waits
//!   in it behind the flood.
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
use tokio::sync::{oneshot, watch};
use tokio::task::JoinSet;
use tower::ServiceExt;

use super::lock;

/// Descriptors kept free for everything but client connections: the runtime, the
/// listener, the state files, and per repository a git or deploy child's pipes.
const RESERVED_FDS: u64 = 64;
const RESERVED_FDS_PER_REPOSITORY: u64 = 8;
/// The fewest connections the open-file limit may lower the cap to.
const MIN_CONNECTIONS: usize = 8;
/// At most one "connections closed to make room" log line per this period, so a flood
/// does not become a flood of log lines.
const SHED_REPORT_EVERY: Duration = Duration::from_secs(10);

/// How many connections may be open and how long a request head may take.
#[derive(Debug, Clone, Copy)]
pub(super) struct Limits {
    /// Open connections at most.
    pub(super) max_connections: usize,
    /// A connection that has not sent a whole request head within this is closed.
    pub(super) header_timeout: Duration,
}

impl Limits {
    /// `configured`, with the connection cap lowered when the process's open-file
    /// limit could not hold it next to what `repositories` deploys need.
    pub(super) fn fitted(configured: Limits, repositories: usize) -> Limits {
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
/// A request is in the router.
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

/// Marks a connection busy while a request is in the router.
struct Busy(State);

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.0.store(SERVED, Ordering::Release);
    }
}

/// An open connection, as the accept loop sees it.
struct Open {
    state: State,
    /// Dropped to ask the connection to close (after its request, if one is running).
    _close: oneshot::Sender<()>,
}

/// The open connections, oldest first (ids only grow).
#[derive(Default)]
struct Table {
    next_id: u64,
    open: BTreeMap<u64, Open>,
    /// Connections closed to make room, or refused, since the last report.
    shed: u64,
    last_report: Option<Instant>,
}

impl Table {
    /// Makes room for one more connection under `max`: closes the oldest one with
    /// no request in progress. False when every open connection is busy.
    fn make_room(&mut self, max: usize) -> bool {
        if self.open.len() < max {
            return true;
        }
        self.shed += 1;
        // A fresh connection is marked so that a request arriving now is refused; one
        // that has been served is shut down gracefully by its task.
        let idle = self
            .open
            .iter()
            .find(|(_, conn)| conn.state.drop_if_fresh() || !conn.state.is_busy())
            .map(|(id, _)| *id);
        match idle {
            Some(id) => {
                self.open.remove(&id);
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

/// Removes a connection from the table when its task ends, however it ends.
struct Registered {
    table: Arc<Mutex<Table>>,
    id: u64,
}

impl Drop for Registered {
    fn drop(&mut self) {
        lock(&self.table).open.remove(&self.id);
    }
}

/// Accepts connections on `listener` and serves `router` on them until `stop` turns
/// true; then stops accepting and waits for the open connections to finish their
/// requests and close (the caller bounds that wait).
pub(super) async fn serve(
    listener: TcpListener,
    router: Router,
    limits: Limits,
    mut stop: watch::Receiver<bool>,
) {
    let table = Arc::new(Mutex::new(Table::default()));
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
        let (id, state, closed) = {
            let mut table = lock(&table);
            let room = table.make_room(limits.max_connections);
            table.report_shedding(limits.max_connections);
            if !room {
                // Dropping the stream closes it.
                continue;
            }
            let id = table.next_id;
            table.next_id += 1;
            let state = State::default();
            let (close, closed) = oneshot::channel();
            table.open.insert(
                id,
                Open {
                    state: state.clone(),
                    _close: close,
                },
            );
            (id, state, closed)
        };
        let registered = Registered {
            table: table.clone(),
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
                return Ok(StatusCode::SERVICE_UNAVAILABLE.into_response());
            };
            let response = router.oneshot(request.map(Body::new)).await;
            drop(busy);
            response
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
                    _close: close,
                },
            );
        }
        (table, handles)
    }

    #[test]
    fn at_the_cap_the_oldest_idle_connection_makes_room_and_busy_ones_stay() {
        let (mut table, states) = table_with(&[BUSY, SERVED, FRESH, FRESH]);
        assert!(table.make_room(5), "under the cap");
        assert_eq!(table.open.len(), 4);
        assert!(table.make_room(4));
        assert_eq!(table.open.keys().copied().collect::<Vec<_>>(), [0, 2, 3]);
        assert!(table.make_room(3));
        assert_eq!(table.open.keys().copied().collect::<Vec<_>>(), [0, 3]);
        // The fresh one closed to make room refuses a request that arrives now.
        assert!(states[2].start_request().is_none());
        assert!(states[3].start_request().is_some(), "still open");
        let (mut all_busy, _) = table_with(&[BUSY, BUSY]);
        assert!(
            !all_busy.make_room(2),
            "nothing to close: refuse the new one"
        );
        assert_eq!(all_busy.open.len(), 2);
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
