//! The session actor: one per WebSocket connection (PROTOCOL.md sections 2–7).
//!
//! It owns the `actix_ws` writer, reads the client's messages as an actor stream,
//! runs the JSON heartbeat and the rate limiter, keeps the connection's
//! subscriptions, and writes frames from a byte-bounded [`Outbound`] queue. Topics
//! deliver into its [`Inbox`], which it drains on each [`Wake`].
//!
//! Writing: at most one write is in flight per connection. It takes every queued
//! frame at once (writes coalesce under load) and feeds them into the socket; frames
//! arriving meanwhile wait in the queue, counted against its bound. A client that
//! stops reading therefore costs at most its queue bound, never more: events past it
//! are dropped and reported as `lagged`, or the connection is closed with 4009.
//!
//! Echo mode (the test-only `/echo` route, `server.conformance_echo`; see
//! docs/conformance.md) is a branch of this same session: it sends every text and
//! binary message back unchanged instead of parsing JSON, and sends no `welcome` and
//! no JSON pings. Frame handling, limits, pongs and close codes stay the ones below.

pub mod inbox;
pub mod outbound;
pub mod ratelimit;

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use actix_ws::{AggregatedMessage, CloseCode, CloseReason, Message as WsMessage};
use bytes::Bytes;
use bytestring::ByteString;
use futures_util::SinkExt as _;
use herald_bridges::topic::TopicName;
use herald_bridges::Source;

use tracing::{debug, info};

use crate::auth::Identity;
use crate::broker::Broker;
use crate::http::admission::Permit;
use crate::metrics::{DropReason, METRICS};
use crate::protocol::event::Frame;
use crate::protocol::{
    self, close, ErrorCode, Heartbeat, Limits, Op, ProtocolError, Replay, RequestId, ResetReason,
    ServerMessage, SUBPROTOCOL,
};
use crate::session::inbox::{Inbox, Wake};
use crate::session::outbound::{Outbound, Outgoing, Push};
use crate::session::ratelimit::{RateLimiter, Verdict};
use crate::topic::{self, Pattern};
use crate::topics::message::{Deliver, Shutdown, Subscriber};
use crate::topics::Event;

/// The JSON heartbeat, identical for every connection: built once, shared.
static PING: ByteString = ByteString::from_static(r#"{"type":"ping"}"#);

/// Longest time a close frame may take to reach a client that does not read.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);

/// Most WebSocket Pings waiting for their Pong. Past it the oldest is not answered
/// (RFC 6455 5.5.3 allows answering only the latest), so a client that pings but
/// never reads costs a bounded amount.
const MAX_PENDING_PONGS: usize = 16;

/// Number of the next session (process-unique; the dedup key topics use).
static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// One WebSocket connection.
pub struct Session {
    /// Process-unique number.
    id: u64,
    /// Public id in `welcome` and logs (random, not guessable from `id`).
    name: String,
    broker: Broker,
    /// Who the client is; `None` until authenticated (auth on, first-message auth).
    identity: Option<Identity>,
    /// Handle used to close the connection (consumed by `close`).
    ws: Option<actix_ws::Session>,
    /// Handle used for writes; `None` while a write is in flight.
    writer: Option<actix_ws::Session>,
    write_in_flight: Option<SpawnHandle>,
    out: Outbound,
    /// Payloads of the WebSocket Pings not yet answered, oldest first; each gets its
    /// own Pong, written before the queued frames.
    pending_pongs: VecDeque<Bytes>,
    subscriptions: BTreeSet<Pattern>,
    /// How topics reach this session; made on first subscribe.
    me: Option<Subscriber>,
    /// Where topics put frames for this session.
    inbox: Inbox,
    limiter: RateLimiter,
    last_seen: Instant,
    last_ping: Instant,
    opened: Instant,
    closing: bool,
    close_code: u16,
    ip: Option<IpAddr>,
    /// Echo mode (`server.conformance_echo`, test-only): messages go back unchanged.
    echo: bool,
    _permit: Permit,
}

impl Session {
    /// A session for an upgraded connection.
    pub fn new(
        broker: Broker,
        ws: actix_ws::Session,
        identity: Option<Identity>,
        ip: Option<IpAddr>,
        permit: Permit,
    ) -> Self {
        let cfg = &broker.config().session;
        let now = Instant::now();
        let out = Outbound::new(
            cfg.queue_max_bytes,
            cfg.slow_consumer == crate::config::SlowConsumer::Disconnect,
        );
        Session {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            name: format!("{:016x}", rand::random::<u64>()),
            inbox: Inbox::new(out.budget().clone()),
            out,
            limiter: RateLimiter::new(cfg.rate_limit_per_s, cfg.rate_limit_burst),
            writer: Some(ws.clone()),
            ws: Some(ws),
            write_in_flight: None,
            pending_pongs: VecDeque::new(),
            subscriptions: BTreeSet::new(),
            me: None,
            last_seen: now,
            last_ping: now,
            opened: now,
            closing: false,
            close_code: close::GOING_AWAY,
            identity,
            ip,
            echo: false,
            _permit: permit,
            broker,
        }
    }

    /// Turns echo mode on (the `/echo` route): every text and binary message is sent
    /// back unchanged instead of being parsed as JSON. Test-only, for the Autobahn
    /// conformance run (docs/conformance.md).
    pub fn echo(mut self, on: bool) -> Self {
        self.echo = on;
        self
    }

    fn welcome(&mut self, ctx: &mut Context<Self>) {
        let cfg = &self.broker.config().session;
        let frame = ServerMessage::Welcome {
            session: &self.name,
            node: self.broker.node(),
            epoch: self.broker.epoch(),
            protocol: SUBPROTOCOL,
            delivery: "best-effort",
            heartbeat: Heartbeat {
                interval_ms: cfg.heartbeat_interval_ms,
                timeout_ms: cfg.heartbeat_timeout_ms,
            },
            limits: Limits {
                max_message_bytes: cfg.max_message_bytes,
                max_subscriptions: cfg.max_subscriptions,
            },
        }
        .to_frame();
        self.control(frame, ctx);
    }

    /// Queues a reply or notice.
    fn control(&mut self, frame: impl Into<Outgoing>, ctx: &mut Context<Self>) {
        if let Push::Close(code) = self.out.push_control(frame) {
            self.close(ctx, code, "slow consumer");
        }
    }

    /// Echo mode: queues a client message back unchanged, as a reply (never
    /// dropped; past the queue's allowance the connection closes with 4009).
    fn echo_back(&mut self, msg: Outgoing, ctx: &mut Context<Self>) {
        self.last_seen = Instant::now();
        self.control(msg, ctx);
    }

    /// Queues a replayed event (live ones arrive with their bytes reserved).
    fn replayed(&mut self, frame: Frame, ctx: &mut Context<Self>) {
        match self.out.push_event(frame) {
            Push::Queued => {}
            Push::Dropped => METRICS.dropped(DropReason::QueueFull, 1),
            Push::Close(code) => self.close(ctx, code, "slow consumer"),
        }
    }

    /// Moves everything topics delivered into the outbound queue.
    fn drain_inbox(&mut self, ctx: &mut Context<Self>) {
        while let Some(deliver) = self.inbox.next() {
            if self.closing {
                return;
            }
            match deliver {
                Deliver::Event(frame) => self.out.push_reserved(frame),
                Deliver::Replay(frames) => {
                    for frame in frames {
                        self.replayed(frame, ctx);
                    }
                }
                Deliver::Reset { topic, reason } => {
                    let frame = ServerMessage::Reset {
                        topic: &topic,
                        reason,
                    }
                    .to_frame();
                    self.control(frame, ctx);
                }
            }
        }
    }

    fn reply_error(&mut self, id: &RequestId, err: &ProtocolError, ctx: &mut Context<Self>) {
        METRICS.client_error(err.code);
        debug!(session = %self.name, code = err.code.as_str(), "error reply");
        let frame = ServerMessage::Error {
            id: id.as_deref(),
            code: err.code,
            message: &err.message,
        }
        .to_frame();
        self.control(frame, ctx);
    }

    /// Starts a write of everything queued, unless one is in flight (then its
    /// completion calls this again).
    fn flush(&mut self, ctx: &mut Context<Self>) {
        if self.closing {
            return;
        }
        let missed = self.inbox.take_missed();
        if missed > 0 {
            if let Push::Close(code) = self.out.note_dropped(missed) {
                return self.close(ctx, code, "slow consumer");
            }
        }
        if let Some(dropped) = self.out.take_lagged() {
            METRICS.lagged_notice();
            debug!(session = %self.name, dropped, "lagged");
            self.control(ServerMessage::Lagged { dropped }.to_frame(), ctx);
            if self.closing {
                return;
            }
        }
        if self.out.is_empty() && self.pending_pongs.is_empty() {
            return;
        }
        let Some(mut writer) = self.writer.take() else {
            return;
        };
        let (batch, events) = self.out.take_batch();
        let bytes: usize = batch.iter().map(|f| f.len()).sum();
        let pongs = std::mem::take(&mut self.pending_pongs);
        let write = async move {
            for payload in pongs {
                writer.pong(&payload).await?;
            }
            for frame in batch {
                writer.feed(WsMessage::from(frame)).await?;
            }
            writer.flush().await?;
            Ok::<_, actix_ws::Closed>(writer)
        };
        let handle = ctx.spawn(write.into_actor(self).map(move |result, act, ctx| {
            act.write_in_flight = None;
            match result {
                Ok(writer) => {
                    act.writer = Some(writer);
                    act.out.written(bytes);
                    METRICS.delivered(events);
                    act.flush(ctx);
                }
                Err(_) => {
                    // The connection is gone; nothing more can be written.
                    act.close_code = 1006;
                    act.closing = true;
                    ctx.stop();
                }
            }
        }));
        self.write_in_flight = Some(handle);
    }

    /// Closes the connection with `code` and stops the actor.
    fn close(&mut self, ctx: &mut Context<Self>, code: u16, why: &'static str) {
        if self.closing {
            return;
        }
        self.closing = true;
        self.close_code = code;
        // A write stuck on a client that does not read would delay the close frame
        // forever; what it held is abandoned with the connection.
        if let Some(handle) = self.write_in_flight.take() {
            ctx.cancel_future(handle);
        }
        // With no write in flight, replies already queued (an `error`, a `pong`) go
        // out before the close frame, bounded by the same timeout.
        let (batch, _) = self.out.take_batch();
        let writer = self.writer.take();
        if let Some(ws) = self.ws.take() {
            let reason = CloseReason {
                code: CloseCode::from(code),
                description: Some(why.to_owned()),
            };
            // The actor (and with it the inbound stream) stays alive until the close
            // frame is written: dropping the stream first stalls actix-http's
            // dispatcher for most of a second before it writes the frame.
            let goodbye = async move {
                if let Some(mut writer) = writer {
                    for frame in batch {
                        if writer.feed(WsMessage::from(frame)).await.is_err() {
                            return;
                        }
                    }
                    let _ = writer.flush().await;
                }
                let _ = ws.close(Some(reason)).await;
            };
            let goodbye = tokio::time::timeout(CLOSE_TIMEOUT, goodbye);
            ctx.spawn(goodbye.into_actor(self).map(|_, _, ctx| ctx.stop()));
            return;
        }
        ctx.stop();
    }

    fn on_text(&mut self, text: &str, ctx: &mut Context<Self>) {
        self.last_seen = Instant::now();
        let verdict = self.limiter.check();
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

    fn identity(&self) -> Result<&Identity, ProtocolError> {
        self.identity.as_ref().ok_or_else(|| {
            ProtocolError::new(
                ErrorCode::Unauthorized,
                "authenticate first with {\"op\":\"auth\"}",
            )
        })
    }

    fn execute(
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
                };
                // Through the backplane this waits on NATS; the reply follows once
                // the event is accepted (or refused), without blocking the session.
                let broker = self.broker.clone();
                let id = id.clone();
                let publish = async move { broker.send(broker.prepare(event)?).await };
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
                    (Err(e), None) => {
                        info!(session = %self.name, reason = %e, "authentication failed");
                        self.close(ctx, close::UNAUTHORIZED, "unauthorized");
                        Ok(())
                    }
                    // A failed refresh leaves the session as it was, until its
                    // current credentials expire.
                    (Err(e), Some(_)) => {
                        Err(ProtocolError::new(ErrorCode::Unauthorized, e.to_string()))
                    }
                }
            }
        }
    }

    fn subscribe(
        &mut self,
        topics: Vec<String>,
        last: Option<u32>,
        resume: Option<protocol::Resume>,
        id: &RequestId,
        ctx: &mut Context<Self>,
    ) -> Result<(), ProtocolError> {
        let identity = self.identity()?;
        let mut new: Vec<Pattern> = Vec::new();
        // Duplicates within one request, found in O(log n) each: a request may list
        // thousands of topics.
        let mut seen: BTreeSet<&str> = BTreeSet::new();
        for t in &topics {
            let p = Pattern::parse(t).map_err(invalid_topic)?;
            if !identity.may_subscribe(t) {
                return Err(ProtocolError::new(
                    ErrorCode::Forbidden,
                    format!("not allowed to subscribe to {}", protocol::truncate(t, 255)),
                ));
            }
            if !self.subscriptions.contains(&p) && seen.insert(t) {
                new.push(p);
            }
        }
        let max = self.broker.config().session.max_subscriptions;
        if self.subscriptions.len() + new.len() > max {
            return Err(ProtocolError::new(
                ErrorCode::TooManySubscriptions,
                format!(
                    "at most {max} subscriptions per connection; this one has {} and asked for {} more",
                    self.subscriptions.len(),
                    new.len()
                ),
            ));
        }
        // What each new pattern replays. A resume position belongs to the first new
        // pattern that matches its topic, so overlapping patterns in one request
        // answer it once (one replay or one `reset`, never two).
        let mut resets: Vec<String> = Vec::new();
        let replays: Vec<Replay> = match (last, resume) {
            (Some(n), _) => {
                let n = n.min(self.broker.config().history.size as u32);
                vec![Replay::Last(n); new.len()]
            }
            (None, Some(resume)) => {
                for name in resume.topics.keys() {
                    topic::validate_topic(name).map_err(invalid_topic)?;
                }
                let mut per_pattern = vec![BTreeMap::new(); new.len()];
                // Positions for topics no new pattern matches are ignored.
                for (name, seq) in resume.topics {
                    if let Some(i) = new.iter().position(|p| p.matches(&name)) {
                        per_pattern[i].insert(name, seq);
                    }
                }
                if resume.epoch == self.broker.epoch() {
                    per_pattern.into_iter().map(Replay::Resume).collect()
                } else {
                    resets = per_pattern
                        .into_iter()
                        .flat_map(BTreeMap::into_keys)
                        .collect();
                    vec![Replay::None; new.len()]
                }
            }
            (None, None) => vec![Replay::None; new.len()],
        };
        self.control(
            ServerMessage::Subscribed {
                id: id.as_deref(),
                topics: &topics,
            }
            .to_frame(),
            ctx,
        );
        for topic in &resets {
            let frame = ServerMessage::Reset {
                topic,
                reason: ResetReason::EpochChanged,
            }
            .to_frame();
            self.control(frame, ctx);
        }
        let me = self.subscriber(ctx);
        for (p, replay) in new.into_iter().zip(replays) {
            self.broker.registry().subscribe(&me, &p, Arc::new(replay));
            self.subscriptions.insert(p);
            METRICS.subscriptions_changed(1);
        }
        Ok(())
    }

    fn unsubscribe(
        &mut self,
        topics: Vec<String>,
        id: &RequestId,
        ctx: &mut Context<Self>,
    ) -> Result<(), ProtocolError> {
        let patterns = topics
            .iter()
            .map(|t| Pattern::parse(t).map_err(invalid_topic))
            .collect::<Result<Vec<_>, _>>()?;
        for p in patterns {
            if self.subscriptions.remove(&p) {
                self.broker.registry().unsubscribe(self.id, &p);
                METRICS.subscriptions_changed(-1);
            }
        }
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

    fn subscriber(&mut self, ctx: &mut Context<Self>) -> Subscriber {
        self.me
            .get_or_insert_with(|| self.inbox.subscriber(self.id, ctx.address().recipient()))
            .clone()
    }

    fn heartbeat(&mut self, ctx: &mut Context<Self>) {
        let cfg = &self.broker.config().session;
        let interval = Duration::from_millis(cfg.heartbeat_interval_ms);
        let window = interval + Duration::from_millis(cfg.heartbeat_timeout_ms);
        let now = Instant::now();
        if self.identity.is_none()
            && now.duration_since(self.opened) >= Duration::from_millis(cfg.auth_timeout_ms)
        {
            return self.close(ctx, close::UNAUTHORIZED, "authentication timeout");
        }
        let expired = self
            .identity
            .as_ref()
            .and_then(|i| i.expires)
            .is_some_and(|exp| crate::auth::jwt::now_secs() >= exp);
        if expired {
            info!(session = %self.name, "credentials expired");
            return self.close(ctx, close::UNAUTHORIZED, "token expired");
        }
        if now.duration_since(self.last_seen) >= window {
            info!(session = %self.name, "heartbeat timeout");
            return self.close(ctx, close::HEARTBEAT_TIMEOUT, "heartbeat timeout");
        }
        if now.duration_since(self.last_ping) >= interval && self.identity.is_some() && !self.echo {
            self.last_ping = now;
            self.control(PING.clone(), ctx);
            self.flush(ctx);
        }
    }
}

/// Whether a stream error means the client's connection ended without a close frame.
fn peer_vanished(e: &std::io::Error) -> bool {
    e.get_ref()
        .and_then(|inner| inner.downcast_ref::<actix_web::error::PayloadError>())
        .is_some_and(|p| matches!(p, actix_web::error::PayloadError::Incomplete(_)))
}

fn invalid_topic(e: topic::TopicError) -> ProtocolError {
    ProtocolError::new(ErrorCode::InvalidTopic, e.to_string())
}

/// Whether an actix-ws stream error is invalid UTF-8 in a text message (close 1007).
/// actix-ws reports it as `InvalidData` carrying the `Utf8Error` (one frame) or its
/// text (joined fragments). A frame with reserved bits set is `InvalidData` too, but
/// a protocol error (1002). tests/limits.rs pins both mappings.
fn is_invalid_utf8(e: &std::io::Error) -> bool {
    e.kind() == std::io::ErrorKind::InvalidData && e.to_string().contains("utf-8")
}

impl Actor for Session {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        let cfg = &self.broker.config().session;
        ctx.set_mailbox_capacity(cfg.mailbox_capacity);
        // Tick often enough to close within a fraction of the window of its end.
        let tick = Duration::from_millis(
            (cfg.heartbeat_interval_ms.min(cfg.heartbeat_timeout_ms) / 4).clamp(10, 5_000),
        );
        ctx.run_interval(tick, Self::heartbeat);
        METRICS.connection_opened();
        self.broker
            .sessions()
            .insert(self.id, ctx.address().recipient());
        let subject = self.identity.as_ref().and_then(|i| i.subject.as_deref());
        info!(session = %self.name, ip = ?self.ip, subject = subject.unwrap_or("-"), "session opened");
        if self.identity.is_some() && !self.echo {
            self.welcome(ctx);
            self.flush(ctx);
        }
    }

    fn stopped(&mut self, _ctx: &mut Self::Context) {
        for p in &self.subscriptions {
            self.broker.registry().unsubscribe(self.id, p);
        }
        METRICS.subscriptions_changed(-(self.subscriptions.len() as i64));
        METRICS.connection_closed(self.close_code);
        self.broker.sessions().remove(self.id);
        info!(
            session = %self.name,
            code = self.close_code,
            duration_ms = self.opened.elapsed().as_millis() as u64,
            "session closed"
        );
    }
}

impl StreamHandler<Result<AggregatedMessage, actix_ws::ProtocolError>> for Session {
    fn handle(
        &mut self,
        item: Result<AggregatedMessage, actix_ws::ProtocolError>,
        ctx: &mut Self::Context,
    ) {
        if self.closing {
            return;
        }
        match item {
            Ok(AggregatedMessage::Text(text)) if self.echo => self.echo_back(text.into(), ctx),
            Ok(AggregatedMessage::Binary(data)) if self.echo => {
                self.echo_back(Outgoing::Binary(data), ctx)
            }
            Ok(AggregatedMessage::Text(text)) => self.on_text(&text, ctx),
            Ok(AggregatedMessage::Binary(_)) => {
                return self.close(ctx, close::UNSUPPORTED, "binary frames are not supported");
            }
            Ok(AggregatedMessage::Ping(payload)) => {
                if self.pending_pongs.len() == MAX_PENDING_PONGS {
                    self.pending_pongs.pop_front();
                }
                self.pending_pongs.push_back(payload);
            }
            // WebSocket Pongs say nothing about the application (PROTOCOL.md 5).
            Ok(AggregatedMessage::Pong(_)) => {}
            Ok(AggregatedMessage::Close(reason)) => {
                let code = reason.as_ref().map_or(1005, |r| u16::from(r.code));
                self.closing = true;
                self.close_code = code;
                if let Some(ws) = self.ws.take() {
                    actix_rt::spawn(async move {
                        let _ = tokio::time::timeout(CLOSE_TIMEOUT, ws.close(reason)).await;
                    });
                }
                return ctx.stop();
            }
            Err(actix_ws::ProtocolError::Overflow) => {
                return self.close(ctx, close::TOO_BIG, "message too big");
            }
            // actix-ws reports joined fragments over the limit only as this I/O
            // error; tests/limits.rs pins the mapping to 1009.
            Err(actix_ws::ProtocolError::Io(e))
                if e.kind() == std::io::ErrorKind::Other
                    && e.to_string().contains("maximum continuation size") =>
            {
                return self.close(ctx, close::TOO_BIG, "message too big");
            }
            Err(actix_ws::ProtocolError::Io(e)) if is_invalid_utf8(&e) => {
                return self.close(ctx, close::INVALID_UTF8, "invalid UTF-8");
            }
            // The peer went away mid-frame (no close frame): 1006, not a protocol
            // error; there is nobody to send a close frame to.
            Err(actix_ws::ProtocolError::Io(e)) if peer_vanished(&e) => {
                self.closing = true;
                self.close_code = 1006;
                return ctx.stop();
            }
            Err(e) => {
                debug!(session = %self.name, error = %e, "protocol error");
                return self.close(ctx, close::PROTOCOL, "protocol error");
            }
        }
        self.flush(ctx);
    }

    fn finished(&mut self, ctx: &mut Self::Context) {
        if !self.closing {
            self.closing = true;
            self.close_code = 1006;
        }
        ctx.stop();
    }
}

impl Handler<Wake> for Session {
    type Result = ();

    fn handle(&mut self, _msg: Wake, ctx: &mut Self::Context) {
        self.inbox.woken();
        if self.closing {
            return;
        }
        self.drain_inbox(ctx);
        self.flush(ctx);
    }
}

impl Handler<Shutdown> for Session {
    type Result = ();

    fn handle(&mut self, _msg: Shutdown, ctx: &mut Self::Context) {
        self.close(ctx, close::GOING_AWAY, "server shutting down");
    }
}
