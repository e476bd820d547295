//! The writer task: the only place frames reach the socket.

use super::*;

pub(super) fn close_frame(code: CloseCode, reason: &str) -> CloseFrame {
    CloseFrame {
        code,
        reason: reason.to_owned().into(),
    }
}

/// Drains the outbound queue into the socket, many frames per flush. The end of the session
/// comes through `close` (with a close frame or none) so that it is never stuck behind a full
/// queue or a socket the peer does not read: what is already queued and the close frame go
/// out within [`CLOSE_TIMEOUT`], or the socket is dropped.
pub(super) async fn write_frames(
    mut sink: SplitSink<Ws, Message>,
    mut rx: mpsc::Receiver<Queued>,
    mut close: oneshot::Receiver<Option<CloseFrame>>,
) {
    let frame = loop {
        let batch = async {
            let Some(first) = rx.recv().await else {
                return false;
            };
            let mut next = Some(first);
            // A frame's bytes return to the queue's budget once the socket has taken it.
            while let Some(Queued { frame, .. }) = next.take() {
                if sink.feed(message(frame)).await.is_err() {
                    return false;
                }
                next = rx.try_recv().ok();
            }
            sink.flush().await.is_ok()
        };
        tokio::select! {
            biased;
            frame = &mut close => break frame.ok().flatten(),
            more = batch => if !more {
                break None;
            },
        }
    };
    let finish = async {
        while let Ok(queued) = rx.try_recv() {
            if sink.feed(message(queued.frame)).await.is_err() {
                return;
            }
        }
        if let Some(frame) = frame {
            let _sent = sink.send(Message::Close(Some(frame))).await;
        }
        let _closed = sink.close().await;
    };
    let _in_time = tokio::time::timeout(CLOSE_TIMEOUT, finish).await;
}

/// The WebSocket message of a frame: this is the one place that knows the transport.
fn message(frame: Frame) -> Message {
    match frame {
        Frame::Json(text) => {
            metrics::bytes_out().increment(text.len() as u64);
            Message::text(text)
        }
        Frame::Ping => Message::Ping(Default::default()),
    }
}

pub(super) async fn sleep_until_opt(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}
