//! The publisher: stamped messages at a fixed rate, through NATS or Herald's HTTP API.
//!
//! It runs on a thread of its own with its own runtime, so a receiving side busy with
//! thousands of connections cannot delay its schedule by more than the OS scheduler
//! does. Every millisecond it publishes the messages that are due by then
//! (`rate × elapsed`), round-robin over the topics, so a late wake-up is caught up with
//! a burst rather than lowering the offered rate.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

use crate::clock;
use crate::payload::{self, Stamp};
use crate::stats::Stats;
use crate::target::topic_name;

/// Longest batch of events in one `POST /api/publish`, to stay well below Herald's
/// default `publish.max_body_bytes` (1 MiB) at 200-byte payloads.
const MAX_HTTP_BATCH: usize = 1000;

/// Where messages go.
#[derive(Debug, Clone)]
pub enum Via {
    /// Core NATS publishes to `<subject prefix>t<i>`.
    Nats {
        /// Server URL.
        url: String,
        /// Subject of topic `t<i>` is this plus `t<i>`.
        subject_prefix: String,
    },
    /// Herald's `POST /api/publish`, batched per tick.
    Http {
        /// `http://host:port`.
        base: String,
        /// `Authorization: Bearer` for `/api/*`, when auth is on.
        api_key: Option<String>,
    },
}

/// What and when to publish.
#[derive(Debug, Clone)]
pub struct Plan {
    /// Messages per second, over all topics.
    pub rate: f64,
    /// Payload size in bytes.
    pub size: usize,
    /// Realistic padding (`--realistic`).
    pub realistic: bool,
    /// Number of topics.
    pub topics: u32,
    /// Start of publishing ([`clock::now_us`]).
    pub start_us: u64,
    /// End of publishing.
    pub end_us: u64,
    /// Start of the measurement window: messages stamped in `[window_start_us,
    /// end_us)` are the measured ones.
    pub window_start_us: u64,
}

/// What was published.
#[derive(Debug, Clone, Default)]
pub struct Published {
    /// Every message handed over.
    pub total: u64,
    /// Measured messages per topic.
    pub measured_per_topic: Vec<u64>,
    /// Publishes that failed.
    pub errors: u64,
    /// The first failure.
    pub first_error: Option<String>,
}

/// Why publishing could not start.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    /// The NATS connection failed.
    #[error("cannot connect to NATS at {url}: {source}")]
    Connect {
        /// The URL.
        url: String,
        /// Why.
        source: async_nats::ConnectError,
    },
    /// The HTTP client could not be built.
    #[error("HTTP client: {0}")]
    Http(#[from] reqwest::Error),
    /// The runtime of the publishing thread could not be built.
    #[error("publisher runtime: {0}")]
    Runtime(#[from] std::io::Error),
}

/// A connected publisher, not yet publishing.
#[derive(Debug)]
pub enum Publisher {
    /// See [`Via::Nats`].
    Nats {
        /// The connection.
        client: async_nats::Client,
        /// The subject of each topic.
        subjects: Vec<async_nats::Subject>,
    },
    /// See [`Via::Http`].
    Http {
        /// The client.
        client: reqwest::Client,
        /// `…/api/publish`.
        url: String,
        /// Bearer key.
        api_key: Option<String>,
    },
}

impl Publisher {
    /// Connects (NATS) or builds the client (HTTP), so that a bad URL fails before
    /// any connection is opened to the server under test.
    pub async fn connect(via: &Via, topics: u32) -> Result<Publisher, PublishError> {
        Ok(match via {
            Via::Nats {
                url,
                subject_prefix,
            } => {
                let client = async_nats::ConnectOptions::new()
                    .name("herald-bench")
                    .connect(url.as_str())
                    .await
                    .map_err(|source| PublishError::Connect {
                        url: url.clone(),
                        source,
                    })?;
                let subjects = (0..topics)
                    .map(|t| format!("{subject_prefix}{}", topic_name(t)).into())
                    .collect();
                Publisher::Nats { client, subjects }
            }
            Via::Http { base, api_key } => Publisher::Http {
                client: reqwest::Client::builder()
                    .timeout(Duration::from_secs(10))
                    .build()?,
                url: format!("{}/api/publish", base.trim_end_matches('/')),
                api_key: api_key.clone(),
            },
        })
    }

    /// Publishes `plan` (call on the publishing thread's runtime).
    pub async fn run(self, plan: Plan, stats: Arc<Stats>) -> Published {
        let mut out = Published {
            measured_per_topic: vec![0; plan.topics as usize],
            ..Published::default()
        };
        let topics = u64::from(plan.topics.max(1));
        let mut payload = Vec::with_capacity(plan.size.max(payload::MIN_SIZE));
        let mut batch: Vec<u8> = Vec::new();
        let mut batch_len = 0usize;
        let mut sent: u64 = 0;
        loop {
            let now = clock::now_us();
            let due = if now >= plan.end_us {
                due_by(plan.rate, plan.end_us - plan.start_us)
            } else {
                due_by(plan.rate, now.saturating_sub(plan.start_us))
            };
            while sent < due {
                let topic = (sent % topics) as u32;
                let stamp = Stamp {
                    sent_us: clock::now_us(),
                    seq: sent / topics + 1,
                    topic,
                };
                payload::encode_padded(stamp, plan.size, plan.realistic, &mut payload);
                // The receivers' rule exactly: stamped inside the window. (The last
                // catch-up after the end is published but not measured.)
                if (plan.window_start_us..plan.end_us).contains(&stamp.sent_us) {
                    out.measured_per_topic[topic as usize] += 1;
                }
                match &self {
                    Publisher::Nats { client, subjects } => {
                        let body = Bytes::copy_from_slice(&payload);
                        if let Err(e) = client.publish(subjects[topic as usize].clone(), body).await
                        {
                            out.fail(e.to_string());
                        }
                    }
                    Publisher::Http { .. } => {
                        batch.push(if batch_len == 0 { b'[' } else { b',' });
                        batch.extend_from_slice(br#"{"topic":""#);
                        batch.extend_from_slice(topic_name(topic).as_bytes());
                        batch.extend_from_slice(br#"","data":"#);
                        batch.extend_from_slice(&payload);
                        batch.push(b'}');
                        batch_len += 1;
                    }
                }
                sent += 1;
                stats.published.store(sent, Relaxed);
                if batch_len >= MAX_HTTP_BATCH || (sent == due && batch_len > 0) {
                    batch.push(b']');
                    self.post(std::mem::take(&mut batch), batch_len, &mut out)
                        .await;
                    batch_len = 0;
                }
            }
            if now >= plan.end_us {
                break;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        if let Publisher::Nats { client, .. } = &self {
            if let Err(e) = client.flush().await {
                out.fail(format!("flush: {e}"));
            }
        }
        out.total = sent;
        out
    }

    /// Sends one HTTP batch of `n` events.
    async fn post(&self, body: Vec<u8>, n: usize, out: &mut Published) {
        let Publisher::Http {
            client,
            url,
            api_key,
        } = self
        else {
            return;
        };
        let mut req = client
            .post(url)
            .header("content-type", "application/json")
            .body(body);
        if let Some(key) = api_key {
            req = req.bearer_auth(key);
        }
        match req.send().await {
            Ok(resp) if resp.status().as_u16() == 202 => {}
            Ok(resp) => {
                let status = resp.status();
                let text = resp.text().await.unwrap_or_default();
                for _ in 0..n {
                    out.fail(format!("POST {url}: {status}: {}", text.trim()));
                }
            }
            Err(e) => {
                for _ in 0..n {
                    out.fail(format!("POST {url}: {e}"));
                }
            }
        }
    }
}

impl Published {
    fn fail(&mut self, error: String) {
        self.errors += 1;
        self.first_error.get_or_insert(error);
    }
}

/// Messages due `elapsed_us` after the start at `rate` per second.
fn due_by(rate: f64, elapsed_us: u64) -> u64 {
    (rate * elapsed_us as f64 / 1e6).floor() as u64
}

/// A publisher connected on a thread of its own, waiting for its plan.
#[derive(Debug)]
pub struct Handle {
    plan: tokio::sync::oneshot::Sender<Plan>,
    done: tokio::sync::oneshot::Receiver<Published>,
}

/// Starts the publishing thread and connects there (the NATS client's connection task
/// and the HTTP client's pool live on the runtime that made them, so they must be made
/// on the publisher's own). Returns once connected.
pub async fn spawn(via: Via, topics: u32, stats: Arc<Stats>) -> Result<Handle, PublishError> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
    let (plan_tx, plan_rx) = tokio::sync::oneshot::channel::<Plan>();
    let (done_tx, done_rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("publisher".into())
        .spawn(move || {
            runtime.block_on(async move {
                let publisher = match Publisher::connect(&via, topics).await {
                    Ok(p) => p,
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                        return;
                    }
                };
                let _ = ready_tx.send(Ok(()));
                if let Ok(plan) = plan_rx.await {
                    let _ = done_tx.send(publisher.run(plan, stats).await);
                }
            });
        })?;
    match ready_rx.await {
        Ok(Ok(())) => Ok(Handle {
            plan: plan_tx,
            done: done_rx,
        }),
        Ok(Err(e)) => Err(e),
        Err(_) => Err(PublishError::Runtime(std::io::Error::other(
            "the publishing thread ended before connecting",
        ))),
    }
}

impl Handle {
    /// Starts publishing `plan`; the result arrives on the returned channel.
    pub fn start(self, plan: Plan) -> tokio::sync::oneshot::Receiver<Published> {
        let _ = self.plan.send(plan);
        self.done
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_are_due_in_proportion_to_time() {
        assert_eq!(due_by(1000.0, 0), 0);
        assert_eq!(due_by(1000.0, 999), 0);
        assert_eq!(due_by(1000.0, 1000), 1);
        assert_eq!(due_by(1000.0, 2_500_000), 2500);
        assert_eq!(due_by(0.5, 4_000_000), 2);
    }
}
