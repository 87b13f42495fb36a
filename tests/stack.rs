//! The demo stack of `docker/compose.yaml`, without Docker: a private `nats-server`
//! and a private tansu (Kafka protocol) on free ports, Herald started with
//! `docker/herald.toml` itself (only the two server addresses replaced, since the
//! bridges are lists that environment variables cannot edit key by key), and the two
//! demo publishers (`examples/nats_publisher.rs`, `examples/kafka_producer.rs`) as
//! processes configured through the environment variables compose sets. A WebSocket
//! client subscribed to `>` must see both sources, and the dashboard, `/herald.js`,
//! `/api/topics` and `/readyz` must answer as a visitor of the demo would expect.

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, ensure, Context as _, Result};
use herald_e2e::kafka::Tansu;
use herald_e2e::nats::NatsServer;
use herald_e2e::{example_bin, Broker};
use serde_json::{json, Value};

/// Generous: the first metadata round trips, the publishers' start, a busy machine.
const PATIENCE: Duration = Duration::from_secs(60);

/// A demo publisher process; its output is kept for failure messages. Killed when
/// dropped.
struct Publisher {
    child: Child,
    output: Arc<Mutex<Vec<String>>>,
}

impl Publisher {
    fn start(name: &str, env: &[(&str, &str)]) -> Result<Publisher> {
        let mut cmd = Command::new(example_bin(name));
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().with_context(|| format!("start {name}"))?;
        let output = Arc::new(Mutex::new(Vec::new()));
        for stream in [
            Box::new(child.stdout.take().expect("stdout")) as Box<dyn std::io::Read + Send>,
            Box::new(child.stderr.take().expect("stderr")),
        ] {
            let output = output.clone();
            let name = name.to_owned();
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines().map_while(Result::ok) {
                    output
                        .lock()
                        .expect("output")
                        .push(format!("{name}: {line}"));
                }
            });
        }
        Ok(Publisher { child, output })
    }

    fn output(&self) -> String {
        self.output.lock().expect("output").join("\n")
    }
}

impl Drop for Publisher {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `docker/herald.toml` with the compose service addresses replaced by `nats_url`
/// and `brokers`. Fails if the file no longer names them, so that this test keeps
/// running the file compose runs.
fn stack_config(nats_url: &str, brokers: &str) -> Result<String> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docker/herald.toml");
    let text = std::fs::read_to_string(&path).with_context(|| path.display().to_string())?;
    for needle in ["url = \"nats://nats:4222\"", "brokers = \"kafka:9092\""] {
        ensure!(
            text.matches(needle).count() == 1,
            "docker/herald.toml should set `{needle}` once"
        );
    }
    Ok(text
        .replace(
            "url = \"nats://nats:4222\"",
            &format!("url = \"{nats_url}\""),
        )
        .replace(
            "brokers = \"kafka:9092\"",
            &format!("brokers = \"{brokers}\""),
        ))
}

/// A `metrics.<service>.<metric>` sample from the NATS publisher.
fn check_metric(event: &Value) -> Result<()> {
    let topic = event["topic"].as_str().unwrap_or_default();
    let tokens: Vec<&str> = topic.split('.').collect();
    ensure!(tokens.len() == 3 && tokens[0] == "metrics", "{event}");
    let data = &event["data"];
    ensure!(
        data["service"] == tokens[1] && data["metric"] == tokens[2] && data["value"].is_number(),
        "{event}"
    );
    ensure!(event.get("key").is_none(), "core NATS has no key: {event}");
    Ok(())
}

/// An `orders` record from the Kafka producer, on its order's topic.
fn check_order(event: &Value) -> Result<()> {
    let key = event["key"].as_str().unwrap_or_default();
    ensure!(key.starts_with("order-"), "keyed by order id: {event}");
    ensure!(
        event["topic"] == format!("orders.{key}"),
        "topic_template {{topic}}.{{key}}: {event}"
    );
    ensure!(event["data"]["id"] == key, "{event}");
    ensure!(event["data"]["status"].is_string(), "{event}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_stack_delivers_nats_metrics_and_kafka_orders() -> Result<()> {
    let nats = NatsServer::start()?;
    let kafka = Tansu::start()?;
    kafka.create_topic("orders", 3).await?;
    let broker = Broker::start(&stack_config(&nats.url(), &kafka.brokers())?)?;
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let (status, body) = broker.get("/readyz").await?;
        if status == 200 {
            break;
        }
        ensure!(
            tokio::time::Instant::now() < deadline,
            "/readyz stayed {status}: {body}\n{}",
            broker.log_text()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    let mut client = broker.client().await?;
    client.subscribe(&[">"]).await?;
    // Configured as compose configures them: through the environment.
    let (nats_url, brokers) = (nats.url(), kafka.brokers());
    let metrics = Publisher::start(
        "nats_publisher",
        &[("DEMO_RATE", "20"), ("NATS_URL", &nats_url)],
    )?;
    let orders = Publisher::start(
        "kafka_producer",
        &[("DEMO_RATE", "20"), ("KAFKA_BROKERS", &brokers)],
    )?;

    let (mut nats_topics, mut kafka_topics) = (BTreeSet::new(), BTreeSet::new());
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while nats_topics.len() < 3 || kafka_topics.len() < 3 {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let event = match client.recv_within(left).await {
            Ok(event) => event,
            Err(e) => bail!(
                "{e}: saw NATS {nats_topics:?}, Kafka {kafka_topics:?}\n{}\n{}\n{}",
                metrics.output(),
                orders.output(),
                broker.log_text()
            ),
        };
        ensure!(event["type"] == "event", "{event}");
        let topic = event["topic"].as_str().unwrap_or_default().to_owned();
        match event["source"].as_str() {
            Some("nats") => {
                check_metric(&event)?;
                nats_topics.insert(topic);
            }
            Some("kafka") => {
                check_order(&event)?;
                kafka_topics.insert(topic);
            }
            _ => bail!("unexpected event {event}"),
        }
    }

    // /api/topics lists what arrived, with its seq.
    let (status, topics) = broker.get("/api/topics").await?;
    assert_eq!(status, 200);
    let listed: BTreeSet<&str> = topics["topics"]
        .as_array()
        .map(|t| t.iter().filter_map(|t| t["topic"].as_str()).collect())
        .unwrap_or_default();
    for topic in nats_topics.iter().chain(&kafka_topics) {
        ensure!(listed.contains(topic.as_str()), "{topic} not in {topics}");
    }
    let patterns = topics["patterns"].as_array().cloned().unwrap_or_default();
    ensure!(
        patterns
            .iter()
            .any(|p| p["pattern"] == ">" && p["subscribers"] == 1),
        "{topics}"
    );

    // History is on: a dashboard opening now gets recent events at once.
    let mut late = broker.client().await?;
    let (reply, _) = late
        .request(json!({"op": "subscribe", "topics": ["metrics.checkout.*"], "last": 1}))
        .await?;
    assert_eq!(reply["type"], "subscribed", "{reply}");
    let replayed = late.event().await?;
    ensure!(replayed["replay"] == true, "{replayed}");
    check_metric(&replayed)?;

    let (status, body) = broker.get("/readyz").await?;
    assert_eq!(status, 200, "{body}");
    let http = reqwest::Client::new();
    for (path, content_type) in [("/", "text/html"), ("/herald.js", "text/javascript")] {
        let res = http.get(format!("{}{path}", broker.http())).send().await?;
        assert_eq!(res.status(), 200, "{path}");
        let header = herald_e2e::header(&res, "content-type");
        ensure!(header.starts_with(content_type), "{path}: {header}");
        ensure!(!res.text().await?.trim().is_empty(), "{path} is empty");
    }
    Ok(())
}
