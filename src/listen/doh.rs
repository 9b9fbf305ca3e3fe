//! DNS over HTTPS (RFC 8484): HTTP/2 and HTTP/1.1 (hyper, chosen by the client's
//! preface) on a TLS session, one path (`https.path`), GET with `?dns=` (base64url
//! without padding) and POST with an `application/dns-message` body.
//!
//! Every request's DNS message goes the way a TCP query goes ([`super::tcp::answer`]):
//! the gate (access list) first, then the first pass, the cache, the flight and
//! the tiers, with transport [`Transport::Doh`]. The reply carries
//! `cache-control: max-age=` the smallest TTL of its answer section (the negative
//! TTL of RFC 2308 for an answer without records; 0 without either), as RFC 8484
//! 5.1 asks.
//!
//! Requests that are not DNS get an HTTP error and never reach the resolver:
//! another path 404, another method 405 (with `allow`), a POST of another
//! content type 415, a missing or undecodable `dns` parameter, an empty or
//! unreadable message 400, a body over [`MAX_STREAM_QUERY`] bytes (4 KiB) 413. A
//! client outside `access.allow` is closed at accept; one denied by a reload while
//! connected gets a REFUSED DNS answer (HTTP 200) with `refuse`, and with `drop` 403
//! and the connection closed.
//!
//! Bounds, the TCP ones where they apply: `tcp_pipeline` concurrent HTTP/2 streams
//! (HTTP/1.1 answers one request at a time); request headers at most
//! [`MAX_HEADERS`] bytes (431 past it); HTTP/2 flow-control windows of one message
//! per stream and [`H2_CONNECTION_WINDOW`] per connection, so unread request bodies
//! stay small; a body read within `tcp_idle_timeout`; a
//! request over its prefix's `ratelimit.stream_qps` answered when its token is
//! there; a connection with no request in flight for `tcp_idle_timeout` is closed, as is one
//! past `tcp_max_queries` requests or `tcp_max_lifetime` (gracefully: HTTP/2
//! GOAWAY, the requests in flight answered, for at most [`DRAIN`]), or past
//! [`MAX_STREAM_RESETS`] requests the client reset after they were accepted.
//!
//! A reset request cancels nothing but its own reply: the flight it started runs
//! to its end for the clients coalesced on the name, and for the cache
//! ([`Shard::resolve`]).

use super::tcp::{answer, Busy, Open, MAX_STREAM_QUERY};
use super::tls::CloseSignal;
use crate::io::Backend;
use crate::policy::stream_conns::Close;
use crate::policy::Reservation;
use crate::shard::{Gate, Shard};
use crate::transport::Transport;
use crate::wire::answer::AnswerLayout;
use base64::Engine;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Bytes, Incoming};
use hyper::header::{HeaderValue, ALLOW, CACHE_CONTROL, CONTENT_TYPE};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use std::cell::Cell;
use std::convert::Infallible;
use std::future::Future;
use std::rc::Rc;
use std::time::{Duration, Instant};
use tokio::net::TcpStream;
use tokio_rustls::server::TlsStream;

/// The media type of a DNS message (RFC 8484 6).
const DNS_MESSAGE: &str = "application/dns-message";

/// Largest request head (request line or pseudo-headers, and headers).
pub(super) const MAX_HEADERS: usize = 16 * 1024;

/// Largest DNS message (what one stream's flow-control window holds).
const MAX_MESSAGE: usize = 65535;

/// HTTP/2 flow-control window of a connection: request bodies buffered at once.
const H2_CONNECTION_WINDOW: u32 = 4 * 65535;

/// Longest a connection that is closing waits for the requests in flight.
const DRAIN: Duration = Duration::from_secs(2);

/// Requests a connection's client may reset after tierdns accepted them (HTTP/2
/// RST_STREAM, or an HTTP/1.1 connection closed mid-request); past it the
/// connection gets GOAWAY and is closed (`tierdns_tcp_closed_total{reason="resets"}`).
/// h2's own limit counts only streams reset before hyper accepts them; a reset
/// stream costs tierdns nothing upstream (its flight runs on for its other
/// clients and the cache), but each one is a request parsed and a task spawned.
pub(super) const MAX_STREAM_RESETS: u32 = 100;

/// base64url; padding tolerated though RFC 8484 4.1 says to leave it out.
const BASE64URL: base64::engine::GeneralPurpose = base64::engine::GeneralPurpose::new(
    &base64::alphabet::URL_SAFE,
    base64::engine::GeneralPurposeConfig::new()
        .with_decode_padding_mode(base64::engine::DecodePaddingMode::Indifferent),
);

/// hyper's executor for HTTP/2 streams: tasks on the shard's own thread (shard
/// state is `Rc`, the futures are not `Send`).
#[derive(Clone, Copy, Debug)]
struct LocalExec;

impl<F> hyper::rt::Executor<F> for LocalExec
where
    F: Future + 'static,
    F::Output: 'static,
{
    fn execute(&self, fut: F) {
        tokio::task::spawn_local(fut);
    }
}

/// One DoH connection's state, shared by its requests.
struct Conn<B: Backend> {
    open: Open<B>,
    client: std::net::IpAddr,
    signal: Rc<CloseSignal>,
    /// Requests being answered.
    in_flight: Cell<usize>,
    /// Requests read.
    requests: Cell<u64>,
    /// When the last request began or ended.
    last: Cell<Instant>,
    /// Requests the client gave up on before their answer ([`MAX_STREAM_RESETS`]).
    resets: Cell<u32>,
}

/// A request being served: if it is dropped before [`Self::answered`], the client
/// reset it, and the connection counts that.
struct Served<'a, B: Backend> {
    conn: &'a Conn<B>,
    answered: bool,
}

impl<B: Backend> Served<'_, B> {
    fn answered(mut self) {
        self.answered = true;
    }
}

impl<B: Backend> Drop for Served<'_, B> {
    fn drop(&mut self) {
        if self.answered {
            return;
        }
        let c = self.conn;
        c.resets.set(c.resets.get().saturating_add(1));
        if c.resets.get() == MAX_STREAM_RESETS + 1 {
            let shard = c.open.shard();
            shard.stats().tcp_closed(crate::metrics::TcpClose::Resets);
            c.signal.close();
        }
    }
}

/// A request counted in flight for as long as it lives.
struct RequestSlot<'a, B: Backend>(&'a Conn<B>);

impl<B: Backend> Drop for RequestSlot<'_, B> {
    fn drop(&mut self) {
        let c = self.0;
        c.in_flight.set(c.in_flight.get().saturating_sub(1));
        c.last.set(Instant::now());
    }
}

/// Serves one DoH session until it ends.
pub(super) async fn serve<B: Backend>(
    open: Open<B>,
    session: TlsStream<TcpStream>,
    client: std::net::IpAddr,
    signal: Rc<CloseSignal>,
) {
    let shard = Rc::clone(open.shard());
    let limits = &shard.shared().config.limits;
    let idle = limits.tcp_idle_timeout;
    let conn = Rc::new(Conn {
        open,
        client,
        signal: Rc::clone(&signal),
        in_flight: Cell::new(0),
        requests: Cell::new(0),
        last: Cell::new(Instant::now()),
        resets: Cell::new(0),
    });
    let service = {
        let conn = Rc::clone(&conn);
        hyper::service::service_fn(move |req| {
            let conn = Rc::clone(&conn);
            async move {
                let request = Served {
                    conn: &conn,
                    answered: false,
                };
                let response = handle(&conn, req).await;
                request.answered();
                Ok::<_, Infallible>(response)
            }
        })
    };
    let mut builder = hyper_util::server::conn::auto::Builder::new(LocalExec);
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(idle)
        .max_buf_size(MAX_HEADERS);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(u32::try_from(limits.tcp_pipeline).unwrap_or(u32::MAX))
        .max_header_list_size(MAX_HEADERS as u32)
        // What a client may have sent and not yet read: one message per stream,
        // a few per connection (hyper's defaults allow a MiB per connection).
        .initial_stream_window_size(MAX_MESSAGE as u32)
        .initial_connection_window_size(H2_CONNECTION_WINDOW)
        .max_send_buf_size(MAX_MESSAGE + 1);
    let served = builder.serve_connection(TokioIo::new(session), service);
    tokio::pin!(served);
    let mut shutdown = shard.shutdown();
    let expiry = async {
        if limits.tcp_max_lifetime.is_zero() {
            std::future::pending::<()>().await;
        }
        tokio::time::sleep(limits.tcp_max_lifetime).await;
    };
    tokio::pin!(expiry);
    // Set once the connection is closing: when it must be gone.
    let mut drain_until: Option<tokio::time::Instant> = None;
    loop {
        if let Some(deadline) = drain_until {
            tokio::select! {
                _ = served.as_mut() => {}
                _ = tokio::time::sleep_until(deadline) => {}
            }
            break;
        }
        let idle_at = tokio::time::Instant::from_std(conn.last.get() + idle);
        tokio::select! {
            biased;
            _ = served.as_mut() => break,
            // Evicted, access `drop`, or `tcp_max_queries` read (counted where
            // it is decided).
            _ = signal.closed() => {}
            _ = shutdown.changed() => {}
            _ = &mut expiry => shard.stats().tcp_closed(crate::metrics::TcpClose::MaxLifetime),
            _ = tokio::time::sleep_until(idle_at) => {
                if conn.in_flight.get() > 0 {
                    // Busy: look again an idle period from now.
                    conn.last.set(Instant::now());
                    continue;
                }
                if conn.last.get().elapsed() < idle {
                    continue;
                }
            }
        }
        served.as_mut().graceful_shutdown();
        drain_until = Some(tokio::time::Instant::now() + DRAIN);
    }
}

fn status(code: StatusCode) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::new()));
    *r.status_mut() = code;
    r
}

/// The `dns` parameter of a GET's query string, decoded; None if absent or bad.
fn dns_param(query: Option<&str>) -> Option<Vec<u8>> {
    let value = query?
        .split('&')
        .find_map(|pair| pair.strip_prefix("dns="))?;
    // base64url needs no percent-encoding; a `%` is not base64url.
    if value.is_empty() || value.len() > MAX_STREAM_QUERY.div_ceil(3) * 4 {
        return None;
    }
    BASE64URL.decode(value).ok()
}

/// Whether a content type is `application/dns-message` (parameters ignored).
fn is_dns_message(value: Option<&HeaderValue>) -> bool {
    value
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|t| t.trim().eq_ignore_ascii_case(DNS_MESSAGE))
}

/// The DNS message of a request, or the HTTP error it gets. A request refused
/// before its body is read has the body read and discarded first (bounded like a
/// POST body): an HTTP/2 reply that ends a stream the client is still sending on
/// comes with a reset, which clients report instead of the status.
async fn read_query<B: Backend>(
    shard: &Shard<B>,
    req: Request<Incoming>,
) -> Result<Vec<u8>, Response<Full<Bytes>>> {
    let idle = shard.shared().config.limits.tcp_idle_timeout;
    let (parts, body) = req.into_parts();
    let read = |body| async move {
        tokio::time::timeout(idle, Limited::new(body, MAX_MESSAGE).collect()).await
    };
    let refuse = |code, body| async move {
        let _ = read(body).await;
        Err(status(code))
    };
    if parts.uri.path() != shard.shared().config.https.path {
        return refuse(StatusCode::NOT_FOUND, body).await;
    }
    match parts.method {
        Method::GET => match dns_param(parts.uri.query()) {
            Some(q) => Ok(q),
            None => refuse(StatusCode::BAD_REQUEST, body).await,
        },
        Method::POST => {
            if !is_dns_message(parts.headers.get(CONTENT_TYPE)) {
                return refuse(StatusCode::UNSUPPORTED_MEDIA_TYPE, body).await;
            }
            // Read whole (up to a message's size) before refusing what is too
            // long for a query: an HTTP/2 reply that ends a stream the client is
            // still sending on comes with a reset, which clients report instead
            // of the status.
            match read(body).await {
                Ok(Ok(b)) => {
                    let b = b.to_bytes();
                    if b.len() > MAX_STREAM_QUERY {
                        return Err(status(StatusCode::PAYLOAD_TOO_LARGE));
                    }
                    Ok(b.to_vec())
                }
                Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => {
                    Err(status(StatusCode::PAYLOAD_TOO_LARGE))
                }
                _ => Err(status(StatusCode::BAD_REQUEST)),
            }
        }
        _ => {
            let mut r = refuse(StatusCode::METHOD_NOT_ALLOWED, body).await;
            if let Err(r) = &mut r {
                r.headers_mut()
                    .insert(ALLOW, HeaderValue::from_static("GET, POST"));
            }
            r
        }
    }
}

/// One request: checked, its DNS message answered.
async fn handle<B: Backend>(conn: &Conn<B>, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let shard = conn.open.shard();
    conn.requests.set(conn.requests.get() + 1);
    let max = shard.shared().config.limits.tcp_max_queries;
    if max > 0 && conn.requests.get() == max {
        // This one is answered; the connection takes no more.
        shard
            .stats()
            .tcp_closed(crate::metrics::TcpClose::MaxQueries);
        conn.signal.close();
    }
    conn.in_flight.set(conn.in_flight.get() + 1);
    conn.last.set(Instant::now());
    let _in_flight = RequestSlot(conn);
    let _busy = Busy::new(shard, conn.open.id());
    let query = match read_query(shard, req).await {
        Ok(q) => q,
        Err(response) => return response,
    };
    if query.len() < 12 {
        return status(StatusCode::BAD_REQUEST);
    }
    let start = Instant::now();
    let gate = shard.gate(conn.client, Transport::Doh, start);
    if gate == Gate::Drop {
        conn.signal.close();
        return status(StatusCode::FORBIDDEN);
    }
    // Over the prefix's `stream_qps` the request waits for its token (at most
    // `tcp_pipeline` of a connection wait at once); past the longest wait it is
    // answered and the connection gets GOAWAY.
    match shard.stream_pace(conn.client, Transport::Doh, start) {
        Reservation::Now => {}
        Reservation::After(wait) => tokio::time::sleep(wait).await,
        Reservation::Over => {
            shard
                .stats()
                .tcp_closed(crate::metrics::TcpClose::QueryRate);
            conn.signal.close();
        }
    }
    let Some(reply) = answer(shard, &query, Transport::Doh, gate, start).await else {
        return status(StatusCode::BAD_REQUEST);
    };
    let max_age = AnswerLayout::parse(&reply)
        .ok()
        .and_then(|l| l.min_answer_ttl().or(l.negative_ttl()))
        .unwrap_or(0);
    let body = Bytes::copy_from_slice(&reply);
    shard.pool().put(reply);
    let mut r = Response::new(Full::new(body));
    let headers = r.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static(DNS_MESSAGE));
    headers.insert(
        CACHE_CONTROL,
        HeaderValue::from_str(&format!("max-age={max_age}"))
            .unwrap_or_else(|_| HeaderValue::from_static("no-store")),
    );
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_dns_parameter_is_base64url_without_padding() {
        let msg = [0u8, 1, 0xfb, 0xff, 0x3e];
        let text = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(msg);
        assert!(text.contains('-') || text.contains('_'), "{text}");
        assert_eq!(dns_param(Some(&format!("dns={text}"))), Some(msg.to_vec()));
        assert_eq!(
            dns_param(Some(&format!("ct=x&dns={text}&z=1"))),
            Some(msg.to_vec())
        );
        assert_eq!(dns_param(Some(&format!("dns={text}="))), Some(msg.to_vec()));
        assert_eq!(dns_param(Some("dns=")), None);
        assert_eq!(dns_param(Some("dns=a+b/")), None, "standard base64");
        assert_eq!(dns_param(Some("dns=%41AA")), None);
        assert_eq!(dns_param(Some("name=example.com")), None);
        assert_eq!(dns_param(None), None);
        let long = "A".repeat(MAX_STREAM_QUERY.div_ceil(3) * 4 + 4);
        assert_eq!(dns_param(Some(&format!("dns={long}"))), None);
    }

    #[test]
    fn the_content_type_is_compared_without_its_parameters() {
        let v = |s: &'static str| HeaderValue::from_static(s);
        assert!(is_dns_message(Some(&v("application/dns-message"))));
        assert!(is_dns_message(Some(&v("Application/DNS-Message; q=1"))));
        assert!(!is_dns_message(Some(&v("application/json"))));
        assert!(!is_dns_message(None));
    }
}
