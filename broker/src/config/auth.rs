//! The `[auth]` section: tokens, JWT settings and what a web page may do.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// `[auth]`: tokens (stored as SHA-256 hashes), their permissions, and origin checks.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Auth {
    /// Require a token on every connection (Authorization: Bearer at the handshake, or a
    /// first `{"op":"auth"}` frame).
    pub enabled: bool,
    /// Also accept `?token=` in the WebSocket URL (it ends up in logs and history: off).
    pub allow_query_token: bool,
    /// Browser origins allowed to open a WebSocket or POST; others get 403. Empty: any
    /// origin with auth on, only loopback origins with auth off.
    pub allowed_origins: Vec<String>,
    /// With auth off, Host names accepted besides IP addresses and `localhost` (DNS
    /// rebinding: a page's own name resolving to this broker is refused).
    pub allowed_hosts: Vec<String>,
    /// Listening on a non-loopback address without auth is refused unless this is true.
    pub allow_insecure_remote: bool,
    /// A connection that has not authenticated within this is closed.
    #[serde(with = "humantime_serde")]
    pub auth_timeout: Duration,
    /// With auth on, serve `/metrics` without a token (it names consumers and topics).
    pub public_metrics: bool,
    pub tokens: Vec<TokenRule>,
    /// Per-user tokens: JWTs signed by an identity provider or the application's backend.
    pub jwt: Jwt,
}

/// `[auth.jwt]`: how JWTs are verified and what rights a JWT without a `wharf` claim gets.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Jwt {
    /// A file holding the HS256 shared secret (its bytes, as they are).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hs256_secret_file: Option<PathBuf>,
    /// A PEM file holding the RS256 public key.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rs256_public_key_file: Option<PathBuf>,
    /// When set, a JWT's `iss` must be this.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub issuer: Option<String>,
    /// When set, a JWT's `aud` must include this.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub audience: Option<String>,
    /// Clock skew allowed on `exp` and `nbf`.
    #[serde(with = "humantime_serde")]
    pub leeway: Duration,
    /// A connection whose JWT expires gets `{"type":"token_expiring"}` this long before.
    #[serde(with = "humantime_serde")]
    pub expiry_notice: Duration,
    /// Rights of a JWT without a `wharf` claim; `{sub}` stands for its `sub`.
    pub default_publish: Vec<String>,
    pub default_subscribe: Vec<String>,
    pub default_consumers: Vec<String>,
    /// Consumers the names of one JWT's subject may cover at once.
    pub max_consumers: usize,
}

impl Default for Jwt {
    fn default() -> Jwt {
        Jwt {
            hs256_secret_file: None,
            rs256_public_key_file: None,
            issuer: None,
            audience: None,
            leeway: Duration::from_secs(5),
            expiry_notice: Duration::from_secs(30),
            default_publish: Vec::new(),
            default_subscribe: Vec::new(),
            default_consumers: Vec::new(),
            max_consumers: 1000,
        }
    }
}

impl Jwt {
    /// Whether JWTs are accepted at all (a key is configured).
    pub fn enabled(&self) -> bool {
        self.hs256_secret_file.is_some() || self.rs256_public_key_file.is_some()
    }
}

impl Default for Auth {
    fn default() -> Auth {
        Auth {
            enabled: false,
            allow_query_token: false,
            allowed_origins: Vec::new(),
            allowed_hosts: Vec::new(),
            allow_insecure_remote: false,
            auth_timeout: Duration::from_secs(5),
            public_metrics: false,
            tokens: Vec::new(),
            jwt: Jwt::default(),
        }
    }
}

/// One token: its hash (`wharf token hash TOKEN`) and what it may do.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TokenRule {
    pub name: String,
    /// Hex SHA-256 of the token; the token itself is never stored.
    pub sha256: String,
    /// Topic patterns it may publish to.
    #[serde(default)]
    pub publish: Vec<String>,
    /// Patterns it may subscribe to (a subscription must fall inside one).
    #[serde(default)]
    pub subscribe: Vec<String>,
    /// Durable consumer names it may use; `*` for any, `prefix*` for a prefix.
    #[serde(default)]
    pub consumers: Vec<String>,
    /// How many consumers its `consumers` names may cover at once: creating one more gets
    /// `limit_exceeded`.
    #[serde(default = "default_max_consumers_per_token")]
    pub max_consumers: usize,
    /// May use the admin operations (`stats`, `topics`, `consumers`) and read `/metrics`.
    #[serde(default)]
    pub admin: bool,
    /// May read `/metrics`.
    #[serde(default)]
    pub metrics: bool,
}

fn default_max_consumers_per_token() -> usize {
    1000
}
