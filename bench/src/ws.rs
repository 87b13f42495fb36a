//! A minimal WebSocket client (RFC 6455): the upgrade, frame headers, masked frames.
//!
//! Why not tokio-tungstenite here: the receiving side of the tool must outrun the
//! server under test on one core. With frames parsed in place in one read buffer per
//! connection, a delivery costs a header parse and a search for the stamp, with no
//! allocation, no copy and no UTF-8 validation. The tool sends almost nothing (a
//! subscribe, heartbeat answers), so the sending side stays simple.
//!
//! No TLS (`ws://` only), no extensions (no compression is offered, so none is used).

use std::fmt;
use std::str::FromStr;

use base64::Engine as _;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;

/// Frame opcodes (RFC 6455 section 5.2).
pub mod opcode {
    /// A further fragment of a message.
    pub const CONTINUATION: u8 = 0x0;
    /// First (or only) frame of a text message.
    pub const TEXT: u8 = 0x1;
    /// First (or only) frame of a binary message.
    pub const BINARY: u8 = 0x2;
    /// Connection close, with an optional code and reason.
    pub const CLOSE: u8 = 0x8;
    /// Ping: must be answered with a Pong carrying the same payload.
    pub const PING: u8 = 0x9;
    /// Pong.
    pub const PONG: u8 = 0xA;
}

/// Longest upgrade response head the client reads.
const MAX_RESPONSE_HEAD: usize = 16 * 1024;

/// A `ws://host[:port][/path]` URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WsUrl {
    /// Host name or address, as written (brackets kept off IPv6 addresses).
    pub host: String,
    /// Port; 80 when the URL has none.
    pub port: u16,
    /// Path and query, at least `/`.
    pub path: String,
}

/// A URL the client cannot use.
#[derive(Debug, thiserror::Error)]
#[error("`{0}` is not a usable URL: expected ws://HOST[:PORT][/PATH] (wss:// is not supported)")]
pub struct UrlError(String);

impl FromStr for WsUrl {
    type Err = UrlError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || UrlError(s.to_string());
        let rest = s.strip_prefix("ws://").ok_or_else(bad)?;
        let (authority, path) = match rest.find(['/', '?']) {
            Some(i) if rest.as_bytes()[i] == b'/' => (&rest[..i], rest[i..].to_string()),
            Some(i) => (&rest[..i], format!("/{}", &rest[i..])),
            None => (rest, "/".to_string()),
        };
        let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
            let (host, after) = v6.split_once(']').ok_or_else(bad)?;
            let port = match after.strip_prefix(':') {
                Some(p) => p.parse().map_err(|_| bad())?,
                None if after.is_empty() => 80,
                None => return Err(bad()),
            };
            (host.to_string(), port)
        } else {
            match authority.rsplit_once(':') {
                Some((host, port)) => (host.to_string(), port.parse().map_err(|_| bad())?),
                None => (authority.to_string(), 80),
            }
        };
        if host.is_empty() || authority.contains('@') {
            return Err(bad());
        }
        Ok(WsUrl { host, port, path })
    }
}

impl fmt::Display for WsUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "ws://[{}]:{}{}", self.host, self.port, self.path)
        } else {
            write!(f, "ws://{}:{}{}", self.host, self.port, self.path)
        }
    }
}

impl WsUrl {
    /// The `Host` header value.
    pub fn host_header(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

/// Why an upgrade failed.
#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    /// The server answered, but not with 101 (or 200 for an event stream; Herald: 503
    /// past `max_connections`, 401 for bad credentials, 400 for an unsupported
    /// subprotocol).
    #[error("the server answered HTTP {status} instead of accepting the connection: {body}")]
    Status {
        /// The HTTP status code.
        status: u16,
        /// The start of the response body, for the error message.
        body: String,
    },
    /// The response head is not HTTP, or too long.
    #[error("the upgrade response is not a valid HTTP response")]
    Malformed,
    /// 101, but `Sec-WebSocket-Accept` is missing or wrong.
    #[error("the upgrade response has no matching Sec-WebSocket-Accept")]
    BadAccept,
    /// The connection ended before the response head did.
    #[error("the server closed the connection during the upgrade")]
    Closed,
    /// Reading or writing the socket failed.
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// The upgrade request for `url`, with extra header lines (`Name: value`).
pub fn upgrade_request(url: &WsUrl, key: &str, headers: &[(String, String)]) -> Vec<u8> {
    let mut req = format!(
        "GET {} HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n",
        url.path,
        url.host_header()
    );
    for (name, value) in headers {
        req.push_str(name);
        req.push_str(": ");
        req.push_str(value);
        req.push_str("\r\n");
    }
    req.push_str("\r\n");
    req.into_bytes()
}

/// Performs the upgrade on `stream`. Returns what the server sent after the response
/// head (frames may follow it in the same segment, like Herald's `welcome`).
pub async fn handshake<S>(
    stream: &mut S,
    url: &WsUrl,
    headers: &[(String, String)],
) -> Result<Vec<u8>, HandshakeError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let key = base64::engine::general_purpose::STANDARD.encode(rand::random::<[u8; 16]>());
    stream
        .write_all(&upgrade_request(url, &key, headers))
        .await?;
    let head = response_head(stream).await?;
    if head.status != 101 {
        return Err(head.refused());
    }
    let expected = derive_accept_key(key.as_bytes());
    if head.header("sec-websocket-accept") != Some(expected.as_str()) {
        return Err(HandshakeError::BadAccept);
    }
    Ok(head.rest)
}

/// An HTTP/1.1 response head, and what came after it in the same reads.
#[derive(Debug)]
pub struct ResponseHead {
    /// The status code.
    pub status: u16,
    /// The head's text, status line included.
    head: String,
    /// The bytes after the head.
    pub rest: Vec<u8>,
}

impl ResponseHead {
    /// The value of the first header called `name` (any case), trimmed.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.head.split("\r\n").skip(1).find_map(|line| {
            let (n, v) = line.split_once(':')?;
            n.trim().eq_ignore_ascii_case(name).then(|| v.trim())
        })
    }

    /// The error for a status the client did not want, with the start of the body,
    /// which is enough to say why.
    pub fn refused(&self) -> HandshakeError {
        let body = String::from_utf8_lossy(&self.rest);
        let body: String = body.chars().take(200).collect();
        HandshakeError::Status {
            status: self.status,
            body: body.trim().to_string(),
        }
    }
}

/// Reads a response head from `stream` (at most [`MAX_RESPONSE_HEAD`] bytes).
pub async fn response_head<S>(stream: &mut S) -> Result<ResponseHead, HandshakeError>
where
    S: AsyncRead + Unpin,
{
    let mut buf = Vec::with_capacity(1024);
    let head_end = loop {
        if let Some(i) = memchr::memmem::find(&buf, b"\r\n\r\n") {
            break i + 4;
        }
        if buf.len() > MAX_RESPONSE_HEAD {
            return Err(HandshakeError::Malformed);
        }
        buf.reserve(1024);
        if stream.read_buf(&mut buf).await? == 0 {
            return Err(HandshakeError::Closed);
        }
    };
    let head = std::str::from_utf8(&buf[..head_end])
        .map_err(|_| HandshakeError::Malformed)?
        .to_owned();
    let status: u16 = head
        .strip_prefix("HTTP/1.1 ")
        .and_then(|l| l.get(..3))
        .and_then(|c| c.parse().ok())
        .ok_or(HandshakeError::Malformed)?;
    Ok(ResponseHead {
        status,
        head,
        rest: buf.split_off(head_end),
    })
}

/// A frame header, parsed from the start of a buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Frame {
    /// Last frame of its message.
    pub fin: bool,
    /// One of [`opcode`].
    pub opcode: u8,
    /// Bytes of the header, mask key included.
    pub header_len: usize,
    /// Bytes of the payload.
    pub len: usize,
    /// Masking key; servers must not mask, but a masked frame is unmasked all the same.
    pub mask: Option<[u8; 4]>,
    /// RSV1: compressed (permessage-deflate); the caller knows whether it negotiated it.
    pub compressed: bool,
}

/// A frame the client refuses to handle.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// Longer than the client's limit (`max` in [`parse`]).
    #[error("a frame of {0} bytes is over the limit")]
    TooLarge(u64),
    /// Reserved bits set: an extension the client never negotiated (RSV1 is left to
    /// the connection, which knows whether it offered permessage-deflate).
    #[error("a frame has reserved bits set (no extension was negotiated)")]
    Reserved,
}

/// Parses the frame at the start of `buf`. `Ok(None)` until the whole frame (header
/// and payload) is in `buf`.
pub fn parse(buf: &[u8], max: usize) -> Result<Option<Frame>, FrameError> {
    if buf.len() < 2 {
        return Ok(None);
    }
    let (b0, b1) = (buf[0], buf[1]);
    if b0 & 0x30 != 0 {
        return Err(FrameError::Reserved);
    }
    let masked = b1 & 0x80 != 0;
    let (len, mut header_len) = match b1 & 0x7F {
        126 => {
            let Some(b) = buf.get(2..4) else {
                return Ok(None);
            };
            (u64::from(u16::from_be_bytes([b[0], b[1]])), 4)
        }
        127 => {
            let Some(b) = buf.get(2..10) else {
                return Ok(None);
            };
            let mut be = [0u8; 8];
            be.copy_from_slice(b);
            (u64::from_be_bytes(be), 10)
        }
        n => (u64::from(n), 2),
    };
    let len = usize::try_from(len)
        .ok()
        .filter(|&l| l <= max)
        .ok_or(FrameError::TooLarge(len))?;
    let mask = if masked {
        let Some(m) = buf.get(header_len..header_len + 4) else {
            return Ok(None);
        };
        header_len += 4;
        Some([m[0], m[1], m[2], m[3]])
    } else {
        None
    };
    if buf.len() < header_len + len {
        return Ok(None);
    }
    Ok(Some(Frame {
        fin: b0 & 0x80 != 0,
        opcode: b0 & 0x0F,
        header_len,
        len,
        mask,
        compressed: b0 & 0x40 != 0,
    }))
}

/// XORs `data` with the masking key (masking and unmasking are the same).
pub fn apply_mask(data: &mut [u8], mask: [u8; 4]) {
    for (i, b) in data.iter_mut().enumerate() {
        *b ^= mask[i % 4];
    }
}

/// Appends one final client frame (masked, as RFC 6455 requires of clients) to `out`.
pub fn encode(opcode: u8, payload: &[u8], out: &mut Vec<u8>) {
    out.push(0x80 | opcode);
    match payload.len() {
        n if n < 126 => out.push(0x80 | n as u8),
        n if n <= usize::from(u16::MAX) => {
            out.push(0x80 | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(0x80 | 127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    let mask: [u8; 4] = rand::random();
    out.extend_from_slice(&mask);
    let start = out.len();
    out.extend_from_slice(payload);
    apply_mask(&mut out[start..], mask);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn url(s: &str) -> WsUrl {
        s.parse().expect("url")
    }

    #[test]
    fn urls_parse_with_and_without_port_and_path() {
        assert_eq!(
            url("ws://127.0.0.1:8080/ws"),
            WsUrl {
                host: "127.0.0.1".into(),
                port: 8080,
                path: "/ws".into()
            }
        );
        assert_eq!(url("ws://localhost").port, 80);
        assert_eq!(url("ws://localhost").path, "/");
        assert_eq!(url("ws://h:1?x=1").path, "/?x=1");
        assert_eq!(url("ws://[::1]:9/a").host, "::1");
        assert_eq!(url("ws://[::1]:9/a").to_string(), "ws://[::1]:9/a");
        for bad in [
            "wss://h/",
            "http://h/",
            "ws://",
            "ws://:80/",
            "ws://h:x/",
            "ws://u:p@h/",
        ] {
            assert!(bad.parse::<WsUrl>().is_err(), "{bad}");
        }
    }

    /// Builds a server frame (unmasked unless `mask` is given).
    fn server_frame(fin: bool, opcode: u8, payload: &[u8], mask: Option<[u8; 4]>) -> Vec<u8> {
        let mut out = vec![(if fin { 0x80 } else { 0 }) | opcode];
        let m = if mask.is_some() { 0x80 } else { 0 };
        match payload.len() {
            n if n < 126 => out.push(m | n as u8),
            n if n <= 65535 => {
                out.push(m | 126);
                out.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                out.push(m | 127);
                out.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        let start = out.len();
        if let Some(k) = mask {
            out.extend_from_slice(&k);
        }
        let body = out.len();
        out.extend_from_slice(payload);
        if let Some(k) = mask {
            apply_mask(&mut out[body..], k);
        }
        let _ = start;
        out
    }

    #[test]
    fn frames_of_every_length_encoding_parse_only_when_whole() {
        for len in [0usize, 1, 125, 126, 65535, 65536, 100_000] {
            let payload = vec![b'a'; len];
            let frame = server_frame(true, opcode::TEXT, &payload, None);
            for cut in [0, 1, frame.len() / 2, frame.len() - 1] {
                if cut < frame.len() {
                    assert_eq!(parse(&frame[..cut], 1 << 20).expect("ok"), None);
                }
            }
            let f = parse(&frame, 1 << 20).expect("ok").expect("whole");
            assert!(f.fin);
            assert_eq!(f.opcode, opcode::TEXT);
            assert_eq!(f.len, len);
            assert_eq!(f.header_len + f.len, frame.len());
        }
    }

    #[test]
    fn a_masked_server_frame_is_unmasked_and_limits_hold() {
        let frame = server_frame(false, opcode::BINARY, b"hello", Some([1, 2, 3, 4]));
        let f = parse(&frame, 100).expect("ok").expect("whole");
        assert!(!f.fin);
        assert_eq!(f.mask, Some([1, 2, 3, 4]));
        let mut body = frame[f.header_len..].to_vec();
        apply_mask(&mut body, [1, 2, 3, 4]);
        assert_eq!(body, b"hello");

        let big = server_frame(true, opcode::TEXT, &[b'x'; 300], None);
        assert!(matches!(parse(&big, 299), Err(FrameError::TooLarge(300))));
        let mut rsv = server_frame(true, opcode::TEXT, b"x", None);
        rsv[0] |= 0x20;
        assert!(matches!(parse(&rsv, 10), Err(FrameError::Reserved)));
        // RSV1 is permessage-deflate's: reported, and the connection decides.
        let mut rsv1 = server_frame(true, opcode::TEXT, b"x", None);
        rsv1[0] |= 0x40;
        assert!(matches!(
            parse(&rsv1, 10),
            Ok(Some(Frame {
                compressed: true,
                ..
            }))
        ));
    }

    #[test]
    fn client_frames_are_masked_and_round_trip() {
        for len in [3usize, 200, 70_000] {
            let payload: Vec<u8> = (0..len).map(|i| i as u8).collect();
            let mut out = Vec::new();
            encode(opcode::TEXT, &payload, &mut out);
            let f = parse(&out, 1 << 20).expect("ok").expect("whole");
            let mask = f.mask.expect("client frames are masked");
            let mut body = out[f.header_len..].to_vec();
            apply_mask(&mut body, mask);
            assert_eq!(body, payload);
        }
    }

    #[tokio::test]
    async fn the_upgrade_checks_the_status_and_the_accept_key() {
        use tokio::io::AsyncBufReadExt as _;

        // A server that answers correctly and sends a first frame right behind the head.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let server = tokio::spawn(async move {
            let (sock, _) = listener.accept().await.expect("accept");
            let mut sock = tokio::io::BufReader::new(sock);
            let mut key = String::new();
            let mut saw_header = false;
            loop {
                let mut line = String::new();
                sock.read_line(&mut line).await.expect("read");
                if line == "\r\n" {
                    break;
                }
                if let Some(k) = line.strip_prefix("Sec-WebSocket-Key: ") {
                    key = k.trim().to_string();
                }
                saw_header |= line == "Authorization: Bearer abc\r\n";
            }
            assert!(saw_header);
            let accept = derive_accept_key(key.as_bytes());
            let mut reply = format!(
                "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\
                 Connection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n\r\n"
            )
            .into_bytes();
            reply.extend_from_slice(&server_frame(true, opcode::TEXT, b"hi", None));
            sock.get_mut().write_all(&reply).await.expect("write");
        });
        let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let url = url(&format!("ws://{addr}/ws"));
        let headers = [("Authorization".to_string(), "Bearer abc".to_string())];
        let mut rest = handshake(&mut stream, &url, &headers)
            .await
            .expect("upgrade");
        server.await.expect("server");
        while parse(&rest, 100).expect("ok").is_none() {
            stream.read_buf(&mut rest).await.expect("read");
        }
        let f = parse(&rest, 100).expect("ok").expect("frame");
        assert_eq!(&rest[f.header_len..f.header_len + f.len], b"hi");

        // A server that refuses the upgrade.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move {
            let (mut sock, _) = listener.accept().await.expect("accept");
            let mut buf = [0u8; 1024];
            let _ = sock.read(&mut buf).await;
            let _ = sock
                .write_all(b"HTTP/1.1 503 Service Unavailable\r\nRetry-After: 5\r\n\r\nfull")
                .await;
        });
        let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let err = handshake(&mut stream, &url, &[])
            .await
            .expect_err("refused");
        assert!(
            matches!(&err, HandshakeError::Status { status: 503, body } if body == "full"),
            "{err:?}"
        );
    }
}
