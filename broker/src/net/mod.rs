//! The network's edge: the listener, the HTTP front door and TLS.

mod answer;
pub mod http;
pub mod listener;
mod publish;
