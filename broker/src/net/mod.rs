//! The network's edge: the listener, the HTTP front door and TLS.

pub mod http;
pub mod listener;
mod publish;
pub mod tls;
