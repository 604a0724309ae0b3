//! HTTP(S) listeners: hyper 1 (HTTP/1.1, keep-alive) on tokio, rustls for TLS, graceful
//! shutdown (stop accepting, let in-flight requests finish).

pub mod accept;
pub mod conns;
pub mod router;
pub mod sigv4;
pub mod throttled;
pub mod tls;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;

use crate::state::App;
use accept::Acceptor;
use conns::{Conn, Connections, Room};
use throttled::Throttled;

/// How long shutdown waits for in-flight requests.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);
/// Failed and timed-out TLS handshakes are logged at most once per 10 s each (a flood of
/// them would otherwise be a flood of log lines); the metrics count every one.
static HANDSHAKE_FAILED_LOG: Throttled = Throttled::new(Duration::from_secs(10));
static HANDSHAKE_TIMEOUT_LOG: Throttled = Throttled::new(Duration::from_secs(10));

/// HTTP/1.1 with keep-alive. hyper's header read timeout runs from the moment the connection
/// waits for a request head (after accept or the previous response) until the head is
/// complete, then closes the connection: the head half of the read timeout, and the
/// keep-alive idle limit. The body half is the router's (hyper has no body timeout).
fn http1_builder(read_timeout: Duration) -> http1::Builder {
    let mut b = http1::Builder::new();
    b.keep_alive(true)
        .timer(TokioTimer::new())
        .header_read_timeout(read_timeout);
    b
}

/// Count a connection that ended because its request head did not arrive in time.
fn note_end(conn: &Conn, result: Result<(), hyper::Error>) {
    if let Err(e) = result {
        if e.is_timeout() {
            conn.head_timed_out();
        }
    }
}

/// The next connection to serve, once there is room for it under the cap (`None`:
/// shutdown). At the cap with every connection being served, connections are accepted and
/// closed at once, so clients learn it now instead of waiting in the backlog.
async fn next_connection(
    acceptor: &mut Acceptor,
    conns: &Connections,
    shutdown: &mut (impl Future<Output = ()> + Unpin),
) -> Option<(TcpStream, SocketAddr)> {
    loop {
        let room = tokio::select! {
            r = conns.room() => r,
            _ = &mut *shutdown => return None,
        };
        let c = tokio::select! {
            c = acceptor.next(conns) => c,
            _ = &mut *shutdown => return None,
        };
        match room {
            Room::Free => return Some(c),
            Room::Full => drop(c),
        }
    }
}

/// Serve the XKS API until `shutdown` resolves, then drain. At most `conns.cap()`
/// connections are open at once (see [`conns`] for who is closed to make room); the TLS
/// handshake and each request's head and body must each arrive within `app.read_timeout`.
pub async fn serve_api(
    app: Arc<App>,
    listener: TcpListener,
    conns: Arc<Connections>,
    shutdown: impl Future<Output = ()>,
) {
    let graceful = GracefulShutdown::new();
    let mut acceptor = Acceptor::new(listener);
    tokio::pin!(shutdown);
    loop {
        let Some((stream, peer)) = next_connection(&mut acceptor, &conns, &mut shutdown).await
        else {
            break;
        };
        let conn = conns.register();
        let _ = stream.set_nodelay(true);
        // The TLS settings current now (reload swaps them for later connections).
        let tls = app.tls.as_ref().map(|t| TlsAcceptor::from(t.load_full()));
        let app = app.clone();
        let watcher = graceful.watcher();
        tokio::spawn(async move {
            let timeout = app.read_timeout;
            let svc_conn = conn.clone();
            let svc = service_fn(move |req: Request<Incoming>| {
                let (app, conn) = (app.clone(), svc_conn.clone());
                async move {
                    let resp = router::handle(&app, &conn, req).await;
                    conn.waiting();
                    resp
                }
            });
            let serve = async {
                match tls {
                    None => {
                        let c = http1_builder(timeout).serve_connection(TokioIo::new(stream), svc);
                        note_end(&conn, watcher.watch(c).await);
                    }
                    Some(acc) => {
                        let tls = match tokio::time::timeout(timeout, acc.accept(stream)).await {
                            Ok(Ok(s)) => s,
                            Ok(Err(e)) => {
                                if let Some(held) = HANDSHAKE_FAILED_LOG.event(Instant::now()) {
                                    tracing::info!(%peer, error = %e, repeats_not_logged = held, "TLS handshake failed");
                                }
                                return;
                            }
                            Err(_) => {
                                conn.head_timed_out();
                                if let Some(held) = HANDSHAKE_TIMEOUT_LOG.event(Instant::now()) {
                                    tracing::info!(%peer, repeats_not_logged = held, "TLS handshake timed out");
                                }
                                return;
                            }
                        };
                        let c = http1_builder(timeout).serve_connection(TokioIo::new(tls), svc);
                        note_end(&conn, watcher.watch(c).await);
                    }
                }
            };
            // Closing to make room drops the connection (and its socket) wherever it is.
            tokio::select! {
                _ = serve => {}
                _ = conn.evicted() => {}
            }
        });
    }
    drop(acceptor);
    tracing::info!("stopped accepting; draining in-flight requests");
    if tokio::time::timeout(DRAIN_TIMEOUT, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("drain timed out; closing remaining connections");
    }
}

/// One admin response: `/metrics`, `/ping`, `/ready`, or 404.
fn admin_response(app: &App, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    if req.uri().path() == "/ready" {
        return router::readiness(app);
    }
    let (status, ctype, body) = match req.uri().path() {
        "/metrics" => (
            StatusCode::OK,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            app.metrics.render(&app.hsm, &app.health),
        ),
        "/ping" => (StatusCode::OK, "text/plain", "ok\n".to_string()),
        _ => (
            StatusCode::NOT_FOUND,
            "text/plain",
            "not found\n".to_string(),
        ),
    };
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(ctype));
    r
}

/// Serve `/metrics`, `/ping` and `/ready` on the admin listener until `shutdown`, with the same read
/// timeout, accept back-off and a cap of its own (`conns`).
pub async fn serve_admin(
    app: Arc<App>,
    listener: TcpListener,
    conns: Arc<Connections>,
    shutdown: impl Future<Output = ()>,
) {
    let mut acceptor = Acceptor::new(listener);
    tokio::pin!(shutdown);
    loop {
        let Some((stream, _)) = next_connection(&mut acceptor, &conns, &mut shutdown).await else {
            break;
        };
        let conn = conns.register();
        let app = app.clone();
        tokio::spawn(async move {
            let svc_conn = conn.clone();
            let timeout = app.read_timeout;
            let svc = service_fn(move |req: Request<Incoming>| {
                let (app, conn) = (app.clone(), svc_conn.clone());
                async move {
                    let r = admin_response(&app, &req);
                    conn.waiting();
                    Ok::<_, std::convert::Infallible>(r)
                }
            });
            let c = http1_builder(timeout).serve_connection(TokioIo::new(stream), svc);
            tokio::select! {
                r = c => note_end(&conn, r),
                _ = conn.evicted() => {}
            }
        });
    }
}
