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
                break (
                    req.method.unwrap_or_default().to_owned(),
                    req.path.unwrap_or_default().to_owned(),
                    upgrade,
                    head_len,
                    length,
                    bearer,
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
    let (method, path, upgrade, head_len, length, bearer) = parsed;
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
