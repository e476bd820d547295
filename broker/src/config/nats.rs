//! The `[nats]` section: where the cluster backend finds NATS JetStream, and how it sets up
//! its stream.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::InvalidValue;

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Nats {
    /// Servers of the NATS cluster; the client connects to one and fails over to the others.
    pub urls: Vec<String>,
    /// The JetStream stream that holds every event (created when missing).
    pub stream: String,
    /// Topic `orders.created` is subject `<subject_prefix>.orders.created`.
    pub subject_prefix: String,
    /// Replicas of the stream (a publish is confirmed once a majority stored it); 1 for a
    /// single NATS server.
    pub replicas: usize,
    /// A `.creds` file (NKey and JWT) for the connection.
    pub creds_file: Option<PathBuf>,
    pub token: Option<String>,
    pub user: Option<String>,
    pub password: Option<String>,
    /// CA certificate to verify the NATS servers' TLS certificates with.
    pub ca_file: Option<PathBuf>,
    /// How long a dead node's in-flight events stay leased before they are delivered again
    /// (JetStream's ack wait, extended while the subscriber's own ack wait runs).
    #[serde(with = "humantime_serde")]
    pub lease: Duration,
    /// How long a publish is retried (with the same `Nats-Msg-Id`) through a leader change
    /// before the client gets `unavailable`.
    #[serde(with = "humantime_serde")]
    pub publish_timeout: Duration,
}

impl Default for Nats {
    fn default() -> Nats {
        Nats {
            urls: vec!["nats://127.0.0.1:4222".into()],
            stream: "WHARF".into(),
            subject_prefix: "wharf".into(),
            replicas: 3,
            creds_file: None,
            token: None,
            user: None,
            password: None,
            ca_file: None,
            lease: Duration::from_secs(10),
            publish_timeout: Duration::from_secs(5),
        }
    }
}

impl Nats {
    pub(super) fn validate(&self) -> Result<(), InvalidValue> {
        let bad = |key, message: &str| {
            Err(InvalidValue::Nats {
                key,
                message: message.to_owned(),
            })
        };
        if self.urls.is_empty() {
            return bad("urls", "name at least one NATS server");
        }
        if !(1..=5).contains(&self.replicas) {
            return bad("replicas", "JetStream keeps 1 to 5 replicas");
        }
        let plain = |name: &str| {
            !name.is_empty()
                && name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        };
        if !plain(&self.stream) {
            return bad("stream", "letters, digits, '_' and '-' only");
        }
        if !self.subject_prefix.split('.').all(plain) {
            return bad(
                "subject_prefix",
                "dot-separated tokens of letters, digits, '_' and '-'",
            );
        }
        if self.lease < std::time::Duration::from_secs(1) {
            return bad("lease", "at least 1s (it is extended every quarter of it)");
        }
        if self.publish_timeout.is_zero() {
            return bad("publish_timeout", "must be greater than zero");
        }
        Ok(())
    }
}
