//! Starting from a JetStream stream: an ordered consumer filtered by the bridge's
//! subjects, set up again with backoff until the stream exists.

use futures_util::StreamExt as _;
use tracing::{info, warn};

use super::connect::Retry;
use super::{NatsError, NatsSettings};
use crate::config::{JetStreamDeliver, JetStreamStart};
use crate::{BridgeStatus, StatusSink};
use std::time::Duration;

/// First delay before setting up the JetStream consumer again after a failure.
const JETSTREAM_RETRY_FIRST: Duration = Duration::from_millis(250);
/// Largest delay between two attempts at the JetStream consumer.
const JETSTREAM_RETRY_MAX: Duration = Duration::from_secs(30);

/// How often a consumer reading positions is checked for a stall.
const STALL_CHECK: Duration = Duration::from_secs(5);

/// How long a JetStream API request of the bridge (the stream's info, creating the
/// consumer, async-nats recreating an ordered one, the stall check) may go
/// unanswered before the attempt fails and is retried. nats-server before 2.12 may
/// place an ephemeral consumer on a server of the stream's cluster that is down, and
/// then never answers its creation (nats-server PR 7165): the bound is what such a
/// lost attempt costs before the next one is placed anew. Half async-nats' default
/// of 10 s, still ample for a server that must count what a large stream holds for
/// the new consumer.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// A started JetStream consumer.
pub(super) struct Consumer {
    pub(super) messages: async_nats::jetstream::consumer::push::Ordered,
    /// What it had to deliver when it was created: what `deliver` replays first.
    pub(super) pending: u64,
}

/// [`jetstream_consumer`], retried until it succeeds: a missing stream (or
/// JetStream not being available yet) is usually fixed without restarting Herald,
/// by whoever creates the stream. Meanwhile the bridge is Down with the error.
async fn jetstream_consumer_with_retry(
    s: &NatsSettings,
    start: &JetStreamStart,
    client: &async_nats::Client,
    status: &StatusSink,
    from: Option<u64>,
) -> Consumer {
    let mut retry = Retry::new(JETSTREAM_RETRY_FIRST, JETSTREAM_RETRY_MAX);
    loop {
        match jetstream_consumer(s, start, client, from).await {
            Ok(consumer) => {
                if retry.attempts > 1 {
                    info!(bridge = %s.name, stream = %start.stream, attempts = retry.attempts, "jetstream consumer created after retrying");
                }
                return consumer;
            }
            Err(e) => {
                let error = e.to_string();
                status(BridgeStatus::Down(format!("{error}; retrying")));
                retry.failed(&s.name, error).await;
            }
        }
    }
}

/// The ordered consumer of a JetStream start, or one that starts at stream sequence
/// `from` (after the last message read by a consumer that failed). One subject uses
/// `filter_subject` (any nats-server with JetStream); several use `filter_subjects`
/// (2.10+).
async fn jetstream_consumer(
    s: &NatsSettings,
    start: &JetStreamStart,
    client: &async_nats::Client,
    from: Option<u64>,
) -> Result<Consumer, NatsError> {
    use async_nats::jetstream::consumer::{push::OrderedConfig, DeliverPolicy};
    let err = |source: Box<dyn std::error::Error + Send + Sync>| NatsError::JetStream {
        stream: start.stream.clone(),
        source,
    };
    let stream = context(client)
        .get_stream(&start.stream)
        .await
        .map_err(|e| err(Box::new(e)))?;
    let (filter_subject, filter_subjects) = match s.subjects.as_slice() {
        [one] => (one.clone(), Vec::new()),
        many => (String::new(), many.to_vec()),
    };
    let config = OrderedConfig {
        deliver_subject: client.new_inbox(),
        filter_subject,
        filter_subjects,
        deliver_policy: match (from, start.deliver) {
            (Some(start_sequence), _) => DeliverPolicy::ByStartSequence { start_sequence },
            (None, JetStreamDeliver::New) => DeliverPolicy::New,
            (None, JetStreamDeliver::All) => DeliverPolicy::All,
            (None, JetStreamDeliver::LastPerSubject) => DeliverPolicy::LastPerSubject,
        },
        ..Default::default()
    };
    let consumer = stream
        .create_consumer(config)
        .await
        .map_err(|e| err(Box::new(e)))?;
    let pending = consumer.cached_info().num_pending;
    let messages = consumer.messages().await.map_err(|e| err(Box::new(e)))?;
    Ok(Consumer { messages, pending })
}

/// Reads a JetStream start until the bridge stops, handing every message to the
/// sink (with its stream position when `start.positions`).
///
/// async-nats' ordered consumer is meant to recreate itself after a gap or a lost
/// connection, but around a change of the stream's leader (a NATS server of a
/// JetStream cluster going away) its recreation request was seen to go unanswered,
/// leaving it silent for good. So any error from it ends it here, and so does a stall:
/// reading positions (the history stream, whose subjects are all the bridge's), every
/// [`STALL_CHECK`] the stream's last sequence is compared with what was read, and a
/// consumer that made no progress while behind over two checks is replaced. A new one
/// starts right after the last message read: nothing is skipped, nothing read twice.
pub(super) async fn consume(
    s: &NatsSettings,
    start: &JetStreamStart,
    client: &async_nats::Client,
    context: &crate::BridgeContext,
    shared: &super::connect::Shared,
) {
    use std::sync::atomic::Ordering;
    let status = &context.status;
    // Until the first consumer has nothing pending, it is still delivering what the
    // stream held when it started (`StreamPosition::catching_up`). Reading positions,
    // the bridge is ready only then: live events before it would be the stream's past.
    let mut caught_up = false;
    // A later `Connected` may report Ready again (after its flush), once ready at all.
    let ready = || {
        shared.subscribed.store(true, Ordering::Release);
        status(BridgeStatus::Ready);
    };
    let mut next: Option<u64> = None;
    loop {
        let consumer = jetstream_consumer_with_retry(s, start, client, status, next).await;
        context.counters.connected.store(true, Ordering::Relaxed);
        match next {
            None => {
                caught_up = consumer.pending == 0;
                info!(bridge = %s.name, stream = %start.stream, pending = consumer.pending, "nats bridge consuming from JetStream");
            }
            Some(from) => {
                info!(bridge = %s.name, stream = %start.stream, from, "jetstream consumer created again after the last message read")
            }
        }
        if caught_up || !start.positions {
            ready();
        }
        let mut messages = consumer.messages;
        let mut check =
            tokio::time::interval_at(tokio::time::Instant::now() + STALL_CHECK, STALL_CHECK);
        // What had been read when the stream was last seen ahead of it.
        let mut behind_at: Option<Option<u64>> = None;
        loop {
            let next_message = tokio::select! {
                m = messages.next() => m,
                _ = check.tick(), if start.positions => {
                    let ahead = stream_last(client, &start.stream)
                        .await
                        .is_some_and(|last| last >= next.unwrap_or(1));
                    if ahead && behind_at == Some(next) {
                        warn!(bridge = %s.name, stream = %start.stream, "jetstream consumer stalled behind the stream; starting a new one after the last message read");
                        break;
                    }
                    behind_at = ahead.then_some(next);
                    continue;
                }
            };
            let msg = match next_message {
                Some(Ok(msg)) => msg,
                Some(Err(e)) => {
                    warn!(bridge = %s.name, error = %e, "jetstream consumer failed; starting a new one after the last message read");
                    break;
                }
                None => return,
            };
            let info = msg.info().ok().map(|info| {
                (
                    info.stream_sequence,
                    info.pending,
                    u64::try_from(info.published.unix_timestamp_nanos() / 1_000_000).unwrap_or(0),
                )
            });
            let mut position = None;
            if let Some((seq, pending, ts_ms)) = info {
                next = Some(seq + 1);
                if start.positions {
                    position = Some(crate::StreamPosition {
                        seq,
                        ts_ms,
                        catching_up: !caught_up,
                    });
                    if !caught_up && pending == 0 {
                        caught_up = true;
                        info!(bridge = %s.name, stream = %start.stream, "caught up with the stream");
                        ready();
                    }
                }
            }
            let mut event = super::event_for(s, msg.message);
            event.position = position;
            context.forward(event);
        }
    }
}

/// The JetStream API as the bridge uses it: every request bounded by
/// [`REQUEST_TIMEOUT`].
fn context(client: &async_nats::Client) -> async_nats::jetstream::Context {
    async_nats::jetstream::ContextBuilder::new()
        .timeout(REQUEST_TIMEOUT)
        .build(client.clone())
}

/// The last sequence of stream `name`, when the server answers within
/// [`REQUEST_TIMEOUT`] (the consumer's messages wait meanwhile).
async fn stream_last(client: &async_nats::Client, name: &str) -> Option<u64> {
    // `get_stream` fetches the stream's info.
    let stream = context(client).get_stream(name).await.ok()?;
    Some(stream.cached_info().state.last_sequence)
}
