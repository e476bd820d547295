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

/// Connects; `WHARF_TOKEN`, when set, goes along as `Authorization: Bearer`.
async fn connect(url: &str) -> anyhow::Result<(SplitSink<Ws, Message>, SplitStream<Ws>)> {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let mut request = url
        .into_client_request()
        .map_err(|e| anyhow!("invalid url {url}: {e}"))?;
    if let Ok(token) = std::env::var("WHARF_TOKEN") {
        let value = format!("Bearer {token}")
            .parse()
            .map_err(|_| anyhow!("WHARF_TOKEN holds characters a header cannot carry"))?;
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

fn publish_frame(topic: &Topic, n: u64, text: &str) -> anyhow::Result<Message> {
    let request = Request::Publish {
        id: Some(Id::Uint(n)),
        event: NewEvent {
            topic: topic.clone(),
            payload: payload_of(text)?,
            msg_id: None,
        },
    };
    Ok(Message::text(request.to_json()))
}

pub async fn publish(url: &str, topic: &str, payload: Option<String>) -> anyhow::Result<()> {
    let topic = Topic::parse(topic).map_err(|e| anyhow!("invalid topic: {e}"))?;
    let (mut sink, mut stream) = connect(url).await?;
    let mut stdout = std::io::stdout().lock();
    if let Some(text) = payload {
        sink.send(publish_frame(&topic, 1, &text)?).await?;
        let seq = expect_published(next_reply(&mut stream).await?)?;
        writeln!(stdout, "{seq}")?;
        let _closed = sink.close().await;
        return Ok(());
    }
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    let (mut sent, mut confirmed, mut eof) = (0u64, 0u64, false);
    // A progress line on a terminal; nothing extra when stderr is piped.
    let progress = indicatif::ProgressBar::new_spinner().with_style(
        indicatif::ProgressStyle::with_template("{spinner} {pos} published ({per_sec})")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_spinner()),
    );
    while !eof || confirmed < sent {
        tokio::select! {
            line = lines.next_line(), if !eof && sent - confirmed < PIPELINE => {
                match line.context("cannot read stdin")? {
                    Some(line) if line.trim().is_empty() => {}
                    Some(line) => {
                        sent += 1;
                        sink.feed(publish_frame(&topic, sent, &line)?).await?;
                    }
                    None => eof = true,
                }
                sink.flush().await?;
            }
            reply = next_reply(&mut stream), if confirmed < sent => {
                let seq = expect_published(reply?)?;
                confirmed += 1;
                progress.inc(1);
                writeln!(stdout, "{seq}")?;
            }
        }
    }
    progress.finish_and_clear();
    let _closed = sink.close().await;
    Ok(())
}

fn expect_published(reply: Reply) -> anyhow::Result<u64> {
    match reply {
        Reply::Published { seq: Some(seq), .. } => Ok(seq),
        Reply::Error { code, message, .. } => {
            bail!("the broker refused the publish: {code}: {message}")
        }
        other => bail!("unexpected reply from the broker: {}", other.to_json()),
    }
}

pub async fn subscribe(
    url: &str,
    pattern: &str,
    consumer: Option<String>,
    start: Option<Start>,
    count: Option<u64>,
) -> anyhow::Result<()> {
    let pattern = Pattern::parse(pattern).map_err(|e| anyhow!("invalid pattern: {e}"))?;
    let (mut sink, mut stream) = connect(url).await?;
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
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
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
                acks.settle(&mut out, &mut sink).await?;
                if done && acks.unconfirmed.is_empty() {
                    break;
                }
                stream.next().await
            }
        };
        let Some(reply) = decode(msg)? else { continue };
        match reply {
            Reply::Event(ev) => {
                if count.is_some_and(|n| printed >= n) {
                    continue;
                }
                let seq = ev.seq;
                serde_json::to_writer(&mut out, &Reply::Event(ev))?;
                writeln!(out)?;
                printed += 1;
                acks.printed(seq);
                if acks.batch.len() >= 256 || count.is_some_and(|n| printed >= n) {
                    acks.settle(&mut out, &mut sink).await?;
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
    out.flush()?;
    let _closed = sink.close().await;
    Ok(())
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

    /// Flushes what was printed, then acks it in one request.
    async fn settle(
        &mut self,
        out: &mut impl Write,
        sink: &mut SplitSink<Ws, Message>,
    ) -> anyhow::Result<()> {
        out.flush()?;
        let Some(name) = &self.consumer else {
            return Ok(());
        };
        if self.batch.is_empty() {
            return Ok(());
        }
        self.next_id += 1;
        let ack = Request::Ack {
            id: Some(Id::Uint(self.next_id)),
            consumer: name.clone(),
            seqs: std::mem::take(&mut self.batch),
        };
        sink.send(Message::text(ack.to_json())).await?;
        self.unconfirmed.insert(self.next_id);
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
async fn admin(url: &str, request: serde_json::Value) -> anyhow::Result<Reply> {
    let (mut sink, mut stream) = connect(url).await?;
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
async fn admin_pages(url: &str, op: &str) -> anyhow::Result<Vec<Reply>> {
    let (mut sink, mut stream) = connect(url).await?;
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

pub async fn stats(url: &str, json: bool) -> anyhow::Result<()> {
    let reply = admin(url, serde_json::json!({"op":"stats","id":1})).await?;
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

pub async fn topics(url: &str, json: bool) -> anyhow::Result<()> {
    let topics: Vec<_> = admin_pages(url, "topics")
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

pub async fn consumers(url: &str, json: bool) -> anyhow::Result<()> {
    let consumers: Vec<_> = admin_pages(url, "consumers")
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

pub async fn consumer_info(url: &str, name: &str, json: bool) -> anyhow::Result<()> {
    let reply = admin(
        url,
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

pub async fn consumer_delete(url: &str, name: &str) -> anyhow::Result<()> {
    admin(
        url,
        serde_json::json!({"op":"delete_consumer","id":1,"consumer":name}),
    )
    .await?;
    println!("deleted consumer {name}");
    Ok(())
}
