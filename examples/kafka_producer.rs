//! An order service writing its order events to Kafka, keyed by order id: every
//! order goes `created` → `paid` → `shipped` → `delivered` (a few are `cancelled`),
//! and all the events of one order share a key, so they land in one partition in
//! order. A Herald Kafka bridge reading `orders` with
//! `topic_template = "{topic}.{key}"` puts each order on a topic of its own
//! (`orders.order-482917`): a page showing one order subscribes to that topic, a
//! dashboard to `orders.>`.
//!
//! Run it (with a Kafka-protocol broker on 127.0.0.1:9092 and Herald bridging
//! `orders`):
//!     cargo run -p herald-examples --example kafka_producer -- --rate 10
//! Flags: `--brokers` (or `KAFKA_BROKERS`, default `127.0.0.1:9092`), `--topic`
//! (default `orders`), `--partitions` (used when it creates the topic, default 3),
//! `--rate` (or `DEMO_RATE`, events per second, default 10), `--count N` (stop after
//! N events, exit non-zero unless all N were acknowledged). It waits for the broker
//! when the broker is not up yet, and creates the topic when it does not exist.
//!
//! Each record's value looks like
//!     {"id":"order-482917","status":"paid","amount":129.9,"currency":"EUR",
//!      "region":"eu-west","items":3,"ts":1763800000123}

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, ensure, Context as _};
use clap::Parser;
use rand::seq::IndexedRandom;
use rand::Rng;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer as _};
use rdkafka::ClientConfig;
use serde_json::json;

/// Command-line flags; the ones the compose stack sets have an environment twin.
#[derive(Debug, Parser)]
#[command(about = "Produce demo order events to a Kafka topic, keyed by order id")]
struct Args {
    /// Bootstrap brokers, comma-separated host:port.
    #[arg(long, env = "KAFKA_BROKERS", default_value = "127.0.0.1:9092")]
    brokers: String,
    /// Kafka topic to produce to.
    #[arg(long, default_value = "orders")]
    topic: String,
    /// Partitions of the topic when this producer has to create it.
    #[arg(long, default_value_t = 3)]
    partitions: i32,
    /// Events per second.
    #[arg(long, env = "DEMO_RATE", default_value_t = 10.0)]
    rate: f64,
    /// Stop after this many events (default: run until interrupted).
    #[arg(long)]
    count: Option<u64>,
}

/// Regions orders come from, with their currency.
const REGIONS: [(&str, &str); 5] = [
    ("eu-west", "EUR"),
    ("eu-central", "EUR"),
    ("us-east", "USD"),
    ("us-west", "USD"),
    ("ap-southeast", "SGD"),
];

/// Orders in progress kept at least this many, so statuses interleave as in a shop.
const MIN_OPEN_ORDERS: usize = 8;

/// An order in progress.
struct Order {
    id: String,
    status: &'static str,
    amount: f64,
    region: (&'static str, &'static str),
    items: u32,
}

impl Order {
    /// The record value for the order's current status.
    fn value(&self) -> String {
        json!({
            "id": self.id,
            "status": self.status,
            "amount": self.amount,
            "currency": self.region.1,
            "region": self.region.0,
            "items": self.items,
            "ts": now_ms(),
        })
        .to_string()
    }

    /// Moves the order to its next status; `true` once it is finished.
    fn advance(&mut self, rng: &mut impl Rng) -> bool {
        self.status = match self.status {
            "created" if rng.random_bool(0.08) => "cancelled",
            "created" => "paid",
            "paid" => "shipped",
            _ => "delivered",
        };
        matches!(self.status, "delivered" | "cancelled")
    }
}

/// The shop: the orders in progress and the next order number.
struct Shop {
    open: Vec<Order>,
    next_id: u64,
}

impl Shop {
    fn new(rng: &mut impl Rng) -> Shop {
        // A random start, so two runs (a restarted container) rarely share ids.
        Shop {
            open: Vec::new(),
            next_id: rng.random_range(100_000..900_000),
        }
    }

    /// The next event: a new order, or the next step of an open one. Returns
    /// (key, value).
    fn next_event(&mut self, rng: &mut impl Rng) -> (String, String) {
        if self.open.len() < MIN_OPEN_ORDERS || rng.random_bool(0.3) {
            let order = Order {
                id: format!("order-{}", self.next_id),
                status: "created",
                amount: (rng.random_range(5.0..400.0_f64) * 100.0).round() / 100.0,
                region: *REGIONS.choose(rng).unwrap_or(&REGIONS[0]),
                items: rng.random_range(1..=6),
            };
            self.next_id += 1;
            let event = (order.id.clone(), order.value());
            self.open.push(order);
            return event;
        }
        let index = rng.random_range(0..self.open.len());
        let finished = self.open[index].advance(rng);
        let event = (self.open[index].id.clone(), self.open[index].value());
        if finished {
            self.open.swap_remove(index);
        }
        event
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Waits until a broker answers a metadata request (compose starts everything at
/// once; Kafka takes a while), then creates `topic` unless it exists.
async fn prepare(args: &Args, producer: &FutureProducer) -> anyhow::Result<()> {
    let mut next_note = Instant::now();
    let metadata = loop {
        let client = producer.clone();
        // A blocking librdkafka call: off the async threads. `None`: every topic, so
        // the request itself never auto-creates ours with the broker's defaults.
        let answer = tokio::task::spawn_blocking(move || {
            client.client().fetch_metadata(None, Duration::from_secs(5))
        })
        .await?;
        match answer {
            Ok(metadata) => break metadata,
            Err(e) => {
                if Instant::now() >= next_note {
                    eprintln!("kafka_producer: waiting for Kafka at {}: {e}", args.brokers);
                    next_note += Duration::from_secs(10);
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    };
    if metadata.topics().iter().any(|t| t.name() == args.topic) {
        return Ok(());
    }
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", &args.brokers)
        .create()?;
    let results = admin
        .create_topics(
            &[NewTopic::new(
                &args.topic,
                args.partitions,
                TopicReplication::Fixed(1),
            )],
            &AdminOptions::new().operation_timeout(Some(Duration::from_secs(10))),
        )
        .await?;
    for result in results {
        match result {
            Ok(topic) => eprintln!(
                "kafka_producer: created topic {topic} with {} partitions",
                args.partitions
            ),
            // Another producer (or an operator) was quicker: fine.
            Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((topic, e)) => bail!("create topic {topic}: {e}"),
        }
    }
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    ensure!(
        args.rate.is_finite() && args.rate > 0.0,
        "--rate must be a positive number of events per second"
    );
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &args.brokers)
        .set("client.id", "herald-demo-kafka-producer")
        // Give up on a record after a minute (librdkafka retries until then).
        .set("message.timeout.ms", "60000")
        .set("linger.ms", "5")
        .create()
        .context("create the Kafka producer")?;
    prepare(&args, &producer).await?;
    eprintln!(
        "kafka_producer: producing {} order events/s to {} on {}",
        args.rate, args.topic, args.brokers
    );

    let mut rng = rand::rng();
    let mut shop = Shop::new(&mut rng);
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / args.rate));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut report = tokio::time::interval(Duration::from_secs(10));
    report.tick().await;
    let shutdown = herald_examples::shutdown_signal();
    tokio::pin!(shutdown);

    // Each record's acknowledgement is awaited in its own task, so a slow broker
    // does not hold up the rate (librdkafka batches and retries underneath).
    let mut deliveries = tokio::task::JoinSet::new();
    let (mut sent, mut delivered, mut failed) = (0_u64, 0_u64, 0_u64);
    let mut tally = |ok: bool| {
        if ok {
            delivered += 1;
        } else {
            failed += 1;
        }
    };
    let mut interrupted = false;
    while args.count.is_none_or(|n| sent < n) {
        tokio::select! {
            _ = &mut shutdown => {
                interrupted = true;
                break;
            }
            Some(done) = deliveries.join_next() => tally(done?),
            _ = report.tick() => eprintln!("kafka_producer: {sent} events sent"),
            _ = tick.tick() => {
                let (key, value) = shop.next_event(&mut rng);
                let mut record = FutureRecord::to(&args.topic).key(&key).payload(&value);
                let delivery = loop {
                    match producer.send_result(record) {
                        Ok(delivery) => break delivery,
                        // librdkafka's local queue is full (broker down for a while):
                        // wait for room rather than drop.
                        Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                            record = r;
                            tokio::time::sleep(Duration::from_millis(100)).await;
                        }
                        Err((e, _)) => bail!("produce to {}: {e}", args.topic),
                    }
                };
                deliveries.spawn(async move {
                    match delivery.await {
                        Ok(Ok(_)) => true,
                        Ok(Err((e, _))) => {
                            eprintln!("kafka_producer: record {key} not delivered: {e}");
                            false
                        }
                        Err(_) => false,
                    }
                });
                sent += 1;
            }
        }
    }
    // Wait for the acknowledgements still due: all of them after `--count` (up to
    // `message.timeout.ms`), a few seconds' worth when interrupted.
    let drain = if interrupted {
        Duration::from_secs(5)
    } else {
        Duration::from_secs(90)
    };
    let _ = tokio::time::timeout(drain, async {
        while let Some(done) = deliveries.join_next().await {
            tally(done.unwrap_or(false));
        }
    })
    .await;
    let failed = failed + u64::try_from(deliveries.len())?;
    eprintln!("kafka_producer: done, {delivered} events delivered, {failed} failed");
    ensure!(failed == 0, "{failed} events were not delivered");
    Ok(())
}
