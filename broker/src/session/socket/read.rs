//! Reading client messages off the socket.
//!
//! Why not a buffer per connection: an idle connection reads nothing, so the bytes it
//! would hold are pure cost (actix-http kept 8 KiB per connection for its whole life).
//! Here every read goes into one scratch buffer per worker thread; the complete
//! frames in it are handled at once, and only the bytes of an incomplete frame are
//! copied into the connection's own `partial` buffer, which is freed again as soon as
//! the frame is complete. Fragments of a message are joined in `message` while it is
//! incomplete, bounded by `session.max_message_bytes`.
//!
//! UTF-8 is checked as fragments arrive, so an invalid text message fails on the
//! fragment that breaks it; a compressed message is checked once inflated.

use std::cell::Cell;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf as _, Bytes, BytesMut};
use bytestring::ByteString;
use tokio::io::ReadBuf;

use super::deflate::{self, InflateError};
use super::frame::{self, ClosePayload, FrameError, Header, OpCode};
use super::io::Io;
use crate::protocol::close;

/// What one worker thread reads into: large enough for many frames per read.
const SCRATCH_BYTES: usize = 64 * 1024;

thread_local! {
    /// The worker's read buffer (see the module doc). Taken out while in use, so
    /// that a reentrant read (there is none) would get a buffer of its own.
    static SCRATCH: Cell<Vec<u8>> = const { Cell::new(Vec::new()) };
}

/// A message from the client, or why the connection must close.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Inbound {
    Text(ByteString),
    Binary(Bytes),
    Ping(Bytes),
    Pong,
    Close(ClosePayload),
    /// A protocol violation: close with this code and reason.
    Fail(u16, &'static str),
}

/// A fragmented message being joined.
#[derive(Debug)]
struct Joining {
    text: bool,
    compressed: bool,
    data: Vec<u8>,
    /// Bytes of `data` known to be valid UTF-8 (uncompressed text).
    checked: usize,
}

/// The reading half of a connection's state.
#[derive(Debug)]
pub(crate) struct Reader {
    /// Bytes of a frame that has not fully arrived; empty (unallocated) otherwise.
    partial: BytesMut,
    /// Bytes the frame at the start of `partial` needs in all, once its header is in.
    need: usize,
    /// `partial` holds bytes that came with the handshake, not parsed yet.
    early: bool,
    message: Option<Joining>,
    max_message: usize,
    /// permessage-deflate was negotiated: RSV1 marks a compressed message.
    deflate: bool,
}

impl Reader {
    /// A reader holding `early` (bytes that arrived with the handshake).
    pub(crate) fn new(early: BytesMut, max_message: usize, deflate: bool) -> Self {
        Reader {
            early: !early.is_empty(),
            // The handshake's read buffer (8 KiB from actix-http) is kept only while
            // it holds bytes: an empty one would stay allocated for the connection's
            // whole life, which was most of an idle connection's memory.
            partial: if early.is_empty() {
                BytesMut::new()
            } else {
                early
            },
            need: 0,
            message: None,
            max_message,
            deflate,
        }
    }

    /// Bytes this connection holds for reading now.
    #[cfg(test)]
    pub(crate) fn held(&self) -> usize {
        self.partial.capacity() + self.message.as_ref().map_or(0, |m| m.data.capacity())
    }

    /// Reads once and appends the messages that are complete to `out`: `Ready(Ok(0))`
    /// at the end of the stream, `Ready(Ok(n))` after `n` bytes (a `Fail` among the
    /// messages ends reading).
    pub(crate) fn poll_read(
        &mut self,
        io: &mut dyn Io,
        cx: &mut Context<'_>,
        out: &mut Vec<Inbound>,
    ) -> Poll<io::Result<usize>> {
        if self.partial.is_empty() {
            let mut scratch = SCRATCH.take();
            if scratch.len() < SCRATCH_BYTES {
                scratch = vec![0; SCRATCH_BYTES];
            }
            let result = read_into(io, cx, &mut scratch);
            if let Poll::Ready(Ok(n)) = result {
                let used = self.parse(&mut scratch[..n], out);
                if used < n {
                    self.partial.extend_from_slice(&scratch[used..n]);
                }
            }
            SCRATCH.set(scratch);
            return result;
        }
        if self.early {
            self.early = false;
            let n = self.partial.len();
            self.parse_partial(out);
            return Poll::Ready(Ok(n));
        }
        // The rest of a frame goes straight into `partial`: what the frame still
        // needs (then the next frames go through the scratch buffer again), in steps
        // of at most the scratch buffer's size.
        let held = self.partial.len();
        let want = if self.need > held {
            (self.need - held).min(SCRATCH_BYTES)
        } else {
            SCRATCH_BYTES
        };
        self.partial.resize(held + want, 0);
        let result = read_into(io, cx, &mut self.partial[held..]);
        let n = match &result {
            Poll::Ready(Ok(n)) => *n,
            _ => 0,
        };
        self.partial.truncate(held + n);
        if n > 0 {
            self.parse_partial(out);
        }
        result
    }

    fn parse_partial(&mut self, out: &mut Vec<Inbound>) {
        let mut partial = std::mem::take(&mut self.partial);
        let used = self.parse(&mut partial, out);
        partial.advance(used);
        if partial.is_empty() {
            // Freed: an idle connection holds no read buffer.
            self.need = 0;
        } else {
            self.partial = partial;
        }
    }

    /// Handles the complete frames at the start of `buf`; returns the bytes used.
    fn parse(&mut self, buf: &mut [u8], out: &mut Vec<Inbound>) -> usize {
        let mut at = 0;
        loop {
            let header = match frame::parse_header(&buf[at..], self.max_message, self.deflate) {
                Ok(Some(h)) => h,
                Ok(None) => {
                    self.need = 0;
                    return at;
                }
                Err(e) => {
                    out.push(fail(e));
                    return buf.len();
                }
            };
            if buf.len() - at < header.frame_len() {
                self.need = header.frame_len();
                return at;
            }
            let payload = &mut buf[at + header.header_len..at + header.frame_len()];
            frame::unmask(payload, header.mask, 0);
            at += header.frame_len();
            if let Err(fail) = self.on_frame(&header, payload, out) {
                out.push(fail);
                return buf.len();
            }
        }
    }

    fn on_frame(
        &mut self,
        h: &Header,
        payload: &[u8],
        out: &mut Vec<Inbound>,
    ) -> Result<(), Inbound> {
        match h.opcode {
            OpCode::Ping => out.push(Inbound::Ping(Bytes::copy_from_slice(payload))),
            OpCode::Pong => out.push(Inbound::Pong),
            OpCode::Close => match frame::parse_close(payload) {
                Ok(close) => out.push(Inbound::Close(close)),
                Err(code) => return Err(Inbound::Fail(code, "invalid close frame")),
            },
            OpCode::Text | OpCode::Binary => {
                if self.message.is_some() {
                    // A new message before the last one ended.
                    return Err(protocol());
                }
                let text = h.opcode == OpCode::Text;
                if h.fin {
                    out.push(self.complete(text, h.rsv1, payload.to_vec())?);
                } else {
                    let mut joining = Joining {
                        text,
                        compressed: h.rsv1,
                        data: payload.to_vec(),
                        checked: 0,
                    };
                    check_utf8(&mut joining, false)?;
                    self.message = Some(joining);
                }
            }
            OpCode::Continuation => {
                if h.rsv1 {
                    // Only a message's first frame may say it is compressed.
                    return Err(protocol());
                }
                let Some(joining) = self.message.as_mut() else {
                    // A continuation with nothing to continue.
                    return Err(protocol());
                };
                if joining.data.len() + payload.len() > self.max_message {
                    return Err(too_big());
                }
                joining.data.extend_from_slice(payload);
                check_utf8(joining, h.fin)?;
                if h.fin {
                    let Joining {
                        text,
                        compressed,
                        data,
                        ..
                    } = self.message.take().expect("checked above");
                    out.push(self.complete(text, compressed, data)?);
                }
            }
        }
        Ok(())
    }

    /// A whole message: inflated when compressed, checked, and owned.
    fn complete(&self, text: bool, compressed: bool, data: Vec<u8>) -> Result<Inbound, Inbound> {
        let data = if compressed {
            deflate::inflate(&data, self.max_message).map_err(|e| match e {
                InflateError::TooBig => too_big(),
                InflateError::Corrupt => protocol(),
            })?
        } else {
            data
        };
        if !text {
            return Ok(Inbound::Binary(data.into()));
        }
        match String::from_utf8(data) {
            Ok(s) => Ok(Inbound::Text(s.into())),
            Err(_) => Err(invalid_utf8()),
        }
    }
}

/// Checks the UTF-8 of a fragmented uncompressed text message as far as it can: a
/// character cut at the end of a fragment waits for the next one, unless `last`.
fn check_utf8(m: &mut Joining, last: bool) -> Result<(), Inbound> {
    if !m.text || m.compressed {
        return Ok(());
    }
    match std::str::from_utf8(&m.data[m.checked..]) {
        Ok(_) => m.checked = m.data.len(),
        Err(e) if e.error_len().is_none() && !last => m.checked += e.valid_up_to(),
        Err(_) => return Err(invalid_utf8()),
    }
    Ok(())
}

fn read_into(io: &mut dyn Io, cx: &mut Context<'_>, buf: &mut [u8]) -> Poll<io::Result<usize>> {
    let mut rb = ReadBuf::new(buf);
    match Pin::new(io).poll_read(cx, &mut rb) {
        Poll::Ready(Ok(())) => Poll::Ready(Ok(rb.filled().len())),
        Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
        Poll::Pending => Poll::Pending,
    }
}

/// A refused frame: over the limit (1009), or a protocol error (1002).
fn fail(e: FrameError) -> Inbound {
    match e {
        FrameError::TooBig => too_big(),
        _ => protocol(),
    }
}

fn protocol() -> Inbound {
    Inbound::Fail(close::PROTOCOL, "protocol error")
}

fn too_big() -> Inbound {
    Inbound::Fail(close::TOO_BIG, "message too big")
}

fn invalid_utf8() -> Inbound {
    Inbound::Fail(close::INVALID_UTF8, "invalid UTF-8")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A masked client frame.
    fn frame(b0: u8, payload: &[u8]) -> Vec<u8> {
        super::super::frame::tests::client_frame(b0, payload, [0x37, 0xfa, 0x21, 0x3d])
    }

    /// Feeds `wire` to a reader in pieces of `step` bytes, as reads would deliver it.
    fn feed(reader: &mut Reader, wire: &[u8], step: usize) -> Vec<Inbound> {
        let mut out = Vec::new();
        for piece in wire.chunks(step) {
            let mut buf = std::mem::take(&mut reader.partial);
            buf.extend_from_slice(piece);
            let used = reader.parse(&mut buf, &mut out);
            buf.advance(used);
            reader.partial = buf;
            if matches!(out.last(), Some(Inbound::Fail(..))) {
                break;
            }
        }
        out
    }

    #[test]
    fn joins_fragments_in_any_read_pattern() {
        let mut wire = frame(0x01, "héllo ".as_bytes());
        wire.extend(frame(0x89, b"p"));
        wire.extend(frame(0x00, &"wörld".as_bytes()[..2]));
        wire.extend(frame(0x80, &"wörld".as_bytes()[2..]));
        wire.extend(frame(0x82, &[0, 1, 2]));
        for step in [1, 2, 3, 7, 1000] {
            let mut r = Reader::new(BytesMut::new(), 1000, false);
            assert_eq!(
                feed(&mut r, &wire, step),
                vec![
                    Inbound::Ping(Bytes::from_static(b"p")),
                    Inbound::Text("héllo wörld".into()),
                    Inbound::Binary(Bytes::from_static(&[0, 1, 2])),
                ],
                "step {step}"
            );
            assert!(r.message.is_none());
        }
    }

    #[test]
    fn invalid_utf8_fails_on_the_fragment_that_breaks_it() {
        let mut r = Reader::new(BytesMut::new(), 1000, false);
        let mut wire = frame(0x01, b"ok");
        wire.extend(frame(
            0x00,
            &[
                0xCE, 0xBA, 0xE1, 0xBD, 0xB9, 0xCF, 0x83, 0xCE, 0xBC, 0xCE, 0xB5, 0xED, 0xA0, 0x80,
            ],
        ));
        assert_eq!(feed(&mut r, &wire, 1000), vec![invalid_utf8()]);
        let mut r = Reader::new(BytesMut::new(), 1000, false);
        // A character cut between fragments is fine ...
        let mut wire = frame(0x01, &[0xCE]);
        wire.extend(frame(0x80, &[0xBA]));
        assert_eq!(feed(&mut r, &wire, 1000), vec![Inbound::Text("κ".into())]);
        // ... but not at the end of the message.
        let mut r = Reader::new(BytesMut::new(), 1000, false);
        assert_eq!(
            feed(&mut r, &frame(0x81, &[0xCE]), 1000),
            vec![invalid_utf8()]
        );
    }

    #[test]
    fn limits_and_protocol_errors() {
        let fails = |wire: Vec<u8>| {
            let mut r = Reader::new(BytesMut::new(), 10, false);
            feed(&mut r, &wire, 1000)
        };
        assert_eq!(fails(frame(0x81, &[b'x'; 11])), vec![too_big()]);
        let mut joined = frame(0x01, &[b'x'; 6]);
        joined.extend(frame(0x80, &[b'x'; 6]));
        assert_eq!(fails(joined), vec![too_big()]);
        assert_eq!(fails(frame(0x80, b"x")), vec![protocol()]);
        let mut interleaved = frame(0x01, b"x");
        interleaved.extend(frame(0x81, b"y"));
        assert_eq!(fails(interleaved), vec![protocol()]);
        assert_eq!(
            fails(frame(0x88, &[0x03, 0xED])),
            vec![Inbound::Fail(1002, "invalid close frame")]
        );
        // Nothing after a failure is read.
        let mut after = frame(0xA1, b"x");
        after.extend(frame(0x89, b"p"));
        assert_eq!(fails(after), vec![Inbound::Fail(1002, "protocol error")]);
    }

    #[test]
    fn an_idle_reader_holds_no_buffer() {
        // The handshake's buffer, empty or once its bytes are read, is not kept.
        let r = Reader::new(BytesMut::with_capacity(8192), 1 << 20, false);
        assert_eq!(r.held(), 0, "an empty handshake buffer is dropped");
        let mut early = BytesMut::with_capacity(8192);
        early.extend_from_slice(&frame(0x81, b"early"));
        let mut r = Reader::new(early, 1 << 20, false);
        let mut out = Vec::new();
        r.parse_partial(&mut out);
        assert_eq!(out, vec![Inbound::Text("early".into())]);
        assert_eq!(r.held(), 0, "the handshake's bytes are freed once read");

        let mut r = Reader::new(BytesMut::new(), 1 << 20, false);
        let big = frame(0x82, &vec![7; 200_000]);
        let out = feed(&mut r, &big[..150_000], 150_000);
        assert!(out.is_empty());
        assert!(r.held() >= 150_000, "an incomplete frame is kept");
        let mut out = Vec::new();
        let mut buf = std::mem::take(&mut r.partial);
        buf.extend_from_slice(&big[150_000..]);
        r.partial = buf;
        r.parse_partial(&mut out);
        assert_eq!(out.len(), 1);
        assert_eq!(r.held(), 0, "freed once the frame is complete");
    }
}
