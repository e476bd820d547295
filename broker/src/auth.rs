//! Who is on the other end, and what they may do: tokens from `[auth]`, stored as SHA-256
//! hashes, each with the topics it may publish to, the patterns it may subscribe to and the
//! consumers it may use; and per-user JWTs (`[auth.jwt]`), whose rights come from their
//! `wharf` claim or from the configured defaults with `{sub}` filled in.

use std::sync::Arc;

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use wharf_protocol::{Pattern, Request};

use crate::config::{Auth, Jwt};

/// What one authenticated token may do.
#[derive(Debug)]
pub struct Principal {
    pub name: String,
    publish: Vec<Pattern>,
    subscribe: Vec<Pattern>,
    consumers: Vec<String>,
    /// Consumers its names may cover at once.
    pub max_consumers: usize,
    admin: bool,
    metrics: bool,
    dedup_scope: String,
    /// When its token stops being valid (a JWT's `exp`), in seconds since the Unix epoch.
    pub expires_at: Option<u64>,
    /// A JWT's `sub`: the connection's client id in presence, which a `hello` cannot change.
    pub subject: Option<String>,
}

impl Principal {
    pub fn may_publish(&self, topic: &str) -> bool {
        self.publish.iter().any(|p| p.matches(topic))
    }

    /// A subscription is allowed when a permitted pattern covers it entirely.
    pub fn may_subscribe(&self, pattern: &Pattern) -> bool {
        self.subscribe.iter().any(|p| p.covers(pattern))
    }

    /// Whose msg_ids these are: publishes deduplicate only against the same principal's.
    pub fn dedup_scope(&self) -> &str {
        &self.dedup_scope
    }

    /// The admin operations: `stats`, `topics`, `consumers`.
    pub fn may_administer(&self) -> bool {
        self.admin
    }

    pub fn may_read_metrics(&self) -> bool {
        self.metrics || self.admin
    }

    /// Whether it may subscribe to every one of `patterns` (those of a durable consumer it
    /// wants to operate, or of a subscription it holds).
    pub fn may_subscribe_all(&self, patterns: &[Pattern]) -> bool {
        patterns.iter().all(|p| self.may_subscribe(p))
    }

    /// Why it may not publish to `topic`.
    pub fn publish_refusal(&self, topic: &str) -> Option<String> {
        (!self.may_publish(topic))
            .then(|| format!("token {:?} may not publish to {topic}", self.name))
    }

    /// Why it may not make `request` (`forbidden`), or `None`. The one place where requests
    /// meet rights; the WebSocket session and HTTP both ask it. `patterns_of` gives an
    /// existing consumer's topics: operating a consumer (acking, seeking, inspecting) that
    /// reads topics beyond the token's subscribe rights would act on, or reveal, events the
    /// token may not read.
    pub fn refusal(
        &self,
        request: &Request,
        patterns_of: &dyn Fn(&str) -> Option<Vec<Pattern>>,
    ) -> Option<String> {
        let consumer = |name: &str| {
            if !self.may_use_consumer(name) {
                return Some(format!(
                    "token {:?} may not use consumer {name:?}",
                    self.name
                ));
            }
            let patterns = patterns_of(name)?;
            (!self.may_subscribe_all(&patterns)).then(|| {
                format!(
                    "token {:?} may not subscribe to every topic consumer {name:?} reads",
                    self.name
                )
            })
        };
        match request {
            Request::Publish { event, .. } => self.publish_refusal(event.topic.as_str()),
            Request::PublishBatch { events, .. } => events
                .iter()
                .find_map(|e| self.publish_refusal(e.topic.as_str())),
            Request::Subscribe {
                topics,
                consumer: name,
                ..
            } => match topics.iter().find(|p| !self.may_subscribe(p)) {
                Some(p) => Some(format!("token {:?} may not subscribe to {p}", self.name)),
                None => name.as_deref().and_then(consumer),
            },
            Request::Ack { consumer: name, .. }
            | Request::Nack { consumer: name, .. }
            | Request::Term { consumer: name, .. }
            | Request::Progress { consumer: name, .. }
            | Request::Seek { consumer: name, .. }
            | Request::ConsumerInfo { consumer: name, .. }
            | Request::DeleteConsumer { consumer: name, .. } => consumer(name),
            Request::History { pattern, .. } | Request::Last { pattern, .. }
                if !self.may_subscribe(pattern) =>
            {
                Some(format!(
                    "token {:?} may not subscribe to {pattern}",
                    self.name
                ))
            }
            Request::Presence { topic, .. } if !self.may_subscribe_topic(topic) => Some(format!(
                "token {:?} may not subscribe to {topic}",
                self.name
            )),
            Request::Hello {
                client: Some(client),
                ..
            } if self.subject.as_ref().is_some_and(|sub| sub != client) => Some(format!(
                "token {:?} is client {:?}; a hello cannot name another",
                self.name,
                self.subject.as_deref().unwrap_or_default()
            )),
            Request::Stats { .. } | Request::Topics { .. } | Request::Consumers { .. }
                if !self.may_administer() =>
            {
                Some(format!(
                    "token {:?} may not use admin operations (it needs admin = true)",
                    self.name
                ))
            }
            _ => None,
        }
    }

    /// Whether a subscribe to exactly `topic` would be allowed.
    fn may_subscribe_topic(&self, topic: &wharf_protocol::Topic) -> bool {
        Pattern::parse(topic.as_str()).is_ok_and(|p| self.may_subscribe(&p))
    }

    pub fn may_use_consumer(&self, name: &str) -> bool {
        self.consumers
            .iter()
            .any(|rule| match rule.strip_suffix('*') {
                Some(prefix) => name.starts_with(prefix),
                None => rule == name,
            })
    }
}

/// Hex SHA-256 of a token, as `[auth]` stores it.
pub fn hash_token(token: &str) -> String {
    Sha256::digest(token.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The rights a JWT carries in its `wharf` claim.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rights {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub publish: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub subscribe: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub consumers: Vec<String>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub admin: bool,
}

/// The claims wharf reads; `exp` is required (a token without it is refused).
#[derive(Debug, Serialize, Deserialize)]
pub struct Claims {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sub: Option<String>,
    pub exp: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iss: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aud: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wharf: Option<Rights>,
}

/// Signs `claims` with HS256 (for `wharf token jwt` and tests).
pub fn sign_hs256(secret: &[u8], claims: &Claims) -> Result<String, String> {
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        claims,
        &EncodingKey::from_secret(secret),
    )
    .map_err(|e| e.to_string())
}

/// Verifies JWTs with the configured keys. Each key answers only for its own algorithm, so a
/// token cannot pick how it is checked (no RS256 public key used as an HMAC secret).
struct JwtVerifier {
    hs256: Option<(DecodingKey, Validation)>,
    rs256: Option<(DecodingKey, Validation)>,
    defaults: Rights,
    max_consumers: usize,
}

impl JwtVerifier {
    fn new(jwt: &Jwt) -> Result<Option<JwtVerifier>, String> {
        if !jwt.enabled() {
            return Ok(None);
        }
        let validation = |alg| {
            let mut v = Validation::new(alg);
            v.leeway = jwt.leeway.as_secs();
            v.validate_nbf = true;
            v.set_required_spec_claims(&["exp"]);
            if let Some(iss) = &jwt.issuer {
                v.set_issuer(&[iss]);
            }
            match &jwt.audience {
                Some(aud) => v.set_audience(&[aud]),
                None => v.validate_aud = false,
            }
            v
        };
        let read = |path: &std::path::Path| {
            std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))
        };
        let hs256 = match &jwt.hs256_secret_file {
            Some(path) => {
                let secret = read(path)?;
                if secret.len() < 32 {
                    return Err(format!(
                        "key `auth.jwt.hs256_secret_file`: {} holds {} bytes; use at least 32",
                        path.display(),
                        secret.len()
                    ));
                }
                Some((
                    DecodingKey::from_secret(&secret),
                    validation(Algorithm::HS256),
                ))
            }
            None => None,
        };
        let rs256 = match &jwt.rs256_public_key_file {
            Some(path) => {
                let key = DecodingKey::from_rsa_pem(&read(path)?).map_err(|e| {
                    format!(
                        "key `auth.jwt.rs256_public_key_file`: {}: {e}",
                        path.display()
                    )
                })?;
                Some((key, validation(Algorithm::RS256)))
            }
            None => None,
        };
        Ok(Some(JwtVerifier {
            hs256,
            rs256,
            defaults: Rights {
                publish: jwt.default_publish.clone(),
                subscribe: jwt.default_subscribe.clone(),
                consumers: jwt.default_consumers.clone(),
                admin: false,
            },
            max_consumers: jwt.max_consumers,
        }))
    }

    /// The principal a JWT stands for, or why it stands for none.
    fn verify(&self, token: &str) -> Result<Principal, String> {
        let header = jsonwebtoken::decode_header(token).map_err(|e| e.to_string())?;
        let (key, validation) = match header.alg {
            Algorithm::HS256 => self.hs256.as_ref(),
            Algorithm::RS256 => self.rs256.as_ref(),
            _ => None,
        }
        .ok_or_else(|| format!("algorithm {:?} is not configured", header.alg))?;
        let claims = jsonwebtoken::decode::<Claims>(token, key, validation)
            .map_err(|e| e.to_string())?
            .claims;
        let sub = claims.sub.unwrap_or_default();
        let rights = match claims.wharf {
            Some(rights) => rights,
            None => self.defaults_for(&sub)?,
        };
        let patterns = |list: &[String]| {
            list.iter()
                .map(|p| Pattern::parse(p).map_err(|e| format!("claim wharf: {e}")))
                .collect::<Result<Vec<_>, _>>()
        };
        Ok(Principal {
            name: format!("jwt:{sub}"),
            publish: patterns(&rights.publish)?,
            subscribe: patterns(&rights.subscribe)?,
            consumers: rights.consumers,
            max_consumers: self.max_consumers,
            admin: rights.admin,
            metrics: false,
            dedup_scope: format!("jwt:{sub}"),
            expires_at: Some(claims.exp),
            subject: (!sub.is_empty()).then(|| sub.clone()),
        })
    }

    /// The default rights with `{sub}` replaced. A subject that is not one plain topic token
    /// (letters, digits, `_`, `-`) cannot be put into a pattern: `*` or `a.>` would widen it.
    fn defaults_for(&self, sub: &str) -> Result<Rights, String> {
        let d = &self.defaults;
        let uses_sub = d
            .publish
            .iter()
            .chain(&d.subscribe)
            .chain(&d.consumers)
            .any(|p| p.contains("{sub}"));
        let plain = !sub.is_empty()
            && sub
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        if uses_sub && !plain {
            return Err(format!(
                "sub {sub:?} cannot fill {{sub}}: it must be letters, digits, _ or -"
            ));
        }
        let fill = |list: &[String]| list.iter().map(|p| p.replace("{sub}", sub)).collect();
        Ok(Rights {
            publish: fill(&d.publish),
            subscribe: fill(&d.subscribe),
            consumers: fill(&d.consumers),
            admin: false,
        })
    }
}

/// The configured tokens and JWT keys, and the `[auth]` settings they came with.
pub struct Authenticator {
    enabled: bool,
    tokens: Vec<(String, Arc<Principal>)>,
    jwt: Option<JwtVerifier>,
    settings: Auth,
}

impl Authenticator {
    /// Builds from a validated config; reading the JWT key files may fail.
    pub fn new(auth: &Auth) -> Result<Authenticator, String> {
        let patterns =
            |list: &[String]| list.iter().filter_map(|p| Pattern::parse(p).ok()).collect();
        let tokens = auth
            .tokens
            .iter()
            .map(|t| {
                (
                    t.sha256.to_ascii_lowercase(),
                    Arc::new(Principal {
                        name: t.name.clone(),
                        publish: patterns(&t.publish),
                        subscribe: patterns(&t.subscribe),
                        consumers: t.consumers.clone(),
                        max_consumers: t.max_consumers,
                        admin: t.admin,
                        metrics: t.metrics,
                        dedup_scope: format!("token:{}", t.name),
                        expires_at: None,
                        subject: None,
                    }),
                )
            })
            .collect();
        Ok(Authenticator {
            enabled: auth.enabled,
            tokens,
            jwt: JwtVerifier::new(&auth.jwt)?,
            settings: auth.clone(),
        })
    }

    pub fn enabled(&self) -> bool {
        self.enabled
    }

    /// The `[auth]` section this was built from (origins, timeouts, JWT settings).
    pub fn settings(&self) -> &Auth {
        &self.settings
    }

    /// The principal a token stands for. A token with two dots is a JWT.
    pub fn check(&self, token: &str) -> Option<Arc<Principal>> {
        if token.bytes().filter(|&b| b == b'.').count() == 2 {
            let verifier = self.jwt.as_ref()?;
            return match verifier.verify(token) {
                Ok(principal) => Some(Arc::new(principal)),
                Err(why) => {
                    tracing::debug!(reason = why, "JWT refused");
                    None
                }
            };
        }
        let hash = hash_token(token);
        // Compare every hash in full: how long this takes says nothing about the token.
        let mut found = None;
        for (stored, principal) in &self.tokens {
            let same = stored.len() == hash.len()
                && stored
                    .bytes()
                    .zip(hash.bytes())
                    .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                    == 0;
            if same {
                found = Some(principal.clone());
            }
        }
        found
    }
}

/// `publisher` and `msg_id` as one key; the length prefix keeps any two pairs apart.
pub fn dedup_key(publisher: &str, msg_id: &str) -> String {
    format!("{}:{publisher}:{msg_id}", publisher.len())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::TokenRule;

    #[test]
    fn tokens_and_permissions() {
        let auth = Auth {
            enabled: true,
            tokens: vec![TokenRule {
                name: "app".into(),
                sha256: hash_token("s3cret"),
                publish: vec!["orders.>".into()],
                subscribe: vec!["orders.*".into()],
                consumers: vec!["billing".into(), "vendor-*".into()],
                max_consumers: 10,
                admin: false,
                metrics: true,
            }],
            ..Auth::default()
        };
        let a = Authenticator::new(&auth).unwrap();
        assert!(a.check("wrong").is_none());
        let p = a.check("s3cret").unwrap();
        assert!(p.may_publish("orders.eu.new") && !p.may_publish("billing.x"));
        assert!(p.may_subscribe(&Pattern::parse("orders.new").unwrap()));
        assert!(!p.may_subscribe(&Pattern::parse("orders.>").unwrap()));
        assert!(p.may_use_consumer("billing") && p.may_use_consumer("vendor-7"));
        assert!(!p.may_use_consumer("billing2"));
        assert_eq!(hash_token("abc").len(), 64);
    }
}
