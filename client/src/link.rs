//! What passes between a client's handles and its driver task: the commands, the checked
//! subscribe the driver keeps ([`Spec`]), and what a subscription receives ([`Incoming`],
//! [`Delivery`], which settles through the driver without keeping the client alive).

use std::sync::Arc;
use std::time::Duration;

use serde_json::value::RawValue;
use tokio::sync::{mpsc, oneshot};
use wharf_protocol::{Pattern, Reply, Request, Start, SubscribeOptions};

use crate::Error;

/// Where a subscription's first outcome goes: its local id and first `start_seq`.
pub(crate) type Subscribed = oneshot::Sender<Result<(u64, Option<u64>), Error>>;

/// What a [`crate::Client`] asks of its driver.
pub(crate) enum Command {
    Request {
        request: Request,
        reply: oneshot::Sender<Result<String, Error>>,
    },
    Hello {
        request: Request,
        reply: oneshot::Sender<Result<(), Error>>,
    },
    Subscribe {
        spec: Spec,
        events: mpsc::UnboundedSender<Incoming>,
        reply: Subscribed,
    },
    /// `reply`, when given, learns when the broker has ended it.
    Unsubscribe {
        local: u64,
        reply: Option<oneshot::Sender<Result<String, Error>>>,
    },
    /// A fresh token for this connection (nobody waits for the reply).
    Auth(Request),
    Close,
}

/// A checked [`Subscribe`], as the driver keeps it to subscribe again after a reconnect.
#[derive(Debug, Clone)]
pub(crate) struct Spec {
    pub patterns: Vec<Pattern>,
    pub consumer: Option<String>,
    pub start: Option<Start>,
    pub options: SubscribeOptions,
    pub presence: bool,
    pub join_leave: bool,
    pub auto_ack: bool,
}

impl Spec {
    /// The subscribe request; an ephemeral subscription resumes at `resume` when known.
    pub(crate) fn request(&self, resume: Option<u64>) -> Request {
        let start = match (&self.consumer, resume) {
            (None, Some(seq)) => Some(Start::Seq(seq)),
            _ => self.start,
        };
        Request::Subscribe {
            id: None,
            topics: self.patterns.clone(),
            consumer: self.consumer.clone(),
            start,
            options: self.options.clone(),
            presence: self.presence,
            join_leave: self.join_leave,
        }
    }
}

/// One event delivered to a subscription.
#[derive(Debug)]
pub struct Delivery {
    pub seq: u64,
    pub topic: String,
    /// The publisher's JSON, byte for byte.
    pub payload: Box<RawValue>,
    /// RFC 3339, milliseconds.
    pub published_at: String,
    /// 1 on first delivery; more on redeliveries.
    pub delivery: u32,
    /// The durable consumer; `None` for an ephemeral subscription.
    pub consumer: Option<String>,
    /// The broker's id of the subscription on the connection it came through.
    pub(crate) sub: Arc<str>,
    /// The client's driver, without keeping the client alive.
    pub(crate) link: mpsc::WeakUnboundedSender<Command>,
}

impl Delivery {
    /// The event as the broker's `event` frame (docs/PROTOCOL.md), field for field in the
    /// broker's order, the payload byte for byte: to print, log or forward the event as it
    /// came (`wharf subscribe` prints this). Made when asked, so deliveries that are never
    /// shown cost nothing for it.
    ///
    /// ```no_run
    /// # fn demo(d: wharf_client::Delivery) {
    /// // {"type":"event","sub":"s1","consumer":"billing","seq":7,"topic":"orders.created",
    /// //  "payload":{"id":7},"published_at":"2026-11-29T08:00:00.000Z","delivery":1}
    /// println!("{}", d.to_json());
    /// # }
    /// ```
    pub fn to_json(&self) -> String {
        let payload = self.payload.get();
        let mut out = String::with_capacity(120 + payload.len() + self.topic.len());
        out.push_str(r#"{"type":"event","sub":"#);
        push_quoted(&mut out, &self.sub);
        if let Some(consumer) = &self.consumer {
            out.push_str(r#","consumer":"#);
            push_quoted(&mut out, consumer);
        }
        out.push_str(r#","seq":"#);
        out.push_str(&self.seq.to_string());
        out.push_str(r#","topic":"#);
        push_quoted(&mut out, &self.topic);
        out.push_str(r#","payload":"#);
        out.push_str(payload);
        out.push_str(r#","published_at":"#);
        push_quoted(&mut out, &self.published_at);
        out.push_str(r#","delivery":"#);
        out.push_str(&self.delivery.to_string());
        out.push('}');
        out
    }

    async fn settle(&self, request: impl FnOnce(String) -> Request) -> Result<(), Error> {
        let Some(consumer) = &self.consumer else {
            return Err(Error::Invalid(
                "an ephemeral subscription's events are not settled".into(),
            ));
        };
        let text = request_through(&self.link, request(consumer.clone())).await?;
        match serde_json::from_str::<Reply>(&text) {
            Ok(Reply::Ok { .. }) => Ok(()),
            _ => Err(Error::Protocol(format!("unexpected reply: {text}"))),
        }
    }

    /// Settles the event for good; returns once the ack is durable.
    ///
    /// ```no_run
    /// # async fn demo(d: wharf_client::Delivery) -> Result<(), wharf_client::Error> {
    /// d.ack().await?;
    /// # Ok(())
    /// # }
    /// ```
    pub async fn ack(&self) -> Result<(), Error> {
        let seqs = vec![self.seq];
        self.settle(|consumer| Request::Ack {
            id: None,
            consumer,
            seqs,
        })
        .await
    }

    /// Gives the event back: delivered again after `delay`.
    ///
    /// ```no_run
    /// # async fn demo(d: wharf_client::Delivery) -> Result<(), wharf_client::Error> {
    /// d.nack(std::time::Duration::from_secs(1)).await?;
    /// # Ok(())
    /// # }
    /// ```
    pub async fn nack(&self, delay: Duration) -> Result<(), Error> {
        let seqs = vec![self.seq];
        let delay_ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX);
        self.settle(|consumer| Request::Nack {
            id: None,
            consumer,
            seqs,
            delay_ms,
        })
        .await
    }

    /// Settles the event as given up: never delivered again.
    ///
    /// ```no_run
    /// # async fn demo(d: wharf_client::Delivery) -> Result<(), wharf_client::Error> {
    /// d.term().await?;
    /// # Ok(())
    /// # }
    /// ```
    pub async fn term(&self) -> Result<(), Error> {
        let seqs = vec![self.seq];
        self.settle(|consumer| Request::Term {
            id: None,
            consumer,
            seqs,
        })
        .await
    }

    /// Starts the event's ack wait over (work that takes longer).
    ///
    /// ```no_run
    /// # async fn demo(d: wharf_client::Delivery) -> Result<(), wharf_client::Error> {
    /// d.progress().await?;
    /// # Ok(())
    /// # }
    /// ```
    pub async fn progress(&self) -> Result<(), Error> {
        let seqs = vec![self.seq];
        self.settle(|consumer| Request::Progress {
            id: None,
            consumer,
            seqs,
        })
        .await
    }
}

/// What a subscription receives.
#[derive(Debug)]
pub enum Incoming {
    Event(Delivery),
    /// A notice for this subscription: `gap`, `lost`, `join`, `leave`, or `unsubscribed`
    /// (the broker ended it: taken over, deleted, forbidden; nothing more comes).
    Notice(Reply),
}

/// Sends `request` through the driver behind `link` and waits for its reply's text.
pub(crate) async fn request_through(
    link: &mpsc::WeakUnboundedSender<Command>,
    request: Request,
) -> Result<String, Error> {
    let commands = link.upgrade().ok_or(Error::Closed)?;
    let (reply, answer) = oneshot::channel();
    commands
        .send(Command::Request { request, reply })
        .map_err(|_| Error::Closed)?;
    drop(commands);
    answer.await.map_err(|_| Error::Closed)?
}

/// Appends `s` as a JSON string (as the broker quotes: serde_json's escapes).
fn push_quoted(out: &mut String, s: &str) {
    match serde_json::to_string(s) {
        Ok(quoted) => out.push_str(&quoted),
        // A str always serializes; keep the frame JSON if it somehow did not.
        Err(_) => out.push_str("null"),
    }
}
