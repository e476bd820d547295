//! Why a broker could not be opened: the one error type the binary sees from the library.

/// What stopped [`crate::Broker::open`].
#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    /// The backend could not open its storage (a damaged log, an unreadable view…).
    #[error(transparent)]
    Storage(Box<dyn std::error::Error + Send + Sync>),
    #[error("{what}: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },
    #[error("data dir {0} is in use by another wharf process")]
    Locked(std::path::PathBuf),
}
