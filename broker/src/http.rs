//! The front door: every connection starts as HTTP. A WebSocket upgrade on `/ws` goes on to
//! a session; anything else is answered here: the demo page (`/`) and the browser client
//! (`/wharf.js`), both embedded in the binary; `/healthz`, `/readyz` and `/metrics` for
//! operators; `POST /v1/publish/{topic}` for curl, webhooks and cron jobs.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use std::sync::Arc;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use wharf_protocol::{now_ms, Topic};

use crate::log::{Entry, NewEvent, Receipt};
use crate::tls::Conn;
use crate::{metrics, server};

/// The browser client, served at `/wharf.js`.
pub const CLIENT_JS: &str = include_str!("../../clients/js/wharf.js");
/// The demo page, served at `/`.
pub const DEMO_HTML: &str = include_str!("../../clients/js/demo.html");

/// The most a request head may take.
const MAX_HEAD: usize = 16 * 1024;

/// A stream that first yields bytes already read from it (the request head), so that the
/// WebSocket handshake can parse the request again.
pub struct Rewound {
    prefix: Vec<u8>,
    read: usize,
    inner: Conn,
}

impl AsyncRead for Rewound {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if this.read < this.prefix.len() {
            let n = (this.prefix.len() - this.read).min(buf.remaining());
            buf.put_slice(&this.prefix[this.read..this.read + n]);
            this.read += n;
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for Rewound {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// What the first request on a connection asks for.
pub enum Opening {
    /// A WebSocket upgrade: hand the stream to the handshake.
    Upgrade(Rewound),
    /// Answered here; the connection is done.
    Answered,
}

/// Reads the request head and either answers it or hands it on for the upgrade.
pub async fn open(mut stream: Conn, ctx: &Arc<server::Context>) -> io::Result<Opening> {
    let mut head = Vec::with_capacity(1024);
    let mut chunk = [0u8; 2048];
    let parsed = loop {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Ok(Opening::Answered);
        }
        head.extend_from_slice(&chunk[..n]);
        let mut headers = [httparse::EMPTY_HEADER; 64];
        let mut req = httparse::Request::new(&mut headers);
        match req.parse(&head) {
            Ok(httparse::Status::Complete(head_len)) => {
                let header = |name: &str| {
                    req.headers
                        .iter()
                        .find(|h| h.name.eq_ignore_ascii_case(name))
                        .map(|h| String::from_utf8_lossy(h.value).into_owned())
                };
                let upgrade =
                    header("upgrade").is_some_and(|v| v.eq_ignore_ascii_case("websocket"));
                let length = header("content-length").and_then(|v| v.trim().parse::<usize>().ok());
                let bearer = header("authorization")
                    .and_then(|v| v.strip_prefix("Bearer ").map(str::to_owned));
                let json_body = header("content-type").is_some_and(|v| is_json(&v));
                let refusal = cross_site_refusal(
                    &ctx.config.auth,
                    header("host").as_deref(),
                    header("origin").as_deref(),
                    upgrade || req.method == Some("POST"),
                );
                break (
                    req.method.unwrap_or_default().to_owned(),
                    req.path.unwrap_or_default().to_owned(),
                    upgrade,
                    head_len,
                    length,
                    bearer,
                    json_body,
                    refusal,
                );
            }
            Ok(httparse::Status::Partial) if head.len() < MAX_HEAD => continue,
            Ok(httparse::Status::Partial) => {
                respond(
                    &mut stream,
                    "431 Request Header Fields Too Large",
                    "text/plain",
                    "request head too large\n",
                )
                .await?;
                return Ok(Opening::Answered);
            }
            Err(_) => {
                respond(
                    &mut stream,
                    "400 Bad Request",
                    "text/plain",
                    "not an HTTP request\n",
                )
                .await?;
                return Ok(Opening::Answered);
            }
        }
    };
    let (method, path, upgrade, head_len, length, bearer, json_body, refusal) = parsed;
    if let Some(reason) = refusal {
        respond(
            &mut stream,
            "403 Forbidden",
            "text/plain",
            &format!("{reason}\n"),
        )
        .await?;
        return Ok(Opening::Answered);
    }
    if upgrade {
        return Ok(Opening::Upgrade(Rewound {
            prefix: head,
            read: 0,
            inner: stream,
        }));
    }
    let path = path.split('?').next().unwrap_or_default().to_owned();
    if method == "POST" {
        if let Some(topic) = path.strip_prefix("/v1/publish/") {
            if ctx.auth.enabled() {
                let principal = bearer.as_deref().and_then(|t| ctx.auth.check(t));
                let refusal = match principal {
                    None => Some((
                        "401 Unauthorized",
                        error_json("unauthorized", "send Authorization: Bearer <token>"),
                    )),
                    Some(p) if !p.may_publish(topic) => Some((
                        "403 Forbidden",
                        error_json(
                            "forbidden",
                            &format!("token {:?} may not publish to {topic}", p.name),
                        ),
                    )),
                    Some(_) => None,
                };
                if let Some((status, body)) = refusal {
                    respond(&mut stream, status, "application/json", &body).await?;
                    return Ok(Opening::Answered);
                }
            }
            // A cross-site form can post text/plain without a preflight; JSON it cannot.
            if !json_body {
                let body = error_json(
                    "unsupported",
                    "send the payload with content-type: application/json",
                );
                respond(
                    &mut stream,
                    "415 Unsupported Media Type",
                    "application/json",
                    &body,
                )
                .await?;
                return Ok(Opening::Answered);
            }
            let body = match read_body(
                &mut stream,
                &head[head_len..],
                length,
                ctx.config.max_frame_bytes,
            )
            .await?
            {
                Ok(body) => body,
                Err((status, message)) => {
                    let reply = error_json("too_large", &message);
                    respond(&mut stream, status, "application/json", &reply).await?;
                    return Ok(Opening::Answered);
                }
            };
            let (status, reply) = publish(ctx, topic, &body).await;
            respond(&mut stream, status, "application/json", &reply).await?;
            return Ok(Opening::Answered);
        }
    }
    if method == "GET" && path == "/metrics" {
        // Metrics name consumers and count topics: with auth on they need a token that may
        // read them, unless the operator made them public.
        let auth = &ctx.config.auth;
        if ctx.auth.enabled() && !auth.public_metrics {
            let principal = bearer.as_deref().and_then(|t| ctx.auth.check(t));
            let refusal = match principal {
                None => Some(("401 Unauthorized", "send Authorization: Bearer <token>\n")),
                Some(p) if !p.may_read_metrics() => Some((
                    "403 Forbidden",
                    "this token may not read metrics (it needs metrics or admin = true)\n",
                )),
                Some(_) => None,
            };
            if let Some((status, text)) = refusal {
                respond(&mut stream, status, "text/plain", text).await?;
                return Ok(Opening::Answered);
            }
        }
        let text = render_metrics(ctx);
        respond(&mut stream, "200 OK", "text/plain; version=0.0.4", &text).await?;
        return Ok(Opening::Answered);
    }
    let (status, kind, body) = match (method.as_str(), path.as_str()) {
        ("GET", "/") | ("GET", "/index.html") => ("200 OK", "text/html; charset=utf-8", DEMO_HTML),
        ("GET", "/wharf.js") => ("200 OK", "text/javascript; charset=utf-8", CLIENT_JS),
        ("GET", "/healthz") => ("200 OK", "text/plain", "ok\n"),
        ("GET", "/readyz") => ("200 OK", "text/plain", "ready\n"),
        ("GET", p) if p == wharf_protocol::WS_PATH => (
            "426 Upgrade Required",
            "text/plain",
            "this is the WebSocket endpoint: connect with a WebSocket client\n",
        ),
        ("GET", _) => ("404 Not Found", "text/plain", "not found\n"),
        _ => (
            "405 Method Not Allowed",
            "text/plain",
            "only GET is served here\n",
        ),
    };
    respond(&mut stream, status, kind, body).await?;
    Ok(Opening::Answered)
}

/// Whether a content-type names JSON (`application/json`, parameters allowed).
fn is_json(content_type: &str) -> bool {
    content_type
        .split(';')
        .next()
        .is_some_and(|media| media.trim().eq_ignore_ascii_case("application/json"))
}

/// Why a request that a browser may have sent on a web page's behalf is refused, if it is.
///
/// With auth off nothing else stands between a page and the broker, so: the Host must name
/// the listener (an IP address, `localhost`, or `auth.allowed_hosts`), which defeats DNS
/// rebinding; and a WebSocket upgrade or POST carrying an Origin must come from a loopback
/// origin. With `auth.allowed_origins` set, an Origin must be listed whether auth is on or
/// not. Requests without an Origin are not from a web page and pass.
fn cross_site_refusal(
    auth: &crate::config::Auth,
    host: Option<&str>,
    origin: Option<&str>,
    checks_origin: bool,
) -> Option<&'static str> {
    if !auth.enabled && host.is_some_and(|h| !host_allowed(auth, h)) {
        return Some("host not allowed: with auth off, use the listener's address or localhost");
    }
    let origin = origin.filter(|_| checks_origin)?;
    if !auth.allowed_origins.is_empty() {
        return (!auth.allowed_origins.iter().any(|o| o == origin)).then_some("origin not allowed");
    }
    if !auth.enabled && !origin_is_loopback(origin) {
        return Some("origin not allowed: with auth off, only loopback origins may connect");
    }
    None
}

/// The host part of `host[:port]` or `[v6]:port`.
fn host_name(authority: &str) -> &str {
    match authority.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or_default(),
        None => authority.rsplit_once(':').map_or(authority, |(h, _)| h),
    }
}

fn is_localhost(name: &str) -> bool {
    let name = name.trim_end_matches('.').to_ascii_lowercase();
    name == "localhost" || name.ends_with(".localhost")
}

fn host_allowed(auth: &crate::config::Auth, host: &str) -> bool {
    let name = host_name(host.trim());
    name.parse::<std::net::IpAddr>().is_ok()
        || is_localhost(name)
        || auth
            .allowed_hosts
            .iter()
            .any(|allowed| allowed.eq_ignore_ascii_case(name))
}

/// `http(s)://` with a loopback address or `localhost` (`null`, from files and sandboxed
/// frames, is not: any page can be sandboxed).
fn origin_is_loopback(origin: &str) -> bool {
    let Some((_, rest)) = origin.split_once("://") else {
        return false;
    };
    let name = host_name(rest.split('/').next().unwrap_or_default());
    is_localhost(name)
        || name
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// The request body: what came with the head plus the rest, up to `limit` bytes.
async fn read_body(
    stream: &mut Conn,
    already: &[u8],
    length: Option<usize>,
    limit: usize,
) -> io::Result<Result<Vec<u8>, (&'static str, String)>> {
    let Some(length) = length else {
        return Ok(Err((
            "411 Length Required",
            "a Content-Length header is required".into(),
        )));
    };
    if length > limit {
        return Ok(Err((
            "413 Payload Too Large",
            format!("the body is {length} bytes, the limit is {limit}"),
        )));
    }
    let mut body = already[..already.len().min(length)].to_vec();
    body.resize(length, 0);
    let have = already.len().min(length);
    stream.read_exact(&mut body[have..]).await?;
    Ok(Ok(body))
}

fn error_json(code: &str, message: &str) -> String {
    serde_json::json!({"code": code, "message": message}).to_string()
}

/// `POST /v1/publish/{topic}`: the body is the payload; answers `{"seq":N}` once durable.
async fn publish(ctx: &Arc<server::Context>, topic: &str, body: &[u8]) -> (&'static str, String) {
    let topic = match Topic::parse(topic) {
        Ok(t) => t,
        Err(e) => return ("400 Bad Request", error_json("invalid_topic", &e.0)),
    };
    let payload = match std::str::from_utf8(body)
        .ok()
        .and_then(|text| serde_json::from_str::<Box<serde_json::value::RawValue>>(text).ok())
    {
        Some(raw) => raw,
        None => {
            return (
                "400 Bad Request",
                error_json("bad_json", "the body must be one JSON value"),
            )
        }
    };
    let max = ctx.config.max_json_depth;
    if wharf_protocol::json_nesting_exceeds(payload.get(), max) {
        let message =
            format!("the payload nests arrays and objects more than {max} deep (max_json_depth)");
        return ("400 Bad Request", error_json("bad_request", &message));
    }
    let entry = Entry::Events(vec![NewEvent {
        topic: topic.as_str().to_owned(),
        payload: payload.get().to_owned(),
        time_ms: now_ms(),
        msg_id: None,
    }]);
    match ctx.store.log.append(vec![entry]).await {
        Ok(receipts) => match receipts.first() {
            Some(Receipt::Seqs(seqs)) if !seqs.is_empty() => {
                ("200 OK", serde_json::json!({"seq": seqs[0].0}).to_string())
            }
            _ => (
                "500 Internal Server Error",
                error_json("internal", "publish got no seq"),
            ),
        },
        Err(e) => (
            "500 Internal Server Error",
            error_json("internal", &e.to_string()),
        ),
    }
}

/// `/metrics`: counters and histograms as recorded, plus gauges read off the state now.
fn render_metrics(ctx: &Arc<server::Context>) -> String {
    let store = &ctx.store;
    let (segments, bytes) = store.log.size();
    ::metrics::gauge!(metrics::LOG_SEGMENTS).set(segments as f64);
    ::metrics::gauge!(metrics::LOG_BYTES).set(bytes as f64);
    ::metrics::gauge!(metrics::STATE_BYTES).set(store.state.size_on_disk() as f64);
    let head = store.feed.head();
    ::metrics::gauge!(metrics::HEAD_SEQ).set(head as f64);
    let mut names = store.consumers.names();
    ::metrics::gauge!(metrics::CONSUMERS).set(names.len() as f64);
    // A label per consumer, for a bounded number of them, from the consumers there are now.
    names.sort();
    names.truncate(ctx.config.metrics_consumer_labels);
    let rows: Vec<metrics::ConsumerRow> = names
        .into_iter()
        .filter_map(|name| {
            let c = store.consumers.get(&name)?;
            let info = c.info();
            Some(metrics::ConsumerRow {
                name,
                ack_pending: info.ack_pending as u64,
                lag: store
                    .feed
                    .lag(&c.patterns, info.ack_floor, info.acked_above_floor),
            })
        })
        .collect();
    let mut text = metrics::handle().render();
    text.push_str(&metrics::consumer_series(&rows));
    text
}

async fn respond(stream: &mut Conn, status: &str, kind: &str, body: &str) -> io::Result<()> {
    let head = format!(
        "HTTP/1.1 {status}\r\ncontent-type: {kind}\r\ncontent-length: {}\r\ncache-control: no-cache\r\nconnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(body.as_bytes()).await?;
    stream.shutdown().await
}

/// Answers 503 with `reason` and closes (over a limit).
pub async fn refuse(stream: TcpStream, reason: &str) {
    let mut stream = Conn::Plain(stream);
    let body = format!("{reason}\n");
    let _gone = respond(&mut stream, "503 Service Unavailable", "text/plain", &body).await;
}

/// Answers while the log is still being recovered: alive (`/healthz`), not ready (everything
/// else, `/readyz` included, gets 503).
pub async fn answer_recovering(mut stream: Conn) -> io::Result<()> {
    let mut head = Vec::with_capacity(512);
    let mut chunk = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < MAX_HEAD {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Ok(());
        }
        head.extend_from_slice(&chunk[..n]);
    }
    let line = String::from_utf8_lossy(&head);
    let path = line.split_whitespace().nth(1).unwrap_or_default();
    if path == "/healthz" {
        respond(&mut stream, "200 OK", "text/plain", "ok\n").await
    } else {
        respond(
            &mut stream,
            "503 Service Unavailable",
            "text/plain",
            "recovering the log\n",
        )
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Auth;

    #[test]
    fn hosts_and_origins_with_auth_off() {
        let auth = Auth {
            allowed_hosts: vec!["wharf.internal".into()],
            ..Auth::default()
        };
        let refused = |host, origin| cross_site_refusal(&auth, host, origin, true).is_some();
        for ok in [
            "127.0.0.1:7700",
            "localhost",
            "[::1]:7700",
            "10.0.0.5",
            "WHARF.internal:80",
        ] {
            assert!(!refused(Some(ok), None), "{ok}");
        }
        for bad in [
            "evil.example:7700",
            "localhost.evil.example",
            "127.0.0.1.nip.io",
        ] {
            assert!(refused(Some(bad), None), "{bad}");
        }
        for ok in [
            "http://localhost:3000",
            "https://127.0.0.1",
            "http://[::1]:8080",
        ] {
            assert!(!refused(Some("localhost"), Some(ok)), "{ok}");
        }
        for bad in [
            "https://evil.example",
            "null",
            "http://10.0.0.5",
            "localhost",
        ] {
            assert!(refused(Some("localhost"), Some(bad)), "{bad}");
        }
        assert!(cross_site_refusal(&auth, None, Some("https://evil.example"), false).is_none());
    }

    #[test]
    fn with_auth_on_only_listed_origins_are_checked() {
        let mut auth = Auth {
            enabled: true,
            ..Auth::default()
        };
        assert!(
            cross_site_refusal(&auth, Some("evil.example"), Some("https://x.example"), true)
                .is_none()
        );
        auth.allowed_origins = vec!["https://app.example".into()];
        assert!(cross_site_refusal(&auth, None, Some("https://x.example"), true).is_some());
        assert!(cross_site_refusal(&auth, None, Some("https://app.example"), true).is_none());
    }

    #[test]
    fn json_content_types() {
        assert!(is_json("application/json") && is_json("Application/JSON; charset=utf-8"));
        assert!(!is_json("text/plain") && !is_json("application/jsonx"));
    }
}
