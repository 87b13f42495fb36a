//! A fleet of services reporting metrics over core NATS, the way many microservices
//! already do: one subject per service and metric, `metrics.<service>.<metric>`
//! (`metrics.checkout.latency_ms`, `metrics.api.rps`, …), a small JSON document per
//! sample. A Herald NATS bridge subscribed to `metrics.>` turns each sample into an
//! event on the topic of the same name, and a dashboard subscribed to
//! `metrics.checkout.*` (or `metrics.>`) draws them live.
//!
//! Run it (with a `nats-server` on 127.0.0.1:4222 and Herald bridging `metrics.>`):
//!     cargo run -p herald-examples --example nats_publisher -- --rate 10
//! Flags: `--nats-url` (or `NATS_URL`, default `nats://127.0.0.1:4222`), `--rate`
//! (or `DEMO_RATE`, samples per second over all subjects, default 10), `--count N`
//! (stop after N samples). It waits for NATS when NATS is not up yet (a compose stack
//! starts everything at once) and reconnects on its own after an outage.
//!
//! Each sample looks like
//!     {"service":"checkout","metric":"latency_ms","value":182.4,"unit":"ms",
//!      "host":"checkout-2","ts":1763800000123}
//! The values wander around a per-series baseline with the odd spike, so a chart of
//! them looks like a real system rather than noise.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{ensure, Context as _};
use clap::Parser;
use rand::Rng;
use serde_json::json;

/// Command-line flags; each has an environment twin for the compose stack.
#[derive(Debug, Parser)]
#[command(about = "Publish demo service metrics to NATS subjects metrics.<service>.<metric>")]
struct Args {
    /// NATS server URL.
    #[arg(long, env = "NATS_URL", default_value = "nats://127.0.0.1:4222")]
    nats_url: String,
    /// Samples per second, over all subjects.
    #[arg(long, env = "DEMO_RATE", default_value_t = 10.0)]
    rate: f64,
    /// Stop after this many samples (default: run until interrupted).
    #[arg(long)]
    count: Option<u64>,
}

/// The services of the demo and, per service, the host names samples come from.
const SERVICES: [(&str, u32); 5] = [
    ("checkout", 3),
    ("api", 4),
    ("search", 2),
    ("payments", 2),
    ("auth", 2),
];

/// The metrics every service reports: name, unit, and the baseline per service
/// (in the order of [`SERVICES`]).
const METRICS: [(&str, &str, [f64; 5]); 4] = [
    ("latency_ms", "ms", [180.0, 45.0, 120.0, 320.0, 25.0]),
    ("rps", "req/s", [35.0, 850.0, 210.0, 30.0, 140.0]),
    ("error_rate", "%", [0.4, 0.8, 0.3, 1.2, 0.2]),
    ("cpu_pct", "%", [38.0, 62.0, 55.0, 24.0, 17.0]),
];

/// One time series: a value that drifts back towards its baseline, with noise and
/// rare spikes (a slow dependency, a traffic burst).
struct Series {
    subject: String,
    service: &'static str,
    metric: &'static str,
    unit: &'static str,
    hosts: u32,
    baseline: f64,
    value: f64,
}

impl Series {
    /// Moves the value one step and returns the sample to publish.
    fn sample(&mut self, rng: &mut impl Rng) -> serde_json::Value {
        // Mean-reverting random walk: pulled 20% of the way back to the baseline,
        // then pushed by noise of about 8% of it.
        let noise: f64 = (0..3).map(|_| rng.random_range(-1.0..1.0)).sum::<f64>() / 3.0;
        self.value += (self.baseline - self.value) * 0.2 + self.baseline * 0.08 * noise;
        if rng.random_bool(0.01) {
            self.value *= 2.5;
        }
        self.value = self.value.max(0.0);
        if self.unit == "%" {
            self.value = self.value.min(100.0);
        }
        let host = format!("{}-{}", self.service, rng.random_range(1..=self.hosts));
        json!({
            "service": self.service,
            "metric": self.metric,
            "value": (self.value * 10.0).round() / 10.0,
            "unit": self.unit,
            "host": host,
            "ts": now_ms(),
        })
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Every (service, metric) series, in the round-robin order samples go out in: with
/// `--rate 10` each of the 20 subjects gets a sample every two seconds.
fn all_series() -> Vec<Series> {
    let mut series = Vec::new();
    for (metric, unit, baselines) in METRICS {
        for ((service, hosts), baseline) in SERVICES.into_iter().zip(baselines) {
            series.push(Series {
                subject: format!("metrics.{service}.{metric}"),
                service,
                metric,
                unit,
                hosts,
                baseline,
                value: baseline,
            });
        }
    }
    series
}

/// Connects in the background and waits until the first connection is up, so that
/// a publisher started before NATS (compose starts everything at once) waits instead
/// of failing. After that the client reconnects by itself, forever.
async fn connect(url: &str) -> anyhow::Result<async_nats::Client> {
    let client = async_nats::ConnectOptions::new()
        .name("herald-demo-nats-publisher")
        .retry_on_initial_connect()
        .max_reconnects(None)
        .event_callback(|event| async move {
            match event {
                async_nats::Event::Connected | async_nats::Event::Disconnected => {
                    eprintln!("nats_publisher: NATS {event}");
                }
                other => eprintln!("nats_publisher: NATS: {other}"),
            }
        })
        .connect(url)
        .await
        .with_context(|| format!("bad NATS URL {url}"))?;
    let mut next_note = Instant::now();
    while client.connection_state() != async_nats::connection::State::Connected {
        if Instant::now() >= next_note {
            eprintln!("nats_publisher: waiting for NATS at {url}");
            next_note += Duration::from_secs(10);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(client)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    ensure!(
        args.rate.is_finite() && args.rate > 0.0,
        "--rate must be a positive number of samples per second"
    );
    let client = connect(&args.nats_url).await?;
    eprintln!(
        "nats_publisher: publishing {} samples/s to metrics.<service>.<metric> on {}",
        args.rate, args.nats_url
    );

    let mut series = all_series();
    let mut rng = rand::rng();
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / args.rate));
    // A stall (NATS down, the machine busy) is not made up for with a burst.
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut report = tokio::time::interval(Duration::from_secs(10));
    report.tick().await;
    let shutdown = herald_examples::shutdown_signal();
    tokio::pin!(shutdown);

    let mut published: u64 = 0;
    while args.count.is_none_or(|n| published < n) {
        tokio::select! {
            _ = &mut shutdown => break,
            _ = report.tick() => eprintln!("nats_publisher: {published} samples published"),
            _ = tick.tick() => {
                let index = usize::try_from(published % series.len() as u64)?;
                let one = &mut series[index];
                let payload = one.sample(&mut rng).to_string();
                // Fire and forget, as core NATS is: the client buffers the message
                // (also while it reconnects) and writes it out in the background.
                client
                    .publish(one.subject.clone(), payload.into())
                    .await
                    .context("publish")?;
                published += 1;
            }
        }
    }
    // Everything buffered goes out before the process exits.
    client.flush().await.context("flush")?;
    eprintln!("nats_publisher: done, {published} samples published");
    Ok(())
}
