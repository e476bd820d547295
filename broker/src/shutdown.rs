//! The broker-wide stop signal: one sender, any number of listeners.

use tokio::sync::watch;

/// Lets tasks learn that the broker is stopping.
#[derive(Clone)]
pub struct Shutdown {
    rx: watch::Receiver<bool>,
}

/// Triggers a [`Shutdown`].
pub struct ShutdownTrigger {
    tx: watch::Sender<bool>,
}

impl Shutdown {
    pub fn new() -> (ShutdownTrigger, Shutdown) {
        let (tx, rx) = watch::channel(false);
        (ShutdownTrigger { tx }, Shutdown { rx })
    }

    /// Resolves once the broker is stopping.
    pub async fn wait(&mut self) {
        // An error means the trigger is gone, which also means stop.
        let _gone = self.rx.wait_for(|stop| *stop).await;
    }
}

impl ShutdownTrigger {
    pub fn trigger(&self) {
        self.tx.send_replace(true);
    }
}
