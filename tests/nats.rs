//! End-to-end tests of the NATS bridge against a real, private nats-server:
//! NATS → WebSocket with wildcards, prefix mapping, headers, JSON, text and binary
//! payloads; an outage (`/readyz` 503 naming the bridge, local publishing unaffected)
//! and recovery without restarting Herald.

use std::time::Duration;

use anyhow::{ensure, Result};
use herald_e2e::nats::NatsServer;
use herald_e2e::{config, Broker};
use serde_json::{json, Value};

fn bridge(url: &str, extra: &str) -> String {
    config(
        "",
        &format!("[[bridge.nats]]\nname = \"events\"\nurl = \"{url}\"\nsubjects = [\"events.>\"]\n{extra}\n"),
    )
}

/// Waits until `/readyz` answers `status`; returns its body.
async fn ready(broker: &Broker, status: u16) -> Result<Value> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        let (code, body) = broker.get("/readyz").await?;
        if code == status {
            return Ok(body);
        }
        ensure!(
            tokio::time::Instant::now() < deadline,
            "/readyz stayed {code}: {body}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_messages_reach_websocket_subscribers() -> Result<()> {
    let nats = NatsServer::start()?;
    let broker = Broker::start(&bridge(&nats.url(), "strip_prefix = \"events.\""))?;
    ready(&broker, 200).await?;
    let mut c = broker.client().await?;
    c.subscribe(&["orders.*"]).await?;
    let publisher = nats.client().await?;
    let mut headers = async_nats::HeaderMap::new();
    headers.insert("trace", "abc");
    publisher
        .publish_with_headers("events.orders.eu", headers, r#"{"id":7}"#.into())
        .await?;
    publisher
        .publish("events.orders.us", "plain text".into())
        .await?;
    publisher
        .publish(
            "events.orders.bin",
            bytes::Bytes::from_static(&[0xff, 0x00, 0x10]),
        )
        .await?;
    // Not matched by the subscription: a deeper subject.
    publisher
        .publish("events.orders.eu.created", "{}".into())
        .await?;
    publisher.flush().await?;

    // Three topics, three shards: order is per topic only, so look them up by name.
    let mut by_topic = std::collections::BTreeMap::new();
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
    let nats = NatsServer::start()?;
    let broker = Broker::start(&bridge(
        &nats.url(),
        "strip_prefix = \"events.\"\ntopic_prefix = \"live.\"",
    ))?;
    ready(&broker, 200).await?;
    let mut c = broker.client().await?;
    c.subscribe(&["live.>"]).await?;
    let publisher = nats.client().await?;
    publisher.publish("events.metrics.cpu", "1".into()).await?;
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
    ready(&broker, 200).await?;
    let mut c = broker.client().await?;
    c.subscribe(&["events.>", "local.t"]).await?;

    nats.stop();
    let body = ready(&broker, 503).await?;
    let reasons = body["reasons"].to_string();
    assert!(
        reasons.contains("events"),
        "reasons name the bridge: {body}"
    );
    // Herald keeps serving: local publishing still reaches subscribers.
    broker.publish("local.t", json!("still here")).await?;
    assert_eq!(c.event().await?["data"], "still here");
    assert_eq!(
        broker
            .metric("herald_bridge_connected{bridge=\"events\"}")
            .await?,
        0.0
    );

    nats.restart()?;
    ready(&broker, 200).await?;
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
    let mut c = broker.client().await?;
    c.subscribe(&["x"]).await?;
    broker.publish("x", json!(1)).await?;
    assert_eq!(c.event().await?["data"], 1);
    Ok(())
}

fn cluster_node(url: &str) -> String {
    config(
        "",
        &format!(
            "[cluster]\nbackplane = \"bus\"\nsubject_prefix = \"herald.\"\n\
             [[bridge.nats]]\nname = \"bus\"\nurl = \"{url}\"\nsubjects = [\"herald.>\"]\nstrip_prefix = \"herald.\"\n"
        ),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_sharing_nats_deliver_each_publish_exactly_once_everywhere() -> Result<()> {
    let nats = NatsServer::start()?;
    let nodes = [
        Broker::start(&cluster_node(&nats.url()))?,
        Broker::start(&cluster_node(&nats.url()))?,
        Broker::start(&cluster_node(&nats.url()))?,
    ];
    let mut clients = Vec::new();
    for node in &nodes {
        ready(node, 200).await?;
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
    let broker = Broker::start(&cluster_node(&nats.url()))?;
    ready(&broker, 200).await?;
    let mut c = broker.client().await?;
    c.subscribe(&["chat.*"]).await?;

    nats.stop();
    ready(&broker, 503).await?;
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
    ready(&broker, 200).await?;
    broker.publish("chat.a", json!("back")).await?;
    assert_eq!(c.event().await?["data"], "back");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn header_names_nats_cannot_carry_are_a_400_not_a_crash() -> Result<()> {
    let nats = NatsServer::start()?;
    let broker = Broker::start(&cluster_node(&nats.url()))?;
    ready(&broker, 200).await?;
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
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("herald.toml");
    let bad = "[cluster]\nbackplane = \"bus\"\nsubject_prefix = \"herald.\"\n\
               [[bridge.nats]]\nname = \"bus\"\nsubjects = [\"events.>\"]\n";
    std::fs::write(&path, bad)?;
    let out = std::process::Command::new(herald_e2e::herald_bin())
        .args(["check-config", "--config"])
        .arg(&path)
        .output()?;
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("cluster.backplane") && err.contains("herald.>"),
        "{err}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jetstream_start_gives_the_last_message_per_subject_then_live() -> Result<()> {
    let nats = NatsServer::start()?;
    let client = nats.client().await?;
    let js = async_nats::jetstream::new(client.clone());
    js.create_stream(async_nats::jetstream::stream::Config {
        name: "EVENTS".into(),
        subjects: vec!["events.>".into()],
        ..Default::default()
    })
    .await?;
    // State published before Herald starts.
    for (subject, v) in [("events.a.x", 1), ("events.a.x", 2), ("events.a.y", 1)] {
        js.publish(subject, json!({"v": v}).to_string().into())
            .await?
            .await?;
    }
    let broker = Broker::start(&bridge(
        &nats.url(),
        "strip_prefix = \"events.\"\njetstream = { stream = \"EVENTS\", deliver = \"last_per_subject\" }",
    ))?;
    ready(&broker, 200).await?;
    // Wait until the replayed state reached both topics.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (_, topics) = broker.get("/api/topics").await?;
        let n = topics["topics"]
            .as_array()
            .map_or(0, |t| t.iter().filter(|r| r["seq"] == 1).count());
        if n == 2 {
            break;
        }
        ensure!(
            tokio::time::Instant::now() < deadline,
            "state not replayed: {topics}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut c = broker.client().await?;
    c.request(json!({"op":"subscribe","topics":["a.*"],"last":10}))
        .await?;
    let mut state = std::collections::BTreeMap::new();
    for _ in 0..2 {
        let e = c.event().await?;
        assert_eq!(e["replay"], true);
        state.insert(
            e["topic"].as_str().unwrap_or_default().to_string(),
            e["data"].clone(),
        );
    }
    // The last message of each subject only: a.x is at v2, its v1 was skipped.
    assert_eq!(state["a.x"], json!({"v": 2}));
    assert_eq!(state["a.y"], json!({"v": 1}));
    c.expect_silence(Duration::from_millis(300)).await?;
    // Then live.
    js.publish("events.a.x", json!({"v": 3}).to_string().into())
        .await?
        .await?;
    let live = c.event().await?;
    assert_eq!(
        (live["topic"].as_str(), &live["data"], live["seq"].as_u64()),
        (Some("a.x"), &json!({"v": 3}), Some(2))
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jetstream_start_on_a_missing_stream_is_not_ready_and_says_why() -> Result<()> {
    let nats = NatsServer::start()?;
    let broker = Broker::start(&bridge(&nats.url(), "jetstream = { stream = \"NOPE\" }"))?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (_, body) = broker.get("/readyz").await?;
        if body["reasons"].to_string().contains("NOPE") {
            break;
        }
        ensure!(
            tokio::time::Instant::now() < deadline,
            "reason never named the stream: {body}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(broker.get("/readyz").await?.0, 503);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backplane_publishers_cannot_forge_source_or_key_and_batches_fail_whole() -> Result<()> {
    let nats = NatsServer::start()?;
    let broker = Broker::start(&cluster_node(&nats.url()))?;
    ready(&broker, 200).await?;
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
    let nats = NatsServer::start()?;
    let dead = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let urls = format!("nats://127.0.0.1:{dead}, {}", nats.url());
    let broker = Broker::start(&bridge(&urls, ""))?;
    ready(&broker, 200).await?;
    let mut c = broker.client().await?;
    c.subscribe(&["events.>"]).await?;
    let publisher = nats.client().await?;
    publisher.publish("events.z", "1".into()).await?;
    publisher.flush().await?;
    assert_eq!(c.event().await?["topic"], "events.z");
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
    ready(&good, 200).await?;
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
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        bad.get("/readyz").await?.0,
        503,
        "a refused login is not ready"
    );
    assert!(
        !bad.log_text().contains("wrong"),
        "the password never reaches the logs"
    );

    // Token.
    let nats = NatsServer::start_with(&["--auth", "tok-123"])?;
    let broker = Broker::start(&bridge(&nats.url(), "token = \"tok-123\""))?;
    ready(&broker, 200).await?;
    Ok(())
}
