//! Building HTTP responses: the one shape every answer of the front door takes.

pub(super) type Answer = hyper::Response<http_body_util::Full<bytes::Bytes>>;

pub(super) fn reply(
    status: hyper::StatusCode,
    kind: &str,
    body: impl Into<bytes::Bytes>,
) -> Answer {
    let mut answer = hyper::Response::new(http_body_util::Full::new(body.into()));
    *answer.status_mut() = status;
    let headers = answer.headers_mut();
    if let Ok(kind) = hyper::header::HeaderValue::from_str(kind) {
        headers.insert(hyper::header::CONTENT_TYPE, kind);
    }
    headers.insert(
        hyper::header::CACHE_CONTROL,
        hyper::header::HeaderValue::from_static("no-cache"),
    );
    answer
}

pub(super) fn text(status: hyper::StatusCode, body: &str) -> Answer {
    reply(status, "text/plain; charset=utf-8", format!("{body}\n"))
}

pub(super) fn json_error(status: hyper::StatusCode, code: &str, message: &str) -> Answer {
    reply(status, "application/json", error_json(code, message))
}

fn error_json(code: &str, message: &str) -> String {
    serde_json::json!({"code": code, "message": message}).to_string()
}
