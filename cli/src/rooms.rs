//! `wharf history` and `wharf last`: one request each, the events printed as they were
//! stored (payloads byte for byte).

use std::io::Write;

use wharf_client::{Page, Paging};
use wharf_protocol::Pattern;

use crate::conn::Conn;

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

/// Which request a page answers, for the hint about the next one.
#[derive(Clone, Copy, PartialEq)]
enum Kind {
    History { forwards: bool },
    Last,
}

/// A `history` or `last` page, printed.
fn print_page(page: &Page, kind: Kind, output: Output) -> anyhow::Result<()> {
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
                serde_json::to_string(&e.topic)?,
                serde_json::to_string(&e.published_at)?,
                e.payload.get()
            )?,
            Output::Raw => writeln!(out, "{}", e.payload.get())?,
        }
    }
    out.flush()?;
    if page.more && matches!(output, Output::Lines) {
        match (kind, page.events.first(), page.events.last()) {
            (Kind::History { forwards: false }, Some(oldest), _) => {
                eprintln!("(older events: --before {})", oldest.seq)
            }
            (Kind::History { forwards: true }, _, Some(newest)) => {
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
    let from = match (before, after) {
        (Some(seq), _) => Paging::Before(seq),
        (None, Some(seq)) => Paging::After(seq),
        (None, None) => Paging::Newest,
    };
    let client = conn.client().await?;
    let page = client.history(pattern.as_str(), limit, from).await?;
    let forwards = after.is_some();
    print_page(&page, Kind::History { forwards }, output)
}

pub async fn last(
    conn: &Conn,
    pattern: Pattern,
    limit: Option<u32>,
    output: Output,
) -> anyhow::Result<()> {
    let client = conn.client().await?;
    let page = client.last(pattern.as_str(), limit).await?;
    print_page(&page, Kind::Last, output)
}
