//! `wharf subscribe` and `wharf tail`: print events as they come, ack what was printed, and
//! (unless `--no-reconnect`) carry on across broker restarts and dropped connections.
//!
//! Across a reconnect nothing is skipped: a durable consumer resumes from its acked state on
//! the broker, and the events printed but not yet confirmed as acked are recognised when they
//! are delivered again (acked, not printed twice); an ephemeral subscription resumes from
//! the seq after the last one it printed.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::time::Duration;

use anyhow::{anyhow, Context};
use futures_util::future::BoxFuture;
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{FutureExt, SinkExt, StreamExt};
use serde::Deserialize;
use serde_json::value::RawValue;
use tokio_tungstenite::tungstenite::Message;
use wharf_protocol::{Id, Pattern, Reply, Request, Start, SubscribeOptions};

use crate::client::{connect, Conn, Ws};

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

/// How long a subscriber that is ending waits for its last acks to be confirmed.
const ACK_CONFIRM_WAIT: Duration = Duration::from_secs(5);
/// Acks sent in one frame at most.
const ACK_BATCH: usize = 256;
/// Reconnect attempts start this far apart and back off to [`MAX_RETRY_DELAY`].
const FIRST_RETRY_DELAY: Duration = Duration::from_millis(100);
const MAX_RETRY_DELAY: Duration = Duration::from_secs(2);

/// Why a connection's run ended without finishing.
enum Stop {
    /// The connection was lost (or could not be made): a reconnect may carry on.
    Lost(anyhow::Error),
    /// The broker refused or ended the subscription: reconnecting would not help.
    Fatal(anyhow::Error),
}

/// What carries over from one connection to the next.
#[derive(Default)]
struct Progress {
    printed: u64,
    /// Ephemeral: the seq to resume from (the one after the last printed, or the
    /// subscription's `start_seq` before any).
    resume: Option<u64>,
    /// Durable: printed, and the ack not confirmed yet; a redelivery of one of these is
    /// acked without being printed again.
    unacked: BTreeSet<u64>,
    /// Subscribed at least once: only then is a lost connection worth reconnecting.
    subscribed: bool,
    /// The connection was lost and not yet restored.
    reconnecting: bool,
}

pub async fn run(conn: &Conn, follow: Follow) -> anyhow::Result<()> {
    let mut out = Output::new();
    let mut closed: BoxFuture<'static, ()> = Box::pin(stdout_closed());
    let mut progress = Progress::default();
    let mut delay = FIRST_RETRY_DELAY;
    loop {
        match session(conn, &follow, &mut progress, &mut out, &mut closed).await {
            Ok(()) => return Ok(()),
            Err(Stop::Fatal(e)) => return Err(e),
            Err(Stop::Lost(e)) if !follow.reconnect || !progress.subscribed => return Err(e),
            Err(Stop::Lost(e)) => {
                if !progress.reconnecting {
                    progress.reconnecting = true;
                    delay = FIRST_RETRY_DELAY;
                    eprintln!(
                        "wharf: lost {} ({}); reconnecting, then resuming {}",
                        conn.url(),
                        crate::one_line(&e),
                        resume_point(&follow, &progress)
                    );
                }
                tokio::select! {
                    () = tokio::time::sleep(delay) => {}
                    () = &mut closed => return Ok(()),
                }
                delay = (delay * 2).min(MAX_RETRY_DELAY);
            }
        }
    }
}

fn resume_point(follow: &Follow, progress: &Progress) -> String {
    match (&follow.consumer, progress.resume) {
        (Some(name), _) => format!("consumer {name} from its acked state"),
        (None, Some(seq)) => format!("from seq {seq}"),
        (None, None) => "from where it started".to_owned(),
    }
}

/// One connection: subscribe, then print and ack until done, stdout closes, or the
/// connection ends.
async fn session(
    conn: &Conn,
    follow: &Follow,
    progress: &mut Progress,
    out: &mut Output,
    closed: &mut BoxFuture<'static, ()>,
) -> Result<(), Stop> {
    let (mut sink, mut stream) = connect(conn).await.map_err(Stop::Lost)?;
    // A durable consumer resumes from its acked state; `start` only matters when it is new.
    let start = match &follow.consumer {
        Some(_) => follow.start,
        None => progress.resume.map(Start::Seq).or(follow.start),
    };
    let request = Request::Subscribe {
        id: Some(Id::Str("subscribe".into())),
        topics: follow.patterns.clone(),
        consumer: follow.consumer.clone(),
        start,
        options: follow.options.clone(),
        presence: false,
        join_leave: false,
    };
    sink.send(Message::text(request.to_json()))
        .await
        .map_err(|e| Stop::Lost(e.into()))?;
    loop {
        match read(stream.next().await)? {
            None => continue,
            Some(Frame::Reply(Reply::Subscribed { start_seq, .. })) => {
                if follow.consumer.is_none() && progress.resume.is_none() {
                    progress.resume = start_seq;
                }
                break;
            }
            Some(Frame::Reply(Reply::Error { code, message, .. })) => {
                return Err(Stop::Fatal(anyhow!(
                    "the broker refused the subscription: {code}: {message}"
                )))
            }
            Some(other) => {
                return Err(Stop::Fatal(anyhow!(
                    "unexpected reply from the broker: {}",
                    other.describe()
                )))
            }
        }
    }
    progress.subscribed = true;
    if progress.reconnecting {
        progress.reconnecting = false;
        eprintln!("wharf: reconnected to {}", conn.url());
    }
    let mut acks = Acks {
        consumer: follow.consumer.clone(),
        ..Acks::default()
    };
    let result = deliver(
        follow,
        progress,
        out,
        closed,
        &mut acks,
        &mut sink,
        &mut stream,
    )
    .await;
    if result.is_ok() {
        // Done, or stdout closed: what was acked is confirmed before leaving, so that it
        // is not delivered again. What could not be printed was never acked.
        let confirm = acks.confirm(progress, &mut stream);
        let _in_time = tokio::time::timeout(ACK_CONFIRM_WAIT, confirm).await;
        let _closed = sink.close().await;
    }
    result
}

async fn deliver(
    follow: &Follow,
    progress: &mut Progress,
    out: &mut Output,
    closed: &mut BoxFuture<'static, ()>,
    acks: &mut Acks,
    sink: &mut SplitSink<Ws, Message>,
    stream: &mut SplitStream<Ws>,
) -> Result<(), Stop> {
    let done = |p: &Progress| follow.count.is_some_and(|n| p.printed >= n);
    loop {
        if done(progress) {
            acks.settle(out, sink).await?;
            return Ok(());
        }
        // Take what is already here without waiting; before waiting, settle what was printed.
        let msg = match stream.next().now_or_never() {
            Some(msg) => msg,
            None => {
                if !acks.settle(out, sink).await? {
                    return Ok(());
                }
                tokio::select! {
                    msg = stream.next() => msg,
                    () = &mut *closed => return Ok(()),
                }
            }
        };
        match read(msg)? {
            None => {}
            Some(Frame::Event { seq, payload, text }) => {
                // Printed before a reconnect, its ack lost with the connection. (Not told by
                // `delivery`: after a broker crash the count may start over at 1.)
                if follow.consumer.is_some() && progress.unacked.contains(&seq) {
                    acks.batch.push(seq);
                    continue;
                }
                let line = if follow.raw { raw_line(payload) } else { text };
                if !out.line(line.as_bytes()).map_err(Stop::Fatal)? {
                    return Ok(());
                }
                progress.printed += 1;
                match &follow.consumer {
                    Some(_) => {
                        progress.unacked.insert(seq);
                        acks.batch.push(seq);
                    }
                    None => progress.resume = Some(seq + 1),
                }
                if (acks.batch.len() >= ACK_BATCH || done(progress))
                    && !acks.settle(out, sink).await?
                {
                    return Ok(());
                }
            }
            Some(Frame::Reply(reply)) => match reply {
                Reply::Ok { id: Some(id) } => acks.confirmed(&id, progress),
                Reply::Error { code, message, .. } => {
                    return Err(Stop::Fatal(anyhow!(
                        "the broker reported an error: {code}: {message}"
                    )))
                }
                Reply::Unsubscribed { reason, .. } => {
                    return Err(Stop::Fatal(anyhow!(
                        "the broker ended the subscription: {reason}"
                    )))
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

/// A payload as `--raw` prints it: a string as its text, other JSON as sent (on one line).
fn raw_line(payload: String) -> String {
    if let Ok(text) = serde_json::from_str::<String>(&payload) {
        return text;
    }
    if payload.contains('\n') {
        if let Ok(value) = serde_json::from_str::<serde_json::Value>(&payload) {
            return value.to_string();
        }
    }
    payload
}

/// A frame from the broker: an event (kept as the broker's text, to print it verbatim) or
/// any other reply.
enum Frame {
    Event {
        seq: u64,
        payload: String,
        text: String,
    },
    Reply(Reply),
}

impl Frame {
    fn describe(&self) -> String {
        match self {
            Frame::Event { text, .. } => text.clone(),
            Frame::Reply(reply) => reply.to_json(),
        }
    }
}

#[derive(Deserialize)]
struct EventFields<'a> {
    #[serde(rename = "type")]
    kind: &'a str,
    seq: Option<u64>,
    #[serde(borrow)]
    payload: Option<&'a RawValue>,
}

/// A broker frame; `None` for control frames. A lost connection is [`Stop::Lost`].
fn read(
    msg: Option<Result<Message, tokio_tungstenite::tungstenite::Error>>,
) -> Result<Option<Frame>, Stop> {
    match msg {
        None => Err(Stop::Lost(anyhow!("the broker closed the connection"))),
        Some(Err(e)) => Err(Stop::Lost(
            anyhow::Error::new(e).context("connection to the broker failed"),
        )),
        Some(Ok(Message::Text(text))) => {
            let text = text.as_str();
            let fields = serde_json::from_str::<EventFields>(text);
            if let Ok(EventFields {
                kind: "event",
                seq: Some(seq),
                payload: Some(payload),
            }) = fields
            {
                return Ok(Some(Frame::Event {
                    seq,
                    payload: payload.get().to_owned(),
                    text: text.to_owned(),
                }));
            }
            serde_json::from_str(text)
                .map(|reply| Some(Frame::Reply(reply)))
                .with_context(|| format!("unexpected frame from the broker: {text}"))
                .map_err(Stop::Fatal)
        }
        Some(Ok(Message::Close(frame))) => {
            let reason = frame.map(|f| f.reason.to_string()).unwrap_or_default();
            Err(Stop::Lost(anyhow!(
                "the broker closed the connection: {reason}"
            )))
        }
        Some(Ok(_)) => Ok(None),
    }
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

/// Printed events waiting for their ack, and ack frames waiting for their `ok`.
#[derive(Default)]
struct Acks {
    /// The durable consumer; none for `tail` and ephemeral subscriptions.
    consumer: Option<String>,
    batch: Vec<u64>,
    /// Ack frames sent and not confirmed, by request id, with their seqs.
    unconfirmed: BTreeMap<u64, Vec<u64>>,
    next_id: u64,
}

impl Acks {
    /// Flushes what was printed, then acks it in one request; `false` when stdout is
    /// closed (nothing is acked then: it may not have reached the reader).
    async fn settle(
        &mut self,
        out: &mut Output,
        sink: &mut SplitSink<Ws, Message>,
    ) -> Result<bool, Stop> {
        if !out.flush().map_err(Stop::Fatal)? {
            self.batch.clear();
            return Ok(false);
        }
        let Some(name) = &self.consumer else {
            return Ok(true);
        };
        if self.batch.is_empty() {
            return Ok(true);
        }
        self.next_id += 1;
        let seqs = std::mem::take(&mut self.batch);
        let ack = Request::Ack {
            id: Some(Id::Uint(self.next_id)),
            consumer: name.clone(),
            seqs: seqs.clone(),
        };
        sink.send(Message::text(ack.to_json()))
            .await
            .map_err(|e| Stop::Lost(e.into()))?;
        self.unconfirmed.insert(self.next_id, seqs);
        Ok(true)
    }

    fn confirmed(&mut self, id: &Id, progress: &mut Progress) {
        if let Some(seqs) = id.as_u64().and_then(|n| self.unconfirmed.remove(&n)) {
            for seq in seqs {
                progress.unacked.remove(&seq);
            }
        }
    }

    /// Reads until every ack sent is confirmed (events that arrive meanwhile are left
    /// unacked).
    async fn confirm(&mut self, progress: &mut Progress, stream: &mut SplitStream<Ws>) {
        while !self.unconfirmed.is_empty() {
            match read(stream.next().await) {
                Ok(Some(Frame::Reply(Reply::Ok { id: Some(id) }))) => self.confirmed(&id, progress),
                Ok(_) => {}
                Err(_) => return,
            }
        }
    }
}
