//! The session actor: one per WebSocket connection (docs/protocol.md, sections 2–7).
//!
//! On a WebSocket it owns the connection itself (`socket/`): it reads the client's
//! messages in its own task and writes frames straight from a byte-bounded
//! [`Outbound`] queue into the socket. It runs the JSON heartbeat and the rate
//! limiter and keeps the connection's subscriptions. Topics deliver into its
//! [`Inbox`] and wake its task, which drains the inbox on its next [`Turn`].
//!
//! Writing: whatever is queued goes into the socket at once, many frames per
//! system call; what the socket cannot take stays queued, counted against the
//! queue's bound, until it is writable again. A client that stops reading therefore
//! costs at most its queue bound, never more: events past it are dropped and
//! reported as `lagged`, or the connection is closed with 4009.
//!
//! ## Layout
//! - this file: the actor, its lifecycle, heartbeat and the frames it reads;
//! - `ops.rs`: what a client message asks for (subscribe, publish, auth, …);
//! - `replay.rs`: which history each subscribe replays (pure);
//! - `socket/`: the WebSocket connection the session owns: reading, framing,
//!   writing, closing, permessage-deflate;
//! - `writer.rs`: the writer state, SSE's single write in flight, and closing;
//! - `inbox.rs`, `outbound.rs`, `ratelimit.rs`: the byte-bounded inbox topics
//!   deliver into, the outbound queue, the per-connection rate limit;
//! - `subscriptions.rs`: the patterns the connection holds.
//!
//! Echo mode (the test-only `/echo` route, `server.conformance_echo`; see
//! docs/conformance.md) is a branch of this same session: it sends every text and
//! binary message back unchanged instead of parsing JSON, and sends no `welcome` and
//! no JSON pings. Frame handling, limits, pongs and close codes stay the ones below.

pub(crate) mod inbox;
mod ops;
pub(crate) mod outbound;
pub(crate) mod ratelimit;
mod replay;
pub(crate) mod socket;
pub(crate) mod sse;
mod subscriptions;
mod writer;

use std::collections::VecDeque;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context as Task, Poll};
use std::time::{Duration, Instant};

use actix::prelude::*;
use bytes::Bytes;
use bytestring::ByteString;
use tracing::info;

use crate::auth::Identity;
use crate::broker::Broker;
use crate::http::admission::Permit;
use crate::metrics::METRICS;
use crate::protocol::{close, Heartbeat, Limits, ServerMessage, SUBPROTOCOL};
use crate::topics::message::{Shutdown, Subscriber};
use inbox::Inbox;
pub(crate) use ops::check_patterns;
use outbound::Outbound;
use ratelimit::RateLimiter;
use socket::Socket;
use subscriptions::Subscriptions;
pub(crate) use writer::Sink;
use writer::Writer;

/// What an event stream subscribes to when it opens (`GET /sse`).
#[derive(Debug)]
pub(crate) struct StreamStart {
    pub topics: Vec<String>,
    pub last: Option<u32>,
    pub resumed: Option<sse::LastEventId>,
}

/// The JSON heartbeat, identical for every connection: built once, shared.
static PING: ByteString = ByteString::from_static(r#"{"type":"ping"}"#);

/// Most WebSocket Pings waiting for their Pong. Past it the oldest is not answered
/// (RFC 6455 5.5.3 allows answering only the latest), so a client that pings but
/// never reads costs a bounded amount.
pub(crate) const MAX_PENDING_PONGS: usize = 16;

/// Number of the next session (process-unique; the dedup key topics use).
static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// One WebSocket connection.
pub(crate) struct Session {
    /// Process-unique number.
    id: u64,
    /// Public id in `welcome` and logs (random, not guessable from `id`).
    name: String,
    broker: Broker,
    /// Who the client is; `None` until authenticated (auth on, first-message auth).
    identity: Option<Identity>,
    /// Over SSE: the sender of the final `close` message (consumed by `close`).
    closer: Option<sse::SseSink>,
    /// On a WebSocket: the connection, which the session reads and writes itself.
    socket: Option<Socket>,
    /// Over SSE: what the stream has delivered, for its resume ids.
    sse: Option<sse::Positions>,
    /// Where writing stands: idle with the writer, a write in flight, or closing.
    writer: Writer,
    /// What waits to be written, bounded in bytes.
    out: Outbound,
    /// Payloads of the WebSocket Pings not yet answered, oldest first; each gets its
    /// own Pong, written before the queued frames.
    pending_pongs: VecDeque<Bytes>,
    /// The patterns this connection holds.
    subscriptions: Subscriptions,
    /// How topics reach this session; made on first subscribe.
    me: Option<Subscriber>,
    /// Where topics put frames for this session.
    inbox: Inbox,
    /// Client messages per second (`session.rate_limit_*`).
    limiter: RateLimiter,
    /// When the client last sent anything (heartbeat timeout).
    last_seen: Instant,
    /// When the last JSON ping went out.
    last_ping: Instant,
    /// When the connection opened (authentication timeout, logs).
    opened: Instant,
    /// The close code recorded in metrics and logs when the session stops.
    close_code: u16,
    /// The client's address, for logs.
    ip: Option<IpAddr>,
    /// Echo mode (`server.conformance_echo`, test-only): messages go back unchanged.
    echo: bool,
    /// Over SSE: what the stream subscribes to once it has started.
    start: Option<StreamStart>,
    /// The connection's slot under `server.max_connections`; freed on drop.
    _permit: Permit,
}

impl Session {
    /// A session for an upgraded connection or an event stream.
    pub(crate) fn new(
        broker: Broker,
        sink: Sink,
        identity: Option<Identity>,
        ip: Option<IpAddr>,
        permit: Permit,
    ) -> Self {
        let cfg = &broker.config().session;
        let now = Instant::now();
        let sse = matches!(sink, Sink::Sse(_)).then(|| sse::Positions::new(broker.epoch(), None));
        let (writer, closer, socket) = match sink {
            Sink::WebSocket(socket) => (Writer::Socket, None, Some(socket)),
            Sink::Sse(tx) => (Writer::Idle(tx.clone()), Some(tx), None),
        };
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
            sse,
            writer,
            closer,
            socket,
            pending_pongs: VecDeque::new(),
            subscriptions: Subscriptions::default(),
            me: None,
            last_seen: now,
            last_ping: now,
            opened: now,
            close_code: close::GOING_AWAY,
            identity,
            ip,
            echo: false,
            start: None,
            _permit: permit,
            broker,
        }
    }

    /// Turns echo mode on (the `/echo` route): every text and binary message is sent
    /// back unchanged instead of being parsed as JSON. Test-only, for the Autobahn
    /// conformance run (docs/conformance.md).
    pub(crate) fn echo(mut self, on: bool) -> Self {
        self.echo = on;
        self
    }

    /// Over SSE: subscribes to `start` once the stream is open. The request was
    /// checked before the stream started ([`ops::check_patterns`]), so that errors
    /// are an HTTP status.
    pub(crate) fn stream(mut self, start: StreamStart) -> Self {
        self.start = Some(start);
        self
    }

    /// Its transport, for metrics.
    fn transport(&self) -> crate::metrics::Transport {
        if self.is_stream() {
            crate::metrics::Transport::Sse
        } else {
            crate::metrics::Transport::WebSocket
        }
    }

    /// Whether this session is an event stream, which the client cannot write to:
    /// no heartbeat timeout, nothing to read.
    fn is_stream(&self) -> bool {
        self.sse.is_some()
    }

    /// Subscribes an event stream as it opens: with `resume` from its
    /// `Last-Event-ID` or `?resume=`, and `last` for the patterns of which it names no
    /// topic (new to the stream, or quiet on it: their events were never delivered,
    /// so history cannot duplicate any). An id that had to forget topics cannot say
    /// what those missed: then nothing is replayed, every pattern gets a `reset` (the
    /// reset names the pattern), and the stream's positions start afresh. A stream of
    /// no pattern (`topics=`) subscribes to nothing: welcome and pings.
    fn start_stream(&mut self, start: StreamStart, ctx: &mut Context<Self>) {
        let epoch = self.broker.epoch().to_owned();
        let forgot = start.resumed.as_ref().filter(|l| l.overflow).map(|l| {
            if l.epoch == epoch {
                crate::protocol::ResetReason::HistoryExpired
            } else {
                crate::protocol::ResetReason::EpochChanged
            }
        });
        let resumed = start.resumed.filter(|_| forgot.is_none());
        self.sse = Some(sse::Positions::new(&epoch, resumed.as_ref()));
        if start.topics.is_empty() {
            return;
        }
        let resume = resumed.map(|l| crate::protocol::Resume {
            topics: l.topics(),
            epoch: l.epoch,
        });
        let last = if forgot.is_some() { None } else { start.last };
        if let Err(err) = self.subscribe(start.topics.clone(), last, resume, &None, ctx) {
            self.reply_error(&None, &err, ctx);
            return;
        }
        if let Some(reason) = forgot {
            for pattern in &start.topics {
                let frame = ServerMessage::Reset {
                    topic: pattern,
                    reason,
                }
                .to_frame();
                self.control(frame, ctx);
            }
        }
    }

    pub(super) fn welcome(&mut self, ctx: &mut Context<Self>) {
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

    pub(super) fn heartbeat(&mut self, ctx: &mut Context<Self>) {
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
            .is_some_and(|exp| crate::clock::now_secs() >= exp);
        if expired {
            info!(session = %self.name, "credentials expired");
            return self.close(ctx, close::UNAUTHORIZED, "token expired");
        }
        if now.duration_since(self.last_seen) >= window && !self.is_stream() {
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
        METRICS.connection_opened(self.transport());
        self.broker
            .sessions()
            .insert(self.id, ctx.address().recipient());
        let subject = self.identity.as_ref().and_then(|i| i.subject.as_deref());
        let compression = self.socket.as_ref().map_or("none", Socket::compression);
        info!(session = %self.name, ip = ?self.ip, subject = subject.unwrap_or("-"), compression, "session opened");
        // Before anything is queued: its first turn writes (a close frame too).
        ctx.spawn(Turn);
        // Upgraded while shutdown began: shutdown's walk of the directory may have
        // missed this session, but the flag was set before that walk.
        if self.broker.is_shutting_down() {
            return self.close(ctx, close::GOING_AWAY, "server shutting down");
        }
        if let Some(tx) = &self.closer {
            // The client went away: the response body (the receiver) is dropped.
            let tx = tx.clone();
            let gone = async move { tx.closed().await };
            ctx.spawn(gone.into_actor(self).map(|(), act, ctx| {
                act.vanished();
                ctx.stop();
            }));
        }
        if self.identity.is_some() && !self.echo {
            self.welcome(ctx);
            if let Some(start) = self.start.take() {
                self.start_stream(start, ctx);
            }
            self.flush(ctx);
        }
    }

    fn stopped(&mut self, _ctx: &mut Self::Context) {
        for p in self.subscriptions.iter() {
            self.broker.registry().unsubscribe(self.id, p);
        }
        METRICS.subscriptions_changed(-(self.subscriptions.len() as i64));
        METRICS.connection_closed(self.transport(), self.close_code);
        info!(
            session = %self.name,
            code = self.close_code,
            duration_ms = self.opened.elapsed().as_millis() as u64,
            "session closed"
        );
        // Last: graceful shutdown waits for the directory to empty, so everything a
        // session does as it stops (its log line included) comes before shutdown
        // moves on to the bridges.
        self.broker.sessions().remove(self.id);
    }
}

/// A session's own work each time its task wakes (a delivery, the socket, a timer):
/// an item of its actix context, polled right after its mailbox. On a WebSocket it
/// is the socket's pump (read, drain the inbox, write); on an event stream, draining
/// the inbox and writing.
struct Turn;

impl ActorFuture<Session> for Turn {
    type Output = ();

    fn poll(
        self: Pin<&mut Self>,
        act: &mut Session,
        ctx: &mut Context<Session>,
        task: &mut Task<'_>,
    ) -> Poll<()> {
        if act.socket.is_some() {
            return act.pump(ctx, task);
        }
        if act.take_inbox(ctx, task) {
            act.flush(ctx);
        }
        Poll::Pending
    }
}

impl Handler<Shutdown> for Session {
    type Result = ();

    fn handle(&mut self, _msg: Shutdown, ctx: &mut Self::Context) {
        self.close(ctx, close::GOING_AWAY, "server shutting down");
    }
}
