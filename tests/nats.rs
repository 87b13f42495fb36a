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

    let e = c.event().await?;
    assert_eq!(e["topic"], "orders.eu");
    assert_eq!(e["source"], "nats");
    assert_eq!(e["data"], json!({"id": 7}));
    assert_eq!(e["headers"], json!({"trace": "abc"}));
    assert_eq!(e["seq"], 1);
    let e = c.event().await?;
    assert_eq!(
        (e["topic"].as_str(), &e["data"]),
        (Some("orders.us"), &json!("plain text"))
    );
    let e = c.event().await?;
    assert_eq!(e["topic"], "orders.bin");
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
