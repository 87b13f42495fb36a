//! The server-to-client half of the NATS client protocol, for a byte stream that may
//! be split anywhere.
//!
//! Over WebSocket, nats-server writes its protocol into binary frames without regard
//! for message boundaries: one frame may hold many `MSG`s, and one `MSG` may span two
//! frames. The parser therefore takes the frames' payloads as one stream and keeps an
//! incomplete tail for the next call. Only what a subscriber receives is understood:
//! `INFO`, `MSG`, `PING`, `PONG`, `+OK` and `-ERR` (the client never asks for headers,
//! so `HMSG` does not occur).

/// Longest control line accepted (`INFO` carries a JSON object of a few hundred bytes).
const MAX_CONTROL_LINE: usize = 64 * 1024;

/// One protocol message.
#[derive(Debug, PartialEq, Eq)]
pub enum Op<'a> {
    /// `INFO {...}`: server information; nothing to do.
    Info,
    /// `+OK` (verbose mode only).
    Ok,
    /// `-ERR 'reason'`.
    Err(&'a [u8]),
    /// `PING`: answer `PONG`.
    Ping,
    /// `PONG`: the answer to the client's `PING`.
    Pong,
    /// `MSG <subject> <sid> [reply-to] <size>` and its payload.
    Msg {
        /// The subject the message was published to.
        subject: &'a [u8],
        /// The payload, exactly `size` bytes.
        payload: &'a [u8],
    },
}

/// What the parser cannot read.
#[derive(Debug, thiserror::Error)]
pub enum NatsError {
    /// An operation this client does not know.
    #[error("unknown NATS operation in `{0}`")]
    Unknown(String),
    /// A `MSG` line without a subject, a sid or a valid size.
    #[error("malformed MSG line `{0}`")]
    BadMsg(String),
    /// No line end within [`MAX_CONTROL_LINE`] bytes.
    #[error("a NATS control line is longer than {MAX_CONTROL_LINE} bytes")]
    LineTooLong,
    /// The two bytes after a payload are not `\r\n`.
    #[error("a NATS payload does not end with CRLF")]
    BadPayloadEnd,
}

/// A parser with the incomplete tail of the stream so far.
#[derive(Debug, Default)]
pub struct Parser {
    /// Bytes received but not yet parsed: the start of an incomplete operation.
    pending: Vec<u8>,
}

impl Parser {
    /// Parses `data`, the next part of the stream, calling `on` for every complete
    /// operation; keeps an incomplete tail for the next call.
    pub fn feed(&mut self, data: &[u8], mut on: impl FnMut(Op<'_>)) -> Result<(), NatsError> {
        if self.pending.is_empty() {
            // The usual case: whole operations, parsed straight from the frame.
            let used = parse_all(data, &mut on)?;
            self.pending.extend_from_slice(&data[used..]);
        } else {
            self.pending.extend_from_slice(data);
            let pending = std::mem::take(&mut self.pending);
            let used = parse_all(&pending, &mut on);
            self.pending = pending;
            self.pending.drain(..used?);
        }
        Ok(())
    }
}

/// Parses every complete operation at the start of `buf`; returns the bytes used.
fn parse_all(buf: &[u8], on: &mut impl FnMut(Op<'_>)) -> Result<usize, NatsError> {
    let mut at = 0;
    while let Some(used) = parse_one(&buf[at..], on)? {
        at += used;
    }
    Ok(at)
}

/// Parses the operation at the start of `buf`, if it is complete.
fn parse_one(buf: &[u8], on: &mut impl FnMut(Op<'_>)) -> Result<Option<usize>, NatsError> {
    let Some(eol) = memchr::memmem::find(buf, b"\r\n") else {
        return if buf.len() > MAX_CONTROL_LINE {
            Err(NatsError::LineTooLong)
        } else {
            Ok(None)
        };
    };
    let line = &buf[..eol];
    let (name, args) = match line.iter().position(|b| *b == b' ' || *b == b'\t') {
        Some(i) => (&line[..i], &line[i + 1..]),
        None => (line, &line[line.len()..]),
    };
    let whole_line = eol + 2;
    if name.eq_ignore_ascii_case(b"MSG") {
        let bad = || NatsError::BadMsg(String::from_utf8_lossy(line).into_owned());
        let mut fields = args
            .split(|b| *b == b' ' || *b == b'\t')
            .filter(|f| !f.is_empty());
        let subject = fields.next().ok_or_else(bad)?;
        let rest: Vec<&[u8]> = fields.collect();
        // sid [reply-to] size
        if rest.len() < 2 || rest.len() > 3 {
            return Err(bad());
        }
        let size: usize = std::str::from_utf8(rest[rest.len() - 1])
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or_else(bad)?;
        let end = whole_line + size;
        if buf.len() < end + 2 {
            return Ok(None);
        }
        if &buf[end..end + 2] != b"\r\n" {
            return Err(NatsError::BadPayloadEnd);
        }
        on(Op::Msg {
            subject,
            payload: &buf[whole_line..end],
        });
        return Ok(Some(end + 2));
    }
    let op = if name.eq_ignore_ascii_case(b"PING") {
        Op::Ping
    } else if name.eq_ignore_ascii_case(b"PONG") {
        Op::Pong
    } else if name.eq_ignore_ascii_case(b"INFO") {
        Op::Info
    } else if name.eq_ignore_ascii_case(b"+OK") {
        Op::Ok
    } else if name.eq_ignore_ascii_case(b"-ERR") {
        Op::Err(args)
    } else {
        return Err(NatsError::Unknown(
            String::from_utf8_lossy(&line[..line.len().min(80)]).into_owned(),
        ));
    };
    on(op);
    Ok(Some(whole_line))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every operation in `stream`, as text, fed in pieces of `chunk` bytes.
    fn ops(stream: &[u8], chunk: usize) -> Vec<String> {
        let mut parser = Parser::default();
        let mut seen = Vec::new();
        for piece in stream.chunks(chunk) {
            parser
                .feed(piece, |op| {
                    seen.push(match op {
                        Op::Msg { subject, payload } => format!(
                            "MSG {} {}",
                            String::from_utf8_lossy(subject),
                            String::from_utf8_lossy(payload)
                        ),
                        Op::Err(reason) => format!("ERR {}", String::from_utf8_lossy(reason)),
                        other => format!("{other:?}"),
                    })
                })
                .expect("valid stream");
        }
        assert!(parser.pending.is_empty(), "a whole stream leaves no tail");
        seen
    }

    #[test]
    fn a_stream_split_anywhere_gives_the_same_operations() {
        let stream = b"INFO {\"server_id\":\"x\"}\r\nPONG\r\nMSG bench.t1 1 5\r\nhello\r\n\
            msg bench.t2 2 inbox.1 0\r\n\r\nPING\r\n+OK\r\n-ERR 'Slow Consumer'\r\n\
            MSG bench.t3 1 7\r\na\r\nb\r\nc\r\n";
        let want = vec![
            "Info",
            "Pong",
            "MSG bench.t1 hello",
            "MSG bench.t2 ",
            "Ping",
            "Ok",
            "ERR 'Slow Consumer'",
            "MSG bench.t3 a\r\nb\r\nc",
        ];
        for chunk in 1..=stream.len() {
            assert_eq!(ops(stream, chunk), want, "pieces of {chunk} bytes");
        }
    }

    #[test]
    fn malformed_input_is_an_error() {
        for bad in [
            &b"MSG bench.t1\r\n"[..],
            b"MSG bench.t1 1 x\r\n",
            b"MSG a 1 2 3 4\r\n",
            b"MSG a 1 2\r\nabXY",
            b"HELLO\r\n",
        ] {
            let mut parser = Parser::default();
            assert!(parser.feed(bad, |_| {}).is_err(), "{bad:?}");
        }
        let mut parser = Parser::default();
        let long = vec![b'a'; MAX_CONTROL_LINE + 1];
        assert!(matches!(
            parser.feed(&long, |_| {}),
            Err(NatsError::LineTooLong)
        ));
    }
}
