//! permessage-deflate (`session.compression = "deflate"`, docs/protocol.md#compression),
//! end to end against the real binary, with a raw WebSocket client over a real socket
//! (tokio-tungstenite does not speak permessage-deflate): what is negotiated, events
//! and replies compressed and shared, compressed client messages, and a "zip bomb"
//! closed with 1009 without harm to other connections. Autobahn 12.x and 13.x
//! (scripts/conformance) cover the codec in depth.

use std::time::Duration;

use anyhow::{anyhow, bail, ensure, Context as _, Result};
use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress};
use herald_e2e::{config, Broker};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

const WAIT: Duration = Duration::from_secs(5);

/// A frame as the server sent it.
#[derive(Debug)]
struct Frame {
    rsv1: bool,
    opcode: u8,
    payload: Vec<u8>,
}

/// A minimal client: the upgrade with an extension offer, masked frames out, frames in.
struct Raw {
    stream: TcpStream,
    buf: Vec<u8>,
    /// The `Sec-WebSocket-Extensions` the server answered with ("" for none).
    extensions: String,
}

impl Raw {
    async fn connect(broker: &Broker, offer: Option<&str>) -> Result<Raw> {
        let addr = broker.http().trim_start_matches("http://").to_owned();
        let mut stream = TcpStream::connect(&addr).await?;
        let offer = offer.map_or(String::new(), |o| {
            format!("Sec-WebSocket-Extensions: {o}\r\n")
        });
        let request = format!(
            "GET /ws HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n{offer}\r\n"
        );
        stream.write_all(request.as_bytes()).await?;
        let mut buf = Vec::new();
        let end = loop {
            if let Some(at) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break at + 4;
            }
            let mut chunk = [0u8; 4096];
            let n = tokio::time::timeout(WAIT, stream.read(&mut chunk)).await??;
            ensure!(n > 0, "closed during the handshake");
            buf.extend_from_slice(&chunk[..n]);
        };
        let head = String::from_utf8_lossy(&buf[..end]).into_owned();
        ensure!(head.starts_with("HTTP/1.1 101"), "not upgraded:\n{head}");
        let extensions = head
            .lines()
            .find_map(|l| {
                let (name, value) = l.split_once(':')?;
                name.eq_ignore_ascii_case("sec-websocket-extensions")
                    .then(|| value.trim().to_owned())
            })
            .unwrap_or_default();
        buf.drain(..end);
        Ok(Raw {
            stream,
            buf,
            extensions,
        })
    }

    /// Sends one masked frame (FIN set; RSV1 when `rsv1`).
    async fn send(&mut self, rsv1: bool, opcode: u8, payload: &[u8]) -> Result<()> {
        self.send_raw(0x80 | if rsv1 { 0x40 } else { 0 } | opcode, payload)
            .await
    }

    /// Sends one masked frame whose first byte is `b0` (FIN, RSV1, opcode).
    async fn send_raw(&mut self, b0: u8, payload: &[u8]) -> Result<()> {
        let mask = [0x12, 0x34, 0x56, 0x78];
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
        self.stream.write_all(&out).await?;
        Ok(())
    }

    /// The next frame; `None` at the end of the stream.
    async fn frame(&mut self) -> Result<Option<Frame>> {
        loop {
            if self.buf.len() >= 2 {
                let (b0, b1) = (self.buf[0], self.buf[1]);
                ensure!(b1 & 0x80 == 0, "a server frame is never masked");
                let (len, at) = match b1 & 0x7F {
                    126 if self.buf.len() >= 4 => {
                        (u16::from_be_bytes([self.buf[2], self.buf[3]]) as usize, 4)
                    }
                    127 if self.buf.len() >= 10 => {
                        let mut b = [0u8; 8];
                        b.copy_from_slice(&self.buf[2..10]);
                        (u64::from_be_bytes(b) as usize, 10)
                    }
                    126 | 127 => (usize::MAX, 0),
                    n => (n as usize, 2),
                };
                if at > 0 && self.buf.len() >= at + len {
                    let payload = self.buf[at..at + len].to_vec();
                    self.buf.drain(..at + len);
                    ensure!(b0 & 0x80 != 0, "Herald sends every message in one frame");
                    return Ok(Some(Frame {
                        rsv1: b0 & 0x40 != 0,
                        opcode: b0 & 0x0F,
                        payload,
                    }));
                }
            }
            let mut chunk = [0u8; 65536];
            let n = tokio::time::timeout(WAIT, self.stream.read(&mut chunk))
                .await
                .context("no frame in time")??;
            if n == 0 {
                return Ok(None);
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    /// The next text message as JSON, inflated when compressed, with whether it was.
    async fn json(&mut self) -> Result<(Value, bool)> {
        loop {
            let f = self.frame().await?.ok_or_else(|| anyhow!("closed"))?;
            match f.opcode {
                0x1 => {
                    let text = if f.rsv1 {
                        inflate(&f.payload)?
                    } else {
                        f.payload
                    };
                    return Ok((serde_json::from_slice(&text)?, f.rsv1));
                }
                0x9 | 0xA => continue,
                other => bail!("unexpected opcode {other}: {f:?}"),
            }
        }
    }

    /// Reads until the close frame, answers it as a client does, and waits for the
    /// server to end the connection; returns the code.
    async fn close_code(&mut self) -> Result<u16> {
        while let Some(f) = self.frame().await? {
            if f.opcode == 0x8 {
                ensure!(!f.rsv1, "a control frame is never compressed");
                ensure!(f.payload.len() >= 2, "close without a code");
                let code = u16::from_be_bytes([f.payload[0], f.payload[1]]);
                self.send(false, 0x8, &f.payload[..2]).await?;
                ensure!(
                    self.frame().await?.is_none(),
                    "the server ends the connection after the close handshake"
                );
                return Ok(code);
            }
        }
        bail!("the connection ended without a close frame")
    }
}

/// A compressed message's payload as RFC 7692 puts it on the wire.
fn deflate(data: &[u8]) -> Vec<u8> {
    let mut c = Compress::new(Compression::default(), false);
    let mut out = Vec::with_capacity(data.len() / 2 + 1024);
    loop {
        let before = c.total_in() as usize;
        c.compress_vec(&data[before..], &mut out, FlushCompress::Sync)
            .expect("compresses");
        if c.total_in() as usize == data.len() && out.len() < out.capacity() {
            break;
        }
        out.reserve(out.capacity().max(1024));
    }
    assert!(out.ends_with(&[0, 0, 0xFF, 0xFF]));
    out.truncate(out.len() - 4);
    out
}

fn inflate(data: &[u8]) -> Result<Vec<u8>> {
    let mut d = Decompress::new(false);
    let mut input = data.to_vec();
    input.extend_from_slice(&[0, 0, 0xFF, 0xFF]);
    let mut out = Vec::with_capacity(data.len() * 8 + 1024);
    loop {
        let before = d.total_in() as usize;
        d.decompress_vec(&input[before..], &mut out, FlushDecompress::Sync)?;
        if d.total_in() as usize == input.len() && out.len() < out.capacity() {
            return Ok(out);
        }
        out.reserve(out.capacity());
    }
}

/// A realistic event: an order with a few items, about 300 bytes of JSON.
fn order(id: u64) -> Value {
    json!({"id": id, "customer": "c-1932", "status": "created",
           "total": {"amount": 129.9, "currency": "EUR"},
           "items": [{"sku": "SKU-4411", "qty": 2, "price": 39.95},
                     {"sku": "SKU-1009", "qty": 1, "price": 50.0}],
           "shipping": {"method": "standard", "country": "DE"}})
}

fn deflate_config(extra: &str) -> String {
    config(
        "",
        &format!("[session]\ncompression = \"deflate\"\n{extra}"),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_and_replies_are_compressed_once_negotiated() -> Result<()> {
    let broker = Broker::start(&deflate_config(""))?;
    let mut a = Raw::connect(&broker, Some("permessage-deflate; client_max_window_bits")).await?;
    assert_eq!(
        a.extensions,
        "permessage-deflate; server_no_context_takeover; client_no_context_takeover"
    );
    let (welcome, compressed) = a.json().await?;
    ensure!(welcome["type"] == "welcome" && compressed, "{welcome}");
    let mut b = Raw::connect(&broker, Some("permessage-deflate")).await?;
    b.json().await?;
    for c in [&mut a, &mut b] {
        // A compressed request is read like a plain one.
        let request = json!({"op": "subscribe", "id": "s", "topics": ["orders.*"]}).to_string();
        c.send(true, 0x1, &deflate(request.as_bytes())).await?;
        let (reply, compressed) = c.json().await?;
        ensure!(reply["type"] == "subscribed" && compressed, "{reply}");
    }
    broker.publish("orders.eu", order(7)).await?;
    let fa = a.frame().await?.ok_or_else(|| anyhow!("closed"))?;
    let fb = b.frame().await?.ok_or_else(|| anyhow!("closed"))?;
    ensure!(fa.rsv1 && fb.rsv1, "events go compressed");
    // One compressed copy for both subscribers: the same bytes.
    assert_eq!(fa.payload, fb.payload);
    let event: Value = serde_json::from_slice(&inflate(&fa.payload)?)?;
    assert_eq!(event["data"], order(7));
    let plain = serde_json::to_vec(&event)?.len();
    ensure!(
        fa.payload.len() * 10 < plain * 8,
        "{} bytes compressed for {plain} plain",
        fa.payload.len()
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_is_negotiated_follows_the_offer_and_the_config() -> Result<()> {
    let broker = Broker::start(&deflate_config(""))?;
    // A smaller server window is honoured and named.
    let mut c = Raw::connect(
        &broker,
        Some("permessage-deflate; server_max_window_bits=10"),
    )
    .await?;
    assert_eq!(
        c.extensions,
        "permessage-deflate; server_no_context_takeover; client_no_context_takeover; server_max_window_bits=10"
    );
    ensure!(c.json().await?.1, "compressed welcome");
    // An 8-bit window cannot be honoured: that offer is declined, the next one taken.
    let c = Raw::connect(
        &broker,
        Some("permessage-deflate; server_max_window_bits=8, permessage-deflate"),
    )
    .await?;
    assert_eq!(
        c.extensions,
        "permessage-deflate; server_no_context_takeover; client_no_context_takeover"
    );
    // No acceptable offer, or none at all: plain frames, and RSV1 is a protocol error.
    for offer in [
        Some("permessage-deflate; foo=1"),
        Some("x-webkit-deflate-frame"),
        None,
    ] {
        let mut c = Raw::connect(&broker, offer).await?;
        assert_eq!(c.extensions, "", "{offer:?}");
        let (welcome, compressed) = c.json().await?;
        ensure!(!compressed && welcome["type"] == "welcome");
        c.send(true, 0x1, &deflate(b"{\"op\":\"ping\"}")).await?;
        assert_eq!(c.close_code().await?, 1002, "{offer:?}");
    }
    // With `compression = "none"` (the default) an offer changes nothing.
    let plain = Broker::start(&config("", ""))?;
    let mut c = Raw::connect(&plain, Some("permessage-deflate")).await?;
    assert_eq!(c.extensions, "");
    ensure!(!c.json().await?.1, "plain welcome");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_zip_bomb_closes_with_1009_and_harms_no_other_connection() -> Result<()> {
    let broker = Broker::start(&deflate_config("max_message_bytes = 65536\n"))?;
    let mut bystander = Raw::connect(&broker, Some("permessage-deflate")).await?;
    bystander.json().await?;
    let subscribe = json!({"op": "subscribe", "id": "s", "topics": ["bomb.quiet"]}).to_string();
    bystander
        .send(true, 0x1, &deflate(subscribe.as_bytes()))
        .await?;
    bystander.json().await?;
    let rss_before = broker.rss_kib()?;

    // 64 MiB of spaces in a text message: about 64 KiB on the wire, 1,000 times the
    // limit once inflated. Inflating stops at the limit.
    let bomb = deflate(&vec![b' '; 64 << 20]);
    ensure!(bomb.len() < 128 * 1024, "{} bytes", bomb.len());
    let mut attacker = Raw::connect(&broker, Some("permessage-deflate")).await?;
    attacker.json().await?;
    attacker.send(true, 0x1, &bomb).await?;
    assert_eq!(attacker.close_code().await?, 1009);
    let grown = broker.rss_kib()?.saturating_sub(rss_before);
    ensure!(grown < 16 * 1024, "the broker grew by {grown} KiB");

    // A message just over the limit once inflated, in two fragments, is 1009 too.
    let mut attacker = Raw::connect(&broker, Some("permessage-deflate")).await?;
    attacker.json().await?;
    let packed = deflate(&vec![b'x'; 65_537]);
    let (head, tail) = packed.split_at(packed.len() / 2);
    // The first fragment (no FIN) is compressed (RSV1); the last continues it.
    attacker.send_raw(0x40 | 0x1, head).await?;
    attacker.send_raw(0x80, tail).await?;
    assert_eq!(attacker.close_code().await?, 1009);

    // Garbage that does not inflate is a protocol error.
    let mut attacker = Raw::connect(&broker, Some("permessage-deflate")).await?;
    attacker.json().await?;
    attacker.send(true, 0x1, &[0xFF, 0xFF, 0xFF, 0xFF]).await?;
    assert_eq!(attacker.close_code().await?, 1002);

    // The bystander never noticed.
    broker
        .publish("bomb.quiet", json!({"still": "here"}))
        .await?;
    let (event, compressed) = bystander.json().await?;
    ensure!(compressed && event["data"]["still"] == "here", "{event}");
    let closed_1009 = broker
        .metric("herald_sessions_closed_total{code=\"1009\"}")
        .await?;
    assert_eq!(closed_1009, 2.0);
    Ok(())
}
