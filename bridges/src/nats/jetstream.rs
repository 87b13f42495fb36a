//! Starting from a JetStream stream: an ordered consumer filtered by the bridge's
//! subjects, set up again with backoff until the stream exists.

use tracing::info;

use super::connect::Retry;
use super::{NatsError, NatsSettings};
use crate::config::{JetStreamDeliver, JetStreamStart};
use crate::{BridgeStatus, StatusSink};
use std::time::Duration;

/// First delay before setting up the JetStream consumer again after a failure.
const JETSTREAM_RETRY_FIRST: Duration = Duration::from_millis(250);
/// Largest delay between two attempts at the JetStream consumer.
const JETSTREAM_RETRY_MAX: Duration = Duration::from_secs(30);

/// A started JetStream consumer.
pub(super) struct Consumer {
    pub(super) messages: async_nats::jetstream::consumer::push::Ordered,
    /// What it had to deliver when it was created: what `deliver` replays first.
    pub(super) pending: u64,
}

/// [`jetstream_consumer`], retried until it succeeds: a missing stream (or
/// JetStream not being available yet) is usually fixed without restarting Herald,
/// by whoever creates the stream. Meanwhile the bridge is Down with the error.
pub(super) async fn jetstream_consumer_with_retry(
    s: &NatsSettings,
    start: &JetStreamStart,
    client: &async_nats::Client,
    status: &StatusSink,
) -> Consumer {
    let mut retry = Retry::new(JETSTREAM_RETRY_FIRST, JETSTREAM_RETRY_MAX);
    loop {
        match jetstream_consumer(s, start, client).await {
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

/// The ordered consumer of a JetStream start. One subject uses `filter_subject`
/// (any nats-server with JetStream); several use `filter_subjects` (2.10+).
async fn jetstream_consumer(
    s: &NatsSettings,
    start: &JetStreamStart,
    client: &async_nats::Client,
) -> Result<Consumer, NatsError> {
    use async_nats::jetstream::consumer::{push::OrderedConfig, DeliverPolicy};
    let err = |source: Box<dyn std::error::Error + Send + Sync>| NatsError::JetStream {
        stream: start.stream.clone(),
        source,
    };
    let js = async_nats::jetstream::new(client.clone());
    let stream = js
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
        deliver_policy: match start.deliver {
            JetStreamDeliver::New => DeliverPolicy::New,
            JetStreamDeliver::All => DeliverPolicy::All,
            JetStreamDeliver::LastPerSubject => DeliverPolicy::LastPerSubject,
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
