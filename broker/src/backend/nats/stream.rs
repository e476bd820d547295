//! Connecting to NATS and setting up the stream: created when missing (file storage, the
//! replicas asked, retention and the dedup window from wharf's config), refused, naming the
//! difference, when one exists with settings that conflict.

use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream::{self, stream};

use super::local::lock;
use super::{rand_u64, Inner, NatsBackend};
use crate::backend::presence::Presence;
use crate::config::{Config, ConfigError, Nats};
use crate::error::BrokerError;

/// How long the first look at the stream may take before the broker starts anyway (and
/// keeps trying in the background, `/readyz` saying why it is not ready).
const FIRST_LOOK: Duration = Duration::from_secs(10);

fn config_error(message: String) -> BrokerError {
    BrokerError::Config(ConfigError::Invalid {
        path: "[nats]".into(),
        message,
    })
}

/// Connects to the cluster in the background: a cluster that is down at start does not stop
/// the broker.
pub(super) async fn connect(nats: &Nats) -> Result<async_nats::Client, BrokerError> {
    let mut options = async_nats::ConnectOptions::new()
        .retry_on_initial_connect()
        .connection_timeout(Duration::from_secs(2))
        .max_reconnects(None)
        .name("wharf");
    if let Some(path) = &nats.creds_file {
        options = options
            .credentials_file(path)
            .await
            .map_err(|e| config_error(format!("creds_file {}: {e}", path.display())))?;
    }
    if let Some(token) = &nats.token {
        options = options.token(token.clone());
    }
    if let (Some(user), Some(password)) = (&nats.user, &nats.password) {
        options = options.user_and_password(user.clone(), password.clone());
    }
    if let Some(ca) = &nats.ca_file {
        options = options.add_root_certificates(ca.clone()).require_tls(true);
    }
    let urls = nats
        .urls
        .iter()
        .map(|u| u.parse::<async_nats::ServerAddr>())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| config_error(format!("urls: {e}")))?;
    options
        .connect(urls)
        .await
        .map_err(|e| config_error(format!("cannot connect to NATS: {e}")))
}

/// Why an existing stream cannot serve this config, if it cannot.
fn conflict(have: &stream::Config, want: &stream::Config) -> Option<String> {
    let mut differences = Vec::new();
    if have.subjects != want.subjects {
        differences.push(format!(
            "subjects {:?}, not {:?}",
            have.subjects, want.subjects
        ));
    }
    if have.num_replicas != want.num_replicas {
        differences.push(format!(
            "{} replicas, not {}",
            have.num_replicas, want.num_replicas
        ));
    }
    if have.storage != want.storage {
        differences.push(format!("{:?} storage, not file", have.storage));
    }
    if want.allow_atomic_publish && !have.allow_atomic_publish {
        differences.push("atomic publish not allowed (publish_batch needs it)".to_owned());
    }
    if have.retention != want.retention {
        differences.push(format!("{:?} retention, not limits", have.retention));
    }
    (!differences.is_empty()).then(|| {
        format!(
            "stream {} exists with {}; change [nats] or the stream",
            have.name,
            differences.join(", ")
        )
    })
}

impl NatsBackend {
    /// Connects and makes sure the stream exists. A cluster that cannot be reached does not
    /// stop the broker: it serves `/healthz`, answers `unavailable` and keeps trying. A
    /// stream whose settings conflict with the config does stop it.
    pub async fn open(config: &Config) -> Result<NatsBackend, BrokerError> {
        let client = connect(&config.nats).await?;
        let node = format!("{:016x}", rand_u64());
        let inner = Arc::new(Inner {
            // An ack is waited for as long as a publish may take: retrying a slow one (rather
            // than a failed one) could let later publishes overtake it.
            js: jetstream::ContextBuilder::new()
                .timeout(config.nats.publish_timeout)
                .max_ack_inflight(super::MAX_UNACKED_PUBLISHES)
                .build(client.clone()),
            client,
            config: config.clone(),
            prefix: format!("{}.", config.nats.subject_prefix),
            not_ready: Mutex::new(Some("the stream is not set up yet".into())),
            node,
            next_id: AtomicU64::new(0),
            confirmed_through: AtomicU64::new(0),
            local: Mutex::default(),
            holders: tokio::sync::OnceCell::new(),
            presence: Presence::new(config.max_presence_per_topic, true),
        });
        let backend = NatsBackend { inner };
        backend.ensure_stream_at_start().await?;
        Ok(backend)
    }

    /// The stream wharf wants.
    fn stream_config(&self) -> stream::Config {
        let config = &self.inner.config;
        let limit = |n: u64| i64::try_from(n).ok().filter(|&n| n > 0).unwrap_or(-1);
        stream::Config {
            name: config.nats.stream.clone(),
            subjects: vec![format!("{}>", self.inner.prefix)],
            storage: stream::StorageType::File,
            num_replicas: config.nats.replicas,
            retention: stream::RetentionPolicy::Limits,
            max_age: config.max_age,
            max_messages: limit(config.max_events),
            max_bytes: limit(config.max_bytes),
            duplicate_window: config.dedup_window,
            // publish_batch: all or nothing (nats-server 2.12+).
            allow_atomic_publish: true,
            // history and last: batched direct gets, answered by any replica.
            allow_direct: true,
            ..Default::default()
        }
    }

    /// Makes sure the stream exists with settings wharf can use.
    async fn ensure_stream(&self) -> Result<(), Result<String, String>> {
        self.ensure_events_stream().await?;
        // The holders bucket too, now rather than at the first exclusive attach (making an
        // R3 bucket can take a while).
        self.holders()
            .await
            .map(drop)
            .map_err(|e| Ok(e.to_string()))
    }

    async fn ensure_events_stream(&self) -> Result<(), Result<String, String>> {
        let want = self.stream_config();
        match self.js().get_stream(&want.name).await {
            Ok(mut existing) => {
                let info = existing.info().await.map_err(|e| Ok(e.to_string()))?;
                if let Some(why) = conflict(&info.config, &want) {
                    return Err(Err(why));
                }
                if !info.config.allow_direct {
                    // A stream made by an older wharf: history needs direct gets.
                    let mut config = info.config.clone();
                    config.allow_direct = true;
                    self.js()
                        .update_stream(config)
                        .await
                        .map_err(|e| Ok(e.to_string()))?;
                }
                Ok(())
            }
            Err(e)
                if matches!(
                    e.kind(),
                    async_nats::jetstream::context::GetStreamErrorKind::JetStream(_)
                ) =>
            {
                self.js()
                    .create_stream(want)
                    .await
                    .map(drop)
                    .map_err(|e| Ok(e.to_string()))
            }
            Err(e) => Err(Ok(e.to_string())),
        }
    }

    /// The first look at the stream, at start: a conflict stops the broker; a cluster that
    /// cannot answer yet is retried in the background.
    pub(super) async fn ensure_stream_at_start(&self) -> Result<(), BrokerError> {
        match tokio::time::timeout(FIRST_LOOK, self.ensure_stream()).await {
            Ok(Ok(())) => {
                *lock(&self.inner.not_ready) = None;
                tracing::info!(stream = self.settings().stream, "NATS stream ready");
                return Ok(());
            }
            Ok(Err(Err(conflict))) => return Err(config_error(conflict)),
            Ok(Err(Ok(why))) => self.not_ready(&why),
            Err(_) => self.not_ready("NATS did not answer in time"),
        }
        let backend = self.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_secs(1)).await;
                match backend.ensure_stream().await {
                    Ok(()) => {
                        *lock(&backend.inner.not_ready) = None;
                        tracing::info!(stream = backend.settings().stream, "NATS stream ready");
                        return;
                    }
                    Err(Err(conflict)) => {
                        tracing::error!(reason = conflict, "the NATS stream conflicts with [nats]");
                        backend.not_ready(&conflict);
                        return;
                    }
                    Err(Ok(why)) => backend.not_ready(&why),
                }
            }
        });
        Ok(())
    }

    fn not_ready(&self, why: &str) {
        let why = format!("the NATS stream is not available: {why}");
        tracing::warn!(reason = why, "not ready");
        *lock(&self.inner.not_ready) = Some(why);
    }
}
