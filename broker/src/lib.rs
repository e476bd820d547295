//! The wharf broker.
//!
//! A durable message broker for WebSocket clients: every published event is stored durably
//! before it is confirmed, durable consumers' acks are stored the same way, and whatever a
//! consumer has not acked is delivered again when it returns.
//!
//! The pieces, from the top down (a module imports only from the ones below it):
//!
//! * [`Broker`] (this file): config -> backend -> listener, and an orderly stop.
//! * `net`: the listener (accept, limits, the WebSocket handshake) and the HTTP front door
//!   (hyper).
//! * `session`: one WebSocket connection: the read loop and reply order, the writer (with
//!   the read loop, the only code that knows WebSocket messages), publish/settle/subscribe/
//!   admin requests.
//! * `context`: what every connection shares (config, backend, reloadable auth and TLS).
//! * [`auth`]: tokens, JWTs and what a principal may do.
//! * `backend`: **the backend boundary**. The session and HTTP call only
//!   `backend::Backend`; what every backend promises is written there. `backend::log` is
//!   the embedded backend (segment log, sled view, consumers, delivery), invisible above it.
//! * `outbound`: a connection's bounded queue of wharf's own frames, which the backends'
//!   delivery tasks fill and the session's writer drains.
//! * [`config`], `metrics`, `shutdown`, `error`: used by everything above; `tls` (a
//!   connection, plain or TLS) at the very bottom.
//!
//! The wire format lives in the `wharf-protocol` crate, never here.

pub mod auth;
mod backend;
pub mod config;
mod context;
mod error;
mod metrics;
mod net;
mod outbound;
mod session;
mod shutdown;
mod tls;

/// The append log's reading side, for tests that check segment files from outside (power
/// loss, hostile records). Not a stable API.
#[doc(hidden)]
pub mod inspect {
    pub use crate::backend::log::append::*;
}

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpListener;

pub use config::Config;
pub use error::BrokerError;
use net::{http, listener as server};
use shutdown::Shutdown;

/// Serves "not ready" until `stop`, then gives the listener back with the connections still
/// being answered: they count against `max_connections` like any other, and each must finish
/// within `handshake_timeout`.
async fn answer_while_recovering(
    listener: TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
    config: &Config,
    mut stop: tokio::sync::oneshot::Receiver<()>,
) -> (TcpListener, tokio::task::JoinSet<()>) {
    let mut answering = tokio::task::JoinSet::new();
    let limit = config.handshake_timeout;
    loop {
        tokio::select! {
            _ = &mut stop => return (listener, answering),
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) if answering.len() >= config.max_connections => {
                    tracing::warn!(%peer, limit = config.max_connections, "connection refused: at max_connections");
                    tokio::spawn(http::refuse(stream, "too many connections"));
                }
                Ok((stream, _)) => {
                    let tls = tls.clone();
                    answering.spawn(async move {
                        let answered = async {
                            let conn = tls::Conn::accept(stream, tls.as_ref()).await?;
                            http::answer_recovering(conn).await
                        };
                        match tokio::time::timeout(limit, answered).await {
                            Ok(Ok(())) => {}
                            Ok(Err(e)) => tracing::debug!(error = %e, "request during recovery failed"),
                            Err(_) => tracing::debug!("request during recovery timed out"),
                        }
                    });
                }
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
            },
            Some(_) = answering.join_next(), if !answering.is_empty() => {}
        }
    }
}

/// A broker whose store is open and whose listener is bound.
pub struct Broker {
    ctx: Arc<context::Context>,
    listener: TcpListener,
    /// Connections accepted during recovery and not finished yet.
    answering: tokio::task::JoinSet<()>,
    addr: SocketAddr,
    recovery_ms: u64,
}

impl Broker {
    /// Binds the listener, then recovers the data dir. While it recovers, `/healthz` says
    /// alive and everything else (`/readyz` included) gets 503.
    pub async fn open(config: Config) -> Result<Broker, BrokerError> {
        metrics::handle();
        let listener =
            TcpListener::bind(config.listen)
                .await
                .map_err(|source| BrokerError::Io {
                    what: format!("cannot listen on {}", config.listen),
                    source,
                })?;
        let addr = listener.local_addr().map_err(|source| BrokerError::Io {
            what: "cannot read the bound address".into(),
            source,
        })?;
        let tls = match (&config.tls_cert, &config.tls_key) {
            (Some(cert), Some(key)) => {
                Some(tls::acceptor(cert, key).map_err(config::ConfigError::Tls)?)
            }
            _ => None,
        };
        let auth = auth::Authenticator::new(&config.auth).map_err(|message| {
            BrokerError::Config(config::ConfigError::Invalid {
                path: "config".into(),
                message,
            })
        })?;
        tracing::info!(address = %addr, data_dir = %config.data_dir.display(), tls = tls.is_some(), "recovering the log");
        let started = std::time::Instant::now();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let early = {
            let (tls, config) = (tls.clone(), config.clone());
            tokio::spawn(
                async move { answer_while_recovering(listener, tls, &config, stopped).await },
            )
        };
        let recovered = backend::Backend::open(&config).await;
        let _ = stop.send(());
        let (listener, answering) = early.await.map_err(|e| BrokerError::Io {
            what: "listener task failed".into(),
            source: std::io::Error::other(e.to_string()),
        })?;
        let backend = recovered?;
        Ok(Broker {
            ctx: Arc::new(context::Context::new(config, backend, tls, auth)),
            listener,
            answering,
            addr,
            recovery_ms: started.elapsed().as_millis() as u64,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Serves until `stop` resolves, then closes connections (1001), lets in-flight group
    /// commits finish and flushes the state view.
    pub async fn run(self, stop: impl Future<Output = ()>) {
        let (trigger, shutdown) = Shutdown::new();
        let reloader = server::reload_on_hangup(self.ctx.clone(), shutdown.clone());
        let stats = self.ctx.backend.stats().await.unwrap_or_default();
        tracing::info!(
            url = %format!(
                "{}://{}{}",
                if self.ctx.tls().is_some() { "wss" } else { "ws" },
                self.addr,
                wharf_protocol::WS_PATH
            ),
            data_dir = %self.ctx.config.data_dir.display(),
            events = stats.head_seq,
            log_bytes = stats.log_bytes,
            segments = stats.segments,
            consumers = stats.consumers,
            recovery_ms = self.recovery_ms,
            "listening"
        );
        let upkeep = self.ctx.backend.spawn_upkeep(&shutdown);
        let server = tokio::spawn(server::serve(
            self.listener,
            self.answering,
            self.ctx.clone(),
            shutdown,
        ));
        stop.await;
        tracing::info!("shutting down");
        trigger.trigger();
        if let Err(e) = server.await {
            tracing::error!(error = %e, "server task failed");
        }
        if let Err(e) = reloader.await {
            tracing::error!(error = %e, "reload task failed");
        }
        for (name, task) in upkeep {
            if let Err(e) = task.await {
                tracing::error!(error = %e, task = name, "backend task failed");
            }
        }
        self.ctx.backend.close().await;
        tracing::info!(
            events = self.ctx.backend.stats().await.unwrap_or_default().head_seq,
            uptime_s = self.ctx.started.elapsed().as_secs(),
            "stopped"
        );
    }
}
