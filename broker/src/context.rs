//! What every connection shares: the configuration, the backend, the authenticator, the
//! TLS acceptor and the broker's counters. Its own module so that the listener, the HTTP
//! front door and the sessions all depend on it, and none on another for it.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use crate::auth::Authenticator;
use crate::backend::Backend;
use crate::config::Config;

/// What every session shares.
pub struct Context {
    pub config: Config,
    pub backend: Backend,
    next_session: AtomicU64,
    /// Open WebSocket connections.
    pub connections: AtomicU64,
    pub started: std::time::Instant,
    /// Tokens and `[auth]` settings, and the TLS certificate: SIGHUP replaces them (new
    /// connections get the new ones; open ones keep their authentication).
    auth: RwLock<Arc<Authenticator>>,
    tls: RwLock<Option<tokio_rustls::TlsAcceptor>>,
}

impl Context {
    pub fn auth(&self) -> Arc<Authenticator> {
        self.auth.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub fn tls(&self) -> Option<tokio_rustls::TlsAcceptor> {
        self.tls.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Re-reads the config file: `[auth]` (tokens, JWT keys, origins…) and the TLS
    /// certificate take effect for new connections. The rest needs a restart, and so does
    /// turning TLS on or off (clients' URLs would change).
    pub fn reload(&self) -> Result<(), String> {
        let Some(path) = &self.config.source else {
            return Err("the broker was started without a config file".into());
        };
        let mut fresh = Config::load(Some(path)).map_err(|e| e.to_string())?;
        // What flags set at start still holds.
        fresh.listen = self.config.listen;
        fresh.data_dir = self.config.data_dir.clone();
        fresh.validate().map_err(|e| e.to_string())?;
        let auth = Authenticator::new(&fresh.auth)?;
        let tls = match (&fresh.tls_cert, &fresh.tls_key) {
            (Some(cert), Some(key)) => {
                Some(crate::tls::acceptor(cert, key).map_err(|e| e.to_string())?)
            }
            _ => None,
        };
        if tls.is_some() != self.tls().is_some() {
            return Err("turning TLS on or off needs a restart".into());
        }
        *self.auth.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(auth);
        if tls.is_some() {
            *self.tls.write().unwrap_or_else(|p| p.into_inner()) = tls;
        }
        Ok(())
    }

    /// A new connection's id, for logs and attachments.
    pub fn next_session_id(&self) -> u64 {
        self.next_session.fetch_add(1, Ordering::Relaxed)
    }

    pub fn new(
        config: Config,
        backend: Backend,
        tls: Option<tokio_rustls::TlsAcceptor>,
        auth: Authenticator,
    ) -> Context {
        Context {
            tls: RwLock::new(tls),
            auth: RwLock::new(Arc::new(auth)),
            config,
            backend,
            next_session: AtomicU64::new(1),
            connections: AtomicU64::new(0),
            started: std::time::Instant::now(),
        }
    }
}
