//! End-to-end tests of the load tool: the real `herald-bench` binary against the real
//! `herald` binary (NATS bridge and HTTP API), a real nats-server's WebSocket
//! listener, and the real `ws-broadcast`, over real sockets.
//!
//! The loads are tiny and the assertions are about correctness (every connection
//! subscribed, every published message counted and received, the summary consistent),
//! never about speed.

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context as _, Result};
use herald_e2e::nats::NatsServer;
use herald_e2e::Broker;
use serde_json::Value;

fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn wait_listening(port: u16) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        ensure!(Instant::now() < deadline, "nothing listens on {port}");
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

/// Runs `herald-bench` with `args`; returns its exit success, JSON summary (when it
/// printed one) and stderr.
fn bench(args: &[&str]) -> Result<(bool, Option<Value>, String)> {
    let out = Command::new(env!("CARGO_BIN_EXE_herald-bench"))
        .args(args)
        .stdin(Stdio::null())
        .output()
        .context("run herald-bench")?;
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let summary = serde_json::from_slice(&out.stdout).ok();
    Ok((out.status.success(), summary, stderr))
}

/// A tiny publishing run that must lose nothing: `connections` over 4 topics, 50
/// messages/s for 2 s.
fn small_run(target: &str, url: &str, extra: &[&str]) -> Result<Value> {
    let mut args = vec![
        "--target",
        target,
        "--url",
        url,
        "-c",
        "40",
        "--topics",
        "4",
        "--rate",
        "50",
        "--duration",
        "2",
        "--warmup",
        "0.5",
        "--settle",
        "0.2",
        "--size",
        "200",
    ];
    args.extend_from_slice(extra);
    let (ok, summary, stderr) = bench(&args)?;
    ensure!(ok, "herald-bench failed:\n{stderr}");
    let s = summary.context("no JSON summary on stdout")?;
    check_consistent(&s, &stderr)?;
    Ok(s)
}

/// What every complete run at a tiny load must show.
fn check_consistent(s: &Value, stderr: &str) -> Result<()> {
    let c = &s["connections"];
    ensure!(
        c["subscribed"] == 40 && c["failed"] == 0,
        "connections: {c}\n{stderr}"
    );
    ensure!(c["disconnected"] == 0, "connections dropped: {c}");
    let p = &s["publish"];
    let d = &s["deliveries"];
    let measured = p["measured"].as_u64().unwrap_or(0);
    ensure!(measured >= 50, "too few measured messages: {p}");
    // Every connection subscribes to one of 4 topics: 10 subscribers each.
    ensure!(
        d["expected"].as_u64() == Some(measured * 10),
        "expected: {d} for {p}"
    );
    ensure!(
        d["received"] == d["expected"] && d["lost"] == 0,
        "loss at a tiny load: {d}\n{stderr}"
    );
    ensure!(d["gaps"] == 0 && d["out_of_order"] == 0, "sequence: {d}");
    ensure!(
        s["latency_ms"]["count"] == d["received"],
        "one latency per measured delivery: {}",
        s["latency_ms"]
    );
    ensure!(s["latency_ms"]["p50"].as_f64() > Some(0.0));
    ensure!(
        stderr.contains("conns | pub"),
        "no progress line:\n{stderr}"
    );
    Ok(())
}

fn herald_with_bridge(nats: &NatsServer) -> Result<Broker> {
    Broker::start(&herald_e2e::config(
        "",
        &format!(
            "[[bridge.nats]]\nname = \"bench\"\nurl = \"{}\"\nsubjects = [\"bench.>\"]\nstrip_prefix = \"bench.\"\n",
            nats.url()
        ),
    ))
}

/// A tiny run of `target` against a Herald whose NATS bridge the tool publishes
/// through, with the server's figures (`--pid`). Returns the summary, and the broker
/// and its NATS server, still running.
async fn bridged_run(target: &str) -> Result<(Value, Broker, NatsServer)> {
    let nats = NatsServer::start_with(&[])?;
    let broker = herald_with_bridge(&nats)?;
    broker.wait_readyz(200).await?;
    let pid = broker.pid().to_string();
    let s = small_run(
        target,
        &broker.ws_url(),
        &["--nats-url", &nats.url(), "--pid", &pid],
    )?;
    assert_eq!(s["target"], target);
    Ok((s, broker, nats))
}

#[tokio::test(flavor = "multi_thread")]
async fn herald_through_its_nats_bridge_loses_nothing_at_a_tiny_load() -> Result<()> {
    let (s, broker, _nats) = bridged_run("herald").await?;
    let server = &s["server"];
    assert_eq!(server["pid"].as_u64(), Some(u64::from(broker.pid())));
    assert!(server["rss_kib_before"].as_u64() > Some(0), "{server}");
    assert!(server["cpu_percent"].as_f64().is_some(), "{server}");
    assert!(
        server["rss_bytes_per_connection"].as_f64().is_some(),
        "{server}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn herald_through_its_http_api_loses_nothing_at_a_tiny_load() -> Result<()> {
    let broker = Broker::start(&herald_e2e::config("", ""))?;
    let s = small_run("herald", &broker.ws_url(), &["--publish", "http"])?;
    assert_eq!(s["config"]["publish"], "http");
    assert!(s["server"].is_null(), "no --pid, no server figures");
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn herald_over_server_sent_events_loses_nothing_at_a_tiny_load() -> Result<()> {
    let (_, broker, _nats) = bridged_run("herald-sse").await?;
    let streams = broker
        .metric(r#"herald_connections_accepted_total{transport="sse"}"#)
        .await?;
    assert_eq!(streams, 40.0, "the tool's connections were event streams");
    Ok(())
}

/// A nats-server with a WebSocket listener; returns it and the WebSocket port.
fn nats_with_websocket() -> Result<(NatsServer, u16)> {
    let ws_port = free_port()?;
    let nats = NatsServer::start_with_config(&format!(
        "websocket {{\n  listen: \"127.0.0.1:{ws_port}\"\n  no_tls: true\n}}\n"
    ))?;
    wait_listening(ws_port)?;
    Ok((nats, ws_port))
}

#[test]
fn nats_server_over_websocket_loses_nothing_at_a_tiny_load() -> Result<()> {
    let (nats, ws_port) = nats_with_websocket()?;
    let s = small_run(
        "nats-ws",
        &format!("ws://127.0.0.1:{ws_port}/"),
        &["--nats-url", &nats.url()],
    )?;
    assert_eq!(s["target"], "nats-ws");
    Ok(())
}

/// `ws-broadcast` on a free port, fed by `nats`; killed on drop.
struct WsBroadcast(Child, u16);

impl WsBroadcast {
    fn start(nats: &NatsServer) -> Result<WsBroadcast> {
        let port = free_port()?;
        let child = Command::new(env!("CARGO_BIN_EXE_ws-broadcast"))
            .args([
                "--listen",
                &format!("127.0.0.1:{port}"),
                "--nats",
                &nats.url(),
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("start ws-broadcast")?;
        let server = WsBroadcast(child, port);
        wait_listening(port)?;
        Ok(server)
    }
}

impl Drop for WsBroadcast {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn ws_broadcast_loses_nothing_at_a_tiny_load() -> Result<()> {
    let nats = NatsServer::start_with(&[])?;
    let server = WsBroadcast::start(&nats)?;
    let s = small_run(
        "ws-broadcast",
        &format!("ws://127.0.0.1:{}/", server.1),
        &[
            "--nats-url",
            &nats.url(),
            "--pid",
            &server.0.id().to_string(),
        ],
    )?;
    assert_eq!(s["target"], "ws-broadcast");
    Ok(())
}

#[test]
fn idle_connections_report_memory_and_the_ramp() -> Result<()> {
    let nats = NatsServer::start_with(&[])?;
    let server = WsBroadcast::start(&nats)?;
    let json = tempfile::NamedTempFile::new()?;
    let (ok, stdout_summary, stderr) = bench(&[
        "--target",
        "ws-broadcast",
        "--url",
        &format!("ws://127.0.0.1:{}/", server.1),
        "-c",
        "300",
        "--rate",
        "0",
        "--duration",
        "0.5",
        "--settle",
        "0.2",
        "--connect-rate",
        "1000",
        "--connect-concurrency",
        "16",
        "--per-source",
        "100",
        "--pid",
        &server.0.id().to_string(),
        "--json",
        &json.path().display().to_string(),
    ])?;
    ensure!(ok, "herald-bench failed:\n{stderr}");
    assert!(
        stdout_summary.is_none(),
        "--json writes the summary to the file only"
    );
    let s: Value = serde_json::from_slice(&std::fs::read(json.path())?)?;
    let c = &s["connections"];
    assert_eq!(c["subscribed"], 300, "{c}");
    // 300 connections at 1,000/s take about 0.3 s; allow a loaded machine.
    let ramp = c["ramp_s"].as_f64().unwrap_or(0.0);
    assert!(ramp >= 0.25, "the connect rate paces the ramp: {c}");
    assert_eq!(c["connect_ms"]["count"], 300);
    assert_eq!(s["publish"]["published"], 0);
    assert_eq!(s["deliveries"]["expected"], 0);
    assert!(s["server"]["rss_kib_connected"].as_u64() > Some(0));
    Ok(())
}

#[test]
fn a_server_that_is_not_there_is_named_in_the_error() -> Result<()> {
    let port = free_port()?;
    let url = format!("ws://127.0.0.1:{port}/ws");
    let (ok, summary, stderr) =
        bench(&["--url", &url, "-c", "60", "--rate", "0", "--duration", "0"])?;
    ensure!(!ok && summary.is_none(), "a run with no server must fail");
    if !stderr.contains("Connection refused") || !stderr.contains("is the server running") {
        bail!("unhelpful error:\n{stderr}");
    }
    let (ok, _, stderr) = bench(&["--target", "nats-ws", "--publish", "http"])?;
    ensure!(
        !ok && stderr.contains("--publish http works with --target herald or herald-sse only"),
        "{stderr}"
    );
    Ok(())
}
