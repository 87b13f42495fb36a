//! Reading events back from the stream by position, for a resume or a `last` that
//! a node's in-memory ring cannot answer (it started after them, or forgot the
//! topic). One request per event, through the stream's leader (never a replica
//! that may lag); bounded by the caller, who asks at most for what the stream keeps
//! per subject (`history.size`).

use async_nats::jetstream::stream::{LastRawMessageErrorKind, RawMessageError, Stream};
use herald_bridges::nats::async_nats;
use herald_bridges::BridgeEvent;

use super::{ClusterHistory, HistoryError};

/// An event read back from the stream, with its position.
#[derive(Debug)]
pub(crate) struct Stored {
    pub(crate) seq: u64,
    pub(crate) ts_ms: u64,
    pub(crate) event: BridgeEvent,
}

impl ClusterHistory {
    async fn stream(&self) -> Result<Stream<()>, HistoryError> {
        self.jetstream()?
            .get_stream_no_info(&self.spec.name)
            .await
            .map_err(|e| super::stream_error_of(&self.spec.name, e))
    }

    fn subject(&self, topic: &str) -> String {
        format!("{}{topic}", self.spec.prefix)
    }

    /// The events of `topic` stored after position `after`, oldest first, at most
    /// `max` of them; `None` when the stream no longer holds the event at `after`
    /// (or never held one of this topic there): what came between is unknown.
    /// While the event at `after` is kept, so is every later event of its topic:
    /// the stream forgets each subject's events oldest first.
    pub(crate) async fn after(
        &self,
        topic: &str,
        after: u64,
        max: usize,
    ) -> Result<Option<Vec<Stored>>, HistoryError> {
        let stream = self.stream().await?;
        let subject = self.subject(topic);
        match stream.get_raw_message(after).await {
            Ok(m) if m.subject.as_str() == subject => {}
            Ok(_) => return Ok(None),
            Err(e) if e.kind() == LastRawMessageErrorKind::NoMessageFound => return Ok(None),
            Err(e) => return Err(super::stream_error_of(&self.spec.name, e)),
        }
        self.read_from(&stream, &subject, after + 1, max)
            .await
            .map(Some)
    }

    /// Every event of `topic` the stream keeps, oldest first (at most `max`, which
    /// is what the stream keeps per subject). The caller takes the newest it needs,
    /// with the `prev` of the first it keeps.
    pub(crate) async fn kept(&self, topic: &str, max: usize) -> Result<Vec<Stored>, HistoryError> {
        let stream = self.stream().await?;
        self.read_from(&stream, &self.subject(topic), 1, max).await
    }

    /// The events of `subject` from stream sequence `from` on, at most `max`.
    async fn read_from(
        &self,
        stream: &Stream<()>,
        subject: &str,
        mut from: u64,
        max: usize,
    ) -> Result<Vec<Stored>, HistoryError> {
        let mut out = Vec::new();
        while out.len() < max {
            let next = stream
                .raw_message_builder()
                .sequence(from)
                .next_by_subject(subject.to_owned())
                .send()
                .await;
            let m = match next {
                Ok(m) => m,
                Err(e) if is_none_left(&e) => break,
                Err(e) => return Err(super::stream_error_of(&self.spec.name, e)),
            };
            from = m.sequence + 1;
            let event = herald_bridges::nats::event_from(
                &self.bridge,
                m.subject.as_str(),
                Some(&m.headers),
                m.payload,
            );
            out.push(Stored {
                seq: m.sequence,
                ts_ms: u64::try_from(m.time.unix_timestamp_nanos() / 1_000_000).unwrap_or(0),
                event,
            });
        }
        Ok(out)
    }
}

fn is_none_left(e: &RawMessageError) -> bool {
    e.kind() == LastRawMessageErrorKind::NoMessageFound
}
