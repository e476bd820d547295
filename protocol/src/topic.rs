//! Topic names, subscription patterns and consumer names.
//!
//! A topic is dot-separated tokens of `[A-Za-z0-9_-]`, at most 255 bytes. In a pattern a token
//! may be `*` (exactly one token) and the last token may be `>` (one or more tokens), as in NATS.

use std::fmt;

/// The longest topic name or pattern, in bytes.
pub const MAX_TOPIC_BYTES: usize = 255;
/// The longest consumer name, in bytes.
pub const MAX_CONSUMER_BYTES: usize = 128;

/// Why a name was refused; the message is meant for the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicError(pub String);

impl fmt::Display for TopicError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for TopicError {}

fn is_token_char(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c == b'_' || c == b'-'
}

fn check_length(kind: &str, s: &str) -> Result<(), TopicError> {
    if s.is_empty() {
        return Err(TopicError(format!("{kind} is empty")));
    }
    if s.len() > MAX_TOPIC_BYTES {
        return Err(TopicError(format!(
            "{kind} is {} bytes, the limit is {MAX_TOPIC_BYTES}",
            s.len()
        )));
    }
    Ok(())
}

/// A validated topic name such as `orders.created`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Topic(String);

impl Topic {
    pub fn parse(s: &str) -> Result<Topic, TopicError> {
        check_length("topic", s)?;
        for (i, token) in s.split('.').enumerate() {
            if token.is_empty() {
                return Err(TopicError(format!(
                    "topic {s:?} has an empty token at position {}",
                    i + 1
                )));
            }
            if !token.bytes().all(is_token_char) {
                return Err(TopicError(format!(
                    "topic {s:?}: token {token:?} may only hold A-Z a-z 0-9 _ -"
                )));
            }
        }
        Ok(Topic(s.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Topic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Token {
    Literal(String),
    /// `*`: exactly one token.
    One,
    /// `>`: one or more tokens; only last.
    Rest,
}

/// A validated subscription pattern such as `orders.*` or `orders.>`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Pattern {
    text: String,
    tokens: Vec<Token>,
}

impl Pattern {
    pub fn parse(s: &str) -> Result<Pattern, TopicError> {
        check_length("pattern", s)?;
        let parts: Vec<&str> = s.split('.').collect();
        let mut tokens = Vec::with_capacity(parts.len());
        for (i, part) in parts.iter().enumerate() {
            let token = match *part {
                "" => {
                    return Err(TopicError(format!(
                        "pattern {s:?} has an empty token at position {}",
                        i + 1
                    )))
                }
                "*" => Token::One,
                ">" if i + 1 == parts.len() => Token::Rest,
                ">" => {
                    return Err(TopicError(format!(
                        "pattern {s:?}: '>' may only be the last token"
                    )))
                }
                lit if lit.bytes().all(is_token_char) => Token::Literal(lit.to_owned()),
                lit => {
                    return Err(TopicError(format!(
                        "pattern {s:?}: token {lit:?} may only hold A-Z a-z 0-9 _ -, or be * or >"
                    )))
                }
            };
            tokens.push(token);
        }
        Ok(Pattern {
            text: s.to_owned(),
            tokens,
        })
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// Whether `topic` (already validated) falls under this pattern.
    pub fn matches(&self, topic: &str) -> bool {
        let mut parts = topic.split('.');
        for token in &self.tokens {
            match token {
                Token::Rest => return parts.next().is_some(),
                Token::One => {
                    if parts.next().is_none() {
                        return false;
                    }
                }
                Token::Literal(lit) => match parts.next() {
                    Some(part) if part == lit => {}
                    _ => return false,
                },
            }
        }
        parts.next().is_none()
    }
}

impl fmt::Display for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

/// Checks a durable consumer name: `[A-Za-z0-9_.-]{1,128}`.
pub fn validate_consumer(name: &str) -> Result<(), TopicError> {
    if name.is_empty() || name.len() > MAX_CONSUMER_BYTES {
        return Err(TopicError(format!(
            "consumer name must be 1 to {MAX_CONSUMER_BYTES} bytes"
        )));
    }
    if !name
        .bytes()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'.' | b'-'))
    {
        return Err(TopicError(format!(
            "consumer name {name:?} may only hold A-Z a-z 0-9 _ . -"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(p: &str, t: &str) -> bool {
        Pattern::parse(p).unwrap().matches(t)
    }

    #[test]
    fn topics_follow_the_grammar() {
        assert!(Topic::parse("orders.created").is_ok());
        assert!(Topic::parse("a-b_c.D9").is_ok());
        for bad in ["", ".", "a..b", "a.", ".a", "a b", "a.*", "a.>", "ä"] {
            assert!(Topic::parse(bad).is_err(), "{bad:?} accepted");
        }
        assert!(Topic::parse(&"a".repeat(255)).is_ok());
        assert!(Topic::parse(&"a".repeat(256)).is_err());
    }

    #[test]
    fn patterns_follow_the_grammar() {
        for ok in ["a", "a.*", "*.b", ">", "a.>", "*.*.>"] {
            assert!(Pattern::parse(ok).is_ok(), "{ok:?} refused");
        }
        for bad in ["", "a.>.b", "a..b", "a*", "a.b>", ">.a"] {
            assert!(Pattern::parse(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn wildcards_match_as_documented() {
        assert!(m("orders.created", "orders.created"));
        assert!(!m("orders.created", "orders.created.x"));
        assert!(m("orders.*", "orders.created"));
        assert!(!m("orders.*", "orders"));
        assert!(!m("orders.*", "orders.a.b"));
        assert!(m("orders.>", "orders.a"));
        assert!(m("orders.>", "orders.a.b"));
        assert!(!m("orders.>", "orders"));
        assert!(m(">", "x"));
        assert!(m("*.b.>", "a.b.c"));
        assert!(!m("*.b.>", "a.c.c"));
    }

    #[test]
    fn consumer_names() {
        assert!(validate_consumer("vendor-1.eu_west").is_ok());
        assert!(validate_consumer("").is_err());
        assert!(validate_consumer("a b").is_err());
        assert!(validate_consumer(&"x".repeat(129)).is_err());
    }
}
