//! RFC 6455 framing, server side: reading a client frame's header (section 5.2),
//! unmasking, writing a server frame's header, and checking a close frame's payload
//! (section 7.4). Pure functions over byte slices; the reader and writer around them
//! are in `read.rs` and `mod.rs`.

/// A frame's opcode (RFC 6455 section 5.2; the others are reserved).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum OpCode {
    Continuation,
    Text,
    Binary,
    Close,
    Ping,
    Pong,
}

impl OpCode {
    fn from_bits(bits: u8) -> Option<Self> {
        Some(match bits {
            0x0 => OpCode::Continuation,
            0x1 => OpCode::Text,
            0x2 => OpCode::Binary,
            0x8 => OpCode::Close,
            0x9 => OpCode::Ping,
            0xA => OpCode::Pong,
            _ => return None,
        })
    }

    fn bits(self) -> u8 {
        match self {
            OpCode::Continuation => 0x0,
            OpCode::Text => 0x1,
            OpCode::Binary => 0x2,
            OpCode::Close => 0x8,
            OpCode::Ping => 0x9,
            OpCode::Pong => 0xA,
        }
    }

    /// Close, Ping and Pong.
    pub(crate) fn is_control(self) -> bool {
        matches!(self, OpCode::Close | OpCode::Ping | OpCode::Pong)
    }
}

/// Why a client frame is refused; each maps to the close code it gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(crate) enum FrameError {
    #[error("reserved bits set")]
    ReservedBits,
    #[error("reserved opcode")]
    ReservedOpcode,
    #[error("client frame not masked")]
    Unmasked,
    #[error("control frame fragmented or longer than 125 bytes")]
    BadControl,
    #[error("frame larger than the message limit")]
    TooBig,
}

/// A client frame's header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Header {
    pub fin: bool,
    /// RSV1: the message is compressed (permessage-deflate); refused unless negotiated.
    pub rsv1: bool,
    pub opcode: OpCode,
    pub mask: [u8; 4],
    /// Header bytes, masking key included.
    pub header_len: usize,
    /// Payload bytes.
    pub payload_len: usize,
}

impl Header {
    /// Header and payload.
    pub(crate) fn frame_len(&self) -> usize {
        self.header_len + self.payload_len
    }
}

/// Reads the header at the start of `buf`: `Ok(None)` when `buf` does not hold all of
/// it yet. A payload longer than `max_payload` is refused here, before any of it is
/// read; so are reserved bits other than RSV1 (`rsv1_allowed`: the connection
/// negotiated permessage-deflate), reserved opcodes, unmasked frames, and control
/// frames that are fragmented or longer than 125 bytes.
pub(crate) fn parse_header(
    buf: &[u8],
    max_payload: usize,
    rsv1_allowed: bool,
) -> Result<Option<Header>, FrameError> {
    let [b0, b1, ..] = *buf else {
        return Ok(None);
    };
    if b0 & 0x30 != 0 || (b0 & 0x40 != 0 && !rsv1_allowed) {
        return Err(FrameError::ReservedBits);
    }
    let opcode = OpCode::from_bits(b0 & 0x0F).ok_or(FrameError::ReservedOpcode)?;
    let fin = b0 & 0x80 != 0;
    if b1 & 0x80 == 0 {
        return Err(FrameError::Unmasked);
    }
    let (len, at) = match b1 & 0x7F {
        126 => match buf.get(2..4) {
            Some(b) => (u64::from(u16::from_be_bytes([b[0], b[1]])), 4),
            None => return Ok(None),
        },
        127 => match buf.get(2..10) {
            Some(b) => (u64::from_be_bytes(b.try_into().unwrap_or_default()), 10),
            None => return Ok(None),
        },
        n => (u64::from(n), 2),
    };
    if opcode.is_control() && (!fin || len > 125) {
        return Err(FrameError::BadControl);
    }
    if len > max_payload as u64 {
        return Err(FrameError::TooBig);
    }
    let Some(mask) = buf.get(at..at + 4) else {
        return Ok(None);
    };
    Ok(Some(Header {
        fin,
        rsv1: b0 & 0x40 != 0,
        opcode,
        mask: [mask[0], mask[1], mask[2], mask[3]],
        header_len: at + 4,
        payload_len: len as usize,
    }))
}

/// Unmasks `payload` in place; `offset` is where it starts within the frame's payload
/// (a payload unmasked in pieces).
pub(crate) fn unmask(payload: &mut [u8], mask: [u8; 4], offset: usize) {
    let mut key = [0u8; 8];
    for (i, k) in key.iter_mut().enumerate() {
        *k = mask[(offset + i) % 4];
    }
    let wide = u64::from_ne_bytes(key);
    let mut chunks = payload.chunks_exact_mut(8);
    for chunk in &mut chunks {
        let v = u64::from_ne_bytes(chunk.try_into().unwrap_or_default()) ^ wide;
        chunk.copy_from_slice(&v.to_ne_bytes());
    }
    for (i, b) in chunks.into_remainder().iter_mut().enumerate() {
        *b ^= key[i];
    }
}

/// Most bytes a server frame's header takes (no mask).
pub(crate) const MAX_HEADER: usize = 10;

/// A server frame's header (final, unmasked) for a payload of `len` bytes, with RSV1
/// when the payload is compressed.
#[derive(Debug, Clone, Copy)]
pub(crate) struct OutHeader {
    bytes: [u8; MAX_HEADER],
    len: u8,
}

impl OutHeader {
    pub(crate) fn new(opcode: OpCode, compressed: bool, len: usize) -> Self {
        let mut bytes = [0u8; MAX_HEADER];
        bytes[0] = 0x80 | opcode.bits() | if compressed { 0x40 } else { 0 };
        let n = if len < 126 {
            bytes[1] = len as u8;
            2
        } else if len <= usize::from(u16::MAX) {
            bytes[1] = 126;
            bytes[2..4].copy_from_slice(&(len as u16).to_be_bytes());
            4
        } else {
            bytes[1] = 127;
            bytes[2..10].copy_from_slice(&(len as u64).to_be_bytes());
            10
        };
        OutHeader { bytes, len: n }
    }

    pub(crate) fn as_bytes(&self) -> &[u8] {
        &self.bytes[..usize::from(self.len)]
    }
}

/// A close frame's payload as the client sent it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ClosePayload {
    /// No payload: no status code (1005 in logs and metrics).
    Empty,
    /// A status code and its reason (checked UTF-8).
    Code(u16, String),
}

/// Checks a close frame's payload (RFC 6455 section 7.4): empty, or a code that may
/// be sent on the wire followed by a UTF-8 reason. A one-byte payload or a reserved
/// code is a protocol error (1002); a reason that is not UTF-8 is 1007.
pub(crate) fn parse_close(payload: &[u8]) -> Result<ClosePayload, u16> {
    use crate::protocol::close::{INVALID_UTF8, PROTOCOL};
    match payload {
        [] => Ok(ClosePayload::Empty),
        [_] => Err(PROTOCOL),
        [hi, lo, reason @ ..] => {
            let code = u16::from_be_bytes([*hi, *lo]);
            let sendable = matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999);
            if !sendable {
                return Err(PROTOCOL);
            }
            let reason = std::str::from_utf8(reason).map_err(|_| INVALID_UTF8)?;
            Ok(ClosePayload::Code(code, reason.to_owned()))
        }
    }
}

/// The payload of a close frame Herald sends: the code, then the reason cut to fit
/// the 125 bytes a control frame may carry (at a character boundary).
pub(crate) fn close_payload(code: u16, reason: &str) -> bytes::Bytes {
    let mut end = reason.len().min(123);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    let mut out = Vec::with_capacity(2 + end);
    out.extend_from_slice(&code.to_be_bytes());
    out.extend_from_slice(&reason.as_bytes()[..end]);
    out.into()
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A masked client frame, as a browser sends it.
    pub(crate) fn client_frame(b0: u8, payload: &[u8], mask: [u8; 4]) -> Vec<u8> {
        let mut out = vec![b0];
        match payload.len() {
            n if n < 126 => out.push(0x80 | n as u8),
            n if n <= 0xFFFF => {
                out.push(0x80 | 126);
                out.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                out.push(0x80 | 127);
                out.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        out.extend_from_slice(&mask);
        out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        out
    }

    #[test]
    fn reads_every_length_form_and_unmasks() {
        let mask = [1, 2, 3, 4];
        for len in [0, 1, 125, 126, 65_535, 65_536, 100_000] {
            let payload: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
            let frame = client_frame(0x81, &payload, mask);
            for cut in [0, 1, 2, 3, 5, 9, 13] {
                if cut < frame.len() - payload.len() {
                    assert_eq!(parse_header(&frame[..cut], usize::MAX, false), Ok(None));
                }
            }
            let h = parse_header(&frame, usize::MAX, false)
                .expect("a valid header")
                .expect("a whole header");
            assert_eq!((h.fin, h.opcode, h.payload_len), (true, OpCode::Text, len));
            assert_eq!(h.frame_len(), frame.len());
            let mut body = frame[h.header_len..].to_vec();
            // In two pieces, as a payload that arrived in two reads.
            let (a, b) = body.split_at_mut(len / 3);
            unmask(a, h.mask, 0);
            unmask(b, h.mask, len / 3);
            assert_eq!(body, payload);
        }
    }

    #[test]
    fn refuses_what_rfc_6455_forbids() {
        let m = [9, 9, 9, 9];
        let parse = |f: Vec<u8>| parse_header(&f, 1000, false);
        assert_eq!(
            parse(client_frame(0xA1, b"x", m)),
            Err(FrameError::ReservedBits)
        );
        assert_eq!(
            parse(client_frame(0xC1, b"x", m)),
            Err(FrameError::ReservedBits),
            "RSV1 without permessage-deflate"
        );
        assert!(parse_header(&client_frame(0xC1, b"x", m), 1000, true).is_ok());
        assert_eq!(
            parse(client_frame(0x83, b"x", m)),
            Err(FrameError::ReservedOpcode)
        );
        assert_eq!(
            parse(client_frame(0x0B, b"", m)),
            Err(FrameError::ReservedOpcode)
        );
        assert_eq!(parse(vec![0x81, 0x01, b'x']), Err(FrameError::Unmasked));
        assert_eq!(
            parse(client_frame(0x09, b"", m)),
            Err(FrameError::BadControl),
            "a fragmented ping"
        );
        assert_eq!(
            parse(client_frame(0x89, &[0; 126], m)),
            Err(FrameError::BadControl)
        );
        assert_eq!(
            parse(client_frame(0x82, &[0; 1001], m)),
            Err(FrameError::TooBig)
        );
        // Refused from the header alone, before the payload arrives.
        assert_eq!(
            parse_header(&[0x82, 0xFF, 0, 0, 0, 1, 0, 0, 0, 0], 1000, false),
            Err(FrameError::TooBig)
        );
    }

    #[test]
    fn writes_headers_of_every_length_form() {
        assert_eq!(OutHeader::new(OpCode::Text, false, 5).as_bytes(), [0x81, 5]);
        assert_eq!(
            OutHeader::new(OpCode::Text, true, 300).as_bytes(),
            [0xC1, 126, 1, 44]
        );
        assert_eq!(
            OutHeader::new(OpCode::Binary, false, 70_000).as_bytes(),
            [0x82, 127, 0, 0, 0, 0, 0, 1, 0x11, 0x70]
        );
        assert_eq!(
            OutHeader::new(OpCode::Close, false, 0).as_bytes(),
            [0x88, 0]
        );
    }

    #[test]
    fn close_payloads_are_checked() {
        assert_eq!(parse_close(b""), Ok(ClosePayload::Empty));
        assert_eq!(parse_close(&[3]), Err(1002));
        assert_eq!(
            parse_close(&[0x03, 0xE8, b'o', b'k']),
            Ok(ClosePayload::Code(1000, "ok".into()))
        );
        for bad in [0u16, 999, 1004, 1005, 1006, 1015, 1016, 2999, 5000, 65535] {
            assert_eq!(parse_close(&bad.to_be_bytes()), Err(1002), "code {bad}");
        }
        for good in [1000u16, 1001, 1002, 1003, 1007, 1011, 1014, 3000, 4999] {
            assert!(parse_close(&good.to_be_bytes()).is_ok(), "code {good}");
        }
        assert_eq!(parse_close(&[0x03, 0xE8, 0xFF]), Err(1007));
        let long = "é".repeat(100);
        let p = close_payload(1000, &long);
        assert!(p.len() <= 125);
        assert!(std::str::from_utf8(&p[2..]).is_ok());
    }
}
