//! `GET /sse` end to end against the real binary over real sockets
//! (docs/protocol.md, section 10): the WebSocket session's messages as an event
//! stream, resume with `Last-Event-ID` (header and query), `reset`, `ping`, the final
//! `close`, limits, and credentials (header and ticket) with every refusal an HTTP
//! error before the stream; one session read by `curl -N`, as the README shows.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{ensure, Result};
use herald_e2e::sse::SseStream;
use herald_e2e::{config, Broker};
use serde_json::{json, Value};

const SECRET: &str = "0123456789abcdef0123456789abcdef-sse";

fn url(broker: &Broker, query: &str) -> String {
    format!("{}/sse?{query}", broker.http())
}

/// A stream of `query` on `broker`, opened with `headers`, past its `welcome` and
/// `subscribed`.
async fn subscribed(broker: &Broker, query: &str, headers: &[(&str, &str)]) -> Result<SseStream> {
    let mut s = SseStream::open(&url(broker, query), headers)
        .await?
        .stream()?;
    ensure!(s.next().await?["type"] == "welcome");
    ensure!(s.next().await?["type"] == "subscribed");
    Ok(s)
}

/// A stream of `query` on `broker` that resumes from `id` (`Last-Event-ID`), past
/// its `welcome` and `subscribed`.
async fn resume(broker: &Broker, query: &str, id: &str) -> Result<SseStream> {
    subscribed(broker, query, &[("Last-Event-ID", id)]).await
}

/// `(topic, seq)` of events, in order.
fn positions(events: &[Value]) -> Vec<(String, u64)> {
    events
        .iter()
        .map(|e| {
            (
                e["topic"].as_str().unwrap_or_default().to_owned(),
                e["seq"].as_u64().unwrap_or(0),
            )
        })
        .collect()
}

/// `text` with every byte but letters and digits percent-encoded, for a query.
fn percent_encoded(text: &str) -> String {
    text.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() {
                char::from(b).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_carries_the_session_and_resumes_exactly_with_last_event_id() -> Result<()> {
    // Frequent pings: they are how a stream finds out that its client went away.
    let broker = Broker::start(&config(
        "",
        "[session]\nheartbeat_interval_ms = 300\nheartbeat_timeout_ms = 300\n",
    ))?;
    for n in 1..=3 {
        broker.publish("news.a", json!({"n": n})).await?;
    }
    let mut s = SseStream::open(&url(&broker, "topics=news.*,alerts.>&last=2"), &[])
        .await?
        .stream()?;
    let welcome = s.next().await?;
    assert_eq!(welcome["type"], "welcome", "{welcome}");
    assert!(
        welcome["epoch"].as_str().is_some_and(|e| !e.is_empty()),
        "{welcome}"
    );
    let sse = "herald_connections{transport=\"sse\"}";
    assert_eq!(broker.metric(sse).await?, 1.0);
    assert_eq!(
        s.next().await?,
        json!({"type": "subscribed", "topics": ["news.*", "alerts.>"]})
    );
    let replayed = [s.event().await?, s.event().await?];
    assert_eq!(
        positions(&replayed),
        [("news.a".into(), 2), ("news.a".into(), 3)]
    );
    assert!(replayed.iter().all(|e| e["replay"] == true));
    broker.publish("news.a", json!({"n": 4})).await?;
    broker.publish("alerts.x.y", json!("fire")).await?;
    let live = [s.event().await?, s.event().await?];
    assert_eq!(
        positions(&live),
        [("news.a".into(), 4), ("alerts.x.y".into(), 1)]
    );
    assert_eq!(live[1]["data"], "fire");
    let id = s.last_id.clone().expect("events carry ids");
    ensure!(id.len() < 4096, "the id stays small: {} bytes", id.len());
    drop(s);
    // A client that goes away ends its session once a write fails: within two pings.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while broker.metric(sse).await? != 0.0 {
        ensure!(
            tokio::time::Instant::now() < deadline,
            "the session outlived its client"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Missed while away: three on one topic, one on another, one on a topic the
    // stream had never seen.
    for n in 5..=7 {
        broker.publish("news.a", json!({"n": n})).await?;
    }
    broker.publish("alerts.x.y", json!("again")).await?;
    broker.publish("news.b", json!("new")).await?;

    // The browser's way: the header. `last` is ignored when resuming.
    let mut s = resume(&broker, "topics=news.*,alerts.>&last=2", &id).await?;
    let mut got = Vec::new();
    for _ in 0..4 {
        got.push(s.event().await?);
    }
    let mut by_topic: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    for (t, seq) in positions(&got) {
        by_topic.entry(t).or_default().push(seq);
    }
    assert_eq!(
        by_topic,
        BTreeMap::from([
            ("news.a".into(), vec![5, 6, 7]),
            ("alerts.x.y".into(), vec![2]),
        ]),
        "exactly what was missed: {got:?}"
    );
    // news.b was not in the id: live only, nothing replayed for it.
    broker.publish("news.b", json!("live")).await?;
    let e = s.event().await?;
    assert_eq!(
        positions(std::slice::from_ref(&e)),
        [("news.b".into(), 2)],
        "{e}"
    );
    let id = s.last_id.clone().expect("an id");
    drop(s);

    // The query parameter does the same, for a client that cannot set headers.
    broker.publish("news.b", json!("away")).await?;
    let query = format!("topics=news.*&last_event_id={id}");
    let mut s = subscribed(&broker, &query, &[]).await?;
    let e = s.event().await?;
    assert_eq!(positions(&[e]), [("news.b".into(), 3)]);
    broker.publish("news.a", json!({"n": 8})).await?;
    let e = s.event().await?;
    assert_eq!(
        positions(&[e]),
        [("news.a".into(), 8)],
        "news.a's position carried over"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resume_that_cannot_be_honoured_is_a_reset() -> Result<()> {
    let broker = Broker::start(&config("", "[history]\nsize = 2\n"))?;
    broker.publish("a.one", json!(1)).await?;
    let mut s = subscribed(&broker, "topics=a.*&last=1", &[]).await?;
    s.event().await?;
    let id = s.last_id.clone().expect("an id");
    drop(s);
    // More than the history holds.
    for n in 2..=6 {
        broker.publish("a.one", json!(n)).await?;
    }
    let mut s = resume(&broker, "topics=a.*", &id).await?;
    assert_eq!(
        s.next().await?,
        json!({"type": "reset", "topic": "a.one", "reason": "history_expired"})
    );

    // Another process: another epoch.
    let other = Broker::start(&config("", ""))?;
    let mut s = resume(&other, "topics=a.*", &id).await?;
    assert_eq!(
        s.next().await?,
        json!({"type": "reset", "topic": "a.one", "reason": "epoch_changed"})
    );
    Ok(())
}

/// `?resume=` as JSON: positions a client kept itself (the JS client's, after a
/// WebSocket). With it, `last` replays the patterns no resumed topic matches; a
/// stream of no pattern (`topics=`) is a welcome and pings.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_resumes_from_positions_in_the_query_and_last_fills_in_new_patterns() -> Result<()>
{
    let broker = Broker::start(&config("", ""))?;
    for n in 1..=3 {
        broker.publish("a.one", json!(n)).await?;
    }
    for n in 1..=2 {
        broker.publish("b.one", json!(n)).await?;
    }
    let mut empty = SseStream::open(&url(&broker, "topics="), &[])
        .await?
        .stream()?;
    let welcome = empty.next().await?;
    ensure!(welcome["type"] == "welcome", "{welcome}");
    let epoch = welcome["epoch"].as_str().unwrap_or_default().to_owned();
    // No subscribed, no event: nothing was asked for.
    match empty.next_any(Duration::from_millis(300)).await {
        Err(e) if e.to_string().starts_with("no message within") => {}
        other => anyhow::bail!("a stream of no pattern sent {other:?}"),
    }

    let query = |epoch: &str| {
        let resume = json!({"epoch": epoch, "topics": {"a.one": 1}}).to_string();
        format!("topics=a.*,b.*&last=5&resume={}", percent_encoded(&resume))
    };
    let mut s = subscribed(&broker, &query(&epoch), &[]).await?;
    let mut got = Vec::new();
    for _ in 0..4 {
        got.push(s.event().await?);
    }
    assert!(got.iter().all(|e| e["replay"] == true), "{got:?}");
    let mut got = positions(&got);
    got.sort();
    assert_eq!(
        got,
        [
            ("a.one".into(), 2),
            ("a.one".into(), 3),
            ("b.one".into(), 1),
            ("b.one".into(), 2)
        ],
        "a.one after its position, b.one's last 5"
    );
    // Resume ids carry on from the positions given.
    broker.publish("a.one", json!(4)).await?;
    s.event().await?;
    let id = s.last_id.clone().expect("an id");
    drop(s);
    broker.publish("b.one", json!(3)).await?;
    let mut s = resume(&broker, "topics=a.*,b.*", &id).await?;
    assert_eq!(positions(&[s.event().await?]), [("b.one".into(), 3)]);

    // Positions of another process: a reset for them; `last` for the other pattern.
    let mut s = subscribed(&broker, &query("another-epoch"), &[]).await?;
    assert_eq!(
        s.next().await?,
        json!({"type": "reset", "topic": "a.one", "reason": "epoch_changed"})
    );
    let mut got = vec![s.event().await?, s.event().await?, s.event().await?];
    got.sort_by_key(|e| e["seq"].as_u64());
    assert_eq!(
        positions(&got),
        [
            ("b.one".into(), 1),
            ("b.one".into(), 2),
            ("b.one".into(), 3)
        ]
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pings_flow_and_shutdown_ends_the_stream_with_a_close_message() -> Result<()> {
    let broker = Broker::start(&config(
        "",
        "[session]\nheartbeat_interval_ms = 200\nheartbeat_timeout_ms = 200\n",
    ))?;
    let mut s = subscribed(&broker, "topics=x", &[]).await?;
    // Pings, and no heartbeat timeout: the client cannot answer, and stays.
    let mut pings = 0;
    while pings < 5 {
        let m = s.next_any(Duration::from_secs(5)).await?.expect("open");
        if m["type"] == "ping" {
            pings += 1;
        }
    }
    let status = std::process::Command::new("kill")
        .args(["-TERM", &broker.pid().to_string()])
        .status()?;
    ensure!(status.success());
    let rest = s.until_end(Duration::from_secs(10)).await?;
    let last = rest.last().cloned().unwrap_or(Value::Null);
    assert_eq!(
        last,
        json!({"type": "close", "code": 1001, "reason": "server shutting down"}),
        "{rest:?}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_are_an_http_error_before_the_stream() -> Result<()> {
    let broker = Broker::start(&config(
        "max_connections_per_ip = 2\nallowed_origins = [\"https://app.example\"]",
        "[session]\nmax_subscriptions = 2\n",
    ))?;
    for (query, status, code) in [
        ("", 400, "bad_request"),
        ("topics=a&resume=nope", 400, "bad_request"),
        (
            "topics=a&resume=%7B%22epoch%22%3A%22e%22%2C%22topics%22%3A%7B%22a..b%22%3A1%7D%7D",
            400,
            "invalid_topic",
        ),
        (
            "topics=a&resume=%7B%22epoch%22%3A%22e%22%2C%22topics%22%3A%7B%7D%7D&last_event_id=x",
            400,
            "bad_request",
        ),
        ("topics=a..b", 400, "invalid_topic"),
        ("topics=a,b,c", 400, "too_many_subscriptions"),
        ("topics=a&last=many", 400, "bad_request"),
        ("topics=a&last_event_id=not-ours", 400, "bad_request"),
    ] {
        let (got, body) = SseStream::open(&url(&broker, query), &[])
            .await?
            .refused()?;
        assert_eq!(
            (got, body["error"]["code"].as_str()),
            (status, Some(code)),
            "{query}: {body}"
        );
    }
    let (status, body) = SseStream::open(
        &url(&broker, "topics=a"),
        &[("Origin", "https://evil.example")],
    )
    .await?
    .refused()?;
    assert_eq!(status, 403, "{body}");

    // The per-address limit counts streams like WebSockets.
    let _one = SseStream::open(&url(&broker, "topics=a"), &[])
        .await?
        .stream()?;
    let _two = SseStream::open(&url(&broker, "topics=a"), &[])
        .await?
        .stream()?;
    match SseStream::open(&url(&broker, "topics=a"), &[]).await? {
        herald_e2e::sse::Opened::Refused(status, body, retry_after) => {
            assert_eq!(status, 503, "{body}");
            assert!(retry_after.parse::<u64>().is_ok());
        }
        herald_e2e::sse::Opened::Stream(_) => anyhow::bail!("a third stream from one address"),
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentials_are_a_bearer_token_or_a_ticket_and_expiry_ends_the_stream() -> Result<()> {
    let broker = Broker::start(&config(
        "",
        &format!("[auth]\nmode = \"jwt\"\njwt_secret = \"{SECRET}\"\n"),
    ))?;
    let token = |exp: u64| {
        herald_e2e::hs256(
            SECRET,
            &json!({"sub": "ann", "exp": exp, "herald": {"subscribe": ["news.>"]}}),
        )
    };
    let t = token(now() + 60);
    let bearer = format!("Bearer {t}");
    for (query, headers, status) in [
        ("topics=news.a", vec![], 401),
        (&*format!("topics=news.a&token={t}"), vec![], 401),
        (
            "topics=secret.x",
            vec![("Authorization", bearer.as_str())],
            403,
        ),
        (
            "topics=news.a",
            vec![("Authorization", "Bearer not.a.jwt")],
            401,
        ),
    ] {
        let (got, body) = SseStream::open(&url(&broker, query), &headers)
            .await?
            .refused()?;
        assert_eq!(got, status, "{query}: {body}");
    }
    subscribed(&broker, "topics=news.a", &[("Authorization", &bearer)]).await?;

    // EventSource's way: a ticket in the URL, good once.
    let ticket = herald_e2e::ticket(&broker, &t).await?;
    subscribed(&broker, &format!("topics=news.a&ticket={ticket}"), &[]).await?;
    let (status, _) = SseStream::open(
        &url(&broker, &format!("topics=news.a&ticket={ticket}")),
        &[],
    )
    .await?
    .refused()?;
    assert_eq!(status, 401, "a ticket is good for one stream");
    // A malformed request does not spend a ticket.
    let ticket = herald_e2e::ticket(&broker, &t).await?;
    SseStream::open(&url(&broker, &format!("topics=a..b&ticket={ticket}")), &[])
        .await?
        .refused()?;
    SseStream::open(
        &url(&broker, &format!("topics=news.a&ticket={ticket}")),
        &[],
    )
    .await?
    .stream()?;

    // A token that expires ends the stream with 4001's message.
    let short = format!("Bearer {}", token(now() + 2));
    let mut s = SseStream::open(&url(&broker, "topics=news.a"), &[("Authorization", &short)])
        .await?
        .stream()?;
    let rest = s.until_end(Duration::from_secs(10)).await?;
    assert_eq!(
        rest.last().cloned().unwrap_or(Value::Null),
        json!({"type": "close", "code": 4001, "reason": "token expired"}),
        "{rest:?}"
    );
    assert!(
        !broker.log_text().contains(&ticket),
        "tickets stay out of the log"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_reads_a_stream_as_the_readme_shows() -> Result<()> {
    let broker = Broker::start(&config("", ""))?;
    broker.publish("orders.eu", json!({"total": 12})).await?;
    let out = tokio::process::Command::new("curl")
        .args(["-sN", "--max-time", "2"])
        .arg(url(&broker, "topics=orders.*&last=1"))
        .output()
        .await?;
    let text = String::from_utf8(out.stdout)?;
    let data: Vec<Value> = text
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .map(serde_json::from_str)
        .collect::<Result<_, _>>()?;
    let types: Vec<&str> = data.iter().filter_map(|m| m["type"].as_str()).collect();
    assert_eq!(types[..3], ["welcome", "subscribed", "event"], "{text}");
    assert_eq!(data[2]["data"], json!({"total": 12}));
    assert!(text.lines().any(|l| l.starts_with("id: ")), "{text}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_queue_bound_gives_lagged_or_ends_the_stream_with_4009() -> Result<()> {
    // An event whose frame is larger than the 1 KiB queue can never fit.
    for (policy, expect_end) in [("drop", false), ("disconnect", true)] {
        let broker = Broker::start(&config(
            "",
            &format!("[session]\nqueue_max_bytes = 1024\nslow_consumer = \"{policy}\"\n"),
        ))?;
        let mut s = subscribed(&broker, "topics=big.*", &[]).await?;
        broker.publish("big.one", json!("x".repeat(2000))).await?;
        if expect_end {
            let rest = s.until_end(Duration::from_secs(10)).await?;
            assert_eq!(
                rest,
                [json!({"type": "close", "code": 4009, "reason": "slow consumer"})],
                "{policy}"
            );
        } else {
            assert_eq!(s.next().await?, json!({"type": "lagged", "dropped": 1}));
            broker.publish("big.two", json!("small")).await?;
            let e = s.event().await?;
            assert_eq!(
                positions(&[e]),
                [("big.two".into(), 1)],
                "the stream goes on"
            );
        }
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_of_more_topics_than_its_id_holds_resets_every_pattern() -> Result<()> {
    let broker = Broker::start(&config("", ""))?;
    let mut s = subscribed(&broker, "topics=many.*,other.x", &[]).await?;
    // 60 topics: more than the 48 an id tracks.
    for i in 0..60 {
        broker.publish(&format!("many.t{i}"), json!(i)).await?;
    }
    for _ in 0..60 {
        s.event().await?;
    }
    let id = s.last_id.clone().expect("an id");
    ensure!(id.len() < 4096, "bounded: {} bytes", id.len());
    drop(s);
    broker.publish("many.t0", json!("missed")).await?;

    // Nothing is replayed (what the forgotten topics missed is unknown): a reset per
    // pattern, then live events.
    let mut s = resume(&broker, "topics=many.*,other.x", &id).await?;
    assert_eq!(
        s.next().await?,
        json!({"type": "reset", "topic": "many.*", "reason": "history_expired"})
    );
    assert_eq!(
        s.next().await?,
        json!({"type": "reset", "topic": "other.x", "reason": "history_expired"})
    );
    broker.publish("other.x", json!("live")).await?;
    let e = s.event().await?;
    assert_eq!(
        positions(&[e]),
        [("other.x".into(), 1)],
        "no replay before it"
    );
    // The new stream's id starts afresh: resuming from it replays normally.
    let id = s.last_id.clone().expect("an id");
    drop(s);
    broker.publish("other.x", json!("missed")).await?;
    let mut s = resume(&broker, "topics=many.*,other.x", &id).await?;
    let e = s.event().await?;
    assert_eq!(positions(&[e]), [("other.x".into(), 2)]);
    Ok(())
}
