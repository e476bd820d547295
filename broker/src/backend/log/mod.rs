//! The embedded backend: the segment log on the local disk, the sled view of consumers, the
//! consumers in memory, the feed of new events and the delivery tasks.

pub mod append;
pub mod codec;
pub mod consumers;
pub mod delivery;
pub mod settled;
pub mod state;
pub mod store;
