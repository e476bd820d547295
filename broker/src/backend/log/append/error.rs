//! Why the append log failed, each with its cause.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::record;

/// What went wrong in the log. Clone, because one failed batch answers every request in it;
/// causes that are not Clone are shared behind an `Arc`. Each message ends with its cause's
/// own text, so printing the chain shows the cause once (see the CLI's `one_line`).
#[derive(Debug, Clone, thiserror::Error)]
pub enum LogError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: Arc<io::Error>,
    },
    /// Damage found in stored bytes; `reason` says what was found there.
    #[error("damaged log: {path} at byte {offset}: {reason} (wharf serve --repair cuts damaged records out, losing them)")]
    Corrupt {
        path: PathBuf,
        offset: u64,
        reason: String,
    },
    #[error("the log accepts no more writes: {0}")]
    Stopped(#[source] Stop),
    #[error("record does not encode: {0}")]
    Encode(#[source] Arc<record::FrameError>),
    /// A write failed (a full disk, say) and was cut back: nothing of it is stored, and the
    /// log goes on accepting writes.
    #[error("could not write to the log, nothing was stored: {path}: {source}")]
    WriteFailed {
        path: PathBuf,
        #[source]
        source: Arc<io::Error>,
    },
    /// An event refused without trying: a write already failed for want of space, and there
    /// is not yet room to put the reserve back (acks and consumer changes still go in).
    #[error("could not write to the log, nothing was stored: the disk is full: publishes are refused until space returns")]
    DiskFull,
    /// A submitted record of a kind kept only to read old logs.
    #[error("a V1 record is read from old logs, never written")]
    Legacy,
    /// A blocking read of the log, run off the async runtime, did not come back (it
    /// panicked, or the runtime is shutting down).
    #[error("{what} failed: {source}")]
    Task {
        what: &'static str,
        #[source]
        source: Arc<tokio::task::JoinError>,
    },
    #[error("cannot start the log writer thread: {0}")]
    Thread(#[source] Arc<io::Error>),
}

impl LogError {
    pub fn io(path: &Path, source: io::Error) -> LogError {
        LogError::Io {
            path: path.to_owned(),
            source: Arc::new(source),
        }
    }

    /// A write of `path` that failed and was cut back (see [`LogError::WriteFailed`]).
    pub fn write_failed(path: &Path, source: io::Error) -> LogError {
        LogError::WriteFailed {
            path: path.to_owned(),
            source: Arc::new(source),
        }
    }

    /// `what`, run with `spawn_blocking`, did not come back.
    pub fn task(what: &'static str, source: tokio::task::JoinError) -> LogError {
        LogError::Task {
            what,
            source: Arc::new(source),
        }
    }
}

impl From<record::FrameError> for LogError {
    fn from(e: record::FrameError) -> LogError {
        LogError::Encode(Arc::new(e))
    }
}

/// Why the log accepts no more writes.
#[derive(Debug, Clone, thiserror::Error)]
pub enum Stop {
    #[error("the broker is shutting down")]
    ShuttingDown,
    /// The writer thread ended without answering (it panicked).
    #[error("the log writer is gone")]
    WriterGone,
    /// A write, sync or segment roll failed in a way that was not cut back cleanly: after a
    /// failed fsync the kernel may have dropped the pages, so nothing later could be trusted
    /// to sit on top of them.
    #[error("{0}")]
    Failed(#[source] Box<LogError>),
    #[error("cannot start a new segment: {0}")]
    NoNewSegment(#[source] Box<LogError>),
    #[error("retention failed: {0}")]
    Retention(#[source] Box<LogError>),
}
