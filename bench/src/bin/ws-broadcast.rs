//! `ws-broadcast`: the "no features at all" reference server for the benchmarks.
//!
//! It subscribes to NATS subjects and sends every message, as it came, to every
//! WebSocket client subscribed to the message's topic. That is the whole feature set:
//! no JSON envelope, no sequence numbers, no history, no heartbeats, no auth, no
//! limits beyond a bounded queue per client. It shows what a plain tokio-tungstenite
//! broadcast costs on the same machine, so Herald's figures can be read against the
//! price of the work itself.
//!
//! Protocol (text frames):
//! - client → server: `sub TOPIC [TOPIC…]`; the server answers `subscribed`;
//! - server → client: each message's payload, in a text frame (a binary frame when
//!   it is not UTF-8).
//!
//! A message on subject `S` goes to topic `S` without `--strip-prefix` (exact match;
//! no wildcards). A client whose queue (`--queue` messages) is full misses messages;
//! the drops are counted and logged every 5 s.
//!
//! ```text
//! ws-broadcast --listen 127.0.0.1:9000 --nats nats://127.0.0.1:4222 --subjects 'bench.>' --strip-prefix bench.
//! ```

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use anyhow::Context as _;
use clap::Parser;
use futures_util::{SinkExt as _, StreamExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};

/// Command line.
#[derive(Debug, Parser)]
#[command(
    name = "ws-broadcast",
    version,
    about = "Minimal NATS → WebSocket broadcast server (benchmark reference)"
)]
struct Args {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:9000", env = "WS_BROADCAST_LISTEN")]
    listen: String,
    /// NATS server to subscribe to.
    #[arg(
        long,
        default_value = "nats://127.0.0.1:4222",
        env = "WS_BROADCAST_NATS"
    )]
    nats: String,
    /// Subjects to subscribe to (comma-separated; NATS wildcards allowed).
    #[arg(
        long,
        default_value = "bench.>",
        value_delimiter = ',',
        env = "WS_BROADCAST_SUBJECTS"
    )]
    subjects: Vec<String>,
    /// Removed from the start of a subject to get the topic.
    #[arg(long, default_value = "bench.", env = "WS_BROADCAST_STRIP_PREFIX")]
    strip_prefix: String,
    /// Messages queued per client before further ones are dropped for it.
    #[arg(long, default_value_t = 1024, env = "WS_BROADCAST_QUEUE")]
    queue: usize,
    /// Worker threads (default: the CPUs this process may run on).
    #[arg(long, env = "WS_BROADCAST_THREADS")]
    threads: Option<usize>,
}

/// A connected client's queue.
type Outbox = mpsc::Sender<Message>;

/// Topic → subscribed clients (by connection id).
#[derive(Debug, Default)]
struct Topics {
    clients: RwLock<HashMap<String, Vec<(u64, Outbox)>>>,
    /// Messages dropped because a client's queue was full.
    dropped: AtomicU64,
    /// Messages received from NATS.
    received: AtomicU64,
}

impl Topics {
    fn subscribe(&self, id: u64, topic: &str, outbox: &Outbox) {
        let mut clients = self
            .clients
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let subs = clients.entry(topic.to_string()).or_default();
        if !subs.iter().any(|(i, _)| *i == id) {
            subs.push((id, outbox.clone()));
        }
    }

    fn remove(&self, id: u64, topics: &[String]) {
        let mut clients = self
            .clients
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        for topic in topics {
            if let Some(subs) = clients.get_mut(topic) {
                subs.retain(|(i, _)| *i != id);
                if subs.is_empty() {
                    clients.remove(topic);
                }
            }
        }
    }

    /// Queues `message` for every subscriber of `topic`; the frame is shared, not
    /// copied.
    fn broadcast(&self, topic: &str, message: Message) {
        let clients = self
            .clients
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(subs) = clients.get(topic) {
            for (_, outbox) in subs {
                if outbox.try_send(message.clone()).is_err() {
                    self.dropped.fetch_add(1, Relaxed);
                }
            }
        }
    }
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let threads = args
        .threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
        .max(1);
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .enable_all()
        .build()?
        .block_on(serve(args))
}

async fn serve(args: Args) -> anyhow::Result<()> {
    let topics = Arc::new(Topics::default());
    let nats = async_nats::connect(args.nats.as_str())
        .await
        .with_context(|| format!("cannot connect to NATS at {}", args.nats))?;
    for subject in &args.subjects {
        let mut sub = nats
            .subscribe(subject.clone())
            .await
            .with_context(|| format!("cannot subscribe to {subject}"))?;
        let topics = topics.clone();
        let prefix = args.strip_prefix.clone();
        tokio::spawn(async move {
            while let Some(msg) = sub.next().await {
                topics.received.fetch_add(1, Relaxed);
                let topic = msg
                    .subject
                    .strip_prefix(prefix.as_str())
                    .unwrap_or(&msg.subject);
                let frame = match Utf8Bytes::try_from(msg.payload) {
                    Ok(text) => Message::Text(text),
                    Err(_) => continue,
                };
                topics.broadcast(topic, frame);
            }
        });
    }
    // Make sure the subscriptions are in effect before announcing readiness.
    nats.flush().await.context("NATS flush")?;

    let listener = TcpListener::bind(&args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    eprintln!(
        "ws-broadcast listening on {} (NATS {}, subjects {:?})",
        listener.local_addr()?,
        args.nats,
        args.subjects
    );
    tokio::spawn(report_drops(topics.clone()));
    let mut next_id = 0u64;
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(ok) => ok,
            Err(e) => {
                // EMFILE and friends: wait a little rather than spin.
                eprintln!("ws-broadcast: accept: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        next_id += 1;
        tokio::spawn(client(next_id, stream, topics.clone(), args.queue));
    }
}

/// Serves one client until it goes away.
async fn client(id: u64, stream: TcpStream, topics: Arc<Topics>, queue: usize) {
    let _ = stream.set_nodelay(true);
    // A small read buffer, so that an idle client costs little; writes are buffered
    // (tungstenite's default) and flushed once per batch below.
    let config = WebSocketConfig::default().read_buffer_size(4096);
    let Ok(ws) = tokio_tungstenite::accept_async_with_config(stream, Some(config)).await else {
        return;
    };
    let (mut sink, mut source) = ws.split();
    let (outbox, mut inbox) = mpsc::channel::<Message>(queue.max(1));
    let mut subscribed: Vec<String> = Vec::new();
    loop {
        tokio::select! {
            incoming = source.next() => match incoming {
                Some(Ok(Message::Text(text))) => {
                    if let Some(list) = text.as_str().strip_prefix("sub ") {
                        for topic in list.split_whitespace() {
                            topics.subscribe(id, topic, &outbox);
                            subscribed.push(topic.to_string());
                        }
                        let _ = outbox.try_send(Message::text("subscribed"));
                    }
                }
                Some(Ok(_)) => {}
                Some(Err(_)) | None => break,
            },
            Some(first) = inbox.recv() => {
                // Write everything queued, then flush once.
                if sink.feed(first).await.is_err() {
                    break;
                }
                let mut failed = false;
                while let Ok(next) = inbox.try_recv() {
                    if sink.feed(next).await.is_err() {
                        failed = true;
                        break;
                    }
                }
                if failed || sink.flush().await.is_err() {
                    break;
                }
            }
        }
    }
    topics.remove(id, &subscribed);
}

/// Logs dropped messages every 5 s while there are new ones.
async fn report_drops(topics: Arc<Topics>) {
    let mut last = 0;
    loop {
        tokio::time::sleep(Duration::from_secs(5)).await;
        let dropped = topics.dropped.load(Relaxed);
        if dropped != last {
            eprintln!(
                "ws-broadcast: {dropped} messages dropped for full client queues ({} received from NATS)",
                topics.received.load(Relaxed)
            );
            last = dropped;
        }
    }
}
