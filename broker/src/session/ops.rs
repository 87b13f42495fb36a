//! What a client asks for: each text message is rate-limited, parsed
//! ([`crate::protocol::parse`]) and executed: `subscribe` (with its replay plan,
//! `replay.rs`), `unsubscribe`, `publish`, `ping`/`pong` and `auth`. A refused request
//! gets an `error` reply and changes nothing.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Instant;

use actix::prelude::*;
use bytes::Bytes;
use herald_bridges::topic::TopicName;
use herald_bridges::Source;
use tracing::info;

use super::ratelimit::Verdict;
use super::subscriptions::Subscriptions;
use super::{replay, Session};
use crate::auth::{AuthError, Identity};
use crate::metrics::METRICS;
use crate::protocol::{
    self, close, ErrorCode, Op, ProtocolError, RequestId, ResetReason, ServerMessage,
};
use crate::topic::{self, Pattern};
use crate::topics::message::Subscriber;
use crate::topics::Event;

impl Session {
    pub(super) fn on_text(&mut self, text: &str, ctx: &mut Context<Self>) {
        self.last_seen = Instant::now();
        let verdict = self.limiter.admit();
        if verdict == Verdict::Close {
            info!(session = %self.name, "rate limit exceeded repeatedly; closing");
            return self.close(ctx, close::RATE_LIMITED, "rate limit exceeded");
        }
        let (id, op) = match protocol::parse(text) {
            Ok(parsed) => parsed,
            Err((id, err)) => return self.reply_error(&id, &err, ctx),
        };
        if verdict == Verdict::Limit {
            let err = ProtocolError::new(
                ErrorCode::RateLimited,
                format!(
                    "more than {} messages per second; this message was not executed",
                    self.broker.config().session.rate_limit_per_s
                ),
            );
            return self.reply_error(&id, &err, ctx);
        }
        if let Err(err) = self.execute(op, &id, ctx) {
            self.reply_error(&id, &err, ctx);
        }
    }

    pub(super) fn identity(&self) -> Result<&Identity, ProtocolError> {
        self.identity.as_ref().ok_or_else(|| {
            ProtocolError::new(
                ErrorCode::Unauthorized,
                "authenticate first with {\"op\":\"auth\"}",
            )
        })
    }

    pub(super) fn execute(
        &mut self,
        op: Op,
        id: &RequestId,
        ctx: &mut Context<Self>,
    ) -> Result<(), ProtocolError> {
        match op {
            Op::Subscribe {
                topics,
                last,
                resume,
            } => self.subscribe(topics, last, resume, id, ctx),
            Op::Unsubscribe { topics } => self.unsubscribe(topics, id, ctx),
            Op::Publish {
                topic,
                data,
                key,
                headers,
            } => {
                if !self.broker.config().publish.from_clients {
                    return Err(ProtocolError::new(
                        ErrorCode::PublishDisabled,
                        "publishing from WebSocket clients is disabled on this server",
                    ));
                }
                let topic = TopicName::new(topic).map_err(invalid_topic)?;
                if !self.identity()?.may_publish(&topic) {
                    return Err(ProtocolError::new(
                        ErrorCode::Forbidden,
                        format!("not allowed to publish to {topic}"),
                    ));
                }
                let event = Event {
                    topic,
                    payload: Bytes::from(data.into_bytes()),
                    key,
                    headers,
                    source: Source::Ws,
                    position: None,
                };
                // Through the backplane this waits on NATS; the reply follows once
                // the event is accepted (or refused), without blocking the session.
                let broker = self.broker.clone();
                let id = id.clone();
                let publish = async move { broker.publish_one(event).await };
                ctx.spawn(publish.into_actor(self).map(move |result, act, ctx| {
                    match result {
                        Ok(()) => {
                            act.control(ServerMessage::Ok { id: id.as_deref() }.to_frame(), ctx)
                        }
                        Err(e) => {
                            act.reply_error(&id, &ProtocolError::new(e.code(), e.to_string()), ctx)
                        }
                    }
                    act.flush(ctx);
                }));
                Ok(())
            }
            Op::Ping => {
                self.control(ServerMessage::Pong { id: id.as_deref() }.to_frame(), ctx);
                Ok(())
            }
            Op::Pong => Ok(()),
            // Auth off: accepted, and nothing changes.
            Op::Auth { .. } if !self.broker.authenticator().enabled() => {
                self.control(ServerMessage::Ok { id: id.as_deref() }.to_frame(), ctx);
                Ok(())
            }
            Op::Auth { token } => {
                let verified = self.broker.authenticator().token(&token);
                if verified.as_ref().is_err_and(AuthError::wants_fresh_keys) {
                    // A key the JWKS did not hold: fetch it, and read nothing else
                    // from this client meanwhile, so its next request sees the result.
                    let broker = self.broker.clone();
                    let id = id.clone();
                    let verify = async move {
                        crate::auth::with_fresh_keys(broker.authenticator(), |auth| {
                            auth.token(&token)
                        })
                        .await
                    };
                    ctx.wait(verify.into_actor(self).map(move |verified, act, ctx| {
                        if let Err(err) = act.authenticated(verified, &id, ctx) {
                            act.reply_error(&id, &err, ctx);
                        }
                        act.flush(ctx);
                    }));
                    return Ok(());
                }
                self.authenticated(verified, id, ctx)
            }
        }
    }

    /// What a verified (or refused) `{"op":"auth"}` does: the first identifies the
    /// session and gets `welcome`; a later one with the same subject refreshes it.
    fn authenticated(
        &mut self,
        verified: Result<Identity, AuthError>,
        id: &RequestId,
        ctx: &mut Context<Self>,
    ) -> Result<(), ProtocolError> {
        match (verified, &self.identity) {
            (Ok(identity), None) => {
                info!(session = %self.name, subject = identity.subject.as_deref().unwrap_or("-"), "authenticated");
                self.identity = Some(identity);
                self.welcome(ctx);
                Ok(())
            }
            // A refresh: same holder, new expiry and grants. Subscriptions
            // made under the old grants stay.
            (Ok(identity), Some(old))
                if old.subject.is_some() && old.subject == identity.subject =>
            {
                self.identity = Some(identity);
                self.control(ServerMessage::Ok { id: id.as_deref() }.to_frame(), ctx);
                Ok(())
            }
            (Ok(_), Some(_)) => Err(ProtocolError::new(
                ErrorCode::Forbidden,
                "a refresh token must have the session's subject (`sub`)",
            )),
            // The token may be fine: the keys to check it are missing. 1013 tells
            // the client to come back later with it, where 4001 would make it
            // drop a good token.
            (Err(AuthError::NoKeysYet), None) => {
                info!(session = %self.name, "authentication deferred: no JWKS keys yet");
                self.close(
                    ctx,
                    close::TRY_AGAIN_LATER,
                    "signing keys not available yet",
                );
                Ok(())
            }
            (Err(e), None) => {
                info!(session = %self.name, reason = %e, "authentication failed");
                self.close(ctx, close::UNAUTHORIZED, "unauthorized");
                Ok(())
            }
            // A failed refresh leaves the session as it was, until its
            // current credentials expire.
            (Err(e), Some(_)) => Err(ProtocolError::new(ErrorCode::Unauthorized, e.to_string())),
        }
    }

    pub(super) fn subscribe(
        &mut self,
        topics: Vec<String>,
        last: Option<u32>,
        resume: Option<protocol::Resume>,
        id: &RequestId,
        ctx: &mut Context<Self>,
    ) -> Result<(), ProtocolError> {
        let identity = self.identity()?;
        let max = self.broker.config().session.max_subscriptions;
        let new = check_patterns(identity, &topics, &self.subscriptions, max)?;
        let plan = replay::plan(
            &new,
            last,
            resume,
            self.broker.epoch(),
            self.broker.config().history.size,
        )
        .map_err(invalid_topic)?;
        self.control(
            ServerMessage::Subscribed {
                id: id.as_deref(),
                topics: &topics,
            }
            .to_frame(),
            ctx,
        );
        for topic in &plan.resets {
            let frame = ServerMessage::Reset {
                topic,
                reason: ResetReason::EpochChanged,
            }
            .to_frame();
            self.control(frame, ctx);
        }
        let me = self.subscriber();
        for (p, replay) in new.iter().zip(plan.replays) {
            self.broker.registry().subscribe(&me, p, Arc::new(replay));
        }
        METRICS.subscriptions_changed(new.len() as i64);
        self.subscriptions.add(new);
        Ok(())
    }

    pub(super) fn unsubscribe(
        &mut self,
        topics: Vec<String>,
        id: &RequestId,
        ctx: &mut Context<Self>,
    ) -> Result<(), ProtocolError> {
        let patterns = topics
            .iter()
            .map(|t| Pattern::parse(t).map_err(invalid_topic))
            .collect::<Result<Vec<_>, _>>()?;
        let removed = self.subscriptions.remove(patterns);
        for p in &removed {
            self.broker.registry().unsubscribe(self.id, p);
        }
        METRICS.subscriptions_changed(-(removed.len() as i64));
        self.control(
            ServerMessage::Unsubscribed {
                id: id.as_deref(),
                topics: &topics,
            }
            .to_frame(),
            ctx,
        );
        Ok(())
    }

    pub(super) fn subscriber(&mut self) -> Subscriber {
        self.me
            .get_or_insert_with(|| self.inbox.subscriber(self.id))
            .clone()
    }
}

/// The patterns of a `subscribe` that `held` does not hold yet, in order and without
/// duplicates, once each is valid and granted and they fit under `max`. A `GET /sse`
/// request is checked with it too, before its stream starts.
pub(crate) fn check_patterns(
    identity: &Identity,
    topics: &[String],
    held: &Subscriptions,
    max: usize,
) -> Result<Vec<Pattern>, ProtocolError> {
    let mut new: Vec<Pattern> = Vec::new();
    // Duplicates within one request, found in O(log n) each: a request may list
    // thousands of topics.
    let mut seen: BTreeSet<&str> = BTreeSet::new();
    for t in topics {
        let p = Pattern::parse(t).map_err(invalid_topic)?;
        if !identity.may_subscribe(t) {
            return Err(ProtocolError::new(
                ErrorCode::Forbidden,
                format!("not allowed to subscribe to {}", protocol::truncate(t, 255)),
            ));
        }
        if !held.contains(&p) && seen.insert(t) {
            new.push(p);
        }
    }
    if held.len() + new.len() > max {
        return Err(ProtocolError::new(
            ErrorCode::TooManySubscriptions,
            format!(
                "at most {max} subscriptions per connection; this one has {} and asked for {} more",
                held.len(),
                new.len()
            ),
        ));
    }
    Ok(new)
}

fn invalid_topic(e: topic::TopicError) -> ProtocolError {
    ProtocolError::new(ErrorCode::InvalidTopic, e.to_string())
}
