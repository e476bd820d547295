//! The client subcommands: they talk to a broker over the wire protocol only.

use std::collections::VecDeque;
use std::io::Write;

use anyhow::{anyhow, bail, Context};
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use serde_json::value::RawValue;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use wharf_protocol::{
    ErrorCode, Id, NewEvent, Pattern, Reply, Request, Start, SubscribeOptions, Topic,
};

pub(crate) type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

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
pub(crate) async fn connect(
    conn: &Conn,
) -> anyhow::Result<(SplitSink<Ws, Message>, SplitStream<Ws>)> {
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
    let mut input = BufReader::new(tokio::io::stdin());
    // Bytes, not `lines()`: a line that is not UTF-8 is one failed line, not the end of input.
    // `read_until` keeps a partial line in `buf` when the other branch wins the select.
    let mut buf = Vec::new();
    // Line numbers of the publishes sent and not yet answered, oldest first: replies come
    // back in request order.
    let mut in_flight = VecDeque::<u64>::new();
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
            read = input.read_until(b'\n', &mut buf), if !eof && (in_flight.len() as u64) < PIPELINE => {
                match read {
                    Ok(0) => eof = true,
                    Ok(_) => {
                        line_no += 1;
                        let line = buf.strip_suffix(b"\n").unwrap_or(&buf);
                        let line = line.strip_suffix(b"\r").unwrap_or(line);
                        match std::str::from_utf8(line) {
                            Ok(text) if text.trim().is_empty() => {}
                            Ok(text) => {
                                let frame = publish_frame(&topic, line_no, text, prefix)?;
                                if let Err(e) = sink.feed(frame).await {
                                    in_flight.push_back(line_no);
                                    let e = anyhow::Error::new(e).context("connection to the broker failed");
                                    return Err(lost(e, &in_flight, stored, prefix));
                                }
                                in_flight.push_back(line_no);
                            }
                            Err(_) => {
                                failed += 1;
                                if failed <= SHOWN_FAILURES {
                                    progress.suspend(|| eprintln!("wharf: line {line_no} not stored: it is not UTF-8"));
                                }
                            }
                        }
                        buf.clear();
                    }
                    Err(e) => {
                        // What was sent is still answered and printed before the error.
                        input_error = Some(anyhow!("cannot read stdin after line {line_no}: {e}"));
                        eof = true;
                    }
                }
                if let Err(e) = sink.flush().await {
                    let e = anyhow::Error::new(e).context("connection to the broker failed");
                    return Err(lost(e, &in_flight, stored, prefix));
                }
            }
            reply = next_reply(&mut stream), if !in_flight.is_empty() => {
                let reply = match reply {
                    Ok(reply) => reply,
                    Err(e) => {
                        progress.finish_and_clear();
                        if stdout_open {
                            let _flushed = out.flush();
                        }
                        return Err(lost(e, &in_flight, stored, prefix));
                    }
                };
                let line = in_flight.pop_front().unwrap_or_default();
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

/// The error for a connection lost mid-run: which lines may or may not be stored.
fn lost(
    e: anyhow::Error,
    in_flight: &VecDeque<u64>,
    stored: u64,
    prefix: Option<&str>,
) -> anyhow::Error {
    let (Some(first), Some(last)) = (in_flight.front(), in_flight.back()) else {
        return e.context(format!("{stored} events were stored and printed"));
    };
    let hint = match prefix {
        Some(_) => "rerun with the same --msg-id-prefix: stored lines are not stored again",
        None => "--msg-id-prefix makes a rerun store each line once",
    };
    anyhow!(
        "{}; {stored} events were stored and printed; lines {first} to {last} were sent but \
         not confirmed, so each may or may not be stored ({hint})",
        crate::one_line(&e)
    )
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

/// Every page of a `topics` or `consumers` listing, on one connection, following
/// `next_cursor` until the broker has no more.
async fn admin_pages(conn: &Conn, op: &str) -> anyhow::Result<Vec<Reply>> {
    let (mut sink, mut stream) = connect(conn).await?;
    let mut pages = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let mut request = serde_json::json!({"op": op, "id": pages.len() + 1, "limit": 1000});
        if let Some(cursor) = cursor.take() {
            request["cursor"] = cursor.into();
        }
        sink.send(Message::text(request.to_string())).await?;
        let reply = match next_reply(&mut stream).await? {
            Reply::Error { code, message, .. } => bail!("the broker refused: {code}: {message}"),
            reply => reply,
        };
        cursor = match &reply {
            Reply::Topics { next_cursor, .. } | Reply::Consumers { next_cursor, .. } => {
                next_cursor.clone()
            }
            other => bail!("unexpected reply from the broker: {}", other.to_json()),
        };
        pages.push(reply);
        if cursor.is_none() {
            break;
        }
    }
    let _closed = sink.close().await;
    Ok(pages)
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
    let topics: Vec<_> = admin_pages(conn, "topics")
        .await?
        .into_iter()
        .flat_map(|page| match page {
            Reply::Topics { topics, .. } => topics,
            _ => Vec::new(),
        })
        .collect();
    if json {
        return print_json(&Reply::Topics {
            id: None,
            topics,
            next_cursor: None,
        });
    }
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
    let consumers: Vec<_> = admin_pages(conn, "consumers")
        .await?
        .into_iter()
        .flat_map(|page| match page {
            Reply::Consumers { consumers, .. } => consumers,
            _ => Vec::new(),
        })
        .collect();
    if json {
        return print_json(&Reply::Consumers {
            id: None,
            consumers,
            next_cursor: None,
        });
    }
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

/// The answer to the request just sent on a connection that may also carry events.
async fn answer(stream: &mut SplitStream<Ws>) -> anyhow::Result<Reply> {
    loop {
        match next_reply(stream).await? {
            Reply::Event(_) => {}
            reply => return Ok(reply),
        }
    }
}

/// Sends `request` and returns its answer; an error reply is an error.
async fn ask(
    sink: &mut SplitSink<Ws, Message>,
    stream: &mut SplitStream<Ws>,
    request: Request,
) -> anyhow::Result<Reply> {
    sink.send(Message::text(request.to_json())).await?;
    match answer(stream).await? {
        Reply::Error { code, message, .. } => bail!("the broker refused: {code}: {message}"),
        reply => Ok(reply),
    }
}

/// Prints a consumer as `consumer info` does.
async fn show_consumer(
    sink: &mut SplitSink<Ws, Message>,
    stream: &mut SplitStream<Ws>,
    name: &str,
    json: bool,
) -> anyhow::Result<()> {
    let request = Request::ConsumerInfo {
        id: Some(Id::Uint(1)),
        consumer: name.to_owned(),
    };
    let reply = ask(sink, stream, request).await?;
    if json {
        return print_json(&reply);
    }
    let Reply::ConsumerInfo(info) = reply else {
        bail!("unexpected reply from the broker: {}", reply.to_json())
    };
    table(&CONSUMER_HEADER, vec![consumer_row(&info)])
}

/// Creates a durable consumer without consuming from it. The protocol creates consumers by
/// subscribing, so this subscribes from "new" (nothing to deliver), unsubscribes, and then
/// seeks to `start`: no event gets a delivery counted by the creation.
pub async fn consumer_add(
    conn: &Conn,
    name: &str,
    patterns: Vec<Pattern>,
    start: Start,
    options: SubscribeOptions,
    json: bool,
) -> anyhow::Result<()> {
    let (mut sink, mut stream) = connect(conn).await?;
    let exists = Request::ConsumerInfo {
        id: Some(Id::Uint(1)),
        consumer: name.to_owned(),
    };
    sink.send(Message::text(exists.to_json())).await?;
    match answer(&mut stream).await? {
        Reply::ConsumerInfo(info) => bail!(
            "consumer {name} already exists (topics {}); `wharf consumer seek` moves it, \
             `wharf consumer delete` removes it",
            info.topics.join(",")
        ),
        Reply::Error {
            code: ErrorCode::NotFound,
            ..
        } => {}
        Reply::Error { code, message, .. } => bail!("the broker refused: {code}: {message}"),
        other => bail!("unexpected reply from the broker: {}", other.to_json()),
    }
    let subscribe = Request::Subscribe {
        id: Some(Id::Uint(2)),
        topics: patterns,
        consumer: Some(name.to_owned()),
        start: Some(Start::New),
        options,
        presence: false,
        join_leave: false,
    };
    let Reply::Subscribed { sub, .. } = ask(&mut sink, &mut stream, subscribe).await? else {
        bail!("the broker did not confirm the subscription that creates the consumer")
    };
    let unsubscribe = Request::Unsubscribe {
        id: Some(Id::Uint(3)),
        sub,
    };
    ask(&mut sink, &mut stream, unsubscribe).await?;
    if start != Start::New {
        let seek = Request::Seek {
            id: Some(Id::Uint(4)),
            consumer: name.to_owned(),
            start,
        };
        ask(&mut sink, &mut stream, seek).await?;
    }
    show_consumer(&mut sink, &mut stream, name, json).await?;
    let _closed = sink.close().await;
    Ok(())
}

/// Moves a consumer to `start` and shows where it is now.
pub async fn consumer_seek(
    conn: &Conn,
    name: &str,
    start: Start,
    json: bool,
) -> anyhow::Result<()> {
    let (mut sink, mut stream) = connect(conn).await?;
    let seek = Request::Seek {
        id: Some(Id::Uint(1)),
        consumer: name.to_owned(),
        start,
    };
    ask(&mut sink, &mut stream, seek).await?;
    show_consumer(&mut sink, &mut stream, name, json).await?;
    let _closed = sink.close().await;
    Ok(())
}

/// How long `get` waits for the event it asked for.
const GET_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// The parts of an event frame `get` prints, with the payload as the publisher sent it.
#[derive(serde::Deserialize)]
struct StoredEvent<'a> {
    seq: u64,
    topic: String,
    published_at: String,
    #[serde(borrow)]
    payload: &'a RawValue,
}

/// One stored event by seq. The protocol has no op for it: this is an ephemeral subscription
/// to every topic (`>`) from `seq`, which takes the first event and ends.
pub async fn get(conn: &Conn, seq: u64, json: bool) -> anyhow::Result<()> {
    let (mut sink, mut stream) = connect(conn).await?;
    // The seq range tells a seq never stored from one removed by retention; a token without
    // admin rights cannot ask, and then an unknown seq shows as no event within GET_WAIT.
    sink.send(Message::text(Request::Stats { id: None }.to_json()))
        .await?;
    match answer(&mut stream).await? {
        Reply::Stats(stats) => {
            if seq == 0 || seq > stats.head_seq {
                bail!("no event with seq {seq}: the newest is {}", stats.head_seq)
            }
            if seq < stats.first_seq {
                bail!(
                    "seq {seq} was removed by retention: the oldest stored is {}",
                    stats.first_seq
                )
            }
        }
        Reply::Error {
            code: ErrorCode::Forbidden,
            ..
        } => {}
        Reply::Error { code, message, .. } => bail!("the broker refused: {code}: {message}"),
        other => bail!("unexpected reply from the broker: {}", other.to_json()),
    }
    let all = Pattern::parse(">").map_err(|e| anyhow!("{e}"))?;
    let subscribe = Request::Subscribe {
        id: Some(Id::Uint(1)),
        topics: vec![all],
        consumer: None,
        start: Some(Start::Seq(seq)),
        options: SubscribeOptions::default(),
        presence: false,
        join_leave: false,
    };
    ask(&mut sink, &mut stream, subscribe).await?;
    let text = tokio::time::timeout(GET_WAIT, async {
        loop {
            match stream.next().await {
                Some(Ok(Message::Text(text)))
                    if text.as_str().starts_with(r#"{"type":"event""#) =>
                {
                    return Ok(text);
                }
                Some(Ok(Message::Close(_))) | None => bail!("the broker closed the connection"),
                Some(Err(e)) => return Err(e).context("connection to the broker failed"),
                Some(Ok(_)) => {}
            }
        }
    })
    .await
    .map_err(|_| anyhow!("no event came for seq {seq} within {GET_WAIT:?}"))??;
    let _closed = sink.close().await;
    let event: StoredEvent = serde_json::from_str(text.as_str())
        .with_context(|| format!("unexpected frame from the broker: {}", text.as_str()))?;
    if event.seq != seq {
        bail!(
            "no event with seq {seq} is stored (the next is {})",
            event.seq
        )
    }
    let mut out = std::io::stdout().lock();
    if json {
        writeln!(
            out,
            r#"{{"seq":{},"topic":{},"published_at":{},"payload":{}}}"#,
            event.seq,
            serde_json::to_string(&event.topic)?,
            serde_json::to_string(&event.published_at)?,
            event.payload.get()
        )?;
    } else {
        writeln!(out, "seq           {}", event.seq)?;
        writeln!(out, "topic         {}", event.topic)?;
        writeln!(out, "published at  {}", event.published_at)?;
        writeln!(out, "payload       {}", event.payload.get())?;
    }
    Ok(())
}
