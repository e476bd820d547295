//! What every connection shares: the configuration, the open store, the authenticator, the
//! TLS acceptor and the broker's counters. Its own module so that the listener, the HTTP
//! front door and the sessions all depend on it, and none on another for it.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use crate::auth::Authenticator;
use crate::config::Config;
use crate::store::Store;

/// What every session shares.
pub struct Context {
    pub config: Config,
    pub store: Store,
    next_session: AtomicU64,
    /// Open WebSocket connections.
    pub connections: AtomicU64,
    pub started: std::time::Instant,
    pub auth: Authenticator,
    pub tls: Option<tokio_rustls::TlsAcceptor>,
    /// Consumer creations submitted to the log and not yet applied: they count against the
    /// consumer limits, so that concurrent creations cannot pass them.
    pub creating_consumers: Arc<AtomicUsize>,
}

/// One consumer creation in flight, counted in [`Context::creating_consumers`] until dropped.
pub struct CreatingConsumer(Arc<AtomicUsize>);

impl CreatingConsumer {
    pub fn new(count: &Arc<AtomicUsize>) -> CreatingConsumer {
        count.fetch_add(1, Ordering::AcqRel);
        CreatingConsumer(count.clone())
    }
}

impl Drop for CreatingConsumer {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Context {
    /// A new connection's id, for logs and attachments.
    pub fn next_session_id(&self) -> u64 {
        self.next_session.fetch_add(1, Ordering::Relaxed)
    }

    pub fn new(
        config: Config,
        store: Store,
        tls: Option<tokio_rustls::TlsAcceptor>,
        auth: Authenticator,
    ) -> Context {
        Context {
            tls,
            auth,
            config,
            store,
            next_session: AtomicU64::new(1),
            connections: AtomicU64::new(0),
            started: std::time::Instant::now(),
            creating_consumers: Arc::default(),
        }
    }
}
