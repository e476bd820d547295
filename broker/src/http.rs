//! The front door: every connection starts as HTTP. A WebSocket upgrade on `/ws` goes on to
//! a session; a plain GET is answered here: the demo page (`/`), the browser client
//! (`/wharf.js`), and `/healthz`. Both files are embedded in the binary, so a browser needs
//! nothing but the broker.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;

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
    inner: TcpStream,
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
pub async fn open(mut stream: TcpStream) -> io::Result<Opening> {
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
            Ok(httparse::Status::Complete(_)) => {
                let upgrade = req.headers.iter().any(|h| {
                    h.name.eq_ignore_ascii_case("upgrade")
                        && String::from_utf8_lossy(h.value).eq_ignore_ascii_case("websocket")
                });
                break (
                    req.method.unwrap_or_default().to_owned(),
                    req.path.unwrap_or_default().to_owned(),
                    upgrade,
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
    let (method, path, upgrade) = parsed;
    if upgrade {
        return Ok(Opening::Upgrade(Rewound {
            prefix: head,
            read: 0,
            inner: stream,
        }));
    }
    let path = path.split('?').next().unwrap_or_default();
    let (status, kind, body) = match (method.as_str(), path) {
        ("GET", "/") | ("GET", "/index.html") => ("200 OK", "text/html; charset=utf-8", DEMO_HTML),
        ("GET", "/wharf.js") => ("200 OK", "text/javascript; charset=utf-8", CLIENT_JS),
        ("GET", "/healthz") => ("200 OK", "text/plain", "ok\n"),
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

async fn respond(stream: &mut TcpStream, status: &str, kind: &str, body: &str) -> io::Result<()> {
    let head = format!(
        "HTTP/1.1 {status}\r\ncontent-type: {kind}\r\ncontent-length: {}\r\ncache-control: no-cache\r\nconnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(body.as_bytes()).await?;
    stream.shutdown().await
}
