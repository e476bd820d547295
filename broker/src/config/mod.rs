//! Broker settings: embedded defaults, overridden by `config.toml`, overridden by flags.
//! Unknown keys and bad values are refused with a message that names the key.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

mod auth;
mod load;
mod nats;

pub use auth::{Auth, Jwt, TokenRule};
pub use nats::Nats;

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Address the WebSocket listener binds; port 0 picks a free port.
    pub listen: SocketAddr,
    /// Where events are stored and consumers kept: `log`, the embedded segment log on this
    /// machine's disk, or `nats`, a NATS JetStream cluster (`[nats]`).
    pub backend: BackendKind,
    /// Where the log (`log/`) and the state view (`state/`) live.
    pub data_dir: PathBuf,
    /// tracing filter, e.g. `info` or `wharf_broker=debug`; `RUST_LOG` wins when set.
    pub log_level: String,
    /// `text` for people, `json` (one object a line) for log shippers.
    pub log_format: LogFormat,
    /// How often every connection is pinged.
    #[serde(with = "humantime_serde")]
    pub heartbeat_interval: Duration,
    /// A connection that sends nothing (not even a pong) for this long after a ping is dropped.
    #[serde(with = "humantime_serde")]
    pub heartbeat_timeout: Duration,
    /// Largest text frame accepted; larger ones get a `too_large` error.
    pub max_frame_bytes: usize,
    /// Deepest nesting of arrays and objects a published payload may have (`bad_request`).
    pub max_json_depth: usize,
    /// Unacked deliveries one durable subscription may have outstanding (per-subscription
    /// `max_in_flight` overrides it).
    pub max_in_flight: usize,
    /// A delivery not acked within this is delivered again (per-subscription `ack_wait_ms`).
    #[serde(with = "humantime_serde")]
    pub ack_wait: Duration,
    /// After this many deliveries an event goes to `dead.<consumer>`; 0 = never
    /// (per-subscription `max_deliver`).
    pub max_deliver: u32,
    /// A durable consumer nobody has attached to for this long is deleted; 0 = never.
    #[serde(with = "humantime_serde")]
    pub inactive_ttl: Duration,
    /// Retention: segments whose events are all older than this are removed; 0 = keep.
    #[serde(with = "humantime_serde")]
    pub max_age: Duration,
    /// Retention: old segments are removed while at least this many events remain; 0 = keep.
    pub max_events: u64,
    /// Retention: old segments are removed while at least this many bytes remain; 0 = keep.
    pub max_bytes: u64,
    /// A publish repeating a `msg_id` seen within this window is not stored again.
    #[serde(with = "humantime_serde")]
    pub dedup_window: Duration,
    /// The most msg_ids remembered at once; a publish needing more is refused
    /// (`limit_exceeded`) rather than an id being forgotten inside the window.
    pub dedup_max_entries: usize,
    /// The HTTP request and WebSocket (and TLS) handshake must complete within this.
    #[serde(with = "humantime_serde")]
    pub handshake_timeout: Duration,
    /// A connection with no subscription that sends no request for this long is closed;
    /// 0 = never.
    #[serde(with = "humantime_serde")]
    pub idle_timeout: Duration,
    /// Connections served at once; more get HTTP 503.
    pub max_connections: usize,
    /// Connections one remote address may hold at once (loopback peers excepted); more get
    /// HTTP 503. 0 = no limit.
    pub max_connections_per_ip: usize,
    /// Subscriptions one connection may hold; more get `limit_exceeded`.
    pub max_subscriptions_per_connection: usize,
    /// Durable consumers the broker holds; creating more gets `limit_exceeded`.
    pub max_consumers: usize,
    /// Events a `history` or `last` reply holds when the request gives no `limit`.
    pub history_default_limit: usize,
    /// The largest `limit` a `history` or `last` request may give (`bad_request` past it).
    pub history_max_limit: usize,
    /// Clients present in one topic at once; a subscribe adding one more gets
    /// `limit_exceeded`.
    pub max_presence_per_topic: usize,
    /// The largest `info` a `hello` may give, in bytes of JSON (`too_large` past it).
    pub max_presence_info_bytes: usize,
    /// Frames queued to one connection before its delivery waits.
    pub outbound_queue: usize,
    /// Bytes queued to one connection before its delivery waits (a frame larger than this
    /// waits for an empty queue).
    pub outbound_queue_bytes: usize,
    /// A subscriber whose queue stays full this long is too slow: a durable one is
    /// disconnected (it resumes from its settled state), an ephemeral one skips ahead.
    #[serde(with = "humantime_serde")]
    pub slow_consumer_timeout: Duration,
    /// A new log segment is started past this size.
    pub segment_bytes: u64,
    /// `sync` (default): nothing is confirmed before it is fdatasync'ed. `relaxed`: publishes
    /// and acks are confirmed once written; the log is synced at least every
    /// `relaxed_sync_interval`, so a power loss can lose that much confirmed work.
    pub durability: Durability,
    /// The loss window of relaxed durability.
    #[serde(with = "humantime_serde")]
    pub relaxed_sync_interval: Duration,
    /// How often sled flushes the state view in the background.
    #[serde(with = "humantime_serde")]
    pub state_flush_interval: Duration,
    /// Newest events kept in memory for live delivery ...
    pub cache_events: usize,
    /// ... and the most memory they may take, in bytes (payloads count twice: the stored text
    /// and the encoded frame).
    pub cache_bytes: usize,
    /// At most this many consumers get their own labelled series in `/metrics`.
    pub metrics_consumer_labels: usize,
    /// PEM certificate chain: with `tls_key`, the listener speaks TLS (`wss://`, `https://`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key for `tls_cert`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_key: Option<PathBuf>,
    /// Who may connect, and what each token may do.
    pub auth: Auth,
    /// The cluster backend's NATS servers and stream (`backend = "nats"`).
    pub nats: Nats,
    /// Set by `wharf serve --repair`: cut damaged records out of the log before starting.
    #[serde(skip)]
    pub repair: bool,
    /// The file this was loaded from, if any: SIGHUP reloads `[auth]` and TLS from it.
    #[serde(skip)]
    pub source: Option<PathBuf>,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            listen: SocketAddr::from(([127, 0, 0, 1], 7700)),
            data_dir: PathBuf::from("wharf-data"),
            log_level: "info".into(),
            log_format: LogFormat::Text,
            heartbeat_interval: Duration::from_secs(20),
            heartbeat_timeout: Duration::from_secs(20),
            max_frame_bytes: 1 << 20,
            max_json_depth: 128,
            max_in_flight: 1000,
            ack_wait: Duration::from_secs(30),
            max_deliver: 0,
            dedup_window: Duration::from_secs(120),
            dedup_max_entries: 500_000,
            inactive_ttl: Duration::ZERO,
            max_age: Duration::ZERO,
            max_events: 0,
            max_bytes: 0,
            handshake_timeout: Duration::from_secs(10),
            idle_timeout: Duration::ZERO,
            max_connections: 10_000,
            max_connections_per_ip: 256,
            max_subscriptions_per_connection: 256,
            max_consumers: 10_000,
            history_default_limit: 50,
            history_max_limit: 1000,
            max_presence_per_topic: 1000,
            max_presence_info_bytes: 1024,
            outbound_queue: 1024,
            outbound_queue_bytes: 4 << 20,
            slow_consumer_timeout: Duration::from_secs(10),
            segment_bytes: 64 << 20,
            state_flush_interval: Duration::from_millis(500),
            durability: Durability::Sync,
            backend: BackendKind::Log,
            relaxed_sync_interval: Duration::from_millis(100),
            cache_events: 65536,
            cache_bytes: 128 << 20,
            metrics_consumer_labels: 100,
            tls_cert: None,
            tls_key: None,
            auth: Auth::default(),
            nats: Nats::default(),
            repair: false,
            source: None,
        }
    }
}

/// How the logs on stderr are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    Text,
    /// One JSON object a line: time, level, target, message and fields (Loki, Elasticsearch).
    Json,
}

/// Which backend stores events and keeps consumers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum BackendKind {
    /// The embedded segment log and sled view in `data_dir`.
    Log,
    /// A NATS JetStream cluster: wharf nodes keep nothing on disk that matters.
    Nats,
}

/// When a publish or an ack is confirmed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Durability {
    Sync,
    Relaxed,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Invalid { path: PathBuf, message: String },
    /// The TLS certificate or key the config names cannot be used.
    #[error("config: {0}")]
    Tls(#[source] crate::tls::TlsError),
}

/// A value serde accepts but the broker cannot use. Each message names its key first, the
/// way [`Config::parse`] names it for a value serde refused.
#[derive(Debug, thiserror::Error)]
pub enum InvalidValue {
    #[error("key `{0}`: must be greater than zero")]
    Zero(&'static str),
    #[error(
        "key `listen`: {0} is not a loopback address and [auth] is off; set auth.enabled \
         (with tokens) or, knowingly, auth.allow_insecure_remote = true"
    )]
    InsecureRemote(SocketAddr),
    #[error("keys `tls_cert` and `tls_key`: give both, or neither")]
    HalfTls,
    #[error("key `history_default_limit`: must not be over `history_max_limit`")]
    HistoryDefaultOverMax,
    #[error("key `auth.tokens`: auth is enabled but no token is defined (nor an [auth.jwt] key)")]
    NoToken,
    #[error("key `auth.jwt`: {0}")]
    JwtPattern(#[source] wharf_protocol::TopicError),
    #[error("key `auth.tokens[{0}].sha256`: must be 64 hex digits (wharf token hash TOKEN)")]
    TokenHash(usize),
    #[error("key `auth.tokens[{index}]`: {source}")]
    TokenPattern {
        index: usize,
        source: wharf_protocol::TopicError,
    },
    #[error("key `max_frame_bytes`: at most 67108864 (64 MiB)")]
    FrameTooLarge,
    /// A `[nats]` value the cluster backend cannot use.
    #[error("key `nats.{key}`: {message}")]
    Nats { key: &'static str, message: String },
}

impl InvalidValue {
    /// The one key the value is under, as the message names it (none for a pair of keys).
    pub fn key(&self) -> Option<String> {
        Some(match self {
            InvalidValue::Zero(key) => (*key).to_owned(),
            InvalidValue::InsecureRemote(_) => "listen".to_owned(),
            InvalidValue::HalfTls => return None,
            InvalidValue::NoToken => "auth.tokens".to_owned(),
            InvalidValue::JwtPattern(_) => "auth.jwt".to_owned(),
            InvalidValue::TokenHash(i) => format!("auth.tokens[{i}].sha256"),
            InvalidValue::TokenPattern { index, .. } => format!("auth.tokens[{index}]"),
            InvalidValue::FrameTooLarge => "max_frame_bytes".to_owned(),
            InvalidValue::HistoryDefaultOverMax => "history_default_limit".to_owned(),
            InvalidValue::Nats { key, .. } => format!("nats.{key}"),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_overrides() {
        let c = Config::parse("").unwrap();
        assert_eq!(c.listen.port(), 7700);
        let c = Config::parse("heartbeat_interval = \"150ms\"\nmax_in_flight = 5").unwrap();
        assert_eq!(c.heartbeat_interval, Duration::from_millis(150));
        assert_eq!(c.max_in_flight, 5);
    }

    #[test]
    fn the_documented_config_matches_the_embedded_defaults() {
        let text = include_str!("../../../config.toml");
        let documented = Config::parse(text).unwrap();
        assert_eq!(
            format!("{documented:?}"),
            format!("{:?}", Config::default())
        );
    }

    #[test]
    fn environment_overrides_the_file() {
        let env = |k: &str| match k {
            "WHARF_MAX_IN_FLIGHT" => Some("7".to_owned()),
            "WHARF_ACK_WAIT" => Some("2s".to_owned()),
            "WHARF_LISTEN" => Some("127.0.0.1:9".to_owned()),
            _ => None,
        };
        let c = Config::parse_with_env("max_in_flight = 5", env).unwrap();
        assert_eq!(c.max_in_flight, 7);
        assert_eq!(c.ack_wait, Duration::from_secs(2));
        assert_eq!(c.listen.port(), 9);
        let bad = Config::parse_with_env("", |k| {
            (k == "WHARF_MAX_IN_FLIGHT").then(|| "lots".to_owned())
        });
        let bad = bad.unwrap_err();
        assert!(bad.contains("WHARF_MAX_IN_FLIGHT"), "{bad}");
        // A value is typed by the key it sets: a path of digits is still a path.
        let c = Config::parse_with_env("", |k| (k == "WHARF_DATA_DIR").then(|| "2024".to_owned()))
            .unwrap();
        assert_eq!(c.data_dir, PathBuf::from("2024"));
        let c = Config::parse_with_env("", env).unwrap();
        assert_eq!(c.max_in_flight, 7);
        // The effective config round-trips.
        let again = Config::parse_with_env(&c.to_toml().unwrap(), |_| None).unwrap();
        assert_eq!(format!("{again:?}"), format!("{c:?}"));
    }

    #[test]
    fn errors_name_the_key() {
        let e = Config::parse("listne = \"127.0.0.1:1\"").unwrap_err();
        assert!(e.contains("listne"), "{e}");
        let e = Config::parse("listen = \"nowhere\"").unwrap_err();
        assert!(e.contains("`listen`"), "{e}");
        let e = Config::parse("heartbeat_interval = \"soon\"").unwrap_err();
        assert!(e.contains("`heartbeat_interval`"), "{e}");
        let e = Config::parse("max_in_flight = 0").unwrap_err();
        assert!(e.contains("`max_in_flight`"), "{e}");
        // A value serde accepts and validate() refuses names the variable that set it.
        let e = Config::parse_with_env("", |k| (k == "WHARF_MAX_IN_FLIGHT").then(|| "0".into()))
            .unwrap_err();
        assert_eq!(
            e,
            "environment variable WHARF_MAX_IN_FLIGHT: key `max_in_flight`: must be greater than zero"
        );
    }
}
