//! Server-Sent Events: how a session's messages go out on a `text/event-stream`
//! (docs/protocol.md#10-server-sent-events), and the `id:` that lets a stream resume.
//!
//! - Every message is the JSON a WebSocket client would get, as `data:` lines and no
//!   `event:` field, so `EventSource.onmessage` sees all of them. JSON from a
//!   publisher may hold line breaks (as whitespace between tokens; inside strings
//!   they are escaped): each line becomes its own `data:` line, and `EventSource`
//!   joins them with `\n`, which is the same JSON.
//! - Every `event` carries an `id:`: the epoch, and the last `seq` this stream
//!   delivered of each topic (most recently updated first), as base64url JSON. A
//!   reconnect sends it back (`Last-Event-ID`, or `?last_event_id=`) and the session
//!   subscribes with it as `resume`. It holds at most [`MAX_TOPICS`] topics and
//!   [`MAX_TOPIC_BYTES`] bytes of names, so it stays under 4 KB; a stream that has
//!   received more topics drops the oldest and says so (`x`), and its resume resets
//!   each pattern instead (what it missed on a dropped topic is unknown).

use std::collections::{BTreeMap, VecDeque};

use base64::Engine as _;
use bytes::{BufMut as _, Bytes, BytesMut};
use serde::{Deserialize, Serialize};

use super::outbound::Outgoing;

/// Most topics an id tracks.
pub(crate) const MAX_TOPICS: usize = 48;
/// Most bytes of topic names an id holds.
pub(crate) const MAX_TOPIC_BYTES: usize = 1536;
/// The longest id Herald reads back (a browser sends what it got; anything longer
/// was not made here).
const MAX_ID_BYTES: usize = 8 * 1024;

/// The writing end of an SSE response body: chunks of whole messages.
pub(crate) type SseSink = tokio::sync::mpsc::Sender<Bytes>;

/// The id, as JSON before base64url.
#[derive(Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
struct Wire {
    /// Epoch.
    e: String,
    /// `[topic, seq]`, most recently updated first.
    t: Vec<(String, u64)>,
    /// Set when topics were dropped to keep the id bounded.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    x: bool,
}

/// A `Last-Event-ID` read back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct LastEventId {
    pub epoch: String,
    /// `(topic, seq)`, most recently updated first, as the id lists them.
    recency: Vec<(String, u64)>,
    /// The stream had received more topics than the id holds.
    pub overflow: bool,
}

impl LastEventId {
    /// Positions read back from a client, once every topic name is valid.
    fn new(
        epoch: String,
        recency: Vec<(String, u64)>,
        overflow: bool,
    ) -> Result<Self, &'static str> {
        for (topic, _) in &recency {
            herald_bridges::topic::validate_topic(topic).map_err(|_| "holds an invalid topic")?;
        }
        Ok(LastEventId {
            epoch,
            recency,
            overflow,
        })
    }

    /// A `resume` object given as such (`?resume=`), rather than an id this module
    /// made: nothing forgotten, and no recency order to keep.
    pub(crate) fn from_resume(resume: crate::protocol::Resume) -> Result<Self, &'static str> {
        Self::new(resume.epoch, resume.topics.into_iter().collect(), false)
    }

    /// The positions, as a `resume` lists them.
    pub(crate) fn topics(&self) -> BTreeMap<String, u64> {
        self.recency.iter().cloned().collect()
    }
}

/// Reads an id this module made; `Err` says why it is not one.
pub(crate) fn decode(id: &str) -> Result<LastEventId, &'static str> {
    if id.len() > MAX_ID_BYTES {
        return Err("longer than any id Herald sends");
    }
    let json = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(id.trim())
        .map_err(|_| "not an id Herald sent (not base64url)")?;
    let wire: Wire =
        serde_json::from_slice(&json).map_err(|_| "not an id Herald sent (not its JSON)")?;
    LastEventId::new(wire.e, wire.t, wire.x)
}

/// What a stream has delivered, per topic: the source of its ids.
#[derive(Debug)]
pub(crate) struct Positions {
    epoch: String,
    /// Most recently updated last.
    topics: VecDeque<(Box<str>, u64)>,
    topic_bytes: usize,
    overflow: bool,
}

impl Positions {
    /// A stream of `epoch`, carrying on from `resumed` when it is of the same epoch
    /// (so a topic quiet since the last connection keeps its position).
    pub(crate) fn new(epoch: &str, resumed: Option<&LastEventId>) -> Positions {
        let mut positions = Positions {
            epoch: epoch.to_owned(),
            topics: VecDeque::new(),
            topic_bytes: 0,
            overflow: false,
        };
        if let Some(last) = resumed.filter(|l| l.epoch == epoch) {
            positions.overflow = last.overflow;
            // Oldest first, so that the order of forgetting carries over too.
            for (topic, seq) in last.recency.iter().rev() {
                positions.note(topic, *seq);
            }
        }
        positions
    }

    /// Records that `topic` was delivered up to `seq`.
    fn note(&mut self, topic: &str, seq: u64) {
        if let Some(i) = self.topics.iter().position(|(t, _)| &**t == topic) {
            self.topics.remove(i);
        } else {
            self.topic_bytes += topic.len();
        }
        self.topics.push_back((topic.into(), seq));
        while self.topics.len() > MAX_TOPICS || self.topic_bytes > MAX_TOPIC_BYTES {
            if let Some((dropped, _)) = self.topics.pop_front() {
                self.topic_bytes -= dropped.len();
                self.overflow = true;
            }
        }
    }

    /// The id of the stream's position now.
    fn id(&self) -> String {
        let wire = Wire {
            e: self.epoch.clone(),
            t: self
                .topics
                .iter()
                .rev()
                .map(|(t, s)| (t.to_string(), *s))
                .collect(),
            x: self.overflow,
        };
        let json = serde_json::to_vec(&wire).unwrap_or_default();
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(json)
    }
}

/// The topic and `seq` of an event frame (`{"type":"event",…,"topic":"…","seq":N,…}`),
/// read from its envelope, which comes before the payload. Topic names need no JSON
/// escaping, so the name is the bytes between the quotes.
fn event_position(frame: &str) -> Option<(&str, u64)> {
    if !frame.starts_with(r#"{"type":"event","#) {
        return None;
    }
    const TOPIC: &str = r#""topic":""#;
    const SEQ: &str = r#""seq":"#;
    let start = frame.find(TOPIC)? + TOPIC.len();
    let len = frame[start..].find('"')?;
    let topic = &frame[start..start + len];
    let after = start + len;
    let seq_at = frame[after..].find(SEQ)? + after + SEQ.len();
    let digits = frame[seq_at..]
        .bytes()
        .take_while(u8::is_ascii_digit)
        .count();
    let seq = frame[seq_at..seq_at + digits].parse().ok()?;
    // A node-local event under cluster history is no position to resume from.
    if frame[seq_at + digits..].starts_with(r#","local":true"#) {
        return None;
    }
    Some((topic, seq))
}

/// Appends `frame` to `out` as one SSE message: its `id:` when it is an event, then
/// its `data:` lines.
pub(crate) fn encode(out: &mut BytesMut, frame: &str, positions: &mut Positions) {
    if let Some((topic, seq)) = event_position(frame) {
        positions.note(topic, seq);
        out.put_slice(b"id: ");
        out.put_slice(positions.id().as_bytes());
        out.put_u8(b'\n');
    }
    encode_plain(out, frame);
}

/// Appends `frame` to `out` as one SSE message without an id.
pub(crate) fn encode_plain(out: &mut BytesMut, frame: &str) {
    // CR, LF and CRLF all end a line in SSE.
    for line in frame.split('\n') {
        for part in line.split('\r') {
            // Only whitespace between JSON tokens breaks lines, so an empty line
            // (CRLF's second half, a blank line) can go.
            if part.is_empty() {
                continue;
            }
            out.put_slice(b"data: ");
            out.put_slice(part.as_bytes());
            out.put_u8(b'\n');
        }
    }
    out.put_u8(b'\n');
}

/// The most bytes one write of a stream carries (whole messages; the first may be
/// larger). Each event's id adds up to ~4 KB to its frame, so the chunk is bounded
/// as encoded, not by the frames it holds.
pub(crate) const MAX_CHUNK_BYTES: usize = 64 * 1024;

/// Encodes frames from `next` into one chunk until it holds [`MAX_CHUNK_BYTES`]:
/// the chunk, the bytes of the frames it took and how many of them were events.
pub(crate) fn chunk(
    mut next: impl FnMut() -> Option<Outgoing>,
    positions: &mut Positions,
) -> (Bytes, usize, u64) {
    let mut out = BytesMut::new();
    let (mut bytes, mut events) = (0, 0);
    while out.len() < MAX_CHUNK_BYTES {
        let Some(frame) = next() else { break };
        bytes += frame.len();
        // Only text frames exist outside echo mode, which a stream never is.
        if let Outgoing::Text(text) = frame {
            events += u64::from(crate::protocol::event::is_event(&text));
            encode(&mut out, &text, positions);
        }
    }
    (out.freeze(), bytes, events)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(frames: &[&str], positions: &mut Positions) -> String {
        let mut frames = frames
            .iter()
            .map(|f| Outgoing::Text(bytestring::ByteString::from(*f).into()));
        let (chunk, _, _) = chunk(|| frames.next(), positions);
        String::from_utf8(chunk.to_vec()).expect("utf-8")
    }

    /// What `EventSource` makes of a chunk: (last id, data of each message).
    fn parse(stream: &str) -> (Option<String>, Vec<String>) {
        let (mut id, mut messages, mut data) = (None, Vec::new(), Vec::new());
        for line in stream.split('\n') {
            if line.is_empty() {
                if !data.is_empty() {
                    messages.push(data.join("\n"));
                    data.clear();
                }
            } else if let Some(v) = line.strip_prefix("data: ") {
                data.push(v.to_owned());
            } else if let Some(v) = line.strip_prefix("id: ") {
                id = Some(v.to_owned());
            }
        }
        (id, messages)
    }

    #[test]
    fn every_message_is_its_json_and_events_carry_an_id_of_every_topic() {
        let mut p = Positions::new("ep", None);
        let frames = [
            r#"{"type":"subscribed","topics":["a.*"]}"#,
            r#"{"type":"event","topic":"a.x","seq":4,"ts":1,"source":"http","data":1}"#,
            r#"{"type":"event","replay":true,"topic":"a.y","seq":9,"ts":1,"source":"http","data":{"seq":77}}"#,
            r#"{"type":"ping"}"#,
        ];
        let stream = text(&frames, &mut p);
        let (id, messages) = parse(&stream);
        assert_eq!(messages, frames, "{stream}");
        assert!(!stream.contains("event:"), "onmessage sees everything");
        let last = decode(&id.expect("an id")).expect("decodes");
        assert_eq!(last.epoch, "ep");
        assert_eq!(
            last.topics(),
            BTreeMap::from([("a.x".into(), 4), ("a.y".into(), 9)])
        );
        assert!(!last.overflow);
        assert_eq!(stream.matches("id: ").count(), 2, "one id per event");
    }

    #[test]
    fn line_breaks_inside_a_payload_survive_as_several_data_lines() {
        let mut p = Positions::new("ep", None);
        let frame = "{\"type\":\"event\",\"topic\":\"a\",\"seq\":1,\"ts\":1,\"source\":\"http\",\"data\":{\r\n  \"k\": [1,\n 2]\r}}";
        let (_, messages) = parse(&text(&[frame], &mut p));
        let back: serde_json::Value = serde_json::from_str(&messages[0]).expect("still JSON");
        let sent: serde_json::Value = serde_json::from_str(frame).expect("JSON");
        assert_eq!(back, sent);
    }

    #[test]
    fn the_id_stays_bounded_and_says_when_it_dropped_topics() {
        let mut p = Positions::new("ep", None);
        for i in 0..1000u64 {
            let topic = format!("t{i}.{}", "x".repeat(200));
            let frame = format!(
                r#"{{"type":"event","topic":"{topic}","seq":{i},"ts":1,"source":"http","data":1}}"#
            );
            let mut out = BytesMut::new();
            encode(&mut out, &frame, &mut p);
            assert!(out.len() < 4096 + frame.len() + 32, "{} bytes", out.len());
        }
        let last = decode(&p.id()).expect("decodes");
        assert!(last.overflow);
        assert!(last.topics().len() <= MAX_TOPICS);
        assert!(
            last.topics()
                .contains_key(&format!("t999.{}", "x".repeat(200))),
            "the newest stays"
        );
        // A resumed stream carries on from it, overflow included.
        let resumed = Positions::new("ep", Some(&last));
        assert!(decode(&resumed.id()).expect("decodes").overflow);
        // Of another epoch: nothing carries over.
        let fresh = Positions::new("other", Some(&last));
        assert_eq!(decode(&fresh.id()).expect("decodes").topics().len(), 0);
    }

    #[test]
    fn a_chunk_stops_at_its_bound_and_leaves_the_rest_queued() {
        let mut frames: std::collections::VecDeque<Outgoing> = (0..5000)
            .map(|i| {
                Outgoing::Text(
                    format!(
                        r#"{{"type":"event","topic":"t{}","seq":{i},"ts":1,"source":"http","data":1}}"#,
                        i % 40
                    )
                    .into(),
                )
            })
            .collect();
        let mut p = Positions::new("ep", None);
        let (chunk, bytes, events) = chunk(|| frames.pop_front(), &mut p);
        assert!(chunk.len() >= MAX_CHUNK_BYTES, "{}", chunk.len());
        assert!(chunk.len() < MAX_CHUNK_BYTES + 8192, "{}", chunk.len());
        assert!(!frames.is_empty(), "the rest waits for the next write");
        assert_eq!(events as usize, 5000 - frames.len());
        assert!(
            bytes < chunk.len(),
            "ids are counted in the chunk, not the frames"
        );
    }

    #[test]
    fn a_resumed_stream_keeps_the_order_in_which_topics_are_forgotten() {
        let mut p = Positions::new("ep", None);
        // "z" is the oldest, "a" the newest: alphabetical order would be the reverse.
        for (t, seq) in [("z", 1), ("m", 1), ("a", 1)] {
            p.note(t, seq);
        }
        let last = decode(&p.id()).expect("decodes");
        let mut resumed = Positions::new("ep", Some(&last));
        for i in 0..MAX_TOPICS - 2 {
            resumed.note(&format!("n{i}"), 1);
        }
        let kept = decode(&resumed.id()).expect("decodes").topics();
        assert!(
            !kept.contains_key("z") && kept.contains_key("a"),
            "{kept:?}"
        );
    }

    #[test]
    fn ids_not_made_here_are_refused() {
        for bad in ["", "!!!", "bm90IGpzb24", &"A".repeat(9000)] {
            assert!(decode(bad).is_err(), "{bad}");
        }
        let bad_topic = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .encode(r#"{"e":"ep","t":[["a..b",1]]}"#);
        assert!(decode(&bad_topic).is_err());
    }
}
