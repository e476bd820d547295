//! Reading a config: the file, the `WHARF_*` environment over it, and validation that names
//! the offending key.

use std::path::{Path, PathBuf};

use super::{Config, ConfigError, InvalidValue};

/// An environment variable's value, typed by the key it sets: the raw text for a string key
/// (`WHARF_DATA_DIR=2024` is a path), a comma-separated list for a list key
/// (`WHARF_NATS_URLS=nats://a,nats://b`, or a TOML list), TOML for the others (a number, a
/// boolean), else the raw text so that the error names what was wrong with it.
fn env_value(raw: String, default: &toml::Value) -> toml::Value {
    if let toml::Value::String(_) = default {
        return toml::Value::String(raw);
    }
    if let toml::Value::Array(_) = default {
        if !raw.trim_start().starts_with('[') {
            let items = raw
                .split(',')
                .map(|s| toml::Value::String(s.trim().to_owned()));
            return toml::Value::Array(items.collect());
        }
    }
    format!("v = {raw}")
        .parse::<toml::Table>()
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or(toml::Value::String(raw))
}

impl Config {
    /// The config from `path`, or from `./config.toml` when no path is given and it exists,
    /// or the embedded defaults.
    /// `WHARF_*` environment variables override either, file or not.
    pub fn load(path: Option<&Path>) -> Result<Config, ConfigError> {
        let path = match path {
            Some(p) => p.to_owned(),
            None => {
                let default = PathBuf::from("config.toml");
                if !default.exists() {
                    return Config::parse("").map_err(|message| ConfigError::Invalid {
                        path: PathBuf::from("(embedded defaults and WHARF_* variables)"),
                        message,
                    });
                }
                default
            }
        };
        let text = std::fs::read_to_string(&path).map_err(|source| ConfigError::Read {
            path: path.clone(),
            source,
        })?;
        let mut config = Config::parse(&text).map_err(|message| ConfigError::Invalid {
            path: path.clone(),
            message,
        })?;
        config.source = Some(path);
        Ok(config)
    }

    /// Parses TOML text; the error names the offending key. `WHARF_<KEY>` environment
    /// variables (e.g. `WHARF_MAX_IN_FLIGHT=50`) override the file.
    pub fn parse(text: &str) -> Result<Config, String> {
        Config::parse_with_env(text, |key| std::env::var(key).ok())
    }

    /// [`Config::parse`] with the environment given as a lookup (for tests).
    pub fn parse_with_env(
        text: &str,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Config, String> {
        let mut table: toml::Table = text.parse().map_err(|e: toml::de::Error| e.to_string())?;
        let mut keys = toml::Table::try_from(Config::default()).map_err(|e| e.to_string())?;
        // Keys without a default do not serialize; they can still come from the environment.
        for optional in ["tls_cert", "tls_key"] {
            keys.insert(optional.to_owned(), toml::Value::String(String::new()));
        }
        if let Some(toml::Value::Table(nats)) = keys.get_mut("nats") {
            for optional in ["creds_file", "token", "user", "password", "ca_file"] {
                nats.insert(optional.to_owned(), toml::Value::String(String::new()));
            }
        }
        // Which keys the environment set, to name the variable in an error.
        let mut from_env: Vec<(String, String)> = Vec::new();
        for (key, default) in &keys {
            if let toml::Value::Table(section) = default {
                // WHARF_<SECTION>_<KEY>, e.g. WHARF_AUTH_ENABLED=true.
                for (sub, sub_default) in section {
                    let var = format!("WHARF_{}_{}", key.to_uppercase(), sub.to_uppercase());
                    if let Some(raw) = env(&var) {
                        let entry = table
                            .entry(key.clone())
                            .or_insert_with(|| toml::Value::Table(Default::default()));
                        if let toml::Value::Table(t) = entry {
                            t.insert(sub.clone(), env_value(raw, sub_default));
                        }
                        from_env.push((format!("{key}.{sub}"), var));
                    }
                }
                continue;
            }
            let var = format!("WHARF_{}", key.to_uppercase());
            if let Some(raw) = env(&var) {
                table.insert(key.clone(), env_value(raw, default));
                from_env.push((key.clone(), var));
            }
        }
        let named = |key: &str, message: String| match from_env.iter().find(|(k, _)| k == key) {
            Some((_, var)) => format!("environment variable {var} (key `{key}`): {message}"),
            None => format!("key `{key}`: {message}"),
        };
        let config: Config = serde_path_to_error::deserialize(table).map_err(|e| {
            let key = e.path().to_string();
            let inner = e.into_inner().to_string();
            // toml's message ends with a line naming the key again (`in \`key\``); the
            // key is named here already.
            let inner = inner
                .lines()
                .map(str::trim)
                .rfind(|l| !l.is_empty() && !l.starts_with("in `"))
                .unwrap_or_default()
                .to_owned();
            if key == "." || key.is_empty() {
                inner
            } else {
                named(&key, inner)
            }
        })?;
        config.validate().map_err(|e| {
            let key = e.key();
            match from_env.iter().find(|(k, _)| key.as_ref() == Some(k)) {
                Some((_, var)) => format!("environment variable {var}: {e}"),
                None => e.to_string(),
            }
        })?;
        Ok(config)
    }

    /// The effective configuration as TOML, every key present.
    pub fn to_toml(&self) -> Result<String, ConfigError> {
        toml::to_string(self).map_err(|e| ConfigError::Invalid {
            path: PathBuf::from("(effective config)"),
            message: e.to_string(),
        })
    }

    /// Checks values serde cannot: each message names its key.
    pub fn validate(&self) -> Result<(), InvalidValue> {
        let positive = [
            ("max_frame_bytes", self.max_frame_bytes as u64),
            ("max_json_depth", self.max_json_depth as u64),
            ("max_in_flight", self.max_in_flight as u64),
            ("ack_wait", self.ack_wait.as_millis() as u64),
            ("outbound_queue", self.outbound_queue as u64),
            ("outbound_queue_bytes", self.outbound_queue_bytes as u64),
            ("max_connections", self.max_connections as u64),
            ("max_consumers", self.max_consumers as u64),
            ("history_default_limit", self.history_default_limit as u64),
            ("history_max_limit", self.history_max_limit as u64),
            ("max_presence_per_topic", self.max_presence_per_topic as u64),
            (
                "max_presence_info_bytes",
                self.max_presence_info_bytes as u64,
            ),
            (
                "max_subscriptions_per_connection",
                self.max_subscriptions_per_connection as u64,
            ),
            (
                "slow_consumer_timeout",
                self.slow_consumer_timeout.as_millis() as u64,
            ),
            ("segment_bytes", self.segment_bytes),
            (
                "heartbeat_interval",
                self.heartbeat_interval.as_millis() as u64,
            ),
            (
                "handshake_timeout",
                self.handshake_timeout.as_millis() as u64,
            ),
            (
                "heartbeat_timeout",
                self.heartbeat_timeout.as_millis() as u64,
            ),
            (
                "relaxed_sync_interval",
                self.relaxed_sync_interval.as_millis() as u64,
            ),
            (
                "state_flush_interval",
                self.state_flush_interval.as_millis() as u64,
            ),
        ];
        if let Some((key, _)) = positive.iter().find(|(_, value)| *value == 0) {
            return Err(InvalidValue::Zero(key));
        }
        if !self.listen.ip().is_loopback() && !self.auth.enabled && !self.auth.allow_insecure_remote
        {
            return Err(InvalidValue::InsecureRemote(self.listen));
        }
        if self.tls_cert.is_some() != self.tls_key.is_some() {
            return Err(InvalidValue::HalfTls);
        }
        if self.auth.enabled && self.auth.tokens.is_empty() && !self.auth.jwt.enabled() {
            return Err(InvalidValue::NoToken);
        }
        let jwt = &self.auth.jwt;
        for p in jwt.default_publish.iter().chain(&jwt.default_subscribe) {
            let example = p.replace("{sub}", "alice");
            wharf_protocol::Pattern::parse(&example).map_err(InvalidValue::JwtPattern)?;
        }
        for (index, t) in self.auth.tokens.iter().enumerate() {
            let hex_ok = t.sha256.len() == 64 && t.sha256.bytes().all(|b| b.is_ascii_hexdigit());
            if !hex_ok {
                return Err(InvalidValue::TokenHash(index));
            }
            for p in t.publish.iter().chain(&t.subscribe) {
                wharf_protocol::Pattern::parse(p)
                    .map_err(|source| InvalidValue::TokenPattern { index, source })?;
            }
        }
        if self.history_default_limit > self.history_max_limit {
            return Err(InvalidValue::HistoryDefaultOverMax);
        }
        if self.max_frame_bytes > 64 << 20 {
            return Err(InvalidValue::FrameTooLarge);
        }
        self.nats.validate()?;
        Ok(())
    }
}
