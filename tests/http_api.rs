//! The HTTP API, end to end (docs/protocol.md#8-http-api): `POST /api/publish` (success,
//! batches, every refusal), `GET /api/topics`, health, readiness, metrics, the
//! dashboard and JSON errors for unknown routes. Every test starts its own `herald`.

use std::time::Duration;

use anyhow::{anyhow, ensure, Context as _, Result};
use herald_e2e::{config, header, Broker, WAIT};
use serde_json::{json, Value};

/// Asserts `body` is Herald's JSON error with `code` and a message.
fn check_error(what: &str, body: &Value, code: &str) -> Result<()> {
    ensure!(
        body["error"]["code"] == code,
        "{what}: expected error code {code}, got {body}"
    );
    ensure!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "{what}: error without a message: {body}"
    );
    Ok(())
}

/// `POST path` with a body and an optional Content-Type; (status, JSON or text).
async fn post(
    broker: &Broker,
    path: &str,
    body: String,
    content_type: Option<&str>,
) -> Result<(u16, Value)> {
    let mut req = reqwest::Client::new()
        .post(format!("{}{path}", broker.http()))
        .body(body);
    if let Some(ct) = content_type {
        req = req.header("content-type", ct);
    }
    let res = req.send().await.with_context(|| format!("POST {path}"))?;
    let status = res.status().as_u16();
    let text = res.text().await.context("response body")?;
    Ok((
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    ))
}

/// Polls `f` until it returns true, for up to [`WAIT`].
async fn eventually<F, Fut>(what: &str, mut f: F) -> Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<bool>>,
{
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        if f().await? {
            return Ok(());
        }
        ensure!(
            tokio::time::Instant::now() < deadline,
            "{what}: not within {WAIT:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

// ---------------------------------------------------------------------------------
// POST /api/publish
// ---------------------------------------------------------------------------------

/// One event → 202 `{"accepted":1}`, delivered with source `http`, key and headers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_one_event_is_delivered_with_key_and_headers() -> Result<()> {
    let broker = Broker::start(&config("", ""))?;
    let mut sub = broker.client().await?;
    sub.subscribe(&["orders.eu"]).await?;

    let before = now_ms();
    let (status, body) = broker
        .post_raw(
            "/api/publish",
            json!({"topic": "orders.eu", "data": {"id": 7}, "key": "order-7", "headers": {"trace": "abc"}})
                .to_string(),
        )
        .await?;
    ensure!(status == 202, "status {status}: {body}");
    ensure!(body == json!({"accepted": 1}), "body {body}");
    let ev = sub.event().await?;
    ensure!(ev["topic"] == "orders.eu", "{ev}");
    ensure!(ev["seq"] == 1, "first event of a topic has seq 1: {ev}");
    ensure!(ev["source"] == "http", "{ev}");
    ensure!(ev["data"] == json!({"id": 7}), "{ev}");
    ensure!(ev["key"] == "order-7", "{ev}");
    ensure!(ev["headers"] == json!({"trace": "abc"}), "{ev}");
    let ts = ev["ts"].as_u64().ok_or_else(|| anyhow!("no ts: {ev}"))?;
    ensure!(
        ts + 60_000 >= before && ts <= now_ms() + 60_000,
        "ts {ts} is not now in ms"
    );
    ensure!(
        ev.get("replay").is_none(),
        "a live event is not a replay: {ev}"
    );

    // Without key and headers: the fields are absent.
    broker.publish("orders.eu", json!({"id": 8})).await?;
    let ev = sub.event().await?;
    ensure!(ev["seq"] == 2 && ev["data"] == json!({"id": 8}), "{ev}");
    ensure!(
        ev.get("key").is_none() && ev.get("headers").is_none(),
        "no key/headers given: {ev}"
    );
    Ok(())
}

/// Milliseconds since the Unix epoch, here.
fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// An array of three → `{"accepted":3}`, delivered in order with consecutive seqs;
/// the body needs no Content-Type, and `application/json` works too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_batch_is_delivered_in_order() -> Result<()> {
    let broker = Broker::start(&config("", ""))?;
    let mut sub = broker.client().await?;
    sub.subscribe(&["batch.>"]).await?;
    let batch = json!([
        {"topic": "batch.a", "data": 1},
        {"topic": "batch.a", "data": 2},
        {"topic": "batch.a", "data": 3},
    ]);
    // post_raw sends a String body: reqwest sets no Content-Type.
    let (status, body) = post(&broker, "/api/publish", batch.to_string(), None).await?;
    ensure!(
        status == 202 && body == json!({"accepted": 3}),
        "{status} {body}"
    );
    for n in 1..=3 {
        let ev = sub.event().await?;
        ensure!(
            ev["topic"] == "batch.a" && ev["data"] == n && ev["seq"] == n,
            "event {n}: {ev}"
        );
    }
    let (status, body) = post(
        &broker,
        "/api/publish",
        json!([{"topic": "batch.a", "data": 4}, {"topic": "batch.b", "data": 5}]).to_string(),
        Some("application/json"),
    )
    .await?;
    ensure!(
        status == 202 && body == json!({"accepted": 2}),
        "{status} {body}"
    );
    // Order is kept per topic only (two topics may live on two shards).
    let mut got = vec![sub.event().await?, sub.event().await?];
    got.sort_by_key(|ev| ev["topic"].as_str().unwrap_or_default().to_string());
    ensure!(
        got[0]["topic"] == "batch.a" && got[0]["data"] == 4 && got[0]["seq"] == 4,
        "{got:?}"
    );
    ensure!(
        got[1]["topic"] == "batch.b" && got[1]["data"] == 5 && got[1]["seq"] == 1,
        "{got:?}"
    );
    Ok(())
}

/// Invalid bodies get 400 with a JSON error, and a batch with one invalid event
/// publishes none of it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_invalid_bodies_get_400_and_publish_nothing() -> Result<()> {
    let broker = Broker::start(&config("", ""))?;
    let mut sub = broker.client().await?;
    sub.subscribe(&["ok.>"]).await?;
    let cases: [(&str, String, &str); 9] = [
        ("not JSON", "this is not json".into(), "bad_request"),
        (
            "truncated JSON",
            r#"{"topic":"ok.a","data":"#.into(),
            "bad_request",
        ),
        ("a number", "42".into(), "bad_request"),
        ("an empty array", "[]".into(), "bad_request"),
        ("missing topic", r#"{"data":1}"#.into(), "bad_request"),
        ("missing data", r#"{"topic":"ok.a"}"#.into(), "bad_request"),
        (
            "invalid topic",
            r#"{"topic":"ok..a","data":1}"#.into(),
            "invalid_topic",
        ),
        (
            "wildcard topic",
            r#"{"topic":"ok.*","data":1}"#.into(),
            "invalid_topic",
        ),
        (
            "unknown field",
            r#"{"topic":"ok.a","data":1,"colour":"red"}"#.into(),
            "bad_request",
        ),
    ];
    for (what, body, code) in cases {
        let (status, reply) = broker.post_raw("/api/publish", body).await?;
        ensure!(
            status == 400,
            "{what}: status {status}, expected 400: {reply}"
        );
        check_error(what, &reply, code)?;
    }
    // One invalid event in a batch: nothing of it is published.
    let (status, reply) = broker
        .post_raw(
            "/api/publish",
            json!([{"topic": "ok.a", "data": 1}, {"topic": "ok..b", "data": 2}, {"topic": "ok.c", "data": 3}])
                .to_string(),
        )
        .await?;
    ensure!(
        status == 400,
        "batch with an invalid event: status {status}: {reply}"
    );
    check_error("batch with an invalid event", &reply, "invalid_topic")?;
    sub.expect_silence(Duration::from_millis(500))
        .await
        .context("nothing of a refused request is delivered")?;
    // Nothing was published before either: the next event of ok.a is its first.
    broker.publish("ok.a", json!("after")).await?;
    let ev = sub.event().await?;
    ensure!(
        ev["topic"] == "ok.a" && ev["data"] == "after" && ev["seq"] == 1,
        "{ev}"
    );
    Ok(())
}

/// 413 when the body exceeds `publish.max_body_bytes` or one event's data exceeds
/// `session.max_message_bytes`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_too_large_gets_413() -> Result<()> {
    let broker = Broker::start(&config(
        "",
        "[publish]\nmax_body_bytes = 1024\n[session]\nmax_message_bytes = 256\n",
    ))?;
    let mut sub = broker.client().await?;
    sub.subscribe(&["big"]).await?;

    // A body past max_body_bytes (its events would each be small enough).
    let events: Vec<Value> = (0..40)
        .map(|i| json!({"topic": "big", "data": i, "key": "k"}))
        .collect();
    let body = Value::Array(events).to_string();
    ensure!(body.len() > 1024, "the test body must exceed the limit");
    let (status, reply) = broker.post_raw("/api/publish", body).await?;
    ensure!(
        status == 413,
        "body over max_body_bytes: status {status}: {reply}"
    );
    check_error("body over max_body_bytes", &reply, "payload_too_large")?;

    // A small body whose one event's data exceeds max_message_bytes.
    let body = json!({"topic": "big", "data": "d".repeat(300)}).to_string();
    ensure!(body.len() < 1024, "this body must be within max_body_bytes");
    let (status, reply) = broker.post_raw("/api/publish", body).await?;
    ensure!(
        status == 413,
        "data over max_message_bytes: status {status}: {reply}"
    );
    check_error("data over max_message_bytes", &reply, "payload_too_large")?;

    sub.expect_silence(Duration::from_millis(300))
        .await
        .context("refused events were delivered")?;
    // Within both limits: accepted.
    broker.publish("big", json!("d".repeat(200))).await?;
    let ev = sub.event().await?;
    ensure!(
        ev["seq"] == 1 && ev["data"].as_str().map(str::len) == Some(200),
        "{ev}"
    );
    Ok(())
}

/// `publish.http = false` → 403 `publish_disabled`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_over_http_can_be_disabled() -> Result<()> {
    let broker = Broker::start(&config("", "[publish]\nhttp = false\n"))?;
    let mut sub = broker.client().await?;
    sub.subscribe(&["x"]).await?;
    let (status, reply) = broker
        .post_raw("/api/publish", json!({"topic": "x", "data": 1}).to_string())
        .await?;
    ensure!(status == 403, "status {status}: {reply}");
    check_error("publish.http = false", &reply, "publish_disabled")?;
    sub.expect_silence(Duration::from_millis(300)).await?;
    Ok(())
}

/// `data` as a JSON string is delivered as that string; `null` as null.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_string_and_null_data() -> Result<()> {
    let broker = Broker::start(&config("", ""))?;
    let mut sub = broker.client().await?;
    sub.subscribe(&["d"]).await?;
    broker
        .publish("d", json!("plain text, not an object"))
        .await?;
    let ev = sub.event().await?;
    ensure!(
        ev["data"] == "plain text, not an object",
        "string data: {ev}"
    );
    ensure!(ev.get("data_b64").is_none(), "{ev}");

    broker.publish("d", Value::Null).await?;
    let ev = sub.event().await?;
    ensure!(
        ev.get("data") == Some(&Value::Null),
        "null data is delivered as data: null: {ev}"
    );
    ensure!(ev.get("data_b64").is_none(), "{ev}");
    Ok(())
}

// ---------------------------------------------------------------------------------
// GET /api/topics
// ---------------------------------------------------------------------------------

/// Exact subscribers are counted per topic, pattern subscribers under `patterns`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topics_lists_topics_and_patterns() -> Result<()> {
    let broker = Broker::start(&config("", ""))?;
    let mut exact = broker.client().await?;
    exact.subscribe(&["orders.eu"]).await?;
    let mut wildcard = broker.client().await?;
    wildcard.subscribe(&["orders.*"]).await?;
    for n in 1..=2 {
        broker.publish("orders.eu", json!({"n": n})).await?;
    }
    for c in [&mut exact, &mut wildcard] {
        for n in 1..=2 {
            let ev = c.event().await?;
            ensure!(ev["seq"] == n, "{ev}");
        }
    }
    let (status, body) = broker.get("/api/topics").await?;
    ensure!(status == 200, "status {status}: {body}");
    let topics = body["topics"]
        .as_array()
        .ok_or_else(|| anyhow!("no topics array: {body}"))?;
    let row = topics
        .iter()
        .find(|t| t["topic"] == "orders.eu")
        .ok_or_else(|| anyhow!("orders.eu not listed: {body}"))?;
    ensure!(
        row["subscribers"] == 2,
        "orders.eu counts both connections that receive it: {row}"
    );
    ensure!(row["exact"] == 1, "one of them by its exact name: {row}");
    ensure!(row["seq"] == 2, "orders.eu seq: {row}");
    ensure!(
        row["last_event_ms"].as_u64().is_some_and(|ms| ms > 0),
        "last_event_ms: {row}"
    );
    let patterns = body["patterns"]
        .as_array()
        .ok_or_else(|| anyhow!("no patterns array: {body}"))?;
    let row = patterns
        .iter()
        .find(|p| p["pattern"] == "orders.*")
        .ok_or_else(|| anyhow!("orders.* not listed under patterns: {body}"))?;
    ensure!(row["subscribers"] == 1, "orders.* subscribers: {row}");
    ensure!(
        !topics.iter().any(|t| t["topic"] == "orders.*"),
        "a pattern is listed as a topic: {body}"
    );
    Ok(())
}

// ---------------------------------------------------------------------------------
// Health, readiness, metrics, dashboard, unknown routes
// ---------------------------------------------------------------------------------

/// `/healthz`, `/readyz` (no bridges), `/metrics`, `/`, and JSON errors for unknown
/// paths, wrong methods and a plain GET of `/ws`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_metrics_dashboard_and_route_errors() -> Result<()> {
    let broker = Broker::start(&config("", ""))?;
    let (status, body) = broker.get("/healthz").await?;
    ensure!(status == 200, "/healthz: {status} {body}");
    let (status, body) = broker.get("/readyz").await?;
    ensure!(status == 200, "/readyz without bridges: {status} {body}");

    let (status, body) = broker.get("/metrics").await?;
    ensure!(status == 200, "/metrics: {status}");
    let text = body
        .as_str()
        .ok_or_else(|| anyhow!("/metrics is not text: {body}"))?;
    for family in [
        "herald_connections{transport=\"websocket\"} ",
        "herald_events_in_total{source=\"http\"} ",
        "herald_sessions_closed_total{",
    ] {
        ensure!(
            text.lines().any(|l| l.starts_with(family)),
            "/metrics lacks {family}:\n{text}"
        );
    }
    let sample = "herald_events_in_total{source=\"http\"}";
    let before = broker.metric(sample).await?;
    broker.publish("metrics.check", json!(1)).await?;
    let b = &broker;
    eventually(
        "herald_events_in_total{source=\"http\"} counts the publish",
        move || async move { Ok(b.metric(sample).await? >= before + 1.0) },
    )
    .await?;
    // A client connected: the gauge says so.
    let _client = broker.client().await?;
    eventually("herald_connections counts the client", move || async move {
        Ok(b.metric("herald_connections{transport=\"websocket\"}")
            .await?
            >= 1.0)
    })
    .await?;

    let (status, body) = broker.get("/no/such/route").await?;
    ensure!(status == 404, "unknown path: {status} {body}");
    ensure!(
        body["error"]["code"].is_string(),
        "404 is not a JSON error: {body}"
    );
    let (status, body) = broker.get("/api/publish").await?;
    ensure!(status == 405, "GET /api/publish: {status} {body}");
    ensure!(
        body["error"]["code"].is_string(),
        "405 is not a JSON error: {body}"
    );
    // A wrong method on each route answers 405 and names the right one in `Allow`.
    let http = reqwest::Client::new();
    for (path, wrong, allowed) in [
        ("/api/publish", reqwest::Method::GET, "POST"),
        ("/api/tickets", reqwest::Method::GET, "POST"),
        ("/api/topics", reqwest::Method::POST, "GET"),
        ("/healthz", reqwest::Method::POST, "GET"),
        ("/readyz", reqwest::Method::DELETE, "GET"),
        ("/metrics", reqwest::Method::PUT, "GET"),
        ("/herald.js", reqwest::Method::POST, "GET"),
        ("/asyncapi.json", reqwest::Method::POST, "GET"),
        ("/", reqwest::Method::POST, "GET"),
        ("/ws", reqwest::Method::POST, "GET"),
    ] {
        let res = http
            .request(wrong.clone(), format!("{}{path}", broker.http()))
            .send()
            .await?;
        ensure!(
            res.status().as_u16() == 405,
            "{wrong} {path}: {}",
            res.status()
        );
        let allow = header(&res, "allow");
        ensure!(allow == allowed, "{wrong} {path}: Allow `{allow}`");
        let body: Value = res.json().await?;
        ensure!(
            body["error"]["code"] == "method_not_allowed",
            "{wrong} {path}: {body}"
        );
    }

    let res = reqwest::get(format!("{}/", broker.http()))
        .await
        .context("GET /")?;
    ensure!(res.status().as_u16() == 200, "GET /: {}", res.status());
    let content_type = header(&res, "content-type");
    ensure!(
        content_type.starts_with("text/html"),
        "GET / content-type {content_type}"
    );
    let html = res.text().await.context("GET / body")?;
    ensure!(
        html.contains("Herald"),
        "the dashboard does not mention Herald"
    );

    // GET /ws without upgrade headers: 400 with a JSON error.
    let (status, body) = broker.get("/ws").await?;
    ensure!(status == 400, "plain GET /ws: {status} {body}");
    ensure!(
        body["error"]["code"].is_string(),
        "plain GET /ws is not a JSON error: {body}"
    );
    Ok(())
}

/// The broker serves for as long as it runs: `server.shutdown_grace_ms` bounds the
/// shutdown only, it is not a lifetime.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthz_keeps_answering_past_the_shutdown_grace_period() -> Result<()> {
    let broker = Broker::start(&config("shutdown_grace_ms = 500", ""))?;
    let mut client = broker.client().await?;
    // Well past grace + any slack a shutdown could take, without any signal sent.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let (status, body) = broker.get("/healthz").await.with_context(|| {
        format!(
            "GET /healthz 4 s after start; broker log:\n{}",
            broker.log_text()
        )
    })?;
    ensure!(status == 200, "/healthz: {status} {body}");
    let (pong, _) = client.request(json!({"op": "ping"})).await?;
    ensure!(
        pong["type"] == "pong",
        "a connected client is still served: {pong}"
    );
    Ok(())
}

/// `GET /api/topics?limit=N` returns the first N topics by name and the `total`;
/// a limit out of 1..=10000 is a 400 with a JSON error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topics_can_be_limited_and_say_their_total() -> Result<()> {
    let broker = Broker::start(&config("", ""))?;
    for topic in ["lim.c", "lim.a", "lim.b"] {
        broker.publish(topic, json!(1)).await?;
    }
    let (status, body) = broker.get("/api/topics?limit=2").await?;
    ensure!(status == 200, "{status} {body}");
    let names: Vec<&str> = body["topics"]
        .as_array()
        .map(|t| t.iter().filter_map(|t| t["topic"].as_str()).collect())
        .unwrap_or_default();
    ensure!(names == ["lim.a", "lim.b"], "{body}");
    ensure!(body["total"] == 3, "{body}");
    let (_, body) = broker.get("/api/topics").await?;
    ensure!(body["total"] == 3 && body["topics"].as_array().map_or(0, Vec::len) == 3);
    for bad in ["0", "10001", "x"] {
        let (status, body) = broker.get(&format!("/api/topics?limit={bad}")).await?;
        ensure!(
            status == 400 && body["error"]["code"] == "bad_request",
            "{bad}: {body}"
        );
    }
    Ok(())
}
