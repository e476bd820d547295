//! A read half that is polled only when the socket said it may have something.
//!
//! The session's `select!` polls every branch on every wake-up (a commit confirmed, a
//! reply queued, a timer), and tungstenite zero-fills its read buffer (4 KiB) before each
//! read attempt, also one that finds nothing. Callgrind put that at ~8,000 instructions per
//! publish with one publish in flight: five read attempts, four of them empty. The gate
//! passes the inner stream a waker of its own and polls it again only once that waker was
//! woken (or the last poll returned an item, after which more may be buffered).

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};

use futures_util::task::AtomicWaker;
use futures_util::Stream;

/// Wraps a stream so that it is polled only when it may be ready.
pub struct ReadGate<S> {
    inner: S,
    signal: Arc<Signal>,
    /// The waker handed to the inner stream (made once: it is the same every poll).
    waker: Waker,
}

/// Set when the inner stream's waker fires; wakes whoever polled the gate last.
struct Signal {
    woken: AtomicBool,
    task: AtomicWaker,
}

impl Wake for Signal {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.woken.store(true, Ordering::Release);
        self.task.wake();
    }
}

impl<S> ReadGate<S> {
    pub fn new(inner: S) -> ReadGate<S> {
        let signal = Arc::new(Signal {
            // The first poll goes through.
            woken: AtomicBool::new(true),
            task: AtomicWaker::new(),
        });
        let waker = Waker::from(signal.clone());
        ReadGate {
            inner,
            signal,
            waker,
        }
    }
}

impl<S: Stream + Unpin> Stream for ReadGate<S> {
    type Item = S::Item;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<S::Item>> {
        // Registered before the flag is read: a wake after the read finds this waker.
        self.signal.task.register(cx.waker());
        if !self.signal.woken.swap(false, Ordering::AcqRel) {
            return Poll::Pending;
        }
        let this = &mut *self;
        let mut inner_cx = Context::from_waker(&this.waker);
        let polled = Pin::new(&mut this.inner).poll_next(&mut inner_cx);
        if polled.is_ready() {
            // More frames may sit in the buffer already: the next poll must look.
            this.signal.woken.store(true, Ordering::Release);
        }
        polled
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;

    use super::*;
    use futures_util::{FutureExt, StreamExt};

    #[tokio::test]
    async fn the_inner_stream_is_polled_again_only_once_it_woke_the_gate() {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<u32>();
        let polls = Arc::new(AtomicUsize::new(0));
        let counted = polls.clone();
        let inner = futures_util::stream::poll_fn(move |cx| {
            counted.fetch_add(1, Ordering::Relaxed);
            rx.poll_recv(cx)
        });
        let mut gate = ReadGate::new(inner);
        tx.send(1).ok();
        tx.send(2).ok();
        assert_eq!(gate.next().await, Some(1));
        assert_eq!(gate.next().await, Some(2));
        assert_eq!(polls.load(Ordering::Relaxed), 2);
        // Nothing there: the first poll reaches the inner stream, the next ones do not.
        for _ in 0..5 {
            assert!(gate.next().now_or_never().is_none());
        }
        assert_eq!(polls.load(Ordering::Relaxed), 3);
        // A send wakes the inner stream's waker: the item comes through.
        let sender = tokio::spawn(async move {
            tx.send(3).ok();
        });
        assert_eq!(gate.next().await, Some(3));
        sender.await.ok();
        assert_eq!(gate.next().await, None);
    }
}
