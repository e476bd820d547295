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

    pub fn into_string(self) -> String {
        self.0
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

    /// Whether this pattern names one topic (no `*` or `>`).
    pub fn is_exact(&self) -> bool {
        self.tokens.iter().all(|t| matches!(t, Token::Literal(_)))
    }

    /// Whether every topic `other` matches is matched by this pattern too (used to check a
    /// subscription against what a token allows).
    pub fn covers(&self, other: &Pattern) -> bool {
        for (i, mine) in self.tokens.iter().enumerate() {
            match (mine, other.tokens.get(i)) {
                (Token::Rest, Some(_)) => return true,
                (_, None) => return false,
                (Token::One, Some(Token::Rest)) | (Token::Literal(_), Some(Token::Rest)) => {
                    return false
                }
                (Token::One, Some(_)) => {}
                (Token::Literal(a), Some(Token::Literal(b))) if a == b => {}
                (Token::Literal(_), Some(_)) => return false,
            }
        }
        self.tokens.len() == other.tokens.len()
    }

    /// Whether `topic` (already validated) falls under this pattern.
    pub fn matches(&self, topic: &str) -> bool {
        // A pattern without wildcards is a topic: one comparison.
        if self.is_exact() {
            return topic == self.text;
        }
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

/// Which keys' patterns match a topic, without looking at every pattern: a trie over pattern
/// tokens, walked once per topic (like NATS's sublist). A key may be inserted under several
/// patterns; [`PatternIndex::matches`] then reports it once per matching pattern.
#[derive(Debug)]
pub struct PatternIndex<K> {
    root: Node<K>,
}

#[derive(Debug)]
struct Node<K> {
    literal: std::collections::HashMap<String, Node<K>>,
    one: Option<Box<Node<K>>>,
    /// Keys whose pattern ends here.
    here: Vec<K>,
    /// Keys whose pattern has `>` at this level.
    rest: Vec<K>,
}

impl<K> Default for Node<K> {
    fn default() -> Self {
        Node {
            literal: Default::default(),
            one: None,
            here: Vec::new(),
            rest: Vec::new(),
        }
    }
}

impl<K> Node<K> {
    fn is_empty(&self) -> bool {
        self.literal.is_empty()
            && self.one.is_none()
            && self.here.is_empty()
            && self.rest.is_empty()
    }
}

impl<K> Default for PatternIndex<K> {
    fn default() -> Self {
        PatternIndex {
            root: Node::default(),
        }
    }
}

impl<K: Clone + PartialEq> PatternIndex<K> {
    pub fn insert(&mut self, pattern: &Pattern, key: K) {
        let mut node = &mut self.root;
        for token in &pattern.tokens {
            match token {
                Token::Literal(lit) => node = node.literal.entry(lit.clone()).or_default(),
                Token::One => node = node.one.get_or_insert_with(Default::default),
                Token::Rest => {
                    node.rest.push(key);
                    return;
                }
            }
        }
        node.here.push(key);
    }

    pub fn remove(&mut self, pattern: &Pattern, key: &K) {
        fn walk<K: PartialEq>(node: &mut Node<K>, tokens: &[Token], key: &K) {
            match tokens.split_first() {
                None => {
                    if let Some(i) = node.here.iter().position(|k| k == key) {
                        node.here.swap_remove(i);
                    }
                }
                Some((Token::Rest, _)) => {
                    if let Some(i) = node.rest.iter().position(|k| k == key) {
                        node.rest.swap_remove(i);
                    }
                }
                Some((Token::One, rest)) => {
                    if let Some(child) = node.one.as_mut() {
                        walk(child, rest, key);
                        if child.is_empty() {
                            node.one = None;
                        }
                    }
                }
                Some((Token::Literal(lit), rest)) => {
                    if let Some(child) = node.literal.get_mut(lit) {
                        walk(child, rest, key);
                        if child.is_empty() {
                            node.literal.remove(lit);
                        }
                    }
                }
            }
        }
        walk(&mut self.root, &pattern.tokens, key);
    }

    /// Appends the keys of every pattern matching `topic` (a valid topic) to `out`.
    pub fn matches(&self, topic: &str, out: &mut Vec<K>) {
        fn walk<K: Clone>(node: &Node<K>, tokens: &[&str], out: &mut Vec<K>) {
            let Some((first, rest)) = tokens.split_first() else {
                out.extend(node.here.iter().cloned());
                return;
            };
            out.extend(node.rest.iter().cloned());
            if let Some(child) = node.literal.get(*first) {
                walk(child, rest, out);
            }
            if let Some(child) = &node.one {
                walk(child, rest, out);
            }
        }
        let tokens: Vec<&str> = topic.split('.').collect();
        walk(&self.root, &tokens, out);
    }

    pub fn is_empty(&self) -> bool {
        self.root.is_empty()
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
    fn the_index_agrees_with_matching_pattern_by_pattern() {
        let patterns = [
            "a", "a.b", "a.*", "a.>", "*.b", ">", "*.*.c", "x.>", "a.*.>",
        ];
        let topics = ["a", "a.b", "a.c", "a.b.c", "x", "x.y.z", "b.b", "q.r.c"];
        let mut index = PatternIndex::default();
        for (i, p) in patterns.iter().enumerate() {
            index.insert(&Pattern::parse(p).unwrap(), i);
        }
        for t in topics {
            let mut got = Vec::new();
            index.matches(t, &mut got);
            got.sort();
            let want: Vec<usize> = (0..patterns.len()).filter(|&i| m(patterns[i], t)).collect();
            assert_eq!(got, want, "topic {t}");
        }
        for (i, p) in patterns.iter().enumerate() {
            index.remove(&Pattern::parse(p).unwrap(), &i);
        }
        assert!(index.is_empty());
    }

    #[test]
    fn covering_patterns() {
        let c = |a: &str, b: &str| {
            Pattern::parse(a)
                .unwrap()
                .covers(&Pattern::parse(b).unwrap())
        };
        assert!(c(">", "a.b"));
        assert!(c("a.>", "a.b.>"));
        assert!(c("a.>", "a.*"));
        assert!(c("a.*", "a.b"));
        assert!(c("a.*", "a.*"));
        assert!(!c("a.*", "a.>"));
        assert!(!c("a.b", "a.*"));
        assert!(!c("a.>", "a"));
        assert!(!c("a.*", "a.b.c"));
        assert!(c("*.b", "x.b"));
        assert!(!c("a.>", ">"));
    }

    #[test]
    fn consumer_names() {
        assert!(validate_consumer("vendor-1.eu_west").is_ok());
        assert!(validate_consumer("").is_err());
        assert!(validate_consumer("a b").is_err());
        assert!(validate_consumer(&"x".repeat(129)).is_err());
    }
}
