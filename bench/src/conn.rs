//! One client connection: bind a source address, connect, upgrade, subscribe, then
//! read until the run ends. An event stream (`herald-sse`) connects with its request
//! instead of an upgrade, and its request subscribes.
//!
//! On one machine, a single source address runs out of ephemeral ports (about 28,000
//! with Linux's default range) long before a server runs out of capacity, so each
//! connection binds to an address of 127.0.0.0/8 picked by [`source_addr`] (every
//! address of that range is local on Linux). `SO_REUSEADDR` lets a new socket take a
//! port that an earlier run left in `TIME_WAIT`.
//!
//! The read loop keeps one buffer per connection and parses frames in place; counts
//! go to [`Stats`] once per read.

use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::OwnedSemaphorePermit;

use crate::clock;
use crate::payload::Stamp;
use crate::sse::{self, DecodeError};
use crate::stats::{self, Counts, Stats};
use crate::target::{Events, ProtocolError, Session, Target};
use crate::ws::{self, opcode, FrameError, HandshakeError, WsUrl};

/// Free space the read buffer has before each read.
const READ_CHUNK: usize = 8 * 1024;

/// Largest frame or message accepted from a server.
const MAX_MESSAGE: usize = 16 * 1024 * 1024;

/// What every connection of a run shares.
#[derive(Debug)]
pub struct Shared {
    /// The protocol spoken.
    pub target: Target,
    /// The URL connected to.
    pub url: WsUrl,
    /// Its resolved address.
    pub addr: SocketAddr,
    /// Extra upgrade headers (`Authorization`, `Sec-WebSocket-Protocol`).
    pub headers: Vec<(String, String)>,
    /// permessage-deflate was offered: compressed frames are inflated.
    pub deflate: bool,
    /// Limit for TCP connect plus upgrade, and again for the subscription.
    pub timeout: Duration,
    /// NATS subject of topic `t<i>` is this plus `t<i>`.
    pub subject_prefix: String,
    /// Where everything is counted.
    pub stats: Arc<Stats>,
}

/// Which connection this is.
#[derive(Debug, Clone)]
pub struct Spec {
    /// Source address to bind, or `None` to let the kernel choose.
    pub source: Option<IpAddr>,
    /// Topic indices to subscribe to.
    pub topics: Vec<u32>,
}

/// The source address of connection `index`: `base`, then the next address after
/// every `per_source` connections.
pub fn source_addr(base: Ipv4Addr, per_source: usize, index: usize) -> Ipv4Addr {
    let step = u32::try_from(index / per_source.max(1)).unwrap_or(u32::MAX);
    Ipv4Addr::from(u32::from(base).saturating_add(step))
}

/// Why a connection failed or ended.
#[derive(Debug, thiserror::Error)]
pub enum ConnError {
    /// Binding the source address failed.
    #[error("cannot bind source address {addr}: {source}")]
    Bind {
        /// The address.
        addr: IpAddr,
        /// Why.
        source: io::Error,
    },
    /// The TCP connection failed.
    #[error("cannot connect: {0}")]
    Connect(io::Error),
    /// The upgrade failed.
    #[error("upgrade failed: {0}")]
    Handshake(#[from] HandshakeError),
    /// Connect and upgrade, or the subscription, took too long.
    #[error("timed out")]
    Timeout,
    /// The server refused the subscription.
    #[error("subscription refused: {0}")]
    Refused(String),
    /// A frame the client refuses.
    #[error("{0}")]
    Frame(#[from] FrameError),
    /// A message the client cannot understand.
    #[error("{0}")]
    Protocol(#[from] ProtocolError),
    /// The server closed the WebSocket (with this code, if any).
    #[error("closed by the server with code {}", .0.map_or("none".to_string(), |c| c.to_string()))]
    Closed(Option<u16>),
    /// The TCP connection ended without a close frame.
    #[error("the connection ended without a close frame")]
    Eof,
    /// Reading or writing failed.
    #[error("{0}")]
    Io(#[from] io::Error),
}

impl From<DecodeError> for ConnError {
    fn from(e: DecodeError) -> Self {
        ConnError::Protocol(e.into())
    }
}

impl ConnError {
    /// A short label for the report (`refused`, `timeout`, `http_503`, `close_4009`).
    pub fn kind(&self) -> String {
        fn io_kind(e: &io::Error) -> String {
            match (e.kind(), e.raw_os_error()) {
                (io::ErrorKind::ConnectionRefused, _) => "refused".into(),
                (io::ErrorKind::ConnectionReset, _) => "reset".into(),
                (io::ErrorKind::AddrNotAvailable, _) => "no_local_port".into(),
                (io::ErrorKind::TimedOut, _) => "timeout".into(),
                // EMFILE, ENFILE: the open-file limit.
                (_, Some(24 | 23)) => "too_many_open_files".into(),
                (k, _) => format!("io_{k:?}").to_lowercase(),
            }
        }
        match self {
            ConnError::Bind { source, .. } => io_kind(source),
            ConnError::Connect(e) | ConnError::Io(e) => io_kind(e),
            ConnError::Handshake(HandshakeError::Status { status, .. }) => format!("http_{status}"),
            ConnError::Handshake(HandshakeError::Io(e)) => io_kind(e),
            ConnError::Handshake(_) => "bad_upgrade".into(),
            ConnError::Timeout => "timeout".into(),
            ConnError::Refused(_) => "subscription_refused".into(),
            ConnError::Protocol(ProtocolError::Closed(code)) => format!("close_{code}"),
            ConnError::Protocol(ProtocolError::Stream(DecodeError::End)) => "eof".into(),
            ConnError::Frame(_) | ConnError::Protocol(_) => "protocol_error".into(),
            ConnError::Closed(Some(code)) => format!("close_{code}"),
            ConnError::Closed(None) => "close".into(),
            ConnError::Eof => "eof".into(),
        }
    }
}

/// Runs connection `spec` until the run ends or the connection does. `permit` (a
/// slot of the ramp's concurrency) is given back once the subscription is in effect.
pub async fn run(spec: Spec, shared: Arc<Shared>, permit: OwnedSemaphorePermit) {
    let stats = shared.stats.clone();
    let started = Instant::now();
    let opened = tokio::time::timeout(shared.timeout, open(&spec, &shared))
        .await
        .unwrap_or(Err(ConnError::Timeout));
    let (stream, leftover, decoder) = match opened {
        Ok(ok) => ok,
        Err(e) => {
            stats.fail(e.kind(), e.to_string());
            return;
        }
    };
    let upgrade_us = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
    stats::lock(&stats.connect_latency).saturating_record(upgrade_us.max(1));
    stats.connected.fetch_add(1, Relaxed);

    let mut conn = Conn::new(stream, leftover, decoder, &spec, &shared);
    let subscribe = shared
        .target
        .subscribe(&spec.topics, &shared.subject_prefix);
    let subscribing = async {
        if let Some((op, msg)) = subscribe {
            let mut frame = Vec::new();
            ws::encode(op, &msg, &mut frame);
            conn.stream.write_all(&frame).await?;
        }
        // Frames that came with the upgrade response (Herald's `welcome`).
        conn.process().await?;
        while !conn.events.subscribed {
            conn.read_some().await?;
            if let Some(error) = conn.events.refused.take() {
                return Err(ConnError::Refused(error));
            }
        }
        Ok(())
    };
    match tokio::time::timeout(shared.timeout, subscribing).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => return stats.fail(e.kind(), e.to_string()),
        Err(_) => return stats.fail("timeout".into(), "no subscription confirmation".into()),
    }
    for &t in &spec.topics {
        stats.topic_subscribers[t as usize].fetch_add(1, Relaxed);
    }
    stats.subscribed.fetch_add(1, Relaxed);
    stats.last_subscribed_us.fetch_max(clock::now_us(), Relaxed);
    drop(permit);

    let err = loop {
        if let Err(e) = conn.read_some().await {
            break e;
        }
    };
    stats.disconnect(err.kind(), err.to_string());
}

/// Binds, connects and upgrades (or opens the stream). Returns the connection, what
/// came after the response head, and the stream's body decoder.
async fn open(
    spec: &Spec,
    shared: &Shared,
) -> Result<(TcpStream, Vec<u8>, Option<sse::Decoder>), ConnError> {
    let socket = match shared.addr {
        SocketAddr::V4(_) => TcpSocket::new_v4(),
        SocketAddr::V6(_) => TcpSocket::new_v6(),
    }
    .map_err(ConnError::Connect)?;
    if let Some(addr) = spec.source {
        socket
            .set_reuseaddr(true)
            .and_then(|()| socket.bind(SocketAddr::new(addr, 0)))
            .map_err(|source| ConnError::Bind { addr, source })?;
    }
    let mut stream = socket
        .connect(shared.addr)
        .await
        .map_err(ConnError::Connect)?;
    stream.set_nodelay(true)?;
    if shared.target.is_stream() {
        let (decoder, leftover) =
            sse::open(&mut stream, &shared.url, &spec.topics, &shared.headers).await?;
        return Ok((stream, leftover, Some(decoder)));
    }
    let leftover = ws::handshake(&mut stream, &shared.url, &shared.headers).await?;
    Ok((stream, leftover, None))
}

/// A connection after its upgrade.
struct Conn<'a> {
    stream: TcpStream,
    /// Received bytes; `buf[start..]` is not parsed yet.
    buf: Vec<u8>,
    /// The fragments of a message so far (message-oriented targets only).
    fragments: Vec<u8>,
    /// The body decoder of an event stream; `None` for a WebSocket.
    decoder: Option<sse::Decoder>,
    session: Session,
    events: Received<'a>,
    /// Compressed frames are expected (`--deflate`).
    deflate: bool,
}

impl<'a> Conn<'a> {
    fn new(
        stream: TcpStream,
        leftover: Vec<u8>,
        decoder: Option<sse::Decoder>,
        spec: &Spec,
        shared: &'a Shared,
    ) -> Conn<'a> {
        let mut buf = Vec::with_capacity(READ_CHUNK.max(leftover.len()));
        buf.extend_from_slice(&leftover);
        Conn {
            stream,
            buf,
            fragments: Vec::new(),
            decoder,
            session: shared.target.session(),
            events: Received {
                stats: &shared.stats,
                counts: Counts::default(),
                latencies: Vec::new(),
                replies: Vec::new(),
                last_seq: spec.topics.iter().map(|&t| (t, 0)).collect(),
                now_us: 0,
                window: (u64::MAX, u64::MAX),
                subscribed: false,
                refused: None,
            },
            deflate: shared.deflate,
        }
    }

    /// Reads once, then handles every whole frame buffered.
    async fn read_some(&mut self) -> Result<(), ConnError> {
        if self.buf.capacity() - self.buf.len() < READ_CHUNK {
            if self.buf.is_empty() && self.buf.capacity() > 4 * READ_CHUNK {
                // A large message passed; give its memory back.
                self.buf = Vec::with_capacity(READ_CHUNK);
            } else {
                self.buf.reserve(READ_CHUNK);
            }
        }
        let n = self.stream.read_buf(&mut self.buf).await?;
        if n == 0 {
            return Err(ConnError::Eof);
        }
        self.events.stats.wire_bytes.fetch_add(n as u64, Relaxed);
        self.process().await
    }

    /// Handles every whole frame buffered (all received at once, so they share one
    /// receipt time), counts, and sends the replies they call for.
    async fn process(&mut self) -> Result<(), ConnError> {
        self.events.now_us = clock::now_us();
        self.events.window = self.events.stats.window();
        let result = if self.decoder.is_some() {
            self.handle_stream()
        } else {
            self.handle_frames()
        };
        self.events.flush();
        if self.decoder.is_some() {
            // A stream cannot answer (its pings need no pong).
            self.events.replies.clear();
        } else if !self.events.replies.is_empty() {
            self.stream.write_all(&self.events.replies).await?;
            self.events.replies.clear();
        }
        result
    }

    /// Decodes the stream's body bytes in `buf` and handles every whole message.
    fn handle_stream(&mut self) -> Result<(), ConnError> {
        let Some(decoder) = self.decoder.as_mut() else {
            return Ok(());
        };
        let (session, events) = (&mut self.session, &mut self.events);
        let used = decoder.feed(&self.buf, MAX_MESSAGE, |data| {
            session.on_data(data, events).map_err(ConnError::from)
        });
        match used {
            Ok(used) => {
                self.buf.drain(..used);
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    /// Parses and handles the whole frames at the start of `buf`, and drops them.
    fn handle_frames(&mut self) -> Result<(), ConnError> {
        let mut start = 0;
        let result = loop {
            let frame = match ws::parse(&self.buf[start..], MAX_MESSAGE) {
                Ok(Some(frame)) => frame,
                Ok(None) => break Ok(()),
                Err(e) => break Err(e.into()),
            };
            let body = start + frame.header_len..start + frame.header_len + frame.len;
            start = body.end;
            if let Some(mask) = frame.mask {
                ws::apply_mask(&mut self.buf[body.clone()], mask);
            }
            if let Err(e) = self.handle_frame(frame, body) {
                break Err(e);
            }
        };
        self.buf.drain(..start);
        result
    }

    fn handle_frame(
        &mut self,
        frame: ws::Frame,
        body: std::ops::Range<usize>,
    ) -> Result<(), ConnError> {
        if frame.compressed && !self.deflate {
            return Err(FrameError::Reserved.into());
        }
        let inflated;
        let data = if frame.compressed {
            inflated = inflate(&self.buf[body])?;
            &inflated[..]
        } else {
            &self.buf[body]
        };
        match frame.opcode {
            opcode::TEXT | opcode::BINARY | opcode::CONTINUATION => {
                // A stream (NATS) takes frames as they come; a whole message is
                // handled where it lies; fragments are joined first.
                if self.session.streamed() || (frame.fin && self.fragments.is_empty()) {
                    self.session.on_data(data, &mut self.events)?;
                } else {
                    if self.fragments.len() + data.len() > MAX_MESSAGE {
                        return Err(FrameError::TooLarge(
                            (self.fragments.len() + data.len()) as u64,
                        )
                        .into());
                    }
                    self.fragments.extend_from_slice(data);
                    if frame.fin {
                        let message = std::mem::take(&mut self.fragments);
                        self.session.on_data(&message, &mut self.events)?;
                    }
                }
            }
            opcode::PING => ws::encode(opcode::PONG, data, &mut self.events.replies),
            opcode::CLOSE => {
                let code = data.get(..2).map(|c| u16::from_be_bytes([c[0], c[1]]));
                ws::encode(
                    opcode::CLOSE,
                    data.get(..2).unwrap_or(&[]),
                    &mut self.events.replies,
                );
                return Err(ConnError::Closed(code));
            }
            // Pongs, and opcodes no server sends unasked.
            _ => {}
        }
        Ok(())
    }
}

/// What one connection received, counted locally until [`Received::flush`].
struct Received<'a> {
    stats: &'a Stats,
    counts: Counts,
    /// Latencies of this read (µs, measured), for [`stats::record_latencies`].
    latencies: Vec<(u64, bool)>,
    /// Frames to send back.
    replies: Vec<u8>,
    /// Last sequence seen per subscribed topic (0: none yet).
    last_seq: Vec<(u32, u64)>,
    /// When the current read's data arrived.
    now_us: u64,
    /// The measurement window, as of this read.
    window: (u64, u64),
    /// Whether the subscription is confirmed.
    subscribed: bool,
    /// An error reply before the subscription was confirmed.
    refused: Option<String>,
}

impl Received<'_> {
    fn flush(&mut self) {
        if self.counts != Counts::default() {
            self.stats.add(&self.counts);
            self.counts = Counts::default();
        }
        stats::record_latencies(&self.latencies);
        self.latencies.clear();
    }
}

impl Events for Received<'_> {
    fn delivery(&mut self, stamp: Stamp) {
        let c = &mut self.counts;
        let (start, end) = self.window;
        c.delivered += 1;
        if (start..end).contains(&self.now_us) {
            c.in_window += 1;
        }
        let measured = (start..end).contains(&stamp.sent_us);
        if measured {
            c.measured += 1;
        }
        self.latencies
            .push((self.now_us.saturating_sub(stamp.sent_us), measured));
        if let Some((_, last)) = self.last_seq.iter_mut().find(|(t, _)| *t == stamp.topic) {
            if stamp.seq > *last {
                c.gaps += stamp.seq - *last - 1;
                *last = stamp.seq;
            } else {
                c.out_of_order += 1;
            }
        } else {
            c.foreign += 1;
        }
    }

    fn subscribed(&mut self) {
        self.subscribed = true;
    }

    fn lagged(&mut self, dropped: u64) {
        self.counts.lagged_notices += 1;
        self.counts.lagged_dropped += dropped;
    }

    fn foreign(&mut self) {
        self.counts.foreign += 1;
    }

    fn server_error(&mut self, message: String) {
        if self.subscribed {
            self.stats.server_error(message);
        } else {
            self.refused = Some(message);
        }
    }

    fn reply(&mut self, op: u8, payload: &[u8]) {
        ws::encode(op, payload, &mut self.replies);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn source_addresses_rotate_every_per_source_connections() {
        let base = Ipv4Addr::new(127, 0, 0, 2);
        assert_eq!(source_addr(base, 20_000, 0), base);
        assert_eq!(source_addr(base, 20_000, 19_999), base);
        assert_eq!(
            source_addr(base, 20_000, 20_000),
            Ipv4Addr::new(127, 0, 0, 3)
        );
        assert_eq!(
            source_addr(Ipv4Addr::new(127, 0, 0, 255), 1, 1),
            Ipv4Addr::new(127, 0, 1, 0)
        );
        assert_eq!(source_addr(base, 0, 3), Ipv4Addr::new(127, 0, 0, 5));
    }

    #[test]
    fn error_kinds_are_short_labels() {
        let refused = ConnError::Connect(io::Error::from(io::ErrorKind::ConnectionRefused));
        assert_eq!(refused.kind(), "refused");
        assert_eq!(
            ConnError::Connect(io::Error::from_raw_os_error(24)).kind(),
            "too_many_open_files"
        );
        let status = ConnError::Handshake(HandshakeError::Status {
            status: 503,
            body: String::new(),
        });
        assert_eq!(status.kind(), "http_503");
        assert_eq!(ConnError::Closed(Some(4009)).kind(), "close_4009");
        assert_eq!(
            ConnError::Closed(Some(4009)).to_string(),
            "closed by the server with code 4009"
        );
    }
}

thread_local! {
    /// The thread's inflater, reset per message: Herald compresses every message on
    /// its own (`server_no_context_takeover`).
    static INFLATER: std::cell::RefCell<flate2::Decompress> =
        std::cell::RefCell::new(flate2::Decompress::new(false));
}

/// Inflates one compressed message (RFC 7692: the stripped trailer added back).
fn inflate(data: &[u8]) -> Result<Vec<u8>, ConnError> {
    INFLATER.with(|d| {
        let mut d = d.borrow_mut();
        d.reset(false);
        let mut out = Vec::with_capacity(data.len() * 4 + 64);
        for input in [data, &[0, 0, 0xFF, 0xFF][..]] {
            let mut at = 0;
            loop {
                let before = d.total_in();
                d.decompress_vec(&input[at..], &mut out, flate2::FlushDecompress::Sync)
                    .map_err(|e| ConnError::Io(io::Error::new(io::ErrorKind::InvalidData, e)))?;
                at += (d.total_in() - before) as usize;
                if at == input.len() && out.len() < out.capacity() {
                    break;
                }
                if out.len() > MAX_MESSAGE {
                    return Err(FrameError::TooLarge(out.len() as u64).into());
                }
                out.reserve(out.capacity());
            }
        }
        Ok(out)
    })
}
