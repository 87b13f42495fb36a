//! A private Kafka-protocol broker for tests: `tansu` with in-memory storage on a
//! free port, stopped on drop and restartable on the same port (an outage; its
//! memory storage starts empty again, like a broker that lost its data).
//!
//! `scripts/test` installs tansu once per machine (it takes minutes to build) into
//! [`tansu_path`]'s default location. A missing binary fails the test loudly with
//! what to run; it never skips.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _, Result};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::ClientConfig;

/// Where `scripts/test` installs tansu: `$HERALD_TANSU` if set, else
/// `~/.local/share/herald/tools/tansu-0.6.0/bin/tansu`.
pub fn tansu_path() -> PathBuf {
    if let Some(p) = std::env::var_os("HERALD_TANSU") {
        return PathBuf::from(p);
    }
    let home = std::env::var_os("HOME").unwrap_or_default();
    PathBuf::from(home).join(".local/share/herald/tools/tansu-0.6.0/bin/tansu")
}

/// A running (or stopped) tansu broker.
pub struct Tansu {
    pub port: u16,
    child: Option<Child>,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Tansu {
    /// Starts tansu on a free port.
    pub fn start() -> Result<Tansu> {
        let dir = tempfile::tempdir()?;
        let mut t = Tansu {
            port: TcpListener::bind("127.0.0.1:0")?.local_addr()?.port(),
            child: None,
            log: dir.path().join("tansu.log"),
            _dir: dir,
        };
        t.restart()?;
        Ok(t)
    }

    /// `127.0.0.1:PORT`, for `brokers =` and `bootstrap.servers`.
    pub fn brokers(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Starts tansu again on the same port, with empty storage.
    pub fn restart(&mut self) -> Result<()> {
        let bin = tansu_path();
        if !bin.exists() {
            bail!(
                "tansu is not installed at {} (scripts/test installs it: cargo install tansu --version 0.6.0 --features dynostore --locked --root …)",
                bin.display()
            );
        }
        let url = format!("tcp://127.0.0.1:{}", self.port);
        let log = std::fs::File::create(&self.log)?;
        let child = Command::new(&bin)
            .args([
                "broker",
                "--listener-url",
                &url,
                "--advertised-listener-url",
                &url,
            ])
            .args(["--storage-engine", "memory://tansu/"])
            .env_remove("CLUSTER_ID")
            .env_remove("STORAGE_ENGINE")
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .with_context(|| format!("start {}", bin.display()))?;
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(15);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            if let Some(Ok(Some(status))) = self.child.as_mut().map(Child::try_wait) {
                bail!("tansu exited with {status}: {}", self.log_text());
            }
            if Instant::now() > deadline {
                bail!("tansu did not listen on {}: {}", self.port, self.log_text());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }

    /// Stops the broker (an outage).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// What tansu wrote to stderr, for failure messages.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Creates `topic` with `partitions` partitions.
    pub async fn create_topic(&self, topic: &str, partitions: i32) -> Result<()> {
        let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
            .set("bootstrap.servers", self.brokers())
            .create()?;
        let results = admin
            .create_topics(
                &[NewTopic::new(topic, partitions, TopicReplication::Fixed(1))],
                &AdminOptions::new().operation_timeout(Some(Duration::from_secs(10))),
            )
            .await?;
        for r in results {
            r.map_err(|(t, e)| anyhow::anyhow!("create topic {t}: {e}"))?;
        }
        Ok(())
    }

    /// A producer that delivers each record before `send` returns.
    pub fn producer(&self) -> Result<Producer> {
        let inner: FutureProducer = ClientConfig::new()
            .set("bootstrap.servers", self.brokers())
            .set("message.timeout.ms", "10000")
            .set("linger.ms", "0")
            .create()?;
        Ok(Producer { inner })
    }
}

impl Drop for Tansu {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Produces test records.
pub struct Producer {
    inner: FutureProducer,
}

/// One record to produce.
#[derive(Debug, Default, Clone)]
pub struct Record<'a> {
    pub topic: &'a str,
    pub partition: Option<i32>,
    pub key: Option<&'a [u8]>,
    pub payload: Option<&'a [u8]>,
    pub headers: &'a [(&'a str, &'a str)],
}

impl<'a> Record<'a> {
    /// A record with only a value, partitioned by the producer.
    pub fn value(topic: &'a str, payload: &'a [u8]) -> Record<'a> {
        Record {
            topic,
            payload: Some(payload),
            ..Record::default()
        }
    }
}

impl Producer {
    /// Sends one record and waits for the broker's acknowledgement; returns
    /// `(partition, offset)`.
    pub async fn send(&self, r: Record<'_>) -> Result<(i32, i64)> {
        let mut record: FutureRecord<'_, [u8], [u8]> = FutureRecord::to(r.topic);
        if let Some(p) = r.partition {
            record = record.partition(p);
        }
        if let Some(k) = r.key {
            record = record.key(k);
        }
        if let Some(p) = r.payload {
            record = record.payload(p);
        }
        if !r.headers.is_empty() {
            let mut h = rdkafka::message::OwnedHeaders::new();
            for (k, v) in r.headers {
                h = h.insert(rdkafka::message::Header {
                    key: k,
                    value: Some(*v),
                });
            }
            record = record.headers(h);
        }
        let delivery = self
            .inner
            .send(record, Duration::from_secs(10))
            .await
            .map_err(|(e, _)| anyhow::anyhow!("produce to {}: {e}", r.topic))?;
        Ok((delivery.partition, delivery.offset))
    }
}
