//! The network's edge: the listener and the HTTP front door.

mod answer;
pub mod http;
pub mod listener;
mod publish;
