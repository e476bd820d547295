//! Who is on the other end, and what they may do: tokens from `[auth]`, stored as SHA-256
//! hashes, each with the topics it may publish to, the patterns it may subscribe to and the
//! consumers it may use.

use std::sync::Arc;

use sha2::{Digest, Sha256};
use wharf_protocol::Pattern;

use crate::config::Auth;

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
}

impl Principal {
    pub fn may_publish(&self, topic: &str) -> bool {
        self.publish.iter().any(|p| p.matches(topic))
    }

    /// A subscription is allowed when a permitted pattern covers it entirely.
    pub fn may_subscribe(&self, pattern: &Pattern) -> bool {
        self.subscribe.iter().any(|p| p.covers(pattern))
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

/// The configured tokens.
pub struct Authenticator {
    enabled: bool,
    tokens: Vec<(String, Arc<Principal>)>,
}

impl Authenticator {
    /// Builds from a validated config.
    pub fn new(auth: &Auth) -> Authenticator {
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
                    }),
                )
            })
            .collect();
        Authenticator {
            enabled: auth.enabled,
            tokens,
        }
    }

    pub fn enabled(&self) -> bool {
        self.enabled
    }

    /// The principal a token stands for.
    pub fn check(&self, token: &str) -> Option<Arc<Principal>> {
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
        let a = Authenticator::new(&auth);
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
