//! The front door: every connection starts as HTTP. A WebSocket upgrade on `/ws` goes on to
//! a session; anything else is answered here: the demo page (`/`), the chat page (`/chat`),
//! the console (`/admin`) and the browser client (`/wharf.js`), all embedded in the binary; `/healthz`, `/readyz`
//! and `/metrics` for operators; `POST /v1/publish/{topic}` for curl, webhooks and cron jobs.

use std::io;
use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::net::answer::{reply, text, Answer};
use crate::net::publish;
use crate::shutdown::Shutdown;
use crate::tls::{Conn, Rewound};
use crate::{context, metrics};

/// The browser client, served at `/wharf.js`.
pub const CLIENT_JS: &str = include_str!("../../../clients/js/wharf.js");
/// The demo page, served at `/`.
pub const DEMO_HTML: &str = include_str!("../../../clients/js/demo.html");
/// The durable chat page (history, presence), served at `/chat`.
pub const CHAT_HTML: &str = include_str!("../../../clients/js/chat.html");
/// The operator's console (rates, log, topics, consumers, seek, delete), served at `/admin`.
pub const ADMIN_HTML: &str = include_str!("../../../clients/js/admin.html");

/// The most a request head may take.
const MAX_HEAD: usize = 16 * 1024;

/// What the first request on a connection asks for.
pub enum Opening {
    /// A WebSocket upgrade: hand the stream to the handshake.
    Upgrade(Rewound),
    /// Plain HTTP: serve it (and what follows on the connection) with [`serve_http`].
    Http(Rewound),
    /// Refused or gone; nothing more to do.
    Closed,
}

/// Reads the first request head, only to tell a WebSocket upgrade (which goes on to the
/// handshake, its Host and Origin checked here) from anything else (served by hyper, which
/// reads the same bytes again).
pub async fn open(mut stream: Conn, ctx: &Arc<context::Context>) -> io::Result<Opening> {
    let mut head = Vec::with_capacity(1024);
    let mut chunk = [0u8; 2048];
    let refusal = loop {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Ok(Opening::Closed);
        }
        head.extend_from_slice(&chunk[..n]);
        let mut headers = [httparse::EMPTY_HEADER; 64];
        let mut req = httparse::Request::new(&mut headers);
        match req.parse(&head) {
            Ok(httparse::Status::Complete(_)) => {
                let header = |name: &str| {
                    req.headers
                        .iter()
                        .find(|h| h.name.eq_ignore_ascii_case(name))
                        .map(|h| String::from_utf8_lossy(h.value).into_owned())
                };
                let upgrade =
                    header("upgrade").is_some_and(|v| v.eq_ignore_ascii_case("websocket"));
                if !upgrade {
                    break None;
                }
                break Some(cross_site_refusal(
                    ctx.auth().settings(),
                    header("host").as_deref(),
                    header("origin").as_deref(),
                    true,
                ));
            }
            Ok(httparse::Status::Partial) if head.len() < MAX_HEAD => continue,
            // hyper answers a head too large (431) or malformed (400).
            _ => break None,
        }
    };
    let rewound = Rewound::new(head, stream);
    match refusal {
        None => Ok(Opening::Http(rewound)),
        Some(None) => Ok(Opening::Upgrade(rewound)),
        Some(Some(reason)) => {
            let mut stream = rewound.into_inner();
            respond(
                &mut stream,
                "403 Forbidden",
                "text/plain",
                &format!("{reason}\n"),
            )
            .await?;
            Ok(Opening::Closed)
        }
    }
}

/// Serves HTTP/1.1 on a connection with hyper: keep-alive, chunked bodies, `HEAD`,
/// `Expect: 100-continue`. A connection waiting longer than `handshake_timeout` for a
/// request head is closed; at shutdown the request in progress finishes first.
pub async fn serve_http(stream: Rewound, ctx: Arc<context::Context>, mut shutdown: Shutdown) {
    let io = hyper_util::rt::TokioIo::new(stream);
    let service_ctx = ctx.clone();
    let service = hyper::service::service_fn(move |req| {
        let ctx = service_ctx.clone();
        async move { Ok::<_, std::convert::Infallible>(answer(req, &ctx).await) }
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(ctx.config.handshake_timeout)
        .keep_alive(true);
    let conn = builder.serve_connection(io, service);
    tokio::pin!(conn);
    let served = tokio::select! {
        served = conn.as_mut() => served,
        _ = shutdown.wait() => {
            conn.as_mut().graceful_shutdown();
            conn.as_mut().await
        }
    };
    if let Err(e) = served {
        tracing::debug!(error = %e, "HTTP connection ended");
    }
}

/// Answers one request.
async fn answer(req: hyper::Request<hyper::body::Incoming>, ctx: &Arc<context::Context>) -> Answer {
    use hyper::{Method, StatusCode};
    let (parts, body) = req.into_parts();
    let header = |name: &str| parts.headers.get(name).and_then(|v| v.to_str().ok());
    let host = header("host")
        .map(str::to_owned)
        .or_else(|| parts.uri.authority().map(|a| a.to_string()));
    // The tokens and `[auth]` settings of now: SIGHUP may have replaced them.
    let auth = ctx.auth();
    if let Some(reason) = cross_site_refusal(
        auth.settings(),
        host.as_deref(),
        header("origin"),
        parts.method == Method::POST,
    ) {
        return text(StatusCode::FORBIDDEN, reason);
    }
    let bearer = header("authorization")
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::to_owned);
    let path = parts.uri.path();
    let get = parts.method == Method::GET || parts.method == Method::HEAD;
    if path == "/v1/publish" || path.starts_with("/v1/publish/") {
        if parts.method != Method::POST {
            let mut answer = text(StatusCode::METHOD_NOT_ALLOWED, "publish with POST");
            answer.headers_mut().insert(
                hyper::header::ALLOW,
                hyper::header::HeaderValue::from_static("POST"),
            );
            return answer;
        }
        let request = publish::PublishRequest {
            topic: path.strip_prefix("/v1/publish/").map(str::to_owned),
            bearer,
            json: header("content-type").is_some_and(is_json),
            length: header("content-length").and_then(|v| v.trim().parse::<usize>().ok()),
            idempotency_key: header("idempotency-key").map(str::to_owned),
        };
        return publish::publish(ctx, request, body).await;
    }
    let known = matches!(
        path,
        "/" | "/index.html"
            | "/chat"
            | "/admin"
            | "/wharf.js"
            | "/healthz"
            | "/readyz"
            | "/metrics"
    ) || path == wharf_protocol::WS_PATH;
    if !get {
        if !known {
            return text(StatusCode::NOT_FOUND, "not found");
        }
        let mut answer = text(
            StatusCode::METHOD_NOT_ALLOWED,
            "only GET and HEAD are served here",
        );
        answer.headers_mut().insert(
            hyper::header::ALLOW,
            hyper::header::HeaderValue::from_static("GET, HEAD"),
        );
        return answer;
    }
    match path {
        "/" | "/index.html" => reply(StatusCode::OK, "text/html; charset=utf-8", DEMO_HTML),
        "/chat" => reply(StatusCode::OK, "text/html; charset=utf-8", CHAT_HTML),
        "/admin" => reply(StatusCode::OK, "text/html; charset=utf-8", ADMIN_HTML),
        "/wharf.js" => reply(StatusCode::OK, "text/javascript; charset=utf-8", CLIENT_JS),
        "/healthz" => text(StatusCode::OK, "ok"),
        "/readyz" => match ctx.backend.ready() {
            Ok(()) => text(StatusCode::OK, "ready"),
            Err(why) => text(
                StatusCode::SERVICE_UNAVAILABLE,
                &format!("not ready: {why}"),
            ),
        },
        "/metrics" => metrics_answer(ctx, bearer.as_deref()).await,
        p if p == wharf_protocol::WS_PATH => text(
            StatusCode::UPGRADE_REQUIRED,
            "this is the WebSocket endpoint: connect with a WebSocket client",
        ),
        _ => text(StatusCode::NOT_FOUND, "not found"),
    }
}

/// `/metrics`. Metrics name consumers and count topics: with auth on they need a token that
/// may read them, unless the operator made them public.
async fn metrics_answer(ctx: &Arc<context::Context>, bearer: Option<&str>) -> Answer {
    use hyper::StatusCode;
    let auth = ctx.auth();
    if auth.enabled() && !auth.settings().public_metrics {
        match bearer.and_then(|t| auth.check(t)) {
            None => {
                return text(
                    StatusCode::UNAUTHORIZED,
                    "send Authorization: Bearer <token>",
                )
            }
            Some(p) if !p.may_read_metrics() => {
                return text(
                    StatusCode::FORBIDDEN,
                    "this token may not read metrics (it needs metrics or admin = true)",
                )
            }
            Some(_) => {}
        }
    }
    reply(
        StatusCode::OK,
        "text/plain; version=0.0.4",
        render_metrics(ctx).await,
    )
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

/// `/metrics`: counters and histograms as recorded, plus gauges read off the state now.
async fn render_metrics(ctx: &Arc<context::Context>) -> String {
    // A label per consumer, for a bounded number of them, from the consumers there are now.
    let rows = ctx
        .backend
        .metrics(ctx.config.metrics_consumer_labels)
        .await;
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
