//! The listener: accepts TCP connections, completes the WebSocket handshake on `/ws`, and
//! runs one [`Session`] per connection until shutdown.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::http::StatusCode;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

use crate::config::Config;
use crate::http::Opening;
use crate::session::Session;
use crate::shutdown::Shutdown;
use crate::store::Store;

/// A handshake must complete within this.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// On shutdown, sessions get this long to send their last replies and close frames.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

/// What every session shares.
pub struct Context {
    pub config: Config,
    pub store: Store,
    next_session: AtomicU64,
    /// Open WebSocket connections.
    pub connections: AtomicU64,
    pub started: std::time::Instant,
}

impl Context {
    pub fn new(config: Config, store: Store) -> Context {
        Context {
            config,
            store,
            next_session: AtomicU64::new(1),
            connections: AtomicU64::new(0),
            started: std::time::Instant::now(),
        }
    }
}

/// With `max_age` set, has the log apply retention regularly even when no segment rolls.
pub async fn age_out(ctx: Arc<Context>, mut shutdown: Shutdown) {
    let age = ctx.config.max_age;
    if age.is_zero() {
        return;
    }
    let mut tick = tokio::time::interval(
        (age / 10).clamp(Duration::from_millis(100), Duration::from_secs(60)),
    );
    loop {
        tokio::select! {
            _ = shutdown.wait() => return,
            _ = tick.tick() => ctx.store.log.maintain(),
        }
    }
}

/// In relaxed durability, syncs the log at least every `relaxed_sync_interval`, even when no
/// further writes come to trigger it.
pub async fn relaxed_sync(ctx: Arc<Context>, mut shutdown: Shutdown) {
    if ctx.config.durability != crate::config::Durability::Relaxed {
        return;
    }
    let mut tick = tokio::time::interval(ctx.config.relaxed_sync_interval);
    loop {
        tokio::select! {
            _ = shutdown.wait() => return,
            _ = tick.tick() => ctx.store.log.sync_soon(),
        }
    }
}

/// Deletes durable consumers nobody has attached to for `inactive_ttl`.
pub async fn reap_inactive(ctx: Arc<Context>, mut shutdown: Shutdown) {
    let ttl = ctx.config.inactive_ttl;
    if ttl.is_zero() {
        return;
    }
    let period = (ttl / 4).clamp(Duration::from_millis(10), Duration::from_secs(60));
    let mut tick = tokio::time::interval(period);
    loop {
        tokio::select! {
            _ = shutdown.wait() => return,
            _ = tick.tick() => {}
        }
        let idle = ctx
            .store
            .consumers
            .idle_longer_than(ttl, std::time::Instant::now());
        for name in idle {
            let entry = crate::log::Entry::ConsumerDeleted { name: name.clone() };
            match ctx.store.log.append(vec![entry]).await {
                Ok(_) => tracing::info!(consumer = name, ?ttl, "deleted an inactive consumer"),
                Err(e) => {
                    tracing::warn!(consumer = name, error = %e, "could not delete an inactive consumer")
                }
            }
        }
    }
}

pub async fn serve(listener: TcpListener, ctx: Arc<Context>, mut shutdown: Shutdown) {
    let mut sessions = JoinSet::new();
    loop {
        tokio::select! {
            _ = shutdown.wait() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) if sessions.len() >= ctx.config.max_connections => {
                    tracing::warn!(%peer, limit = ctx.config.max_connections, "connection refused: at max_connections");
                    tokio::spawn(crate::http::refuse(stream, "too many connections"));
                }
                Ok((stream, peer)) => {
                    sessions.spawn(connection(ctx.clone(), stream, peer, shutdown.clone()));
                }
                Err(e) => {
                    // Typically out of file descriptors: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            Some(_) = sessions.join_next(), if !sessions.is_empty() => {}
        }
    }
    drop(listener);
    let drained = tokio::time::timeout(DRAIN_TIMEOUT, async {
        while sessions.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::warn!(left = sessions.len(), "sessions did not close in time");
        sessions.abort_all();
    }
}

async fn connection(ctx: Arc<Context>, stream: TcpStream, peer: SocketAddr, shutdown: Shutdown) {
    if let Err(e) = stream.set_nodelay(true) {
        tracing::debug!(%peer, error = %e, "cannot set TCP_NODELAY");
    }
    let ws_config = WebSocketConfig::default()
        .max_message_size(Some(ctx.config.max_frame_bytes.saturating_mul(2)))
        .max_frame_size(Some(ctx.config.max_frame_bytes.saturating_mul(2)));
    // The callback's signature is tungstenite's; its error type is large by design.
    #[allow(clippy::result_large_err)]
    let check_path = |req: &Request, resp: Response| -> Result<Response, ErrorResponse> {
        if req.uri().path() == wharf_protocol::WS_PATH {
            Ok(resp)
        } else {
            let mut err = ErrorResponse::new(Some(format!(
                "wharf serves WebSocket clients at {}\n",
                wharf_protocol::WS_PATH
            )));
            *err.status_mut() = StatusCode::NOT_FOUND;
            Err(err)
        }
    };
    let opening = async {
        match crate::http::open(stream, &ctx).await? {
            Opening::Answered => Ok(None),
            Opening::Upgrade(stream) => {
                tokio_tungstenite::accept_hdr_async_with_config(stream, check_path, Some(ws_config))
                    .await
                    .map(Some)
                    .map_err(std::io::Error::other)
            }
        }
    };
    let ws = match tokio::time::timeout(HANDSHAKE_TIMEOUT, opening).await {
        Ok(Ok(Some(ws))) => ws,
        Ok(Ok(None)) => return,
        Ok(Err(e)) => {
            tracing::debug!(%peer, error = %e, "handshake failed");
            return;
        }
        Err(_) => {
            tracing::debug!(%peer, "handshake timed out");
            return;
        }
    };
    let id = ctx.next_session.fetch_add(1, Ordering::Relaxed);
    tracing::debug!(%peer, session = id, "connected");
    ::metrics::gauge!(crate::metrics::CONNECTIONS).increment(1);
    ctx.connections.fetch_add(1, Ordering::Relaxed);
    Session::run(ctx.clone(), id, ws, shutdown).await;
    ctx.connections.fetch_sub(1, Ordering::Relaxed);
    ::metrics::gauge!(crate::metrics::CONNECTIONS).decrement(1);
    tracing::debug!(%peer, session = id, "disconnected");
}
