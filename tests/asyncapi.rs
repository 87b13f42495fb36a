//! The AsyncAPI document (`docs/asyncapi.json`, served at `GET /asyncapi.json`)
//! against the real broker and the protocol types.
//!
//! - **What a real `herald` process sends** is validated against the JSON Schemas of
//!   the document. Every server message type is provoked: `welcome`, every reply,
//!   heartbeat `ping`s, `lagged` (an event larger than a tiny outbound queue),
//!   `reset` for both reasons, `error` with eight of its codes, `close` at the end of
//!   an SSE stream, and events from
//!   WebSocket, HTTP, NATS and Kafka with JSON, text and binary payloads, keys,
//!   headers, replays and a Kafka tombstone. HTTP bodies and the backplane's NATS
//!   messages are validated too.
//! - **Every client example** of the document is sent to a broker, which must accept
//!   it and answer only with replies the document lists for that operation.
//! - **Coverage.** The document's server messages, client ops, error codes, reset
//!   reasons, sources and close codes are compared with the `herald` crate's
//!   protocol types. The enums are walked with matches without a wildcard, so a new
//!   variant does not compile until it is listed here, and then fails until the
//!   document describes it.
//! - **`docs/asyncapi.md`** is what `scripts/asyncapi-render` makes of the JSON.
//!
//! The check of the document against the AsyncAPI 3.0.0 specification itself uses
//! the official npm packages: `scripts/asyncapi-check`. `HERALD_ASYNCAPI_DOC=FILE`
//! runs these tests against another document, to see them fail on one that drifted.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{anyhow, bail, ensure, Context as _, Result};
use futures_util::StreamExt;
use herald::protocol::{
    close, ErrorCode, Heartbeat, Limits, Op, ResetReason, Resume, ServerMessage,
};
use herald_e2e::kafka::{Record, Tansu};
use herald_e2e::nats::TestNats;
use herald_e2e::{config, Broker, Client, WAIT};
use jsonschema::{Draft, Registry, Validator};
use serde_json::value::RawValue;
use serde_json::{json, Value};

/// The base URI the document's components are registered under, so that the
/// `#/components/schemas/…` references inside them resolve.
const BASE: &str = "https://herald.invalid/asyncapi.json";

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// `docs/asyncapi.json`, or the file `HERALD_ASYNCAPI_DOC` names (to watch these
/// tests fail on a document that drifted from the broker).
fn document_text() -> Result<String> {
    let path = std::env::var_os("HERALD_ASYNCAPI_DOC")
        .map_or_else(|| repo().join("docs/asyncapi.json"), PathBuf::from);
    std::fs::read_to_string(&path).with_context(|| format!("read {}", path.display()))
}

/// One message of the WebSocket channel: its name in the document and a validator
/// of its payload.
struct Message {
    name: String,
    payload: Validator,
}

/// The document, with a payload validator for every message of the WebSocket
/// channel, keyed by the `type` (server messages) or `op` (client messages) its
/// schema fixes.
struct Contract {
    doc: Value,
    registry: Registry<'static>,
    server: BTreeMap<String, Message>,
    client: BTreeMap<String, Message>,
}

impl Contract {
    fn load() -> Result<Contract> {
        let doc: Value = serde_json::from_str(&document_text()?).context("docs/asyncapi.json")?;
        // Only the components: every schema and every $ref of one lives there (the
        // payload schemas are draft-07 plus AsyncAPI's annotations).
        let components = json!({"components": doc["components"].clone()});
        let registry = Registry::new()
            .add(BASE, Draft::Draft7.create_resource(components))?
            .prepare()?;
        let mut contract = Contract {
            doc,
            registry,
            server: BTreeMap::new(),
            client: BTreeMap::new(),
        };
        // The WebSocket channel, and the SSE stream's messages (the same ones, and
        // `close`), each once.
        let mut channel = serde_json::Map::new();
        for name in ["herald", "sse"] {
            let messages = contract.doc["channels"][name]["messages"]
                .as_object()
                .ok_or_else(|| anyhow!("no channels.{name}.messages"))?;
            for (message, reference) in messages {
                if let Some(other) = channel.insert(message.clone(), reference.clone()) {
                    ensure!(
                        other == *reference,
                        "message {message} is a different one in channel {name}"
                    );
                }
            }
        }
        for (name, reference) in channel {
            let target = pointer_of(&reference)?;
            let payload = contract.resolve(&format!("{target}/payload"))?;
            let schema = contract.resolve(&pointer_of(payload)?)?;
            let props = &schema["properties"];
            let payload = contract.validator(&format!("{target}/payload"))?;
            let message = Message {
                name: name.clone(),
                payload,
            };
            let (key, map) = match (
                props["type"]["const"].as_str(),
                props["op"]["const"].as_str(),
            ) {
                (Some(t), None) => (t.to_string(), &mut contract.server),
                (None, Some(op)) => (op.to_string(), &mut contract.client),
                _ => bail!("message {name}: its payload must fix exactly one of `type` and `op`"),
            };
            if let Some(other) = map.insert(key.clone(), message) {
                bail!("messages {} and {name} both have `{key}`", other.name);
            }
        }
        Ok(contract)
    }

    /// The node at a document-local pointer (`/components/…`).
    fn resolve(&self, pointer: &str) -> Result<&Value> {
        self.doc
            .pointer(pointer)
            .ok_or_else(|| anyhow!("docs/asyncapi.json has nothing at #{pointer}"))
    }

    /// A validator of the schema at a document-local pointer.
    fn validator(&self, pointer: &str) -> Result<Validator> {
        jsonschema::options()
            .with_draft(Draft::Draft7)
            .with_registry(&self.registry)
            .build(&json!({"$ref": format!("{BASE}#{pointer}")}))
            .map_err(|e| anyhow!("schema at #{pointer}: {e}"))
    }

    /// Validates a message the server sent; returns its `type`.
    fn server_message(&self, v: &Value) -> Result<String> {
        let kind = v["type"]
            .as_str()
            .ok_or_else(|| anyhow!("a server message without a string `type`: {v}"))?;
        let message = self.server.get(kind).ok_or_else(|| {
            anyhow!("`{kind}` is not a server message of docs/asyncapi.json: {v}")
        })?;
        valid(&message.payload, v).with_context(|| format!("message `{}`", message.name))?;
        Ok(kind.to_string())
    }

    /// The `type`s of the server messages the document lists.
    fn server_types(&self) -> BTreeSet<String> {
        self.server.keys().cloned().collect()
    }

    /// An `enum` of a schema in `components.schemas`, as a set.
    fn schema_enum(&self, pointer: &str) -> Result<BTreeSet<String>> {
        let values = self.resolve(pointer)?["enum"]
            .as_array()
            .ok_or_else(|| anyhow!("no enum at #{pointer}"))?;
        Ok(values
            .iter()
            .filter_map(Value::as_str)
            .map(String::from)
            .collect())
    }

    /// The `type`s that may answer the client message `name` (the reply messages of
    /// the operation that receives it).
    fn reply_types(&self, name: &str) -> Result<BTreeSet<String>> {
        let target = format!("#/channels/herald/messages/{name}");
        let ops = self.doc["operations"]
            .as_object()
            .ok_or_else(|| anyhow!("no operations"))?;
        let op = ops
            .values()
            .find(|op| {
                op["messages"]
                    .as_array()
                    .is_some_and(|m| m.iter().any(|r| r["$ref"] == target))
            })
            .ok_or_else(|| anyhow!("no operation receives {name}"))?;
        let mut types = BTreeSet::new();
        for reply in op["reply"]["messages"].as_array().into_iter().flatten() {
            let message = self.resolve(&pointer_of(reply)?)?;
            let schema = self.resolve(&pointer_of(
                self.resolve(&format!("{}/payload", pointer_of(message)?))?,
            )?)?;
            types.insert(
                schema["properties"]["type"]["const"]
                    .as_str()
                    .ok_or_else(|| anyhow!("reply {reply} has no `type`"))?
                    .to_string(),
            );
        }
        Ok(types)
    }
}

/// `{"$ref": "#/x/y"}` → `/x/y`.
fn pointer_of(reference: &Value) -> Result<String> {
    reference["$ref"]
        .as_str()
        .and_then(|r| r.strip_prefix('#'))
        .map(String::from)
        .ok_or_else(|| anyhow!("not a local $ref: {reference}"))
}

/// Fails with every schema error, each with where in `v` it is.
fn valid(validator: &Validator, v: &Value) -> Result<()> {
    let errors: Vec<String> = validator
        .iter_errors(v)
        .map(|e| format!("{e} (at `{}`)", e.instance_path()))
        .collect();
    ensure!(
        errors.is_empty(),
        "{v} does not match the document: {}",
        errors.join("; ")
    );
    Ok(())
}

/// Reads server messages, validating every one of them (heartbeat pings included)
/// and remembering which types it saw.
struct Probe<'a> {
    contract: &'a Contract,
    seen: BTreeSet<String>,
}

impl<'a> Probe<'a> {
    fn new(contract: &'a Contract) -> Self {
        Probe {
            contract,
            seen: BTreeSet::new(),
        }
    }

    fn check(&mut self, v: &Value) -> Result<()> {
        let kind = self.contract.server_message(v)?;
        self.seen.insert(kind);
        Ok(())
    }

    /// Validates a client's `welcome`.
    fn welcome(&mut self, c: &Client) -> Result<()> {
        self.check(&c.welcome)
    }

    /// The next message that is not a heartbeat.
    async fn next(&mut self, c: &mut Client) -> Result<Value> {
        loop {
            let v = c.recv_any(WAIT).await?;
            self.check(&v)?;
            if v["type"] != "ping" {
                return Ok(v);
            }
        }
    }

    /// The next message that is not a heartbeat, which must be of type `kind`.
    async fn expect(&mut self, c: &mut Client, kind: &str) -> Result<Value> {
        let v = self.next(c).await?;
        ensure!(v["type"] == kind, "expected `{kind}`, got {v}");
        Ok(v)
    }

    /// Reads until a message of type `kind` (heartbeats included); fails on anything
    /// else but heartbeats.
    async fn until(&mut self, c: &mut Client, kind: &str) -> Result<Value> {
        loop {
            let v = c.recv_any(WAIT).await?;
            self.check(&v)?;
            if v["type"] == kind {
                return Ok(v);
            }
            ensure!(v["type"] == "ping", "expected `{kind}`, got {v}");
        }
    }

    /// The next `n` messages that are not heartbeats, in any order, by type.
    async fn some(&mut self, c: &mut Client, n: usize) -> Result<Vec<Value>> {
        let mut out = Vec::with_capacity(n);
        for _ in 0..n {
            out.push(self.next(c).await?);
        }
        out.sort_by_key(|v| v["type"].as_str().unwrap_or_default().to_string());
        Ok(out)
    }
}

/// An `error` reply with this code and id.
async fn expect_error(p: &mut Probe<'_>, c: &mut Client, code: &str, id: Value) -> Result<()> {
    let v = p.expect(c, "error").await?;
    ensure!(
        v["code"] == code && v["id"] == id,
        "expected error {code} for id {id}, got {v}"
    );
    Ok(())
}

// ---------------------------------------------------------------------------------
// The real broker
// ---------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_broker_serves_the_document_verbatim() -> Result<()> {
    let broker = Broker::start(&config("", ""))?;
    let res = reqwest::get(format!("{}/asyncapi.json", broker.http())).await?;
    ensure!(res.status() == 200, "GET /asyncapi.json: {}", res.status());
    let content_type = herald_e2e::header(&res, "content-type");
    ensure!(
        content_type.starts_with("application/json"),
        "content-type {content_type}"
    );
    let served = res.text().await?;
    ensure!(
        served == document_text()?,
        "GET /asyncapi.json differs from docs/asyncapi.json: rebuild the broker (it embeds the file)"
    );
    Ok(())
}

/// Every server message type the document lists is provoked from a real broker, and
/// every message received on the way matches its schema.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_server_message_is_sent_as_the_document_says() -> Result<()> {
    let contract = Contract::load()?;
    // A short heartbeat for `ping`; an outbound queue smaller than one big event for
    // `lagged`; four subscriptions per connection for `too_many_subscriptions`.
    let broker = Broker::start(&config(
        "",
        "[session]\nheartbeat_interval_ms = 200\nheartbeat_timeout_ms = 60000\n\
         queue_max_bytes = 1024\nmax_subscriptions = 4\n[history]\nsize = 10\n",
    ))?;
    let mut p = Probe::new(&contract);

    let mut a = broker.client().await?;
    p.welcome(&a)?;
    p.until(&mut a, "ping").await.context("a heartbeat")?;

    // subscribed; a WebSocket publish with key and headers: ok and the event.
    a.send(json!({"op": "subscribe", "id": 1, "topics": ["shop.*"]}))
        .await?;
    let v = p.expect(&mut a, "subscribed").await?;
    ensure!(v["id"] == 1 && v["topics"] == json!(["shop.*"]), "{v}");
    a.send(
        json!({"op": "publish", "id": "p-1", "topic": "shop.eu", "data": {"n": 1},
                  "key": "k-1", "headers": {"trace": "t-1"}}),
    )
    .await?;
    let got = p.some(&mut a, 2).await?;
    let (event, ok) = (&got[0], &got[1]);
    ensure!(ok["type"] == "ok" && ok["id"] == "p-1", "{ok}");
    ensure!(
        event["type"] == "event"
            && event["source"] == "ws"
            && event["seq"] == 1
            && event["key"] == "k-1"
            && event["headers"] == json!({"trace": "t-1"}),
        "{event}"
    );
    // An HTTP publish: a JSON string, no key, no headers.
    broker.publish("shop.eu", json!("text")).await?;
    let event = p.expect(&mut a, "event").await?;
    ensure!(
        event["source"] == "http" && event["seq"] == 2 && event["data"] == "text",
        "{event}"
    );
    ensure!(
        event.get("key").is_none() && event.get("headers").is_none(),
        "{event}"
    );

    // `last`: both events again, flagged `replay`.
    let mut b = broker.client().await?;
    p.welcome(&b)?;
    b.send(json!({"op": "subscribe", "id": 2, "topics": ["shop.eu"], "last": 5}))
        .await?;
    p.expect(&mut b, "subscribed").await?;
    for seq in [1, 2] {
        let e = p.expect(&mut b, "event").await?;
        ensure!(
            e["replay"] == true && e["seq"] == seq,
            "replayed event {seq}: {e}"
        );
    }
    // `resume` with another epoch, and with a position this node cannot have.
    b.send(json!({"op": "subscribe", "id": 3, "topics": ["shop.us"],
                  "resume": {"epoch": "01ARZ3NDEKTSV4RRFFQ69G5FAV", "topics": {"shop.us": 1}}}))
        .await?;
    p.expect(&mut b, "subscribed").await?;
    let v = p.expect(&mut b, "reset").await?;
    ensure!(
        v["topic"] == "shop.us" && v["reason"] == "epoch_changed",
        "{v}"
    );
    let epoch = b.welcome["epoch"].clone();
    b.send(json!({"op": "subscribe", "id": 4, "topics": ["shop.ca"],
                  "resume": {"epoch": epoch, "topics": {"shop.ca": 5}}}))
        .await?;
    p.expect(&mut b, "subscribed").await?;
    let v = p.expect(&mut b, "reset").await?;
    ensure!(
        v["topic"] == "shop.ca" && v["reason"] == "history_expired",
        "{v}"
    );

    // unsubscribed, pong (a number id written as the client wrote it), the silent
    // `pong` op, and `auth` with auth off (ok).
    b.send(json!({"op": "unsubscribe", "id": 5, "topics": ["shop.us"]}))
        .await?;
    let v = p.expect(&mut b, "unsubscribed").await?;
    ensure!(v["topics"] == json!(["shop.us"]), "{v}");
    b.send_text(r#"{"op":"ping","id":-1.5e3}"#).await?;
    let v = p.expect(&mut b, "pong").await?;
    ensure!(v["id"] == json!(-1500.0), "{v}");
    b.send(json!({"op": "pong"})).await?;
    b.send(json!({"op": "auth", "id": 6, "token": "ignored with auth off"}))
        .await?;
    let v = p.expect(&mut b, "ok").await?;
    ensure!(
        v["id"] == 6,
        "the pong op has no reply, so the next message answers auth: {v}"
    );

    // Errors.
    b.send_text("not json").await?;
    expect_error(&mut p, &mut b, "bad_request", Value::Null).await?;
    b.send(json!({"op": "fly", "id": 7})).await?;
    expect_error(&mut p, &mut b, "unknown_op", json!(7)).await?;
    b.send(json!({"op": "publish", "id": 8, "topic": "shop.*", "data": 1}))
        .await?;
    expect_error(&mut p, &mut b, "invalid_topic", json!(8)).await?;
    // Three patterns held (shop.eu, shop.ca, and one more below); two more is five.
    b.send(json!({"op": "subscribe", "id": 9, "topics": ["x.a"]}))
        .await?;
    p.expect(&mut b, "subscribed").await?;
    b.send(json!({"op": "subscribe", "id": 10, "topics": ["x.b", "x.c"]}))
        .await?;
    expect_error(&mut p, &mut b, "too_many_subscriptions", json!(10)).await?;

    // lagged: an event whose frame is larger than the 1 KiB queue can never fit.
    let mut c = broker.client().await?;
    p.welcome(&c)?;
    c.subscribe(&["big.one"]).await?;
    broker.publish("big.one", json!("x".repeat(2000))).await?;
    let v = p.expect(&mut c, "lagged").await?;
    ensure!(v["dropped"] == 1, "{v}");

    // close: the last message of an SSE stream that the server ends (SIGTERM); the
    // stream's other messages are checked on the way.
    let ending = Broker::start(&config("", ""))?;
    let url = format!("{}/sse?topics=x.*", ending.http());
    let mut s = herald_e2e::sse::SseStream::open(&url, &[])
        .await?
        .stream()?;
    let welcome = s.next().await?;
    p.check(&welcome)?;
    let status = Command::new("kill")
        .args(["-TERM", &ending.pid().to_string()])
        .status()?;
    ensure!(status.success(), "kill -TERM");
    let rest = s.until_end(std::time::Duration::from_secs(10)).await?;
    for v in &rest {
        p.check(v)?;
    }
    ensure!(
        rest.last().is_some_and(|v| v["type"] == "close"),
        "{rest:?}"
    );

    let missing: Vec<_> = contract
        .server_types()
        .difference(&p.seen)
        .cloned()
        .collect();
    ensure!(
        missing.is_empty(),
        "not provoked (add them to this test): {missing:?}"
    );
    Ok(())
}

/// The messages only authentication produces: `welcome` after a first-message
/// `auth`, `unauthorized`, `forbidden`, a refresh's `ok`; tickets and HTTP errors.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn authentication_messages_match_the_document() -> Result<()> {
    use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
    const SECRET: &str = "0123456789abcdef0123456789abcdef-asyncapi";
    const API_KEY: &str = "api-key-for-asyncapi-tests";
    let contract = Contract::load()?;
    let exp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs()
        + 120;
    let token = |sub: &str| {
        encode(
            &Header::new(Algorithm::HS256),
            &json!({"sub": sub, "exp": exp, "herald": {"subscribe": ["news.*"], "publish": []}}),
            &EncodingKey::from_secret(SECRET.as_bytes()),
        )
    };
    let broker = Broker::start(&config(
        "",
        &format!("[auth]\nmode = \"jwt\"\njwt_secret = \"{SECRET}\"\napi_keys = [\"{API_KEY}\"]\n"),
    ))?;
    let mut p = Probe::new(&contract);

    // First-message auth: before it, ping is answered and subscribe is refused.
    let mut c = Client::open(broker.ws_url()).await?;
    c.send(json!({"op": "ping", "id": 1})).await?;
    p.expect(&mut c, "pong").await?;
    c.send(json!({"op": "subscribe", "id": 2, "topics": ["news.a"]}))
        .await?;
    expect_error(&mut p, &mut c, "unauthorized", json!(2)).await?;
    c.send(json!({"op": "auth", "id": 3, "token": token("u1")?}))
        .await?;
    let v = p.expect(&mut c, "welcome").await?;
    ensure!(v.get("id").is_none(), "welcome carries no id: {v}");
    c.send(json!({"op": "subscribe", "id": 4, "topics": ["admin.x"]}))
        .await?;
    expect_error(&mut p, &mut c, "forbidden", json!(4)).await?;
    c.send(json!({"op": "auth", "id": 5, "token": token("u2")?}))
        .await?;
    expect_error(&mut p, &mut c, "forbidden", json!(5)).await?;
    c.send(json!({"op": "auth", "id": 6, "token": token("u1")?}))
        .await?;
    let v = p.expect(&mut c, "ok").await?;
    ensure!(v["id"] == 6, "{v}");

    // Tickets: 201 with a JWT, 403 with an API key, 401 without credentials.
    let http = reqwest::Client::new();
    let tickets = format!("{}/api/tickets", broker.http());
    let issued = contract.validator("/components/messages/httpTicketIssued/payload")?;
    let error = contract.validator("/components/messages/httpError/payload")?;
    let res = http.post(&tickets).bearer_auth(token("u1")?).send().await?;
    ensure!(
        res.status() == 201,
        "POST /api/tickets with a JWT: {}",
        res.status()
    );
    let body: Value = res.json().await?;
    valid(&issued, &body).context("POST /api/tickets")?;
    let mut t = Client::connect(&format!(
        "{}?ticket={}",
        broker.ws_url(),
        body["ticket"].as_str().unwrap_or_default()
    ))
    .await?;
    p.welcome(&t)?;
    t.send(json!({"op": "ping", "id": "after-ticket"})).await?;
    p.expect(&mut t, "pong").await?;
    for (request, status) in [
        (http.post(&tickets).bearer_auth(API_KEY), 403),
        (http.post(&tickets), 401),
        (
            http.post(format!("{}/api/publish", broker.http()))
                .body(json!({"topic": "news.a", "data": 1}).to_string()),
            401,
        ),
    ] {
        let res = request.send().await?;
        ensure!(
            res.status() == status,
            "expected {status}, got {}",
            res.status()
        );
        valid(&error, &res.json().await?).with_context(|| format!("the {status} body"))?;
    }
    Ok(())
}

/// `publish_disabled` (WebSocket and HTTP) and `rate_limited`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_match_the_document() -> Result<()> {
    let contract = Contract::load()?;
    let broker = Broker::start(&config(
        "",
        "[session]\nrate_limit_burst = 3\nrate_limit_per_s = 1\n[publish]\nfrom_clients = false\nhttp = false\n",
    ))?;
    let mut p = Probe::new(&contract);
    let mut c = broker.client().await?;
    p.welcome(&c)?;
    // Five messages at once against three tokens: the last two are refused (fewer in a
    // row than the burst, so the connection stays open).
    c.send(json!({"op": "publish", "id": 1, "topic": "a", "data": 1}))
        .await?;
    for id in 2..=5 {
        c.send(json!({"op": "ping", "id": id})).await?;
    }
    let replies = p.some(&mut c, 5).await?;
    let codes: Vec<&str> = replies.iter().filter_map(|v| v["code"].as_str()).collect();
    ensure!(codes.contains(&"publish_disabled"), "{replies:?}");
    ensure!(codes.contains(&"rate_limited"), "{replies:?}");

    let (status, body) = broker.publish_status("a", json!(1)).await?;
    ensure!(
        status == 403 && body["error"]["code"] == "publish_disabled",
        "{status} {body}"
    );
    valid(
        &contract.validator("/components/messages/httpError/payload")?,
        &body,
    )?;
    Ok(())
}

/// `POST /api/publish`: the document's request examples are accepted, and answers
/// and errors have the documented bodies.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_messages_match_the_document() -> Result<()> {
    let contract = Contract::load()?;
    let broker = Broker::start(&config("", "[publish]\nmax_body_bytes = 4096\n"))?;
    let accepted = contract.validator("/components/messages/httpPublishAccepted/payload")?;
    let error = contract.validator("/components/messages/httpError/payload")?;
    let examples = contract.resolve("/components/messages/httpPublishRequest/examples")?;
    for example in examples.as_array().into_iter().flatten() {
        let body = &example["payload"];
        let (status, reply) = broker.post_raw("/api/publish", body.to_string()).await?;
        ensure!(
            status == 202,
            "example {}: {status} {reply}",
            example["name"]
        );
        valid(&accepted, &reply)?;
        let n = body.as_array().map_or(1, Vec::len);
        ensure!(reply["accepted"] == n, "{reply}");
    }
    let refused = [
        (
            json!({"topic": "a.*", "data": 1}).to_string(),
            400,
            "invalid_topic",
        ),
        (
            json!({"topic": "a", "data": 1, "extra": 2}).to_string(),
            400,
            "bad_request",
        ),
        ("[]".to_string(), 400, "bad_request"),
        (
            json!({"topic": "a", "data": "x".repeat(5000)}).to_string(),
            413,
            "payload_too_large",
        ),
    ];
    for (body, status, code) in refused {
        let (got, reply) = broker.post_raw("/api/publish", body).await?;
        ensure!(
            got == status && reply["error"]["code"] == code,
            "{got} {reply}"
        );
        valid(&error, &reply)?;
    }
    for (path, status) in [("/nope", 404), ("/api/publish", 405)] {
        let (got, reply) = broker.get(path).await?;
        ensure!(got == status, "GET {path}: {got}");
        valid(&error, &reply).with_context(|| format!("GET {path}"))?;
    }
    Ok(())
}

/// Every client message example of the document is accepted by the broker, and
/// answered only with the replies the document lists for its operation.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_client_example_is_accepted_by_the_broker() -> Result<()> {
    let contract = Contract::load()?;
    let broker = Broker::start(&config("", ""))?;
    let mut p = Probe::new(&contract);
    let mut c = broker.client().await?;
    p.welcome(&c)?;
    let mut sent = 0;
    for (op, message) in &contract.client {
        let allowed = contract.reply_types(&message.name)?;
        let examples =
            contract.resolve(&format!("/components/messages/{}/examples", message.name))?;
        for example in examples.as_array().into_iter().flatten() {
            let payload = &example["payload"];
            valid(&message.payload, payload)
                .with_context(|| format!("example {}", example["name"]))?;
            c.send(payload.clone()).await?;
            // A fence: everything before its pong answers the example.
            let fence = format!("fence-{sent}");
            c.send(json!({"op": "ping", "id": fence})).await?;
            sent += 1;
            let mut replies = Vec::new();
            loop {
                let v = p.next(&mut c).await?;
                if v["id"] == fence.as_str() {
                    break;
                }
                replies.push(v);
            }
            let what = format!("example {} of {op}: {payload}", example["name"]);
            for v in &replies {
                let kind = v["type"].as_str().unwrap_or_default();
                ensure!(kind != "error", "{what} was refused: {v}");
                // Notices a subscribe may cause (a `reset` of a resumed topic) are not
                // replies; everything else must be a documented reply.
                ensure!(
                    allowed.contains(kind) || kind == "reset" || kind == "event",
                    "{what} was answered with `{kind}`, which the document does not list: {v}"
                );
            }
            // The reply carries the request's id, or none when it had none (`Null`
            // both ways); an operation without replies gets none.
            let answered = replies.iter().any(|v| {
                allowed.contains(v["type"].as_str().unwrap_or_default()) && v["id"] == payload["id"]
            });
            let expects_reply = !allowed.is_empty();
            ensure!(
                answered == expects_reply,
                "{what}: expected {} reply, got {replies:?}",
                if expects_reply { "a" } else { "no" }
            );
        }
    }
    ensure!(
        sent >= contract.client.len(),
        "every client message needs an example"
    );
    Ok(())
}

/// Events from NATS: JSON, text and binary (`data_b64`) payloads, headers, and the
/// `Herald-Source`/`Herald-Key` headers; the backplane's NATS messages.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_events_and_backplane_messages_match_the_document() -> Result<()> {
    let contract = Contract::load()?;
    let nats = TestNats::start()?;
    // One bridge, also the backplane: subject <root>.T is topic T, and HTTP publishes
    // go out as <root>.T.
    let broker = Broker::start(&config(
        "",
        &format!(
            "[cluster]\nbackplane = \"bus\"\nsubject_prefix = \"{prefix}\"\n\
             [[bridge.nats]]\nname = \"bus\"\nurl = \"{url}\"\nsubjects = [\"{root}.>\"]\nstrip_prefix = \"{prefix}\"\n",
            prefix = nats.prefix(),
            url = nats.url(),
            root = nats.root,
        ),
    ))?;
    broker.wait_readyz(200).await?;
    let mut p = Probe::new(&contract);
    let mut c = broker.client().await?;
    p.welcome(&c)?;
    c.subscribe(&["n.*"]).await?;
    let publisher = nats.client().await?;
    let mut wire = publisher.subscribe(nats.subject("n.http")).await?;
    publisher.flush().await?;

    let mut headers = async_nats::HeaderMap::new();
    headers.insert("trace", "abc");
    publisher
        .publish_with_headers(nats.subject("n.json"), headers, r#"{"id":7}"#.into())
        .await?;
    publisher
        .publish(nats.subject("n.text"), "plain text".into())
        .await?;
    publisher
        .publish(
            nats.subject("n.bin"),
            bytes::Bytes::from_static(&[0xff, 0x00, 0x10]),
        )
        .await?;
    let mut restored = async_nats::HeaderMap::new();
    restored.insert("Herald-Source", "kafka");
    restored.insert("Herald-Key", "k-9");
    publisher
        .publish_with_headers(nats.subject("n.src"), restored, "{}".into())
        .await?;
    publisher.flush().await?;
    // Through the backplane: NATS carries it, then every node's bridge delivers it.
    let (status, body) = broker
        .post_raw(
            "/api/publish",
            json!({"topic": "n.http", "data": {"id": 8}, "key": "order-8", "headers": {"trace": "def"}})
                .to_string(),
        )
        .await?;
    ensure!(status == 202, "{status} {body}");

    let mut by_topic = BTreeMap::new();
    for _ in 0..5 {
        let e = p.expect(&mut c, "event").await?;
        by_topic.insert(e["topic"].as_str().unwrap_or_default().to_string(), e);
    }
    let e = &by_topic["n.json"];
    ensure!(
        e["source"] == "nats"
            && e["data"] == json!({"id": 7})
            && e["headers"] == json!({"trace": "abc"}),
        "{e}"
    );
    ensure!(
        by_topic["n.text"]["data"] == "plain text",
        "{}",
        by_topic["n.text"]
    );
    let e = &by_topic["n.bin"];
    ensure!(e["data_b64"] == "/wAQ" && e.get("data").is_none(), "{e}");
    let e = &by_topic["n.src"];
    ensure!(
        e["source"] == "kafka" && e["key"] == "k-9" && e.get("headers").is_none(),
        "{e}"
    );
    let e = &by_topic["n.http"];
    ensure!(
        e["source"] == "http" && e["key"] == "order-8" && e["headers"] == json!({"trace": "def"}),
        "{e}"
    );

    // The backplane message as NATS carried it.
    let m = tokio::time::timeout(WAIT, wire.next())
        .await?
        .ok_or_else(|| anyhow!("no backplane message"))?;
    let mut headers = serde_json::Map::new();
    for (name, values) in m.headers.iter().flat_map(|h| h.iter()) {
        let joined: Vec<&str> = values.iter().map(|v| v.as_str()).collect();
        headers.insert(name.to_string(), json!(joined.join(",")));
    }
    let headers = Value::Object(headers);
    valid(
        &contract.validator("/components/messages/backplaneEvent/headers")?,
        &headers,
    )
    .context("backplane headers")?;
    ensure!(
        headers["Herald-Source"] == "http" && headers["Herald-Key"] == "order-8",
        "{headers}"
    );
    let payload: Value = serde_json::from_slice(&m.payload).context("backplane payload is JSON")?;
    ensure!(payload == json!({"id": 8}), "{payload}");
    Ok(())
}

/// Events from Kafka: key and headers, a binary value, a text value, a tombstone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_events_match_the_document() -> Result<()> {
    let contract = Contract::load()?;
    let kafka = Tansu::start()?;
    kafka.create_topic("orders", 1).await?;
    let broker = Broker::start(&config(
        "",
        &format!(
            "[[bridge.kafka]]\nname = \"orders\"\nbrokers = \"{}\"\ntopics = [\"orders\"]\nmetadata_refresh_ms = 500\n",
            kafka.brokers()
        ),
    ))?;
    broker.wait_readyz(200).await?;
    let mut p = Probe::new(&contract);
    let mut c = broker.client().await?;
    p.welcome(&c)?;
    c.subscribe(&["orders"]).await?;
    let producer = kafka.producer()?;
    producer
        .send(Record {
            topic: "orders",
            key: Some(b"order-7"),
            payload: Some(br#"{"id":7,"total":99.5}"#),
            headers: &[("trace", "4bf92f35")],
            ..Record::default()
        })
        .await?;
    producer
        .send(Record::value("orders", &[0xff, 0xfe]))
        .await?;
    producer
        .send(Record::value("orders", b"plain text"))
        .await?;
    producer
        .send(Record {
            topic: "orders",
            key: Some(b"order-7"),
            ..Record::default()
        })
        .await?;
    let mut events = Vec::new();
    for _ in 0..4 {
        events.push(p.expect(&mut c, "event").await?);
    }
    let e = &events[0];
    ensure!(
        e["source"] == "kafka"
            && e["key"] == "order-7"
            && e["headers"] == json!({"trace": "4bf92f35"}),
        "{e}"
    );
    ensure!(events[1]["data_b64"] == "//4=", "{}", events[1]);
    ensure!(events[2]["data"] == "plain text", "{}", events[2]);
    ensure!(
        events[3]["data"] == Value::Null && events[3].get("data").is_some(),
        "tombstone: {}",
        events[3]
    );
    Ok(())
}

// ---------------------------------------------------------------------------------
// The protocol types
// ---------------------------------------------------------------------------------

/// One instance of every [`ServerMessage`] variant. `variant` has no wildcard arm:
/// a new variant does not compile until it has an arm (and a new index) there, and
/// then the count check fails until it has an instance here.
fn every_server_message<'a>(topics: &'a [String], id: &'a RawValue) -> Vec<ServerMessage<'a>> {
    vec![
        ServerMessage::Welcome {
            session: "ead0a9a565489029",
            node: "n-58a213",
            epoch: "019af1c2e6b07c3d9b1e5f4a2c8d6e01",
            protocol: herald::protocol::SUBPROTOCOL,
            delivery: "best-effort",
            heartbeat: Heartbeat {
                interval_ms: 25_000,
                timeout_ms: 10_000,
            },
            limits: Limits {
                max_message_bytes: 65_536,
                max_subscriptions: 256,
            },
        },
        ServerMessage::Subscribed {
            id: Some(id),
            topics,
        },
        ServerMessage::Unsubscribed { id: None, topics },
        ServerMessage::Ok { id: Some(id) },
        ServerMessage::Pong { id: None },
        ServerMessage::Error {
            id: Some(id),
            code: ErrorCode::Forbidden,
            message: "no",
        },
        ServerMessage::Ping,
        ServerMessage::Lagged { dropped: 3 },
        ServerMessage::Reset {
            topic: "a.b",
            reason: ResetReason::EpochChanged,
        },
        ServerMessage::Close {
            code: close::GOING_AWAY,
            reason: "server shutting down",
        },
    ]
}

const SERVER_MESSAGE_VARIANTS: usize = 10;

fn variant(m: &ServerMessage<'_>) -> usize {
    match m {
        ServerMessage::Welcome { .. } => 0,
        ServerMessage::Subscribed { .. } => 1,
        ServerMessage::Unsubscribed { .. } => 2,
        ServerMessage::Ok { .. } => 3,
        ServerMessage::Pong { .. } => 4,
        ServerMessage::Error { .. } => 5,
        ServerMessage::Ping => 6,
        ServerMessage::Lagged { .. } => 7,
        ServerMessage::Reset { .. } => 8,
        ServerMessage::Close { .. } => 9,
    }
}

/// Every [`ErrorCode`]; the match makes a new variant a compile error here.
fn every_error_code() -> Vec<ErrorCode> {
    let all = ErrorCode::ALL;
    let distinct: BTreeSet<usize> = all
        .iter()
        .map(|c| match c {
            ErrorCode::BadRequest => 0,
            ErrorCode::UnknownOp => 1,
            ErrorCode::InvalidTopic => 2,
            ErrorCode::Forbidden => 3,
            ErrorCode::Unauthorized => 4,
            ErrorCode::TooManySubscriptions => 5,
            ErrorCode::RateLimited => 6,
            ErrorCode::PayloadTooLarge => 7,
            ErrorCode::PublishDisabled => 8,
            ErrorCode::Internal => 9,
        })
        .collect();
    assert_eq!(distinct.len(), 10, "every ErrorCode once");
    all.to_vec()
}

/// Every [`ResetReason`], the same way.
fn every_reset_reason() -> Vec<ResetReason> {
    let all = [ResetReason::EpochChanged, ResetReason::HistoryExpired];
    let distinct: BTreeSet<usize> = all
        .iter()
        .map(|r| match r {
            ResetReason::EpochChanged => 0,
            ResetReason::HistoryExpired => 1,
        })
        .collect();
    assert_eq!(distinct.len(), 2, "every ResetReason once");
    all.to_vec()
}

/// Every client [`Op`], the same way.
fn every_op() -> Vec<Op> {
    let all = vec![
        Op::Subscribe {
            topics: vec!["a".into()],
            last: None,
            resume: Some(Resume {
                epoch: "e".into(),
                topics: BTreeMap::new(),
            }),
        },
        Op::Unsubscribe {
            topics: vec!["a".into()],
        },
        Op::Publish {
            topic: "a".into(),
            data: "1".into(),
            key: None,
            headers: BTreeMap::new(),
        },
        Op::Ping,
        Op::Pong,
        Op::Auth { token: "t".into() },
    ];
    let distinct: BTreeSet<usize> = all
        .iter()
        .map(|op| match op {
            Op::Subscribe { .. } => 0,
            Op::Unsubscribe { .. } => 1,
            Op::Publish { .. } => 2,
            Op::Ping => 3,
            Op::Pong => 4,
            Op::Auth { .. } => 5,
        })
        .collect();
    assert_eq!(distinct.len(), 6, "every Op once");
    all
}

/// The literal codes of `ApiError::new(status, "code", …)` in `broker/src/http/`:
/// the HTTP-only error codes, next to the [`ErrorCode`]s.
fn http_only_codes() -> Result<BTreeSet<String>> {
    let dir = repo().join("broker/src/http");
    let mut codes = BTreeSet::new();
    for entry in std::fs::read_dir(&dir).with_context(|| format!("{}", dir.display()))? {
        let path = entry?.path();
        if path.extension().is_none_or(|e| e != "rs") {
            continue;
        }
        let text = std::fs::read_to_string(&path)?;
        for call in text.split("ApiError::new(").skip(1) {
            // The first string literal among the call's arguments is the code.
            let args = call.split(';').next().unwrap_or_default();
            let code = args.split('"').nth(1).ok_or_else(|| {
                anyhow!(
                    "an ApiError::new call without a literal code in {}",
                    path.display()
                )
            })?;
            codes.insert(code.to_string());
        }
    }
    ensure!(
        !codes.is_empty(),
        "found no ApiError::new call in {}",
        dir.display()
    );
    Ok(codes)
}

#[test]
fn the_document_covers_every_protocol_type() -> Result<()> {
    let contract = Contract::load()?;

    // Server messages: every variant serializes to a documented, valid message.
    let topics = vec!["orders.*".to_string()];
    let id = RawValue::from_string("\"r-1\"".into())?;
    let messages = every_server_message(&topics, &id);
    let variants: BTreeSet<usize> = messages.iter().map(variant).collect();
    ensure!(
        variants.len() == SERVER_MESSAGE_VARIANTS,
        "every_server_message() lacks a ServerMessage variant"
    );
    let mut types = BTreeSet::new();
    for m in &messages {
        let v: Value = serde_json::from_str(&m.to_frame())?;
        types.insert(contract.server_message(&v)?);
    }
    // Events are rendered by herald::protocol::event, once per event.
    let mut headers = BTreeMap::new();
    headers.insert("trace".to_string(), "abc".to_string());
    for (payload, key, headers) in [
        (&br#"{"id":7}"#[..], Some("order-7"), &headers),
        (b"plain text", None, &BTreeMap::new()),
        (&[0xff, 0x00, 0x10], None, &BTreeMap::new()),
        (b"null", None, &BTreeMap::new()),
    ] {
        // Single node; cluster history (a stream event, a node-local one).
        let kinds = [(None, false), (Some(40), false), (None, true)];
        for (source, (prev, local)) in herald::Source::ALL
            .into_iter()
            .flat_map(|s| kinds.map(|k| (s, k)))
        {
            let live = herald::protocol::event::render(
                herald::protocol::event::EventMeta {
                    topic: "orders.eu",
                    seq: 42,
                    prev,
                    local,
                    ts: 1_763_800_000_123,
                    source,
                    key,
                    headers,
                },
                payload,
            );
            for frame in [live.clone(), herald::protocol::event::replay_of(&live)] {
                let v: Value = serde_json::from_str(&frame)?;
                types.insert(contract.server_message(&v)?);
            }
        }
    }
    ensure!(
        types == contract.server_types(),
        "the broker's server messages {types:?} differ from the document's {:?}",
        contract.server_types()
    );

    // Client ops.
    let ops: BTreeSet<String> = every_op().iter().map(|op| op.name().to_string()).collect();
    let documented: BTreeSet<String> = contract.client.keys().cloned().collect();
    ensure!(
        ops == documented,
        "the broker's ops {ops:?} differ from the document's {documented:?}"
    );

    // Enumerations.
    let codes: BTreeSet<String> = every_error_code()
        .iter()
        .map(|c| c.as_str().to_string())
        .collect();
    let documented = contract.schema_enum("/components/schemas/ErrorCode")?;
    ensure!(
        codes == documented,
        "error codes: broker {codes:?}, document {documented:?}"
    );
    let mut http_codes = codes.clone();
    http_codes.extend(http_only_codes()?);
    let documented =
        contract.schema_enum("/components/schemas/HttpError/properties/error/properties/code")?;
    ensure!(
        http_codes == documented,
        "HTTP error codes: broker {http_codes:?}, document {documented:?}"
    );
    let reasons: BTreeSet<String> = every_reset_reason()
        .iter()
        .map(|r| serde_json::to_value(r).map(|v| v.as_str().unwrap_or_default().to_string()))
        .collect::<Result<_, _>>()?;
    let documented = contract.schema_enum("/components/schemas/ResetReason")?;
    ensure!(
        reasons == documented,
        "reset reasons: broker {reasons:?}, document {documented:?}"
    );
    let sources: BTreeSet<String> = herald::Source::ALL
        .iter()
        .map(|s| s.as_str().to_string())
        .collect();
    let documented = contract.schema_enum("/components/schemas/Source")?;
    ensure!(
        sources == documented,
        "sources: broker {sources:?}, document {documented:?}"
    );
    let closes: BTreeSet<u64> = close::ALL.iter().map(|&c| u64::from(c)).collect();
    let documented: BTreeSet<u64> = contract
        .resolve("/channels/herald/x-close-codes")?
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|c| c["code"].as_u64())
        .collect();
    ensure!(
        closes == documented,
        "close codes: broker {closes:?}, document {documented:?}"
    );
    let protocol = &contract.resolve("/components/schemas/Welcome/properties/protocol")?["const"];
    ensure!(
        protocol == herald::protocol::SUBPROTOCOL,
        "subprotocol {protocol}"
    );
    Ok(())
}

/// Every example of every message matches the message's payload and headers
/// schemas (the same check `scripts/asyncapi-check` makes with ajv).
#[test]
fn every_example_matches_its_schemas() -> Result<()> {
    let contract = Contract::load()?;
    let messages = contract
        .resolve("/components/messages")?
        .as_object()
        .cloned()
        .unwrap_or_default();
    let mut checked = 0;
    for (name, message) in &messages {
        for (i, example) in message["examples"]
            .as_array()
            .into_iter()
            .flatten()
            .enumerate()
        {
            for part in ["payload", "headers"] {
                let Some(value) = example.get(part) else {
                    continue;
                };
                ensure!(
                    message.get(part).is_some(),
                    "{name} example {i} has {part}, the message has no schema for it"
                );
                let validator =
                    contract.validator(&format!("/components/messages/{name}/{part}"))?;
                valid(&validator, value).with_context(|| format!("{name} example {i} ({part})"))?;
                checked += 1;
            }
        }
    }
    ensure!(checked > 20, "only {checked} examples");
    Ok(())
}

// ---------------------------------------------------------------------------------
// docs/asyncapi.md
// ---------------------------------------------------------------------------------

fn render(args: &[&std::ffi::OsStr]) -> Result<std::process::Output> {
    Command::new("python3")
        .arg(repo().join("scripts/asyncapi-render"))
        .args(args)
        .output()
        .context("run python3 scripts/asyncapi-render")
}

#[test]
fn the_markdown_is_rendered_from_the_json() -> Result<()> {
    let out = render(&["--check".as_ref()])?;
    ensure!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // The check can fail: a page edited by hand, and a JSON changed without
    // rendering, are both stale.
    let dir = tempfile::tempdir()?;
    let md = dir.path().join("asyncapi.md");
    let json_path = dir.path().join("asyncapi.json");
    let mut text = std::fs::read_to_string(repo().join("docs/asyncapi.md"))?;
    text.push_str("\nedited by hand\n");
    std::fs::write(&md, &text)?;
    let out = render(&["--check".as_ref(), "--md".as_ref(), md.as_os_str()])?;
    ensure!(
        !out.status.success(),
        "--check accepted a page edited by hand"
    );
    let mut doc: Value = serde_json::from_str(&document_text()?)?;
    doc["info"]["title"] = json!("Changed");
    std::fs::write(&json_path, serde_json::to_string_pretty(&doc)?)?;
    let real_md = repo().join("docs/asyncapi.md");
    let out = render(&[
        "--check".as_ref(),
        "--json".as_ref(),
        json_path.as_os_str(),
        "--md".as_ref(),
        real_md.as_os_str(),
    ])?;
    ensure!(
        !out.status.success(),
        "--check accepted a page rendered from another JSON"
    );
    Ok(())
}
