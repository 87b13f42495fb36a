//! End-to-end tests of docs/protocol.md, sections 1–4: welcome, subscribe with wildcards,
//! publish, per-topic seq, `last`, `resume`, `reset`, overlapping patterns and the
//! join of replay and live delivery. Real broker process, real WebSocket clients.

use std::time::Duration;

use anyhow::{bail, ensure, Result};
use futures_util::{SinkExt as _, StreamExt as _};
use herald_e2e::{config, Broker, Client, WAIT};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

fn seq(v: &Value) -> u64 {
    v["seq"].as_u64().unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn welcome_describes_the_session() -> Result<()> {
    let broker = Broker::start(&config(
        "node_id = \"node-a\"",
        "[session]\nheartbeat_interval_ms = 1234\nheartbeat_timeout_ms = 567\nmax_message_bytes = 4096\nmax_subscriptions = 9",
    ))?;
    let a = broker.client().await?;
    let b = broker.client().await?;
    let w = &a.welcome;
    assert_eq!(w["type"], "welcome");
    assert_eq!(w["node"], "node-a");
    assert_eq!(w["protocol"], "herald.v1.json");
    assert_eq!(w["delivery"], "best-effort");
    assert_eq!(
        w["heartbeat"],
        json!({"interval_ms": 1234, "timeout_ms": 567})
    );
    assert_eq!(
        w["limits"],
        json!({"max_message_bytes": 4096, "max_subscriptions": 9})
    );
    assert!(w["session"].as_str().is_some_and(|s| !s.is_empty()));
    assert_ne!(
        w["session"], b.welcome["session"],
        "sessions have distinct ids"
    );
    assert_eq!(w["epoch"], b.welcome["epoch"], "one epoch per process");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ws_publish_reaches_subscribers_with_seq_ts_and_source() -> Result<()> {
    let broker = Broker::start(&config("", ""))?;
    let mut sub = broker.client().await?;
    let mut publisher = broker.client().await?;
    let (reply, _) = sub
        .request(json!({"op":"subscribe","topics":["chat.room1"]}))
        .await?;
    assert_eq!(reply["type"], "subscribed");
    assert_eq!(reply["topics"], json!(["chat.room1"]));
    let before = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_millis() as u64;
    for text in ["hi", "there"] {
        let (ok, _) = publisher
            .request(json!({"op":"publish","topic":"chat.room1","data":{"text":text},"key":"k1","headers":{"trace":"t1"}}))
            .await?;
        assert_eq!(ok["type"], "ok", "{ok}");
    }
    let e1 = sub.event().await?;
    let e2 = sub.event().await?;
    assert_eq!(e1["topic"], "chat.room1");
    assert_eq!(e1["source"], "ws");
    assert_eq!(e1["data"], json!({"text":"hi"}));
    assert_eq!(e1["key"], "k1");
    assert_eq!(e1["headers"], json!({"trace":"t1"}));
    assert!(
        e1.get("replay").is_none(),
        "live events carry no replay flag"
    );
    assert_eq!((seq(&e1), seq(&e2)), (1, 2));
    let ts = e1["ts"].as_u64().unwrap_or(0);
    assert!(
        ts >= before && ts < before + 60_000,
        "ts {ts} is the receive time in ms"
    );
    // The publisher is not subscribed and gets nothing but its replies.
    publisher.expect_silence(Duration::from_millis(200)).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wildcards_match_as_documented() -> Result<()> {
    let broker = Broker::start(&config("", ""))?;
    let mut star = broker.client().await?;
    let mut tail = broker.client().await?;
    star.subscribe(&["orders.*"]).await?;
    tail.subscribe(&["orders.>"]).await?;
    for t in ["orders", "orders.eu", "orders.eu.created", "news.eu"] {
        broker.publish(t, json!({"t": t})).await?;
    }
    assert_eq!(star.event().await?["topic"], "orders.eu");
    star.expect_silence(Duration::from_millis(300)).await?;
    // Two topics: order is per topic only.
    let mut topics = [tail.event().await?, tail.event().await?].map(|e| e["topic"].clone());
    topics.sort_by_key(|t| t.to_string());
    assert_eq!(topics, [json!("orders.eu"), json!("orders.eu.created")]);
    tail.expect_silence(Duration::from_millis(300)).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seq_is_per_topic() -> Result<()> {
    let broker = Broker::start(&config("", ""))?;
    let mut c = broker.client().await?;
    c.subscribe(&["s.>"]).await?;
    for t in ["s.a", "s.b", "s.a", "s.a", "s.b"] {
        broker.publish(t, json!(1)).await?;
    }
    let mut got = Vec::new();
    for _ in 0..5 {
        let e = c.event().await?;
        got.push((e["topic"].as_str().unwrap_or("").to_string(), seq(&e)));
    }
    let a: Vec<u64> = got
        .iter()
        .filter(|(t, _)| t == "s.a")
        .map(|(_, s)| *s)
        .collect();
    let b: Vec<u64> = got
        .iter()
        .filter(|(t, _)| t == "s.b")
        .map(|(_, s)| *s)
        .collect();
    assert_eq!(a, vec![1, 2, 3]);
    assert_eq!(b, vec![1, 2]);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn last_replays_history_then_goes_live() -> Result<()> {
    let broker = Broker::start(&config("", ""))?;
    for i in 1..=5 {
        broker.publish("feed.x", json!({"i": i})).await?;
    }
    let mut c = broker.client().await?;
    let (reply, early) = c
        .request(json!({"op":"subscribe","topics":["feed.*"],"last":3}))
        .await?;
    assert!(early.is_empty(), "subscribed comes first: {early:?}");
    assert_eq!(reply["type"], "subscribed");
    for expected in 3..=5 {
        let e = c.event().await?;
        assert_eq!(seq(&e), expected);
        assert_eq!(e["replay"], true);
        assert_eq!(e["data"], json!({"i": expected}));
    }
    broker.publish("feed.x", json!({"i": 6})).await?;
    let live = c.event().await?;
    assert_eq!(seq(&live), 6);
    assert!(live.get("replay").is_none());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_is_bounded_by_size_ttl_and_can_be_off() -> Result<()> {
    let sized = Broker::start(&config("", "[history]\nsize = 2"))?;
    for i in 1..=5 {
        sized.publish("h.a", json!(i)).await?;
    }
    let mut c = sized.client().await?;
    c.request(json!({"op":"subscribe","topics":["h.a"],"last":50}))
        .await?;
    assert_eq!(seq(&c.event().await?), 4);
    assert_eq!(seq(&c.event().await?), 5);
    c.expect_silence(Duration::from_millis(300)).await?;

    let aged = Broker::start(&config("", "[history]\nttl_ms = 300"))?;
    aged.publish("h.b", json!(1)).await?;
    tokio::time::sleep(Duration::from_millis(700)).await;
    let mut c = aged.client().await?;
    c.request(json!({"op":"subscribe","topics":["h.b"],"last":10}))
        .await?;
    c.expect_silence(Duration::from_millis(300)).await?;

    let off = Broker::start(&config("", "[history]\nsize = 0"))?;
    off.publish("h.c", json!(1)).await?;
    let mut c = off.client().await?;
    c.request(json!({"op":"subscribe","topics":["h.c"],"last":10}))
        .await?;
    c.expect_silence(Duration::from_millis(300)).await?;
    off.publish("h.c", json!(2)).await?;
    assert_eq!(seq(&c.event().await?), 2, "seq counts even without history");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_replays_exactly_what_was_missed() -> Result<()> {
    let broker = Broker::start(&config("", ""))?;
    let mut c = broker.client().await?;
    let epoch = c.welcome["epoch"].clone();
    c.subscribe(&["r.*"]).await?;
    for i in 1..=3 {
        broker.publish("r.a", json!(i)).await?;
    }
    let mut last = 0;
    for _ in 0..3 {
        last = seq(&c.event().await?);
    }
    assert_eq!(last, 3);
    drop(c);
    for i in 4..=6 {
        broker.publish("r.a", json!(i)).await?;
    }
    broker.publish("r.b", json!("b1")).await?;
    let mut c = broker.client().await?;
    let (reply, _) = c
        .request(json!({"op":"subscribe","topics":["r.*"],"resume":{"epoch":epoch,"topics":{"r.a":last}}}))
        .await?;
    assert_eq!(reply["type"], "subscribed");
    for expected in 4..=6 {
        let e = c.event().await?;
        assert_eq!(
            (e["topic"].as_str(), seq(&e), &e["replay"]),
            (Some("r.a"), expected, &json!(true))
        );
    }
    // r.b was not listed in resume: live only, no replay.
    c.expect_silence(Duration::from_millis(300)).await?;
    broker.publish("r.a", json!(7)).await?;
    let live = c.event().await?;
    assert_eq!(seq(&live), 7);
    assert!(live.get("replay").is_none());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_that_cannot_be_honoured_gets_reset() -> Result<()> {
    let broker = Broker::start(&config("", "[history]\nsize = 2"))?;
    for i in 1..=5 {
        broker.publish("x.a", json!(i)).await?;
    }
    let mut c = broker.client().await?;
    let epoch = c.welcome["epoch"].clone();
    // Events 2..=3 are gone from a history of 2: reset, not a partial replay.
    c.request(
        json!({"op":"subscribe","topics":["x.a"],"resume":{"epoch":epoch,"topics":{"x.a":1}}}),
    )
    .await?;
    assert_eq!(
        c.recv().await?,
        json!({"type":"reset","topic":"x.a","reason":"history_expired"})
    );
    broker.publish("x.a", json!(6)).await?;
    assert_eq!(seq(&c.event().await?), 6);

    // A position ahead of the topic (e.g. from a forgotten topic): reset.
    let mut c = broker.client().await?;
    c.request(json!({"op":"subscribe","topics":["x.*"],"resume":{"epoch":epoch,"topics":{"x.a":99,"x.never":4}}})).await?;
    let mut resets = [c.recv().await?, c.recv().await?];
    resets.sort_by_key(|v| v["topic"].as_str().unwrap_or("").to_string());
    assert_eq!(
        resets[0],
        json!({"type":"reset","topic":"x.a","reason":"history_expired"})
    );
    assert_eq!(
        resets[1],
        json!({"type":"reset","topic":"x.never","reason":"history_expired"})
    );

    // Another epoch (another process's history): epoch_changed, right after subscribed.
    let mut c = broker.client().await?;
    let (reply, _) = c
        .request(json!({"op":"subscribe","topics":["x.a"],"resume":{"epoch":"01OTHER","topics":{"x.a":5}}}))
        .await?;
    assert_eq!(reply["type"], "subscribed");
    assert_eq!(
        c.recv().await?,
        json!({"type":"reset","topic":"x.a","reason":"epoch_changed"})
    );
    c.expect_silence(Duration::from_millis(200)).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_and_live_join_without_gap_or_duplicate_under_load() -> Result<()> {
    let broker = Broker::start(&config("", "[history]\nsize = 1000"))?;
    let publisher = tokio::spawn({
        let url = broker.http();
        async move {
            let client = reqwest::Client::new();
            for i in 0..400 {
                let body = json!({"topic":"join.t","data":i}).to_string();
                let res = client
                    .post(format!("{url}/api/publish"))
                    .body(body)
                    .send()
                    .await?;
                ensure!(
                    res.status().as_u16() == 202,
                    "publish {i}: {}",
                    res.status()
                );
            }
            Ok::<_, anyhow::Error>(())
        }
    });
    // Subscribe while events are flowing.
    tokio::time::sleep(Duration::from_millis(50)).await;
    let mut c = broker.client().await?;
    c.request(json!({"op":"subscribe","topics":["join.*"],"last":1000}))
        .await?;
    publisher.await??;
    let mut seqs = Vec::new();
    while seqs.last() != Some(&400) {
        seqs.push(seq(&c.event().await?));
    }
    let expected: Vec<u64> = (seqs[0]..=400).collect();
    assert_eq!(seqs, expected, "replay then live, consecutive");
    assert_eq!(seqs[0], 1, "history of 1000 held everything");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overlapping_and_repeated_subscriptions_deliver_once() -> Result<()> {
    let broker = Broker::start(&config("", ""))?;
    let mut c = broker.client().await?;
    c.subscribe(&["o.*", "o.b", ">"]).await?;
    c.subscribe(&["o.*"]).await?;
    broker.publish("o.b", json!(1)).await?;
    broker.publish("o.b", json!(2)).await?;
    assert_eq!(seq(&c.event().await?), 1);
    assert_eq!(seq(&c.event().await?), 2);
    c.expect_silence(Duration::from_millis(300)).await?;
    // Dropping two of three reasons keeps delivery; dropping the last stops it.
    let (r, _) = c
        .request(json!({"op":"unsubscribe","topics":["o.*","o.b"]}))
        .await?;
    assert_eq!(
        r,
        json!({"type":"unsubscribed","id":r["id"],"topics":["o.*","o.b"]})
    );
    broker.publish("o.b", json!(3)).await?;
    assert_eq!(seq(&c.event().await?), 3);
    c.request(json!({"op":"unsubscribe","topics":[">"]}))
        .await?;
    broker.publish("o.b", json!(4)).await?;
    c.expect_silence(Duration::from_millis(300)).await?;
    // A pattern subscribed before a topic exists applies to the topic once created,
    // also through a second pattern (one delivery).
    c.subscribe(&["new.*", "new.>"]).await?;
    broker.publish("new.topic", json!(1)).await?;
    assert_eq!(c.event().await?["topic"], "new.topic");
    c.expect_silence(Duration::from_millis(300)).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribe_is_all_or_nothing() -> Result<()> {
    let broker = Broker::start(&config("", ""))?;
    let mut c = broker.client().await?;
    let (r, _) = c
        .request(json!({"op":"subscribe","topics":["good.topic","bad..topic"]}))
        .await?;
    assert_eq!(r["type"], "error");
    assert_eq!(r["code"], "invalid_topic");
    assert!(
        r["message"]
            .as_str()
            .is_some_and(|m| m.contains("bad..topic")),
        "{r}"
    );
    broker.publish("good.topic", json!(1)).await?;
    c.expect_silence(Duration::from_millis(300)).await?;
    let (r, _) = c
        .request(json!({"op":"subscribe","topics":["a.>.b"]}))
        .await?;
    assert_eq!(r["code"], "invalid_topic");
    let (r, _) = c
        .request(
            json!({"op":"subscribe","topics":["a"],"last":1,"resume":{"epoch":"e","topics":{}}}),
        )
        .await?;
    assert_eq!(r["code"], "bad_request");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ping_auth_and_pong_ops() -> Result<()> {
    let broker = Broker::start(&config("", ""))?;
    let mut c = broker.client().await?;
    c.send(json!({"op":"ping","id":"abc"})).await?;
    assert_eq!(c.recv().await?, json!({"type":"pong","id":"abc"}));
    c.send(json!({"op":"ping"})).await?;
    assert_eq!(c.recv().await?, json!({"type":"pong"}));
    c.send(json!({"op":"pong"})).await?;
    c.expect_silence(Duration::from_millis(200)).await?;
    // Auth is off: an `auth` op is accepted and changes nothing.
    c.send(json!({"op":"auth","id":5,"token":"whatever"}))
        .await?;
    assert_eq!(c.recv().await?, json!({"type":"ok","id":5}));
    Ok(())
}

/// Every WebSocket Ping gets its own Pong, in order, even when several arrive in one
/// read (Autobahn case 2.10). Herald used to keep only the latest unanswered Ping.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_websocket_ping_gets_its_own_pong() -> Result<()> {
    let broker = Broker::start(&config("", ""))?;
    let mut c = broker.client().await?;
    let payloads: Vec<String> = (0..10).map(|i| format!("payload-{i}")).collect();
    for p in &payloads {
        c.ws.feed(Message::Ping(p.clone().into_bytes().into()))
            .await?;
    }
    c.ws.flush().await?;
    let mut pongs = Vec::new();
    while pongs.len() < payloads.len() {
        match tokio::time::timeout(WAIT, c.ws.next()).await {
            Ok(Some(Ok(Message::Pong(p)))) => pongs.push(String::from_utf8(p.to_vec())?),
            Ok(Some(Ok(Message::Text(t)))) if t.as_str() == r#"{"type":"ping"}"# => {}
            other => bail!("after pongs {pongs:?}: {other:?}"),
        }
    }
    ensure!(pongs == payloads, "pongs {pongs:?}");
    let (pong, _) = c.request(json!({"op": "ping"})).await?;
    ensure!(pong["type"] == "pong", "the session still serves: {pong}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forgotten_topic_starts_again_at_seq_one() -> Result<()> {
    let broker = Broker::start(&config("", "[history]\nttl_ms = 200"))?;
    broker.publish("gone.t", json!(1)).await?;
    broker.publish("gone.t", json!(2)).await?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (_, topics) = broker.get("/api/topics").await?;
        let listed = topics["topics"]
            .as_array()
            .is_some_and(|t| t.iter().any(|r| r["topic"] == "gone.t"));
        if !listed {
            break;
        }
        ensure!(
            tokio::time::Instant::now() < deadline,
            "topic never forgotten: {topics}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut c = broker.client().await?;
    c.subscribe(&["gone.t"]).await?;
    broker.publish("gone.t", json!(3)).await?;
    assert_eq!(seq(&c.event().await?), 1);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_subscribers_across_shards_each_get_every_event() -> Result<()> {
    let broker = Broker::start(&config("", ""))?;
    let mut clients = Vec::new();
    for i in 0..20 {
        let mut c = broker.client().await?;
        c.subscribe(&[if i % 2 == 0 { "fan.*" } else { "fan.t" }])
            .await?;
        clients.push(c);
    }
    let batch: Vec<Value> = (0..50).map(|i| json!({"topic":"fan.t","data":i})).collect();
    let (status, body) = broker
        .post_raw("/api/publish", Value::Array(batch).to_string())
        .await?;
    assert_eq!((status, body), (202, json!({"accepted": 50})));
    for c in &mut clients {
        for expected in 1..=50 {
            let e = c.event().await?;
            assert_eq!(
                (seq(&e), e["data"].as_u64()),
                (expected, Some(expected - 1))
            );
        }
    }
    Client::connect(&broker.ws_url()).await?; // still accepting
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overlapping_patterns_answer_a_resume_position_once() -> Result<()> {
    let broker = Broker::start(&config("", ""))?;
    let mut c = broker.client().await?;
    let epoch = c.welcome["epoch"].clone();
    c.request(json!({"op":"subscribe","topics":["q.*","q.>"],"resume":{"epoch":epoch,"topics":{"q.x":3}}}))
        .await?;
    assert_eq!(
        c.recv().await?,
        json!({"type":"reset","topic":"q.x","reason":"history_expired"})
    );
    c.expect_silence(Duration::from_millis(300)).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_into_a_reborn_topic_is_reset_not_misreplayed() -> Result<()> {
    let broker = Broker::start(&config("", "[history]\nttl_ms = 200"))?;
    let mut c = broker.client().await?;
    let epoch = c.welcome["epoch"].clone();
    c.subscribe(&["life.t"]).await?;
    for i in 1..=3 {
        broker.publish("life.t", json!(i)).await?;
    }
    for _ in 0..3 {
        c.event().await?;
    }
    drop(c);
    // Forgotten once its history expires and nobody is subscribed...
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (_, topics) = broker.get("/api/topics").await?;
        if !topics["topics"]
            .as_array()
            .is_some_and(|t| t.iter().any(|r| r["topic"] == "life.t"))
        {
            break;
        }
        ensure!(tokio::time::Instant::now() < deadline, "never forgotten");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // ...and back, with seqs from 1 again, past the old client's position 3.
    let mut other = broker.client().await?;
    other.subscribe(&["life.t"]).await?;
    for i in 1..=5 {
        broker.publish("life.t", json!(i)).await?;
    }
    for _ in 0..5 {
        other.event().await?;
    }
    // Position 3 of the first life must not be taken for position 3 of this one.
    let mut c = broker.client().await?;
    c.request(json!({"op":"subscribe","topics":["life.t"],"resume":{"epoch":epoch,"topics":{"life.t":3}}}))
        .await?;
    assert_eq!(
        c.recv().await?,
        json!({"type":"reset","topic":"life.t","reason":"history_expired"})
    );
    c.expect_silence(Duration::from_millis(200)).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replies_queued_before_a_close_are_delivered_first() -> Result<()> {
    let broker = Broker::start(&config("", ""))?;
    let mut c = broker.client().await?;
    c.send(json!({"op":"ping","id":"before"})).await?;
    futures_util::SinkExt::send(
        &mut c.ws,
        tokio_tungstenite::tungstenite::Message::Binary(vec![1u8, 2, 3].into()),
    )
    .await?;
    assert_eq!(c.recv().await?, json!({"type":"pong","id":"before"}));
    assert_eq!(c.closed(Duration::from_secs(5)).await?.code, Some(1003));
    Ok(())
}
