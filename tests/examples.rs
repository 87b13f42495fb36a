//! End-to-end tests of the runnable examples (`examples/`), each run as the process a
//! user would start, against real servers over real sockets:
//!
//! - `embedded`: its own route answers, and a WebSocket client on its `/ws` gets the
//!   event its handler published;
//! - `subscriber`: prints events, answers heartbeats, notices a silent server,
//!   resumes after a cut connection (replay, no reset), reports `reset` after a broker
//!   restart (new epoch), and stops on 4001 and on a refused token. A TCP proxy
//!   between it and the broker cuts, stalls and re-points the connection. With a
//!   token file it refreshes its session in place across several expiries, reports
//!   a refused refresh, and reconnects after the 4001 that follows. On the compose
//!   `cluster` profile's settings (cluster history on JetStream) it rides a rolling
//!   restart of both nodes with every event once, and no reset or gap;
//! - `nats_publisher` and `kafka_producer`: wait for a server that is not up yet,
//!   publish well-formed samples and keyed order events, and stop after `--count`.
//!
//! The example binaries are the ones cargo builds into `target/<profile>/examples/`;
//! they are built when missing or older than their sources.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, bail, ensure, Context as _, Result};
use futures_util::StreamExt;
use herald_e2e::kafka::Tansu;
use herald_e2e::nats::NatsServer;
use herald_e2e::{config, example_bin, Broker, Client};
use serde_json::{json, Value};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// How long a test waits for an example to print something it should print soon
/// (generous: the machine may be busy with other builds and tests).
const PATIENCE: Duration = Duration::from_secs(30);

/// A running example process, its output collected line by line. Killed when
/// dropped.
struct Example {
    name: String,
    child: Child,
    /// stdout and stderr, in the order the reader threads saw them.
    lines: Arc<Mutex<Vec<String>>>,
}

impl Example {
    /// Starts example `name` with `args` and extra environment variables.
    fn start(name: &str, args: &[&str], env: &[(&str, &str)]) -> Result<Example> {
        let mut cmd = Command::new(example_bin(name));
        cmd.args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd
            .spawn()
            .with_context(|| format!("start example {name}"))?;
        let lines = Arc::new(Mutex::new(Vec::new()));
        for stream in [
            Box::new(child.stdout.take().expect("stdout")) as Box<dyn std::io::Read + Send>,
            Box::new(child.stderr.take().expect("stderr")),
        ] {
            let lines = lines.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines().map_while(Result::ok) {
                    lines.lock().expect("lines").push(line);
                }
            });
        }
        Ok(Example {
            name: name.to_owned(),
            child,
            lines,
        })
    }

    /// Everything printed so far.
    fn lines(&self) -> Vec<String> {
        self.lines.lock().expect("lines").clone()
    }

    /// Fails with `why` when a line says something was lost (`-- reset`, `-- gap`).
    fn lost_nothing(&self, why: &str) -> Result<()> {
        let lost = self
            .lines()
            .into_iter()
            .any(|l| l.contains("-- reset") || l.contains("-- gap"));
        ensure!(!lost, "{why}:\n{}", self.output());
        Ok(())
    }

    /// Everything printed so far, for failure messages.
    fn output(&self) -> String {
        self.lines().join("\n")
    }

    /// Waits for a line at or after index `from` that contains `needle`; returns its
    /// index and text.
    async fn wait_line(&self, from: usize, needle: &str) -> Result<(usize, String)> {
        let deadline = tokio::time::Instant::now() + PATIENCE;
        loop {
            let found = self
                .lines()
                .into_iter()
                .enumerate()
                .skip(from)
                .find(|(_, l)| l.contains(needle));
            if let Some(found) = found {
                return Ok(found);
            }
            if tokio::time::Instant::now() > deadline {
                bail!(
                    "{} printed no line containing {needle:?} (from line {from}) within {PATIENCE:?}; it printed:\n{}",
                    self.name,
                    self.output()
                );
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// Waits for the process to exit by itself.
    async fn exit(&mut self, timeout: Duration) -> Result<ExitStatus> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait()? {
                // Let the reader threads drain the pipes.
                tokio::time::sleep(Duration::from_millis(100)).await;
                return Ok(status);
            }
            if tokio::time::Instant::now() > deadline {
                bail!(
                    "{} did not exit within {timeout:?}; it printed:\n{}",
                    self.name,
                    self.output()
                );
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }
}

impl Drop for Example {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_serves_its_own_route_and_herald_on_one_port() -> Result<()> {
    let app = Example::start("embedded", &["127.0.0.1:0"], &[])?;
    let (_, line) = app.wait_line(0, "listening on http://").await?;
    let addr = line
        .rsplit("http://")
        .next()
        .ok_or_else(|| anyhow!("no address in {line:?}"))?
        .trim()
        .to_owned();

    let mut client = Client::connect(&format!("ws://{addr}/ws")).await?;
    client.subscribe(&["orders.*"]).await?;

    let http = reqwest::Client::new();
    let hello = http.get(format!("http://{addr}/hello")).send().await?;
    assert_eq!(hello.status(), 200);
    assert_eq!(hello.text().await?, "hello from the host app\n");

    let created = http.post(format!("http://{addr}/orders/7")).send().await?;
    assert_eq!(created.status(), 201);
    assert_eq!(created.json::<Value>().await?, json!({"id": 7}));

    let event = client.event().await?;
    assert_eq!(event["topic"], "orders.created", "{event}");
    assert_eq!(event["data"], json!({"id": 7, "status": "created"}));
    assert_eq!(event["key"], "order-7");
    assert_eq!(event["source"], "http");
    assert_eq!(event["seq"], 1);

    // Herald's own routes share the port.
    let health = http.get(format!("http://{addr}/healthz")).send().await?;
    assert_eq!(health.status(), 200);
    Ok(())
}

/// What the proxy does with connections.
#[derive(Debug, Clone)]
struct ProxyState {
    /// Where new connections go.
    upstream: String,
    /// New connections are accepted and closed at once.
    refuse: bool,
    /// Bumped by [`Proxy::cut`]: connections older than it are closed.
    cuts: u64,
    /// Bumped by [`Proxy::stall`]: connections older than it stop forwarding but
    /// stay open (a dead network path, not a closed connection).
    stalls: u64,
}

/// A TCP proxy on 127.0.0.1 between a client and a broker, with real sockets on
/// both sides, to make connection trouble on demand.
struct Proxy {
    port: u16,
    state: Arc<watch::Sender<ProxyState>>,
    accept: tokio::task::JoinHandle<()>,
}

impl Proxy {
    async fn start(upstream: &str) -> Result<Proxy> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let port = listener.local_addr()?.port();
        let state = Arc::new(watch::Sender::new(ProxyState {
            upstream: upstream.to_owned(),
            refuse: false,
            cuts: 0,
            stalls: 0,
        }));
        let shared = state.clone();
        let accept = tokio::spawn(async move {
            while let Ok((inbound, _)) = listener.accept().await {
                let now = shared.borrow().clone();
                if now.refuse {
                    continue; // dropped: closed at once
                }
                tokio::spawn(Self::pipe(inbound, now, shared.subscribe()));
            }
        });
        Ok(Proxy {
            port,
            state,
            accept,
        })
    }

    /// Forwards one connection until it ends, is cut, or stalls.
    async fn pipe(
        mut inbound: TcpStream,
        at_start: ProxyState,
        mut changes: watch::Receiver<ProxyState>,
    ) {
        let Ok(mut outbound) = TcpStream::connect(&at_start.upstream).await else {
            return;
        };
        {
            let copy = tokio::io::copy_bidirectional(&mut inbound, &mut outbound);
            tokio::pin!(copy);
            loop {
                tokio::select! {
                    _ = &mut copy => return,
                    changed = changes.changed() => {
                        let now = changes.borrow_and_update().clone();
                        if changed.is_err() || now.cuts != at_start.cuts {
                            return;
                        }
                        if now.stalls != at_start.stalls {
                            break;
                        }
                    }
                }
            }
        }
        // Stalled: hold both sockets open, forwarding nothing, until cut.
        while changes.changed().await.is_ok() {
            if changes.borrow().cuts != at_start.cuts {
                return;
            }
        }
    }

    /// `ws://127.0.0.1:PORT/ws`.
    fn ws_url(&self) -> String {
        format!("ws://127.0.0.1:{}/ws", self.port)
    }

    /// Closes every connection and refuses new ones until [`Proxy::open`].
    fn cut(&self) {
        self.state.send_modify(|s| {
            s.refuse = true;
            s.cuts += 1;
        });
    }

    /// Accepts connections again.
    fn open(&self) {
        self.state.send_modify(|s| s.refuse = false);
    }

    /// Freezes every current connection (nothing forwarded, nothing closed); new
    /// connections are forwarded as usual.
    fn stall(&self) {
        self.state.send_modify(|s| s.stalls += 1);
    }

    /// Sends new connections to another address.
    fn point_at(&self, upstream: &str) {
        self.state.send_modify(|s| s.upstream = upstream.to_owned());
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.accept.abort();
        self.cut();
    }
}

/// A broker config with a fast heartbeat (1 s + 1 s), so silence is noticed soon.
fn fast_heartbeat() -> String {
    config(
        "",
        "[session]\nheartbeat_interval_ms = 1000\nheartbeat_timeout_ms = 1000\n",
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscriber_resumes_after_a_cut_and_reports_reset_after_a_restart() -> Result<()> {
    let first = Broker::start(&fast_heartbeat())?;
    let proxy = Proxy::start(&first.addr).await?;
    let sub = Example::start("subscriber", &[&proxy.ws_url(), "orders.>"], &[])?;
    let (at, connected) = sub.wait_line(0, "-- connected to").await?;
    let epoch = connected
        .rsplit("epoch ")
        .next()
        .unwrap_or_default()
        .to_owned();
    let direct = first.client().await?;
    ensure!(
        direct.welcome["epoch"] == epoch.as_str(),
        "{connected}: not the broker's epoch {}",
        direct.welcome["epoch"]
    );
    drop(direct);
    sub.wait_line(at, "-- subscribed: orders.>").await?;

    first.publish("orders.eu", json!({"n": 1})).await?;
    first.publish("orders.eu", json!({"n": 2})).await?;
    first.publish("orders.us", json!({"n": 1})).await?;
    let (at, line) = sub.wait_line(at, r#"orders.eu #2 {"n":2}"#).await?;
    ensure!(
        line.len() > 13 && line.as_bytes()[2] == b':' && line.as_bytes()[8] == b'.',
        "an event line starts with its time: {line}"
    );
    let (at, _) = sub.wait_line(at, r#"orders.us #1 {"n":1}"#).await?;
    // Two heartbeat periods: the subscriber answers pings, so the broker (which
    // closes a client silent for 2 s with 4008) keeps it.
    tokio::time::sleep(Duration::from_secs(3)).await;

    // The connection is cut; what is published meanwhile comes back as a replay.
    proxy.cut();
    let (at, _) = sub.wait_line(at, "-- disconnected:").await?;
    first.publish("orders.eu", json!({"n": 3})).await?;
    first.publish("orders.eu", json!({"n": 4})).await?;
    proxy.open();
    let (at, _) = sub
        .wait_line(
            at,
            &format!("-- resuming epoch {epoch}: orders.eu after #2, orders.us after #1"),
        )
        .await?;
    let (at, _) = sub
        .wait_line(at, r#"orders.eu #3 (replay) {"n":3}"#)
        .await?;
    let (at, _) = sub
        .wait_line(at, r#"orders.eu #4 (replay) {"n":4}"#)
        .await?;
    first.publish("orders.eu", json!({"n": 5})).await?;
    let (at, _) = sub.wait_line(at, r#"orders.eu #5 {"n":5}"#).await?;
    sub.lost_nothing("a resume within history loses nothing")?;
    let lines = sub.lines();
    ensure!(
        !lines.iter().any(|l| l.contains("4008")),
        "the subscriber must answer heartbeats:\n{}",
        sub.output()
    );

    // The broker restarts (a new process, a new epoch): its 1001 close brings the
    // subscriber back, and its positions are reset, not replayed.
    let mut first = first;
    let second = Broker::start(&fast_heartbeat())?;
    proxy.point_at(&second.addr);
    first.terminate(Duration::from_secs(20))?;
    let (at, _) = sub
        .wait_line(at, "-- disconnected: the broker is restarting (1001)")
        .await?;
    let (at, _) = sub
        .wait_line(
            at,
            &format!("-- resuming epoch {epoch}: orders.eu after #5, orders.us after #1"),
        )
        .await?;
    let (_, reset_eu) = sub
        .wait_line(at, "-- reset orders.eu (epoch_changed)")
        .await?;
    let (_, reset_us) = sub
        .wait_line(at, "-- reset orders.us (epoch_changed)")
        .await?;
    ensure!(reset_eu.contains("refetch") && reset_us.contains("refetch"));
    // The new broker counts from 1, and that is no gap and no surprise after reset.
    second.publish("orders.eu", json!({"n": 6})).await?;
    sub.wait_line(at, r#"orders.eu #1 {"n":6}"#).await?;
    ensure!(
        !sub.lines()
            .iter()
            .any(|l| l.contains("-- gap") || l.contains("counts from")),
        "after a reset, #1 is expected:\n{}",
        sub.output()
    );
    Ok(())
}

/// The environment the compose `cluster` profile gives its Herald nodes
/// (`x-cluster-env` in docker/compose.yaml), with NATS at `nats_url` instead of the
/// stack's `nats` service.
fn compose_cluster_env(nats_url: &str) -> Result<Vec<(String, String)>> {
    let compose: Value = yaml_serde::from_str(&herald_e2e::read("docker/compose.yaml")?)?;
    let env = compose["x-cluster-env"]
        .as_object()
        .ok_or_else(|| anyhow!("docker/compose.yaml has no x-cluster-env"))?;
    Ok(env
        .iter()
        .map(|(k, v)| {
            let v = v.as_str().unwrap_or_default();
            (k.clone(), v.replace("nats://nats:4222", nats_url))
        })
        .collect())
}

/// A node of the compose `cluster` profile: docker/herald.toml and the profile's
/// environment (its Kafka, which this test does not start, stays unreachable).
fn compose_node(env: &[(String, String)], id: &str) -> Result<Broker> {
    let mut env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    env.push(("HERALD_SERVER__NODE_ID", id));
    Broker::start_with_env(&herald_e2e::read("docker/herald.toml")?, &env)
}

/// Waits until `node` lets sessions in (its history stream is set up).
async fn serving(node: &Broker) -> Result<()> {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while node.client().await.is_err() {
        ensure!(
            tokio::time::Instant::now() < deadline,
            "no session let in; it logged:\n{}",
            node.log_text()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscriber_rides_a_rolling_restart_of_the_compose_cluster_without_a_reset() -> Result<()> {
    let nats = NatsServer::start()?;
    let env = compose_cluster_env(&nats.url())?;
    let mut nodes = [
        compose_node(&env, "herald-1")?,
        compose_node(&env, "herald-2")?,
    ];
    for node in &nodes {
        serving(node).await?;
    }
    // nginx: the subscriber's connection goes to one node, and after a restart to
    // whichever the load balancer picks.
    let proxy = Proxy::start(&nodes[0].addr).await?;
    let sub = Example::start("subscriber", &[&proxy.ws_url(), "roll.>"], &[])?;
    let (at, _) = sub.wait_line(0, "-- subscribed: roll.>").await?;
    let mut n = 0;
    let mut at = at;
    for round in 0..2 {
        for _ in 0..3 {
            n += 1;
            nodes[1 - round]
                .publish("roll.a", json!({ "n": n }))
                .await?;
        }
        at = sub.wait_line(at, &format!(r#"{{"n":{n}}}"#)).await?.0;
        // Restart the node the subscriber is on; publish through the other meanwhile.
        proxy.point_at(&nodes[1 - round].addr);
        nodes[round].terminate(Duration::from_secs(20))?;
        at = sub.wait_line(at, "-- disconnected").await?.0;
        for _ in 0..3 {
            n += 1;
            nodes[1 - round]
                .publish("roll.a", json!({ "n": n }))
                .await?;
        }
        nodes[round] = compose_node(&env, &format!("herald-{}", round + 1))?;
        serving(&nodes[round]).await?;
        at = sub.wait_line(at, &format!(r#"{{"n":{n}}}"#)).await?.0;
    }
    sub.lost_nothing("positions are the cluster's: nothing to reset, nothing missed")?;
    let lines = sub.lines();
    for k in 1..=n {
        let needle = format!(r#"{{"n":{k}}}"#);
        let times = lines.iter().filter(|l| l.ends_with(&needle)).count();
        ensure!(
            times == 1,
            "event {k} printed {times} times:\n{}",
            sub.output()
        );
    }
    ensure!(
        lines
            .iter()
            .filter(|l| l.contains("-- resuming epoch HERALD-"))
            .count()
            == 2,
        "resumed twice, on the stream's epoch:\n{}",
        sub.output()
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscriber_notices_a_silent_server_and_reconnects() -> Result<()> {
    let broker = Broker::start(&fast_heartbeat())?;
    let proxy = Proxy::start(&broker.addr).await?;
    let sub = Example::start("subscriber", &[&proxy.ws_url(), "metrics.*"], &[])?;
    let (at, _) = sub.wait_line(0, "-- subscribed: metrics.*").await?;
    broker.publish("metrics.cpu", json!(41.5)).await?;
    let (at, _) = sub.wait_line(at, "metrics.cpu #1 41.5").await?;

    // The network path dies without a FIN or RST: only the silence tells.
    proxy.stall();
    let (at, line) = sub
        .wait_line(at, "-- disconnected: nothing from the server")
        .await?;
    ensure!(
        line.contains("for 2.0 s"),
        "silence = interval + timeout: {line}"
    );
    let (at, _) = sub.wait_line(at, "-- connected to").await?;
    let (at, _) = sub
        .wait_line(at, "-- resuming epoch")
        .await
        .context("resumes on the new connection")?;
    let (at, _) = sub.wait_line(at, "-- subscribed: metrics.*").await?;
    broker.publish("metrics.cpu", json!(42.0)).await?;
    sub.wait_line(at, "metrics.cpu #2 42.0").await?;
    Ok(())
}

const SECRET: &str = "0123456789abcdef0123456789abcdef-examples";

fn token(exp_in_s: u64) -> Result<String> {
    let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs();
    Ok(jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &json!({"sub": "viewer", "exp": now + exp_in_s}),
        &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
    )?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscriber_stops_when_its_token_expires_or_is_refused() -> Result<()> {
    let broker = Broker::start(&config(
        "",
        &format!(
            "[auth]\nmode = \"jwt\"\njwt_secret = \"{SECRET}\"\n[session]\nheartbeat_interval_ms = 1000\nheartbeat_timeout_ms = 1000\n"
        ),
    ))?;

    // A valid token that expires: connected, then 4001, then stop (status 2) rather
    // than reconnecting with a token that would be refused.
    let short = token(2)?;
    let mut sub = Example::start(
        "subscriber",
        &[&broker.ws_url(), "orders.>", "--token", &short],
        &[],
    )?;
    sub.wait_line(0, "-- subscribed: orders.>").await?;
    let status = sub.exit(PATIENCE).await?;
    assert_eq!(status.code(), Some(2), "{}", sub.output());
    let (_, last) = sub.wait_line(0, "closed with 4001 token expired").await?;
    ensure!(last.ends_with("stopping"), "{last}");
    ensure!(!sub.output().contains(&short), "the token is never printed");

    // A token signed with another key (given by the environment this time): 401 on
    // the upgrade, stop.
    let forged = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &json!({"sub": "mallory", "exp": 4_102_444_800_u64}),
        &jsonwebtoken::EncodingKey::from_secret(b"not-the-secret-not-the-secret-not"),
    )?;
    let mut refused = Example::start(
        "subscriber",
        &[&broker.ws_url(), "orders.>"],
        &[("HERALD_TOKEN", &forged)],
    )?;
    let status = refused.exit(PATIENCE).await?;
    assert_eq!(status.code(), Some(2), "{}", refused.output());
    refused.wait_line(0, "unauthorized (401)").await?;
    ensure!(!refused.output().contains(&forged));
    Ok(())
}

/// A token for `sub` that expires `exp_in_s` seconds from now, written to `dir/token`
/// the way a sidecar would (a whole new file, renamed over the old one); returns its
/// `exp`.
fn write_token(dir: &std::path::Path, sub: &str, exp_in_s: u64) -> Result<u64> {
    let exp = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs() + exp_in_s;
    let jwt = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &json!({"sub": sub, "exp": exp}),
        &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
    )?;
    let tmp = dir.join("token.tmp");
    std::fs::write(&tmp, format!("{jwt}\n"))?;
    std::fs::rename(&tmp, dir.join("token"))?;
    Ok(exp)
}

/// `POST /api/publish` of one event with an API key (the broker runs with auth).
async fn publish_with_key(broker: &Broker, key: &str, topic: &str, data: Value) -> Result<()> {
    let res = reqwest::Client::new()
        .post(format!("{}/api/publish", broker.http()))
        .bearer_auth(key)
        .json(&json!({"topic": topic, "data": data}))
        .send()
        .await?;
    ensure!(res.status() == 202, "publish: {}", res.text().await?);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscriber_refreshes_a_token_file_in_place_before_it_expires() -> Result<()> {
    const API_KEY: &str = "examples-publisher-key";
    // The broker's session timer (which enforces exp) ticks every 250 ms.
    let broker = Broker::start(&config(
        "",
        &format!(
            "[auth]\nmode = \"jwt\"\njwt_secret = \"{SECRET}\"\napi_keys = [\"{API_KEY}\"]\n[session]\nheartbeat_interval_ms = 1000\nheartbeat_timeout_ms = 1000\n"
        ),
    ))?;
    let publish = |n: u64| publish_with_key(&broker, API_KEY, "orders.eu", json!({ "n": n }));
    const LIFETIME_S: u64 = 6;
    let dir = tempfile::tempdir()?;
    let first_exp = write_token(dir.path(), "viewer", LIFETIME_S)?;
    // A sidecar keeps the file fresh for the subject it is told; None: it stops.
    let (subject, mut told) = watch::channel(Some("viewer"));
    let sidecar = tokio::spawn({
        let dir = dir.path().to_owned();
        async move {
            loop {
                let sub = *told.borrow_and_update();
                if let Some(sub) = sub {
                    if let Err(e) = write_token(&dir, sub, LIFETIME_S) {
                        eprintln!("the sidecar could not write the token: {e}");
                    }
                }
                if tokio::time::timeout(Duration::from_millis(300), told.changed())
                    .await
                    .is_ok_and(|r| r.is_err())
                {
                    return;
                }
            }
        }
    });
    let token_file = dir.path().join("token");
    let mut sub = Example::start(
        "subscriber",
        &[
            &broker.ws_url(),
            "orders.>",
            "--token-file",
            &token_file.to_string_lossy(),
        ],
        &[],
    )?;
    let (mut at, _) = sub.wait_line(0, "-- subscribed: orders.>").await?;
    publish(1).await?;
    (at, _) = sub.wait_line(at, r#"orders.eu #1 {"n":1}"#).await?;

    // Refreshed in place, again and again, past the exp of the first token and of
    // every token read before it expired: one session throughout, an event after
    // each refresh.
    let mut n = 1;
    let now = || {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
    };
    while n < 4 || now()? <= first_exp + LIFETIME_S {
        (at, _) = sub.wait_line(at, "-- token refreshed in place").await?;
        n += 1;
        publish(n).await?;
        (at, _) = sub
            .wait_line(at, &format!(r#"orders.eu #{n} {{"n":{n}}}"#))
            .await?;
    }
    let lines = sub.lines();
    let count = |needle: &str| lines.iter().filter(|l| l.contains(needle)).count();
    ensure!(
        count("-- connected to") == 1 && count("-- disconnected") == 0 && count("-- resuming") == 0,
        "one connection throughout:\n{}",
        sub.output()
    );
    ensure!(
        lines
            .iter()
            .any(|l| l.ends_with(" UTC") && l.contains("the session now ends at")),
        "{}",
        sub.output()
    );

    // A token of another subject is refused, and reported; the session goes on until
    // its token expires (4001), then the subscriber reconnects with what the file
    // holds, and resumes.
    subject.send(Some("mallory"))?;
    let (refused_at, refused) = sub
        .wait_line(at, "-- token refresh failed: refused:")
        .await?;
    ensure!(
        refused.contains("(forbidden)") && refused.contains("subject"),
        "{refused}"
    );
    (at, _) = sub
        .wait_line(
            refused_at,
            "-- disconnected: closed with 4001 token expired: reading the token file again",
        )
        .await?;
    (at, _) = sub.wait_line(at, "-- connected to").await?;
    (at, _) = sub.wait_line(at, "-- resuming epoch").await?;
    (at, _) = sub.wait_line(at, "-- subscribed: orders.>").await?;
    n += 1;
    publish(n).await?;
    (at, _) = sub
        .wait_line(at, &format!(r#"orders.eu #{n} {{"n":{n}}}"#))
        .await?;
    (at, _) = sub.wait_line(at, "-- token refreshed in place").await?;

    // The sidecar stops: no newer token, retries until exp, 4001, and the file's
    // token is expired by then: refused on the upgrade (401), stop with status 2.
    subject.send(None)?;
    sub.wait_line(
        at,
        "-- token refresh failed: the token file holds no newer token yet",
    )
    .await?;
    let status = sub.exit(PATIENCE).await?;
    assert_eq!(status.code(), Some(2), "{}", sub.output());
    sub.wait_line(at, "unauthorized (401)").await?;
    ensure!(
        !sub.output().contains("eyJ"),
        "a token is never printed:\n{}",
        sub.output()
    );
    ensure!(
        !sub.lines()
            .iter()
            .any(|l| l.contains("-- reset") || l.contains("-- gap")),
        "{}",
        sub.output()
    );
    drop(subject);
    sidecar.await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_publisher_waits_for_nats_then_publishes_every_series() -> Result<()> {
    let mut nats = NatsServer::start()?;
    nats.stop();
    let mut publisher = Example::start(
        "nats_publisher",
        &["--count", "60", "--rate", "50"],
        &[("NATS_URL", &nats.url())],
    )?;
    publisher.wait_line(0, "waiting for NATS at").await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    nats.restart()?;
    let client = nats.client().await?;
    let mut samples = client.subscribe("metrics.>").await?;
    client.flush().await?;

    let status = publisher.exit(Duration::from_secs(60)).await?;
    ensure!(status.success(), "{}", publisher.output());
    publisher.wait_line(0, "done, 60 samples published").await?;

    let mut subjects = BTreeSet::new();
    let mut received = 0;
    while let Ok(Some(msg)) = tokio::time::timeout(Duration::from_secs(2), samples.next()).await {
        let subject = msg.subject.to_string();
        let tokens: Vec<&str> = subject.split('.').collect();
        let sample: Value = serde_json::from_slice(&msg.payload)?;
        ensure!(
            tokens.len() == 3
                && tokens[0] == "metrics"
                && sample["service"] == tokens[1]
                && sample["metric"] == tokens[2],
            "{subject}: {sample}"
        );
        ensure!(
            sample["value"].as_f64().is_some_and(|v| v >= 0.0)
                && sample["unit"].is_string()
                && sample["host"]
                    .as_str()
                    .is_some_and(|h| h.starts_with(tokens[1]))
                && sample["ts"].as_u64().is_some(),
            "{subject}: {sample}"
        );
        subjects.insert(subject);
        received += 1;
    }
    // Core NATS delivers only what is published after the subscription; the
    // publisher may have sent its first samples before it. The rest is all there.
    ensure!(
        (20..=60).contains(&received),
        "received {received} of 60 samples"
    );
    ensure!(
        subjects.len() == 20,
        "5 services × 4 metrics, round robin: {subjects:?}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_producer_waits_for_kafka_creates_the_topic_and_keys_by_order() -> Result<()> {
    let mut kafka = Tansu::start()?;
    kafka.stop();
    let mut producer = Example::start(
        "kafka_producer",
        &["--count", "30", "--rate", "50", "--topic", "shop-orders"],
        &[("KAFKA_BROKERS", &kafka.brokers())],
    )?;
    producer.wait_line(0, "waiting for Kafka at").await?;
    kafka.restart()?;
    let status = producer.exit(Duration::from_secs(90)).await?;
    ensure!(status.success(), "{}", producer.output());
    producer
        .wait_line(0, "created topic shop-orders with 3 partitions")
        .await?;
    producer
        .wait_line(0, "done, 30 events delivered, 0 failed")
        .await?;

    let records = tokio::task::spawn_blocking({
        let brokers = kafka.brokers();
        move || read_all(&brokers, "shop-orders", 30)
    })
    .await??;
    // Every order's events, in partition order: a lifecycle from `created`.
    let mut by_key: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut partitions = BTreeMap::new();
    for (partition, key, value) in &records {
        let order: Value = serde_json::from_str(value)?;
        ensure!(
            order["id"] == key.as_str(),
            "keyed by order id: {key} {order}"
        );
        ensure!(
            order["amount"].as_f64().is_some_and(|a| a > 0.0)
                && order["currency"].is_string()
                && order["region"].is_string(),
            "{order}"
        );
        if let Some(p) = partitions.insert(key.clone(), *partition) {
            ensure!(p == *partition, "one key, one partition: {key}");
        }
        by_key
            .entry(key.clone())
            .or_default()
            .push(order["status"].as_str().unwrap_or_default().to_owned());
    }
    for (key, statuses) in &by_key {
        let lifecycle: &[&str] = if statuses.get(1).map(String::as_str) == Some("cancelled") {
            &["created", "cancelled"]
        } else {
            &["created", "paid", "shipped", "delivered"]
        };
        ensure!(
            statuses.len() <= lifecycle.len()
                && statuses.iter().zip(lifecycle).all(|(s, l)| s == l),
            "{key}: {statuses:?}"
        );
    }
    Ok(())
}

/// Reads the first `n` records of every partition of `topic`: (partition, key,
/// value). Fails unless the topic has 3 partitions holding `n` records in all.
fn read_all(brokers: &str, topic: &str, n: usize) -> Result<Vec<(i32, String, String)>> {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::{ClientConfig, Message as _, Offset, TopicPartitionList};
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", "examples-test")
        .set("enable.auto.commit", "false")
        .create()?;
    let metadata = consumer.fetch_metadata(Some(topic), Duration::from_secs(10))?;
    let partitions = metadata
        .topics()
        .first()
        .map(|t| t.partitions().len())
        .unwrap_or_default();
    ensure!(partitions == 3, "{topic} has {partitions} partitions");
    let mut list = TopicPartitionList::new();
    for p in 0..3 {
        list.add_partition_offset(topic, p, Offset::Beginning)?;
    }
    consumer.assign(&list)?;
    let mut records = Vec::new();
    let deadline = std::time::Instant::now() + PATIENCE;
    while records.len() < n {
        ensure!(
            std::time::Instant::now() < deadline,
            "read {} of {n} records",
            records.len()
        );
        if let Some(message) = consumer.poll(Duration::from_millis(200)) {
            let m = message?;
            let text =
                |b: Option<&[u8]>| String::from_utf8_lossy(b.unwrap_or_default()).into_owned();
            records.push((m.partition(), text(m.key()), text(m.payload())));
        }
    }
    Ok(records)
}
