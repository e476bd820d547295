//! The listener: accepts TCP connections, completes the WebSocket handshake on `/ws`, and
//! runs one [`Session`] per connection until shutdown.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::http::StatusCode;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

use crate::auth::Principal;
use crate::context::Context;
use crate::net::http::Opening;
use crate::session::Session;
use crate::shutdown::Shutdown;

/// On shutdown, sessions get this long to send their last replies and close frames.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

/// On SIGHUP, reloads `[auth]` and the TLS certificate ([`Context::reload`]); a config that
/// does not load is logged and the running settings stay. The handler is in place when this
/// returns (before then, SIGHUP would end the process).
pub fn reload_on_hangup(ctx: Arc<Context>, mut shutdown: Shutdown) -> tokio::task::JoinHandle<()> {
    #[cfg(unix)]
    let hangups = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup());
    tokio::spawn(async move {
        #[cfg(unix)]
        {
            let mut hangups = match hangups {
                Ok(hangups) => hangups,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot listen for SIGHUP; reload needs a restart");
                    return;
                }
            };
            loop {
                tokio::select! {
                    _ = shutdown.wait() => return,
                    Some(()) = hangups.recv() => match ctx.reload() {
                        Ok(()) => tracing::info!("SIGHUP: reloaded [auth] and the TLS certificate"),
                        Err(e) => tracing::warn!(error = %e, "SIGHUP: reload failed; the running settings stay"),
                    },
                }
            }
        }
        #[cfg(not(unix))]
        {
            let _ = (ctx, shutdown.wait().await);
        }
    })
}

/// Connections open per remote address, for `max_connections_per_ip`.
#[derive(Clone, Default)]
struct PerIp(Arc<Mutex<std::collections::HashMap<IpAddr, usize>>>);

/// One connection, counted against its address (when limited) until dropped.
struct IpSlot {
    counts: PerIp,
    ip: Option<IpAddr>,
}

impl PerIp {
    /// Counts a connection from `ip`, or `None` when it already has `limit`. Loopback peers
    /// are not limited: behind a local proxy every client would share one address.
    fn admit(&self, ip: IpAddr, limit: usize) -> Option<IpSlot> {
        let counts = self.clone();
        if ip.is_loopback() || limit == 0 {
            return Some(IpSlot { counts, ip: None });
        }
        let mut held = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let count = held.entry(ip).or_insert(0);
        if *count >= limit {
            return None;
        }
        *count += 1;
        Some(IpSlot {
            counts,
            ip: Some(ip),
        })
    }
}

impl Drop for IpSlot {
    fn drop(&mut self) {
        let Some(ip) = self.ip else {
            return;
        };
        let mut counts = self.counts.0.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(count) = counts.get_mut(&ip) {
            *count -= 1;
            if *count == 0 {
                counts.remove(&ip);
            }
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

/// Saves delivered-through marks every `state_flush_interval`, so delivery counts trail a
/// crash by about that much, like the rest of the view.
pub async fn save_marks(ctx: Arc<Context>, mut shutdown: Shutdown) {
    let mut tick = tokio::time::interval(ctx.config.state_flush_interval);
    loop {
        tokio::select! {
            _ = shutdown.wait() => return,
            _ = tick.tick() => {
                // sled may stall; not on a runtime worker.
                let ctx = ctx.clone();
                if let Err(e) = tokio::task::spawn_blocking(move || ctx.store.save_marks()).await {
                    tracing::warn!(error = %e, "saving delivered-through marks failed");
                }
            }
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
            let entry = crate::backend::log::append::Record::ConsumerDeleted { name: name.clone() };
            match ctx.store.log.append(vec![entry]).await {
                Ok(_) => tracing::info!(consumer = name, ?ttl, "deleted an inactive consumer"),
                Err(e) => {
                    tracing::warn!(consumer = name, error = %e, "could not delete an inactive consumer")
                }
            }
        }
    }
}

/// Serves until shutdown; `sessions` holds connections accepted before (during recovery), so
/// that they count against `max_connections`.
pub async fn serve(
    listener: TcpListener,
    mut sessions: JoinSet<()>,
    ctx: Arc<Context>,
    mut shutdown: Shutdown,
) {
    let per_ip = PerIp::default();
    loop {
        tokio::select! {
            _ = shutdown.wait() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) if sessions.len() >= ctx.config.max_connections => {
                    tracing::warn!(%peer, limit = ctx.config.max_connections, "connection refused: at max_connections");
                    tokio::spawn(crate::net::http::refuse(stream, "too many connections"));
                }
                Ok((stream, peer)) => match per_ip.admit(peer.ip(), ctx.config.max_connections_per_ip) {
                    Some(slot) => {
                        let ctx = ctx.clone();
                        let shutdown = shutdown.clone();
                        sessions.spawn(async move {
                            connection(ctx, stream, peer, shutdown).await;
                            drop(slot);
                        });
                    }
                    None => {
                        tracing::warn!(%peer, limit = ctx.config.max_connections_per_ip, "connection refused: at max_connections_per_ip");
                        tokio::spawn(crate::net::http::refuse(stream, "too many connections from this address"));
                    }
                },
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
    // tungstenite reads into a 128 KiB buffer per connection by default; 4 KiB keeps many idle
    // connections cheap (frames larger than it are still read, in several steps).
    let ws_config = WebSocketConfig::default()
        .read_buffer_size(4 * 1024)
        .max_message_size(Some(ctx.config.max_frame_bytes.saturating_mul(2)))
        .max_frame_size(Some(ctx.config.max_frame_bytes.saturating_mul(2)));
    // Filled by the handshake when the client sends a valid token with it.
    let principal: Arc<Mutex<Option<Arc<Principal>>>> = Arc::default();
    let slot = principal.clone();
    let hs_ctx = ctx.clone();
    // The callback's signature is tungstenite's; its error type is large by design.
    #[allow(clippy::result_large_err)]
    let check_path = move |req: &Request, resp: Response| -> Result<Response, ErrorResponse> {
        let refuse = |status: StatusCode, text: &str| {
            let mut err = ErrorResponse::new(Some(format!("{text}\n")));
            *err.status_mut() = status;
            Err(err)
        };
        if req.uri().path() != wharf_protocol::WS_PATH {
            let text = format!(
                "wharf serves WebSocket clients at {}",
                wharf_protocol::WS_PATH
            );
            return refuse(StatusCode::NOT_FOUND, &text);
        }
        // Host and Origin were checked with the request head (http::open).
        let authenticator = hs_ctx.auth();
        let auth = authenticator.settings();
        let header = |name: &str| req.headers().get(name).and_then(|v| v.to_str().ok());
        let bearer = header("authorization").and_then(|v| v.strip_prefix("Bearer "));
        let query = req
            .uri()
            .query()
            .and_then(|q| q.split('&').find_map(|kv| kv.strip_prefix("token=")));
        let token = match (bearer, query) {
            (Some(t), _) => Some(t),
            (None, Some(t)) if auth.allow_query_token => Some(t),
            (None, Some(_)) => return refuse(StatusCode::UNAUTHORIZED, "?token= is not enabled"),
            (None, None) => None,
        };
        if let Some(token) = token {
            match authenticator.check(token) {
                Some(p) => *slot.lock().unwrap_or_else(|e| e.into_inner()) = Some(p),
                None => return refuse(StatusCode::UNAUTHORIZED, "invalid token"),
            }
        }
        Ok(resp)
    };
    let opening = async {
        let conn = crate::net::tls::Conn::accept(stream, ctx.tls().as_ref()).await?;
        match crate::net::http::open(conn, &ctx).await? {
            Opening::Closed => Ok(None),
            Opening::Http(stream) => Ok(Some(Err(stream))),
            Opening::Upgrade(stream) => {
                tokio_tungstenite::accept_hdr_async_with_config(stream, check_path, Some(ws_config))
                    .await
                    .map(|ws| Some(Ok(ws)))
                    .map_err(std::io::Error::other)
            }
        }
    };
    // Boxed: the handshake's state is large and needed only briefly; unboxed it would size
    // the whole connection future (5 KiB) for the connection's life.
    let ws = match tokio::time::timeout(ctx.config.handshake_timeout, Box::pin(opening)).await {
        Ok(Ok(Some(Ok(ws)))) => ws,
        // Plain HTTP, kept alive for as many requests as the client sends; hyper bounds the
        // wait for each request head.
        Ok(Ok(Some(Err(http)))) => {
            crate::net::http::serve_http(http, ctx, shutdown).await;
            return;
        }
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
    let id = ctx.next_session_id();
    tracing::debug!(%peer, session = id, "connected");
    ::metrics::gauge!(crate::metrics::CONNECTIONS).increment(1);
    ctx.connections.fetch_add(1, Ordering::Relaxed);
    let principal = principal.lock().unwrap_or_else(|e| e.into_inner()).take();
    Session::run(ctx.clone(), id, ws, principal, shutdown).await;
    ctx.connections.fetch_sub(1, Ordering::Relaxed);
    ::metrics::gauge!(crate::metrics::CONNECTIONS).decrement(1);
    tracing::debug!(%peer, session = id, "disconnected");
}
