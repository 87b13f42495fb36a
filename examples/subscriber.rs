//! A terminal subscriber that does everything a well-behaved Herald client should:
//! it prints one line per event, answers heartbeats, notices a silent server,
//! reconnects with exponential backoff and full jitter, resumes every topic from the
//! last `epoch`/`seq` it saw, and says so whenever it learns it lost something (a
//! `seq` gap, a `lagged` notice, a `reset`). A starting point for a real client.
//!
//! Run it (against a Herald on 127.0.0.1:8080):
//!     cargo run -p herald-examples --example subscriber -- ws://127.0.0.1:8080/ws 'orders.>' --last 5
//! Arguments: the WebSocket URL, one or more topic patterns, `--last N` (replay up to
//! N recent events per topic on the first subscribe), `--token T` (or
//! `HERALD_TOKEN`: a JWT sent as `Authorization: Bearer` on the upgrade when Herald
//! runs with auth), or `--token-file PATH` (or `HERALD_TOKEN_FILE`: a file holding the
//! JWT, which something else keeps fresh, such as a sidecar or a Kubernetes projected
//! token).
//!
//! With `--token-file` the subscriber keeps its connection past the token's `exp`: a
//! while before it (a minute, or a quarter of what is left of a short-lived token, a
//! little earlier at random), it reads the file again and sends the token on the open
//! connection (`{"op":"auth"}`, docs/security.md#lifetimes-and-refresh). The session
//! takes the new `exp` and keeps its subscription. When the file holds no newer token
//! yet, or the broker refuses it (another `sub`: `forbidden`), it says so and tries
//! again with backoff while the current token lasts. The file is also read for every
//! connection. A `--token` is never refreshed.
//!
//! Output, all on stdout so that a notice sits where it happened between the events
//! (times are UTC, the broker's receive time):
//!     12:03:04.120 orders.order-482917 #3 key=order-482917 {"id":"order-482917","status":"paid",…}
//!     -- gap: orders.eu missed 2 events (#5 to #6)
//!     -- disconnected: connection reset; reconnecting in 0.8 s
//!     -- resuming epoch 01J…: orders.eu after #7
//!     12:03:09.002 orders.eu #8 (replay) {"id":8}
//!     -- reset orders.eu (epoch_changed): the missed events cannot be replayed; refetch its state
//!     -- token refreshed in place: the session now ends at 12:18:09 UTC
//!
//! Close codes (docs/protocol.md#7-close-codes): 1001 (broker restarting) reconnects after a
//! short random delay; 4001 (unauthorized) stops with exit status 2, since the same
//! token would be refused again (with `--token-file` it reconnects with the file's
//! token, and a refused upgrade, 401, stops with status 2); protocol errors (1002, 1003, 1007, 1009) stop with
//! status 1; everything else reconnects with backoff. An upgrade refused with 503 and
//! `Retry-After` (a node that is full, shutting down, or taking too many connections
//! at once, `server.max_upgrades_per_s`) waits at least that long.
//!
//! One limit of `resume`: it covers the topics this client has seen. Events of a
//! topic first published while the client was away are not replayed (`resume` and
//! `last` are exclusive).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use clap::Parser;
use futures_util::{SinkExt, StreamExt};
use rand::Rng;
use serde_json::{json, Value};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

/// The subprotocol of docs/protocol.md.
const SUBPROTOCOL: &str = "herald.v1.json";
/// First reconnect delay bound; doubled per failed attempt, up to [`BACKOFF_MAX`].
const BACKOFF_BASE: Duration = Duration::from_millis(500);
/// Largest reconnect delay bound.
const BACKOFF_MAX: Duration = Duration::from_secs(30);
/// Bound of the random delay before reconnecting after 1001 (broker restarting):
/// spreads the clients of a restarted broker instead of having all come back at once.
const RESTART_JITTER: Duration = Duration::from_secs(2);
/// Least delay after 4029 (rate limited): "reconnect later".
const RATE_LIMITED_DELAY: Duration = Duration::from_secs(5);
/// How long the server has to send `welcome` after the upgrade.
const WELCOME_TIMEOUT: Duration = Duration::from_secs(10);
/// With `--token-file`: refresh this long before the token's `exp` at most (a token
/// with less than four times this left is refreshed when a quarter of it is left).
const REFRESH_MARGIN: Duration = Duration::from_secs(60);
/// Refreshes come at least this far apart, whatever the clocks say.
const MIN_REFRESH_WAIT: Duration = Duration::from_secs(1);
/// How long the broker has to answer a refresh before it counts as failed.
const REFRESH_REPLY_TIMEOUT: Duration = Duration::from_secs(10);
/// The request ids this client uses.
const SUBSCRIBE_ID: u64 = 1;
const REFRESH_ID: u64 = 2;

#[derive(Debug, Parser)]
#[command(about = "Subscribe to Herald topics and print every event, reconnecting and resuming")]
struct Args {
    /// Herald's WebSocket URL, such as ws://127.0.0.1:8080/ws.
    url: String,
    /// Topic patterns to subscribe to (`orders.>`, `metrics.*.latency_ms`).
    #[arg(required = true)]
    patterns: Vec<String>,
    /// On the first subscribe, replay up to N recent events of each matching topic.
    #[arg(long)]
    last: Option<u32>,
    /// A JWT, sent as `Authorization: Bearer` on the upgrade. Never refreshed: the
    /// subscriber stops when the broker closes with 4001 at its `exp`.
    #[arg(long, env = "HERALD_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// A file holding a JWT, kept fresh by something else. It is read for every
    /// connection (`Authorization: Bearer` on the upgrade), and again before the
    /// token's `exp` to refresh the session in place (`{"op":"auth"}`), keeping the
    /// subscription.
    #[arg(
        long,
        env = "HERALD_TOKEN_FILE",
        hide_env_values = true,
        conflicts_with = "token"
    )]
    token_file: Option<PathBuf>,
}

impl Args {
    /// The JWT for a new connection, if any: `--token`, or what `--token-file` holds now.
    fn token(&self) -> Result<Option<String>, String> {
        match (&self.token, &self.token_file) {
            (Some(token), _) => Ok(Some(token.clone())),
            (None, Some(path)) => read_token(path).map(Some),
            (None, None) => Ok(None),
        }
    }
}

/// The JWT in a token file, without surrounding whitespace. A blocking read is fine
/// here: the file is small, and the subscriber has nothing else to do meanwhile.
fn read_token(path: &Path) -> Result<String, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read the token file {}: {e}", path.display()))?;
    let token = text.trim();
    if token.is_empty() {
        return Err(format!("the token file {} is empty", path.display()));
    }
    Ok(token.to_owned())
}

/// The `exp` claim (Unix seconds) of a JWT, read without verifying anything (the
/// broker verifies; the subscriber only needs to know when to refresh). None when the
/// token has none, or is not a JWT whose payload can be read.
fn jwt_exp(token: &str) -> Option<u64> {
    let payload = base64url_decode(token.split('.').nth(1)?)?;
    serde_json::from_slice::<Value>(&payload).ok()?["exp"].as_u64()
}

/// Base64url without padding, as JWTs use it (a trailing `=` is tolerated).
fn base64url_decode(text: &str) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(text.len() * 3 / 4);
    let (mut acc, mut bits) = (0u32, 0u32);
    for c in text.trim_end_matches('=').bytes() {
        let value = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'-' => 62,
            b'_' => 63,
            _ => return None,
        };
        acc = (acc << 6) | u32::from(value);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push(u8::try_from(acc >> bits).ok()?);
            acc &= (1 << bits) - 1;
        }
    }
    Some(out)
}

/// Milliseconds since the Unix epoch, by this machine's clock.
fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// With `--token-file`: refreshing the session's token in place before its `exp`.
#[derive(Debug)]
struct Refresh {
    path: PathBuf,
    /// The `exp` of the session's current token (Unix seconds); None: unknown, so
    /// nothing to plan.
    expires: Option<u64>,
    /// When to act next: read the file and send, or give up waiting for a reply.
    at: Option<Instant>,
    /// A refresh was sent and not answered yet, with the `exp` of its token.
    awaiting: Option<Option<u64>>,
    /// Failed refreshes since the last accepted one.
    backoff: Backoff,
}

impl Refresh {
    /// For a session opened with `token`, read from `path`.
    fn new(path: &Path, token: &str) -> Refresh {
        let mut refresh = Refresh {
            path: path.to_owned(),
            expires: None,
            at: None,
            awaiting: None,
            backoff: Backoff { attempt: 0 },
        };
        refresh.plan(jwt_exp(token));
        refresh
    }

    /// The session now ends at `expires`: refresh a while before, a little earlier at
    /// random so that many subscribers given tokens together do not all come at once.
    fn plan(&mut self, expires: Option<u64>) {
        self.expires = expires;
        // A token that expires too far ahead for a timer is never refreshed.
        self.at = expires.and_then(|exp| {
            let left = exp.saturating_mul(1000).saturating_sub(now_ms());
            let left = Duration::from_millis(left);
            let margin = REFRESH_MARGIN.min(left / 4);
            let jitter = 1.0 - 0.1 * rand::rng().random_range(0.0..1.0);
            Instant::now().checked_add((left - margin).mul_f64(jitter).max(MIN_REFRESH_WAIT))
        });
    }

    /// The time has come: the `auth` message to send, if the file holds a newer token.
    /// When a reply is overdue, that refresh has failed.
    fn due(&mut self) -> Option<Message> {
        if self.awaiting.take().is_some() {
            self.failed(&format!(
                "no reply within {} s",
                REFRESH_REPLY_TIMEOUT.as_secs()
            ));
            return None;
        }
        let token = match read_token(&self.path) {
            Ok(token) => token,
            Err(e) => {
                self.failed(&e);
                return None;
            }
        };
        let exp = jwt_exp(&token);
        if let (Some(new), Some(current)) = (exp, self.expires) {
            if new <= current {
                self.failed("the token file holds no newer token yet");
                return None;
            }
        }
        self.awaiting = Some(exp);
        self.at = Some(Instant::now() + REFRESH_REPLY_TIMEOUT);
        Some(Message::text(
            json!({"op": "auth", "id": REFRESH_ID, "token": token}).to_string(),
        ))
    }

    /// The broker took the new token: the session lasts until its `exp`.
    fn accepted(&mut self) {
        let Some(expires) = self.awaiting.take() else {
            return;
        };
        self.backoff.reset();
        self.plan(expires);
        match expires {
            Some(exp) => notice(&format!(
                "token refreshed in place: the session now ends at {} UTC",
                &clock(exp.saturating_mul(1000))[..8]
            )),
            None => notice("token refreshed in place: the new token does not expire"),
        }
    }

    /// The refresh did not work: try again with backoff while the current token
    /// lasts. After that the broker closes with 4001, and the subscriber reconnects
    /// with whatever the file then holds.
    fn failed(&mut self, why: &str) {
        self.awaiting = None;
        let wait = self.backoff.next(&mut rand::rng());
        let retry_before = self.expires.map(|exp| exp.saturating_mul(1000));
        if retry_before.is_some_and(|exp| now_ms().saturating_add(wait_ms(wait)) < exp) {
            self.at = Some(Instant::now() + wait);
            notice(&format!(
                "token refresh failed: {why}; retrying in {:.1} s",
                wait.as_secs_f64()
            ));
        } else {
            self.at = None;
            notice(&format!(
                "token refresh failed: {why}; the broker will close the session when the current token expires"
            ));
        }
    }
}

/// A duration in whole milliseconds.
fn wait_ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Resolves at `at`, or never.
async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// What the client remembers across connections: the epoch of the broker process its
/// positions belong to (with cluster history, of the stream: the same on every node),
/// and the last `seq` seen per topic.
#[derive(Debug, Default)]
struct Positions {
    epoch: Option<String>,
    seqs: BTreeMap<String, u64>,
    /// Cluster history: the last `seq` of `local` events per topic. They count on the
    /// node of this connection only: compared among themselves, never resumed, and
    /// forgotten with the connection.
    local: BTreeMap<String, u64>,
}

/// What an event's `seq` says about the events before it.
#[derive(Debug, PartialEq, Eq)]
enum Observed {
    /// The first event of a topic, or the one after the last seen.
    InOrder,
    /// Events `from..=to` of the topic never arrived.
    Gap { from: u64, to: u64 },
    /// A `seq` at or below the last seen: the topic started counting again.
    Restarted { last: u64 },
}

impl Positions {
    /// Records an event of `topic` with `seq`, its `prev` (cluster history: the
    /// position before it, positions not being contiguous), and whether it is
    /// `local`. The rule: a gap is `prev` (when present, else `seq - 1`) differing
    /// from the last `seq` seen of the topic.
    fn observe(&mut self, topic: &str, seq: u64, prev: Option<u64>, local: bool) -> Observed {
        let seen = if local {
            &mut self.local
        } else {
            &mut self.seqs
        };
        let last = seen.insert(topic.to_owned(), seq);
        let before = prev.unwrap_or(seq.saturating_sub(1));
        match last {
            None => Observed::InOrder,
            Some(last) if seq <= last => Observed::Restarted { last },
            Some(last) if before == last => Observed::InOrder,
            Some(last) => Observed::Gap {
                from: last + 1,
                to: before.max(last + 1),
            },
        }
    }

    /// A new connection: `local` positions belonged to the previous one's node.
    fn connected(&mut self) {
        self.local.clear();
    }

    /// Forgets a topic after `reset`: its next event starts a new count.
    fn reset(&mut self, topic: &str) {
        self.seqs.remove(topic);
    }

    /// The `resume` object of a subscribe, when there is anything to resume.
    fn resume(&self) -> Option<Value> {
        let epoch = self.epoch.as_ref()?;
        if self.seqs.is_empty() {
            return None;
        }
        Some(json!({ "epoch": epoch, "topics": self.seqs }))
    }
}

/// Exponential backoff with full jitter: attempt n waits a random time between 0 and
/// min(max, base × 2ⁿ), so that clients cut off together do not return together.
#[derive(Debug)]
struct Backoff {
    attempt: u32,
}

impl Backoff {
    fn next(&mut self, rng: &mut impl Rng) -> Duration {
        let bound = BACKOFF_BASE
            .saturating_mul(1 << self.attempt.min(16))
            .min(BACKOFF_MAX);
        self.attempt = self.attempt.saturating_add(1);
        bound.mul_f64(rng.random_range(0.0..=1.0))
    }

    fn reset(&mut self) {
        self.attempt = 0;
    }
}

/// A `Retry-After` in seconds (the form Herald sends), capped at a minute.
fn retry_after(headers: &tokio_tungstenite::tungstenite::http::HeaderMap) -> Option<Duration> {
    let seconds: u64 = headers
        .get("retry-after")?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()?;
    Some(Duration::from_secs(seconds.min(60)))
}

/// How far a connection got.
#[derive(Debug, Default)]
struct Progress {
    /// The broker sent `welcome`: a later failure is a disconnection.
    connected: bool,
    /// The broker accepted the subscription: the backoff starts over.
    subscribed: bool,
}

/// How a connection ended, and so what to do next.
#[derive(Debug)]
enum End {
    /// Reconnect after the backoff delay.
    Retry(String),
    /// The broker is restarting (1001): reconnect after a short random delay.
    Restarting,
    /// Rate limited repeatedly (4029): reconnect, but not soon.
    RateLimited,
    /// The upgrade was refused for now (503) with `Retry-After`: wait that long
    /// (and at least the backoff).
    RetryAfter(String, Duration),
    /// Reconnecting cannot help: stop with this exit status.
    Stop(u8, String),
}

/// One connection: upgrade, `welcome`, subscribe (resuming when there is something
/// to resume), then events until the connection ends.
async fn session(args: &Args, positions: &mut Positions, progress: &mut Progress) -> End {
    let mut request = match args.url.as_str().into_client_request() {
        Ok(r) => r,
        Err(e) => return End::Stop(1, format!("bad URL: {e}")),
    };
    let headers = request.headers_mut();
    headers.insert(
        "sec-websocket-protocol",
        HeaderValue::from_static(SUBPROTOCOL),
    );
    // Read for every connection: a token file may hold a fresher token by now.
    let token = match args.token() {
        Ok(token) => token,
        Err(e) => return End::Retry(e),
    };
    if let Some(token) = &token {
        match HeaderValue::from_str(&format!("Bearer {token}")) {
            Ok(v) => headers.insert("authorization", v),
            Err(_) => return End::Stop(1, "the token is not a valid header value".into()),
        };
    }
    let ws = match tokio_tungstenite::connect_async(request).await {
        Ok((ws, _)) => ws,
        Err(WsError::Http(response)) => {
            let status = response.status().as_u16();
            let body = response
                .body()
                .as_deref()
                .map(String::from_utf8_lossy)
                .unwrap_or_default()
                .into_owned();
            let retry_after = retry_after(response.headers());
            return match (status, retry_after) {
                (401, _) => End::Stop(2, format!("unauthorized (401): {body}")),
                (400 | 403, _) => End::Stop(1, format!("upgrade refused ({status}): {body}")),
                (_, Some(wait)) => {
                    End::RetryAfter(format!("upgrade refused ({status}): {body}"), wait)
                }
                _ => End::Retry(format!("upgrade refused ({status}): {body}")),
            };
        }
        Err(e) => return End::Retry(format!("cannot connect: {e}")),
    };
    let (mut sink, mut stream) = ws.split();

    let welcome = match tokio::time::timeout(WELCOME_TIMEOUT, stream.next()).await {
        Ok(Some(Ok(Message::Text(text)))) => serde_json::from_str::<Value>(&text).ok(),
        Ok(Some(Ok(Message::Close(frame)))) => return closed(frame.as_ref(), args),
        Ok(Some(Err(e))) => return End::Retry(format!("connection failed: {e}")),
        Ok(_) => None,
        Err(_) => return End::Retry("no welcome from the server".into()),
    };
    let Some(welcome) = welcome.filter(|w| w["type"] == "welcome") else {
        return End::Retry("the first message was not a welcome".into());
    };
    progress.connected = true;
    positions.connected();
    let epoch = welcome["epoch"].as_str().unwrap_or_default().to_owned();
    notice(&format!(
        "connected to {}: node {}, epoch {epoch}",
        redacted(&args.url),
        welcome["node"].as_str().unwrap_or("?"),
    ));
    // The server closes a client silent for interval + timeout; the same silence
    // from the server means the connection is dead (docs/protocol.md#5-heartbeats-and-timeouts).
    let heartbeat = &welcome["heartbeat"];
    let silence = Duration::from_millis(
        heartbeat["interval_ms"].as_u64().unwrap_or(25_000)
            + heartbeat["timeout_ms"].as_u64().unwrap_or(10_000),
    );

    // With a token file, the session's token is refreshed in place before it expires.
    let mut refresh = match (&args.token_file, &token) {
        (Some(path), Some(token)) => Some(Refresh::new(path, token)),
        _ => None,
    };

    let mut subscribe = json!({"op": "subscribe", "id": SUBSCRIBE_ID, "topics": args.patterns});
    if let Some(resume) = positions.resume() {
        let from: Vec<String> = positions
            .seqs
            .iter()
            .map(|(topic, seq)| format!("{topic} after #{seq}"))
            .collect();
        notice(&format!(
            "resuming epoch {}: {}",
            positions.epoch.as_deref().unwrap_or("?"),
            from.join(", ")
        ));
        subscribe["resume"] = resume;
    } else if let Some(last) = args.last {
        subscribe["last"] = json!(last);
    }
    // From here on, positions are counted in this broker process's epoch; the
    // broker answers every resumed topic of another epoch with a `reset`, which
    // forgets it.
    positions.epoch = Some(epoch);
    if let Err(e) = sink.send(Message::text(subscribe.to_string())).await {
        return End::Retry(format!("connection failed: {e}"));
    }

    let mut silent_until = Instant::now() + silence;
    loop {
        let next = tokio::select! {
            next = tokio::time::timeout_at(silent_until, stream.next()) => next,
            () = sleep_until(refresh.as_ref().and_then(|r| r.at)) => {
                let auth = refresh.as_mut().and_then(Refresh::due);
                if let Some(auth) = auth {
                    if let Err(e) = sink.send(auth).await {
                        return End::Retry(format!("connection failed: {e}"));
                    }
                }
                continue;
            }
        };
        let message = match next {
            Err(_) => {
                return End::Retry(format!(
                    "nothing from the server for {:.1} s",
                    silence.as_secs_f64()
                ))
            }
            Ok(None) => return End::Retry("connection ended".into()),
            Ok(Some(Err(e))) => return End::Retry(format!("connection failed: {e}")),
            Ok(Some(Ok(message))) => message,
        };
        silent_until = Instant::now() + silence;
        let text = match message {
            Message::Text(text) => text,
            Message::Close(frame) => return closed(frame.as_ref(), args),
            // Protocol Pings are answered by tungstenite itself.
            _ => continue,
        };
        let Ok(v) = serde_json::from_str::<Value>(&text) else {
            notice("the server sent something that is not JSON; ignored");
            continue;
        };
        match v["type"].as_str().unwrap_or_default() {
            "event" => print_event(&v, positions),
            "ping" => {
                if let Err(e) = sink.send(Message::text(r#"{"op":"pong"}"#)).await {
                    return End::Retry(format!("connection failed: {e}"));
                }
            }
            "subscribed" => {
                progress.subscribed = true;
                notice(&format!("subscribed: {}", list(&v["topics"])));
            }
            "lagged" => notice(&format!(
                "lagged: the broker dropped {} events for this connection (it could not keep up)",
                v["dropped"]
            )),
            "reset" => {
                let topic = v["topic"].as_str().unwrap_or_default();
                positions.reset(topic);
                notice(&format!(
                    "reset {topic} ({}): the missed events cannot be replayed; refetch its state",
                    v["reason"].as_str().unwrap_or("?")
                ));
            }
            "ok" if v["id"] == REFRESH_ID => {
                if let Some(refresh) = &mut refresh {
                    refresh.accepted();
                }
            }
            // A refused refresh leaves the session as it was, until its token expires.
            "error" if v["id"] == REFRESH_ID => {
                if let Some(refresh) = &mut refresh {
                    refresh.failed(&format!(
                        "refused: {} ({})",
                        v["message"].as_str().unwrap_or_default(),
                        v["code"].as_str().unwrap_or_default()
                    ));
                }
            }
            // The subscribe itself was refused (a bad pattern, not allowed): the same
            // request would be refused again.
            "error" if v["id"] == SUBSCRIBE_ID => {
                return End::Stop(
                    1,
                    format!(
                        "subscribe refused: {} ({})",
                        v["message"].as_str().unwrap_or_default(),
                        v["code"].as_str().unwrap_or_default()
                    ),
                )
            }
            _ => notice(&format!("server says: {v}")),
        }
    }
}

/// What to do after the server's close frame.
fn closed(
    frame: Option<&tokio_tungstenite::tungstenite::protocol::CloseFrame>,
    args: &Args,
) -> End {
    let Some(frame) = frame else {
        return End::Retry("closed without a code".into());
    };
    let code = u16::from(frame.code);
    let why = format!("closed with {code} {}", frame.reason);
    match frame.code {
        CloseCode::Away => End::Restarting,
        CloseCode::Protocol | CloseCode::Unsupported | CloseCode::Invalid | CloseCode::Size => {
            End::Stop(1, format!("{why}: a client bug, not retrying"))
        }
        // The token file may hold a good token by now (if it does not, the upgrade is
        // refused with 401, which stops).
        _ if code == 4001 && args.token_file.is_some() => {
            End::Retry(format!("{why}: reading the token file again"))
        }
        _ if code == 4001 => End::Stop(2, format!("{why}: get a new token, then run again")),
        _ if code == 4029 => End::RateLimited,
        _ => End::Retry(why),
    }
}

/// Prints an event line, after a gap notice when its `seq` says events are missing.
fn print_event(v: &Value, positions: &mut Positions) {
    let topic = v["topic"].as_str().unwrap_or_default();
    let seq = v["seq"].as_u64().unwrap_or_default();
    let prev = v["prev"].as_u64();
    match positions.observe(topic, seq, prev, v["local"] == true) {
        Observed::InOrder => {}
        // Cluster positions are not contiguous: no count, the range they fell in.
        Observed::Gap { from, to } if prev.is_some() => notice(&format!(
            "gap: {topic} missed events (positions #{from} to #{to}, the last #{to})"
        )),
        Observed::Gap { from, to } => notice(&format!(
            "gap: {topic} missed {} events (#{from} to #{to})",
            to - from + 1
        )),
        Observed::Restarted { last } => notice(&format!(
            "{topic} counts from #{seq} again (last seen #{last}): the broker forgot the topic"
        )),
    }
    let replay = if v["replay"] == true { " (replay)" } else { "" };
    let key = v["key"]
        .as_str()
        .map(|k| format!(" key={k}"))
        .unwrap_or_default();
    let data = match (v.get("data"), v["data_b64"].as_str()) {
        (Some(data), _) => data.to_string(),
        (None, Some(b64)) => format!("base64:{b64}"),
        (None, None) => "null".into(),
    };
    println!(
        "{} {topic} #{seq}{replay}{key} {data}",
        clock(v["ts"].as_u64().unwrap_or_default())
    );
}

/// `HH:MM:SS.mmm` (UTC) of a Unix time in milliseconds.
fn clock(ts_ms: u64) -> String {
    let ms_of_day = ts_ms % 86_400_000;
    let (h, rest) = (ms_of_day / 3_600_000, ms_of_day % 3_600_000);
    let (m, rest) = (rest / 60_000, rest % 60_000);
    format!("{h:02}:{m:02}:{:02}.{:03}", rest / 1000, rest % 1000)
}

/// A JSON array of strings as `a, b`.
fn list(v: &Value) -> String {
    v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .collect::<Vec<_>>()
                .join(", ")
        })
        .unwrap_or_default()
}

/// The URL without its query (it may hold a ticket, which is never printed).
fn redacted(url: &str) -> &str {
    url.split('?').next().unwrap_or(url)
}

/// A line about the connection rather than an event.
fn notice(text: &str) {
    println!("-- {text}");
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let args = Args::parse();
    let mut positions = Positions::default();
    let mut backoff = Backoff { attempt: 0 };
    let mut rng = rand::rng();
    loop {
        let mut progress = Progress::default();
        let end = session(&args, &mut positions, &mut progress).await;
        if progress.subscribed {
            // The connection worked: start the backoff over.
            backoff.reset();
        }
        let (why, delay) = match end {
            End::Stop(status, why) => {
                notice(&format!("{why}; stopping"));
                return ExitCode::from(status);
            }
            End::Restarting => (
                "the broker is restarting (1001)".to_owned(),
                RESTART_JITTER.mul_f64(rng.random_range(0.0..=1.0)),
            ),
            End::RateLimited => (
                "rate limited (4029)".to_owned(),
                backoff.next(&mut rng).max(RATE_LIMITED_DELAY),
            ),
            End::Retry(why) => (why, backoff.next(&mut rng)),
            End::RetryAfter(why, wait) => (why, backoff.next(&mut rng).max(wait)),
        };
        let what = if progress.connected {
            "disconnected: "
        } else {
            ""
        };
        notice(&format!(
            "{what}{why}; reconnecting in {:.1} s",
            delay.as_secs_f64()
        ));
        tokio::time::sleep(delay).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seq_jumps_are_gaps_and_going_back_is_a_restart() {
        let mut p = Positions::default();
        assert_eq!(p.observe("a", 4, None, false), Observed::InOrder);
        assert_eq!(p.observe("a", 5, None, false), Observed::InOrder);
        assert_eq!(
            p.observe("a", 9, None, false),
            Observed::Gap { from: 6, to: 8 }
        );
        assert_eq!(p.observe("b", 1, None, false), Observed::InOrder);
        assert_eq!(
            p.observe("a", 1, None, false),
            Observed::Restarted { last: 9 }
        );
        p.reset("a");
        assert_eq!(p.observe("a", 7, None, false), Observed::InOrder);
    }

    #[test]
    fn cluster_positions_are_checked_by_prev_and_local_ones_apart() {
        let mut p = Positions::default();
        assert_eq!(p.observe("a", 10, None, false), Observed::InOrder);
        // Not contiguous, yet nothing missed: prev names the last one seen.
        assert_eq!(p.observe("a", 14, Some(10), false), Observed::InOrder);
        assert_eq!(
            p.observe("a", 30, Some(21), false),
            Observed::Gap { from: 15, to: 21 }
        );
        // A node-local seq 2 is no restart of the stream positions.
        assert_eq!(p.observe("a", 1, None, true), Observed::InOrder);
        assert_eq!(
            p.observe("a", 3, None, true),
            Observed::Gap { from: 2, to: 2 }
        );
        assert_eq!(p.observe("a", 31, Some(30), false), Observed::InOrder);
        p.connected();
        assert_eq!(p.observe("a", 1, None, true), Observed::InOrder);
        p.epoch = Some("HIST-1".into());
        assert_eq!(
            p.resume(),
            Some(json!({"epoch": "HIST-1", "topics": {"a": 31}})),
            "local positions are never resumed"
        );
    }

    #[test]
    fn resume_lists_every_topic_seen_in_the_epoch() {
        let mut p = Positions::default();
        p.observe("orders.eu", 41, None, false);
        assert_eq!(p.resume(), None, "no epoch yet: nothing to resume");
        p.epoch = Some("E1".into());
        p.observe("orders.us", 7, None, false);
        assert_eq!(
            p.resume(),
            Some(json!({"epoch": "E1", "topics": {"orders.eu": 41, "orders.us": 7}}))
        );
        p.reset("orders.eu");
        p.reset("orders.us");
        assert_eq!(p.resume(), None);
    }

    #[test]
    fn retry_after_is_read_in_seconds_and_capped() {
        use tokio_tungstenite::tungstenite::http::{HeaderMap, HeaderValue};
        let mut h = HeaderMap::new();
        assert_eq!(retry_after(&h), None);
        h.insert("retry-after", HeaderValue::from_static("3"));
        assert_eq!(retry_after(&h), Some(Duration::from_secs(3)));
        h.insert("retry-after", HeaderValue::from_static("86400"));
        assert_eq!(retry_after(&h), Some(Duration::from_secs(60)));
        h.insert(
            "retry-after",
            HeaderValue::from_static("Wed, 21 Oct 2015 07:28:00 GMT"),
        );
        assert_eq!(retry_after(&h), None);
    }

    #[test]
    fn backoff_is_full_jitter_under_a_doubling_bound() {
        let mut rng = rand::rng();
        let mut b = Backoff { attempt: 0 };
        for attempt in 0..40 {
            let bound = BACKOFF_BASE
                .saturating_mul(1 << attempt.min(16))
                .min(BACKOFF_MAX);
            assert!(b.next(&mut rng) <= bound);
        }
        // Far past the cap, delays spread over the whole range rather than sitting
        // at it.
        let delays: Vec<_> = (0..200).map(|_| b.next(&mut rng)).collect();
        assert!(delays.iter().any(|d| *d < BACKOFF_MAX / 2));
        assert!(delays.iter().any(|d| *d > BACKOFF_MAX / 2));
        b.reset();
        assert!(b.next(&mut rng) <= BACKOFF_BASE);
    }

    #[test]
    fn clock_is_utc_time_of_day() {
        assert_eq!(clock(0), "00:00:00.000");
        // 2025-11-22T08:26:40.123Z
        assert_eq!(clock(1_763_800_000_123), "08:26:40.123");
    }

    #[test]
    fn a_jwt_exp_is_read_without_verifying() {
        // {"alg":"HS256","typ":"JWT"} . {"sub":"viewer","exp":1763800000,"n":"é"} . junk
        let token = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.\
                     eyJzdWIiOiJ2aWV3ZXIiLCJleHAiOjE3NjM4MDAwMDAsIm4iOiLDqSJ9.c2ln";
        assert_eq!(jwt_exp(token), Some(1_763_800_000));
        assert_eq!(base64url_decode("_-8"), Some(vec![0xff, 0xef]));
        assert_eq!(base64url_decode("aGk="), Some(b"hi".to_vec()));
        assert_eq!(jwt_exp("not a jwt"), None);
        assert_eq!(jwt_exp("a.e30.b"), None, "an empty payload has no exp");
        assert_eq!(jwt_exp("a.!!!.b"), None);
    }

    #[test]
    fn a_refresh_comes_a_while_before_exp() {
        let in_s = |s: u64| Some(now_ms() / 1000 + s);
        // No exp: nothing to plan.
        let mut r = Refresh::new(Path::new("/nonexistent"), "x.e30.y");
        assert_eq!(r.at, None);
        // An hour: a minute (less up to a tenth of the wait) before exp.
        r.plan(in_s(3600));
        let wait = r.at.expect("planned") - Instant::now();
        assert!(
            wait <= Duration::from_secs(3540) && wait >= Duration::from_secs(3180),
            "{wait:?}"
        );
        // Eight seconds: when a quarter is left.
        r.plan(in_s(8));
        let wait = r.at.expect("planned") - Instant::now();
        assert!(
            wait <= Duration::from_secs(6) && wait >= Duration::from_millis(4500),
            "{wait:?}"
        );
        // Expired already (a clock ahead): not at once, and not in a loop.
        r.plan(Some(1));
        assert!(r.at.expect("planned") - Instant::now() >= Duration::from_millis(900));
    }

    #[test]
    fn queries_are_not_printed() {
        assert_eq!(redacted("ws://h/ws?ticket=secret"), "ws://h/ws");
        assert_eq!(redacted("ws://h/ws"), "ws://h/ws");
    }
}
