//! Limits and refusals, end to end (docs/protocol.md, sections 2, 5, 6 and 7): slow
//! consumers under both policies, heartbeats, the rate limiter, subscription and
//! connection limits, Origin and subprotocol checks on the upgrade, WebSocket frame
//! errors and malformed messages. Every test starts its own `herald` process.

use std::time::Duration;

use anyhow::{anyhow, bail, ensure, Context as _, Result};
use futures_util::{SinkExt as _, StreamExt as _};
use herald_e2e::{config, Broker, Client, Closed, WAIT};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
use tokio_tungstenite::tungstenite::handshake::client::{Request, Response};
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{CloseCode, Data, OpCode};
use tokio_tungstenite::tungstenite::protocol::frame::Frame;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::MaybeTlsStream;

// ---------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------

/// The `code` of an `error` reply, or a failure naming what arrived instead.
fn error_code(reply: &Value) -> Result<&str> {
    ensure!(
        reply["type"] == "error",
        "expected an error reply, got {reply}"
    );
    reply["code"]
        .as_str()
        .ok_or_else(|| anyhow!("error reply without a code: {reply}"))
}

/// A client that subscribes, gets an HTTP-published event and answers a ping: the
/// broker still serves normally.
async fn broker_still_serves(broker: &Broker, topic: &str) -> Result<()> {
    let mut c = broker.client().await.context("connect a fresh client")?;
    c.subscribe(&[topic]).await?;
    broker.publish(topic, json!({"alive": true})).await?;
    let ev = c.event().await.context("fresh client gets the event")?;
    ensure!(
        ev["topic"] == topic && ev["data"]["alive"] == true,
        "unexpected event {ev}"
    );
    let (pong, _) = c.request(json!({"op": "ping"})).await?;
    ensure!(pong["type"] == "pong", "expected pong, got {pong}");
    Ok(())
}

/// An upgrade request for the broker's `/ws` with extra headers.
fn upgrade_request(broker: &Broker, headers: &[(&'static str, &str)]) -> Result<Request> {
    let mut req = broker.ws_url().into_client_request()?;
    for (name, value) in headers {
        req.headers_mut()
            .insert(*name, HeaderValue::from_str(value)?);
    }
    Ok(req)
}

/// The HTTP response of an upgrade the server refused (fails if it was accepted).
fn refused<S>(result: Result<S, WsError>) -> Result<Box<Response>> {
    match result {
        Ok(_) => bail!("the upgrade was accepted; expected an HTTP refusal"),
        Err(WsError::Http(response)) => Ok(response),
        Err(e) => bail!("expected an HTTP refusal, got {e}"),
    }
}

/// A raw HTTP/1.1 response: status, headers (lower-case names) and body.
struct RawResponse {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl RawResponse {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    fn json(&self) -> Result<Value> {
        serde_json::from_str(&self.body)
            .with_context(|| format!("body is not JSON: {:?}", self.body))
    }
}

/// Sends a WebSocket upgrade request by hand (so the whole refusal body can be read,
/// which a WebSocket client does not guarantee) and reads the response.
async fn raw_upgrade(broker: &Broker, extra_headers: &[(&str, &str)]) -> Result<RawResponse> {
    let mut stream = TcpStream::connect(&broker.addr).await.context("connect")?;
    let mut request = format!(
        "GET /ws HTTP/1.1\r\nHost: {}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n",
        broker.addr
    );
    for (name, value) in extra_headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    stream
        .write_all(request.as_bytes())
        .await
        .context("send request")?;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let read = async {
        loop {
            if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&buf[..end]).to_string();
                let mut lines = head.lines();
                let status: u16 = lines
                    .next()
                    .and_then(|l| l.split_whitespace().nth(1))
                    .and_then(|s| s.parse().ok())
                    .ok_or_else(|| anyhow!("bad status line in {head:?}"))?;
                let headers: Vec<(String, String)> = lines
                    .filter_map(|l| l.split_once(':'))
                    .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
                    .collect();
                if status == 101 {
                    // Accepted: what follows is WebSocket frames, not a body.
                    return Ok(RawResponse {
                        status,
                        headers,
                        body: String::new(),
                    });
                }
                let length: usize = headers
                    .iter()
                    .find(|(n, _)| n == "content-length")
                    .and_then(|(_, v)| v.parse().ok())
                    .ok_or_else(|| anyhow!("no content-length in {head:?}"))?;
                while buf.len() < end + 4 + length {
                    let n = stream.read(&mut chunk).await.context("read body")?;
                    ensure!(n > 0, "connection closed before the end of the body");
                    buf.extend_from_slice(&chunk[..n]);
                }
                let body = String::from_utf8_lossy(&buf[end + 4..end + 4 + length]).to_string();
                return Ok(RawResponse {
                    status,
                    headers,
                    body,
                });
            }
            let n = stream.read(&mut chunk).await.context("read head")?;
            ensure!(n > 0, "connection closed before the response head");
            buf.extend_from_slice(&chunk[..n]);
        }
    };
    tokio::time::timeout(WAIT, read)
        .await
        .map_err(|_| anyhow!("no HTTP response within {WAIT:?}"))?
}

/// The last lines the broker logged (for failure messages).
fn log_tail(broker: &Broker) -> String {
    let text = broker.log_text();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(400)..].join("\n")
}

/// An HTTP publish of a batch (a JSON array), with a shared client (keep-alive).
async fn publish_batch(http: &reqwest::Client, broker: &Broker, batch: String) -> Result<()> {
    let res = http
        .post(format!("{}/api/publish", broker.http()))
        .body(batch)
        .send()
        .await
        .context("POST /api/publish")?;
    let status = res.status().as_u16();
    let body = res.text().await.context("publish response body")?;
    ensure!(status == 202, "publish returned {status}: {body}");
    Ok(())
}

/// The JSON body of a batch of `n` events for `topic`, each with about `size` bytes
/// of data (built as text: the floods below publish hundreds of MiB).
fn batch(topic: &str, first: u64, n: u64, size: usize) -> String {
    let filler = "x".repeat(size);
    let events: Vec<String> = (first..first + n)
        .map(|i| format!(r#"{{"topic":"{topic}","data":{{"n":{i},"pad":"{filler}"}}}}"#))
        .collect();
    format!("[{}]", events.join(","))
}

/// What a flood reader got: an event's seq, or another message (heartbeats skipped).
enum Got {
    Event(u64),
    Other(Value),
}

/// Next message of `client` within [`WAIT`]. Event frames are not parsed whole (that
/// would dominate the run time of a debug build): their `seq` is read from the
/// frame's head, where the broker renders it.
async fn next_seq(client: &mut Client) -> Result<Got> {
    loop {
        let msg = tokio::time::timeout(WAIT, client.ws.next())
            .await
            .map_err(|_| anyhow!("no message within {WAIT:?}"))?;
        let text = match msg {
            Some(Ok(Message::Text(t))) => t,
            Some(Ok(Message::Close(frame))) => bail!("connection closed: {frame:?}"),
            Some(Ok(_)) => continue,
            Some(Err(e)) => bail!("websocket error: {e}"),
            None => bail!("connection ended"),
        };
        if text.starts_with(r#"{"type":"event","#) {
            let head = &text.as_str()[..text.len().min(200)];
            let seq = head
                .split_once(r#""seq":"#)
                .and_then(|(_, rest)| rest.split(|c: char| !c.is_ascii_digit()).next())
                .and_then(|digits| digits.parse().ok())
                .ok_or_else(|| anyhow!("no seq in event head {head}"))?;
            return Ok(Got::Event(seq));
        }
        let v: Value = serde_json::from_str(text.as_str()).context("server message is not JSON")?;
        if v["type"] != "ping" {
            return Ok(Got::Other(v));
        }
    }
}

/// Reads events from `client` until it has the one with `seq == upto`, asserting each
/// seq is the previous one plus one (starting after `after`).
async fn read_consecutive(client: &mut Client, after: u64, upto: u64) -> Result<()> {
    let mut expect = after + 1;
    while expect <= upto {
        match next_seq(client)
            .await
            .with_context(|| format!("waiting for seq {expect}"))?
        {
            Got::Event(seq) => ensure!(
                seq == expect,
                "reading client: expected seq {expect}, got {seq} (a gap)"
            ),
            Got::Other(v) => bail!("reading client got {v} while waiting for seq {expect}"),
        }
        expect += 1;
    }
    Ok(())
}

// ---------------------------------------------------------------------------------
// Slow consumers (docs/protocol.md#6-slow-consumers)
// ---------------------------------------------------------------------------------

/// Policy `drop`: a client that stops reading loses events (never the broker's
/// memory, never another client's events), and learns exactly how many through
/// `lagged` notices once it reads again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_consumer_drop_policy_bounds_memory_and_reports_lag() -> Result<()> {
    // The queue bound is 1 MiB so that the reading client, which gets each HTTP
    // batch (50 × 8 KiB) in one burst, is never itself a slow consumer; the stalled
    // client's cost is still bounded by it (plus kernel socket buffers).
    const QUEUE: usize = 1 << 20;
    const EVENT_BYTES: usize = 8 * 1024;
    const BATCH: u64 = 50;
    const BATCHES: u64 = 640; // 32,000 events, about 256 MiB published
    const RSS_BOUND_KIB: u64 = 64 * 1024;
    let broker = Broker::start(&config(
        "",
        &format!(
            "[session]\nqueue_max_bytes = {QUEUE}\nheartbeat_interval_ms = 60000\n\
             heartbeat_timeout_ms = 60000\n[publish]\nmax_body_bytes = 4194304\n"
        ),
    ))?;
    let topic = "flood.drop";
    let mut stalled = broker.client().await?;
    stalled.subscribe(&[topic]).await?;
    let mut reader = broker.client().await?;
    reader.subscribe(&[topic]).await?;
    let http = reqwest::Client::new();

    let baseline = broker.rss_kib()?;
    let mut peak = baseline;
    for b in 0..BATCHES {
        let first = b * BATCH + 1;
        publish_batch(&http, &broker, batch(topic, first, BATCH, EVENT_BYTES))
            .await
            .with_context(|| format!("batch {b}; broker log tail:\n{}", log_tail(&broker)))?;
        // The reading client gets every event, in order, without a gap.
        read_consecutive(&mut reader, first - 1, first + BATCH - 1).await?;
        if b % 10 == 0 {
            peak = peak.max(broker.rss_kib()?);
        }
    }
    peak = peak.max(broker.rss_kib()?);
    let published_kib = BATCHES * BATCH * EVENT_BYTES as u64 / 1024;
    ensure!(
        published_kib > 3 * RSS_BOUND_KIB,
        "the test must publish several times the memory bound"
    );
    ensure!(
        peak - baseline < RSS_BOUND_KIB,
        "broker RSS grew by {} KiB (from {baseline} to {peak}) while a client stalled; \
         {published_kib} KiB were published and the bound is {RSS_BOUND_KIB} KiB",
        peak - baseline
    );
    let dropped_metric = broker
        .metric("herald_events_dropped_total{reason=\"queue_full\"}")
        .await?;
    ensure!(
        dropped_metric > 0.0,
        "no queue_full drop counted while a client stalled"
    );

    // The stalled client reads again: first its backlog, then a `lagged` notice.
    let flood_end = BATCHES * BATCH;
    let mut seqs: Vec<u64> = Vec::new();
    let mut lagged_total = 0u64;
    let read_stalled = |got: Got, seqs: &mut Vec<u64>, lagged_total: &mut u64| -> Result<bool> {
        match got {
            Got::Event(seq) => seqs.push(seq),
            Got::Other(v) if v["type"] == "lagged" => {
                let dropped = v["dropped"]
                    .as_u64()
                    .ok_or_else(|| anyhow!("lagged without dropped: {v}"))?;
                ensure!(dropped > 0, "lagged notice with dropped = 0: {v}");
                *lagged_total += dropped;
                return Ok(true);
            }
            Got::Other(v) => bail!("stalled client got {v}"),
        }
        Ok(false)
    };
    loop {
        let got = next_seq(&mut stalled)
            .await
            .context("stalled client: backlog, then a lagged notice")?;
        if read_stalled(got, &mut seqs, &mut lagged_total)? {
            break;
        }
    }
    // A few more events after the lag, so the last one received lies past every drop.
    const TAIL: u64 = 5;
    publish_batch(&http, &broker, batch(topic, flood_end + 1, TAIL, 16)).await?;
    read_consecutive(&mut reader, flood_end, flood_end + TAIL).await?;
    let last = flood_end + TAIL;
    while seqs.last() != Some(&last) {
        let got = next_seq(&mut stalled)
            .await
            .context("stalled client: the events after the lag")?;
        read_stalled(got, &mut seqs, &mut lagged_total)?;
    }
    ensure!(
        seqs.windows(2).all(|w| w[0] < w[1]),
        "stalled client's seqs are not increasing"
    );
    let missing = last - seqs.len() as u64;
    ensure!(
        missing > 0,
        "the stalled client lost nothing; the flood was too small to test anything"
    );
    ensure!(
        lagged_total == missing,
        "lagged notices report {lagged_total} dropped, but {missing} of the {last} events are missing \
         (received {})",
        seqs.len()
    );
    stalled.expect_silence(Duration::from_millis(300)).await?;
    eprintln!(
        "published {published_kib} KiB; broker RSS {baseline} → peak {peak} KiB; the stalled client \
         received {} of {last} events and was told {lagged_total} were dropped",
        seqs.len()
    );
    Ok(())
}

/// Policy `disconnect`: a client that stops reading is closed with 4009; a reading
/// client on the same topic gets everything.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_consumer_disconnect_policy_closes_with_4009() -> Result<()> {
    const EVENT_BYTES: usize = 8 * 1024;
    const BATCH: u64 = 50;
    // 24 MiB: several times what a stalled connection absorbs before its queue
    // overflows (kernel socket buffers plus the 1 MiB queue; about 5 MiB on Linux
    // loopback), yet short, so the stalled client reads soon after the broker gave
    // up on it (a broker cannot be expected to hold a close frame for a peer that
    // never reads).
    const BATCHES: u64 = 60;
    let broker = Broker::start(&config(
        "",
        "[session]\nqueue_max_bytes = 1048576\nslow_consumer = \"disconnect\"\n\
         heartbeat_interval_ms = 60000\nheartbeat_timeout_ms = 60000\n\
         [publish]\nmax_body_bytes = 4194304\n",
    ))?;
    let topic = "flood.disconnect";
    let mut stalled = broker.client().await?;
    stalled.subscribe(&[topic]).await?;
    let mut reader = broker.client().await?;
    reader.subscribe(&[topic]).await?;
    let http = reqwest::Client::new();
    for b in 0..BATCHES {
        let first = b * BATCH + 1;
        publish_batch(&http, &broker, batch(topic, first, BATCH, EVENT_BYTES)).await?;
        // The reading client gets everything, without a gap.
        read_consecutive(&mut reader, first - 1, first + BATCH - 1).await?;
    }
    // The stalled client reads again: its backlog, then the close frame.
    let closed = stalled
        .closed(Duration::from_secs(10))
        .await
        .context("stalled client's close")?;
    ensure!(
        closed.code == Some(4009),
        "stalled client closed with {closed:?}, expected 4009"
    );
    // The reading client was not affected.
    let (pong, _) = reader.request(json!({"op": "ping"})).await?;
    ensure!(
        pong["type"] == "pong",
        "reading client: expected pong, got {pong}"
    );
    Ok(())
}

// ---------------------------------------------------------------------------------
// Heartbeats (docs/protocol.md#5-heartbeats-and-timeouts)
// ---------------------------------------------------------------------------------

/// JSON pings are sent; a silent client is closed with 4008; `{"op":"pong"}` keeps a
/// client alive; WebSocket Ping frames do not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeat_pings_and_closes_silent_clients_with_4008() -> Result<()> {
    let broker = Broker::start(&config(
        "",
        "[session]\nheartbeat_interval_ms = 300\nheartbeat_timeout_ms = 300\n",
    ))?;

    // A client that sends nothing: pinged, then closed with 4008.
    let mut silent = broker.client().await?;
    let hb = &silent.welcome["heartbeat"];
    ensure!(
        hb["interval_ms"] == 300 && hb["timeout_ms"] == 300,
        "welcome announces the heartbeat: {}",
        silent.welcome
    );
    let ping = silent.recv_any(WAIT).await.context("a heartbeat ping")?;
    ensure!(
        ping == json!({"type": "ping"}),
        "expected {{\"type\":\"ping\"}}, got {ping}"
    );
    let closed = silent
        .closed(WAIT)
        .await
        .context("silent client is closed")?;
    ensure!(
        closed.code == Some(4008),
        "silent client closed with {closed:?}, expected 4008"
    );

    // A client that answers with {"op":"pong"} every 200 ms stays open for several
    // heartbeat windows (window = interval + timeout = 600 ms).
    let mut alive = broker.client().await?;
    let mut pings = 0;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
    while tokio::time::Instant::now() < deadline {
        alive
            .send(json!({"op": "pong"}))
            .await
            .context("send pong")?;
        let tick = tokio::time::Instant::now() + Duration::from_millis(200);
        loop {
            match tokio::time::timeout_at(tick, alive.ws.next()).await {
                Err(_) => break,
                Ok(Some(Ok(Message::Text(t)))) => {
                    let v: Value = serde_json::from_str(t.as_str())?;
                    ensure!(v["type"] == "ping", "pong client got {v}");
                    pings += 1;
                }
                Ok(Some(Ok(Message::Close(frame)))) => {
                    bail!("a client answering pongs was closed: {frame:?}")
                }
                Ok(Some(Ok(_))) => {}
                Ok(Some(Err(e))) => bail!("pong client: websocket error {e}"),
                Ok(None) => bail!("pong client: connection ended"),
            }
        }
    }
    ensure!(
        pings >= 3,
        "only {pings} heartbeat pings in 3 s at a 300 ms interval"
    );
    let (pong, _) = alive.request(json!({"op": "ping"})).await?;
    ensure!(
        pong["type"] == "pong",
        "pong client still served: got {pong}"
    );

    // A client that sends only WebSocket Ping frames is closed with 4008 all the same
    // (and those pings did reach the server: it answered them with Pong frames).
    let mut ws_pinger = broker.client().await?;
    let mut ws_pongs = 0;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    let closed: Closed = 'outer: loop {
        ensure!(
            tokio::time::Instant::now() < deadline,
            "a client sending only WebSocket pings was not closed within 5 s"
        );
        ws_pinger
            .ws
            .send(Message::Ping(b"hb".to_vec().into()))
            .await
            .context("send WebSocket ping")?;
        let tick = tokio::time::Instant::now() + Duration::from_millis(200);
        loop {
            match tokio::time::timeout_at(tick, ws_pinger.ws.next()).await {
                Err(_) => break,
                Ok(Some(Ok(Message::Pong(_)))) => ws_pongs += 1,
                Ok(Some(Ok(Message::Close(frame)))) => {
                    break 'outer Closed {
                        code: frame.as_ref().map(|f| u16::from(f.code)),
                        reason: frame.map(|f| f.reason.to_string()).unwrap_or_default(),
                    }
                }
                Ok(Some(Ok(_))) => {}
                Ok(Some(Err(e))) => bail!("ws-ping client: websocket error {e}"),
                Ok(None) => bail!("ws-ping client: connection ended without a close frame"),
            }
        }
    };
    ensure!(
        closed.code == Some(4008),
        "ws-ping client closed with {closed:?}, expected 4008"
    );
    ensure!(
        ws_pongs >= 1,
        "the server never answered a WebSocket Ping with a Pong"
    );
    Ok(())
}

// ---------------------------------------------------------------------------------
// Rate limit
// ---------------------------------------------------------------------------------

/// Past the burst a message is refused with `rate_limited` (carrying its id); a
/// client that keeps flooding is closed with 4029; other clients are unaffected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limit_refuses_then_closes_with_4029() -> Result<()> {
    let broker = Broker::start(&config(
        "",
        "[session]\nrate_limit_per_s = 5\nrate_limit_burst = 5\n",
    ))?;
    let mut bystander = broker.client().await?;
    let mut flooder = broker.client().await?;

    // Six pings in one write: five within the burst, the sixth refused.
    for id in 1..=6 {
        flooder
            .ws
            .feed(Message::text(json!({"op": "ping", "id": id}).to_string()))
            .await
            .context("queue ping")?;
    }
    flooder.ws.flush().await.context("send six pings")?;
    for id in 1..=5 {
        let v = flooder.recv().await?;
        ensure!(
            v == json!({"type": "pong", "id": id}),
            "ping {id} within the burst: got {v}"
        );
    }
    let v = flooder.recv().await?;
    ensure!(
        error_code(&v)? == "rate_limited",
        "sixth ping: expected rate_limited, got {v}"
    );
    ensure!(
        v["id"] == 6,
        "the rate_limited error carries the request id: {v}"
    );

    // Keep flooding regardless of the errors: closed with 4029.
    for id in 7..=40 {
        flooder
            .ws
            .feed(Message::text(json!({"op": "ping", "id": id}).to_string()))
            .await
            .context("queue flood ping")?;
    }
    flooder.ws.flush().await.context("send the flood")?;
    let closed = flooder
        .closed(WAIT)
        .await
        .context("flooding client is closed")?;
    ensure!(
        closed.code == Some(4029),
        "flooding client closed with {closed:?}, expected 4029"
    );

    let (pong, _) = bystander.request(json!({"op": "ping"})).await?;
    ensure!(
        pong["type"] == "pong",
        "another client is unaffected: got {pong}"
    );
    Ok(())
}

// ---------------------------------------------------------------------------------
// Subscription limit
// ---------------------------------------------------------------------------------

/// `max_subscriptions`: a request past it is refused as a whole; unsubscribing frees
/// a slot.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_subscriptions_is_all_or_nothing_and_freed_by_unsubscribe() -> Result<()> {
    let broker = Broker::start(&config("", "[session]\nmax_subscriptions = 3\n"))?;
    let mut c = broker.client().await?;
    ensure!(
        c.welcome["limits"]["max_subscriptions"] == 3,
        "welcome: {}",
        c.welcome
    );

    let (reply, _) = c
        .request(json!({"op": "subscribe", "topics": ["s.a", "s.b", "s.c", "s.d"]}))
        .await?;
    ensure!(
        error_code(&reply)? == "too_many_subscriptions",
        "four at once: {reply}"
    );
    // None of them was subscribed.
    broker.publish("s.a", json!(1)).await?;
    c.expect_silence(Duration::from_millis(500))
        .await
        .context("nothing subscribed after the refusal")?;

    c.subscribe(&["s.a", "s.b", "s.c"])
        .await
        .context("three subscriptions fit")?;
    broker.publish("s.a", json!(2)).await?;
    let ev = c.event().await?;
    ensure!(ev["topic"] == "s.a" && ev["data"] == 2, "unexpected {ev}");

    let (reply, _) = c
        .request(json!({"op": "subscribe", "topics": ["s.d"]}))
        .await?;
    ensure!(
        error_code(&reply)? == "too_many_subscriptions",
        "a fourth: {reply}"
    );
    broker.publish("s.d", json!(3)).await?;
    c.expect_silence(Duration::from_millis(500))
        .await
        .context("s.d not subscribed")?;

    let (reply, _) = c
        .request(json!({"op": "unsubscribe", "topics": ["s.b"]}))
        .await?;
    ensure!(reply["type"] == "unsubscribed", "unsubscribe: {reply}");
    c.subscribe(&["s.d"])
        .await
        .context("a slot is free after unsubscribing")?;
    broker.publish("s.d", json!(4)).await?;
    let ev = c.event().await?;
    ensure!(ev["topic"] == "s.d" && ev["data"] == 4, "unexpected {ev}");
    Ok(())
}

// ---------------------------------------------------------------------------------
// Connection limits and upgrade checks (docs/protocol.md#2-connecting)
// ---------------------------------------------------------------------------------

/// Closes a client and waits for the server's side of the close.
async fn close_client(mut c: Client) -> Result<()> {
    c.ws.close(None).await.context("send close")?;
    let drain = async {
        while let Some(msg) = c.ws.next().await {
            if msg.is_err() {
                break;
            }
        }
    };
    let _ = tokio::time::timeout(WAIT, drain).await;
    Ok(())
}

/// Connects, retrying while the server answers 503 (a freed slot is released
/// asynchronously), for up to `WAIT`.
async fn connect_when_slot_frees(url: &str) -> Result<Client> {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        match Client::connect(url).await {
            Ok(c) => return Ok(c),
            Err(e) if tokio::time::Instant::now() < deadline => {
                let _ = e;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => return Err(e.context("no slot freed within 5 s of a close")),
        }
    }
}

/// `max_connections`: the upgrade past it gets 503 with `Retry-After`; closing a
/// connection frees its slot.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_connections_refuses_with_503_and_retry_after() -> Result<()> {
    let broker = Broker::start(&config("max_connections = 2", ""))?;
    let first = broker.client().await?;
    let _second = broker.client().await?;
    let response = refused(tokio_tungstenite::connect_async(broker.ws_url()).await)?;
    ensure!(
        response.status().as_u16() == 503,
        "third connection: status {}",
        response.status()
    );
    ensure!(
        response.headers().contains_key("retry-after"),
        "503 without Retry-After: {:?}",
        response.headers()
    );
    close_client(first).await?;
    let mut again = connect_when_slot_frees(&broker.ws_url()).await?;
    let (pong, _) = again.request(json!({"op": "ping"})).await?;
    ensure!(pong["type"] == "pong", "got {pong}");
    Ok(())
}

/// A WebSocket connection from a given loopback source address.
async fn connect_from(
    broker: &Broker,
    source: &str,
) -> Result<tokio_tungstenite::WebSocketStream<MaybeTlsStream<TcpStream>>, WsError> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(
        source
            .parse()
            .map_err(|e| std::io::Error::other(format!("{source}: {e}")))?,
    )?;
    let addr = broker
        .addr
        .parse()
        .map_err(|e| std::io::Error::other(format!("{}: {e}", broker.addr)))?;
    let stream = socket.connect(addr).await?;
    tokio_tungstenite::client_async(broker.ws_url(), MaybeTlsStream::Plain(stream))
        .await
        .map(|(ws, _)| ws)
}

/// `max_connections_per_ip`: a second connection from the same address gets 503 with
/// `Retry-After`, another address still connects, and a closed connection frees the
/// address's slot.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_connections_per_ip_refuses_the_same_address_only() -> Result<()> {
    let broker = Broker::start(&config("max_connections_per_ip = 1", ""))?;
    let first = broker.client().await?;
    let response = refused(connect_from(&broker, "127.0.0.1:0").await)?;
    ensure!(
        response.status().as_u16() == 503,
        "second from 127.0.0.1: status {}",
        response.status()
    );
    ensure!(
        response.headers().contains_key("retry-after"),
        "503 without Retry-After"
    );

    // Another source address on the loopback network is another client IP.
    let mut other = connect_from(&broker, "127.0.0.2:0")
        .await
        .context("connect from 127.0.0.2")?;
    let welcome = tokio::time::timeout(WAIT, other.next())
        .await
        .map_err(|_| anyhow!("no welcome for 127.0.0.2"))?
        .ok_or_else(|| anyhow!("127.0.0.2: connection ended"))??;
    ensure!(
        welcome.to_text()?.contains("\"welcome\""),
        "127.0.0.2 got {welcome:?}"
    );

    close_client(first).await?;
    let mut again = connect_when_slot_frees(&broker.ws_url()).await?;
    let (pong, _) = again.request(json!({"op": "ping"})).await?;
    ensure!(pong["type"] == "pong", "got {pong}");
    Ok(())
}

/// `allowed_origins`: another Origin is refused with 403 and a JSON error body; the
/// listed Origin and a request without Origin connect.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn origin_allow_list_refuses_other_origins_with_403() -> Result<()> {
    let broker = Broker::start(&config("allowed_origins = [\"https://app.example\"]", ""))?;
    let response = refused(
        Client::connect_request(upgrade_request(
            &broker,
            &[("origin", "https://evil.example")],
        )?)
        .await,
    )?;
    ensure!(
        response.status().as_u16() == 403,
        "evil origin: status {}",
        response.status()
    );
    let raw = raw_upgrade(&broker, &[("Origin", "https://evil.example")]).await?;
    ensure!(
        raw.status == 403,
        "evil origin (raw): status {}",
        raw.status
    );
    ensure!(
        raw.header("content-type")
            .is_some_and(|v| v.starts_with("application/json")),
        "403 is not JSON: {:?}",
        raw.headers
    );
    let body = raw.json()?;
    ensure!(
        body["error"]["code"].is_string() && body["error"]["message"].is_string(),
        "403 body is not a JSON error: {body}"
    );

    let mut ws = Client::connect_request(upgrade_request(
        &broker,
        &[("origin", "https://app.example")],
    )?)
    .await
    .context("listed origin connects")?;
    let welcome = tokio::time::timeout(WAIT, ws.next())
        .await
        .map_err(|_| anyhow!("no welcome"))?
        .ok_or_else(|| anyhow!("connection ended"))??;
    ensure!(
        welcome.to_text()?.contains("\"welcome\""),
        "listed origin got {welcome:?}"
    );

    let mut no_origin = broker
        .client()
        .await
        .context("a client without Origin connects")?;
    let (pong, _) = no_origin.request(json!({"op": "ping"})).await?;
    ensure!(pong["type"] == "pong", "got {pong}");
    Ok(())
}

/// Subprotocol negotiation: `herald.v1.json` is echoed; only unknown ones → 400
/// naming it; none offered → served without the header.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subprotocol_is_echoed_or_refused() -> Result<()> {
    let broker = Broker::start(&config("", ""))?;
    let (mut ws, response) = tokio_tungstenite::connect_async(upgrade_request(
        &broker,
        &[("sec-websocket-protocol", "herald.v1.json")],
    )?)
    .await
    .context("offering herald.v1.json")?;
    ensure!(
        response
            .headers()
            .get("sec-websocket-protocol")
            .and_then(|v| v.to_str().ok())
            == Some("herald.v1.json"),
        "herald.v1.json not echoed: {:?}",
        response.headers()
    );
    let welcome = tokio::time::timeout(WAIT, ws.next())
        .await
        .map_err(|_| anyhow!("no welcome"))?
        .ok_or_else(|| anyhow!("connection ended"))??;
    ensure!(
        welcome.to_text()?.contains("\"herald.v1.json\""),
        "welcome: {welcome:?}"
    );

    let response = refused(
        Client::connect_request(upgrade_request(
            &broker,
            &[("sec-websocket-protocol", "mqtt")],
        )?)
        .await,
    )?;
    ensure!(
        response.status().as_u16() == 400,
        "only mqtt offered: status {}",
        response.status()
    );
    let raw = raw_upgrade(&broker, &[("Sec-WebSocket-Protocol", "mqtt")]).await?;
    ensure!(
        raw.status == 400,
        "only mqtt offered (raw): status {}",
        raw.status
    );
    ensure!(
        raw.body.contains("herald.v1.json"),
        "400 body does not name herald.v1.json: {}",
        raw.body
    );
    ensure!(
        raw.json()?["error"]["code"].is_string(),
        "400 body is not a JSON error: {}",
        raw.body
    );

    let (mut ws, response) = tokio_tungstenite::connect_async(broker.ws_url())
        .await
        .context("offering no subprotocol")?;
    ensure!(
        !response.headers().contains_key("sec-websocket-protocol"),
        "a subprotocol was echoed though none was offered: {:?}",
        response.headers()
    );
    let welcome = tokio::time::timeout(WAIT, ws.next())
        .await
        .map_err(|_| anyhow!("no welcome"))?
        .ok_or_else(|| anyhow!("connection ended"))??;
    ensure!(
        welcome.to_text()?.contains("\"welcome\""),
        "welcome: {welcome:?}"
    );
    // The raw upgrade helper itself is sound: without a bad offer it gets 101.
    let ok = raw_upgrade(&broker, &[]).await?;
    ensure!(ok.status == 101, "a plain raw upgrade got {}", ok.status);
    Ok(())
}

// ---------------------------------------------------------------------------------
// Frame errors (docs/protocol.md#2-connecting, docs/protocol.md#7-close-codes)
// ---------------------------------------------------------------------------------

/// Sends raw frames on a fresh connection and returns how the server closed it.
async fn close_after_frames(broker: &Broker, frames: Vec<Frame>) -> Result<Closed> {
    close_after(broker.client().await?, frames).await
}

/// Sends raw frames on `c` and returns how the server closed it.
async fn close_after(mut c: Client, frames: Vec<Frame>) -> Result<Closed> {
    for frame in frames {
        c.ws.feed(Message::Frame(frame))
            .await
            .context("queue frame")?;
    }
    c.ws.flush().await.context("send frames")?;
    c.closed(WAIT).await
}

/// Binary frames, invalid UTF-8 (whole or split across fragments), oversized
/// messages (one frame or fragments) and reserved bits close with 1003, 1007, 1009
/// and 1002; the broker keeps serving other clients after each.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frame_errors_close_with_the_documented_codes() -> Result<()> {
    let broker = Broker::start(&config("", "[session]\nmax_message_bytes = 1024\n"))?;
    let text = |bytes: Vec<u8>, fin: bool| Frame::message(bytes, OpCode::Data(Data::Text), fin);
    let cont = |bytes: Vec<u8>, fin: bool| Frame::message(bytes, OpCode::Data(Data::Continue), fin);
    let mut failures = Vec::new();

    let cases: Vec<(&str, Vec<Frame>, u16)> = vec![
        (
            "binary frame",
            vec![Frame::message(
                b"{\"op\":\"ping\"}".to_vec(),
                OpCode::Data(Data::Binary),
                true,
            )],
            1003,
        ),
        (
            "text frame with invalid UTF-8",
            vec![text(b"{\"op\":\"\xff\xfe\"}".to_vec(), true)],
            1007,
        ),
        (
            // 0xC3 opens a two-byte sequence; '(' (0x28) cannot continue it.
            "invalid UTF-8 split across fragments",
            vec![
                text(b"{\"op\":\"\xc3".to_vec(), false),
                cont(b"(\"}".to_vec(), true),
            ],
            1007,
        ),
        (
            "one frame over max_message_bytes",
            vec![text(vec![b' '; 2000], true)],
            1009,
        ),
        (
            // Each fragment fits; together they exceed the limit.
            "fragments whose sum exceeds max_message_bytes",
            vec![
                text(vec![b' '; 600], false),
                cont(vec![b' '; 600], false),
                cont(vec![b' '; 600], true),
            ],
            1009,
        ),
        (
            // No extension is negotiated, so RSV1-3 must be 0 (Autobahn 3.x). It was
            // once reported as 1007 (actix-ws gave it the error kind of invalid UTF-8).
            "a frame with a reserved bit set",
            vec![with_rsv2(text(b"{\"op\":\"ping\"}".to_vec(), true))],
            1002,
        ),
    ];
    for (i, (name, frames, expected)) in cases.into_iter().enumerate() {
        match close_after_frames(&broker, frames).await {
            Ok(closed) if closed.code == Some(expected) => {}
            Ok(closed) => failures.push(format!(
                "{name}: closed with {closed:?}, expected {expected}"
            )),
            Err(e) => failures.push(format!("{name}: {e:#}, expected close {expected}")),
        }
        broker_still_serves(&broker, &format!("after.case{i}"))
            .await
            .with_context(|| format!("broker serves other clients after: {name}"))?;
    }
    // A message of exactly the limit is accepted (the bound is not off by one).
    let mut c = broker.client().await?;
    let mut msg = json!({"op": "ping", "id": 1}).to_string();
    msg.push_str(&" ".repeat(1024 - msg.len()));
    c.send_text(&msg).await?;
    match c.recv().await {
        Ok(v) if v == json!({"type": "pong", "id": 1}) => {}
        other => failures.push(format!(
            "a message of exactly 1024 bytes: {other:?}, expected a pong"
        )),
    }
    ensure!(
        failures.is_empty(),
        "frame errors:\n{}",
        failures.join("\n")
    );
    Ok(())
}

// ---------------------------------------------------------------------------------
// Malformed messages and publish permission
// ---------------------------------------------------------------------------------

/// Malformed or invalid requests get the right error reply and never close the
/// connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_messages_get_errors_and_the_connection_survives() -> Result<()> {
    let broker = Broker::start(&config("", ""))?;
    let mut c = broker.client().await?;
    // (raw text, expected code, expected id)
    let cases: [(&str, &str, Value); 8] = [
        ("not json", "bad_request", Value::Null),
        ("[1,2,3]", "bad_request", Value::Null),
        // An array that serde could read as the fields of a request in order.
        (r#"["ping"]"#, "bad_request", Value::Null),
        (r#"{"id":3,"topics":["a"]}"#, "bad_request", json!(3)),
        (r#"{"op":"fly","id":"abc"}"#, "unknown_op", json!("abc")),
        (
            r#"{"op":"subscribe","id":5,"topics":["a..b"]}"#,
            "invalid_topic",
            json!(5),
        ),
        (
            r#"{"op":"publish","id":6,"topic":"a.*","data":1}"#,
            "invalid_topic",
            json!(6),
        ),
        (
            r#"{"op":"subscribe","id":7,"topics":"a"}"#,
            "bad_request",
            json!(7),
        ),
    ];
    for (text, code, id) in cases {
        c.send_text(text).await?;
        let reply = c.recv().await.with_context(|| format!("reply to {text}"))?;
        ensure!(
            error_code(&reply).with_context(|| format!("reply to {text}"))? == code,
            "{text}: expected {code}, got {reply}"
        );
        ensure!(
            reply["message"].is_string(),
            "{text}: error without a message: {reply}"
        );
        match &id {
            Value::Null => ensure!(
                reply.get("id").is_none(),
                "{text}: unexpected id in {reply}"
            ),
            id => ensure!(&reply["id"] == id, "{text}: expected id {id}, got {reply}"),
        }
    }
    // The invalid subscribe subscribed nothing, the invalid publish published nothing.
    let (pong, other) = c.request(json!({"op": "ping"})).await?;
    ensure!(
        pong["type"] == "pong",
        "connection alive after the errors: {pong}"
    );
    ensure!(other.is_empty(), "unexpected messages: {other:?}");
    Ok(())
}

/// `publish.from_clients = false`: `{"op":"publish"}` is refused with
/// `publish_disabled`; HTTP publishing still works.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_from_clients_can_be_disabled() -> Result<()> {
    let broker = Broker::start(&config("", "[publish]\nfrom_clients = false\n"))?;
    let mut c = broker.client().await?;
    c.subscribe(&["chat.room1"]).await?;
    let (reply, _) = c
        .request(json!({"op": "publish", "topic": "chat.room1", "data": {"text": "hi"}}))
        .await?;
    ensure!(
        error_code(&reply)? == "publish_disabled",
        "ws publish: {reply}"
    );
    c.expect_silence(Duration::from_millis(300))
        .await
        .context("the refused publish fanned out")?;
    broker
        .publish("chat.room1", json!({"text": "via http"}))
        .await?;
    let ev = c.event().await?;
    ensure!(
        ev["source"] == "http" && ev["data"]["text"] == "via http" && ev["seq"] == 1,
        "HTTP publish still works: {ev}"
    );
    Ok(())
}

/// `frame` with its RSV2 bit set.
fn with_rsv2(mut frame: Frame) -> Frame {
    frame.header_mut().rsv2 = true;
    frame
}

// ---------------------------------------------------------------------------------
// The test-only echo route (server.conformance_echo; docs/conformance.md)
// ---------------------------------------------------------------------------------

/// `ws://addr/echo`.
fn echo_url(broker: &Broker) -> String {
    format!("ws://{}/echo", broker.addr)
}

/// The next data or close message, skipping nothing: an echo session must send
/// nothing of its own (no `welcome`, no JSON ping).
async fn next_message(c: &mut Client) -> Result<Message> {
    match tokio::time::timeout(WAIT, c.ws.next()).await {
        Ok(Some(Ok(msg))) => Ok(msg),
        Ok(Some(Err(e))) => bail!("websocket error: {e}"),
        Ok(None) => bail!("connection ended"),
        Err(_) => bail!("nothing within {WAIT:?}"),
    }
}

/// Without `server.conformance_echo` there is no `/echo` route.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn echo_route_is_mounted_only_when_configured() -> Result<()> {
    let broker = Broker::start(&config("", ""))?;
    let response = refused(Client::connect_request(echo_url(&broker)).await)?;
    ensure!(
        response.status().as_u16() == 404,
        "/echo without conformance_echo: status {}",
        response.status()
    );
    Ok(())
}

/// `/echo` sends text and binary messages back unchanged, and nothing of its own,
/// while frame handling stays that of `/ws`: joined fragments, a Pong per Ping, the
/// close handshake, and 1007, 1009 and 1002 for the same frames. `/ws` on the same
/// broker still speaks JSON.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn echo_route_echoes_with_the_frame_handling_of_ws() -> Result<()> {
    let broker = Broker::start(&config(
        "conformance_echo = true",
        "[session]\nmax_message_bytes = 1024\nheartbeat_interval_ms = 100\nheartbeat_timeout_ms = 10000\n",
    ))?;
    let text = |bytes: Vec<u8>, fin: bool| Frame::message(bytes, OpCode::Data(Data::Text), fin);
    let cont = |bytes: Vec<u8>, fin: bool| Frame::message(bytes, OpCode::Data(Data::Continue), fin);

    let mut c = Client::open(echo_url(&broker)).await?;
    // Several heartbeat intervals pass: still no `welcome` and no JSON ping.
    tokio::time::sleep(Duration::from_millis(400)).await;
    // A JSON request comes back as it is (it is not parsed), binary is not refused,
    // and a message of exactly max_message_bytes passes.
    let sent = [
        Message::text(json!({"op": "ping", "id": 1}).to_string()),
        Message::binary(vec![0u8, 0x9f, 0xff]),
        Message::text("x".repeat(1024)),
    ];
    for msg in sent {
        c.ws.send(msg.clone()).await.context("send")?;
        let got = next_message(&mut c).await?;
        ensure!(got == msg, "sent {msg:?}, got back {got:?}");
    }
    c.ws.feed(Message::Frame(text(b"frag".to_vec(), false)))
        .await?;
    c.ws.feed(Message::Ping(b"p1".to_vec().into())).await?;
    c.ws.feed(Message::Ping(b"p2".to_vec().into())).await?;
    c.ws.feed(Message::Frame(cont(b"ment".to_vec(), true)))
        .await?;
    c.ws.flush().await?;
    let mut got = Vec::new();
    for _ in 0..3 {
        got.push(next_message(&mut c).await?);
    }
    let expected = vec![
        Message::Pong(b"p1".to_vec().into()),
        Message::Pong(b"p2".to_vec().into()),
        Message::text("fragment"),
    ];
    ensure!(got == expected, "fragments around pings: got {got:?}");
    c.ws.close(Some(CloseFrame {
        code: CloseCode::Normal,
        reason: "bye".into(),
    }))
    .await?;
    let closed = c.closed(WAIT).await?;
    ensure!(
        closed.code == Some(1000),
        "the close handshake: server answered {closed:?}"
    );

    let cases: Vec<(&str, Vec<Frame>, u16)> = vec![
        (
            "text frame with invalid UTF-8",
            vec![text(b"\xff\xfe".to_vec(), true)],
            1007,
        ),
        (
            "invalid UTF-8 split across fragments",
            vec![text(b"\xc3".to_vec(), false), cont(b"(".to_vec(), true)],
            1007,
        ),
        (
            "one frame over max_message_bytes",
            vec![text(vec![b' '; 1025], true)],
            1009,
        ),
        (
            "fragments whose sum exceeds max_message_bytes",
            vec![text(vec![b' '; 600], false), cont(vec![b' '; 600], true)],
            1009,
        ),
        (
            "a frame with a reserved bit set",
            vec![with_rsv2(text(b"x".to_vec(), true))],
            1002,
        ),
    ];
    let mut failures = Vec::new();
    for (name, frames, expected) in cases {
        let c = Client::open(echo_url(&broker)).await?;
        match close_after(c, frames).await {
            Ok(closed) if closed.code == Some(expected) => {}
            Ok(closed) => failures.push(format!(
                "{name}: closed with {closed:?}, expected {expected}"
            )),
            Err(e) => failures.push(format!("{name}: {e:#}, expected close {expected}")),
        }
    }
    ensure!(failures.is_empty(), "/echo:\n{}", failures.join("\n"));
    broker_still_serves(&broker, "after.echo").await?;
    Ok(())
}

/// `server.max_upgrades_per_s`: past the rate (and its second of burst), an upgrade
/// gets 503 `unavailable` with a `Retry-After` of 1 to 5 s, counted as
/// `upgrade_rate`; the connections already open are not affected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upgrades_past_the_rate_are_told_when_to_retry() -> Result<()> {
    let broker = Broker::start(&config("max_upgrades_per_s = 1", ""))?;
    let mut open = Vec::new();
    let mut refused = Vec::new();
    let started = std::time::Instant::now();
    for _ in 0..8 {
        match tokio_tungstenite::connect_async(broker.ws_url()).await {
            Ok((ws, _)) => open.push(ws),
            Err(tokio_tungstenite::tungstenite::Error::Http(res)) => refused.push(res),
            Err(e) => anyhow::bail!("upgrade: {e}"),
        }
    }
    // One at once (a second's worth), then one more per second the loop took.
    let refills = started.elapsed().as_secs_f64().ceil() as usize;
    ensure!(
        !open.is_empty() && open.len() <= 1 + refills,
        "{} upgrades accepted in {:?}",
        open.len(),
        started.elapsed()
    );
    ensure!(!refused.is_empty(), "none refused");
    for res in &refused {
        ensure!(res.status() == 503, "{}", res.status());
        let wait: u64 = res
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        ensure!((1..=5).contains(&wait), "Retry-After {wait}");
        let body: Value = serde_json::from_slice(res.body().as_deref().unwrap_or_default())?;
        ensure!(body["error"]["code"] == "unavailable", "{body}");
    }
    let refused_metric = broker
        .metric("herald_connections_refused_total{reason=\"upgrade_rate\"}")
        .await?;
    ensure!(refused_metric == refused.len() as f64, "{refused_metric}");
    // Once the bucket refills, new connections are accepted again.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let mut c = loop {
        match broker.client().await {
            Ok(c) => break c,
            Err(_) if std::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => return Err(e),
        }
    };
    c.subscribe(&["a.b"]).await?;
    drop(open);
    Ok(())
}

/// An upgrade from this machine that says, through `X-Forwarded-For`, which client a
/// proxy forwards; its HTTP status (101 or the refusal's) and the open client.
async fn upgrade_forwarded(broker: &Broker, client: &str) -> Result<(u16, Option<Client>)> {
    let mut request = broker.ws_url().into_client_request()?;
    request.headers_mut().insert(
        "x-forwarded-for",
        format!("198.51.100.77, {client}").parse()?,
    );
    match Client::connect_with(request).await {
        Ok(c) => Ok((101, Some(c))),
        Err(e) => match e.downcast_ref::<tokio_tungstenite::tungstenite::Error>() {
            Some(tokio_tungstenite::tungstenite::Error::Http(res)) => {
                Ok((res.status().as_u16(), None))
            }
            _ => Err(e),
        },
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn behind_a_trusted_proxy_the_forwarded_client_is_the_one_limited_and_logged() -> Result<()> {
    let broker = Broker::start(&config(
        "max_connections_per_ip = 1\ntrusted_proxies = [\"127.0.0.0/8\"]",
        "",
    ))?;
    let (status, a) = upgrade_forwarded(&broker, "203.0.113.1").await?;
    ensure!(status == 101, "first client: {status}");
    let (status, b) = upgrade_forwarded(&broker, "203.0.113.2").await?;
    ensure!(
        status == 101,
        "another client behind the same proxy: {status}"
    );
    let (status, _) = upgrade_forwarded(&broker, "203.0.113.1").await?;
    ensure!(status == 503, "the first client again: {status}");
    // The access line comes once the response is out: wait for it.
    let deadline = std::time::Instant::now() + WAIT;
    while !broker.log_text().contains("client=203.0.113.2") && std::time::Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let log = broker.log_text();
    ensure!(
        log.contains("client=203.0.113.2") && !log.contains("client=198.51.100.77"),
        "the access log names the forwarded client, not the forged left-most hop:\n{log}"
    );
    drop((a, b));

    // Without trusted_proxies the header is the client's word: ignored.
    let plain = Broker::start(&config("max_connections_per_ip = 1", ""))?;
    let (status, _first) = upgrade_forwarded(&plain, "203.0.113.1").await?;
    ensure!(status == 101, "{status}");
    let (status, _) = upgrade_forwarded(&plain, "203.0.113.2").await?;
    ensure!(
        status == 503,
        "a forged header must not lift the limit: {status}"
    );
    let deadline = std::time::Instant::now() + WAIT;
    while !plain.log_text().contains("client=127.0.0.1") && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    ensure!(
        plain.log_text().contains("client=127.0.0.1"),
        "{}",
        plain.log_text()
    );
    Ok(())
}
