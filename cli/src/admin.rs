//! The operator's commands: `stats`, `topics`, `consumers`, `consumer info|add|seek|delete`
//! and `get`, each a few requests through `wharf_client`, printed as a table or (`--json`)
//! as the broker's reply.

use std::io::Write;
use std::time::Duration;

use anyhow::{anyhow, bail};
use futures_util::StreamExt;
use wharf_client::{Client, Error, Incoming, Subscribe};
use wharf_protocol::{ErrorCode, Id, Pattern, Reply, Request, Start, SubscribeOptions};

use crate::conn::Conn;

/// Sends one request and returns the reply (a refusal is an error).
async fn ask(client: &Client, request: Request) -> anyhow::Result<Reply> {
    Ok(client.request(request).await?)
}

/// The `items` of every page of a `topics` or `consumers` listing, following
/// `next_cursor` until the broker has no more.
async fn pages<T>(
    client: &Client,
    request: impl Fn(wharf_protocol::Page) -> Request,
    items: impl Fn(Reply) -> Vec<T>,
) -> anyhow::Result<Vec<T>> {
    let mut all = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let page = wharf_protocol::Page {
            limit: Some(1000),
            cursor: cursor.take(),
        };
        let reply = ask(client, request(page)).await?;
        cursor = match &reply {
            Reply::Topics { next_cursor, .. } | Reply::Consumers { next_cursor, .. } => {
                next_cursor.clone()
            }
            other => bail!("unexpected reply from the broker: {}", other.to_json()),
        };
        all.extend(items(reply));
        if cursor.is_none() {
            return Ok(all);
        }
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

/// Prints the broker's reply. Its `id` is the one the command always printed (1), not the
/// one the client happened to give the request.
fn print_json(mut reply: Reply) -> anyhow::Result<()> {
    match &mut reply {
        Reply::Stats(stats) => stats.id = Some(Id::Uint(1)),
        Reply::ConsumerInfo(info) => info.id = Some(Id::Uint(1)),
        _ => {}
    }
    println!("{}", reply.to_json());
    Ok(())
}

pub async fn stats(conn: &Conn, json: bool) -> anyhow::Result<()> {
    let client = conn.client().await?;
    let reply = ask(&client, Request::Stats { id: None }).await?;
    if json {
        return print_json(reply);
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
    let client = conn.client().await?;
    let topics = pages(
        &client,
        |page| Request::Topics { id: None, page },
        |reply| match reply {
            Reply::Topics { topics, .. } => topics,
            _ => Vec::new(),
        },
    )
    .await?;
    if json {
        return print_json(Reply::Topics {
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
    let client = conn.client().await?;
    let consumers = pages(
        &client,
        |page| Request::Consumers { id: None, page },
        |reply| match reply {
            Reply::Consumers { consumers, .. } => consumers,
            _ => Vec::new(),
        },
    )
    .await?;
    if json {
        return print_json(Reply::Consumers {
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

/// Prints a consumer as `consumer info` does.
async fn show_consumer(client: &Client, name: &str, json: bool) -> anyhow::Result<()> {
    let request = Request::ConsumerInfo {
        id: None,
        consumer: name.to_owned(),
    };
    let reply = ask(client, request).await?;
    if json {
        return print_json(reply);
    }
    let Reply::ConsumerInfo(info) = reply else {
        bail!("unexpected reply from the broker: {}", reply.to_json())
    };
    table(&CONSUMER_HEADER, vec![consumer_row(&info)])
}

pub async fn consumer_info(conn: &Conn, name: &str, json: bool) -> anyhow::Result<()> {
    let client = conn.client().await?;
    show_consumer(&client, name, json).await
}

pub async fn consumer_delete(conn: &Conn, name: &str) -> anyhow::Result<()> {
    let client = conn.client().await?;
    let request = Request::DeleteConsumer {
        id: None,
        consumer: name.to_owned(),
    };
    ask(&client, request).await?;
    println!("deleted consumer {name}");
    Ok(())
}

/// Creates a durable consumer without consuming from it. The protocol creates consumers by
/// subscribing, so this subscribes from "new" (nothing to deliver), unsubscribes (waiting
/// for the broker to have done it), and then seeks to `start`: no event gets a delivery
/// counted by the creation.
pub async fn consumer_add(
    conn: &Conn,
    name: &str,
    patterns: Vec<Pattern>,
    start: Start,
    options: SubscribeOptions,
    json: bool,
) -> anyhow::Result<()> {
    let client = conn.client().await?;
    let exists = Request::ConsumerInfo {
        id: None,
        consumer: name.to_owned(),
    };
    match client.request(exists).await {
        Ok(Reply::ConsumerInfo(info)) => bail!(
            "consumer {name} already exists (topics {}); `wharf consumer seek` moves it, \
             `wharf consumer delete` removes it",
            info.topics.join(",")
        ),
        Err(Error::Refused {
            code: ErrorCode::NotFound,
            ..
        }) => {}
        Err(e) => return Err(e.into()),
        Ok(other) => bail!("unexpected reply from the broker: {}", other.to_json()),
    }
    let subscribe = Subscribe::durable(name, patterns.iter().map(Pattern::as_str))
        .start(Start::New)
        .options(options);
    let subscription = client.subscribe(subscribe).await.map_err(|e| match e {
        e @ Error::Refused { .. } => anyhow::Error::new(e),
        e => anyhow::Error::new(e)
            .context("the broker did not confirm the subscription that creates the consumer"),
    })?;
    subscription.unsubscribe().await?;
    if start != Start::New {
        let seek = Request::Seek {
            id: None,
            consumer: name.to_owned(),
            start,
        };
        ask(&client, seek).await?;
    }
    show_consumer(&client, name, json).await
}

/// Moves a consumer to `start` and shows where it is now.
pub async fn consumer_seek(
    conn: &Conn,
    name: &str,
    start: Start,
    json: bool,
) -> anyhow::Result<()> {
    let client = conn.client().await?;
    let seek = Request::Seek {
        id: None,
        consumer: name.to_owned(),
        start,
    };
    ask(&client, seek).await?;
    show_consumer(&client, name, json).await
}

/// How long `get` waits for the event it asked for.
const GET_WAIT: Duration = Duration::from_secs(10);

/// One stored event by seq. The protocol has no op for it: this is an ephemeral subscription
/// to every topic (`>`) from `seq`, which takes the first event and ends.
pub async fn get(conn: &Conn, seq: u64, json: bool) -> anyhow::Result<()> {
    let client = conn.client().await?;
    // The seq range tells a seq never stored from one removed by retention; a token without
    // admin rights cannot ask, and then an unknown seq shows as no event within GET_WAIT.
    match client.request(Request::Stats { id: None }).await {
        Ok(Reply::Stats(stats)) => {
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
        Err(Error::Refused {
            code: ErrorCode::Forbidden,
            ..
        }) => {}
        Err(e) => return Err(e.into()),
        Ok(other) => bail!("unexpected reply from the broker: {}", other.to_json()),
    }
    let mut everything = client
        .subscribe(Subscribe::ephemeral([">"]).start(Start::Seq(seq)))
        .await?;
    let event = tokio::time::timeout(GET_WAIT, async {
        loop {
            match everything.next().await {
                Some(Incoming::Event(event)) => return Ok(event),
                Some(Incoming::Notice(Reply::Error { code, message, .. })) => {
                    bail!("the broker refused: {code}: {message}")
                }
                Some(Incoming::Notice(_)) => {}
                None => bail!("the broker closed the connection"),
            }
        }
    })
    .await
    .map_err(|_| anyhow!("no event came for seq {seq} within {GET_WAIT:?}"))??;
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
