//! The history stream itself: made or brought in line with `[cluster]` and
//! `[history]` at start, and its identity (the epoch).

use async_nats::jetstream::{self, stream};
use herald_bridges::nats::async_nats;

use super::{HistoryError, StreamSpec};

/// What [`ensure`] did.
pub(super) struct SetUp {
    /// `created`, `updated` or `unchanged`: said in the start-up line.
    pub(super) action: &'static str,
    /// When the stream was created, in nanoseconds since the Unix epoch: what tells
    /// a stream from another of the same name made after it was deleted.
    pub(super) created: i128,
    /// The epoch clients see: the stream's name and creation time.
    pub(super) epoch: String,
}

/// The stream configuration `spec` asks for.
fn config(spec: &StreamSpec) -> stream::Config {
    stream::Config {
        name: spec.name.clone(),
        subjects: vec![format!("{}>", spec.prefix)],
        max_messages_per_subject: i64::try_from(spec.per_subject).unwrap_or(i64::MAX),
        max_age: spec.max_age,
        num_replicas: spec.replicas,
        storage: stream::StorageType::File,
        discard: stream::DiscardPolicy::Old,
        ..Default::default()
    }
}

/// Whether the stream as it is differs from `want` in what Herald sets.
fn differs(have: &stream::Config, want: &stream::Config) -> bool {
    have.subjects != want.subjects
        || have.max_messages_per_subject != want.max_messages_per_subject
        || have.max_age != want.max_age
        || have.num_replicas != want.num_replicas
}

pub(super) fn stream_error(
    name: &str,
    e: impl std::error::Error + Send + Sync + 'static,
) -> HistoryError {
    HistoryError::Stream {
        stream: name.to_owned(),
        source: Box::new(e),
    }
}

/// Finds the stream, creating it when missing and updating what Herald sets when
/// it differs (two nodes configured differently would undo each other's update:
/// the start-up lines say so).
pub(super) async fn ensure(
    js: &jetstream::Context,
    spec: &StreamSpec,
) -> Result<SetUp, HistoryError> {
    let want = config(spec);
    let (action, info) = match js.get_stream(&spec.name).await {
        // `get_stream` has fetched the stream's info already.
        Ok(found) => {
            let have = found.cached_info().clone();
            if differs(&have.config, &want) {
                let mut updated = have.config.clone();
                updated.subjects = want.subjects.clone();
                updated.max_messages_per_subject = want.max_messages_per_subject;
                updated.max_age = want.max_age;
                updated.num_replicas = want.num_replicas;
                let info = js
                    .update_stream(updated)
                    .await
                    .map_err(|e| stream_error(&spec.name, e))?;
                ("updated", info)
            } else {
                ("unchanged", have)
            }
        }
        Err(e) if is_not_found(&e) => {
            let stream = js
                .create_stream(want)
                .await
                .map_err(|e| stream_error(&spec.name, e))?;
            ("created", stream.cached_info().clone())
        }
        Err(e) if no_jetstream(&e) => return Err(HistoryError::NoJetStream(e.to_string())),
        Err(e) => return Err(stream_error(&spec.name, e)),
    };
    let created = info.created.unix_timestamp_nanos();
    Ok(SetUp {
        action,
        created,
        epoch: format!("{}-{created:x}", spec.name),
    })
}

pub(super) fn is_not_found(e: &jetstream::context::GetStreamError) -> bool {
    matches!(
        e.kind(),
        jetstream::context::GetStreamErrorKind::JetStream(j)
            if j.error_code() == jetstream::ErrorCode::STREAM_NOT_FOUND
    )
}

/// Whether the server answered that it has no JetStream (nobody listens on the
/// JetStream API, or JetStream is not enabled for the account).
pub(super) fn no_jetstream(e: &jetstream::context::GetStreamError) -> bool {
    match e.kind() {
        jetstream::context::GetStreamErrorKind::JetStream(j) => {
            j.error_code() == jetstream::ErrorCode::JETSTREAM_NOT_ENABLED
                || j.error_code() == jetstream::ErrorCode::JETSTREAM_NOT_ENABLED_FOR_ACCOUNT
        }
        _ => {
            // async-nats' words for "no responders" on the JetStream API.
            let text = e.to_string();
            text.contains("no responders") || text.contains("JetStream resource does not exist")
        }
    }
}

/// When the stream named `name` was created (see [`SetUp::created`]).
pub(super) async fn created(js: &jetstream::Context, name: &str) -> Result<i128, HistoryError> {
    let stream = js
        .get_stream(name)
        .await
        .map_err(|e| stream_error(name, e))?;
    Ok(stream.cached_info().created.unix_timestamp_nanos())
}
