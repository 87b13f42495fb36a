//! Shared helpers for the end-to-end tests: start the real `herald` binary on a free
//! port with a given config, and talk to it with real WebSocket and HTTP clients over
//! real sockets.
//!
//! The binary is the one cargo built for this workspace (`target/<profile>/herald`,
//! next to the test executable's `deps/` folder); it is built when missing.

pub mod jwks;
pub mod kafka;
pub mod nats;
pub mod sse;

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use anyhow::{anyhow, bail, Context as _, Result};
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// How long a test waits for something that should happen "within milliseconds".
pub const WAIT: Duration = Duration::from_secs(5);

/// Newest modification time under `dir` (recursively).
fn newest(dir: &std::path::Path) -> Option<std::time::SystemTime> {
    if dir.is_file() {
        return std::fs::metadata(dir).and_then(|m| m.modified()).ok();
    }
    let mut newest = None;
    for entry in std::fs::read_dir(dir).ok()?.flatten() {
        let path = entry.path();
        let time = if path.is_dir() {
            self::newest(&path)
        } else {
            entry.metadata().and_then(|m| m.modified()).ok()
        };
        newest = newest.max(time);
    }
    newest
}

/// What the broker binary is made of: its sources and the files it embeds with
/// `include_str!`.
const BROKER_SOURCES: [&str; 4] = [
    "broker",
    "bridges",
    "clients/js/herald.js",
    "docs/asyncapi.json",
];

/// The runnable examples (`examples/`), all built by one `cargo build`.
const EXAMPLES: [&str; 4] = ["embedded", "nats_publisher", "kafka_producer", "subscriber"];

/// `target/<profile>/` of the running test executable.
fn profile_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    // target/<profile>/deps/<test> → target/<profile>
    exe.parent()
        .and_then(|d| d.parent())
        .expect("target/<profile>")
        .to_path_buf()
}

/// Runs `cargo build <args>` when any of `outputs` is missing or older than the
/// newest of `sources` (paths from the repository root), so a test never runs a stale
/// binary.
fn build_if_stale(outputs: &[PathBuf], sources: &[&str], args: &[&str]) {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let newest_source = sources.iter().filter_map(|d| newest(&root.join(d))).max();
    let stale = outputs.iter().any(|out| {
        let built = std::fs::metadata(out).and_then(|m| m.modified()).ok();
        built.is_none() || newest_source > built
    });
    if stale {
        let status = Command::new(env!("CARGO"))
            .args(["build"])
            .args(args)
            .status()
            .expect("run cargo build");
        assert!(status.success(), "cargo build {} failed", args.join(" "));
    }
}

/// Path of the `herald` binary, built when missing or stale.
pub fn herald_bin() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let bin = profile_dir().join("herald");
        build_if_stale(
            std::slice::from_ref(&bin),
            &BROKER_SOURCES,
            &["-p", "herald-broker", "--bin", "herald"],
        );
        bin
    })
    .clone()
}

/// Path of an example binary (`target/<profile>/examples/<name>`); every example is
/// built when one is missing or older than the examples, the broker or what it
/// embeds.
pub fn example_bin(name: &str) -> PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    let dir = DIR.get_or_init(|| {
        let dir = profile_dir().join("examples");
        let outputs: Vec<PathBuf> = EXAMPLES.iter().map(|n| dir.join(n)).collect();
        let mut sources = BROKER_SOURCES.to_vec();
        sources.push("examples");
        build_if_stale(&outputs, &sources, &["-p", "herald-examples", "--examples"]);
        dir
    });
    assert!(EXAMPLES.contains(&name), "no example named {name}");
    dir.join(name)
}

/// The repository root (the workspace).
pub fn repo_root() -> PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .canonicalize()
        .expect("repository root")
}

/// A file of the repository, by its path from the root.
pub fn read(path: &str) -> Result<String> {
    std::fs::read_to_string(repo_root().join(path)).with_context(|| format!("read {path}"))
}

/// A running broker process. Killed when dropped.
pub struct Broker {
    child: Option<Child>,
    pub addr: String,
    /// The address of `server.admin_listen`, when the config sets one.
    pub admin: Option<String>,
    /// Everything the process logged (stdout and stderr), line by line.
    pub logs: Arc<Mutex<Vec<String>>>,
    _config: tempfile::NamedTempFile,
}

impl Broker {
    /// Starts `herald --config <toml>` listening on 127.0.0.1:0, and waits until it
    /// logs the address it bound.
    pub fn start(config_toml: &str) -> Result<Broker> {
        Self::start_with_env(config_toml, &[])
    }

    /// Like [`Broker::start`], with extra environment variables.
    pub fn start_with_env(config_toml: &str, env: &[(&str, &str)]) -> Result<Broker> {
        Self::start_on("127.0.0.1:0", config_toml, env)
    }

    /// Like [`Broker::start_with_env`], listening on `listen` (a node started again
    /// on the address a load balancer knows).
    pub fn start_on(listen: &str, config_toml: &str, env: &[(&str, &str)]) -> Result<Broker> {
        let mut file = tempfile::NamedTempFile::new()?;
        std::io::Write::write_all(&mut file, config_toml.as_bytes())?;
        let mut cmd = Command::new(herald_bin());
        cmd.arg("--config")
            .arg(file.path())
            .arg("--listen")
            .arg(listen)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().context("spawn herald")?;
        let logs = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = std::sync::mpsc::channel::<(String, Option<String>)>();
        for stream in [
            Box::new(child.stdout.take().expect("stdout")) as Box<dyn std::io::Read + Send>,
            Box::new(child.stderr.take().expect("stderr")),
        ] {
            let logs = logs.clone();
            let tx = tx.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines().map_while(Result::ok) {
                    if let Some(rest) = line.split("addr=").nth(1) {
                        if line.contains("herald listening") {
                            let addr = rest.split_whitespace().next().unwrap_or("").to_string();
                            let admin = line
                                .split("admin=\"")
                                .nth(1)
                                .and_then(|rest| rest.split('"').next().map(str::to_owned));
                            let _ = tx.send((addr, admin));
                        }
                    }
                    logs.lock().expect("logs").push(line);
                }
            });
        }
        let (addr, admin) = match rx.recv_timeout(Duration::from_secs(20)) {
            Ok(found) => found,
            Err(_) => {
                let _ = child.kill();
                let logs = logs.lock().expect("logs").join("\n");
                bail!("herald did not start; it logged:\n{logs}");
            }
        };
        Ok(Broker {
            child: Some(child),
            addr,
            admin,
            logs,
            _config: file,
        })
    }

    /// `http://addr`.
    pub fn http(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// `ws://addr/ws`.
    pub fn ws_url(&self) -> String {
        format!("ws://{}/ws", self.addr)
    }

    /// Process id (for /proc reads and signals).
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// Resident memory of the broker process, in KiB.
    pub fn rss_kib(&self) -> Result<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid()))?;
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| anyhow!("no VmRSS"))
    }

    /// Sends SIGTERM and waits (up to `timeout`) for the exit status.
    pub fn terminate(&mut self, timeout: Duration) -> Result<std::process::ExitStatus> {
        let mut child = self
            .child
            .take()
            .ok_or_else(|| anyhow!("already stopped"))?;
        let pid = i32::try_from(child.id())?;
        // SAFETY-free: libc::kill is a plain syscall wrapper; `unsafe` is needed by
        // its signature only. The workspace forbids unsafe in library code, so the
        // test helper shells out instead.
        let status = Command::new("kill")
            .arg("-TERM")
            .arg(pid.to_string())
            .status()?;
        if !status.success() {
            bail!("kill -TERM {pid} failed");
        }
        let deadline = std::time::Instant::now() + timeout;
        loop {
            if let Some(status) = child.try_wait()? {
                return Ok(status);
            }
            if std::time::Instant::now() > deadline {
                let _ = child.kill();
                bail!("herald did not exit within {timeout:?} of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Kills the process with SIGKILL (`kill -9`: no shutdown at all) and reaps it.
    pub fn kill(&mut self) -> Result<()> {
        let mut child = self
            .child
            .take()
            .ok_or_else(|| anyhow!("already stopped"))?;
        child.kill()?;
        child.wait()?;
        Ok(())
    }

    /// Open file descriptors of the process (entries of `/proc/<pid>/fd`).
    pub fn open_fds(&self) -> Result<usize> {
        Ok(std::fs::read_dir(format!("/proc/{}/fd", self.pid()))?.count())
    }

    /// Whether the Herald process still runs, from `/proc` (for failure messages).
    pub fn process_state(&self) -> String {
        let Some(pid) = self.child.as_ref().map(Child::id) else {
            return "not started".into();
        };
        match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
            Ok(stat) => match stat
                .rsplit(')')
                .next()
                .and_then(|r| r.split_whitespace().next())
            {
                // The last field is the exit status in waitpid(2) form.
                Some("Z") => {
                    let status: i32 = stat
                        .split_whitespace()
                        .last()
                        .and_then(|s| s.parse().ok())
                        .unwrap_or(-1);
                    match status & 0x7f {
                        0 => format!("pid {pid} exited with code {}", (status >> 8) & 0xff),
                        signal => format!("pid {pid} was killed by signal {signal}"),
                    }
                }
                Some(state) => format!("pid {pid} is running (state {state})"),
                None => format!("pid {pid}: unreadable state"),
            },
            Err(_) => format!("pid {pid} is gone"),
        }
    }

    /// All log lines so far, joined.
    pub fn log_text(&self) -> String {
        self.logs.lock().expect("logs").join("\n")
    }

    /// `POST /api/publish` with a raw body; returns (status, JSON body).
    pub async fn post_raw(
        &self,
        path: &str,
        body: impl Into<reqwest::Body>,
    ) -> Result<(u16, Value)> {
        let res = reqwest::Client::new()
            .post(format!("{}{path}", self.http()))
            .body(body)
            .send()
            .await?;
        let status = res.status().as_u16();
        let text = res.text().await?;
        let value = serde_json::from_str(&text).unwrap_or(Value::String(text));
        Ok((status, value))
    }

    /// Publishes one event over HTTP; returns (status, body) whatever they are.
    pub async fn publish_status(&self, topic: &str, data: Value) -> Result<(u16, Value)> {
        self.post_raw(
            "/api/publish",
            json!({"topic": topic, "data": data}).to_string(),
        )
        .await
    }

    /// Publishes one event over HTTP; fails unless 202.
    pub async fn publish(&self, topic: &str, data: Value) -> Result<()> {
        let (status, body) = self
            .post_raw(
                "/api/publish",
                json!({"topic": topic, "data": data}).to_string(),
            )
            .await?;
        if status != 202 {
            bail!("publish returned {status}: {body}");
        }
        Ok(())
    }

    /// `GET path` → (status, JSON or text).
    pub async fn get(&self, path: &str) -> Result<(u16, Value)> {
        let res = reqwest::get(format!("{}{path}", self.http())).await?;
        let status = res.status().as_u16();
        let text = res.text().await?;
        let value = serde_json::from_str(&text).unwrap_or(Value::String(text));
        Ok((status, value))
    }

    /// A connected client that has read its `welcome`.
    pub async fn client(&self) -> Result<Client> {
        Client::connect(&self.ws_url()).await
    }

    /// Waits (up to 15 s) until `/readyz` answers `status`; returns its body. A
    /// failure carries Herald's log, so a crash or a refused connection explains itself.
    pub async fn wait_readyz(&self, status: u16) -> Result<Value> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
        loop {
            let (code, body) = self.get("/readyz").await.with_context(|| {
                format!(
                    "GET /readyz ({}); herald logs:\n{}",
                    self.process_state(),
                    self.log_text()
                )
            })?;
            if code == status {
                return Ok(body);
            }
            if tokio::time::Instant::now() > deadline {
                bail!("/readyz stayed {code}: {body}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits (up to 15 s) until `/readyz` answers 503 with a reason containing
    /// `needle`; returns that reason.
    pub async fn wait_reason(&self, needle: &str) -> Result<String> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
        loop {
            let (code, body) = self.get("/readyz").await?;
            let found = body["reasons"].as_array().and_then(|r| {
                r.iter()
                    .filter_map(Value::as_str)
                    .find(|r| r.contains(needle))
            });
            if let (503, Some(reason)) = (code, found) {
                return Ok(reason.to_string());
            }
            if tokio::time::Instant::now() > deadline {
                bail!("/readyz never gave a reason containing {needle:?}; last: {code} {body}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Value of one Prometheus sample (`name{labels}` exactly as rendered).
    pub async fn metric(&self, sample: &str) -> Result<f64> {
        let (_, text) = self.get("/metrics").await?;
        let text = text.as_str().unwrap_or_default().to_string();
        text.lines()
            .find_map(|l| l.strip_prefix(sample).and_then(|r| r.strip_prefix(' ')))
            .and_then(|v| v.trim().parse().ok())
            .ok_or_else(|| anyhow!("no sample {sample}"))
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A WebSocket client speaking the Herald protocol.
pub struct Client {
    pub ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    pub welcome: Value,
    next_id: u64,
}

/// How a connection ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Closed {
    pub code: Option<u16>,
    pub reason: String,
}

impl Client {
    /// Upgrades without reading anything (for first-message auth: no `welcome`
    /// comes before `{"op":"auth"}`).
    pub async fn open(request: impl IntoClientRequest + Unpin) -> Result<Client> {
        let (ws, _) = tokio_tungstenite::connect_async(request).await?;
        Ok(Client {
            ws,
            welcome: Value::Null,
            next_id: 0,
        })
    }

    /// Connects and reads the `welcome`.
    pub async fn connect(url: &str) -> Result<Client> {
        Self::connect_with(url).await
    }

    /// Connects with a custom upgrade request (headers, query) and reads the
    /// `welcome`.
    pub async fn connect_with(request: impl IntoClientRequest + Unpin) -> Result<Client> {
        let mut client = Self::open(request).await?;
        let welcome = client.recv().await?;
        if welcome["type"] != "welcome" {
            bail!("first message was not welcome: {welcome}");
        }
        client.welcome = welcome;
        Ok(client)
    }

    /// Connects with a custom upgrade request (headers), without reading anything.
    pub async fn connect_request(
        request: impl IntoClientRequest + Unpin,
    ) -> Result<WebSocketStream<MaybeTlsStream<TcpStream>>, tokio_tungstenite::tungstenite::Error>
    {
        tokio_tungstenite::connect_async(request)
            .await
            .map(|(ws, _)| ws)
    }

    /// Sends a JSON value as a text frame.
    pub async fn send(&mut self, value: Value) -> Result<()> {
        self.ws.send(Message::text(value.to_string())).await?;
        Ok(())
    }

    /// Sends a raw text frame.
    pub async fn send_text(&mut self, text: &str) -> Result<()> {
        self.ws.send(Message::text(text.to_string())).await?;
        Ok(())
    }

    /// Next server message that is not a heartbeat `ping`, within [`WAIT`].
    pub async fn recv(&mut self) -> Result<Value> {
        self.recv_within(WAIT).await
    }

    /// Next server message that is not a heartbeat `ping`, within `timeout`.
    pub async fn recv_within(&mut self, timeout: Duration) -> Result<Value> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let v = self
                .recv_any(left)
                .await
                .map_err(|e| anyhow!("{e} (waited {timeout:?})"))?;
            if v["type"] != "ping" {
                return Ok(v);
            }
        }
    }

    /// Next server message of any type (pings included) within `timeout`.
    pub async fn recv_any(&mut self, timeout: Duration) -> Result<Value> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let msg = tokio::time::timeout_at(deadline, self.ws.next())
                .await
                .map_err(|_| anyhow!("no message within {timeout:?}"))?;
            match msg {
                Some(Ok(Message::Text(t))) => return Ok(serde_json::from_str(t.as_str())?),
                Some(Ok(Message::Close(frame))) => bail!("connection closed: {frame:?}"),
                Some(Ok(_)) => continue,
                Some(Err(e)) => bail!("websocket error: {e}"),
                None => bail!("connection ended"),
            }
        }
    }

    /// Asserts nothing but heartbeats arrives for `quiet`.
    pub async fn expect_silence(&mut self, quiet: Duration) -> Result<()> {
        let deadline = tokio::time::Instant::now() + quiet;
        loop {
            match tokio::time::timeout_at(deadline, self.ws.next()).await {
                Err(_) => return Ok(()),
                Ok(Some(Ok(Message::Text(t)))) => {
                    let v: Value = serde_json::from_str(t.as_str())?;
                    if v["type"] != "ping" {
                        bail!("expected silence, got {v}");
                    }
                }
                Ok(Some(Ok(_))) => {}
                Ok(other) => bail!("expected silence, got {other:?}"),
            }
        }
    }

    /// Waits for the server to close the connection and answers its close frame as
    /// a browser does, at once; returns the server's close code.
    ///
    /// tungstenite only queues its answer until the next read or flush: a client
    /// that never sends it holds the server's session open until the server's close
    /// timeout (5 s), which is also the default shutdown grace period.
    pub async fn closed(&mut self, timeout: Duration) -> Result<Closed> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            match tokio::time::timeout_at(deadline, self.ws.next()).await {
                Err(_) => bail!("not closed within {timeout:?}"),
                Ok(Some(Ok(Message::Close(frame)))) => {
                    // Best effort: the server may be gone already (killed, say).
                    let _ = tokio::time::timeout_at(deadline, self.ws.flush()).await;
                    return Ok(Closed {
                        code: frame.as_ref().map(|f| u16::from(f.code)),
                        reason: frame.map(|f| f.reason.to_string()).unwrap_or_default(),
                    });
                }
                Ok(Some(Ok(_))) => {}
                Ok(Some(Err(e))) => bail!("connection failed without a close frame: {e}"),
                Ok(None) => bail!("connection ended without a close frame"),
            }
        }
    }

    /// A fresh request id.
    pub fn id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }

    /// Sends a request with a fresh id and returns the reply carrying that id
    /// (anything else received meanwhile is returned in the second element).
    pub async fn request(&mut self, mut op: Value) -> Result<(Value, Vec<Value>)> {
        let id = self.id();
        op["id"] = json!(id);
        self.send(op).await?;
        let mut other = Vec::new();
        loop {
            let v = self.recv().await?;
            if v["id"] == json!(id) {
                return Ok((v, other));
            }
            other.push(v);
        }
    }

    /// Subscribes and asserts the `subscribed` reply.
    pub async fn subscribe(&mut self, topics: &[&str]) -> Result<()> {
        let (reply, _) = self
            .request(json!({"op": "subscribe", "topics": topics}))
            .await?;
        if reply["type"] != "subscribed" {
            bail!("subscribe failed: {reply}");
        }
        Ok(())
    }

    /// Next message, asserting it is an event; returns it.
    pub async fn event(&mut self) -> Result<Value> {
        let v = self.recv().await?;
        if v["type"] != "event" {
            bail!("expected an event, got {v}");
        }
        Ok(v)
    }
}

/// What `herald check-config --config FILE` did with `toml`.
#[derive(Debug)]
pub struct CheckConfig {
    /// The exit code (0 valid, 2 a config error).
    pub code: Option<i32>,
    /// The effective configuration, secrets masked (when valid).
    pub stdout: String,
    /// The verdict, or the error naming the key.
    pub stderr: String,
}

/// Runs `herald check-config` on `toml` written to a temporary file.
pub fn check_config(toml: &str) -> Result<CheckConfig> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("herald.toml");
    std::fs::write(&path, toml)?;
    let out = Command::new(herald_bin())
        .args(["check-config", "--config"])
        .arg(&path)
        .output()?;
    Ok(CheckConfig {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    })
}

/// The error `herald check-config` gives for `toml`; fails if it was accepted.
pub fn config_error(toml: &str) -> Result<String> {
    let out = check_config(toml)?;
    if out.code == Some(0) {
        bail!("accepted: {toml}");
    }
    Ok(out.stderr)
}

/// The close code as tungstenite reports it.
pub fn code(c: CloseCode) -> u16 {
    u16::from(c)
}

/// A config: `server` lines go into `[server]` (which always sets two shards and
/// two workers, so cross-shard paths are exercised), `rest` is appended verbatim
/// (other sections).
pub fn config(server: &str, rest: &str) -> String {
    format!("[server]\nshards = 2\nworkers = 2\n{server}\n{rest}\n")
}

/// A response header as text (`""` when absent or not text).
pub fn header(res: &reqwest::Response, name: &str) -> String {
    res.headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned()
}

/// An HS256 JWT of `claims`, signed with `secret`.
pub fn hs256(secret: &str, claims: &Value) -> String {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        claims,
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )
    .expect("an HS256 token encodes")
}

/// `POST /api/tickets` on `broker` as the holder of `token`: the ticket (asserting
/// `201`).
pub async fn ticket(broker: &Broker, token: &str) -> Result<String> {
    let res = reqwest::Client::new()
        .post(format!("{}/api/tickets", broker.http()))
        .bearer_auth(token)
        .send()
        .await?;
    let status = res.status();
    let body: Value = res.json().await.unwrap_or(Value::Null);
    if status != 201 {
        bail!("POST /api/tickets: {status} {body}");
    }
    Ok(body["ticket"].as_str().context("no ticket")?.to_owned())
}

/// The status a WebSocket upgrade gets: 101, or the refusal's.
pub async fn upgrade_status(request: impl IntoClientRequest + Unpin) -> Result<u16> {
    match tokio_tungstenite::connect_async(request).await {
        Ok((_, res)) => Ok(res.status().as_u16()),
        Err(tokio_tungstenite::tungstenite::Error::Http(res)) => Ok(res.status().as_u16()),
        Err(e) => bail!("upgrade: {e}"),
    }
}
