//! The JSON summary of a run, and the human-readable lines on stderr.

use std::collections::BTreeMap;

use hdrhistogram::Histogram;
use serde::Serialize;

use crate::args::PublishVia;
use crate::target::Target;

/// Everything a run measured. Times in the field names' units; rates per second.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    /// `herald-bench`.
    pub tool: &'static str,
    /// The tool's version.
    pub version: &'static str,
    /// `--label`.
    pub label: String,
    /// The protocol spoken.
    pub target: Target,
    /// The server's WebSocket URL.
    pub url: String,
    /// What was asked for.
    pub config: Config,
    /// How the connections went.
    pub connections: Connections,
    /// What was published.
    pub publish: PublishSummary,
    /// What arrived.
    pub deliveries: Deliveries,
    /// Publish → receipt latency of the measured messages.
    pub latency_ms: Percentiles,
    /// The server's CPU and memory, with `--pid`.
    pub server: Option<ServerStats>,
    /// This tool's own CPU use during the measurement window, percent of one core
    /// (near 100 × threads means the tool, not the server, may be the limit).
    pub tool_cpu_percent: Option<f64>,
    /// How busy each `--cores` core was during the measurement window, in percent
    /// (softirq included, which a process's own CPU time leaves out).
    pub cores: Vec<CoreBusy>,
    /// The open-file limit before and after raising it.
    pub nofile: Nofile,
    /// The first message of each kind of error.
    pub first_errors: BTreeMap<String, String>,
}

/// The run's parameters.
#[derive(Debug, Clone, Serialize)]
pub struct Config {
    pub connections: usize,
    pub topics: u32,
    pub topics_per_conn: u32,
    pub payload_bytes: usize,
    pub duration_s: f64,
    pub warmup_s: f64,
    pub publish: PublishVia,
    /// Messages per second asked for.
    pub rate_per_s: f64,
    /// Deliveries per second asked for, if every connection subscribes.
    pub offered_per_s: f64,
    pub connect_rate: f64,
    pub connect_concurrency: usize,
    pub threads: usize,
}

/// The ramp and its outcome.
#[derive(Debug, Clone, Serialize)]
pub struct Connections {
    pub requested: usize,
    /// Upgraded.
    pub connected: u64,
    /// Subscription confirmed.
    pub subscribed: u64,
    /// Failed before their subscription was confirmed.
    pub failed: u64,
    /// Failures by kind.
    pub failures: BTreeMap<String, u64>,
    /// Subscribed connections that ended during the run.
    pub disconnected: u64,
    /// Those by kind.
    pub disconnects: BTreeMap<String, u64>,
    /// First attempt to last confirmed subscription, in seconds.
    pub ramp_s: f64,
    /// Subscribed connections per second of ramp.
    pub ramp_per_s: f64,
    /// TCP connect to upgrade response.
    pub connect_ms: Percentiles,
}

/// The publishing side.
#[derive(Debug, Clone, Serialize)]
pub struct PublishSummary {
    /// Messages published, warm-up included.
    pub published: u64,
    /// Messages published inside the measurement window.
    pub measured: u64,
    /// Publishes that failed.
    pub errors: u64,
    /// Measured messages per second of window.
    pub achieved_rate_per_s: f64,
}

/// The receiving side.
#[derive(Debug, Clone, Serialize)]
pub struct Deliveries {
    /// Deliveries per second the measured messages amount to (measured messages per
    /// second × their topics' subscribers).
    pub offered_per_s: f64,
    /// Deliveries received per second during the window (by receipt time).
    pub per_s: f64,
    /// Deliveries of measured messages there should be.
    pub expected: u64,
    /// Deliveries of measured messages received, by the end of the drain.
    pub received: u64,
    /// `expected - received`.
    pub lost: u64,
    /// `lost / expected`, in percent.
    pub loss_percent: f64,
    /// Messages missing between received sequence numbers.
    pub gaps: u64,
    /// Deliveries not above the last sequence seen on their topic.
    pub out_of_order: u64,
    /// Messages without a stamp.
    pub foreign: u64,
    /// Herald `lagged` notices, and the sum of their `dropped`.
    pub lagged_notices: u64,
    pub lagged_dropped: u64,
    /// Bytes read off the sockets per delivery, over the whole run (frame headers,
    /// replies and pings included; compressed when `--deflate` negotiated it).
    pub wire_bytes_per_delivery: f64,
    /// Herald `error` replies and NATS `-ERR`s after subscribing.
    pub server_errors: u64,
    /// Seconds spent waiting for the last deliveries after publishing ended.
    pub drain_s: f64,
}

/// Percentiles of a histogram of microseconds, in milliseconds.
#[derive(Debug, Clone, Serialize)]
pub struct Percentiles {
    pub count: u64,
    pub mean: f64,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
}

impl Percentiles {
    /// Reads `h` (microseconds).
    pub fn of(h: &Histogram<u64>) -> Percentiles {
        let ms = |us: f64| (us / 1000.0 * 1000.0).round() / 1000.0;
        if h.is_empty() {
            return Percentiles {
                count: 0,
                mean: 0.0,
                p50: 0.0,
                p90: 0.0,
                p99: 0.0,
                p999: 0.0,
                max: 0.0,
            };
        }
        let q = |q: f64| ms(h.value_at_quantile(q) as f64);
        Percentiles {
            count: h.len(),
            mean: ms(h.mean()),
            p50: q(0.5),
            p90: q(0.9),
            p99: q(0.99),
            p999: q(0.999),
            max: ms(h.max() as f64),
        }
    }
}

/// The server process, with `--pid`.
#[derive(Debug, Clone, Serialize)]
pub struct ServerStats {
    pub pid: u32,
    /// CPU use during the measurement window, percent of one core.
    pub cpu_percent: Option<f64>,
    /// Before the first connection.
    pub rss_kib_before: u64,
    /// After every subscription and the settle time.
    pub rss_kib_connected: u64,
    /// Largest seen during the run (sampled once per second).
    pub rss_kib_peak: u64,
    /// At the end.
    pub rss_kib_end: u64,
    /// `(connected - before) / subscribed connections`, in bytes.
    pub rss_bytes_per_connection: Option<f64>,
}

/// One core's busy share.
#[derive(Debug, Clone, Serialize)]
pub struct CoreBusy {
    pub core: usize,
    pub busy_percent: f64,
}

/// See [`crate::limits::Nofile`].
#[derive(Debug, Clone, Serialize)]
pub struct Nofile {
    pub before: Option<u64>,
    pub after: Option<u64>,
}

/// A number with thousands separators, for the human-readable lines.
pub fn grouped(n: f64) -> String {
    let digits = format!("{:.0}", n.max(0.0));
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

impl Summary {
    /// A few lines for a human, written to stderr at the end.
    pub fn human(&self) -> String {
        let c = &self.connections;
        let d = &self.deliveries;
        let l = &self.latency_ms;
        let mut out = format!(
            "{} {}: {} of {} connections subscribed ({} failed{}), ramp {:.1} s = {}/s, connect p50 {:.2} ms p99 {:.2} ms\n",
            serde_json::to_value(self.target).ok().and_then(|v| v.as_str().map(String::from)).unwrap_or_default(),
            self.url,
            c.subscribed,
            c.requested,
            c.failed,
            if c.failures.is_empty() { String::new() } else { format!(": {:?}", c.failures) },
            c.ramp_s,
            grouped(c.ramp_per_s),
            c.connect_ms.p50,
            c.connect_ms.p99,
        );
        if self.publish.published > 0 {
            out.push_str(&format!(
                "offered {}/s, delivered {}/s; expected {}, received {}, lost {} ({:.3}%), gaps {}, lagged {} notices/{} dropped, disconnects {}\n\
                 latency p50 {:.3} ms, p90 {:.3} ms, p99 {:.3} ms, p99.9 {:.3} ms, max {:.3} ms\n",
                grouped(d.offered_per_s),
                grouped(d.per_s),
                d.expected,
                d.received,
                d.lost,
                d.loss_percent,
                d.gaps,
                d.lagged_notices,
                d.lagged_dropped,
                c.disconnected,
                l.p50,
                l.p90,
                l.p99,
                l.p999,
                l.max,
            ));
        }
        if !self.cores.is_empty() {
            let cores: Vec<String> = self
                .cores
                .iter()
                .map(|c| format!("core {} {:.0}%", c.core, c.busy_percent))
                .collect();
            out.push_str(&format!("busy: {}\n", cores.join(", ")));
        }
        if let Some(s) = &self.server {
            out.push_str(&format!(
                "server pid {}: cpu {}, rss {} → {} KiB connected (peak {}), {} per connection\n",
                s.pid,
                s.cpu_percent.map_or("n/a".into(), |c| format!("{c:.0}%")),
                s.rss_kib_before,
                s.rss_kib_connected,
                s.rss_kib_peak,
                s.rss_bytes_per_connection
                    .map_or("n/a".into(), |b| format!("{:.1} KB", b / 1000.0)),
            ));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_are_grouped_by_thousands() {
        assert_eq!(grouped(0.0), "0");
        assert_eq!(grouped(999.4), "999");
        assert_eq!(grouped(1000.0), "1,000");
        assert_eq!(grouped(1_234_567.0), "1,234,567");
    }

    #[test]
    fn percentiles_are_in_milliseconds() {
        let mut h = crate::stats::histogram();
        for us in 1..=1000u64 {
            h.record(us).expect("in range");
        }
        let p = Percentiles::of(&h);
        assert_eq!(p.count, 1000);
        assert!((p.p50 - 0.5).abs() < 0.002, "{}", p.p50);
        assert!((p.p99 - 0.99).abs() < 0.002, "{}", p.p99);
        assert_eq!(Percentiles::of(&crate::stats::histogram()).count, 0);
    }
}
