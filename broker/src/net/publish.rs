//! `POST /v1/publish/{topic}` (the body is the payload) and `POST /v1/publish` (a JSON array
//! of `{topic, payload, msg_id}`, stored all or none), for curl, webhooks and cron jobs. The
//! same checks as a WebSocket publish (token rights, msg_id size, JSON depth), then the same
//! backend call; the answer comes once the events are durable.

use std::sync::Arc;

use http_body_util::BodyExt;
use hyper::StatusCode;
use wharf_protocol::{now_ms, Topic};

use crate::auth::Principal;
use crate::backend::{BackendError, NewEvent, Published, Stored};
use crate::context::Context;
use crate::net::answer::{json_error, reply, Answer};

/// What a publish request said besides its body.
pub(super) struct PublishRequest {
    /// `/v1/publish/{topic}`; `None` for a batch (`/v1/publish`).
    pub topic: Option<String>,
    pub bearer: Option<String>,
    pub json: bool,
    pub length: Option<usize>,
    /// The `Idempotency-Key` header: the event's msg_id, so a retried webhook is stored once.
    pub idempotency_key: Option<String>,
}

/// One event of a batch posted to `/v1/publish`.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct BatchEvent {
    topic: String,
    payload: Box<serde_json::value::RawValue>,
    #[serde(default)]
    msg_id: Option<String>,
}

/// Why a publish is refused before it reaches the backend.
struct Refusal {
    status: StatusCode,
    code: &'static str,
    message: String,
}

impl Refusal {
    fn new(status: StatusCode, code: &'static str, message: &str) -> Refusal {
        Refusal {
            status,
            code,
            message: message.to_owned(),
        }
    }
}

/// Answers once durable: `{"seq":N,"duplicate":bool}`, or `{"events":[…]}` for a batch.
pub(super) async fn publish(
    ctx: &Arc<Context>,
    request: PublishRequest,
    body: hyper::body::Incoming,
) -> Answer {
    let checked = async {
        let principal = principal(ctx, &request)?;
        let text = read_body(ctx, &request, body).await?;
        let batch = parse_batch(&text, &request)?;
        events(ctx, batch, principal.as_deref())
    };
    match checked.await {
        Ok(events) => store(ctx, events, request.topic.is_some()).await,
        Err(refused) => json_error(refused.status, refused.code, &refused.message),
    }
}

/// Who publishes (`None` with auth off); a missing or unknown token is refused.
fn principal(ctx: &Context, request: &PublishRequest) -> Result<Option<Arc<Principal>>, Refusal> {
    let auth = ctx.auth();
    if !auth.enabled() {
        return Ok(None);
    }
    match request.bearer.as_deref().and_then(|t| auth.check(t)) {
        Some(p) => Ok(Some(p)),
        None => Err(Refusal::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "send Authorization: Bearer <token>",
        )),
    }
}

/// The body as text, within `max_frame_bytes`.
async fn read_body(
    ctx: &Context,
    request: &PublishRequest,
    body: hyper::body::Incoming,
) -> Result<String, Refusal> {
    // A cross-site form can post text/plain without a preflight; JSON it cannot.
    if !request.json {
        return Err(Refusal::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported",
            "send the payload with content-type: application/json",
        ));
    }
    let limit = ctx.config.max_frame_bytes;
    let too_large = |length: usize| {
        Refusal::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_large",
            &format!("the body is {length} bytes or more, the limit is {limit}"),
        )
    };
    // Refused before the body is read, so a client that asked `Expect: 100-continue` is
    // not told to send it.
    if let Some(length) = request.length.filter(|&l| l > limit) {
        return Err(too_large(length));
    }
    let body = match http_body_util::Limited::new(body, limit).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => return Err(too_large(limit + 1)),
        Err(e) => {
            return Err(Refusal::new(
                StatusCode::BAD_REQUEST,
                "bad_request",
                &format!("the body could not be read: {e}"),
            ))
        }
    };
    String::from_utf8(body.to_vec())
        .map_err(|_| Refusal::new(StatusCode::BAD_REQUEST, "bad_json", "the body is not UTF-8"))
}

/// The events the body holds: one payload for `/v1/publish/{topic}`, an array for a batch.
fn parse_batch(text: &str, request: &PublishRequest) -> Result<Vec<BatchEvent>, Refusal> {
    let Some(topic) = &request.topic else {
        return match serde_json::from_str::<Vec<BatchEvent>>(text) {
            Ok(batch) if !batch.is_empty() => Ok(batch),
            Ok(_) => Err(Refusal::new(
                StatusCode::BAD_REQUEST,
                "bad_request",
                "the batch is empty",
            )),
            Err(e) => Err(Refusal::new(
                StatusCode::BAD_REQUEST,
                "bad_json",
                &format!("the body must be an array of {{topic, payload, msg_id}}: {e}"),
            )),
        };
    };
    let Ok(payload) = serde_json::from_str::<Box<serde_json::value::RawValue>>(text) else {
        return Err(Refusal::new(
            StatusCode::BAD_REQUEST,
            "bad_json",
            "the body must be one JSON value",
        ));
    };
    Ok(vec![BatchEvent {
        topic: topic.clone(),
        payload,
        msg_id: request.idempotency_key.clone(),
    }])
}

/// Checks each event as a WebSocket publish is checked; the first refusal answers for all.
fn events(
    ctx: &Context,
    batch: Vec<BatchEvent>,
    principal: Option<&Principal>,
) -> Result<Vec<NewEvent>, Refusal> {
    let time_ms = now_ms();
    let bad_request = |message: &str| Refusal::new(StatusCode::BAD_REQUEST, "bad_request", message);
    let mut events = Vec::with_capacity(batch.len());
    for event in batch {
        let topic = Topic::parse(&event.topic)
            .map_err(|e| Refusal::new(StatusCode::BAD_REQUEST, "invalid_topic", &e.0))?;
        if let Some(why) = principal.and_then(|p| p.publish_refusal(topic.as_str())) {
            return Err(Refusal::new(StatusCode::FORBIDDEN, "forbidden", &why));
        }
        if let Some(id) = &event.msg_id {
            if id.is_empty() || id.len() > wharf_protocol::MAX_MSG_ID_BYTES {
                return Err(bad_request(&format!(
                    "msg_id (or Idempotency-Key) must be 1 to {} bytes",
                    wharf_protocol::MAX_MSG_ID_BYTES
                )));
            }
        }
        let max = ctx.config.max_json_depth;
        if wharf_protocol::json_nesting_exceeds(event.payload.get(), max) {
            return Err(bad_request(&format!(
                "the payload nests arrays and objects more than {max} deep (max_json_depth)"
            )));
        }
        // Scoped like a WebSocket publish's: one publisher's ids never answer for another's.
        let publisher = principal.map_or("", |p| p.dedup_scope());
        events.push(NewEvent {
            topic: topic.as_str().to_owned(),
            payload: event.payload.get().to_owned(),
            time_ms,
            msg_id: event
                .msg_id
                .map(|id| crate::auth::dedup_key(publisher, &id)),
        });
    }
    Ok(events)
}

/// Stores the events as one batch and answers once they are durable.
async fn store(ctx: &Context, events: Vec<NewEvent>, single: bool) -> Answer {
    let count = events.len();
    let stored = match ctx.backend.publish(vec![events]).await {
        Ok(confirming) => confirming.await,
        Err(e) => Err(e),
    };
    let internal =
        |message: &str| json_error(StatusCode::INTERNAL_SERVER_ERROR, "internal", message);
    match stored.map(|mut batches| batches.pop()) {
        Ok(Some(Stored::Events(seqs))) if seqs.len() == count => {
            let stored =
                |p: &Published| serde_json::json!({"seq": p.seq, "duplicate": p.duplicate});
            let body = match single {
                true => stored(&seqs[0]),
                false => serde_json::json!({"events": seqs.iter().map(stored).collect::<Vec<_>>()}),
            };
            reply(StatusCode::OK, "application/json", body.to_string())
        }
        Ok(Some(Stored::Refused(e))) | Err(e) => backend_error(&e),
        Ok(_) => internal("publish got no seq"),
    }
}

/// A backend's refusal with the wire error code and its HTTP status: a cluster without
/// quorum is 503 (retry later, with the same `Idempotency-Key`), not a server fault.
fn backend_error(e: &BackendError) -> Answer {
    let status = match e {
        BackendError::NotFound(_) => StatusCode::NOT_FOUND,
        BackendError::BadRequest(_) => StatusCode::BAD_REQUEST,
        BackendError::Conflict(_) => StatusCode::CONFLICT,
        BackendError::LimitExceeded(_) => StatusCode::TOO_MANY_REQUESTS,
        BackendError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
        BackendError::Failed(_) => StatusCode::INTERNAL_SERVER_ERROR,
    };
    json_error(status, e.code().as_str(), &e.to_string())
}
