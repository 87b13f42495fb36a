//! End-to-end tests of the NATS bridge against a real nats-server: NATS → WebSocket
//! with wildcards, prefix mapping, headers, JSON, text and binary payloads; outages
//! (`/readyz` 503 naming the bridge, local publishing unaffected) and recovery
//! without restarting Herald; the cluster backplane; JetStream starts (`deliver`
//! `all`, `new`, `last_per_subject`, a missing stream retried until it exists); and a
//! NATS slow consumer.
//!
//! Tests that need no special server options and never stop the server take it from
//! [`TestNats`]: the server named by `HERALD_TEST_NATS_URL` when set (e.g. the
//! machine's `nats://127.0.0.1:4222`), else a private one. They keep every subject
//! under their own `t<unique>.` root. The others start private servers.
//! TLS, NKey and `.creds` authentication are in `nats_auth.rs`.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{ensure, Result};
use herald_e2e::nats::{NatsServer, TestNats};
use herald_e2e::{config, Broker, Client};
use serde_json::{json, Value};

/// A bridge `events` on `url`, subscribed to `events.>`, with `extra` TOML lines.
fn bridge(url: &str, extra: &str) -> String {
    config(
        "",
        &format!("[[bridge.nats]]\nname = \"events\"\nurl = \"{url}\"\nsubjects = [\"events.>\"]\n{extra}\n"),
    )
}

/// A bridge `events` subscribed to `subject` on `nats`, with `strip_prefix =
/// "<root>.events."`: NATS `<root>.events.orders.eu` is topic `orders.eu`.
fn test_bridge(nats: &TestNats, subject: &str, extra: &str) -> String {
    config(
        "",
        &format!(
            "[[bridge.nats]]\nname = \"events\"\nurl = \"{}\"\nsubjects = [\"{}\"]\nstrip_prefix = \"{}\"\n{extra}\n",
            nats.url(),
            nats.subject(subject),
            nats.subject("events."),
        ),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_messages_reach_websocket_subscribers() -> Result<()> {
    let nats = TestNats::start()?;
    let broker = Broker::start(&test_bridge(&nats, "events.>", ""))?;
    broker.wait_readyz(200).await?;
    let mut c = broker.client().await?;
    c.subscribe(&["orders.*"]).await?;
    let publisher = nats.client().await?;
    let mut headers = async_nats::HeaderMap::new();
    headers.insert("trace", "abc");
    publisher
        .publish_with_headers(
            nats.subject("events.orders.eu"),
            headers,
            r#"{"id":7}"#.into(),
        )
        .await?;
    publisher
        .publish(nats.subject("events.orders.us"), "plain text".into())
        .await?;
    publisher
        .publish(
            nats.subject("events.orders.bin"),
            bytes::Bytes::from_static(&[0xff, 0x00, 0x10]),
        )
        .await?;
    // Not matched by the subscription: a deeper subject.
    publisher
        .publish(nats.subject("events.orders.eu.created"), "{}".into())
        .await?;
    publisher.flush().await?;

    // Three topics, three shards: order is per topic only, so look them up by name.
    let mut by_topic = BTreeMap::new();
    for _ in 0..3 {
        let e = c.event().await?;
        by_topic.insert(e["topic"].as_str().unwrap_or_default().to_string(), e);
    }
    let e = &by_topic["orders.eu"];
    assert_eq!(e["source"], "nats");
    assert_eq!(e["data"], json!({"id": 7}));
    assert_eq!(e["headers"], json!({"trace": "abc"}));
    assert_eq!(e["seq"], 1);
    assert_eq!(by_topic["orders.us"]["data"], json!("plain text"));
    let e = &by_topic["orders.bin"];
    assert_eq!(e["data_b64"], "/wAQ");
    assert!(e.get("data").is_none());
    c.expect_silence(Duration::from_millis(300)).await?;
    assert!(
        broker
            .metric("herald_events_in_total{source=\"nats\"}")
            .await?
            >= 4.0
    );
    assert!(
        broker
            .metric("herald_bridge_messages_total{bridge=\"events\"}")
            .await?
            >= 4.0
    );
    assert_eq!(
        broker
            .metric("herald_bridge_connected{bridge=\"events\"}")
            .await?,
        1.0
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subjects_map_to_topics_with_prefixes() -> Result<()> {
    let nats = TestNats::start()?;
    let broker = Broker::start(&test_bridge(&nats, "events.>", "topic_prefix = \"live.\""))?;
    broker.wait_readyz(200).await?;
    let mut c = broker.client().await?;
    c.subscribe(&["live.>"]).await?;
    let publisher = nats.client().await?;
    publisher
        .publish(nats.subject("events.metrics.cpu"), "1".into())
        .await?;
    publisher.flush().await?;
    let e = c.event().await?;
    assert_eq!(e["topic"], "live.metrics.cpu");
    assert_eq!(e["data"], 1);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outage_is_reported_and_recovered_from_without_a_restart() -> Result<()> {
    let mut nats = NatsServer::start()?;
    let broker = Broker::start(&bridge(&nats.url(), ""))?;
    broker.wait_readyz(200).await?;
    let mut c = broker.client().await?;
    c.subscribe(&["events.>", "local.t"]).await?;
    let publisher = nats.client().await?;
    publisher.publish("events.a", "1".into()).await?;
    publisher.flush().await?;
    let before = c.event().await?;
    assert_eq!(
        (before["topic"].as_str(), before["seq"].as_u64()),
        (Some("events.a"), Some(1))
    );
    drop(publisher);

    nats.stop();
    let body = broker.wait_readyz(503).await?;
    let reasons = body["reasons"].to_string();
    assert!(
        reasons.contains("events"),
        "reasons name the bridge: {body}"
    );
    // Herald keeps serving: local publishing still reaches subscribers, with no
    // gap, since no bridge feeds `local.t`.
    broker.publish("local.t", json!("still here")).await?;
    let local = c.event().await?;
    assert_eq!(
        (&local["data"], local["seq"].as_u64()),
        (&json!("still here"), Some(1))
    );
    assert_eq!(
        broker
            .metric("herald_bridge_connected{bridge=\"events\"}")
            .await?,
        0.0
    );

    nats.restart()?;
    broker.wait_readyz(200).await?;
    let publisher = nats.client().await?;
    publisher
        .publish("events.back", "{\"ok\":true}".into())
        .await?;
    publisher.flush().await?;
    let e = c.event().await?;
    assert_eq!(
        (e["topic"].as_str(), &e["data"]),
        (Some("events.back"), &json!({"ok": true}))
    );
    // What NATS carried during the outage never reached this node: the next event
    // of every topic the bridge feeds shows a seq gap, live and in a resume's replay.
    publisher.publish("events.a", "2".into()).await?;
    publisher.flush().await?;
    let after = c.event().await?;
    assert_eq!(
        (&after["data"], after["seq"].as_u64()),
        (&json!(2), Some(3)),
        "{after}"
    );
    let mut late = broker.client().await?;
    let epoch = late.welcome["epoch"].clone();
    let (subscribed, _) = late
        .request(json!({"op":"subscribe","topics":["events.a"],
            "resume":{"epoch":epoch,"topics":{"events.a":1}}}))
        .await?;
    assert_eq!(subscribed["type"], "subscribed", "{subscribed}");
    let replayed = late.event().await?;
    assert_eq!(
        (replayed["seq"].as_u64(), &replayed["replay"]),
        (Some(3), &json!(true))
    );
    broker.publish("local.t", json!("after")).await?;
    assert_eq!(
        c.event().await?["seq"],
        2,
        "no gap where no bridge feeds the topic"
    );
    assert!(
        broker.log_text().contains("source interrupted"),
        "one log line says so"
    );
    assert!(
        broker
            .metric("herald_bridge_disconnects_total{bridge=\"events\"}")
            .await?
            >= 1.0
    );
    assert!(
        broker
            .metric("herald_bridge_reconnects_total{bridge=\"events\"}")
            .await?
            >= 1.0
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bridge_that_cannot_connect_is_not_ready_but_herald_serves() -> Result<()> {
    // A port nothing listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let broker = Broker::start(&bridge(&format!("nats://127.0.0.1:{port}"), ""))?;
    let (code, body) = broker.get("/readyz").await?;
    assert_eq!(code, 503, "{body}");
    assert!(body["reasons"].to_string().contains("events"), "{body}");
    // Once an attempt has failed, the reason says what failed.
    let reason = broker.wait_reason("cannot connect to NATS").await?;
    assert!(reason.starts_with("bridge events: down: "), "{reason}");
    let mut c = broker.client().await?;
    c.subscribe(&["x"]).await?;
    broker.publish("x", json!(1)).await?;
    assert_eq!(c.event().await?["data"], 1);
    Ok(())
}

/// A node of a cluster whose backplane bridge `bus` uses subjects `<prefix>>`.
fn cluster_node(url: &str, prefix: &str) -> String {
    config(
        "",
        &format!(
            "[cluster]\nbackplane = \"bus\"\nsubject_prefix = \"{prefix}\"\n\
             [[bridge.nats]]\nname = \"bus\"\nurl = \"{url}\"\nsubjects = [\"{prefix}>\"]\nstrip_prefix = \"{prefix}\"\n"
        ),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_sharing_nats_deliver_each_publish_exactly_once_everywhere() -> Result<()> {
    let nats = TestNats::start()?;
    let node = cluster_node(&nats.url(), &nats.prefix());
    let nodes = [
        Broker::start(&node)?,
        Broker::start(&node)?,
        Broker::start(&node)?,
    ];
    let mut clients = Vec::new();
    for node in &nodes {
        node.wait_readyz(200).await?;
        let mut c = node.client().await?;
        c.subscribe(&["chat.*"]).await?;
        clients.push(c);
    }
    // HTTP on node 0, with a key and a header.
    let (status, body) = nodes[0]
        .post_raw(
            "/api/publish",
            json!({"topic":"chat.room1","data":{"n":1},"key":"k1","headers":{"trace":"t1"}})
                .to_string(),
        )
        .await?;
    assert_eq!((status, &body), (202, &json!({"accepted": 1})));
    // WebSocket on node 1 (from a client that is not subscribed).
    let mut publisher = nodes[1].client().await?;
    let (ok, _) = publisher
        .request(json!({"op":"publish","topic":"chat.room1","data":{"n":2}}))
        .await?;
    assert_eq!(ok["type"], "ok", "{ok}");

    for (i, c) in clients.iter_mut().enumerate() {
        let mut got = [c.event().await?, c.event().await?];
        got.sort_by_key(|e| e["data"]["n"].as_u64());
        assert_eq!(got[0]["source"], "http", "node {i}: {}", got[0]);
        assert_eq!(got[0]["key"], "k1", "node {i}");
        assert_eq!(got[0]["headers"], json!({"trace":"t1"}), "node {i}");
        assert_eq!(got[1]["source"], "ws", "node {i}: {}", got[1]);
        assert!(
            got[1].get("key").is_none() && got[1].get("headers").is_none(),
            "node {i}: {}",
            got[1]
        );
        // Exactly once: nothing more arrives.
        c.expect_silence(Duration::from_millis(400)).await?;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publishes_fail_clearly_while_the_backplane_is_down() -> Result<()> {
    let mut nats = NatsServer::start()?;
    let broker = Broker::start(&cluster_node(&nats.url(), "herald."))?;
    broker.wait_readyz(200).await?;
    let mut c = broker.client().await?;
    c.subscribe(&["chat.*"]).await?;

    nats.stop();
    broker.wait_readyz(503).await?;
    let (status, body) = broker.publish_status("chat.a", json!(1)).await?;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["error"]["code"], "internal", "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("backplane")),
        "{body}"
    );
    let (reply, _) = c
        .request(json!({"op":"publish","topic":"chat.a","data":1}))
        .await?;
    assert_eq!(
        (reply["type"].as_str(), reply["code"].as_str()),
        (Some("error"), Some("internal")),
        "{reply}"
    );

    nats.restart()?;
    broker.wait_readyz(200).await?;
    broker.publish("chat.a", json!("back")).await?;
    assert_eq!(c.event().await?["data"], "back");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn header_names_nats_cannot_carry_are_a_400_not_a_crash() -> Result<()> {
    let nats = TestNats::start()?;
    let broker = Broker::start(&cluster_node(&nats.url(), &nats.prefix()))?;
    broker.wait_readyz(200).await?;
    let (status, body) = broker
        .post_raw(
            "/api/publish",
            json!({"topic":"a","data":1,"headers":{"bad:name":"x"}}).to_string(),
        )
        .await?;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["code"], "bad_request");
    let (status, _) = broker
        .post_raw(
            "/api/publish",
            json!({"topic":"a","data":1,"headers":{"v":"line\r\nbreak"}}).to_string(),
        )
        .await?;
    assert_eq!(status, 400);
    assert_eq!(broker.get("/healthz").await?.0, 200, "the broker survived");
    Ok(())
}

#[test]
fn backplane_config_must_round_trip_topics() -> Result<()> {
    let bad = "[cluster]\nbackplane = \"bus\"\nsubject_prefix = \"herald.\"\n\
               [[bridge.nats]]\nname = \"bus\"\nsubjects = [\"events.>\"]\n";
    let out = herald_e2e::check_config(bad)?;
    let err = out.stderr;
    assert_eq!(out.code, Some(2), "{err}");
    assert!(
        err.contains("cluster.backplane") && err.contains("herald.>"),
        "{err}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backplane_publishers_cannot_forge_source_or_key_and_batches_fail_whole() -> Result<()> {
    let nats = TestNats::start()?;
    let broker = Broker::start(&cluster_node(&nats.url(), &nats.prefix()))?;
    broker.wait_readyz(200).await?;
    let mut c = broker.client().await?;
    c.subscribe(&["f.*"]).await?;
    let forged = json!({"topic":"f.a","data":1,"headers":{"Herald-Source":"kafka","herald-key":"stolen","x":"y"}});
    assert_eq!(
        broker.post_raw("/api/publish", forged.to_string()).await?.0,
        202
    );
    let e = c.event().await?;
    assert_eq!(e["source"], "http", "{e}");
    assert!(e.get("key").is_none(), "{e}");
    assert_eq!(e["headers"], json!({"x":"y"}), "{e}");
    // A header NATS cannot carry in event 1 refuses the batch before event 0 is sent.
    let batch =
        json!([{"topic":"f.a","data":2},{"topic":"f.a","data":3,"headers":{"bad:name":"v"}}]);
    let (status, body) = broker.post_raw("/api/publish", batch.to_string()).await?;
    assert_eq!(status, 400, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("accepted 0 of 2")),
        "{body}"
    );
    c.expect_silence(Duration::from_millis(400)).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_url_list_fails_over_to_a_live_server() -> Result<()> {
    let nats = TestNats::start()?;
    let dead = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let urls = format!("nats://127.0.0.1:{dead}, {}", nats.url());
    let config = test_bridge(&nats, "events.>", "").replace(&nats.url(), &urls);
    let broker = Broker::start(&config)?;
    broker.wait_readyz(200).await?;
    let mut c = broker.client().await?;
    c.subscribe(&["z"]).await?;
    let publisher = nats.client().await?;
    publisher
        .publish(nats.subject("events.z"), "1".into())
        .await?;
    publisher.flush().await?;
    assert_eq!(c.event().await?["topic"], "z");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentials_authenticate_the_bridge() -> Result<()> {
    // User and password.
    let nats = NatsServer::start_with(&["--user", "herald", "--pass", "s3cret-pw"])?;
    let good = Broker::start(&bridge(
        &nats.url(),
        "user = \"herald\"\npassword = \"s3cret-pw\"",
    ))?;
    good.wait_readyz(200).await?;
    let mut c = good.client().await?;
    c.subscribe(&["events.>"]).await?;
    let publisher =
        async_nats::ConnectOptions::with_user_and_password("herald".into(), "s3cret-pw".into())
            .connect(nats.url())
            .await?;
    publisher.publish("events.auth", "1".into()).await?;
    publisher.flush().await?;
    assert_eq!(c.event().await?["topic"], "events.auth");
    let bad = Broker::start(&bridge(
        &nats.url(),
        "user = \"herald\"\npassword = \"wrong\"",
    ))?;
    // Refused logins are retried; /readyz says why.
    let reason = bad.wait_reason("authorization violation").await?;
    assert!(reason.contains("bridge events"), "{reason}");
    assert!(
        !bad.log_text().contains("wrong"),
        "the password never reaches the logs"
    );

    // Token.
    let nats = NatsServer::start_with(&["--auth", "tok-123"])?;
    let broker = Broker::start(&bridge(&nats.url(), "token = \"tok-123\""))?;
    broker.wait_readyz(200).await?;
    Ok(())
}

/// Publishes `(subject under the test's root, value)` pairs into JetStream, each
/// acknowledged (stored) before the next.
async fn store(
    nats: &TestNats,
    js: &async_nats::jetstream::Context,
    messages: &[(&str, i64)],
) -> Result<()> {
    for (subject, v) in messages {
        js.publish(nats.subject(subject), json!({ "v": v }).to_string().into())
            .await?
            .await?;
    }
    Ok(())
}

/// A stream `NAME_<root>` holding every subject under `<root>.events.>`.
async fn events_stream(
    nats: &TestNats,
    js: &async_nats::jetstream::Context,
    name: &str,
) -> Result<String> {
    let name = nats.stream_name(name);
    nats.create_stream(
        js,
        async_nats::jetstream::stream::Config {
            name: name.clone(),
            subjects: vec![nats.subject("events.>")],
            ..Default::default()
        },
    )
    .await?;
    Ok(name)
}

/// Waits (up to 10 s) until `/api/topics` shows each `(topic, seq)`.
async fn wait_topics(broker: &Broker, want: &[(&str, u64)]) -> Result<()> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (_, topics) = broker.get("/api/topics").await?;
        let rows = topics["topics"].as_array().cloned().unwrap_or_default();
        let done = want.iter().all(|(topic, seq)| {
            rows.iter()
                .any(|r| r["topic"] == *topic && r["seq"].as_u64() == Some(*seq))
        });
        if done {
            return Ok(());
        }
        ensure!(
            tokio::time::Instant::now() < deadline,
            "topics never reached {want:?}: {topics}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The replayed history a new subscriber of `topics` gets with `"last":10`.
async fn history(broker: &Broker, topics: &[&str]) -> Result<(Client, Vec<Value>)> {
    let mut c = broker.client().await?;
    let (reply, mut early) = c
        .request(json!({"op":"subscribe","topics":topics,"last":10}))
        .await?;
    ensure!(reply["type"] == "subscribed", "{reply}");
    // Replayed events come before live ones; a short silence ends the replay.
    loop {
        match tokio::time::timeout(Duration::from_millis(400), c.event()).await {
            Ok(e) => early.push(e?),
            Err(_) => return Ok((c, early)),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jetstream_start_gives_the_last_message_per_subject_then_live() -> Result<()> {
    let nats = TestNats::start()?;
    let js = async_nats::jetstream::new(nats.client().await?);
    let stream = events_stream(&nats, &js, "EVENTS").await?;
    // State published before Herald starts.
    store(
        &nats,
        &js,
        &[("events.a.x", 1), ("events.a.x", 2), ("events.a.y", 1)],
    )
    .await?;
    let broker = Broker::start(&test_bridge(
        &nats,
        "events.>",
        &format!("jetstream = {{ stream = \"{stream}\", deliver = \"last_per_subject\" }}"),
    ))?;
    broker.wait_readyz(200).await?;
    wait_topics(&broker, &[("a.x", 1), ("a.y", 1)]).await?;
    let (mut c, replayed) = history(&broker, &["a.*"]).await?;
    let state: BTreeMap<_, _> = replayed
        .iter()
        .inspect(|e| assert_eq!(e["replay"], true, "{e}"))
        .map(|e| (e["topic"].as_str().unwrap_or_default(), e["data"].clone()))
        .collect();
    // The last message of each subject only: a.x is at v2, its v1 was skipped.
    assert_eq!(replayed.len(), 2, "{replayed:?}");
    assert_eq!(state["a.x"], json!({"v": 2}));
    assert_eq!(state["a.y"], json!({"v": 1}));
    // Then live.
    store(&nats, &js, &[("events.a.x", 3)]).await?;
    let live = c.event().await?;
    assert_eq!(
        (live["topic"].as_str(), &live["data"], live["seq"].as_u64()),
        (Some("a.x"), &json!({"v": 3}), Some(2))
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jetstream_start_all_replays_every_stored_message_in_order_then_live() -> Result<()> {
    let nats = TestNats::start()?;
    let js = async_nats::jetstream::new(nats.client().await?);
    let stream = events_stream(&nats, &js, "EVENTS").await?;
    // Stored before Herald starts; events.b.* is in the stream but outside the
    // bridge's subject (the consumer's filter).
    store(
        &nats,
        &js,
        &[
            ("events.a.x", 1),
            ("events.a.y", 1),
            ("events.a.x", 2),
            ("events.b.z", 1),
            ("events.a.x", 3),
        ],
    )
    .await?;
    let broker = Broker::start(&test_bridge(
        &nats,
        "events.a.>",
        &format!("jetstream = {{ stream = \"{stream}\", deliver = \"all\" }}"),
    ))?;
    broker.wait_readyz(200).await?;
    wait_topics(&broker, &[("a.x", 3), ("a.y", 1)]).await?;
    let (mut c, replayed) = history(&broker, &[">"]).await?;
    let x: Vec<_> = replayed
        .iter()
        .filter(|e| e["topic"] == "a.x")
        .map(|e| (e["seq"].as_u64(), e["data"]["v"].as_i64()))
        .collect();
    // Every stored message of a.x, in the order it was stored.
    assert_eq!(
        x,
        [(Some(1), Some(1)), (Some(2), Some(2)), (Some(3), Some(3))],
        "{replayed:?}"
    );
    let y: Vec<_> = replayed.iter().filter(|e| e["topic"] == "a.y").collect();
    assert_eq!(y.len(), 1, "{replayed:?}");
    // Nothing outside the filter (b.z) became an event.
    assert_eq!(replayed.len(), 4, "{replayed:?}");
    // Then live, continuing the topic's numbering.
    store(&nats, &js, &[("events.a.x", 4)]).await?;
    let live = c.event().await?;
    assert_eq!(
        (live["topic"].as_str(), live["seq"].as_u64(), &live["data"]),
        (Some("a.x"), Some(4), &json!({"v": 4}))
    );
    assert!(live.get("replay").is_none(), "{live}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jetstream_start_new_replays_nothing_and_delivers_what_comes_after() -> Result<()> {
    let nats = TestNats::start()?;
    let js = async_nats::jetstream::new(nats.client().await?);
    let stream = events_stream(&nats, &js, "EVENTS").await?;
    store(&nats, &js, &[("events.a.x", 1), ("events.a.x", 2)]).await?;
    let broker = Broker::start(&test_bridge(
        &nats,
        "events.>",
        &format!("jetstream = {{ stream = \"{stream}\", deliver = \"new\" }}"),
    ))?;
    broker.wait_readyz(200).await?;
    let mut c = broker.client().await?;
    c.subscribe(&["a.*"]).await?;
    // Nothing stored became an event: no topic exists, nothing arrives.
    c.expect_silence(Duration::from_millis(500)).await?;
    let (_, topics) = broker.get("/api/topics").await?;
    assert_eq!(topics["topics"], json!([]), "{topics}");
    // Published after the bridge is ready: delivered, as the topic's first event.
    store(&nats, &js, &[("events.a.x", 3)]).await?;
    let live = c.event().await?;
    assert_eq!(
        (live["topic"].as_str(), live["seq"].as_u64(), &live["data"]),
        (Some("a.x"), Some(1), &json!({"v": 3}))
    );
    c.expect_silence(Duration::from_millis(300)).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jetstream_start_on_a_missing_stream_retries_until_the_stream_exists() -> Result<()> {
    let nats = TestNats::start()?;
    let stream = nats.stream_name("LATER");
    let broker = Broker::start(&test_bridge(
        &nats,
        "events.>",
        &format!("jetstream = {{ stream = \"{stream}\", deliver = \"all\" }}"),
    ))?;
    let reason = broker.wait_reason(&stream).await?;
    assert!(
        reason.starts_with("bridge events: down: JetStream stream") && reason.contains("retrying"),
        "{reason}"
    );
    // Attempts fail meanwhile (at 0, 0.25, 0.75 and 1.75 s). The same error is
    // logged once, not once per attempt (two lines at most, should the first
    // attempt have failed differently, e.g. timed out).
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(broker.get("/readyz").await?.0, 503);
    let log = broker.log_text();
    let failures = log
        .lines()
        .filter(|l| l.contains("attempt failed") && l.contains(&stream))
        .count();
    assert!((1..=2).contains(&failures), "{failures} lines: {log}");

    // Someone creates the stream: the bridge becomes ready without a restart,
    // replays what the stream holds, and goes live.
    let js = async_nats::jetstream::new(nats.client().await?);
    nats.create_stream(
        &js,
        async_nats::jetstream::stream::Config {
            name: stream.clone(),
            subjects: vec![nats.subject("events.>")],
            ..Default::default()
        },
    )
    .await?;
    store(&nats, &js, &[("events.s.a", 1)]).await?;
    let pid = broker.pid();
    broker.wait_readyz(200).await?;
    assert_eq!(broker.pid(), pid, "the same Herald process");
    assert!(
        broker
            .log_text()
            .contains("jetstream consumer created after retrying"),
        "{}",
        broker.log_text()
    );
    wait_topics(&broker, &[("s.a", 1)]).await?;
    let (mut c, replayed) = history(&broker, &["s.a"]).await?;
    assert_eq!(replayed.len(), 1, "{replayed:?}");
    assert_eq!(replayed[0]["data"], json!({"v": 1}));
    store(&nats, &js, &[("events.s.a", 2)]).await?;
    let live = c.event().await?;
    assert_eq!(
        (live["seq"].as_u64(), &live["data"]),
        (Some(2), &json!({"v": 2}))
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_jetstream_bridge_is_ready_again_after_an_outage() -> Result<()> {
    let mut nats = NatsServer::start()?;
    let js = async_nats::jetstream::new(nats.client().await?);
    js.create_stream(async_nats::jetstream::stream::Config {
        name: "EVENTS".into(),
        subjects: vec!["events.>".into()],
        ..Default::default()
    })
    .await?;
    let broker = Broker::start(&bridge(
        &nats.url(),
        "strip_prefix = \"events.\"\njetstream = { stream = \"EVENTS\", deliver = \"new\" }",
    ))?;
    broker.wait_readyz(200).await?;
    let mut c = broker.client().await?;
    c.subscribe(&["o.*"]).await?;
    js.publish("events.o.a", "1".into()).await?.await?;
    assert_eq!(c.event().await?["data"], 1);

    nats.stop();
    broker.wait_reason("bridge events").await?;
    nats.restart()?;
    // Ready again without restarting Herald, and messages flow again (the ordered
    // consumer recreates itself; the stream survived on disk).
    broker.wait_readyz(200).await?;
    let js = async_nats::jetstream::new(nats.client().await?);
    js.publish("events.o.a", "2".into()).await?.await?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let e = loop {
        let v = c.recv_any(Duration::from_secs(20)).await?;
        if v["type"] == "event" {
            break v;
        }
        ensure!(
            tokio::time::Instant::now() < deadline,
            "no event after the outage"
        );
    };
    assert_eq!((e["topic"].as_str(), &e["data"]), (Some("o.a"), &json!(2)));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nats_slow_consumer_is_counted_logged_sparingly_and_survived() -> Result<()> {
    const BURST: u64 = 50_000;
    let nats = TestNats::start()?;
    // One message of room between the NATS client and the bridge: a burst overflows.
    let broker = Broker::start(&test_bridge(&nats, "events.>", "subscription_capacity = 1"))?;
    broker.wait_readyz(200).await?;
    let publisher = nats.client().await?;
    let subject = nats.subject("events.burst");
    for _ in 0..BURST {
        publisher
            .publish(subject.clone(), bytes::Bytes::from_static(b"1"))
            .await?;
    }
    publisher.flush().await?;

    // Wait until the counts stop moving.
    let metric = |name: &'static str| {
        let broker = &broker;
        async move { broker.metric(&format!("{name}{{bridge=\"events\"}}")).await }
    };
    let mut last = (-1.0, -1.0);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let (received, slow) = loop {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let now = (
            metric("herald_bridge_messages_total").await?,
            metric("herald_bridge_slow_consumer_total").await?,
        );
        if now == last {
            break now;
        }
        ensure!(
            tokio::time::Instant::now() < deadline,
            "counts kept moving: {now:?}"
        );
        last = now;
    };
    let (received, slow) = (received as u64, slow as u64);
    println!("published {BURST}, received {received}, slow consumer {slow}");
    assert!(slow > 0, "no slow consumer counted ({received} received)");
    // Every message was either received or dropped by the client; a drop is counted
    // at most once (async-nats can undercount: its event queue drops reports when
    // full), so received + counted drops cannot exceed what was published.
    assert!((1..BURST).contains(&received), "received {received}");
    assert!(
        received + slow <= BURST,
        "received {received} + slow {slow} > {BURST}"
    );
    // The server did not cut the bridge off: the drops happened in the client.
    assert_eq!(metric("herald_bridge_disconnects_total").await?, 0.0);
    // Logged at the first drop and then once per 1000, not once per drop.
    let lines = broker.log_text().matches("nats slow consumer").count() as u64;
    assert!(
        lines >= 1 && lines <= slow / 1000 + 1,
        "{lines} log lines for {slow} drops"
    );
    assert!(
        slow >= 100 && lines * 100 <= slow,
        "{lines} lines, {slow} drops"
    );

    // The bridge and its subscribers still work.
    assert_eq!(broker.get("/readyz").await?.0, 200);
    let mut c = broker.client().await?;
    c.subscribe(&["after"]).await?;
    publisher
        .publish(nats.subject("events.after"), "\"fine\"".into())
        .await?;
    publisher.flush().await?;
    let e = c.event().await?;
    assert_eq!(
        (e["topic"].as_str(), &e["data"]),
        (Some("after"), &json!("fine"))
    );
    Ok(())
}

/// Graceful shutdown runs in order: stop accepting connections, close every session
/// with 1001, stop the bridges (the NATS bridge drains and closes its connection),
/// exit 0. The log says each step once, in that order, and a connection attempted
/// after the signal is never served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_stops_accepting_then_closes_sessions_then_stops_bridges() -> Result<()> {
    let nats = NatsServer::start()?;
    let mut broker = Broker::start(&bridge(&nats.url(), ""))?;
    broker.wait_readyz(200).await?;
    let mut a = broker.client().await?;
    a.subscribe(&["orders.*"]).await?;
    let url = broker.ws_url();
    let stop = tokio::task::spawn_blocking(move || {
        let status = broker.terminate(Duration::from_secs(10));
        (broker, status)
    });
    let closed = a.closed(Duration::from_secs(5)).await?;
    ensure!(closed.code == Some(1001), "{closed:?}");
    // The session is closed, so the listener is paused by now: a new connection is
    // not served (refused once the process is gone, unanswered before).
    let late = tokio::time::timeout(Duration::from_secs(2), Client::connect(&url)).await;
    ensure!(
        !matches!(late, Ok(Ok(_))),
        "a connection opened after shutdown began"
    );
    let (broker, status) = stop.await?;
    let status = status?;
    let log = broker.log_text();
    ensure!(status.success(), "exit status {status:?}\n{log}");
    let steps = [
        "shutting down: stopped accepting; closing sessions with 1001",
        "session closed",
        "sessions closed",
        "nats bridge stopped",
        "bridges stopped",
        "herald stopped",
    ];
    let mut at = 0;
    for step in steps {
        let Some(found) = log[at..].find(step) else {
            anyhow::bail!("`{step}` missing or out of order in:\n{log}");
        };
        at += found + step.len();
    }
    ensure!(
        log.matches("nats bridge stopped").count() == 1,
        "the bridge stops once:\n{log}"
    );
    Ok(())
}

const TICKET_SECRET: &str = "cluster-ticket-test-secret-0123456789";

/// A node with `auth.mode = "jwt"` whose backplane is `nats`.
fn auth_cluster_node(url: &str) -> String {
    config(
        "",
        &format!(
            "[cluster]\nbackplane = \"bus\"\nsubject_prefix = \"herald.\"\n\
             [[bridge.nats]]\nname = \"bus\"\nurl = \"{url}\"\nsubjects = [\"herald.>\"]\nstrip_prefix = \"herald.\"\n\
             [auth]\nmode = \"jwt\"\njwt_secret = \"{TICKET_SECRET}\"\n"
        ),
    )
}

/// A user's JWT, valid for ten minutes, that may subscribe to everything.
fn cluster_user() -> Result<String> {
    let exp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs()
        + 600;
    Ok(herald_e2e::hs256(
        TICKET_SECRET,
        &json!({"sub": "alice", "exp": exp, "herald": {"subscribe": [">"]}}),
    ))
}

/// The upgrade status of `/ws?ticket=…` on `node`: 101, or the refusal's status.
async fn upgrade_with(node: &Broker, ticket: &str) -> Result<u16> {
    herald_e2e::upgrade_status(format!("{}?ticket={ticket}", node.ws_url())).await
}

/// Waits until every node has logged `line`.
async fn all_logged(nodes: &[Broker], line: &str) -> Result<()> {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while !nodes.iter().all(|n| n.log_text().contains(line)) {
        ensure!(
            std::time::Instant::now() < deadline,
            "not every node logged `{line}`"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}

/// With a backplane whose NATS has JetStream, a ticket issued by any node opens a
/// WebSocket on any node, once in the whole cluster: presented to three nodes at the
/// same moment, it opens exactly one connection and the others get 401. No ticket is
/// ever logged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ticket_from_any_node_opens_one_websocket_on_any_node() -> Result<()> {
    let nats = NatsServer::start()?;
    let node = auth_cluster_node(&nats.url());
    let nodes = [
        Broker::start(&node)?,
        Broker::start(&node)?,
        Broker::start(&node)?,
    ];
    for n in &nodes {
        n.wait_readyz(200).await?;
    }
    all_logged(&nodes, "tickets are cluster-wide").await?;
    let token = cluster_user()?;
    let mut issued = Vec::new();
    // Issued on one node, redeemed on another, refused everywhere afterwards.
    let ticket = herald_e2e::ticket(&nodes[0], &token).await?;
    issued.push(ticket.clone());
    ensure!(upgrade_with(&nodes[1], &ticket).await? == 101);
    for n in [&nodes[0], &nodes[1], &nodes[2]] {
        ensure!(upgrade_with(n, &ticket).await? == 401, "a spent ticket");
    }
    // The same ticket on three nodes at once: exactly one connection.
    for round in 0..6 {
        let ticket = herald_e2e::ticket(&nodes[round % 3], &token).await?;
        issued.push(ticket.clone());
        let (a, b, c) = tokio::join!(
            upgrade_with(&nodes[0], &ticket),
            upgrade_with(&nodes[1], &ticket),
            upgrade_with(&nodes[2], &ticket),
        );
        let mut statuses = [a?, b?, c?];
        statuses.sort_unstable();
        ensure!(statuses == [101, 401, 401], "round {round}: {statuses:?}");
    }
    for (i, n) in nodes.iter().enumerate() {
        let logs = n.log_text();
        for t in &issued {
            ensure!(!logs.contains(t.as_str()), "node {i} logged a ticket");
        }
    }
    Ok(())
}

/// Without JetStream on the backplane's NATS, tickets stay node-local, and every
/// node says so when it starts: a ticket works on the node that issued it only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_jetstream_tickets_stay_node_local_and_the_log_says_so() -> Result<()> {
    let nats = NatsServer::start_with_config("")?;
    let node = auth_cluster_node(&nats.url());
    let nodes = [Broker::start(&node)?, Broker::start(&node)?];
    for n in &nodes {
        n.wait_readyz(200).await?;
    }
    all_logged(&nodes, "tickets are node-local").await?;
    let token = cluster_user()?;
    let ticket = herald_e2e::ticket(&nodes[0], &token).await?;
    ensure!(
        upgrade_with(&nodes[1], &ticket).await? == 401,
        "another node"
    );
    ensure!(
        upgrade_with(&nodes[0], &ticket).await? == 101,
        "the issuing node"
    );
    Ok(())
}

/// A bridge subscribed to `>` skips `$` subjects (JetStream and key-value traffic):
/// they are not topics, and they are not counted as invalid ones either.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bridge_on_everything_skips_system_subjects() -> Result<()> {
    let nats = NatsServer::start()?;
    let broker = Broker::start(&config(
        "",
        &format!(
            "[[bridge.nats]]\nname = \"all\"\nurl = \"{}\"\nsubjects = [\">\"]\n",
            nats.url()
        ),
    ))?;
    broker.wait_readyz(200).await?;
    let mut c = broker.client().await?;
    c.subscribe(&["plain.*"]).await?;
    let publisher = nats.client().await?;
    publisher.publish("$HERALD.control", "x".into()).await?;
    publisher.publish("$KV.BUCKET.key", "y".into()).await?;
    publisher.publish("plain.event", "{}".into()).await?;
    publisher.flush().await?;
    let ev = c.event().await?;
    ensure!(ev["topic"] == "plain.event", "{ev}");
    ensure!(
        broker
            .metric("herald_events_dropped_total{reason=\"invalid_topic\"}")
            .await?
            == 0.0,
        "a $ subject was counted as an invalid topic"
    );
    ensure!(
        broker
            .metric("herald_events_in_total{source=\"nats\"}")
            .await?
            == 1.0
    );
    Ok(())
}

/// `GET /api/topics?scope=cluster` answers for every node sharing the backplane: topics
/// merged (subscribers summed, exact-name and pattern subscribers alike), the nodes
/// with their connections, and a node that stops answering listed as missing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cluster_view_merges_every_node_and_names_the_missing() -> Result<()> {
    let nats = NatsServer::start()?;
    let node = cluster_node(&nats.url(), "herald.");
    let mut nodes = Vec::new();
    for id in ["n1", "n2", "n3"] {
        nodes.push(Broker::start_with_env(
            &node,
            &[("HERALD_SERVER__NODE_ID", id)],
        )?);
    }
    for n in &nodes {
        n.wait_readyz(200).await?;
    }
    // One exact subscriber on n1, one pattern subscriber on n2; nothing on n3.
    let mut exact = nodes[0].client().await?;
    exact.subscribe(&["chat.room1"]).await?;
    let mut wide = nodes[1].client().await?;
    wide.subscribe(&["chat.*"]).await?;
    let (status, _) = nodes[2]
        .post_raw(
            "/api/publish",
            json!({"topic": "chat.room1", "data": 1}).to_string(),
        )
        .await?;
    ensure!(status == 202);
    exact.event().await?;
    wide.event().await?;
    // Every node announces itself within a period; then all three answer.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let view = loop {
        let (status, view) = nodes[2].get("/api/topics?scope=cluster").await?;
        ensure!(status == 200, "{status} {view}");
        if view["nodes"].as_array().map_or(0, Vec::len) == 3 {
            break view;
        }
        ensure!(
            std::time::Instant::now() < deadline,
            "not every node answered: {view}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    ensure!(view["missing"] == json!([]), "{view}");
    let room = view["topics"]
        .as_array()
        .and_then(|t| t.iter().find(|t| t["topic"] == "chat.room1"))
        .cloned()
        .unwrap_or_default();
    ensure!(room["subscribers"] == 2 && room["exact"] == 1, "{room}");
    ensure!(room["seq"] == 1, "{room}");
    ensure!(
        view["patterns"] == json!([{"pattern": "chat.*", "subscribers": 1}]),
        "{view}"
    );
    let connections: Vec<(String, u64)> = view["nodes"]
        .as_array()
        .map(|n| {
            n.iter()
                .map(|n| {
                    (
                        n["node"].as_str().unwrap_or_default().to_owned(),
                        n["connections"].as_u64().unwrap_or(99),
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    ensure!(
        connections == [("n1".into(), 1), ("n2".into(), 1), ("n3".into(), 0)],
        "{view}"
    );
    ensure!(
        view["nodes"][0]["bridges"] == json!({"bus": "ready"}),
        "{view}"
    );
    // The default scope is this node only.
    let (_, local) = nodes[2].get("/api/topics").await?;
    ensure!(local.get("nodes").is_none(), "{local}");
    let (status, _) = nodes[2].get("/api/topics?scope=galaxy").await?;
    ensure!(status == 400);
    // n2 dies: it is still known (it announced itself moments ago) and does not
    // answer, so it is listed as missing, not silently left out.
    drop(nodes.remove(1));
    let (_, view) = nodes[1].get("/api/topics?scope=cluster").await?;
    ensure!(view["missing"] == json!(["n2"]), "{view}");
    ensure!(view["nodes"].as_array().map_or(0, Vec::len) == 2, "{view}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_the_topic_layer_refuses_keep_their_seq_so_subscribers_see_the_gap() -> Result<()> {
    const BURST: u64 = 20_000;
    let nats = TestNats::start()?;
    // One event of room per shard and per topic: a burst from NATS overflows both.
    // The session's queue is large, so the only losses are the topic layer's.
    let broker = Broker::start(&config(
        "ingest_capacity = 1\n",
        &format!(
            "[session]\nqueue_max_bytes = 67108864\n\
             [[bridge.nats]]\nname = \"events\"\nurl = \"{}\"\nsubjects = [\"{}\"]\nstrip_prefix = \"{}\"\n",
            nats.url(),
            nats.subject("events.>"),
            nats.subject("events."),
        ),
    ))?;
    broker.wait_readyz(200).await?;
    let mut c = broker.client().await?;
    c.subscribe(&["flood"]).await?;
    let publisher = nats.client().await?;
    let subject = nats.subject("events.flood");
    for n in 1..=BURST {
        publisher
            .publish(subject.clone(), n.to_string().into())
            .await?;
    }
    publisher.flush().await?;

    // Event n is the n-th message NATS carried; every refused one kept its number,
    // so each event that arrives has seq n, and the jumps are exactly the losses.
    let mut received = 0u64;
    let mut last = 0;
    loop {
        let e = match c.recv_within(Duration::from_secs(2)).await {
            Ok(e) => e,
            Err(_) => break,
        };
        ensure!(e["type"] == "event", "only events, no lagged: {e}");
        let (seq, n) = (e["seq"].as_u64(), e["data"].as_u64());
        if received < 5 {
            println!("{e}");
        }
        ensure!(seq == n, "event n {n:?} has seq {seq:?}");
        ensure!(n > Some(last), "in order: {n:?} after {last}");
        last = n.unwrap_or_default();
        received += 1;
    }
    let dropped = broker
        .metric("herald_bridge_dropped_total{bridge=\"events\"}")
        .await?;
    let busy = broker
        .metric("herald_events_dropped_total{reason=\"topic_busy\"}")
        .await?;
    println!("published {BURST}, received {received}, bridge dropped {dropped}, topic_busy {busy}");
    ensure!(
        received < BURST && busy > 0.0,
        "the burst overflowed nothing: {received} received"
    );
    ensure!(
        received + busy as u64 == BURST,
        "received {received} + dropped {busy} != {BURST}"
    );
    ensure!(
        broker
            .metric("herald_bridge_slow_consumer_total{bridge=\"events\"}")
            .await?
            == 0.0,
        "no drop in the NATS client (its marks come late)"
    );
    Ok(())
}
