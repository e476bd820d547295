//! Who the connection is and what it may do: the `auth` op, token expiry, the check of
//! every request against the principal's rights.

use super::*;

impl Session {
    pub(super) async fn authenticate(&mut self, id: Option<Id>, token: &str) -> Result<(), Closed> {
        match self.ctx.auth().check(token) {
            Some(principal) => {
                tracing::debug!(session = self.id, token = principal.name, "authenticated");
                self.principal = Some(principal);
                self.auth_deadline = None;
                self.arm_expiry();
                self.send(Reply::Ok { id }).await?;
                self.drop_forbidden_subscriptions().await
            }
            None => {
                self.failed_auths += 1;
                let reply = Reply::error(id, ErrorCode::Unauthorized, "invalid token");
                self.send(reply).await?;
                if self.failed_auths < MAX_FAILED_AUTHS {
                    return Ok(());
                }
                tracing::warn!(
                    session = self.id,
                    failed = self.failed_auths,
                    "closing a connection after repeated invalid tokens"
                );
                self.closing = Some(close_frame(
                    CloseCode::Policy,
                    "too many failed authentications",
                ));
                Err(Closed)
            }
        }
    }

    /// Why this request may not go ahead: a payload nested too deep (clients whose JSON
    /// parser recurses would fail on it at every delivery), or what auth refuses.
    pub(super) async fn rejection(&mut self, request: &Request) -> Option<Reply> {
        let max = self.ctx.config.max_json_depth;
        let too_deep = match request {
            Request::Publish { event, .. } => json_nesting_exceeds(event.payload.get(), max),
            Request::PublishBatch { events, .. } => events
                .iter()
                .any(|e| json_nesting_exceeds(e.payload.get(), max)),
            _ => false,
        };
        if too_deep {
            let message = format!(
                "the payload nests arrays and objects more than {max} deep (max_json_depth)"
            );
            return Some(Reply::error(
                request.id().cloned(),
                ErrorCode::BadRequest,
                message,
            ));
        }
        self.refusal(request).await
    }

    /// Sets the expiry timers from the principal's token (none for tokens that do not expire).
    pub(super) fn arm_expiry(&mut self) {
        let expires = self.principal.as_ref().and_then(|p| p.expires_at);
        let at = expires.map(|exp| {
            let left_ms = exp.saturating_mul(1000).saturating_sub(now_ms());
            tokio::time::Instant::now() + Duration::from_millis(left_ms)
        });
        let notice = self.ctx.auth().settings().jwt.expiry_notice;
        self.expires_at = at;
        self.expiry_notice_at = at.map(|at| at.checked_sub(notice).unwrap_or(at));
    }

    /// Who publishes on this connection, as far as msg_id dedup is concerned: its principal,
    /// or nobody in particular with auth off.
    pub(super) fn publisher(&self) -> &str {
        self.principal.as_ref().map_or("", |who| who.dedup_scope())
    }

    /// Whether this connection's principal may hold a subscription to `patterns` (through
    /// durable consumer `consumer`, if any). Always, with auth off.
    pub(super) fn may_hold(&self, patterns: &[Pattern], consumer: Option<&str>) -> bool {
        if !self.auth_enabled {
            return true;
        }
        self.principal.as_ref().is_some_and(|who| {
            let name_allowed = match consumer {
                Some(name) => who.may_use_consumer(name),
                None => true,
            };
            name_allowed && who.may_subscribe_all(patterns)
        })
    }

    /// After a re-authentication: ends the subscriptions the new principal may not hold,
    /// telling the client with `unsubscribed` (reason `forbidden`).
    pub(super) async fn drop_forbidden_subscriptions(&mut self) -> Result<(), Closed> {
        let forbidden: Vec<Arc<str>> = self
            .subs
            .iter()
            .filter(|(_, held)| !self.may_hold(&held.patterns, held.consumer.as_deref()))
            .map(|(sub, _)| sub.clone())
            .collect();
        for sub in forbidden {
            if let Some(held) = self.subs.remove(&sub) {
                self.end(held);
                let notice = Reply::Unsubscribed {
                    sub: sub.to_string(),
                    reason: "forbidden".into(),
                };
                self.send(notice).await?;
            }
        }
        Ok(())
    }

    /// Why this request may not go ahead, when auth is on.
    pub(super) async fn refusal(&mut self, request: &Request) -> Option<Reply> {
        if !self.auth_enabled {
            return None;
        }
        let id = request.id().cloned();
        let Some(who) = &self.principal else {
            return Some(Reply::error(
                id,
                ErrorCode::Unauthorized,
                "authenticate first: send {\"op\":\"auth\",\"token\":…} or an Authorization: Bearer header",
            ));
        };
        // The topics of the consumer the request names, when it names one that exists.
        let patterns = match consumer_named(request) {
            Some(name) => match self.ctx.backend.consumer_patterns(name).await {
                Ok(patterns) => patterns,
                Err(e) => return Some(error_reply(id, e)),
            },
            None => None,
        };
        who.refusal(request, &|_| patterns.clone())
            .map(|why| Reply::error(id, ErrorCode::Forbidden, why))
    }
}

/// The durable consumer a request names, if any.
fn consumer_named(request: &Request) -> Option<&str> {
    match request {
        Request::Subscribe { consumer, .. } => consumer.as_deref(),
        Request::Ack { consumer, .. }
        | Request::Nack { consumer, .. }
        | Request::Term { consumer, .. }
        | Request::Progress { consumer, .. }
        | Request::Seek { consumer, .. }
        | Request::ConsumerInfo { consumer, .. }
        | Request::DeleteConsumer { consumer, .. } => Some(consumer),
        _ => None,
    }
}
