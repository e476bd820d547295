//! The client subcommands: they talk to a broker over the wire protocol only.

use std::collections::BTreeSet;
use std::io::Write;

use anyhow::{anyhow, bail, Context};
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{FutureExt, SinkExt, StreamExt};
use serde_json::value::RawValue;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use wharf_protocol::{Id, NewEvent, Pattern, Reply, Request, Start, SubscribeOptions, Topic};

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Publishes in flight at once when reading stdin.
const PIPELINE: u64 = 1024;

const DEFAULT_URL: &str = "ws://127.0.0.1:7700/ws";

/// Where the client commands find the broker. Global flags: they may come before or after
/// the subcommand.
#[derive(clap::Args, Clone, Debug)]
pub struct Conn {
    /// The broker's WebSocket URL, for the client commands [default: ws://127.0.0.1:7700/ws]
    #[arg(
        long,
        global = true,
        env = "WHARF_URL",
        hide_env_values = true,
        value_name = "URL",
        display_order = 900
    )]
    pub url: Option<String>,
    /// Token for a broker with [auth] on, sent as `Authorization: Bearer`
    #[arg(
        long,
        global = true,
        env = "WHARF_TOKEN",
        hide_env_values = true,
        value_name = "TOKEN",
        display_order = 901
    )]
    pub token: Option<String>,
}

impl Conn {
    pub fn url(&self) -> &str {
        self.url.as_deref().unwrap_or(DEFAULT_URL)
    }
}

/// Connects; the token, when given, goes along as `Authorization: Bearer`.
async fn connect(conn: &Conn) -> anyhow::Result<(SplitSink<Ws, Message>, SplitStream<Ws>)> {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let url = conn.url();
    let mut request = url
        .into_client_request()
        .map_err(|e| anyhow!("invalid url {url}: {e}"))?;
    if let Some(token) = &conn.token {
        let value = format!("Bearer {token}")
            .parse()
            .map_err(|_| anyhow!("the token holds characters a header cannot carry"))?;
        request.headers_mut().insert("authorization", value);
    }
    let (ws, _) = tokio_tungstenite::connect_async(request)
        .await
        .map_err(|e| anyhow!("cannot connect to {url}: {e}"))?;
    Ok(ws.split())
}

/// The next broker frame, skipping control frames.
async fn next_reply(stream: &mut SplitStream<Ws>) -> anyhow::Result<Reply> {
    loop {
        match stream.next().await {
            None => bail!("the broker closed the connection"),
            Some(Err(e)) => return Err(e).context("connection to the broker failed"),
            Some(Ok(Message::Text(text))) => {
                return serde_json::from_str(text.as_str())
                    .with_context(|| format!("unexpected frame from the broker: {text}"))
            }
            Some(Ok(Message::Close(frame))) => {
                let reason = frame.map(|f| f.reason.to_string()).unwrap_or_default();
                bail!("the broker closed the connection: {reason}")
            }
            Some(Ok(_)) => {}
        }
    }
}

fn payload_of(text: &str) -> anyhow::Result<Box<RawValue>> {
    let json = match serde_json::from_str::<Box<RawValue>>(text) {
        Ok(raw) => return Ok(raw),
        Err(_) => serde_json::to_string(text)?,
    };
    Ok(RawValue::from_string(json)?)
}

fn publish_frame(
    topic: &Topic,
    line: u64,
    text: &str,
    prefix: Option<&str>,
) -> anyhow::Result<Message> {
    let request = Request::Publish {
        id: Some(Id::Uint(line)),
        event: NewEvent {
            topic: topic.clone(),
            payload: payload_of(text)?,
            msg_id: prefix.map(|p| format!("{p}-{line}")),
        },
    };
    Ok(Message::text(request.to_json()))
}

/// Per-line errors shown before the rest are only counted.
const SHOWN_FAILURES: u64 = 10;

/// Publishes PAYLOAD, or each non-blank stdin line, pipelined. Every stored event's seq is
/// printed in input order, also when some lines fail: a failure is reported on stderr with
/// its line number and the run goes on, so that stdout accounts for everything stored.
pub async fn publish(
    conn: &Conn,
    topic: &str,
    payload: Option<String>,
    prefix: Option<String>,
) -> anyhow::Result<()> {
    let topic = Topic::parse(topic).map_err(|e| anyhow!("invalid topic: {e}"))?;
    let prefix = prefix.as_deref();
    let (mut sink, mut stream) = connect(conn).await?;
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    if let Some(text) = payload {
        sink.send(publish_frame(&topic, 1, &text, prefix)?).await?;
        let seq = match next_reply(&mut stream).await? {
            Reply::Published { seq: Some(seq), .. } => seq,
            Reply::Error { code, message, .. } => {
                bail!("the broker refused the publish: {code}: {message}")
            }
            other => bail!("unexpected reply from the broker: {}", other.to_json()),
        };
        writeln!(out, "{seq}")?;
        out.flush()?;
        let _closed = sink.close().await;
        return Ok(());
    }
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    // Line numbers of the publishes sent and not yet answered, oldest first: replies come
    // back in request order.
    let mut in_flight = std::collections::VecDeque::<u64>::new();
    let (mut line_no, mut stored, mut duplicates, mut failed) = (0u64, 0u64, 0u64, 0u64);
    let mut input_error = None;
    let mut eof = false;
    // A closed stdout loses the seqs, not the publishes: the run goes on.
    let mut stdout_open = true;
    // A progress line on a terminal; nothing extra when stderr is piped.
    let progress = indicatif::ProgressBar::new_spinner().with_style(
        indicatif::ProgressStyle::with_template("{spinner} {pos} published ({per_sec})")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_spinner()),
    );
    while !eof || !in_flight.is_empty() {
        tokio::select! {
            line = lines.next_line(), if !eof && (in_flight.len() as u64) < PIPELINE => {
                match line {
                    Ok(Some(line)) => {
                        line_no += 1;
                        if !line.trim().is_empty() {
                            sink.feed(publish_frame(&topic, line_no, &line, prefix)?).await?;
                            in_flight.push_back(line_no);
                        }
                    }
                    Ok(None) => eof = true,
                    Err(e) => {
                        // What was sent is still answered and printed before the error.
                        input_error = Some(anyhow!("cannot read stdin after line {line_no}: {e}"));
                        eof = true;
                    }
                }
                sink.flush().await?;
            }
            reply = next_reply(&mut stream), if !in_flight.is_empty() => {
                let line = in_flight.pop_front().unwrap_or_default();
                let reply = match reply {
                    Ok(reply) => reply,
                    Err(e) => {
                        progress.finish_and_clear();
                        if stdout_open {
                            let _flushed = out.flush();
                        }
                        let last = in_flight.back().copied().unwrap_or(line);
                        bail!(
                            "{e:#}; {stored} events were stored and printed; lines {line} to {last} \
                             were sent but not confirmed, so each may or may not be stored{}",
                            if prefix.is_none() { " (rerun with --msg-id-prefix to store each line once)" } else { "" }
                        )
                    }
                };
                match reply {
                    Reply::Published { seq: Some(seq), duplicate, .. } => {
                        stored += 1;
                        duplicates += u64::from(duplicate);
                        progress.inc(1);
                        if stdout_open {
                            stdout_open = write_seq(&mut out, seq, in_flight.is_empty())?;
                        }
                    }
                    Reply::Error { code, message, .. } => {
                        failed += 1;
                        if failed <= SHOWN_FAILURES {
                            progress.suspend(|| eprintln!("wharf: line {line} not stored: {code}: {message}"));
                        }
                    }
                    other => bail!("unexpected reply from the broker: {}", other.to_json()),
                }
            }
        }
    }
    progress.finish_and_clear();
    if stdout_open {
        write_seq_flush(&mut out)?;
    }
    let _closed = sink.close().await;
    if duplicates > 0 {
        eprintln!("wharf: {duplicates} lines were already stored (same msg_id); their first seq is printed");
    }
    if let Some(e) = input_error {
        return Err(e);
    }
    if failed > 0 {
        let hint = match prefix {
            Some(_) => {
                "rerun with the same --msg-id-prefix once fixed: stored lines are not stored again"
            }
            None => "--msg-id-prefix makes a rerun store each line once",
        };
        bail!(
            "{failed} of {} lines were not stored ({stored} were); {hint}",
            failed + stored
        )
    }
    Ok(())
}

/// Writes one seq; `false` once stdout is closed. Flushed when nothing else is in flight, so
/// that an interactive user sees each seq as it is confirmed.
fn write_seq(out: &mut impl Write, seq: u64, flush: bool) -> anyhow::Result<bool> {
    let written = writeln!(out, "{seq}").and_then(|()| if flush { out.flush() } else { Ok(()) });
    match written {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(false),
        Err(e) => Err(e).context("cannot write to stdout"),
    }
}

fn write_seq_flush(out: &mut impl Write) -> anyhow::Result<()> {
    match out.flush() {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => {
            Err(e).context("cannot write to stdout")
        }
        _ => Ok(()),
    }
}

pub async fn subscribe(
    conn: &Conn,
    pattern: &str,
    consumer: Option<String>,
    start: Option<Start>,
    count: Option<u64>,
) -> anyhow::Result<()> {
    let pattern = Pattern::parse(pattern).map_err(|e| anyhow!("invalid pattern: {e}"))?;
    let (mut sink, mut stream) = connect(conn).await?;
    let request = Request::Subscribe {
        id: Some(Id::Str("subscribe".into())),
        topics: vec![pattern],
        consumer: consumer.clone(),
        start,
        options: SubscribeOptions::default(),
    };
    sink.send(Message::text(request.to_json())).await?;
    match next_reply(&mut stream).await? {
        Reply::Subscribed { .. } => {}
        Reply::Error { code, message, .. } => {
            bail!("the broker refused the subscription: {code}: {message}")
        }
        other => bail!("unexpected reply from the broker: {}", other.to_json()),
    }
    // Events are printed through a buffer and acked in batches: each batch is flushed to
    // stdout before its ack goes out, so an event is acked only once it was printed.
    let mut out = Output::new();
    let mut closed = std::pin::pin!(stdout_closed());
    let mut printed = 0u64;
    let mut acks = Acks {
        consumer: consumer.clone(),
        ..Acks::default()
    };
    loop {
        let done = count.is_some_and(|n| printed >= n);
        if done && acks.is_idle() {
            break;
        }
        // Take what is already here without waiting; before waiting, settle what was printed.
        let msg = match stream.next().now_or_never() {
            Some(msg) => msg,
            None => {
                if !acks.settle(&mut out, &mut sink).await? {
                    break;
                }
                if done && acks.unconfirmed.is_empty() {
                    break;
                }
                tokio::select! {
                    msg = stream.next() => msg,
                    () = &mut closed => {
                        out.closed = true;
                        break;
                    }
                }
            }
        };
        let Some(reply) = decode(msg)? else { continue };
        match reply {
            Reply::Event(ev) => {
                if count.is_some_and(|n| printed >= n) {
                    continue;
                }
                let seq = ev.seq;
                let line = serde_json::to_string(&Reply::Event(ev))?;
                if !out.line(line.as_bytes())? {
                    break;
                }
                printed += 1;
                acks.printed(seq);
                let due = acks.batch.len() >= 256 || count.is_some_and(|n| printed >= n);
                if due && !acks.settle(&mut out, &mut sink).await? {
                    break;
                }
            }
            Reply::Ok { id: Some(id) } => {
                if let Some(n) = id.as_u64() {
                    acks.unconfirmed.remove(&n);
                }
            }
            Reply::Error { code, message, .. } => {
                bail!("the broker reported an error: {code}: {message}")
            }
            Reply::Unsubscribed { reason, .. } => {
                bail!("the broker ended the subscription: {reason}")
            }
            _ => {}
        }
    }
    if out.closed {
        // The reader went away (`| head`): a normal end. What it did not get is not acked;
        // the acks already sent are waited for, so that what it got is not delivered again.
        acks.batch.clear();
        let confirm = acks.confirm(&mut stream);
        let _in_time = tokio::time::timeout(ACK_CONFIRM_WAIT, confirm).await;
    }
    let _closed = sink.close().await;
    Ok(())
}

/// How long a subscriber whose stdout closed waits for its last acks to be confirmed.
const ACK_CONFIRM_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

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

/// Printed events waiting for their ack, and ack batches waiting for their `ok`.
#[derive(Default)]
struct Acks {
    /// The durable consumer; none for `tail` and ephemeral subscriptions.
    consumer: Option<String>,
    batch: Vec<u64>,
    unconfirmed: BTreeSet<u64>,
    next_id: u64,
}

impl Acks {
    fn printed(&mut self, seq: u64) {
        if self.consumer.is_some() {
            self.batch.push(seq);
        }
    }

    fn is_idle(&self) -> bool {
        self.batch.is_empty() && self.unconfirmed.is_empty()
    }

    /// Flushes what was printed, then acks it in one request; `false` when stdout is
    /// closed (nothing is acked then: it may not have reached the reader).
    async fn settle(
        &mut self,
        out: &mut Output,
        sink: &mut SplitSink<Ws, Message>,
    ) -> anyhow::Result<bool> {
        if !out.flush()? {
            return Ok(false);
        }
        let Some(name) = &self.consumer else {
            return Ok(true);
        };
        if self.batch.is_empty() {
            return Ok(true);
        }
        self.next_id += 1;
        let ack = Request::Ack {
            id: Some(Id::Uint(self.next_id)),
            consumer: name.clone(),
            seqs: std::mem::take(&mut self.batch),
        };
        sink.send(Message::text(ack.to_json())).await?;
        self.unconfirmed.insert(self.next_id);
        Ok(true)
    }

    /// Reads until every ack sent is confirmed (events that arrive meanwhile are dropped,
    /// unacked).
    async fn confirm(&mut self, stream: &mut SplitStream<Ws>) -> anyhow::Result<()> {
        while !self.unconfirmed.is_empty() {
            if let Some(Reply::Ok { id: Some(id) }) = decode(stream.next().await)? {
                if let Some(n) = id.as_u64() {
                    self.unconfirmed.remove(&n);
                }
            }
        }
        Ok(())
    }
}

/// A broker frame as a reply; `None` for control frames.
fn decode(
    msg: Option<Result<Message, tokio_tungstenite::tungstenite::Error>>,
) -> anyhow::Result<Option<Reply>> {
    match msg {
        None => bail!("the broker closed the connection"),
        Some(Err(e)) => Err(e).context("connection to the broker failed"),
        Some(Ok(Message::Text(text))) => serde_json::from_str(text.as_str())
            .map(Some)
            .with_context(|| format!("unexpected frame from the broker: {text}")),
        Some(Ok(Message::Close(frame))) => {
            let reason = frame.map(|f| f.reason.to_string()).unwrap_or_default();
            bail!("the broker closed the connection: {reason}")
        }
        Some(Ok(_)) => Ok(None),
    }
}

/// Sends one admin request and returns the reply (an error reply is an error).
async fn admin(conn: &Conn, request: serde_json::Value) -> anyhow::Result<Reply> {
    let (mut sink, mut stream) = connect(conn).await?;
    sink.send(Message::text(request.to_string())).await?;
    let reply = next_reply(&mut stream).await?;
    let _closed = sink.close().await;
    match reply {
        Reply::Error { code, message, .. } => bail!("the broker refused: {code}: {message}"),
        reply => Ok(reply),
    }
}

/// Prints rows as a table with aligned columns.
fn table(header: &[&str], rows: Vec<Vec<String>>) -> anyhow::Result<()> {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.len());
        }
    }
    let mut out = std::io::stdout().lock();
    let line = |cells: Vec<String>| {
        cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect::<Vec<_>>()
            .join("  ")
            .trim_end()
            .to_owned()
    };
    writeln!(
        out,
        "{}",
        line(header.iter().map(|h| h.to_string()).collect())
    )?;
    for row in rows {
        writeln!(out, "{}", line(row))?;
    }
    Ok(())
}

fn print_json(reply: &Reply) -> anyhow::Result<()> {
    println!("{}", reply.to_json());
    Ok(())
}

pub async fn stats(conn: &Conn, json: bool) -> anyhow::Result<()> {
    let reply = admin(conn, serde_json::json!({"op":"stats","id":1})).await?;
    if json {
        return print_json(&reply);
    }
    let Reply::Stats(s) = reply else {
        bail!("unexpected reply from the broker: {}", reply.to_json())
    };
    table(
        &["key", "value"],
        vec![
            vec!["version".into(), s.version],
            vec![
                "uptime".into(),
                format!("{:.1}s", s.uptime_ms as f64 / 1000.0),
            ],
            vec!["head seq".into(), s.head_seq.to_string()],
            vec!["first seq".into(), s.first_seq.to_string()],
            vec!["log bytes".into(), s.log_bytes.to_string()],
            vec!["segments".into(), s.segments.to_string()],
            vec!["state bytes".into(), s.state_bytes.to_string()],
            vec!["topics".into(), s.topics.to_string()],
            vec!["consumers".into(), s.consumers.to_string()],
            vec!["connections".into(), s.connections.to_string()],
        ],
    )
}

pub async fn topics(conn: &Conn, json: bool) -> anyhow::Result<()> {
    let reply = admin(conn, serde_json::json!({"op":"topics","id":1})).await?;
    if json {
        return print_json(&reply);
    }
    let Reply::Topics { topics, .. } = reply else {
        bail!("unexpected reply from the broker: {}", reply.to_json())
    };
    let rows = topics
        .into_iter()
        .map(|t| {
            vec![
                t.topic,
                t.events.to_string(),
                t.bytes.to_string(),
                t.last_seq.to_string(),
            ]
        })
        .collect();
    table(&["topic", "events", "bytes", "last seq"], rows)
}

fn consumer_row(c: &wharf_protocol::ConsumerInfo) -> Vec<String> {
    vec![
        c.consumer.clone(),
        c.topics.join(","),
        c.mode.clone(),
        c.ack_floor.to_string(),
        c.ack_pending.to_string(),
        c.lag.to_string(),
        c.redelivered.to_string(),
        c.dead_lettered.to_string(),
        c.attached.to_string(),
    ]
}

const CONSUMER_HEADER: [&str; 9] = [
    "consumer",
    "topics",
    "mode",
    "ack floor",
    "pending",
    "lag",
    "redelivered",
    "dead",
    "attached",
];

pub async fn consumers(conn: &Conn, json: bool) -> anyhow::Result<()> {
    let reply = admin(conn, serde_json::json!({"op":"consumers","id":1})).await?;
    if json {
        return print_json(&reply);
    }
    let Reply::Consumers { consumers, .. } = reply else {
        bail!("unexpected reply from the broker: {}", reply.to_json())
    };
    table(
        &CONSUMER_HEADER,
        consumers.iter().map(consumer_row).collect(),
    )
}

pub async fn consumer_info(conn: &Conn, name: &str, json: bool) -> anyhow::Result<()> {
    let reply = admin(
        conn,
        serde_json::json!({"op":"consumer_info","id":1,"consumer":name}),
    )
    .await?;
    if json {
        return print_json(&reply);
    }
    let Reply::ConsumerInfo(info) = reply else {
        bail!("unexpected reply from the broker: {}", reply.to_json())
    };
    table(&CONSUMER_HEADER, vec![consumer_row(&info)])
}

pub async fn consumer_delete(conn: &Conn, name: &str) -> anyhow::Result<()> {
    admin(
        conn,
        serde_json::json!({"op":"delete_consumer","id":1,"consumer":name}),
    )
    .await?;
    println!("deleted consumer {name}");
    Ok(())
}
