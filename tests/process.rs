//! End-to-end tests of the process: graceful shutdown, configuration errors,
//! `check-config`, `--help`, environment overrides and what the logs contain.

use std::process::Command;
use std::time::Duration;

use anyhow::Result;
use herald_e2e::{config, herald_bin, Broker};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_closes_every_session_with_1001_and_exits_0() -> Result<()> {
    let mut broker = Broker::start(&config("shutdown_grace_ms = 3000", ""))?;
    let mut a = broker.client().await?;
    let mut b = broker.client().await?;
    a.subscribe(&["x.>"]).await?;
    let status = tokio::task::spawn_blocking(move || {
        let status = broker.terminate(Duration::from_secs(10));
        (broker, status)
    });
    let ca = a.closed(Duration::from_secs(5)).await?;
    let cb = b.closed(Duration::from_secs(5)).await?;
    assert_eq!(ca.code, Some(1001), "{ca:?}");
    assert_eq!(cb.code, Some(1001), "{cb:?}");
    let (broker, status) = status.await?;
    let status = status?;
    assert!(
        status.success(),
        "exit status {status:?}\n{}",
        broker.log_text()
    );
    assert!(broker.log_text().contains("shutting down"));
    Ok(())
}

fn run(args: &[&str], env: &[(&str, &str)]) -> (i32, String, String) {
    let mut cmd = Command::new(herald_bin());
    cmd.args(args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("run herald");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn config_errors_name_the_key_and_the_file() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("herald.toml");
    std::fs::write(&path, "[session]\nqueue_max_byts = 5\n")?;
    let p = path.to_str().unwrap_or_default();
    let (code, _, err) = run(&["--config", p], &[]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("queue_max_byts") && err.contains(p), "{err}");

    std::fs::write(&path, "[session]\nslow_consumer = \"maybe\"\n")?;
    let (code, _, err) = run(&["--config", p], &[]);
    assert_eq!(code, 2);
    assert!(
        err.contains("session.slow_consumer") && err.contains("maybe"),
        "{err}"
    );

    let (code, _, err) = run(&["check-config"], &[("HERALD_SESSION__NOPE", "1")]);
    assert_eq!(code, 2);
    assert!(err.contains("HERALD_SESSION__NOPE"), "{err}");

    std::fs::write(&path, "[session]\nmax_subscriptions = 5\n")?;
    let (code, _, err) = run(&["--config", p, "--listen", "not-an-address"], &[]);
    assert_eq!(code, 2);
    assert!(
        err.contains("--listen") && err.contains("not-an-address"),
        "{err}"
    );

    let (code, _, err) = run(&["--config", "/nonexistent/herald.toml"], &[]);
    assert_eq!(code, 2);
    assert!(err.contains("/nonexistent/herald.toml"), "{err}");
    Ok(())
}

#[test]
fn check_config_prints_the_effective_config_with_secrets_masked() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("herald.toml");
    std::fs::write(
        &path,
        "[session]\nmax_subscriptions = 7\n[auth]\nmode = \"jwt\"\n\
         jwt_secret = \"jwt-secret-jwt-secret-jwt-secret-0\"\napi_keys = [\"super-secret-key\"]\n",
    )?;
    let (code, out, err) = run(
        &[
            "check-config",
            "--config",
            path.to_str().unwrap_or_default(),
        ],
        &[("HERALD_HISTORY__SIZE", "42")],
    );
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("max_subscriptions = 7"), "{out}");
    assert!(out.contains("size = 42"), "{out}");
    assert!(out.contains("listen = \"127.0.0.1:8080\""), "{out}");
    assert!(!out.contains("super-secret-key"), "{out}");
    assert!(!out.contains("jwt-secret-jwt-secret"), "{out}");
    assert!(err.contains("valid"));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keeps_serving_long_past_the_shutdown_grace_period() -> Result<()> {
    // The grace period starts at the signal, not at start-up.
    let broker = Broker::start(&config("shutdown_grace_ms = 200", ""))?;
    let mut c = broker.client().await?;
    tokio::time::sleep(Duration::from_millis(3500)).await;
    assert_eq!(broker.get("/healthz").await?.0, 200);
    c.send(json!({"op":"ping","id":1})).await?;
    assert_eq!(c.recv().await?, json!({"type":"pong","id":1}));
    Ok(())
}

#[test]
fn help_lists_the_flags() {
    let (code, out, _) = run(&["--help"], &[]);
    assert_eq!(code, 0);
    for flag in ["--config", "--listen", "check-config", "HERALD_"] {
        assert!(out.contains(flag), "--help lacks {flag}:\n{out}");
    }
}

/// `--version` names the version, the commit built from and the compiled features;
/// `completions <shell>` prints a completion script that knows the subcommands.
#[test]
fn version_and_completions() {
    let (code, out, _) = run(&["--version"], &[]);
    assert_eq!(code, 0);
    let line = out.trim();
    let want = format!("herald {} (commit ", env!("CARGO_PKG_VERSION"));
    assert!(line.starts_with(&want), "{line}");
    let commit = line[want.len()..].split(';').next().unwrap_or_default();
    assert!(
        commit == "unknown"
            || (commit.len() == 12 && commit.bytes().all(|b| b.is_ascii_hexdigit())),
        "{line}"
    );
    assert!(line.ends_with("features: nats, kafka, jemalloc)"), "{line}");
    for shell in ["bash", "zsh", "fish"] {
        let (code, out, err) = run(&["completions", shell], &[]);
        assert_eq!(code, 0, "{shell}: {err}");
        assert!(
            out.contains("check-config") && out.contains("listen"),
            "{shell}:\n{out}"
        );
    }
    let (code, _, err) = run(&["completions", "tcsh"], &[]);
    assert_eq!(code, 2, "an unknown shell: {err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn environment_overrides_single_keys() -> Result<()> {
    let broker = Broker::start_with_env(
        &config("", ""),
        &[("HERALD_SESSION__MAX_SUBSCRIPTIONS", "3")],
    )?;
    let c = broker.client().await?;
    assert_eq!(c.welcome["limits"]["max_subscriptions"], 3);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_have_one_line_per_event_and_never_a_query_string_or_payload() -> Result<()> {
    let broker = Broker::start(&config("", ""))?;
    let (status, _) = broker.get("/api/topics?ticket=tkt-secret-123").await?;
    assert_eq!(status, 200);
    let mut c =
        herald_e2e::Client::connect(&format!("{}?ticket=tkt-secret-456", broker.ws_url())).await?;
    c.subscribe(&["log.t"]).await?;
    broker
        .publish("log.t", json!({"card": "payload-secret-789"}))
        .await?;
    c.event().await?;
    drop(c);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let logs = broker.log_text();
    for secret in ["tkt-secret-123", "tkt-secret-456", "payload-secret-789"] {
        assert!(!logs.contains(secret), "{secret} leaked into logs:\n{logs}");
    }
    assert!(logs.contains("path=/api/topics"), "{logs}");
    assert!(logs.contains("session opened"), "{logs}");
    assert!(logs.contains("session closed"), "{logs}");
    assert!(logs.contains("herald listening"));
    Ok(())
}

/// Sends SIGTERM without waiting for the process to exit.
fn sigterm(broker: &Broker) -> Result<()> {
    let status = Command::new("kill")
        .args(["-TERM", &broker.pid().to_string()])
        .status()?;
    anyhow::ensure!(status.success(), "kill -TERM failed");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_drain_ms_readyz_says_503_at_once_while_sessions_are_still_served() -> Result<()> {
    let broker = Broker::start(&config("drain_ms = 1500\nshutdown_grace_ms = 3000", ""))?;
    broker.wait_readyz(200).await?;
    let mut c = broker.client().await?;
    c.subscribe(&["x"]).await?;
    sigterm(&broker)?;
    let started = std::time::Instant::now();
    let body = broker.wait_readyz(503).await?;
    assert_eq!(body["reasons"][0], "shutting down", "{body}");
    // Still serving: publishes are delivered, new clients are let in.
    broker.publish("x", json!("during the drain")).await?;
    assert_eq!(c.event().await?["data"], "during the drain");
    let mut late = broker.client().await?;
    late.subscribe(&["x"]).await?;
    // Then the usual shutdown: 1001 for everyone, not before the drain is over.
    let closed = c.closed(Duration::from_secs(10)).await?;
    assert_eq!(closed.code, Some(1001), "{closed:?}");
    assert!(
        started.elapsed() >= Duration::from_millis(1400),
        "closed after {:?}, before the drain ended",
        started.elapsed()
    );
    assert_eq!(late.closed(Duration::from_secs(5)).await?.code, Some(1001));
    let log = broker.log_text();
    let drain = log
        .find("draining: /readyz answers 503")
        .unwrap_or(usize::MAX);
    let stop = log.find("shutting down: stopped accepting").unwrap_or(0);
    assert!(
        drain < stop,
        "the drain is logged, then the shutdown:\n{log}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_signal_cuts_the_drain_short() -> Result<()> {
    let broker = Broker::start(&config("drain_ms = 600000", ""))?;
    let mut c = broker.client().await?;
    sigterm(&broker)?;
    broker.wait_readyz(503).await?;
    sigterm(&broker)?;
    let closed = c.closed(Duration::from_secs(10)).await?;
    assert_eq!(closed.code, Some(1001), "{closed:?}");
    assert!(broker.log_text().contains("drain cut short"));
    Ok(())
}

#[test]
fn a_drain_past_an_hour_is_a_config_error_naming_the_key() -> Result<()> {
    let err = herald_e2e::config_error(&config("drain_ms = 3600001", ""))?;
    assert!(
        err.contains("server.drain_ms") && err.contains("3600000"),
        "{err}"
    );
    assert_eq!(
        herald_e2e::check_config(&config("drain_ms = 3600000", ""))?.code,
        Some(0)
    );
    Ok(())
}
