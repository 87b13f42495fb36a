//! The NATS bridge: core NATS subscriptions (wildcards allowed) mapped to Herald
//! topics, one connection per `[[bridge.nats]]` entry.
//!
//! Delivery through NATS is at-most-once too: core NATS does not redeliver. The
//! bridge never blocks the NATS client on a slow broker: it hands each message to
//! the broker's sink, which never waits, and counts what does not fit. async-nats reconnects by
//! itself (forever, with backoff) and re-subscribes on reconnect; the bridge reports
//! `Down` while disconnected and `Ready` once its subscriptions are flushed to the
//! server again, so `/readyz` tells a load balancer the truth. While it cannot
//! connect, the reason is the last attempt's error (a TLS error, an authorization
//! violation, …). A JetStream start whose stream is missing retries with capped
//! exponential backoff (250 ms doubling to 30 s), Down with the error meanwhile.
//!
//! What core NATS carries while the connection is down never reaches this node, and
//! a slow consumer's drops are gone too: the bridge tells its sink
//! ([`crate::EventSink::interrupted`]) which topics may have missed events, so the
//! broker leaves a gap in their `seq`. A JetStream consumer resumes where it was and
//! marks nothing.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use futures_util::StreamExt as _;
use tracing::{info, warn};

/// The NATS client crate, for code that publishes through a bridge's connection.
pub use async_nats;

use crate::{BridgeContext, BridgeStatus};

pub use crate::config::{JetStreamDeliver, JetStreamStart, NatsSettings};
pub use connect::server_addrs;
pub use event::{
    event_for, event_from, is_system_subject, topic_for, topic_range, KEY_HEADER, SOURCE_HEADER,
};

mod connect;
mod event;
mod jetstream;

/// Errors setting up a NATS connection.
#[derive(Debug, thiserror::Error)]
pub enum NatsError {
    #[error("cannot read {what} {path}: {source}")]
    Credentials {
        what: &'static str,
        path: String,
        source: std::io::Error,
    },
    /// `url` (or one of its comma-separated URLs) does not parse. The message names
    /// the URL at fault.
    #[error("{0}")]
    Url(String),
    #[error("JetStream stream {stream}: {source}")]
    JetStream {
        stream: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("cannot subscribe to {subject}: {source}")]
    Subscribe {
        subject: String,
        #[source]
        source: async_nats::SubscribeError,
    },
}

/// The bridge's connection, once it exists (polled: the slot is filled once, when
/// the bridge has connected and subscribed). For code that talks over the
/// backplane's connection: the cluster ticket store, the cluster view.
pub async fn connection(slot: &ClientSlot) -> async_nats::Client {
    loop {
        if let Some(client) = slot.get() {
            return client.clone();
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// Longest time a stopping bridge waits for its connection to drain and close.
pub const DRAIN_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

/// The bridge's connection, once made, for publishing through it (the cluster
/// backplane). async-nats reconnects behind the same handle.
pub type ClientSlot = Arc<std::sync::OnceLock<async_nats::Client>>;

/// A NATS bridge whose settings have been turned into what its client needs (the
/// server list), once, at start: [`NatsBridge::new`] fails on what no retry fixes.
#[derive(Debug)]
pub struct NatsBridge {
    settings: NatsSettings,
    addrs: Vec<async_nats::ServerAddr>,
}

impl NatsBridge {
    /// Prepares a bridge for `settings`. The error names the settings field.
    pub fn new(settings: NatsSettings) -> Result<Self, NatsError> {
        let addrs = server_addrs(&settings.url).map_err(NatsError::Url)?;
        Ok(NatsBridge { settings, addrs })
    }

    /// The bridge's name.
    pub fn name(&self) -> &str {
        &self.settings.name
    }

    /// One connection with the bridge's settings, without retrying or reconnecting:
    /// for a check before anything runs (`herald check-config`).
    pub async fn connect_once(&self) -> Result<async_nats::Client, String> {
        let opts = connect::base_options(&self.settings)
            .await
            .map_err(|e| e.to_string())?;
        opts.connect(self.addrs.clone())
            .await
            .map_err(|e| format!("cannot connect to NATS: {e}"))
    }

    /// The topics its core subscriptions can produce ([`topic_range`]); none for a
    /// JetStream consumer.
    fn ranges(&self) -> Arc<[crate::topic::Pattern]> {
        let s = &self.settings;
        if s.jetstream.is_some() {
            return Arc::new([]);
        }
        s.subjects
            .iter()
            .map(|subject| topic_range(subject, &s.strip_prefix, &s.topic_prefix))
            .collect()
    }

    /// Runs the bridge until `context.cancel` is cancelled: connects (retrying),
    /// subscribes or starts its JetStream consumer, and hands every message to the
    /// sink. Publishing code gets the connection through `slot` once it exists.
    /// On cancellation it drains the connection (unsubscribes, flushes what was
    /// published through it), waits until the client says it is closed (at most
    /// [`DRAIN_TIMEOUT`]) and returns.
    pub async fn run(self, context: BridgeContext, slot: ClientSlot) {
        let name = self.settings.name.clone();
        let status = context.status.clone();
        status(BridgeStatus::Starting);
        let shared = connect::Shared {
            status: status.clone(),
            counters: context.counters.clone(),
            subscribed: Arc::new(AtomicBool::new(false)),
            slot: slot.clone(),
            closed: Arc::new(tokio::sync::Notify::new()),
            sink: context.sink.clone(),
            ranges: self.ranges(),
            drop_marked: Arc::new(AtomicBool::new(false)),
        };
        let cancel = context.cancel.clone();
        let result = tokio::select! {
            result = self.consume(&context, &shared) => result,
            () = cancel.cancelled() => Ok(()),
        };
        match result {
            Err(e) => {
                warn!(bridge = %name, error = %e, "nats bridge failed");
                status(BridgeStatus::Down(e.to_string()));
                return;
            }
            Ok(()) if !cancel.is_cancelled() => {
                warn!(bridge = %name, "nats subscriptions ended");
                status(BridgeStatus::Down("NATS subscriptions ended".into()));
                return;
            }
            Ok(()) => {}
        }
        if let Some(client) = slot.get() {
            // `drain` only asks the client to drain; the connection is closed once
            // the client's `Closed` event says so. Bounded: a server that does not
            // answer does not hold shutdown up.
            let drained = tokio::time::timeout(DRAIN_TIMEOUT, async {
                client.drain().await?;
                shared.closed.notified().await;
                Ok::<_, async_nats::client::DrainError>(())
            })
            .await;
            if !matches!(drained, Ok(Ok(()))) {
                warn!(bridge = %name, "nats connection not drained in time; closing it");
            }
        }
        status(BridgeStatus::Down("stopped".into()));
        info!(bridge = %name, "nats bridge stopped");
    }

    /// Connects, subscribes (or starts the JetStream consumer) and forwards messages
    /// until the subscriptions end.
    async fn consume(
        &self,
        context: &BridgeContext,
        shared: &connect::Shared,
    ) -> Result<(), NatsError> {
        let s = &self.settings;
        let (status, counters) = (&context.status, &context.counters);
        let (subscribed, slot) = (&shared.subscribed, &shared.slot);
        let client = connect::connect_with_retry(s, &self.addrs, shared).await?;
        if let Some(start) = &s.jetstream {
            // The connection is usable before the consumer exists: what waits for the
            // stream may be what makes it (the cluster history).
            let _ = slot.set(client.clone());
            jetstream::consume(s, start, &client, context, shared).await;
            return Ok(());
        }
        let mut subs = Vec::with_capacity(s.subjects.len());
        for subject in &s.subjects {
            let sub =
                client
                    .subscribe(subject.clone())
                    .await
                    .map_err(|source| NatsError::Subscribe {
                        subject: subject.clone(),
                        source,
                    })?;
            subs.push(sub);
        }
        // Ready only once the subscriptions are written to the server (a socket
        // flush; the server has them one round trip later).
        // The subscriptions exist now (async-nats re-creates them on reconnect), so a
        // later Connected may report Ready even if this first flush fails.
        subscribed.store(true, Ordering::Release);
        if client.flush().await.is_ok() {
            counters.connected.store(true, Ordering::Relaxed);
            status(BridgeStatus::Ready);
            info!(bridge = %s.name, subjects = ?s.subjects, "nats bridge subscribed");
        }
        let mut messages = futures_util::stream::select_all(subs);
        let _ = slot.set(client);
        while let Some(msg) = messages.next().await {
            // Read first: a store on every message would write a shared cache line
            // that is set only after a slow-consumer report.
            if shared.drop_marked.load(Ordering::Acquire) {
                shared.drop_marked.store(false, Ordering::Release);
            }
            if !is_system_subject(msg.subject.as_str()) {
                context.forward(event_for(s, msg));
            }
        }
        Ok(())
    }
}
