//! Cluster history on JetStream (`cluster.history = "jetstream"`,
//! docs/protocol.md#cluster-history), end to end: a real nats-server with JetStream
//! and three real Herald processes sharing it. Positions are the stream's, the same
//! on every node: a client resumes on any node, after any restart, with exactly what
//! it missed, and `prev` tells it of every gap and of nothing else.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{ensure, Context as _, Result};
use herald_e2e::nats::NatsServer;
use herald_e2e::sse::SseStream;
use herald_e2e::{config, Broker, Client};
use serde_json::{json, Value};

/// A node whose backplane (`bus`, subjects `herald.>`) keeps cluster history in
/// stream `HIST`, `size` events per topic. `extra` is appended (another bridge).
fn node_config(url: &str, size: usize, extra: &str) -> String {
    config(
        "",
        &format!(
            "[history]\nsize = {size}\n\
             [cluster]\nbackplane = \"bus\"\nsubject_prefix = \"herald.\"\nhistory = \"jetstream\"\nhistory_stream = \"HIST\"\n\
             [[bridge.nats]]\nname = \"bus\"\nurl = \"{url}\"\nsubjects = [\"herald.>\"]\nstrip_prefix = \"herald.\"\n{extra}"
        ),
    )
}

/// Starts `n` nodes and waits until each is ready (its stream set up).
async fn nodes(config: &str, n: usize) -> Result<Vec<Broker>> {
    let mut nodes = Vec::new();
    for _ in 0..n {
        nodes.push(Broker::start(config)?);
    }
    for node in &nodes {
        node.wait_readyz(200).await?;
    }
    Ok(nodes)
}

/// Publishes `n` events `{"n": first..}` to `topic` through `node` over HTTP.
async fn publish_n(node: &Broker, topic: &str, first: u64, n: u64) -> Result<()> {
    for i in first..first + n {
        node.publish(topic, json!({ "n": i })).await?;
    }
    Ok(())
}

/// Subscribes with `extra` fields (`last`, `resume`); returns the client and what
/// came before a short silence: the replays and resets of the subscribe.
async fn subscribe(node: &Broker, topics: &[&str], extra: Value) -> Result<(Client, Vec<Value>)> {
    let mut c = node.client().await?;
    let mut op = json!({"op":"subscribe","topics":topics});
    if let (Some(op), Some(extra)) = (op.as_object_mut(), extra.as_object()) {
        op.extend(extra.clone());
    }
    let (reply, mut early) = c.request(op).await?;
    ensure!(reply["type"] == "subscribed", "{reply}");
    while let Ok(v) = tokio::time::timeout(Duration::from_millis(500), c.recv()).await {
        early.push(v?);
    }
    Ok((c, early))
}

/// Per topic, `(seq, prev)` of each event received, in order.
type Chains = BTreeMap<String, Vec<(u64, Option<u64>)>>;

/// `(n, seq, prev)` of each event in `events`.
fn chain(events: &[Value]) -> Vec<(u64, u64, Option<u64>)> {
    events
        .iter()
        .map(|e| {
            (
                e["data"]["n"].as_u64().unwrap_or(u64::MAX),
                e["seq"].as_u64().unwrap_or(0),
                e["prev"].as_u64(),
            )
        })
        .collect()
}

/// The `n` of each event's `{"n": …}` data, in order.
fn ns(events: &[Value]) -> Vec<u64> {
    chain(events).iter().map(|e| e.0).collect()
}

/// The next `n` events.
async fn events(c: &mut Client, n: usize) -> Result<Vec<Value>> {
    let mut out = Vec::new();
    for _ in 0..n {
        out.push(c.event().await?);
    }
    Ok(out)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_resumes_on_another_node_with_exactly_what_it_missed() -> Result<()> {
    let nats = NatsServer::start()?;
    let nodes = nodes(&node_config(&nats.url(), 100, ""), 3).await?;
    let mut epochs = Vec::new();
    for node in &nodes {
        epochs.push(node.client().await?.welcome["epoch"].clone());
    }
    ensure!(
        epochs.iter().all(|e| *e == epochs[0])
            && epochs[0].as_str().is_some_and(|e| e.starts_with("HIST-")),
        "every node gives the stream's epoch: {epochs:?}"
    );
    let (mut c, early) = subscribe(&nodes[0], &["chat.*"], json!({})).await?;
    ensure!(early.is_empty(), "{early:?}");
    publish_n(&nodes[0], "chat.a", 1, 2).await?;
    let seen = events(&mut c, 2).await?;
    let seen_chain = chain(&seen);
    ensure!(
        seen_chain[0].2.is_none(),
        "the topic's first event has no prev: {seen:?}"
    );
    ensure!(seen_chain[1].2 == Some(seen_chain[0].1), "{seen:?}");
    let last = seen_chain[1].1;
    drop(c);

    // Missed: through nodes 2 and 3, interleaved with another topic. (A watcher on
    // node 3 says when it has read them all, so that the resume below finds them in
    // its ring: a node that lags would send the rest live, which is right but not
    // what this test looks at.)
    let (mut watcher, _) = subscribe(&nodes[2], &["chat.a"], json!({})).await?;
    for i in 3..9 {
        let node = &nodes[1 + (i as usize % 2)];
        node.publish("chat.a", json!({ "n": i })).await?;
        node.publish("chat.b", json!({ "n": 100 + i })).await?;
    }
    events(&mut watcher, 6).await?;
    let resume = json!({"resume":{"epoch":epochs[0],"topics":{"chat.a":last}}});
    let (mut c, replay) = subscribe(&nodes[2], &["chat.a"], resume).await?;
    let got = chain(&replay);
    ensure!(
        ns(&replay) == (3..9).collect::<Vec<_>>(),
        "exactly the missed events, in order: {replay:?}"
    );
    ensure!(replay.iter().all(|e| e["replay"] == true), "{replay:?}");
    let mut prev = last;
    for (_, seq, p) in &got {
        ensure!(*p == Some(prev), "a chain without a gap: {got:?}");
        prev = *seq;
    }
    // Then live, joined without a gap or a duplicate.
    nodes[1].publish("chat.a", json!({"n": 9})).await?;
    let live = c.event().await?;
    ensure!(
        live["data"]["n"] == 9 && live["prev"] == json!(prev) && live.get("replay").is_none(),
        "{live}"
    );
    c.expect_silence(Duration::from_millis(300)).await?;
    Ok(())
}

/// An event stream of `feed.*` on `node`, resuming from `id` when given, past its
/// `welcome` and `subscribed`.
async fn open(node: &Broker, id: Option<&str>) -> Result<SseStream> {
    let url = format!("{}/sse?topics=feed.*", node.http());
    let headers: Vec<(&str, &str)> = id.map(|id| ("Last-Event-ID", id)).into_iter().collect();
    let mut s = SseStream::open(&url, &headers).await?.stream()?;
    ensure!(s.next().await?["type"] == "welcome");
    ensure!(s.next().await?["type"] == "subscribed");
    Ok(s)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_stream_resumes_on_another_node_with_its_last_event_id() -> Result<()> {
    let nats = NatsServer::start()?;
    let nodes = nodes(&node_config(&nats.url(), 100, ""), 2).await?;
    let mut first = open(&nodes[0], None).await?;
    publish_n(&nodes[0], "feed.a", 1, 2).await?;
    let seen = [first.event().await?, first.event().await?];
    let id = first.last_id.clone().context("events carry an id")?;
    drop(first);
    // Missed meanwhile; node 2's watcher says when it has read them.
    let (mut watcher, _) = subscribe(&nodes[1], &["feed.a"], json!({})).await?;
    publish_n(&nodes[0], "feed.a", 3, 2).await?;
    events(&mut watcher, 2).await?;
    let mut second = open(&nodes[1], Some(&id)).await?;
    let replay = [second.event().await?, second.event().await?];
    ensure!(
        chain(&replay)
            .iter()
            .map(|e| (e.0, e.2))
            .collect::<Vec<_>>()
            == [(3, seen[1]["seq"].as_u64()), (4, replay[0]["seq"].as_u64())],
        "exactly the missed events, chained to the last one seen: {replay:?}"
    );
    ensure!(replay.iter().all(|e| e["replay"] == true), "{replay:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn positions_outlive_a_restart_of_every_node() -> Result<()> {
    let nats = NatsServer::start()?;
    let config = node_config(&nats.url(), 100, "");
    let mut first = nodes(&config, 3).await?;
    let (mut c, _) = subscribe(&first[0], &["room.*"], json!({})).await?;
    publish_n(&first[1], "room.x", 1, 5).await?;
    let seen = events(&mut c, 5).await?;
    let epoch = c.welcome["epoch"].clone();
    let at = seen[1]["seq"].clone();
    drop(c);
    for node in &mut first {
        node.terminate(Duration::from_secs(10))?;
    }
    let second = nodes(&config, 3).await?;
    ensure!(
        second[2].client().await?.welcome["epoch"] == epoch,
        "the epoch is the stream's, not the processes'"
    );
    publish_n(&second[0], "room.x", 6, 2).await?;
    // Resumed on a restarted node: read back from the stream.
    let resume = json!({"resume":{"epoch":epoch,"topics":{"room.x":at}}});
    let (mut c, replay) = subscribe(&second[2], &["room.*"], resume).await?;
    let got = ns(&replay);
    ensure!(got == [3, 4, 5, 6, 7], "{replay:?}");
    ensure!(replay[0]["prev"] == at, "{replay:?}");
    // The same bytes as the live events were (ts and all), but flagged replay.
    for (replayed, live) in replay.iter().zip(&seen[2..]) {
        let mut live = live.clone();
        live["replay"] = json!(true);
        ensure!(*replayed == live, "{replayed} vs {live}");
    }
    second[1].publish("room.x", json!({"n": 8})).await?;
    ensure!(c.event().await?["data"]["n"] == 8);
    c.expect_silence(Duration::from_millis(300)).await?;
    // `last` works the same from the stream: this node's ring holds less.
    let (_, last) = subscribe(&second[1], &["room.x"], json!({"last": 4})).await?;
    let got = chain(&last);
    ensure!(ns(&last) == [5, 6, 7, 8], "{last:?}");
    // The oldest may be what the node read at start (the topic's last event then),
    // whose `prev` it never learnt; every later one chains.
    ensure!(
        got[0].2.is_none() || got[0].2 == seen[3]["seq"].as_u64(),
        "{last:?}"
    );
    for pair in got.windows(2) {
        ensure!(pair[1].2 == Some(pair[0].1), "{last:?}");
    }
    Ok(())
}

/// Three nats-servers forming one JetStream cluster (`n0`…`n2`), once their
/// JetStream can place a stream of three replicas.
async fn nats_cluster() -> Result<Vec<NatsServer>> {
    let free = || -> Result<u16> {
        Ok(std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port())
    };
    let ports = [free()?, free()?, free()?];
    let routes: Vec<String> = ports
        .iter()
        .map(|p| format!("nats://127.0.0.1:{p}"))
        .collect();
    let routes = routes.join(",");
    let mut servers = Vec::new();
    for (i, port) in ports.iter().enumerate() {
        let (name, listen) = (format!("n{i}"), format!("nats://127.0.0.1:{port}"));
        servers.push(NatsServer::start_with(&[
            "--server_name",
            &name,
            "--cluster_name",
            "hist",
            "--cluster",
            &listen,
            "--routes",
            &routes,
        ])?);
    }
    let js = async_nats::jetstream::new(servers[0].client().await?);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let probe = async_nats::jetstream::stream::Config {
        name: "PROBE".into(),
        subjects: vec!["probe".into()],
        num_replicas: 3,
        ..Default::default()
    };
    while let Err(e) = js.create_stream(probe.clone()).await {
        ensure!(
            tokio::time::Instant::now() < deadline,
            "no JetStream cluster: {e}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    js.delete_stream("PROBE").await?;
    Ok(servers)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_three_replicas_history_survives_the_loss_of_the_streams_leader() -> Result<()> {
    let mut servers = nats_cluster().await?;
    let urls: Vec<String> = servers.iter().map(NatsServer::url).collect();
    let config = node_config(&urls.join(","), 100, "").replace(
        "history_stream = \"HIST\"",
        "history_stream = \"HIST\"\nreplicas = 3",
    );
    let nodes = nodes(&config, 2).await?;
    let js = async_nats::jetstream::new(servers[0].client().await?);
    let info = js.get_stream("HIST").await?.info().await?.clone();
    ensure!(info.config.num_replicas == 3, "{:?}", info.config);
    let leader = info
        .cluster
        .and_then(|c| c.leader)
        .context("the stream has a leader")?;
    let (mut c, _) = subscribe(&nodes[0], &["ha"], json!({})).await?;
    publish_n(&nodes[1], "ha", 1, 2).await?;
    let seen = events(&mut c, 2).await?;
    let epoch = c.welcome["epoch"].clone();
    drop(c);
    // The stream's leader goes away: the other two replicas elect one and go on.
    let at: usize = leader.trim_start_matches('n').parse()?;
    servers[at].stop();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let mut n = 3;
    while n < 6 {
        match nodes[1].publish("ha", json!({ "n": n })).await {
            Ok(()) => n += 1,
            Err(e) => {
                ensure!(
                    tokio::time::Instant::now() < deadline,
                    "publishing never came back: {e}"
                );
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
    let resume = json!({"resume":{"epoch":epoch,"topics":{"ha":seen[1]["seq"]}}});
    // Node 0's consumer may stall (found within 15 s) and its replacement may go
    // unanswered a few times (nats-server 2.9 places some on the dead server; each
    // such attempt is given up after 5 s): a minute leaves room for that.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let (_, got) = subscribe(&nodes[0], &["ha"], resume.clone()).await?;
        if ns(&got) == [3, 4, 5] {
            break;
        }
        // Node 0 may still be catching up after its own connection moved.
        ensure!(
            tokio::time::Instant::now() < deadline,
            "{got:?}; node 0 logged:\n{}\nthe NATS servers logged:\n{}",
            nodes[0].log_text(),
            servers
                .iter()
                .map(NatsServer::log)
                .collect::<Vec<_>>()
                .join("\n")
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_position_the_stream_dropped_or_another_stream_gets_a_reset() -> Result<()> {
    let nats = NatsServer::start()?;
    // Three events per topic in the stream (and in each ring).
    let nodes = nodes(&node_config(&nats.url(), 3, ""), 2).await?;
    let (mut c, _) = subscribe(&nodes[0], &["k"], json!({})).await?;
    publish_n(&nodes[0], "k", 1, 6).await?;
    let seen = events(&mut c, 6).await?;
    let epoch = c.welcome["epoch"].clone();
    for (node, position, want) in [
        // Still in the stream: the events after it.
        (&nodes[1], &seen[3]["seq"], Some(vec![5, 6])),
        // Dropped from the stream (it keeps 3): what followed is unknown.
        (&nodes[1], &seen[1]["seq"], None),
        (&nodes[0], &seen[0]["seq"], None),
    ] {
        let resume = json!({"resume":{"epoch":epoch,"topics":{"k":position}}});
        let (_, got) = subscribe(node, &["k"], resume).await?;
        match want {
            Some(want) => ensure!(ns(&got) == want, "{got:?}"),
            None => ensure!(
                got == [json!({"type":"reset","topic":"k","reason":"history_expired"})],
                "{got:?}"
            ),
        }
    }
    let resume = json!({"resume":{"epoch":"HIST-0","topics":{"k":seen[5]["seq"]}}});
    let (_, got) = subscribe(&nodes[1], &["k"], resume).await?;
    ensure!(
        got == [json!({"type":"reset","topic":"k","reason":"epoch_changed"})],
        "{got:?}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prev_shows_every_gap_and_no_other_with_publishers_on_every_node() -> Result<()> {
    let nats = NatsServer::start()?;
    let nodes = nodes(&node_config(&nats.url(), 100, ""), 3).await?;
    let mut watchers = Vec::new();
    for node in &nodes {
        watchers.push(subscribe(node, &["load.*"], json!({})).await?.0);
    }
    // One publisher per node, at once, over three topics.
    const EACH: u64 = 60;
    let publishers = nodes.iter().enumerate().map(|(p, node)| async move {
        for i in 0..EACH {
            let topic = format!("load.t{}", i % 3);
            node.publish(&topic, json!({ "n": p as u64 * 1000 + i }))
                .await?;
        }
        Ok::<_, anyhow::Error>(())
    });
    for done in futures_util::future::join_all(publishers).await {
        done?;
    }
    let mut chains: Vec<Chains> = Vec::new();
    for (i, w) in watchers.iter_mut().enumerate() {
        let mut per_topic = Chains::new();
        for e in events(w, 3 * EACH as usize)
            .await
            .with_context(|| format!("node {i}"))?
        {
            let topic = e["topic"].as_str().unwrap_or_default().to_owned();
            per_topic
                .entry(topic)
                .or_default()
                .push((e["seq"].as_u64().unwrap_or(0), e["prev"].as_u64()));
        }
        w.expect_silence(Duration::from_millis(300)).await?;
        // No false gap: every event's prev is the event before it of its topic.
        for (topic, events) in &per_topic {
            ensure!(events[0].1.is_none(), "node {i} {topic}: {events:?}");
            for pair in events.windows(2) {
                ensure!(
                    pair[1].1 == Some(pair[0].0),
                    "node {i} {topic}: false gap at {pair:?}"
                );
            }
        }
        chains.push(per_topic);
    }
    ensure!(
        chains.iter().all(|c| *c == chains[0]),
        "every node gives the same positions and prevs"
    );
    // No missed gap: a client that was away sees it at the first event it gets.
    let (mut away, _) = subscribe(&nodes[0], &["load.t0"], json!({})).await?;
    nodes[1].publish("load.t0", json!({"n": 1})).await?;
    let before = away.event().await?;
    drop(away);
    nodes[2].publish("load.t0", json!({"n": 2})).await?;
    // Node 1 has read it (its watcher got it) before the client comes back there.
    while watchers[1].event().await?["data"]["n"] != 2 {}
    let (mut back, _) = subscribe(&nodes[1], &["load.t0"], json!({})).await?;
    nodes[0].publish("load.t0", json!({"n": 3})).await?;
    let after = back.event().await?;
    ensure!(
        after["prev"].is_u64() && after["prev"] != before["seq"],
        "the missed event shows: {before} then {after}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_starting_node_lets_sessions_in_once_it_has_caught_up_and_never_replays_the_past_live(
) -> Result<()> {
    let nats = NatsServer::start()?;
    let config = node_config(&nats.url(), 100, "");
    let first = nodes(&config, 1).await?;
    for t in 0..50 {
        first[0]
            .publish(&format!("past.t{t}"), json!({ "n": t }))
            .await?;
    }
    let late = Broker::start(&config)?;
    // Until it has read the stream's last event of every topic, it says so.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    let mut c = loop {
        match late.client().await {
            Ok(c) => break c,
            Err(_) => {
                ensure!(
                    tokio::time::Instant::now() < deadline,
                    "{}",
                    late.log_text()
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };
    let (reply, early) = c
        .request(json!({"op":"subscribe","topics":["past.*"]}))
        .await?;
    ensure!(
        reply["type"] == "subscribed" && early.is_empty(),
        "{reply} {early:?}"
    );
    c.expect_silence(Duration::from_millis(500)).await?;
    // What it read is history: `last` has it, from the ring.
    let (_, last) = subscribe(&late, &["past.t7"], json!({"last": 1})).await?;
    ensure!(ns(&last) == [7], "{last:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http_batch_is_stored_in_order_and_answered_once_stored() -> Result<()> {
    let nats = NatsServer::start()?;
    let nodes = nodes(&node_config(&nats.url(), 1000, ""), 2).await?;
    let (mut c, _) = subscribe(&nodes[1], &["batch"], json!({})).await?;
    let batch: Vec<Value> = (0..300)
        .map(|n| json!({"topic":"batch","data":{"n":n}}))
        .collect();
    let (status, body) = nodes[0]
        .post_raw("/api/publish", Value::Array(batch).to_string())
        .await?;
    ensure!(
        (status, &body) == (202, &json!({"accepted": 300})),
        "{status} {body}"
    );
    // Answered once stored: the stream holds them all already.
    let js = async_nats::jetstream::new(nats.client().await?);
    let stored = js.get_stream("HIST").await?.info().await?.state.messages;
    ensure!(stored == 300, "{stored} stored");
    let got = chain(&events(&mut c, 300).await?);
    ensure!(got.iter().map(|e| e.0).eq(0..300), "in order");
    for pair in got.windows(2) {
        ensure!(pair[1].2 == Some(pair[0].1), "{pair:?}");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_recreated_under_a_running_node_stops_it_taking_sessions() -> Result<()> {
    let nats = NatsServer::start()?;
    let nodes = nodes(&node_config(&nats.url(), 10, ""), 1).await?;
    nodes[0].publish("r", json!(1)).await?;
    let js = async_nats::jetstream::new(nats.client().await?);
    let config = js.get_stream("HIST").await?.info().await?.config.clone();
    js.delete_stream("HIST").await?;
    js.create_stream(config).await?;
    let reason = nodes[0].wait_reason("recreated").await?;
    ensure!(reason.contains("restart the node"), "{reason}");
    let status = herald_e2e::upgrade_status(nodes[0].ws_url().as_str()).await?;
    ensure!(status == 503, "upgrade answered {status}");
    ensure!(
        nodes[0].log_text().contains("deleted and created again"),
        "{}",
        nodes[0].log_text()
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bridged_events_are_marked_local_and_resume_skips_them() -> Result<()> {
    let nats = NatsServer::start()?;
    let other = format!(
        "[[bridge.nats]]\nname = \"feed\"\nurl = \"{}\"\nsubjects = [\"feed.>\"]\n",
        nats.url()
    );
    let nodes = nodes(&node_config(&nats.url(), 100, &other), 1).await?;
    let (mut c, _) = subscribe(&nodes[0], &["feed.*"], json!({})).await?;
    let client = nats.client().await?;
    for i in 1..=2 {
        client
            .publish("feed.a", json!({ "n": i }).to_string().into())
            .await?;
    }
    client.flush().await?;
    let got = events(&mut c, 2).await?;
    ensure!(
        got.iter()
            .all(|e| e["local"] == true && e.get("prev").is_none()),
        "{got:?}"
    );
    ensure!(
        got[0]["seq"] == 1 && got[1]["seq"] == 2,
        "node-local seqs: {got:?}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_jetstream_the_node_says_so_and_lets_no_session_in() -> Result<()> {
    let nats = NatsServer::start_with_config("")?;
    let node = Broker::start(&node_config(&nats.url(), 100, ""))?;
    let reason = node.wait_reason("JetStream is not available").await?;
    ensure!(reason.starts_with("history stream HIST: "), "{reason}");
    let status = herald_e2e::upgrade_status(node.ws_url().as_str()).await?;
    ensure!(status == 503, "upgrade answered {status}");
    Ok(())
}

#[test]
fn check_config_asks_the_backplanes_nats_for_jetstream() -> Result<()> {
    let with = NatsServer::start()?;
    let out = herald_e2e::check_config(&node_config(&with.url(), 10, ""))?;
    ensure!(out.code == Some(0), "{out:?}");
    ensure!(
        out.stderr.contains(
            "cluster history: JetStream is available; the first node to start creates stream HIST"
        ),
        "{out:?}"
    );
    let without = NatsServer::start_with_config("")?;
    let err = herald_e2e::config_error(&node_config(&without.url(), 10, ""))?;
    ensure!(
        err.contains("cluster.history") && err.contains("needs JetStream"),
        "{err}"
    );
    // A server that cannot be reached from where the check runs is a note only.
    let mut gone = NatsServer::start()?;
    let url = gone.url();
    gone.stop();
    let out = herald_e2e::check_config(&node_config(&url, 10, ""))?;
    ensure!(
        out.code == Some(0) && out.stderr.contains("could not check the backplane's NATS"),
        "{out:?}"
    );
    Ok(())
}

#[test]
fn cluster_history_settings_are_checked_by_key() -> Result<()> {
    let url = "nats://127.0.0.1:4222";
    for (toml, key) in [
        (
            "[cluster]\nhistory = \"jetstream\"\n".to_owned(),
            "cluster.history",
        ),
        (node_config(url, 0, ""), "history.size"),
        (
            node_config(url, 10, "")
                .replace("history_stream = \"HIST\"", "history_stream = \"a.b\""),
            "cluster.history_stream",
        ),
        (
            node_config(url, 10, "").replace(
                "history = \"jetstream\"",
                "history = \"jetstream\"\nreplicas = 7",
            ),
            "cluster.replicas",
        ),
        (
            node_config(url, 10, "").replace(
                "subjects = [\"herald.>\"]",
                "subjects = [\"herald.>\", \"x.>\"]",
            ),
            "cluster.backplane",
        ),
        (
            node_config(url, 10, "").replace("history = \"jetstream\"", "history = \"redis\""),
            "cluster.history",
        ),
    ] {
        let err = herald_e2e::config_error(&toml)?;
        ensure!(err.contains(key), "{key}: {err}");
    }
    Ok(())
}
