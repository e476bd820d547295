//! Where events are stored and consumers kept.

pub mod log;
