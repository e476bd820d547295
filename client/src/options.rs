//! How a [`crate::Client`] connects: URLs, token, backoff, bounds.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

/// Gives a fresh token (a JWT) before each connection.
pub type TokenSource =
    Arc<dyn Fn() -> Pin<Box<dyn Future<Output = Result<String, String>> + Send>> + Send + Sync>;

/// The token sent as `Authorization: Bearer` at each connection.
#[derive(Clone)]
pub enum Token {
    Static(String),
    /// Asked before every connection (short-lived JWTs).
    Fresh(TokenSource),
}

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Token::Static(_) => "Token::Static(..)",
            Token::Fresh(_) => "Token::Fresh(..)",
        })
    }
}

/// Connection settings; [`Options::new`] gives the defaults.
///
/// ```
/// use std::time::Duration;
/// use wharf_client::Options;
/// let options = Options::new("ws://10.0.0.1:7700/ws")
///     .url("ws://10.0.0.2:7700/ws")
///     .max_queued(1000)
///     .max_backoff(Duration::from_secs(2));
/// assert_eq!(options.urls.len(), 2);
/// ```
#[derive(Clone, Debug)]
pub struct Options {
    /// Brokers (wharf nodes) to try, in turn.
    pub urls: Vec<String>,
    pub token: Option<Token>,
    /// The first reconnect waits about this long (with jitter), doubling up to
    /// `max_backoff`.
    pub min_backoff: Duration,
    pub max_backoff: Duration,
    /// How long [`crate::Client::connect`] tries before giving up.
    pub connect_timeout: Duration,
    /// Publishes that may wait for the connection (and for their confirmation) at once.
    pub max_queued: usize,
    /// Whether [`crate::Client::connect`] tries again (with backoff, for `connect_timeout`)
    /// until a broker answers. Off, it tries each URL once and fails at once: a
    /// command-line tool reports a broker that is not there instead of hanging.
    pub retry_connect: bool,
    /// Whether a lost connection is made again. Off, the client closes for good when it
    /// drops: calls waiting for a reply fail with [`crate::Error::Disconnected`] (a publish
    /// among them may or may not be stored), subscriptions end, and the state becomes
    /// [`crate::State::Disconnected`]. For a tool that must say where it stopped rather
    /// than carry on.
    pub reconnect: bool,
    /// Bytes of the socket's read buffer (per connection). Many idle connections in one
    /// process (a load generator) want it small.
    pub read_buffer: usize,
    /// A file that keeps publishes (those with msg_ids: `publish`, `publish_raw`,
    /// `publish_batch`) from before they are sent until they are answered, so that they
    /// survive the process: the next client on the file sends what is left first, with the
    /// same msg_ids (stored once inside the broker's `dedup_window`). Each publish costs a
    /// write and an fdatasync. One client per file (a lock on `PATH.lock`).
    pub outbox: Option<std::path::PathBuf>,
}

impl Options {
    /// One URL, no token, backoff 100 ms to 5 s, 10 s to connect, 10,000 queued publishes,
    /// reconnecting for ever, a 128 KiB read buffer.
    ///
    /// ```
    /// let options = wharf_client::Options::new("ws://127.0.0.1:7700/ws");
    /// assert_eq!(options.max_queued, 10_000);
    /// assert!(options.reconnect);
    /// ```
    pub fn new(url: impl Into<String>) -> Options {
        Options {
            urls: vec![url.into()],
            token: None,
            min_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(10),
            max_queued: 10_000,
            retry_connect: true,
            reconnect: true,
            read_buffer: 128 * 1024,
            outbox: None,
        }
    }

    /// Another broker to try.
    ///
    /// ```
    /// let options = wharf_client::Options::new("ws://a:7700/ws").url("ws://b:7700/ws");
    /// assert_eq!(options.urls, ["ws://a:7700/ws", "ws://b:7700/ws"]);
    /// ```
    pub fn url(mut self, url: impl Into<String>) -> Options {
        self.urls.push(url.into());
        self
    }

    /// A static token.
    ///
    /// ```
    /// let options = wharf_client::Options::new("ws://127.0.0.1:7700/ws").token("s3cret");
    /// assert!(options.token.is_some());
    /// ```
    pub fn token(mut self, token: impl Into<String>) -> Options {
        self.token = Some(Token::Static(token.into()));
        self
    }

    /// A token asked for before each connection (a JWT that expires).
    ///
    /// ```
    /// let options = wharf_client::Options::new("ws://127.0.0.1:7700/ws")
    ///     .fresh_token(|| async { Ok::<_, String>("a.jwt.token".to_owned()) });
    /// assert!(options.token.is_some());
    /// ```
    pub fn fresh_token<F, Fut>(mut self, source: F) -> Options
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<String, String>> + Send + 'static,
    {
        self.token = Some(Token::Fresh(Arc::new(move || Box::pin(source()))));
        self
    }

    /// The bound of the offline publish queue.
    ///
    /// ```
    /// let options = wharf_client::Options::new("ws://127.0.0.1:7700/ws").max_queued(5);
    /// assert_eq!(options.max_queued, 5);
    /// ```
    pub fn max_queued(mut self, n: usize) -> Options {
        self.max_queued = n;
        self
    }

    /// The longest wait between reconnect attempts.
    ///
    /// ```
    /// # use std::time::Duration;
    /// let options = wharf_client::Options::new("ws://h/ws").max_backoff(Duration::from_secs(1));
    /// assert_eq!(options.max_backoff, Duration::from_secs(1));
    /// ```
    pub fn max_backoff(mut self, wait: Duration) -> Options {
        self.max_backoff = wait;
        self
    }

    /// The shortest wait between reconnect attempts (the first one waits about this long).
    ///
    /// ```
    /// # use std::time::Duration;
    /// let options = wharf_client::Options::new("ws://h/ws").min_backoff(Duration::from_millis(50));
    /// assert_eq!(options.min_backoff, Duration::from_millis(50));
    /// ```
    pub fn min_backoff(mut self, wait: Duration) -> Options {
        self.min_backoff = wait;
        self
    }

    /// Whether [`crate::Client::connect`] retries until `connect_timeout` (see
    /// [`Options::retry_connect`](Options#structfield.retry_connect)).
    ///
    /// ```
    /// let options = wharf_client::Options::new("ws://127.0.0.1:7700/ws").retry_connect(false);
    /// assert!(!options.retry_connect);
    /// ```
    pub fn retry_connect(mut self, retry: bool) -> Options {
        self.retry_connect = retry;
        self
    }

    /// Whether a lost connection is made again (see
    /// [`Options::reconnect`](Options#structfield.reconnect)).
    ///
    /// ```
    /// // One connection, failing fast: what a command-line tool wants.
    /// let options = wharf_client::Options::new("ws://127.0.0.1:7700/ws")
    ///     .retry_connect(false)
    ///     .reconnect(false);
    /// assert!(!options.reconnect);
    /// ```
    pub fn reconnect(mut self, reconnect: bool) -> Options {
        self.reconnect = reconnect;
        self
    }

    /// The socket's read buffer, in bytes.
    ///
    /// ```
    /// let options = wharf_client::Options::new("ws://127.0.0.1:7700/ws").read_buffer(4096);
    /// assert_eq!(options.read_buffer, 4096);
    /// ```
    pub fn read_buffer(mut self, bytes: usize) -> Options {
        self.read_buffer = bytes;
        self
    }

    /// Keeps unanswered publishes in the file at `path` (see
    /// [`Options::outbox`](Options#structfield.outbox)).
    ///
    /// ```
    /// let options = wharf_client::Options::new("ws://127.0.0.1:7700/ws").outbox("orders.outbox");
    /// assert!(options.outbox.is_some());
    /// ```
    pub fn outbox(mut self, path: impl Into<std::path::PathBuf>) -> Options {
        self.outbox = Some(path.into());
        self
    }
}
