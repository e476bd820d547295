//! One bare WebSocket to a broker: the URL and token handling every connection of this
//! crate uses ([`open`], also the driver's), and [`Connection`], the low-level layer for
//! code that counts the broker's cost per event and must not add its own (`wharf bench`):
//! no driver task, no channels, no reconnects, no request matching. Frames go out as the
//! JSON text given and come back as the broker's text ([`Text`], not copied), so the caller
//! parses only what it looks at.

use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use crate::options::{Options, Token};
use crate::Error;

pub(crate) type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Opens a WebSocket to `url`, with the token (asked now if it is a source) as
/// `Authorization: Bearer`. The error starts with the URL.
pub(crate) async fn open(
    url: &str,
    token: &Option<Token>,
    read_buffer: usize,
) -> Result<Ws, String> {
    let mut request = url
        .into_client_request()
        .map_err(|e| format!("{url}: not a WebSocket URL: {e}"))?;
    let token = match token {
        None => None,
        Some(Token::Static(t)) => Some(t.clone()),
        Some(Token::Fresh(source)) => Some(
            source()
                .await
                .map_err(|e| format!("{url}: no token: {e}"))?,
        ),
    };
    if let Some(token) = token {
        let value = format!("Bearer {token}")
            .parse()
            .map_err(|_| format!("{url}: the token holds characters a header cannot carry"))?;
        request.headers_mut().insert("authorization", value);
    }
    let config = WebSocketConfig::default().read_buffer_size(read_buffer);
    let (ws, _) = tokio_tungstenite::connect_async_with_config(request, Some(config), true)
        .await
        .map_err(|e| format!("{url}: {e}"))?;
    Ok(ws)
}

/// A text frame from the broker, as it came (shared with the socket's buffer, not copied).
///
/// ```no_run
/// # async fn demo(mut c: wharf_client::Connection) -> Result<(), wharf_client::Error> {
/// let text = c.next().await?;
/// if text.starts_with(r#"{"type":"event""#) {
///     println!("{}", &*text);
/// }
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct Text(Utf8Bytes);

impl Text {
    /// The frame's JSON text.
    ///
    /// ```no_run
    /// # async fn demo(mut c: wharf_client::Connection) -> Result<(), wharf_client::Error> {
    /// let reply: serde_json::Value = serde_json::from_str(c.next().await?.as_str()).unwrap();
    /// # Ok(())
    /// # }
    /// ```
    pub fn as_str(&self) -> &str {
        self.0.as_str()
    }
}

impl std::fmt::Display for Text {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.0.as_str())
    }
}

impl std::ops::Deref for Text {
    type Target = str;
    fn deref(&self) -> &str {
        self.0.as_str()
    }
}

/// A raw connection to one broker: send request frames, read what comes back, in order.
/// Nothing is done for the caller (no ids, no reconnect, no acks); see the module docs of
/// [`crate::Client`] for what that costs to get right. [`Connection::split`] gives a half
/// to write with and a half to read with, for separate tasks.
///
/// ```no_run
/// # async fn demo() -> Result<(), wharf_client::Error> {
/// use wharf_client::{Connection, Options};
/// let mut c = Connection::open(&Options::new("ws://127.0.0.1:7700/ws")).await?;
/// for i in 0..100 {
///     c.feed(format!(r#"{{"op":"publish","id":{i},"topic":"bench.x","payload":{i}}}"#)).await?;
/// }
/// c.flush().await?;
/// for _ in 0..100 {
///     assert!(c.next().await?.starts_with(r#"{"type":"published""#));
/// }
/// # Ok(())
/// # }
/// ```
pub struct Connection {
    sender: Sender,
    receiver: Receiver,
}

/// The half of a [`Connection`] that sends.
pub struct Sender {
    sink: SplitSink<Ws, Message>,
}

/// The half of a [`Connection`] that reads.
pub struct Receiver {
    stream: SplitStream<Ws>,
}

/// Why a connection ended, from the close frame's reason when it gives one.
pub(crate) fn closed_by_broker(reason: Option<&str>) -> String {
    match reason {
        Some(reason) if !reason.is_empty() => format!("the broker closed the connection: {reason}"),
        _ => "the broker closed the connection".to_owned(),
    }
}

fn lost(e: impl std::fmt::Display) -> Error {
    Error::Disconnected(e.to_string())
}

impl Connection {
    /// Connects to the first of `options.urls` that answers, each tried once (for at most
    /// `options.connect_timeout`), with `options.token` and `options.read_buffer` (the other
    /// options are the driver's).
    ///
    /// ```no_run
    /// # async fn demo() -> Result<(), wharf_client::Error> {
    /// use wharf_client::{Connection, Options};
    /// let c = Connection::open(&Options::new("ws://127.0.0.1:7700/ws").token("s3cret")).await?;
    /// # Ok(())
    /// # }
    /// ```
    pub async fn open(options: &Options) -> Result<Connection, Error> {
        let mut why = "no broker URL given".to_owned();
        for url in &options.urls {
            // An address that drops packets would otherwise hold this until the OS gives up.
            let opening = open(url, &options.token, options.read_buffer);
            let opened = tokio::time::timeout(options.connect_timeout, opening)
                .await
                .unwrap_or_else(|_| Err(format!("{url}: no answer in time")));
            match opened {
                Ok(ws) => {
                    let (sink, stream) = ws.split();
                    return Ok(Connection {
                        sender: Sender { sink },
                        receiver: Receiver { stream },
                    });
                }
                Err(e) => why = e,
            }
        }
        Err(Error::Connect(why))
    }

    /// Sends one frame (JSON text) and flushes it.
    ///
    /// ```no_run
    /// # async fn demo(mut c: wharf_client::Connection) -> Result<(), wharf_client::Error> {
    /// c.send(r#"{"op":"stats","id":1}"#).await?;
    /// # Ok(())
    /// # }
    /// ```
    pub async fn send(&mut self, frame: impl Into<String>) -> Result<(), Error> {
        self.sender.send(frame).await
    }

    /// Queues one frame without flushing: pipelined requests leave in as few writes as the
    /// socket takes. [`Connection::flush`] sends what is queued.
    ///
    /// ```no_run
    /// # async fn demo(mut c: wharf_client::Connection) -> Result<(), wharf_client::Error> {
    /// c.feed(r#"{"op":"ping","id":1}"#).await?;
    /// c.feed(r#"{"op":"ping","id":2}"#).await?;
    /// c.flush().await?;
    /// # Ok(())
    /// # }
    /// ```
    pub async fn feed(&mut self, frame: impl Into<String>) -> Result<(), Error> {
        self.sender.feed(frame).await
    }

    /// Sends what [`Connection::feed`] queued.
    ///
    /// ```no_run
    /// # async fn demo(mut c: wharf_client::Connection) -> Result<(), wharf_client::Error> {
    /// c.flush().await?;
    /// # Ok(())
    /// # }
    /// ```
    pub async fn flush(&mut self) -> Result<(), Error> {
        self.sender.flush().await
    }

    /// The next text frame from the broker (pings are answered by the socket, other
    /// control frames skipped); [`Error::Disconnected`] once the connection is gone.
    ///
    /// ```no_run
    /// # async fn demo(mut c: wharf_client::Connection) -> Result<(), wharf_client::Error> {
    /// c.send(r#"{"op":"ping","id":1}"#).await?;
    /// assert_eq!(&*c.next().await?, r#"{"type":"pong","id":1}"#);
    /// # Ok(())
    /// # }
    /// ```
    pub async fn next(&mut self) -> Result<Text, Error> {
        self.receiver.next().await
    }

    /// The two halves, to write from one task and read from another.
    ///
    /// ```no_run
    /// # async fn demo(c: wharf_client::Connection) -> Result<(), wharf_client::Error> {
    /// let (mut sender, mut receiver) = c.split();
    /// let reader = tokio::spawn(async move { receiver.next().await });
    /// sender.send(r#"{"op":"ping","id":1}"#).await?;
    /// # Ok(())
    /// # }
    /// ```
    pub fn split(self) -> (Sender, Receiver) {
        (self.sender, self.receiver)
    }

    /// Sends a close frame and waits for it to leave.
    ///
    /// ```no_run
    /// # async fn demo(c: wharf_client::Connection) {
    /// c.close().await;
    /// # }
    /// ```
    pub async fn close(mut self) {
        let _gone_anyway = self.sender.sink.close().await;
    }
}

impl Sender {
    /// See [`Connection::send`].
    ///
    /// ```no_run
    /// # async fn demo(mut s: wharf_client::Sender) -> Result<(), wharf_client::Error> {
    /// s.send(r#"{"op":"ping","id":1}"#).await?;
    /// # Ok(())
    /// # }
    /// ```
    pub async fn send(&mut self, frame: impl Into<String>) -> Result<(), Error> {
        self.sink
            .send(Message::text(frame.into()))
            .await
            .map_err(lost)
    }

    /// See [`Connection::feed`].
    ///
    /// ```no_run
    /// # async fn demo(mut s: wharf_client::Sender) -> Result<(), wharf_client::Error> {
    /// s.feed(r#"{"op":"ping","id":1}"#).await?;
    /// s.flush().await?;
    /// # Ok(())
    /// # }
    /// ```
    pub async fn feed(&mut self, frame: impl Into<String>) -> Result<(), Error> {
        self.sink
            .feed(Message::text(frame.into()))
            .await
            .map_err(lost)
    }

    /// See [`Connection::flush`].
    ///
    /// ```no_run
    /// # async fn demo(mut s: wharf_client::Sender) -> Result<(), wharf_client::Error> {
    /// s.flush().await?;
    /// # Ok(())
    /// # }
    /// ```
    pub async fn flush(&mut self) -> Result<(), Error> {
        self.sink.flush().await.map_err(lost)
    }
}

impl Receiver {
    /// See [`Connection::next`].
    ///
    /// ```no_run
    /// # async fn demo(mut r: wharf_client::Receiver) -> Result<(), wharf_client::Error> {
    /// let text = r.next().await?;
    /// # Ok(())
    /// # }
    /// ```
    pub async fn next(&mut self) -> Result<Text, Error> {
        loop {
            match self.stream.next().await {
                Some(Ok(Message::Text(text))) => return Ok(Text(text)),
                Some(Ok(Message::Close(frame))) => {
                    return Err(lost(closed_by_broker(
                        frame.as_ref().map(|f| f.reason.as_str()),
                    )));
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => return Err(lost(e)),
                None => return Err(lost("the connection ended")),
            }
        }
    }
}
