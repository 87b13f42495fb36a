//! Connecting to NATS: the server list, the client's options and event callback
//! (status and counters follow the connection), and the first connection retried
//! with backoff until it succeeds.

use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use tracing::{info, warn};

use super::{ClientSlot, NatsError, NatsSettings};
use crate::backoff::Backoff;
use crate::topic::Pattern;
use crate::{BridgeCounters, BridgeStatus, EventSink, StatusSink};

/// Parses `url` (one URL or several, comma-separated) into server addresses. An
/// error names the URL by its position, never by its text (it may hold a password).
pub fn server_addrs(url: &str) -> Result<Vec<async_nats::ServerAddr>, String> {
    url.split(',')
        .map(str::trim)
        .filter(|u| !u.is_empty())
        .enumerate()
        .map(|(i, u)| {
            u.parse::<async_nats::ServerAddr>()
                .map_err(|e| format!("URL {} of the list: {e}", i + 1))
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

/// What the client's event callback shares with the bridge.
#[derive(Clone)]
pub(super) struct Shared {
    /// Where the bridge's status goes.
    pub(super) status: StatusSink,
    /// The bridge's counters (`connected`, disconnects, reconnects, slow consumer).
    pub(super) counters: Arc<BridgeCounters>,
    /// Set once subscriptions (or the JetStream consumer) exist, so a first
    /// `Connected` event cannot report Ready before they do.
    pub(super) subscribed: Arc<AtomicBool>,
    /// The connection, once made (a flush on reconnect proves re-subscription).
    pub(super) slot: ClientSlot,
    /// Told when the connection is closed for good (after a drain).
    pub(super) closed: Arc<tokio::sync::Notify>,
    /// Where the bridge's events go: told of a lost connection.
    pub(super) sink: Arc<dyn EventSink>,
    /// The topics the bridge's core subscriptions map to: what may miss events while
    /// the connection is down. Empty for a JetStream consumer, which resumes where it
    /// was and misses nothing.
    pub(super) ranges: Arc<[Pattern]>,
    /// Set when a slow-consumer drop has been marked, cleared by the next message
    /// the bridge forwards: one mark per stretch of drops, not one per report.
    pub(super) drop_marked: Arc<AtomicBool>,
}

/// The options every connection of a bridge's settings uses: credentials, TLS, the
/// client name and the connection timeout.
pub(super) async fn base_options(
    s: &NatsSettings,
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
    Ok(opts
        .require_tls(s.tls_required)
        .name(format!("herald-{}", s.name))
        .connection_timeout(Duration::from_secs(5)))
}

async fn options(
    s: &NatsSettings,
    shared: &Shared,
) -> Result<async_nats::ConnectOptions, NatsError> {
    let name = s.name.clone();
    let shared = shared.clone();
    Ok(base_options(s)
        .await?
        .subscription_capacity(s.subscription_capacity.max(1))
        // No `retry_on_initial_connect`: `connect_with_retry` retries the first
        // connection itself, because only a failed `connect` returns the whole error
        // (async-nats' events carry just its kind, such as "IO error").
        .max_reconnects(None)
        .event_callback(move |event| {
            let Shared {
                status,
                counters,
                subscribed,
                slot,
                closed,
                sink,
                ranges,
                drop_marked,
            } = shared.clone();
            let name = name.clone();
            async move {
                match event {
                    // The connection is closed for good (after a drain): the bridge
                    // waits for this before it says it stopped.
                    async_nats::Event::Closed => {
                        counters.connected.store(false, std::sync::atomic::Ordering::Relaxed);
                        closed.notify_one();
                    }
                    async_nats::Event::Connected => {
                        counters.connected.store(true, std::sync::atomic::Ordering::Relaxed);
                        if counters.disconnects.load(std::sync::atomic::Ordering::Relaxed) > 0 {
                            counters.add(&counters.reconnects, 1);
                        }
                        info!(bridge = %name, "nats connected");
                        // The first Connected comes before the bridge has subscribed: it
                        // reports Ready itself then.
                        if subscribed.load(std::sync::atomic::Ordering::Acquire) {
                            // Connected can precede the re-subscriptions; a flush is
                            // queued behind them, so once it completes they are written
                            // to the server (async-nats' flush does not wait for an
                            // answer: one round trip later they are in effect).
                            if let Some(client) = slot.get() {
                                let _ = client.flush().await;
                            }
                            status(BridgeStatus::Ready);
                        }
                    }
                    async_nats::Event::Disconnected => {
                        counters.connected.store(false, std::sync::atomic::Ordering::Relaxed);
                        counters.add(&counters.disconnects, 1);
                        // What the source publishes from now until the subscriptions
                        // are back never reaches this node. The client sends this
                        // event before it tries to reconnect, so the mark comes
                        // before any message received after the reconnection.
                        if subscribed.load(std::sync::atomic::Ordering::Acquire)
                            && !ranges.is_empty()
                        {
                            sink.interrupted(&ranges);
                        }
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
                        // The client dropped messages: mark the loss once for this
                        // stretch of drops (the report comes a little after the drop,
                        // so the mark may land a few events late, never not at all).
                        if !ranges.is_empty() && !drop_marked.swap(true, std::sync::atomic::Ordering::AcqRel) {
                            sink.interrupted(&ranges);
                        }
                        if before % 1000 == 0 {
                            warn!(bridge = %name, total = before + 1, "nats slow consumer: messages dropped by the client");
                        }
                    }
                    other => info!(bridge = %name, event = %other, "nats event"),
                }
            }
        }))
}

/// Attempts spaced out by a [`Backoff`], and a log that does not repeat itself: one
/// line when an error first appears or changes, then at most one per
/// [`RETRY_LOG_EVERY`] while it stays the same.
pub(super) struct Retry {
    backoff: Backoff,
    /// Attempts so far, the failed ones and the one in progress.
    pub(super) attempts: u64,
    /// The error last logged, and when.
    logged: Option<(String, tokio::time::Instant)>,
}

/// While the same error repeats, it is logged again at most this often.
const RETRY_LOG_EVERY: Duration = Duration::from_secs(30);

impl Retry {
    pub(super) fn new(first: Duration, max: Duration) -> Self {
        Retry {
            backoff: Backoff::new(first, max),
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
        let wait = self.backoff.failed();
        self.attempts += 1;
        (due, wait)
    }

    /// Logs a failed attempt (when due) and waits before the next one.
    pub(super) async fn failed(&mut self, bridge: &str, error: String) {
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
pub(super) async fn connect_with_retry(
    s: &NatsSettings,
    addrs: &[async_nats::ServerAddr],
    shared: &Shared,
) -> Result<async_nats::Client, NatsError> {
    let mut retry = Retry::new(CONNECT_RETRY_FIRST, CONNECT_RETRY_MAX);
    loop {
        // Built again for every attempt: `connect` consumes the options.
        let opts = options(s, shared).await?;
        match opts.connect(addrs.to_vec()).await {
            Ok(client) => {
                if retry.attempts > 1 {
                    info!(bridge = %s.name, attempts = retry.attempts, "nats connected after retrying");
                }
                return Ok(client);
            }
            Err(e) => {
                let error = format!("cannot connect to NATS: {e}");
                (shared.status)(BridgeStatus::Down(format!("{error}; retrying")));
                retry.failed(&s.name, error).await;
            }
        }
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
}
