//! What each server under test needs from a client, and what its frames mean.
//!
//! | target | subscribe | a delivery | heartbeat |
//! |---|---|---|---|
//! | `herald` | `{"op":"subscribe","topics":["t3"]}`, answered `subscribed` | an `event` frame with the payload as `data` | `{"type":"ping"}` answered `{"op":"pong"}` |
//! | `herald-sse` | `GET /sse?topics=t3`, answered `subscribed` in the stream | an `event` message | `{"type":"ping"}`, not answered (a stream is one-way) |
//! | `nats-ws` | `CONNECT`, `SUB bench.t3 1`, `PING`, answered `PONG` | `MSG` (frames split anywhere) | `PING` answered `PONG` |
//! | `ws-broadcast` | `sub t3`, answered `subscribed` | the payload itself | none |
//!
//! Topics are `t<i>`; on NATS they are the subjects `<subject prefix>t<i>` (the
//! Herald bridge and ws-broadcast strip the prefix to get the topic back).

use serde::Serialize;

use crate::nats_proto::{self, NatsError, Op};
use crate::payload::{self, Stamp};
use crate::ws::opcode;

/// The protocol a server speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Target {
    /// Herald's protocol (`herald.v1.json`).
    Herald,
    /// Herald's protocol over Server-Sent Events (`GET /sse`, beside the WebSocket
    /// path of `--url`).
    HeraldSse,
    /// The NATS client protocol over nats-server's WebSocket listener.
    NatsWs,
    /// The trivial protocol of `ws-broadcast`, the reference server.
    WsBroadcast,
}

/// The name of topic `i`.
pub fn topic_name(i: u32) -> String {
    format!("t{i}")
}

impl Target {
    /// The frame (opcode and payload) that subscribes a connection to `topics`; none
    /// for a stream, whose request names them.
    pub fn subscribe(self, topics: &[u32], subject_prefix: &str) -> Option<(u8, Vec<u8>)> {
        Some(match self {
            Target::HeraldSse => return None,
            Target::Herald => {
                let names: Vec<String> = topics.iter().map(|&t| topic_name(t)).collect();
                let msg = serde_json::json!({"op": "subscribe", "id": 1, "topics": names});
                (opcode::TEXT, msg.to_string().into_bytes())
            }
            Target::NatsWs => {
                let mut msg = String::from(
                    "CONNECT {\"verbose\":false,\"pedantic\":false,\"lang\":\"rust\",\
                     \"version\":\"herald-bench\",\"protocol\":1,\"echo\":false,\
                     \"headers\":false,\"no_responders\":false}\r\n",
                );
                for (sid, &t) in topics.iter().enumerate() {
                    msg.push_str(&format!("SUB {subject_prefix}t{t} {}\r\n", sid + 1));
                }
                // The PONG to this PING says every SUB above is in effect.
                msg.push_str("PING\r\n");
                (opcode::BINARY, msg.into_bytes())
            }
            Target::WsBroadcast => {
                let names: Vec<String> = topics.iter().map(|&t| topic_name(t)).collect();
                (
                    opcode::TEXT,
                    format!("sub {}", names.join(" ")).into_bytes(),
                )
            }
        })
    }

    /// Whether the connection is an event stream rather than a WebSocket.
    pub fn is_stream(self) -> bool {
        self == Target::HeraldSse
    }

    /// A new per-connection protocol state.
    pub fn session(self) -> Session {
        match self {
            Target::Herald | Target::HeraldSse => Session::Herald,
            Target::NatsWs => Session::Nats(nats_proto::Parser::default()),
            Target::WsBroadcast => Session::Broadcast,
        }
    }
}

/// What a connection learns from the server's frames.
pub trait Events {
    /// A message this tool published arrived.
    fn delivery(&mut self, stamp: Stamp);
    /// The subscription is in effect.
    fn subscribed(&mut self);
    /// Herald dropped `dropped` events for this connection (a `lagged` notice).
    fn lagged(&mut self, dropped: u64);
    /// A message without a stamp (somebody else's publish).
    fn foreign(&mut self);
    /// The server reported an error (a Herald `error` reply, a NATS `-ERR`).
    fn server_error(&mut self, message: String);
    /// A frame to send back (a heartbeat answer).
    fn reply(&mut self, opcode: u8, payload: &[u8]);
}

/// A frame the client cannot make sense of.
#[derive(Debug, thiserror::Error)]
pub enum ProtocolError {
    /// Herald sent something that is not a JSON object with a `type`.
    #[error("unexpected frame from the server: {0}")]
    Unexpected(String),
    /// The NATS stream could not be parsed.
    #[error("NATS protocol: {0}")]
    Nats(#[from] NatsError),
    /// Herald ended an event stream with a `close` message (the code of the close
    /// frame a WebSocket would have got).
    #[error("closed by the server with code {0}")]
    Closed(u16),
    /// An event stream's body could not be read.
    #[error("{0}")]
    Stream(#[from] crate::sse::DecodeError),
}

/// Per-connection protocol state.
#[derive(Debug)]
pub enum Session {
    /// Herald: one JSON object per message.
    Herald,
    /// NATS: a byte stream across frames.
    Nats(nats_proto::Parser),
    /// ws-broadcast: one payload per message.
    Broadcast,
}

impl Session {
    /// Whether data frames are parts of one byte stream (NATS) rather than messages
    /// of their own, so fragments need no joining.
    pub fn streamed(&self) -> bool {
        matches!(self, Session::Nats(_))
    }

    /// Handles one message (or, when [`Session::streamed`], the payload of one data
    /// frame).
    pub fn on_data(&mut self, data: &[u8], ev: &mut impl Events) -> Result<(), ProtocolError> {
        match self {
            Session::Herald => herald_message(data, ev),
            Session::Broadcast => {
                if let Some(stamp) = payload::find(data) {
                    ev.delivery(stamp);
                } else if data == b"subscribed" {
                    ev.subscribed();
                } else {
                    ev.foreign();
                }
                Ok(())
            }
            Session::Nats(parser) => {
                parser.feed(data, |op| match op {
                    Op::Msg { payload, .. } => match payload::find(payload) {
                        Some(stamp) => ev.delivery(stamp),
                        None => ev.foreign(),
                    },
                    Op::Ping => ev.reply(opcode::BINARY, b"PONG\r\n"),
                    Op::Pong => ev.subscribed(),
                    Op::Err(reason) => ev.server_error(String::from_utf8_lossy(reason).into()),
                    Op::Info | Op::Ok => {}
                })?;
                Ok(())
            }
        }
    }
}

/// One Herald message: a stamped event on the fast path, anything else parsed.
fn herald_message(data: &[u8], ev: &mut impl Events) -> Result<(), ProtocolError> {
    if let Some(stamp) = payload::find(data) {
        ev.delivery(stamp);
        return Ok(());
    }
    let unexpected =
        || ProtocolError::Unexpected(String::from_utf8_lossy(data).chars().take(200).collect());
    let msg: serde_json::Value = serde_json::from_slice(data).map_err(|_| unexpected())?;
    match msg
        .get("type")
        .and_then(|t| t.as_str())
        .ok_or_else(unexpected)?
    {
        "subscribed" => ev.subscribed(),
        "ping" => ev.reply(opcode::TEXT, br#"{"op":"pong"}"#),
        "lagged" => ev.lagged(msg["dropped"].as_u64().unwrap_or(0)),
        "event" => ev.foreign(),
        "close" => {
            let code = msg["code"].as_u64().unwrap_or(0);
            return Err(ProtocolError::Closed(u16::try_from(code).unwrap_or(0)));
        }
        "error" => ev.server_error(format!(
            "{}: {}",
            msg["code"].as_str().unwrap_or("?"),
            msg["message"].as_str().unwrap_or("")
        )),
        // welcome, pong, reset, ok: nothing this tool acts on.
        _ => {}
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Default, Debug)]
    struct Seen {
        deliveries: Vec<Stamp>,
        subscribed: u32,
        lagged: u64,
        foreign: u32,
        errors: Vec<String>,
        replies: Vec<(u8, Vec<u8>)>,
    }

    impl Events for Seen {
        fn delivery(&mut self, stamp: Stamp) {
            self.deliveries.push(stamp);
        }
        fn subscribed(&mut self) {
            self.subscribed += 1;
        }
        fn lagged(&mut self, dropped: u64) {
            self.lagged += dropped;
        }
        fn foreign(&mut self) {
            self.foreign += 1;
        }
        fn server_error(&mut self, message: String) {
            self.errors.push(message);
        }
        fn reply(&mut self, opcode: u8, payload: &[u8]) {
            self.replies.push((opcode, payload.to_vec()));
        }
    }

    fn stamped(seq: u64) -> Vec<u8> {
        let mut out = Vec::new();
        payload::encode(
            Stamp {
                sent_us: 5,
                seq,
                topic: 3,
            },
            100,
            &mut out,
        );
        out
    }

    #[test]
    fn subscribe_frames_name_the_topics() {
        let frame = |t: Target| t.subscribe(&[1, 2], "bench.").expect("a frame");
        let (op, msg) = frame(Target::Herald);
        assert_eq!(op, opcode::TEXT);
        let v: serde_json::Value = serde_json::from_slice(&msg).expect("json");
        assert_eq!(v["op"], "subscribe");
        assert_eq!(v["topics"], serde_json::json!(["t1", "t2"]));
        let (op, msg) = frame(Target::NatsWs);
        assert_eq!(op, opcode::BINARY);
        let msg = String::from_utf8(msg).expect("utf8");
        assert!(msg.starts_with("CONNECT {"));
        assert!(msg.ends_with("\r\nSUB bench.t1 1\r\nSUB bench.t2 2\r\nPING\r\n"));
        let (_, msg) = frame(Target::WsBroadcast);
        assert_eq!(msg, b"sub t1 t2");
        assert!(
            Target::HeraldSse.subscribe(&[1], "bench.").is_none(),
            "a stream's request names its topics"
        );
    }

    #[test]
    fn herald_frames_are_understood() {
        let mut s = Target::Herald.session();
        let mut seen = Seen::default();
        let mut event =
            br#"{"type":"event","topic":"t3","seq":1,"ts":1,"source":"nats","data":"#.to_vec();
        event.extend_from_slice(&stamped(9));
        event.push(b'}');
        for frame in [
            &br#"{"type":"welcome","session":"x"}"#[..],
            br#"{"type":"subscribed","id":1,"topics":["t3"]}"#,
            &event,
            br#"{"type":"event","topic":"t3","seq":2,"data":{"other":1}}"#,
            br#"{"type":"ping"}"#,
            br#"{"type":"lagged","dropped":120}"#,
            br#"{"type":"error","id":1,"code":"forbidden","message":"no"}"#,
        ] {
            s.on_data(frame, &mut seen).expect("understood");
        }
        assert_eq!(seen.subscribed, 1);
        assert_eq!(seen.deliveries.len(), 1);
        assert_eq!(seen.deliveries[0].seq, 9);
        assert_eq!(seen.foreign, 1);
        assert_eq!(seen.lagged, 120);
        assert_eq!(seen.errors, vec!["forbidden: no".to_string()]);
        assert_eq!(
            seen.replies,
            vec![(opcode::TEXT, br#"{"op":"pong"}"#.to_vec())]
        );
        assert!(s.on_data(b"not json", &mut seen).is_err());
        assert!(s.on_data(b"[1]", &mut seen).is_err());
        // An event stream's last message ends the connection with its code.
        let closed = s.on_data(
            br#"{"type":"close","code":4009,"reason":"slow"}"#,
            &mut seen,
        );
        assert!(
            matches!(closed, Err(ProtocolError::Closed(4009))),
            "{closed:?}"
        );
    }

    #[test]
    fn nats_frames_split_across_messages_are_understood() {
        let mut s = Target::NatsWs.session();
        assert!(s.streamed());
        let mut seen = Seen::default();
        let mut stream = b"INFO {}\r\nPONG\r\n".to_vec();
        for seq in 1..=3 {
            let p = stamped(seq);
            stream.extend_from_slice(format!("MSG bench.t3 1 {}\r\n", p.len()).as_bytes());
            stream.extend_from_slice(&p);
            stream.extend_from_slice(b"\r\n");
        }
        stream.extend_from_slice(b"PING\r\n-ERR 'Slow Consumer'\r\n");
        for piece in stream.chunks(37) {
            s.on_data(piece, &mut seen).expect("understood");
        }
        assert_eq!(seen.subscribed, 1);
        let seqs: Vec<u64> = seen.deliveries.iter().map(|d| d.seq).collect();
        assert_eq!(seqs, vec![1, 2, 3]);
        assert_eq!(seen.replies, vec![(opcode::BINARY, b"PONG\r\n".to_vec())]);
        assert_eq!(seen.errors, vec!["'Slow Consumer'".to_string()]);
    }

    #[test]
    fn broadcast_frames_are_understood() {
        let mut s = Target::WsBroadcast.session();
        let mut seen = Seen::default();
        s.on_data(b"subscribed", &mut seen).expect("ok");
        s.on_data(&stamped(4), &mut seen).expect("ok");
        s.on_data(b"hello", &mut seen).expect("ok");
        assert_eq!(seen.subscribed, 1);
        assert_eq!(seen.deliveries.len(), 1);
        assert_eq!(seen.foreign, 1);
    }
}
