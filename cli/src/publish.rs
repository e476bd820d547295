//! `wharf publish`: PAYLOAD, or each non-blank stdin line, through `wharf_client`, pipelined
//! (up to [`PIPELINE`] publishes in flight; the client hands each to the connection as it is
//! made, so they are stored in input order).

use std::collections::VecDeque;
use std::io::Write;

use anyhow::{anyhow, bail, Context};
use futures_util::stream::FuturesOrdered;
use futures_util::StreamExt;
use serde_json::value::RawValue;
use tokio::io::{AsyncBufReadExt, BufReader};
use wharf_client::{Client, Error};
use wharf_protocol::{NewEvent, Reply, Request, Topic};

use crate::conn::{refused, Conn};

/// Publishes in flight at once when reading stdin.
const PIPELINE: usize = 1024;

/// Per-line errors shown before the rest are only counted.
const SHOWN_FAILURES: u64 = 10;

fn payload_of(text: &str) -> anyhow::Result<Box<RawValue>> {
    let json = match serde_json::from_str::<Box<RawValue>>(text) {
        Ok(raw) => return Ok(raw),
        Err(_) => serde_json::to_string(text)?,
    };
    Ok(RawValue::from_string(json)?)
}

/// Line `line`'s publish. A msg_id only with `--msg-id-prefix`: without one, the client
/// would give each its own, and every line would take a place in the broker's dedup table
/// (bounded by dedup_max_entries) for nothing, since this command never sends a line twice.
fn publish_request(
    topic: &Topic,
    line: u64,
    text: &str,
    prefix: Option<&str>,
) -> anyhow::Result<Request> {
    Ok(Request::Publish {
        id: None,
        event: NewEvent {
            topic: topic.clone(),
            payload: payload_of(text)?,
            msg_id: prefix.map(|p| format!("{p}-{line}")),
        },
    })
}

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
    let client = conn.client().await?;
    if let Some(text) = payload {
        let request = publish_request(&topic, 1, &text, prefix)?;
        let seq = match client.request(request).await {
            Ok(Reply::Published { seq: Some(seq), .. }) => seq,
            Ok(other) => bail!("unexpected reply from the broker: {}", other.to_json()),
            Err(e) => return Err(refused("the publish", e)),
        };
        let mut out = std::io::stdout().lock();
        writeln!(out, "{seq}")?;
        out.flush()?;
        return Ok(());
    }
    lines(&client, &topic, prefix).await
}

async fn lines(client: &Client, topic: &Topic, prefix: Option<&str>) -> anyhow::Result<()> {
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    let mut input = BufReader::new(tokio::io::stdin());
    // Bytes, not `lines()`: a line that is not UTF-8 is one failed line, not the end of input.
    // `read_until` keeps a partial line in `buf` when the other branch wins the select.
    let mut buf = Vec::new();
    // The publishes sent and not yet answered, oldest first, and their line numbers: the
    // replies come back in request order.
    let mut replies = FuturesOrdered::new();
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
            read = input.read_until(b'\n', &mut buf), if !eof && in_flight.len() < PIPELINE => {
                match read {
                    Ok(0) => eof = true,
                    Ok(_) => {
                        line_no += 1;
                        let line = buf.strip_suffix(b"\n").unwrap_or(&buf);
                        let line = line.strip_suffix(b"\r").unwrap_or(line);
                        match std::str::from_utf8(line) {
                            Ok(text) if text.trim().is_empty() => {}
                            Ok(text) => {
                                let request = publish_request(topic, line_no, text, prefix)?;
                                replies.push_back(client.request(request));
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
            }
            Some(reply) = replies.next(), if !in_flight.is_empty() => {
                match reply {
                    Ok(Reply::Published { seq: Some(seq), duplicate, .. }) => {
                        in_flight.pop_front();
                        stored += 1;
                        duplicates += u64::from(duplicate);
                        progress.inc(1);
                        if stdout_open {
                            stdout_open = write_seq(&mut out, seq, in_flight.is_empty())?;
                        }
                    }
                    Err(Error::Refused { code, message }) => {
                        let line = in_flight.pop_front().unwrap_or_default();
                        failed += 1;
                        if failed <= SHOWN_FAILURES {
                            progress.suspend(|| eprintln!("wharf: line {line} not stored: {code}: {message}"));
                        }
                    }
                    Err(e) => {
                        progress.finish_and_clear();
                        if stdout_open {
                            let _flushed = out.flush();
                        }
                        return Err(lost(e.into(), &in_flight, stored, prefix));
                    }
                    Ok(other) => bail!("unexpected reply from the broker: {}", other.to_json()),
                }
            }
        }
    }
    progress.finish_and_clear();
    if stdout_open {
        write_seq_flush(&mut out)?;
    }
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
