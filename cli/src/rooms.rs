//! `wharf history` and `wharf last`: one request each, the events printed as they were
//! stored (payloads byte for byte).

use std::io::Write;

use anyhow::{bail, Context};
use futures_util::{SinkExt, StreamExt};
use serde::Deserialize;
use serde_json::value::RawValue;
use tokio_tungstenite::tungstenite::Message;
use wharf_protocol::{Id, Pattern, Request};

use crate::client::{connect, Conn};

/// How the events are printed.
#[derive(Clone, Copy)]
pub enum Output {
    /// `seq  published_at  topic  payload`, one line each.
    Lines,
    /// `{seq, topic, published_at, payload}`, one JSON object a line.
    Json,
    /// The payload alone, one a line.
    Raw,
}

#[derive(Deserialize)]
struct Page<'a> {
    #[serde(rename = "type")]
    kind: &'a str,
    #[serde(default, borrow)]
    events: Vec<Stored<'a>>,
    #[serde(default)]
    more: bool,
    #[serde(default)]
    code: Option<&'a str>,
    #[serde(default)]
    message: Option<String>,
}

#[derive(Deserialize)]
struct Stored<'a> {
    seq: u64,
    topic: &'a str,
    published_at: &'a str,
    #[serde(borrow)]
    payload: &'a RawValue,
}

/// The page a `history` or `last` request gets, printed.
async fn print_page(
    conn: &Conn,
    request: Request,
    forwards: bool,
    output: Output,
) -> anyhow::Result<()> {
    let (mut sink, mut stream) = connect(conn).await?;
    sink.send(Message::text(request.to_json())).await?;
    let text = loop {
        match stream.next().await {
            Some(Ok(Message::Text(text))) => break text,
            Some(Ok(Message::Close(_))) | None => bail!("the broker closed the connection"),
            Some(Err(e)) => return Err(e).context("connection to the broker failed"),
            Some(Ok(_)) => {}
        }
    };
    let _closed = sink.close().await;
    let page: Page = serde_json::from_str(text.as_str())
        .with_context(|| format!("unexpected reply from the broker: {}", text.as_str()))?;
    if page.kind == "error" {
        bail!(
            "the broker refused: {}: {}",
            page.code.unwrap_or("error"),
            page.message.unwrap_or_default()
        )
    }
    let mut out = std::io::stdout().lock();
    for e in &page.events {
        match output {
            Output::Lines => writeln!(
                out,
                "{}  {}  {}  {}",
                e.seq,
                e.published_at,
                e.topic,
                e.payload.get()
            )?,
            Output::Json => writeln!(
                out,
                r#"{{"seq":{},"topic":{},"published_at":{},"payload":{}}}"#,
                e.seq,
                serde_json::to_string(e.topic)?,
                serde_json::to_string(e.published_at)?,
                e.payload.get()
            )?,
            Output::Raw => writeln!(out, "{}", e.payload.get())?,
        }
    }
    out.flush()?;
    if page.more && matches!(output, Output::Lines) {
        match (page.kind, forwards, page.events.first(), page.events.last()) {
            ("history", false, Some(oldest), _) => {
                eprintln!("(older events: --before {})", oldest.seq)
            }
            ("history", true, _, Some(newest)) => {
                eprintln!("(newer events: --after {})", newest.seq)
            }
            _ => eprintln!("(more match: raise --limit)"),
        }
    }
    Ok(())
}

pub async fn history(
    conn: &Conn,
    pattern: Pattern,
    limit: Option<u32>,
    (before, after): (Option<u64>, Option<u64>),
    output: Output,
) -> anyhow::Result<()> {
    let request = Request::History {
        id: Some(Id::Uint(1)),
        pattern,
        limit,
        before,
        after,
    };
    print_page(conn, request, after.is_some(), output).await
}

pub async fn last(
    conn: &Conn,
    pattern: Pattern,
    limit: Option<u32>,
    output: Output,
) -> anyhow::Result<()> {
    let request = Request::Last {
        id: Some(Id::Uint(1)),
        pattern,
        limit,
    };
    print_page(conn, request, false, output).await
}
