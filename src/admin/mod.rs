//! The metrics listener (`[metrics] listen`), served by tierdns itself: the
//! Prometheus text, and two admin endpoints for an operator's questions about
//! one name or the upstreams.
//!
//! - `GET /metrics`: the exposition, rendered from the recorder's
//!   [`PrometheusHandle`] (`/health` answers "OK", as the exporter it replaces did);
//! - `GET /cache?name=NAME&type=TYPE`: every cache entry of the name and type
//!   (class IN, each DO/CD combination), its state, TTL, version, and each record
//!   with the upstream that gave it and when ([`crate::cache::provenance`]);
//! - `GET /upstreams`: each shard's view of its upstreams' health as published at
//!   its last stats flush, and the views merged ([`crate::health::view`]).
//!
//! Only `[metrics] allow` (loopback by default) is answered; anyone else gets 403
//! on every request. Unknown paths are 404, other methods than GET (and HEAD)
//! 405, a bad name or type 400 with the reason. Bounds: [`MAX_CONNECTIONS`]
//! connections at once (more are closed at accept), each given
//! [`CONNECTION_TIME`] in all and its request headers within [`HEADER_TIME`].
//!
//! It runs on a thread of its own with a current-thread runtime, away from the
//! shards: a scrape or a look at the cache costs a shard nothing but the
//! partition lock a lookup takes.

mod json;
mod request;

use crate::policy::{AccessConfig, AccessList, AccessVerdict};
use crate::shard::Shared;
use bytes::Bytes;
use http::{header, Method, Request, Response, StatusCode};
use http_body_util::Full;
use metrics_exporter_prometheus::PrometheusHandle;
use request::{route, Refusal, Route};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

/// Most connections served at once.
pub const MAX_CONNECTIONS: usize = 64;
/// Longest a connection may stay open.
pub const CONNECTION_TIME: Duration = Duration::from_secs(30);
/// Longest a client may take to send its request headers.
pub const HEADER_TIME: Duration = Duration::from_secs(5);
/// How often the recorder's upkeep (histogram draining) runs.
const UPKEEP_EVERY: Duration = Duration::from_secs(5);

/// The bound listener, not serving yet (see [`AdminListener::serve`]).
#[derive(Debug)]
pub struct AdminListener {
    listener: std::net::TcpListener,
    allow: AccessList,
}

/// Why the listener could not start.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    /// `[metrics] allow` did not parse (validated with the config: a bug).
    #[error("metrics.allow: {0}")]
    Allow(String),
    /// The socket or the thread.
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

impl AdminListener {
    /// Binds `listen`, answering only `allow` (networks as `[metrics] allow`).
    pub fn bind(listen: SocketAddr, allow: &[String]) -> Result<Self, AdminError> {
        let allow = AccessList::new(&AccessConfig {
            allow: allow.to_vec(),
            ..AccessConfig::default()
        })
        .map_err(|e| AdminError::Allow(e.to_string()))?;
        let listener = std::net::TcpListener::bind(listen)?;
        listener.set_nonblocking(true)?;
        Ok(Self { listener, allow })
    }

    /// The address bound (port 0 resolved).
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves on a thread of its own, for the life of the process: `/metrics`
    /// from `metrics` (404 without one), the admin endpoints from `shared`.
    pub fn serve(
        self,
        shared: Arc<Shared>,
        metrics: Option<PrometheusHandle>,
    ) -> Result<(), AdminError> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        std::thread::Builder::new()
            .name("tierdns-admin".into())
            .spawn(move || rt.block_on(self.run(shared, metrics)))?;
        Ok(())
    }

    async fn run(self, shared: Arc<Shared>, metrics: Option<PrometheusHandle>) {
        let Ok(listener) = tokio::net::TcpListener::from_std(self.listener) else {
            tracing::error!("metrics listener: cannot adopt the socket");
            return;
        };
        if let Some(handle) = metrics.clone() {
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(UPKEEP_EVERY);
                loop {
                    tick.tick().await;
                    handle.run_upkeep();
                }
            });
        }
        let state = Arc::new(State {
            shared,
            metrics,
            allow: self.allow,
            open: AtomicUsize::new(0),
        });
        loop {
            let (stream, peer) = match listener.accept().await {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of descriptors, say: let some close before trying again.
                    tracing::debug!(error = %e, "metrics listener: accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            if state.open.fetch_add(1, Ordering::Relaxed) >= MAX_CONNECTIONS {
                state.open.fetch_sub(1, Ordering::Relaxed);
                continue;
            }
            let state = Arc::clone(&state);
            tokio::spawn(async move {
                let allowed = state.allow.check(peer.ip()) == AccessVerdict::Allow;
                let service = hyper::service::service_fn(|req| {
                    let state = Arc::clone(&state);
                    async move {
                        let metrics = state.metrics.as_ref();
                        Ok::<_, std::convert::Infallible>(answer(
                            &state.shared,
                            metrics,
                            allowed,
                            &req,
                        ))
                    }
                });
                let conn = hyper::server::conn::http1::Builder::new()
                    .timer(hyper_util::rt::TokioTimer::new())
                    .header_read_timeout(HEADER_TIME)
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service);
                let _ = tokio::time::timeout(CONNECTION_TIME, conn).await;
                state.open.fetch_sub(1, Ordering::Relaxed);
            });
        }
    }
}

/// What every connection shares.
struct State {
    shared: Arc<Shared>,
    metrics: Option<PrometheusHandle>,
    allow: AccessList,
    open: AtomicUsize,
}

/// The response to `req` from a peer `allowed` or not.
fn answer<B>(
    shared: &Shared,
    metrics: Option<&PrometheusHandle>,
    allowed: bool,
    req: &Request<B>,
) -> Response<Full<Bytes>> {
    if !allowed {
        return text(StatusCode::FORBIDDEN, "forbidden: not in [metrics] allow\n");
    }
    let uri = req.uri();
    let head = req.method() == Method::HEAD;
    let mut resp = match route(req.method().as_str(), uri.path(), uri.query()) {
        Ok(Route::Metrics) => match metrics {
            Some(handle) => {
                let mut r = text(StatusCode::OK, handle.render());
                r.headers_mut().insert(
                    header::CONTENT_TYPE,
                    header::HeaderValue::from_static("text/plain; version=0.0.4"),
                );
                r
            }
            None => text(StatusCode::NOT_FOUND, "no metrics recorder\n"),
        },
        Ok(Route::Health) => text(StatusCode::OK, "OK"),
        Ok(Route::Cache(q)) => {
            let body = json::cache(&q, &shared.cache, Instant::now(), SystemTime::now());
            json_response(&body)
        }
        Ok(Route::Upstreams) => {
            let views = shared.board.views().all();
            let every = shared.config.metrics.flush_interval;
            json_response(&json::upstreams(&views, every, Instant::now()))
        }
        Err(Refusal::NotFound) => text(
            StatusCode::NOT_FOUND,
            "not found: /metrics, /cache?name=NAME&type=TYPE, /upstreams\n",
        ),
        Err(Refusal::Method) => {
            let mut r = text(StatusCode::METHOD_NOT_ALLOWED, "only GET\n");
            r.headers_mut()
                .insert(header::ALLOW, header::HeaderValue::from_static("GET, HEAD"));
            r
        }
        Err(Refusal::Bad(why)) => text(StatusCode::BAD_REQUEST, format!("bad request: {why}\n")),
    };
    if head {
        *resp.body_mut() = Full::default();
    }
    resp
}

fn text(status: StatusCode, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

fn json_response(body: &serde_json::Value) -> Response<Full<Bytes>> {
    let mut text = serde_json::to_vec_pretty(body).unwrap_or_default();
    text.push(b'\n');
    let mut r = Response::new(Full::new(Bytes::from(text)));
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The allow check is made per connection from its peer address: outside
    /// `[metrics] allow` every request is 403, whatever its path.
    #[test]
    fn outside_allow_every_request_is_forbidden() {
        let listener = AdminListener::bind(
            "127.0.0.1:0".parse().unwrap(),
            &["127.0.0.2/32".into(), "::1/128".into()],
        )
        .unwrap();
        let allow = &listener.allow;
        assert_eq!(
            allow.check("127.0.0.2".parse().unwrap()),
            AccessVerdict::Allow
        );
        assert_eq!(
            allow.check("::ffff:127.0.0.2".parse().unwrap()),
            AccessVerdict::Allow
        );
        assert_ne!(
            allow.check("127.0.0.1".parse().unwrap()),
            AccessVerdict::Allow
        );
        assert_ne!(
            allow.check("10.0.0.1".parse().unwrap()),
            AccessVerdict::Allow
        );
        let mut config = crate::config::Config::default();
        config.upstreams.clear();
        let shard = crate::shard::socketless_shard(config);
        let shared = shard.shared();
        let status = |allowed, req: Request<()>| answer(shared, None, allowed, &req).status();
        let get = |uri: &str| Request::get(uri).body(()).unwrap();
        for uri in ["/metrics", "/cache?name=x", "/upstreams", "/nope"] {
            assert_eq!(status(false, get(uri)), StatusCode::FORBIDDEN);
        }
        assert_eq!(status(true, get("/upstreams")), StatusCode::OK);
        assert_eq!(status(true, get("/health")), StatusCode::OK);
        assert_eq!(status(true, get("/nope")), StatusCode::NOT_FOUND);
        assert_eq!(status(true, get("/cache?type=A")), StatusCode::BAD_REQUEST);
        assert_eq!(status(true, get("/cache?name=x.example")), StatusCode::OK);
        let post = Request::post("/cache?name=x").body(()).unwrap();
        assert_eq!(status(true, post), StatusCode::METHOD_NOT_ALLOWED);
    }
}
