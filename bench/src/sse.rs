//! A minimal Server-Sent Events client for Herald's `GET /sse` (docs/protocol.md,
//! section 10): the request, the chunked response body, and the messages in it.
//!
//! The topics go in the URL (`?topics=t1,t2`), so a stream needs no subscribe frame;
//! the session's messages are the WebSocket's JSON objects, one per SSE message, in
//! `data:` lines. The decoder keeps what it has not parsed yet in one buffer per
//! connection, like the WebSocket read loop, and hands each message's data on where
//! it lies when it is one line (Herald's always are, unless a payload has line breaks).

use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};

use crate::target::topic_name;
use crate::ws::{self, HandshakeError, WsUrl};

/// The path of the stream of `topics`, beside the WebSocket path of `url`
/// (`/ws` → `/sse?topics=t1,t2`, `/x/ws` → `/x/sse?…`).
pub fn stream_path(url: &WsUrl, topics: &[u32]) -> String {
    let path = url.path.split('?').next().unwrap_or("/");
    let dir = &path[..=path.rfind('/').unwrap_or(0)];
    let names: Vec<String> = topics.iter().map(|&t| topic_name(t)).collect();
    format!("{dir}sse?topics={}", names.join(","))
}

/// The request of a stream, with extra header lines (`Name: value`).
pub fn request(url: &WsUrl, topics: &[u32], headers: &[(String, String)]) -> Vec<u8> {
    let mut req = format!(
        "GET {} HTTP/1.1\r\nHost: {}\r\nAccept: text/event-stream\r\n",
        stream_path(url, topics),
        url.host_header()
    );
    for (name, value) in headers {
        req.push_str(&format!("{name}: {value}\r\n"));
    }
    req.push_str("\r\n");
    req.into_bytes()
}

/// Sends the request and reads the response head. Returns the decoder for the body
/// and what of the body came with the head (Herald's `welcome`, often).
pub async fn open<S>(
    stream: &mut S,
    url: &WsUrl,
    topics: &[u32],
    headers: &[(String, String)],
) -> Result<(Decoder, Vec<u8>), HandshakeError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    stream.write_all(&request(url, topics, headers)).await?;
    let head = ws::response_head(stream).await?;
    if head.status != 200 {
        return Err(head.refused());
    }
    let chunked = head
        .header("transfer-encoding")
        .is_some_and(|v| v.eq_ignore_ascii_case("chunked"));
    Ok((Decoder::new(chunked), head.rest))
}

/// Why a body cannot be read on.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    /// The server ended the response (the last chunk).
    #[error("the server ended the stream")]
    End,
    /// A chunk size line that is not hexadecimal.
    #[error("bad chunk size line in the event stream")]
    BadChunk,
    /// A message longer than the limit.
    #[error("an event stream message over {0} bytes")]
    TooLarge(usize),
}

/// Where the chunked decoding is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Chunk {
    /// Expecting a size line.
    Size,
    /// This many data bytes of the current chunk to go.
    Data(usize),
    /// The CRLF after a chunk's data.
    Trailer,
}

/// The decoder of one stream's body.
#[derive(Debug)]
pub struct Decoder {
    /// `Transfer-Encoding: chunked` (else the body is the stream as it is).
    chunked: bool,
    chunk: Chunk,
    /// Decoded stream text not yet ending in a blank line.
    text: Vec<u8>,
    /// Joined `data:` lines of a message that has several.
    joined: Vec<u8>,
}

impl Decoder {
    /// A decoder for a body that is chunked or not.
    pub fn new(chunked: bool) -> Decoder {
        Decoder {
            chunked,
            chunk: Chunk::Size,
            text: Vec::new(),
            joined: Vec::new(),
        }
    }

    /// Decodes the body bytes at the start of `buf` and calls `message` with the data
    /// of every whole message. Returns how many bytes of `buf` it used; the rest (a
    /// size line cut short) waits for more. `max` bounds one message.
    pub fn feed<E: From<DecodeError>>(
        &mut self,
        buf: &[u8],
        max: usize,
        mut message: impl FnMut(&[u8]) -> Result<(), E>,
    ) -> Result<usize, E> {
        let used = if self.chunked {
            self.dechunk(buf)?
        } else {
            self.text.extend_from_slice(buf);
            buf.len()
        };
        let mut start = 0;
        while let Some(end) = memchr::memmem::find(&self.text[start..], b"\n\n") {
            let block = start..start + end;
            start += end + 2;
            if let Some(data) = message_data(&self.text[block], &mut self.joined) {
                message(data)?;
            }
        }
        self.text.drain(..start);
        if self.text.len() > max {
            return Err(DecodeError::TooLarge(max).into());
        }
        Ok(used)
    }

    /// Moves the chunk data of `buf` into `text`; returns the bytes used.
    fn dechunk(&mut self, buf: &[u8]) -> Result<usize, DecodeError> {
        let mut at = 0;
        loop {
            match self.chunk {
                Chunk::Size => {
                    let Some(eol) = memchr::memmem::find(&buf[at..], b"\r\n") else {
                        return Ok(at);
                    };
                    let line = &buf[at..at + eol];
                    let hex = line.split(|&b| b == b';').next().unwrap_or(line);
                    let size = std::str::from_utf8(hex)
                        .ok()
                        .and_then(|h| usize::from_str_radix(h.trim(), 16).ok())
                        .ok_or(DecodeError::BadChunk)?;
                    if size == 0 {
                        return Err(DecodeError::End);
                    }
                    at += eol + 2;
                    self.chunk = Chunk::Data(size);
                }
                Chunk::Data(left) => {
                    let take = left.min(buf.len() - at);
                    self.text.extend_from_slice(&buf[at..at + take]);
                    at += take;
                    self.chunk = if take == left {
                        Chunk::Trailer
                    } else {
                        Chunk::Data(left - take)
                    };
                    if at == buf.len() {
                        return Ok(at);
                    }
                }
                Chunk::Trailer => {
                    if buf.len() - at < 2 {
                        return Ok(at);
                    }
                    if &buf[at..at + 2] != b"\r\n" {
                        return Err(DecodeError::BadChunk);
                    }
                    at += 2;
                    self.chunk = Chunk::Size;
                }
            }
        }
    }
}

/// The data of one message (its lines, without the blank line that ends it): the
/// one `data:` line where it lies, or several joined with `\n` in `joined`; `None`
/// for a message without data (a comment).
fn message_data<'a>(block: &'a [u8], joined: &'a mut Vec<u8>) -> Option<&'a [u8]> {
    let mut lines = block
        .split(|&b| b == b'\n')
        .filter_map(|line| line.strip_prefix(b"data:"))
        .map(|d| d.strip_prefix(b" ").unwrap_or(d));
    let first = lines.next()?;
    let Some(second) = lines.next() else {
        return Some(first);
    };
    joined.clear();
    joined.extend_from_slice(first);
    for line in std::iter::once(second).chain(lines) {
        joined.push(b'\n');
        joined.extend_from_slice(line);
    }
    Some(joined)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn url(s: &str) -> WsUrl {
        s.parse().expect("url")
    }

    #[test]
    fn the_stream_is_beside_the_websocket_path() {
        assert_eq!(
            stream_path(&url("ws://h:1/ws"), &[3, 4]),
            "/sse?topics=t3,t4"
        );
        assert_eq!(
            stream_path(&url("ws://h:1/x/ws?a=b"), &[0]),
            "/x/sse?topics=t0"
        );
        let req = String::from_utf8(request(
            &url("ws://h:1/ws"),
            &[1],
            &[("Authorization".into(), "Bearer t".into())],
        ))
        .expect("utf8");
        assert!(req.starts_with("GET /sse?topics=t1 HTTP/1.1\r\nHost: h:1\r\n"));
        assert!(req.ends_with("Authorization: Bearer t\r\n\r\n"));
    }

    /// Decodes `body` fed in pieces of `step` bytes, as reads would split it.
    fn decode(body: &[u8], chunked: bool, step: usize) -> Result<Vec<String>, DecodeError> {
        let mut d = Decoder::new(chunked);
        let mut out = Vec::new();
        let mut pending = Vec::new();
        for piece in body.chunks(step) {
            pending.extend_from_slice(piece);
            let used = d.feed(&pending, 1 << 20, |m| {
                out.push(String::from_utf8_lossy(m).into_owned());
                Ok::<_, DecodeError>(())
            })?;
            pending.drain(..used);
        }
        Ok(out)
    }

    fn chunked(parts: &[&str]) -> Vec<u8> {
        let mut body = Vec::new();
        for p in parts {
            body.extend_from_slice(format!("{:x}\r\n{p}\r\n", p.len()).as_bytes());
        }
        body
    }

    #[test]
    fn messages_come_whole_however_chunks_and_reads_split_them() {
        let stream =
            "data: {\"type\":\"welcome\"}\n\nid: abc\ndata: {\"type\":\"event\",\"seq\":1}\n\n\
                      data: {\"a\":\ndata: 1}\n\n: comment\n\ndata:\n\n";
        let want = [
            "{\"type\":\"welcome\"}",
            "{\"type\":\"event\",\"seq\":1}",
            "{\"a\":\n1}",
            "",
        ];
        let (a, b) = stream.split_at(30);
        let body = chunked(&[a, b]);
        for step in [1, 2, 7, body.len()] {
            assert_eq!(
                decode(&body, true, step).expect("decodes"),
                want,
                "step {step}"
            );
            assert_eq!(
                decode(stream.as_bytes(), false, step).expect("decodes"),
                want
            );
        }
    }

    #[test]
    fn the_last_chunk_ends_the_stream_and_bad_sizes_are_errors() {
        let mut body = chunked(&["data: x\n\n"]);
        body.extend_from_slice(b"0\r\n\r\n");
        assert!(matches!(decode(&body, true, 64), Err(DecodeError::End)));
        assert!(matches!(
            decode(b"zz\r\ndata", true, 64),
            Err(DecodeError::BadChunk)
        ));
        let huge = chunked(&[&"x".repeat(100)]);
        let mut d = Decoder::new(true);
        let err = d.feed(&huge, 50, |_| Ok::<_, DecodeError>(()));
        assert!(matches!(err, Err(DecodeError::TooLarge(50))));
    }
}
