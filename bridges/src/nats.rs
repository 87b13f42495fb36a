//! The NATS bridge: core NATS subscriptions (wildcards allowed) mapped to Herald
//! topics, one connection per `[[bridge.nats]]` entry.
//!
//! Delivery through NATS is at-most-once too: core NATS does not redeliver. The
//! bridge never blocks the NATS client on a slow broker: it hands each message to
//! the broker with `try_send` and counts what does not fit. async-nats reconnects by
//! itself (forever, with backoff) and re-subscribes on reconnect; the bridge reports
//! `Down` while disconnected and `Ready` once its subscriptions are flushed to the
//! server again, so `/readyz` tells a load balancer the truth. While it cannot
//! connect, the reason is the last attempt's error (a TLS error, an authorization
//! violation, …). A JetStream start whose stream is missing retries with capped
//! exponential backoff (250 ms doubling to 30 s), Down with the error meanwhile.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use futures_util::StreamExt as _;
use tracing::{info, warn};

/// The NATS client crate, for code that publishes through a bridge's connection.
pub use async_nats;

use crate::{BridgeCounters, BridgeEvent, BridgeStatus, EventSink, Source, StatusSink};

pub use crate::config::{Deliver, JetStreamStart, NatsSettings};

/// Maps a subject to a Herald topic: strip `strip_prefix` when present, then prepend
/// `topic_prefix`. The result is validated by the topic layer (invalid topics are
/// dropped and counted there).
pub fn topic_for(subject: &str, strip_prefix: &str, topic_prefix: &str) -> String {
    let rest = if strip_prefix.is_empty() {
        subject
    } else {
        subject.strip_prefix(strip_prefix).unwrap_or(subject)
    };
    format!("{topic_prefix}{rest}")
}

/// Parses `url` (one URL or several, comma-separated) into server addresses.
pub fn server_addrs(url: &str) -> Result<Vec<async_nats::ServerAddr>, String> {
    url.split(',')
        .map(str::trim)
        .filter(|u| !u.is_empty())
        .map(|u| {
            u.parse::<async_nats::ServerAddr>()
                .map_err(|e| format!("`{u}`: {e}"))
        })
        .collect::<Result<Vec<_>, _>>()
        .and_then(|v| {
            if v.is_empty() {
                Err("no URL".to_owned())
            } else {
                Ok(v)
            }
        })
}

/// Errors setting up a NATS connection.
#[derive(Debug, thiserror::Error)]
pub enum NatsError {
    #[error("cannot read {what} {path}: {source}")]
    Credentials {
        what: &'static str,
        path: String,
        source: std::io::Error,
    },
    #[error("cannot connect to {url}: {message}")]
    Connect { url: String, message: String },
    #[error("JetStream stream {stream}: {message}")]
    JetStream { stream: String, message: String },
    #[error("cannot subscribe to {subject}: {message}")]
    Subscribe { subject: String, message: String },
}

/// The bridge's connection, once made, for publishing through it (the cluster
/// backplane). async-nats reconnects behind the same handle.
pub type ClientSlot = Arc<std::sync::OnceLock<async_nats::Client>>;

/// Header carrying an event's original `source` through the backplane.
pub const SOURCE_HEADER: &str = "Herald-Source";
/// Header carrying an event's `key` through the backplane.
pub const KEY_HEADER: &str = "Herald-Key";

/// The NATS bridge actor.
pub struct NatsBridge {
    settings: Arc<NatsSettings>,
    sink: EventSink,
    status: StatusSink,
    counters: Arc<BridgeCounters>,
    client: ClientSlot,
}

impl NatsBridge {
    pub fn new(
        settings: NatsSettings,
        sink: EventSink,
        status: StatusSink,
        counters: Arc<BridgeCounters>,
        client: ClientSlot,
    ) -> Self {
        NatsBridge {
            settings: Arc::new(settings),
            sink,
            status,
            counters,
            client,
        }
    }
}

/// Builds the event for a NATS message. `Herald-Source` and `Herald-Key` headers
/// (set by a Herald node publishing through the backplane) restore the event's
/// source and key; other headers pass through, multiple values joined by `,`.
pub fn event_for(s: &NatsSettings, msg: async_nats::Message) -> BridgeEvent {
    let mut headers = BTreeMap::new();
    let mut source = Source::Nats;
    let mut key = None;
    if let Some(h) = &msg.headers {
        for (name, values) in h.iter() {
            let joined: Vec<&str> = values.iter().map(|v| v.as_str()).collect();
            let value = joined.join(",");
            match name.as_ref() {
                SOURCE_HEADER => {
                    source = match value.as_str() {
                        "http" => Source::Http,
                        "ws" => Source::Ws,
                        "kafka" => Source::Kafka,
                        _ => Source::Nats,
                    }
                }
                KEY_HEADER => key = Some(value),
                _ => {
                    headers.insert(name.to_string(), value);
                }
            }
        }
    }
    BridgeEvent {
        topic: topic_for(msg.subject.as_str(), &s.strip_prefix, &s.topic_prefix),
        payload: msg.payload,
        key,
        headers,
        source,
    }
}

async fn options(
    s: &NatsSettings,
    status: StatusSink,
    counters: Arc<BridgeCounters>,
    subscribed: Arc<std::sync::atomic::AtomicBool>,
    slot: ClientSlot,
) -> Result<async_nats::ConnectOptions, NatsError> {
    let mut opts = if !s.creds_file.is_empty() {
        async_nats::ConnectOptions::with_credentials_file(&s.creds_file)
            .await
            .map_err(|source| NatsError::Credentials {
                what: "creds file",
                path: s.creds_file.clone(),
                source,
            })?
    } else if !s.nkey.is_empty() {
        async_nats::ConnectOptions::with_nkey(s.nkey.clone())
    } else if !s.token.is_empty() {
        async_nats::ConnectOptions::with_token(s.token.clone())
    } else if !s.user.is_empty() {
        async_nats::ConnectOptions::with_user_and_password(s.user.clone(), s.password.clone())
    } else {
        async_nats::ConnectOptions::new()
    };
    if !s.tls_ca_file.is_empty() {
        opts = opts.add_root_certificates(s.tls_ca_file.clone().into());
    }
    if !s.tls_cert_file.is_empty() {
        opts = opts.add_client_certificate(
            s.tls_cert_file.clone().into(),
            s.tls_key_file.clone().into(),
        );
    }
    let name = s.name.clone();
    Ok(opts
        .require_tls(s.tls_required)
        .name(format!("herald-{}", s.name))
        .subscription_capacity(s.subscription_capacity.max(1))
        // No `retry_on_initial_connect`: `connect_with_retry` retries the first
        // connection itself, because only a failed `connect` returns the whole error
        // (async-nats' events carry just its kind, such as "IO error").
        .max_reconnects(None)
        .connection_timeout(Duration::from_secs(5))
        .event_callback(move |event| {
            let status = status.clone();
            let counters = counters.clone();
            let name = name.clone();
            let subscribed = subscribed.clone();
            let slot = slot.clone();
            async move {
                match event {
                    async_nats::Event::Connected => {
                        counters.connected.store(true, std::sync::atomic::Ordering::Relaxed);
                        if counters.disconnects.load(std::sync::atomic::Ordering::Relaxed) > 0 {
                            counters.add(&counters.reconnects, 1);
                        }
                        info!(bridge = %name, "nats connected");
                        // The first Connected comes before `run` has subscribed: `run`
                        // reports Ready itself then.
                        if subscribed.load(std::sync::atomic::Ordering::Acquire) {
                            // Connected can precede the re-subscriptions; a flush is
                            // queued behind them, so its PONG proves they are in effect.
                            if let Some(client) = slot.get() {
                                let _ = client.flush().await;
                            }
                            status(BridgeStatus::Ready);
                        }
                    }
                    async_nats::Event::Disconnected => {
                        counters.connected.store(false, std::sync::atomic::Ordering::Relaxed);
                        counters.add(&counters.disconnects, 1);
                        warn!(bridge = %name, "nats disconnected; reconnecting");
                        status(BridgeStatus::Down("disconnected from NATS; reconnecting".into()));
                    }
                    async_nats::Event::ClientError(e) => {
                        // A failed reconnect attempt. One line per attempt: async-nats
                        // spaces them out (up to 4 s apart), so this cannot flood the log.
                        info!(bridge = %name, event = %e, "nats event");
                        // The event carries only the kind of error (an authorization
                        // violation, an IO error), but that still helps say why.
                        if !counters.connected.load(std::sync::atomic::Ordering::Relaxed) {
                            let why = match e {
                                async_nats::ClientError::Other(why) => why,
                                other => other.to_string(),
                            };
                            status(BridgeStatus::Down(format!(
                                "disconnected from NATS; reconnecting (last attempt: {why})"
                            )));
                        }
                    }
                    async_nats::Event::SlowConsumer(_) => {
                        // Logged at most once per 1000 drops: a slow consumer is a
                        // storm, not an event.
                        let before = counters.add(&counters.slow_consumer, 1);
                        if before % 1000 == 0 {
                            warn!(bridge = %name, total = before + 1, "nats slow consumer: messages dropped by the client");
                        }
                    }
                    other => info!(bridge = %name, event = %other, "nats event"),
                }
            }
        }))
}

/// Capped exponential backoff between attempts at something that fails until the
/// world changes (a server that is not up yet, a stream nobody created yet), and a
/// log that does not repeat itself: one line when an error first appears or changes,
/// then at most one per [`RETRY_LOG_EVERY`] while it stays the same.
struct Retry {
    /// The wait after the next failure; doubles up to `max`.
    delay: Duration,
    max: Duration,
    /// Attempts so far, the failed ones and the one in progress.
    attempts: u64,
    /// The error last logged, and when.
    logged: Option<(String, tokio::time::Instant)>,
}

/// While the same error repeats, it is logged again at most this often.
const RETRY_LOG_EVERY: Duration = Duration::from_secs(30);

impl Retry {
    fn new(first: Duration, max: Duration) -> Self {
        Retry {
            delay: first,
            max,
            attempts: 1,
            logged: None,
        }
    }

    /// Counts a failed attempt: whether to log `error` now, and how long to wait
    /// before the next attempt.
    fn record(&mut self, error: &str) -> (bool, Duration) {
        let due = self
            .logged
            .as_ref()
            .is_none_or(|(last, at)| last != error || at.elapsed() >= RETRY_LOG_EVERY);
        if due {
            self.logged = Some((error.to_owned(), tokio::time::Instant::now()));
        }
        let wait = self.delay;
        self.delay = (self.delay * 2).min(self.max);
        self.attempts += 1;
        (due, wait)
    }

    /// Logs a failed attempt (when due) and waits before the next one.
    async fn failed(&mut self, bridge: &str, error: String) {
        let attempts = self.attempts;
        let (due, wait) = self.record(&error);
        if due {
            warn!(
                bridge = %bridge,
                error = %error,
                attempts,
                retry_in_ms = u64::try_from(wait.as_millis()).unwrap_or(u64::MAX),
                "nats bridge attempt failed; retrying with backoff"
            );
        }
        tokio::time::sleep(wait).await;
    }
}

/// First delay before trying the first connection again.
const CONNECT_RETRY_FIRST: Duration = Duration::from_millis(250);
/// Largest delay between two attempts at the first connection (as async-nats'
/// reconnects).
const CONNECT_RETRY_MAX: Duration = Duration::from_secs(4);

/// The first connection, retried forever. Each failure reports the bridge Down with
/// the whole error ("cannot connect to NATS: IO error: invalid peer certificate:
/// UnknownIssuer"); the URL is left out, as it may hold a password. Once connected,
/// async-nats reconnects by itself.
async fn connect_with_retry(
    s: &NatsSettings,
    addrs: &[async_nats::ServerAddr],
    status: &StatusSink,
    counters: &Arc<BridgeCounters>,
    subscribed: &Arc<std::sync::atomic::AtomicBool>,
    slot: &ClientSlot,
) -> Result<async_nats::Client, NatsError> {
    let mut retry = Retry::new(CONNECT_RETRY_FIRST, CONNECT_RETRY_MAX);
    loop {
        // Built again for every attempt: `connect` consumes the options.
        let opts = options(
            s,
            status.clone(),
            counters.clone(),
            subscribed.clone(),
            slot.clone(),
        )
        .await?;
        match opts.connect(addrs.to_vec()).await {
            Ok(client) => {
                if retry.attempts > 1 {
                    info!(bridge = %s.name, attempts = retry.attempts, "nats connected after retrying");
                }
                return Ok(client);
            }
            Err(e) => {
                let error = format!("cannot connect to NATS: {e}");
                status(BridgeStatus::Down(format!("{error}; retrying")));
                retry.failed(&s.name, error).await;
            }
        }
    }
}

async fn run(
    settings: Arc<NatsSettings>,
    sink: EventSink,
    status: StatusSink,
    counters: Arc<BridgeCounters>,
    slot: ClientSlot,
) -> Result<(), NatsError> {
    let s = &*settings;
    // Set once subscriptions (or the JetStream consumer) exist, so a first
    // `Connected` event cannot report Ready before they do.
    let subscribed = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let addrs = server_addrs(&s.url).map_err(|message| NatsError::Connect {
        url: s.url.clone(),
        message,
    })?;
    let client = connect_with_retry(s, &addrs, &status, &counters, &subscribed, &slot).await?;
    if let Some(start) = &s.jetstream {
        let mut messages = jetstream_consumer_with_retry(s, start, &client, &status).await;
        // The ordered consumer recreates itself after a lost connection, so a later
        // `Connected` may report Ready again (after its flush).
        subscribed.store(true, std::sync::atomic::Ordering::Release);
        counters
            .connected
            .store(true, std::sync::atomic::Ordering::Relaxed);
        status(BridgeStatus::Ready);
        info!(bridge = %s.name, stream = %start.stream, "nats bridge consuming from JetStream");
        let _ = slot.set(client);
        while let Some(msg) = messages.next().await {
            match msg {
                Ok(msg) => forward(s, msg.message, &sink, &counters),
                // The ordered consumer recreates itself after a gap or a lost
                // connection; an error here is reported and the stream goes on.
                Err(e) => warn!(bridge = %s.name, error = %e, "jetstream consumer"),
            }
        }
        return Ok(());
    }
    let mut subs = Vec::with_capacity(s.subjects.len());
    for subject in &s.subjects {
        let sub = client
            .subscribe(subject.clone())
            .await
            .map_err(|e| NatsError::Subscribe {
                subject: subject.clone(),
                message: e.to_string(),
            })?;
        subs.push(sub);
    }
    // Ready only once the server has the subscriptions (PING/PONG round trip).
    // The subscriptions exist now (async-nats re-creates them on reconnect), so a
    // later Connected may report Ready even if this first flush fails.
    subscribed.store(true, std::sync::atomic::Ordering::Release);
    if client.flush().await.is_ok() {
        counters
            .connected
            .store(true, std::sync::atomic::Ordering::Relaxed);
        status(BridgeStatus::Ready);
        info!(bridge = %s.name, subjects = ?s.subjects, "nats bridge subscribed");
    }
    let mut messages = futures_util::stream::select_all(subs);
    let _ = slot.set(client);
    while let Some(msg) = messages.next().await {
        forward(s, msg, &sink, &counters);
    }
    Ok(())
}

/// Hands one message to the broker without waiting; a full hand-off is counted.
fn forward(
    s: &NatsSettings,
    msg: async_nats::Message,
    sink: &EventSink,
    counters: &BridgeCounters,
) {
    counters.add(&counters.received, 1);
    if sink.try_send(event_for(s, msg)).is_err() {
        counters.add(&counters.dropped, 1);
    }
}

/// First delay before setting up the JetStream consumer again after a failure.
const JETSTREAM_RETRY_FIRST: Duration = Duration::from_millis(250);
/// Largest delay between two attempts at the JetStream consumer.
const JETSTREAM_RETRY_MAX: Duration = Duration::from_secs(30);

/// [`jetstream_consumer`], retried until it succeeds: a missing stream (or
/// JetStream not being available yet) is usually fixed without restarting Herald,
/// by whoever creates the stream. Meanwhile the bridge is Down with the error.
async fn jetstream_consumer_with_retry(
    s: &NatsSettings,
    start: &JetStreamStart,
    client: &async_nats::Client,
    status: &StatusSink,
) -> async_nats::jetstream::consumer::push::Ordered {
    let mut retry = Retry::new(JETSTREAM_RETRY_FIRST, JETSTREAM_RETRY_MAX);
    loop {
        match jetstream_consumer(s, start, client).await {
            Ok(messages) => {
                if retry.attempts > 1 {
                    info!(bridge = %s.name, stream = %start.stream, attempts = retry.attempts, "jetstream consumer created after retrying");
                }
                return messages;
            }
            Err(e) => {
                let error = e.to_string();
                status(BridgeStatus::Down(format!("{error}; retrying")));
                retry.failed(&s.name, error).await;
            }
        }
    }
}

/// The ordered consumer of a JetStream start. One subject uses `filter_subject`
/// (any nats-server with JetStream); several use `filter_subjects` (2.10+).
async fn jetstream_consumer(
    s: &NatsSettings,
    start: &JetStreamStart,
    client: &async_nats::Client,
) -> Result<async_nats::jetstream::consumer::push::Ordered, NatsError> {
    use async_nats::jetstream::consumer::{push::OrderedConfig, DeliverPolicy};
    let err = |message: String| NatsError::JetStream {
        stream: start.stream.clone(),
        message,
    };
    let js = async_nats::jetstream::new(client.clone());
    let stream = js
        .get_stream(&start.stream)
        .await
        .map_err(|e| err(e.to_string()))?;
    let (filter_subject, filter_subjects) = match s.subjects.as_slice() {
        [one] => (one.clone(), Vec::new()),
        many => (String::new(), many.to_vec()),
    };
    let config = OrderedConfig {
        deliver_subject: client.new_inbox(),
        filter_subject,
        filter_subjects,
        deliver_policy: match start.deliver {
            Deliver::New => DeliverPolicy::New,
            Deliver::All => DeliverPolicy::All,
            Deliver::LastPerSubject => DeliverPolicy::LastPerSubject,
        },
        ..Default::default()
    };
    let consumer = stream
        .create_consumer(config)
        .await
        .map_err(|e| err(e.to_string()))?;
    consumer.messages().await.map_err(|e| err(e.to_string()))
}

impl Actor for NatsBridge {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        (self.status)(BridgeStatus::Starting);
        let fut = run(
            self.settings.clone(),
            self.sink.clone(),
            self.status.clone(),
            self.counters.clone(),
            self.client.clone(),
        );
        let status = self.status.clone();
        let name = self.settings.name.clone();
        ctx.spawn(
            async move {
                match fut.await {
                    Ok(()) => {
                        warn!(bridge = %name, "nats subscriptions ended");
                        status(BridgeStatus::Down("NATS subscriptions ended".into()));
                    }
                    Err(e) => {
                        warn!(bridge = %name, error = %e, "nats bridge failed");
                        status(BridgeStatus::Down(e.to_string()));
                    }
                }
            }
            .into_actor(self),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_back_off_to_a_cap_and_log_an_error_once_until_it_changes() {
        let mut retry = Retry::new(Duration::from_millis(250), Duration::from_secs(30));
        let mut waits = Vec::new();
        let mut logged = 0;
        for _ in 0..10 {
            let (due, wait) = retry.record("stream not found");
            waits.push(wait.as_millis());
            logged += usize::from(due);
        }
        assert_eq!(
            waits,
            [250, 500, 1000, 2000, 4000, 8000, 16000, 30000, 30000, 30000]
        );
        assert_eq!(logged, 1, "the same error is logged once per 30 s");
        assert!(retry.record("timed out").0, "a new error is logged at once");
        assert_eq!(retry.attempts, 12);
    }

    #[test]
    fn mapping_strips_then_prefixes() {
        assert_eq!(topic_for("events.orders.eu", "events.", ""), "orders.eu");
        assert_eq!(topic_for("events.orders.eu", "", ""), "events.orders.eu");
        assert_eq!(
            topic_for("events.orders.eu", "events.", "nats."),
            "nats.orders.eu"
        );
        // A subject without the prefix is kept whole.
        assert_eq!(topic_for("other.x", "events.", ""), "other.x");
    }
}
