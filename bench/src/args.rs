//! The command line of `herald-bench`. Every flag has an environment twin
//! (`HERALD_BENCH_<FLAG>`).

use std::net::Ipv4Addr;
use std::path::PathBuf;

use clap::Parser;

use crate::target::Target;

/// How messages are published.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum PublishVia {
    /// Core NATS publishes (Herald's NATS bridge, nats-server, ws-broadcast).
    Nats,
    /// Herald's `POST /api/publish` (Herald only).
    Http,
}

/// Fan-out load tool: opens many WebSocket connections to a server, subscribes them
/// across topics, publishes timestamped messages at a fixed rate and reports
/// deliveries per second, loss and publish-to-receipt latency.
///
/// A progress line goes to stderr once per second; the JSON summary goes to stdout
/// (or to --json).
#[derive(Debug, Clone, Parser)]
#[command(name = "herald-bench", version)]
pub struct Args {
    /// Protocol of the server under test.
    #[arg(long, value_enum, default_value_t = Target::Herald, env = "HERALD_BENCH_TARGET")]
    pub target: Target,

    /// WebSocket URL of the server under test (ws:// only). With `--target herald-sse`
    /// the streams are `GET sse?topics=…` beside its path (`/ws` → `/sse`).
    #[arg(
        long,
        default_value = "ws://127.0.0.1:8080/ws",
        env = "HERALD_BENCH_URL"
    )]
    pub url: String,

    /// Connections to open.
    #[arg(
        short = 'c',
        long,
        default_value_t = 1000,
        env = "HERALD_BENCH_CONNECTIONS"
    )]
    pub connections: usize,

    /// Topics (t0, t1, …); connection i subscribes to topic i mod TOPICS (and the
    /// next ones, see --topics-per-conn).
    #[arg(long, default_value_t = 100, env = "HERALD_BENCH_TOPICS")]
    pub topics: u32,

    /// Topics each connection subscribes to.
    #[arg(long, default_value_t = 1, env = "HERALD_BENCH_TOPICS_PER_CONN")]
    pub topics_per_conn: u32,

    /// Messages published per second, over all topics. 0 publishes nothing: the
    /// connections stay idle for --duration (memory per connection).
    #[arg(long, conflicts_with = "offered", env = "HERALD_BENCH_RATE")]
    pub rate: Option<f64>,

    /// Offered load in deliveries per second; the message rate is this divided by
    /// the subscribers per topic.
    #[arg(long, env = "HERALD_BENCH_OFFERED")]
    pub offered: Option<f64>,

    /// Payload size in bytes (at least 78, the stamp itself).
    #[arg(long, default_value_t = 200, env = "HERALD_BENCH_SIZE")]
    pub size: usize,

    /// Pad payloads with an order as escaped JSON text (numbers varying per message)
    /// instead of `x`: what compression meets in real events.
    #[arg(long, env = "HERALD_BENCH_REALISTIC")]
    pub realistic: bool,

    /// Offer permessage-deflate on the upgrade (Herald with `session.compression =
    /// "deflate"`) and inflate compressed frames.
    #[arg(long, env = "HERALD_BENCH_DEFLATE")]
    pub deflate: bool,

    /// Seconds measured.
    #[arg(long, default_value_t = 10.0, env = "HERALD_BENCH_DURATION")]
    pub duration: f64,

    /// Seconds published before measuring starts.
    #[arg(long, default_value_t = 1.0, env = "HERALD_BENCH_WARMUP")]
    pub warmup: f64,

    /// Seconds to wait after the last subscription before memory is read and
    /// publishing starts.
    #[arg(long, default_value_t = 1.0, env = "HERALD_BENCH_SETTLE")]
    pub settle: f64,

    /// Longest wait after publishing for the last deliveries, in seconds (the wait
    /// also ends once everything arrived or nothing arrived for 2 s).
    #[arg(long, default_value_t = 10.0, env = "HERALD_BENCH_DRAIN")]
    pub drain: f64,

    /// How messages are published.
    #[arg(long, value_enum, default_value_t = PublishVia::Nats, env = "HERALD_BENCH_PUBLISH")]
    pub publish: PublishVia,

    /// NATS server to publish to.
    #[arg(
        long,
        default_value = "nats://127.0.0.1:4222",
        env = "HERALD_BENCH_NATS_URL"
    )]
    pub nats_url: String,

    /// Topic t<i> is published to the NATS subject <prefix>t<i>.
    #[arg(long, default_value = "bench.", env = "HERALD_BENCH_SUBJECT_PREFIX")]
    pub subject_prefix: String,

    /// Herald's HTTP base URL for --publish http (default: the host and port of --url).
    #[arg(long, env = "HERALD_BENCH_HTTP_URL")]
    pub http_url: Option<String>,

    /// API key for --publish http, when Herald's auth is on.
    #[arg(long, env = "HERALD_BENCH_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,

    /// JWT sent as `Authorization: Bearer` on every upgrade, when Herald's auth is on.
    #[arg(long, env = "HERALD_BENCH_TOKEN", hide_env_values = true)]
    pub token: Option<String>,

    /// New connections per second during the ramp; 0: as fast as they complete.
    #[arg(long, default_value_t = 0.0, env = "HERALD_BENCH_CONNECT_RATE")]
    pub connect_rate: f64,

    /// Connections being set up at once (connect, upgrade, subscription).
    #[arg(long, default_value_t = 256, env = "HERALD_BENCH_CONNECT_CONCURRENCY")]
    pub connect_concurrency: usize,

    /// Seconds a connection may take to upgrade, and again to confirm its
    /// subscription.
    #[arg(long, default_value_t = 10.0, env = "HERALD_BENCH_CONNECT_TIMEOUT")]
    pub connect_timeout: f64,

    /// First source address to bind client sockets to (loopback targets only).
    #[arg(long, default_value = "127.0.0.2", env = "HERALD_BENCH_SOURCE_BASE")]
    pub source_base: Ipv4Addr,

    /// Connections per source address before moving to the next one; 0 binds no
    /// source address.
    #[arg(long, default_value_t = 20_000, env = "HERALD_BENCH_PER_SOURCE")]
    pub per_source: usize,

    /// Process id of the server, for its CPU use and memory.
    #[arg(long, env = "HERALD_BENCH_PID")]
    pub pid: Option<u32>,

    /// CPU cores whose busy time (softirq included) to report over the measured
    /// seconds, comma-separated (e.g. the server's core and this tool's).
    #[arg(long, value_delimiter = ',', env = "HERALD_BENCH_CORES")]
    pub cores: Vec<usize>,

    /// Write the JSON summary to this file instead of stdout.
    #[arg(long, env = "HERALD_BENCH_JSON")]
    pub json: Option<PathBuf>,

    /// Worker threads receiving (default: the CPUs this process may run on).
    #[arg(long, env = "HERALD_BENCH_THREADS")]
    pub threads: Option<usize>,

    /// No progress line.
    #[arg(short, long, env = "HERALD_BENCH_QUIET")]
    pub quiet: bool,

    /// Free text copied into the summary (the script names runs with it).
    #[arg(long, default_value = "", env = "HERALD_BENCH_LABEL")]
    pub label: String,
}

/// A combination of flags that cannot work.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ArgsError(String);

impl Args {
    /// Checks what clap cannot.
    pub fn validate(&self) -> Result<(), ArgsError> {
        let fail = |m: &str| Err(ArgsError(m.to_string()));
        if self.connections == 0 {
            return fail("--connections must be at least 1");
        }
        if self.topics == 0 {
            return fail("--topics must be at least 1");
        }
        if self.topics_per_conn == 0 || self.topics_per_conn > self.topics {
            return fail("--topics-per-conn must be between 1 and --topics");
        }
        if self.size < crate::payload::MIN_SIZE {
            return Err(ArgsError(format!(
                "--size must be at least {} bytes (the stamp itself)",
                crate::payload::MIN_SIZE
            )));
        }
        for (name, v) in [
            ("--duration", self.duration),
            ("--warmup", self.warmup),
            ("--settle", self.settle),
            ("--drain", self.drain),
            ("--connect-rate", self.connect_rate),
            ("--rate", self.rate.unwrap_or(0.0)),
            ("--offered", self.offered.unwrap_or(0.0)),
        ] {
            if !(v.is_finite() && v >= 0.0) {
                return Err(ArgsError(format!("{name} must be a number >= 0")));
            }
        }
        if self.connect_timeout <= 0.0 || !self.connect_timeout.is_finite() {
            return fail("--connect-timeout must be > 0");
        }
        if self.connect_concurrency == 0 {
            return fail("--connect-concurrency must be at least 1");
        }
        if self.publish == PublishVia::Http
            && !matches!(self.target, Target::Herald | Target::HeraldSse)
        {
            return fail("--publish http works with --target herald or herald-sse only");
        }
        Ok(())
    }

    /// Subscribers per topic if every connection subscribes.
    pub fn planned_subscribers_per_topic(&self) -> f64 {
        self.connections as f64 * f64::from(self.topics_per_conn) / f64::from(self.topics)
    }

    /// Messages per second to publish.
    pub fn message_rate(&self) -> f64 {
        match (self.rate, self.offered) {
            (Some(rate), _) => rate,
            (None, Some(offered)) => offered / self.planned_subscribers_per_topic(),
            (None, None) => 0.0,
        }
    }

    /// The topics connection `index` subscribes to.
    pub fn topics_of(&self, index: usize) -> Vec<u32> {
        let first = (index % self.topics as usize) as u32;
        (0..self.topics_per_conn)
            .map(|k| (first + k) % self.topics)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(extra: &[&str]) -> Args {
        Args::try_parse_from(std::iter::once("herald-bench").chain(extra.iter().copied()))
            .expect("args")
    }

    #[test]
    fn offered_load_sets_the_message_rate() {
        let a = args(&["-c", "5000", "--topics", "100", "--offered", "10000"]);
        assert_eq!(a.planned_subscribers_per_topic(), 50.0);
        assert_eq!(a.message_rate(), 200.0);
        assert_eq!(args(&["--rate", "7"]).message_rate(), 7.0);
        assert_eq!(args(&[]).message_rate(), 0.0);
        assert!(Args::try_parse_from(["x", "--rate", "1", "--offered", "2"]).is_err());
    }

    #[test]
    fn topics_spread_over_connections() {
        let a = args(&["--topics", "3", "--topics-per-conn", "2"]);
        assert_eq!(a.topics_of(0), vec![0, 1]);
        assert_eq!(a.topics_of(2), vec![2, 0]);
        assert_eq!(a.topics_of(4), vec![1, 2]);
    }

    #[test]
    fn impossible_combinations_are_refused() {
        assert!(args(&[]).validate().is_ok());
        for bad in [
            &["--topics", "0"][..],
            &["--topics", "2", "--topics-per-conn", "3"],
            &["--size", "10"],
            &["--duration=-1"],
            &["--target", "nats-ws", "--publish", "http"],
            &["-c", "0"],
        ] {
            assert!(args(bad).validate().is_err(), "{bad:?}");
        }
    }
}
