//! The wharf broker.
//!
//! A durable message broker for WebSocket clients: every published event is appended to a
//! checksummed, fdatasync'ed log before it is confirmed, durable consumers' acks go through
//! the same log, and whatever a consumer has not acked is delivered again when it returns.
//!
//! The pieces, each in its own module:
//!
//! * [`log`]: the append log (segment files, group commit, recovery, streaming reads). The
//!   only durable copy of anything confirmed.
//! * [`state`]: the sled view of consumers and acked state, rebuilt from the log if needed.
//! * [`consumers`]: durable consumers in memory: acked state, attachment, in-flight events.
//! * [`delivery`]: the commit sink, the event feed and the per-subscription delivery tasks.
//! * [`session`]: one WebSocket connection. [`server`]: the listener and handshake.
//! * [`store`]: opening a data directory consistently. [`config`], [`shutdown`], [`codec`].
//!
//! The wire format lives in the `wharf-protocol` crate, never here.

pub mod codec;
pub mod config;
pub mod consumers;
pub mod delivery;
pub mod http;
pub mod log;
pub mod server;
pub mod session;
pub mod shutdown;
pub mod state;
pub mod store;

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use tokio::net::TcpListener;

pub use config::Config;
use shutdown::Shutdown;

#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    #[error(transparent)]
    Config(#[from] config::ConfigError),
    #[error(transparent)]
    Log(#[from] log::LogError),
    #[error(transparent)]
    State(#[from] state::StateError),
    #[error("{what}: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },
    #[error("data dir {0} is in use by another wharf process")]
    Locked(PathBuf),
}

/// A broker whose store is open and whose listener is bound.
pub struct Broker {
    ctx: Arc<server::Context>,
    listener: TcpListener,
    addr: SocketAddr,
}

impl Broker {
    /// Recovers the data dir and binds the listener.
    pub async fn open(config: Config) -> Result<Broker, BrokerError> {
        let store = {
            let config = config.clone();
            tokio::task::spawn_blocking(move || store::Store::open(&config))
                .await
                .map_err(|e| BrokerError::Io {
                    what: "recovery task failed".into(),
                    source: std::io::Error::other(e.to_string()),
                })??
        };
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
        Ok(Broker {
            ctx: Arc::new(server::Context::new(config, store)),
            listener,
            addr,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Serves until `stop` resolves, then closes connections (1001), lets in-flight group
    /// commits finish and flushes the state view.
    pub async fn run(self, stop: impl Future<Output = ()>) {
        let (trigger, shutdown) = Shutdown::new();
        tracing::info!(url = %format!("ws://{}{}", self.addr, wharf_protocol::WS_PATH), "listening");
        let reaper = tokio::spawn(server::reap_inactive(self.ctx.clone(), shutdown.clone()));
        let retention = tokio::spawn(server::age_out(self.ctx.clone(), shutdown.clone()));
        let server = tokio::spawn(server::serve(self.listener, self.ctx.clone(), shutdown));
        stop.await;
        tracing::info!("shutting down");
        trigger.trigger();
        if let Err(e) = server.await {
            tracing::error!(error = %e, "server task failed");
        }
        if let Err(e) = retention.await {
            tracing::error!(error = %e, "retention task failed");
        }
        if let Err(e) = reaper.await {
            tracing::error!(error = %e, "inactive-consumer task failed");
        }
        self.ctx.store.close().await;
        tracing::info!("stopped");
    }
}
