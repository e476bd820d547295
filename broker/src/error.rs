//! Why a broker could not be opened: the one error type the binary sees from the library.

/// What stopped [`crate::Broker::open`] (and [`crate::backend::log::store::Store::open`]).
#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error(transparent)]
    Log(#[from] crate::backend::log::append::LogError),
    #[error(transparent)]
    State(#[from] crate::backend::log::state::StateError),
    #[error("{what}: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },
    #[error("data dir {0} is in use by another wharf process")]
    Locked(std::path::PathBuf),
}
