//! `wharf subscribe` and `wharf tail`: print events as they come, ack what was printed, and
//! (unless `--no-reconnect`) carry on across broker restarts and dropped connections.
//!
//! The subscription is `wharf_client`'s, which reconnects and subscribes again by itself:
//! a durable consumer resumes from its acked state on the broker, an ephemeral subscription
//! from the seq after the last one it delivered (so, as everything delivered is printed in
//! order, after the last one printed). What is left here is what printing needs: the events
//! printed but whose ack was not confirmed when the connection dropped are recognised when
//! they are delivered again (acked, not printed twice), and one line on stderr says when the
//! connection is lost and when it is back.

use std::collections::BTreeSet;
use std::io::Write;
use std::time::Duration;

use anyhow::{anyhow, Context};
use futures_util::future::BoxFuture;
use futures_util::stream::FuturesUnordered;
use futures_util::{FutureExt, StreamExt};
use tokio::sync::watch;
use wharf_client::{Client, Error, Incoming, State, Subscribe, Subscription};
use wharf_protocol::{Pattern, Reply, Request, Start, SubscribeOptions};

use crate::conn::{refused, Conn};

/// What to follow and how to print it.
pub struct Follow {
    pub patterns: Vec<Pattern>,
    pub consumer: Option<String>,
    pub start: Option<Start>,
    pub count: Option<u64>,
    /// Print payloads only.
    pub raw: bool,
    pub reconnect: bool,
    pub options: SubscribeOptions,
}

/// Events per frame the broker may send (`batch`).
const FRAME_BATCH: u32 = 256;
/// How long a subscriber that is ending waits for its last acks to be confirmed.
const ACK_CONFIRM_WAIT: Duration = Duration::from_secs(5);
/// Acks sent in one frame at most.
const ACK_BATCH: usize = 256;
/// Reconnect attempts start this far apart and back off to [`MAX_RETRY_DELAY`].
const FIRST_RETRY_DELAY: Duration = Duration::from_millis(100);
const MAX_RETRY_DELAY: Duration = Duration::from_secs(2);

/// An ack sent, with its seqs, and what came of it.
type AckOutcome = (Vec<u64>, Result<Reply, Error>);

/// What the run keeps between events.
struct Progress {
    printed: u64,
    /// Ephemeral: the seq a resume starts from (the one after the last printed, or the
    /// subscription's `start_seq` before any); for the notice on stderr.
    resume: Option<u64>,
    /// Durable: printed, and the ack not confirmed yet; a redelivery of one of these is
    /// acked without being printed again.
    unacked: BTreeSet<u64>,
    /// Printed, not acked yet.
    batch: Vec<u64>,
    /// Acks sent and not answered.
    acks: FuturesUnordered<BoxFuture<'static, AckOutcome>>,
    /// The connection was lost and not yet restored.
    reconnecting: bool,
}

pub async fn run(conn: &Conn, follow: Follow) -> anyhow::Result<()> {
    let options = conn
        .options()
        .reconnect(follow.reconnect)
        .min_backoff(FIRST_RETRY_DELAY)
        .max_backoff(MAX_RETRY_DELAY);
    let client = Client::connect(options).await?;
    let patterns = follow.patterns.iter().map(Pattern::as_str);
    let mut subscribe = match &follow.consumer {
        Some(name) => Subscribe::durable(name, patterns).options(follow.options.clone()),
        None => Subscribe::ephemeral(patterns),
    };
    if let Some(start) = follow.start {
        subscribe = subscribe.start(start);
    }
    // A backlog comes in fewer frames; what is printed is the same, one event a line.
    subscribe = subscribe.batch(FRAME_BATCH);
    let subscription = client
        .subscribe(subscribe)
        .await
        .map_err(|e| refused("the subscription", e))?;
    let mut progress = Progress {
        printed: 0,
        resume: subscription.start_seq(),
        unacked: BTreeSet::new(),
        batch: Vec::new(),
        acks: FuturesUnordered::new(),
        reconnecting: false,
    };
    let mut out = Output::new();
    let result = deliver(
        &client,
        conn,
        &follow,
        subscription,
        &mut progress,
        &mut out,
    )
    .await;
    if result.is_ok() {
        // Done, or stdout closed: what was acked is confirmed before leaving, so that it
        // is not delivered again. What could not be printed was never acked.
        let confirm = async {
            while let Some(outcome) = progress.acks.next().await {
                confirmed(outcome, &mut progress.unacked)?;
            }
            Ok::<_, anyhow::Error>(())
        };
        let _in_time = tokio::time::timeout(ACK_CONFIRM_WAIT, confirm).await;
    }
    client.close();
    result
}

fn resume_point(follow: &Follow, progress: &Progress) -> String {
    match (&follow.consumer, progress.resume) {
        (Some(name), _) => format!("consumer {name} from its acked state"),
        (None, Some(seq)) => format!("from seq {seq}"),
        (None, None) => "from where it started".to_owned(),
    }
}

/// Prints and acks until done, stdout closes, or the subscription ends.
async fn deliver(
    client: &Client,
    conn: &Conn,
    follow: &Follow,
    mut subscription: Subscription,
    progress: &mut Progress,
    out: &mut Output,
) -> anyhow::Result<()> {
    let mut closed: BoxFuture<'static, ()> = Box::pin(stdout_closed());
    let mut state = client.state();
    let mut watching = true;
    let done = |p: &Progress| follow.count.is_some_and(|n| p.printed >= n);
    loop {
        if done(progress) {
            settle(client, follow, progress, out)?;
            return Ok(());
        }
        // Take what is already here without waiting; before waiting, settle what was printed.
        let item = match subscription.next().now_or_never() {
            Some(item) => item,
            None => {
                if !settle(client, follow, progress, out)? {
                    return Ok(());
                }
                tokio::select! {
                    item = subscription.next() => item,
                    Some(outcome) = progress.acks.next(), if !progress.acks.is_empty() => {
                        confirmed(outcome, &mut progress.unacked)?;
                        continue;
                    }
                    changed = state.changed(), if watching => {
                        match changed {
                            Ok(()) => notice(&mut state, conn, follow, progress),
                            Err(_) => watching = false,
                        }
                        continue;
                    }
                    () = &mut closed => return Ok(()),
                }
            }
        };
        match item {
            None => {
                // The client closed for good: without --reconnect, the connection dropped.
                let why = match &*state.borrow() {
                    State::Disconnected { reason } => reason.clone(),
                    _ => "the client closed".to_owned(),
                };
                return Err(anyhow!("the connection to {} was lost: {why}", conn.url()));
            }
            Some(Incoming::Event(event)) => {
                // Printed before a reconnect, its ack lost with the connection. (Not told by
                // `delivery`: after a broker crash the count may start over at 1.)
                if follow.consumer.is_some() && progress.unacked.contains(&event.seq) {
                    progress.batch.push(event.seq);
                    continue;
                }
                let line = if follow.raw {
                    raw_line(event.payload.get())
                } else {
                    event.to_json()
                };
                if !out.line(line.as_bytes())? {
                    return Ok(());
                }
                progress.printed += 1;
                match &follow.consumer {
                    Some(_) => {
                        progress.unacked.insert(event.seq);
                        progress.batch.push(event.seq);
                    }
                    None => progress.resume = Some(event.seq + 1),
                }
                if (progress.batch.len() >= ACK_BATCH || done(progress))
                    && !settle(client, follow, progress, out)?
                {
                    return Ok(());
                }
            }
            Some(Incoming::Notice(reply)) => match reply {
                // A subscribe made again after a reconnect, refused.
                Reply::Error { code, message, .. } => {
                    return Err(anyhow!(
                        "the broker refused the subscription: {code}: {message}"
                    ))
                }
                Reply::Unsubscribed { reason, .. } => {
                    return Err(anyhow!("the broker ended the subscription: {reason}"))
                }
                Reply::Lost { from, to, .. } => {
                    eprintln!("wharf: too slow: events {from} to {to} matching the pattern were skipped (tail --start {from} replays them)");
                }
                Reply::Gap { from, to, .. } => {
                    eprintln!("wharf: retention removed events {from} to {to} before this consumer settled them");
                }
                _ => {}
            },
        }
    }
}

/// One line on stderr when the connection is lost, one when it is back.
fn notice(
    state: &mut watch::Receiver<State>,
    conn: &Conn,
    follow: &Follow,
    progress: &mut Progress,
) {
    match &*state.borrow_and_update() {
        State::Reconnecting { reason } if !progress.reconnecting => {
            progress.reconnecting = true;
            eprintln!(
                "wharf: lost {} ({reason}); reconnecting, then resuming {}",
                conn.url(),
                resume_point(follow, progress)
            );
        }
        State::Connected { url } if progress.reconnecting => {
            progress.reconnecting = false;
            eprintln!("wharf: reconnected to {url}");
        }
        _ => {}
    }
}

/// Flushes what was printed, then acks it in one request; `false` when stdout is closed
/// (nothing is acked then: it may not have reached the reader).
fn settle(
    client: &Client,
    follow: &Follow,
    progress: &mut Progress,
    out: &mut Output,
) -> anyhow::Result<bool> {
    if !out.flush()? {
        progress.batch.clear();
        return Ok(false);
    }
    let Some(consumer) = &follow.consumer else {
        return Ok(true);
    };
    if progress.batch.is_empty() {
        return Ok(true);
    }
    let seqs = std::mem::take(&mut progress.batch);
    let ack = client.request(Request::Ack {
        id: None,
        consumer: consumer.clone(),
        seqs: seqs.clone(),
    });
    progress
        .acks
        .push(Box::pin(ack.map(|outcome| (seqs, outcome))));
    Ok(true)
}

/// An ack's outcome: confirmed, its seqs are settled; cut off by a lost connection, they
/// come again (and are acked then, not printed); refused, the run ends.
fn confirmed((seqs, outcome): AckOutcome, unacked: &mut BTreeSet<u64>) -> anyhow::Result<()> {
    match outcome {
        Ok(_) => {
            for seq in seqs {
                unacked.remove(&seq);
            }
            Ok(())
        }
        Err(Error::Refused { code, message }) => {
            Err(anyhow!("the broker reported an error: {code}: {message}"))
        }
        Err(_) => Ok(()),
    }
}

/// A payload as `--raw` prints it: a string as its text, other JSON as sent (on one line).
fn raw_line(payload: &str) -> String {
    if let Ok(text) = serde_json::from_str::<String>(payload) {
        return text;
    }
    if payload.contains('\n') {
        if let Ok(value) = serde_json::from_str::<serde_json::Value>(payload) {
            return value.to_string();
        }
    }
    payload.to_owned()
}

/// Printed events, buffered. A closed stdout (its reader, such as `head`, exited) is the
/// normal end of a subscription, not an error.
struct Output {
    out: std::io::BufWriter<std::io::Stdout>,
    closed: bool,
}

impl Output {
    fn new() -> Output {
        Output {
            out: std::io::BufWriter::new(std::io::stdout()),
            closed: false,
        }
    }

    /// Buffers one line; `false` once stdout is closed.
    fn line(&mut self, bytes: &[u8]) -> anyhow::Result<bool> {
        let written = self
            .out
            .write_all(bytes)
            .and_then(|()| self.out.write_all(b"\n"));
        self.check(written)
    }

    /// Flushes what was buffered; `false` once stdout is closed.
    fn flush(&mut self) -> anyhow::Result<bool> {
        let flushed = self.out.flush();
        self.check(flushed)
    }

    fn check(&mut self, result: std::io::Result<()>) -> anyhow::Result<bool> {
        match result {
            Ok(()) => Ok(!self.closed),
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => {
                self.closed = true;
                Ok(false)
            }
            Err(e) => Err(e).context("cannot write to stdout"),
        }
    }
}

/// Resolves when stdout is a pipe whose reader has gone, so that `wharf subscribe | head`
/// ends when `head` does, not at the next event. Never resolves where this cannot be
/// watched (a file, /dev/null, a platform without it); a failed write still ends the run.
async fn stdout_closed() {
    #[cfg(target_os = "linux")]
    {
        use tokio::io::unix::AsyncFd;
        use tokio::io::Interest;
        // The write end of a pipe reports an error once the read end is closed.
        // SAFETY: `Stdout` is fd 1, which stays open, on the same file description, for the
        // life of the process; nothing in wharf closes or replaces it.
        let watched =
            unsafe { AsyncFd::register_with_interest(std::io::stdout(), Interest::ERROR) };
        if let Ok(fd) = watched {
            if fd.ready(Interest::ERROR).await.is_ok() {
                return;
            }
        }
    }
    std::future::pending::<()>().await
}
