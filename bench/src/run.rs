//! One benchmark run, start to summary:
//!
//! 1. connect the publisher (a bad NATS URL fails before any WebSocket is opened);
//! 2. ramp: open the connections at `--connect-rate`, at most
//!    `--connect-concurrency` at a time, until each is subscribed or has failed;
//! 3. settle, then read the server's memory;
//! 4. publish for `--warmup` + `--duration` seconds (or, at rate 0, hold the
//!    connections idle for `--duration`), with a progress line every second;
//! 5. drain: wait for the last deliveries of the measured messages;
//! 6. summarize.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::Semaphore;

use crate::args::{Args, ArgsError, PublishVia};
use crate::clock;
use crate::conn::{self, Shared, Spec};
use crate::limits;
use crate::procstat::{self, CoreSample, Sample};
use crate::publish::{self, Plan, PublishError, Published, Via};
use crate::report::{self, grouped, Percentiles, Summary};
use crate::stats::{self, Stats};
use crate::target::Target;
use crate::ws::{UrlError, WsUrl};

/// How often the ramp and the drain check whether they are done.
const POLL: Duration = Duration::from_millis(50);

/// The drain ends when no measured delivery arrived for this long.
const DRAIN_IDLE: Duration = Duration::from_secs(2);

/// Failures with no success at all after which the run gives up.
const HOPELESS_FAILURES: u64 = 50;

/// Why a run could not be done.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// Flags that cannot work together.
    #[error(transparent)]
    Args(#[from] ArgsError),
    /// `--url` is not a `ws://` URL.
    #[error(transparent)]
    Url(#[from] UrlError),
    /// The host of `--url` does not resolve.
    #[error("cannot resolve {host}: {source}")]
    Resolve {
        /// The host.
        host: String,
        /// Why.
        source: std::io::Error,
    },
    /// The publisher could not start.
    #[error(transparent)]
    Publish(#[from] PublishError),
    /// `--pid` names no readable process.
    #[error("--pid {pid}: {source}")]
    Pid {
        /// The pid.
        pid: u32,
        /// Why.
        source: std::io::Error,
    },
    /// Not one connection worked.
    #[error("no connection to {url} succeeded ({failed} failed); the first error: {first}{hint}")]
    NoConnection {
        /// The URL.
        url: String,
        /// Failures so far.
        failed: u64,
        /// The first failure's message.
        first: String,
        /// What to do about it.
        hint: &'static str,
    },
}

/// Runs the benchmark `args` describes. `nofile` is what [`limits::raise_nofile`]
/// did at start, `threads` the receiving worker threads.
pub async fn run(args: Args, nofile: limits::Nofile, threads: usize) -> Result<Summary, RunError> {
    args.validate()?;
    let url: WsUrl = args.url.parse()?;
    let addr = tokio::net::lookup_host((url.host.as_str(), url.port))
        .await
        .and_then(|mut addrs| {
            addrs
                .next()
                .ok_or_else(|| std::io::Error::other("no address"))
        })
        .map_err(|source| RunError::Resolve {
            host: url.host.clone(),
            source,
        })?;
    let stats = Arc::new(Stats::new(args.topics));
    let rate = args.message_rate();

    let publisher = if rate > 0.0 {
        let via = match args.publish {
            PublishVia::Nats => Via::Nats {
                url: args.nats_url.clone(),
                subject_prefix: args.subject_prefix.clone(),
            },
            PublishVia::Http => Via::Http {
                base: args
                    .http_url
                    .clone()
                    .unwrap_or_else(|| format!("http://{}:{}", host_for_url(&url.host), url.port)),
                api_key: args.api_key.clone(),
            },
        };
        Some(publish::spawn(via, args.topics, stats.clone()).await?)
    } else {
        None
    };

    let sample_server =
        |pid: u32| procstat::sample(pid).map_err(|source| RunError::Pid { pid, source });
    let server_before = args.pid.map(sample_server).transpose()?;
    let mut rss_peak = server_before.map_or(0, |s| s.rss_kib);

    let mut headers = Vec::new();
    if args.target == Target::Herald {
        headers.push((
            "Sec-WebSocket-Protocol".to_string(),
            "herald.v1.json".to_string(),
        ));
    }
    if let Some(token) = &args.token {
        headers.push(("Authorization".to_string(), format!("Bearer {token}")));
    }
    if args.deflate {
        headers.push((
            "Sec-WebSocket-Extensions".to_string(),
            "permessage-deflate; client_max_window_bits".to_string(),
        ));
    }
    let bind_sources = args.per_source > 0 && addr.ip().is_loopback() && addr.is_ipv4();
    let shared = Arc::new(Shared {
        target: args.target,
        url: url.clone(),
        addr,
        headers,
        deflate: args.deflate,
        timeout: Duration::from_secs_f64(args.connect_timeout),
        subject_prefix: args.subject_prefix.clone(),
        stats: stats.clone(),
    });

    // Ramp.
    let started = Instant::now();
    let ramp_start_us = clock::now_us();
    let ramp_task = tokio::spawn(ramp(args.clone(), shared.clone(), bind_sources));
    let mut polls = 0u64;
    loop {
        tokio::time::sleep(POLL).await;
        polls += 1;
        let (subscribed, failed) = (stats.subscribed.load(Relaxed), stats.failed.load(Relaxed));
        if subscribed + failed >= args.connections as u64 {
            break;
        }
        if subscribed == 0 && stats.connected.load(Relaxed) == 0 && failed >= HOPELESS_FAILURES {
            ramp_task.abort();
            return Err(no_connection(&args, &stats));
        }
        if polls.is_multiple_of(20) {
            let secs = started.elapsed().as_secs_f64();
            progress(
                &args,
                started,
                &format!(
                    "ramp   {}/{} subscribed, {} failed, {}/s",
                    grouped(subscribed as f64),
                    grouped(args.connections as f64),
                    failed,
                    grouped(subscribed as f64 / secs),
                ),
            );
        }
    }
    let _ = ramp_task.await;
    let subscribed = stats.subscribed.load(Relaxed);
    if subscribed == 0 {
        return Err(no_connection(&args, &stats));
    }
    let ramp_s = stats
        .last_subscribed_us
        .load(Relaxed)
        .saturating_sub(ramp_start_us) as f64
        / 1e6;
    progress(
        &args,
        started,
        &format!(
            "ramp   done: {}/{} subscribed in {:.2} s, {} failed",
            grouped(subscribed as f64),
            grouped(args.connections as f64),
            ramp_s,
            stats.failed.load(Relaxed),
        ),
    );

    tokio::time::sleep(Duration::from_secs_f64(args.settle)).await;
    let server_connected = args.pid.map(sample_server).transpose()?;
    if let Some(s) = server_connected {
        rss_peak = rss_peak.max(s.rss_kib);
    }

    // Publish (or hold idle), with a progress line every second.
    let warmup_us = (args.warmup * 1e6) as u64;
    let duration_us = (args.duration * 1e6) as u64;
    let start_us = clock::now_us();
    let (window_start_us, end_us) = if publisher.is_some() {
        (start_us + warmup_us, start_us + warmup_us + duration_us)
    } else {
        (start_us, start_us + duration_us)
    };
    stats.window_start_us.store(window_start_us, Relaxed);
    stats.window_end_us.store(end_us, Relaxed);
    let window_samples = tokio::spawn(sample_window(
        args.pid,
        args.cores.clone(),
        window_start_us,
        end_us,
    ));
    let mut done = publisher.map(|p| {
        p.start(Plan {
            rate,
            size: args.size,
            realistic: args.realistic,
            topics: args.topics,
            start_us,
            end_us,
            window_start_us,
        })
    });
    let mut published = Published::default();
    let mut ticker = tokio::time::interval_at(
        tokio::time::Instant::now() + Duration::from_secs(1),
        Duration::from_secs(1),
    );
    let mut last = (
        stats.delivered.load(Relaxed),
        stats.published.load(Relaxed),
        Instant::now(),
    );
    loop {
        match done.as_mut() {
            Some(rx) => {
                tokio::select! {
                    result = rx => {
                        published = result.unwrap_or_default();
                        break;
                    }
                    _ = ticker.tick() => {}
                }
            }
            None => {
                if clock::now_us() >= end_us {
                    break;
                }
                ticker.tick().await;
            }
        }
        let now = (
            stats.delivered.load(Relaxed),
            stats.published.load(Relaxed),
            Instant::now(),
        );
        let secs = now.2.duration_since(last.2).as_secs_f64().max(1e-3);
        let recent = Percentiles::of(&stats::take_recent());
        let server = match args.pid.map(procstat::sample) {
            Some(Ok(s)) => {
                rss_peak = rss_peak.max(s.rss_kib);
                format!(" | server rss {} MiB", s.rss_kib / 1024)
            }
            Some(Err(_)) => " | server gone".to_string(),
            None => String::new(),
        };
        let phase = if clock::now_us() < window_start_us {
            "warmup"
        } else {
            "run   "
        };
        progress(&args, started, &format!(
            "{phase} {} conns | pub {}/s | recv {}/s | p50 {:.2} p99 {:.2} ms | gaps {} lagged {} disc {}{server}",
            grouped((subscribed - stats.disconnected.load(Relaxed)) as f64),
            grouped((now.1 - last.1) as f64 / secs),
            grouped((now.0 - last.0) as f64 / secs),
            recent.p50,
            recent.p99,
            stats.gaps.load(Relaxed),
            stats.lagged_dropped.load(Relaxed),
            stats.disconnected.load(Relaxed),
        ));
        last = now;
    }

    // Drain.
    let expected: u64 = published
        .measured_per_topic
        .iter()
        .zip(&stats.topic_subscribers)
        .map(|(&n, subs)| n * subs.load(Relaxed))
        .sum();
    let drain_started = Instant::now();
    let mut last_progress = (stats.measured.load(Relaxed), Instant::now());
    if published.total > 0 {
        loop {
            let received = stats.measured.load(Relaxed);
            if received >= expected
                || drain_started.elapsed().as_secs_f64() >= args.drain
                || last_progress.1.elapsed() >= DRAIN_IDLE
            {
                break;
            }
            if received != last_progress.0 {
                last_progress = (received, Instant::now());
            }
            tokio::time::sleep(POLL).await;
        }
    }
    let drain_s = if published.total > 0 {
        drain_started.elapsed().as_secs_f64()
    } else {
        0.0
    };

    let Window {
        server: server_window,
        tool: tool_window,
        cores: core_windows,
    } = window_samples.await.unwrap_or_default();
    let server_end = args.pid.map(procstat::sample).and_then(Result::ok);
    if let Some(s) = server_end {
        rss_peak = rss_peak.max(s.rss_kib);
    }
    let received = stats.measured.load(Relaxed);
    let measured: u64 = published.measured_per_topic.iter().sum();
    let window_s = duration_us as f64 / 1e6;
    let mean_subscribers = if measured > 0 {
        expected as f64 / measured as f64
    } else {
        0.0
    };
    let lost = expected.saturating_sub(received);
    let summary = Summary {
        tool: "herald-bench",
        version: env!("CARGO_PKG_VERSION"),
        label: args.label.clone(),
        target: args.target,
        url: url.to_string(),
        config: report::Config {
            connections: args.connections,
            topics: args.topics,
            topics_per_conn: args.topics_per_conn,
            payload_bytes: args.size,
            duration_s: args.duration,
            warmup_s: if rate > 0.0 { args.warmup } else { 0.0 },
            publish: args.publish,
            rate_per_s: rate,
            offered_per_s: rate * args.planned_subscribers_per_topic(),
            connect_rate: args.connect_rate,
            connect_concurrency: args.connect_concurrency,
            threads,
        },
        connections: report::Connections {
            requested: args.connections,
            connected: stats.connected.load(Relaxed),
            subscribed,
            failed: stats.failed.load(Relaxed),
            failures: stats::lock(&stats.failures).clone(),
            disconnected: stats.disconnected.load(Relaxed),
            disconnects: stats::lock(&stats.disconnects).clone(),
            ramp_s,
            ramp_per_s: if ramp_s > 0.0 {
                subscribed as f64 / ramp_s
            } else {
                0.0
            },
            connect_ms: Percentiles::of(&stats::lock(&stats.connect_latency)),
        },
        publish: report::PublishSummary {
            published: published.total,
            measured,
            errors: published.errors,
            achieved_rate_per_s: measured as f64 / window_s.max(1e-9),
        },
        deliveries: report::Deliveries {
            offered_per_s: measured as f64 * mean_subscribers / window_s.max(1e-9),
            per_s: stats.in_window.load(Relaxed) as f64 / window_s.max(1e-9),
            expected,
            received,
            lost,
            loss_percent: if expected > 0 {
                lost as f64 * 100.0 / expected as f64
            } else {
                0.0
            },
            gaps: stats.gaps.load(Relaxed),
            out_of_order: stats.out_of_order.load(Relaxed),
            foreign: stats.foreign.load(Relaxed),
            lagged_notices: stats.lagged_notices.load(Relaxed),
            lagged_dropped: stats.lagged_dropped.load(Relaxed),
            wire_bytes_per_delivery: stats.wire_bytes.load(Relaxed) as f64
                / stats.delivered.load(Relaxed).max(1) as f64,
            server_errors: stats.server_errors.load(Relaxed),
            drain_s,
        },
        latency_ms: Percentiles::of(&stats::measured()),
        server: args.pid.zip(server_before).map(|(pid, before)| {
            let connected = server_connected.map_or(before.rss_kib, |s| s.rss_kib);
            report::ServerStats {
                pid,
                cpu_percent: server_window.map(|(a, b)| procstat::cpu_percent(&a, &b)),
                rss_kib_before: before.rss_kib,
                rss_kib_connected: connected,
                rss_kib_peak: rss_peak,
                rss_kib_end: server_end.map_or(0, |s| s.rss_kib),
                rss_bytes_per_connection: (subscribed > 0).then(|| {
                    (connected as f64 - before.rss_kib as f64) * 1024.0 / subscribed as f64
                }),
            }
        }),
        tool_cpu_percent: tool_window.map(|(a, b)| procstat::cpu_percent(&a, &b)),
        cores: core_windows
            .iter()
            .map(|(core, a, b)| report::CoreBusy {
                core: *core,
                busy_percent: procstat::core_busy_percent(a, b),
            })
            .collect(),
        nofile: report::Nofile {
            before: nofile.before,
            after: nofile.after,
        },
        first_errors: {
            let mut errors = stats::lock(&stats.first_errors).clone();
            if let Some(e) = published.first_error {
                errors.insert("publish".into(), e);
            }
            errors
        },
    };
    Ok(summary)
}

/// Opens every connection, at most `--connect-concurrency` at once, paced by
/// `--connect-rate`.
async fn ramp(args: Args, shared: Arc<Shared>, bind_sources: bool) {
    let slots = Arc::new(Semaphore::new(args.connect_concurrency));
    let start = tokio::time::Instant::now();
    for index in 0..args.connections {
        if args.connect_rate > 0.0 {
            tokio::time::sleep_until(
                start + Duration::from_secs_f64(index as f64 / args.connect_rate),
            )
            .await;
        }
        let Ok(permit) = slots.clone().acquire_owned().await else {
            return;
        };
        let spec = Spec {
            source: bind_sources
                .then(|| conn::source_addr(args.source_base, args.per_source, index).into()),
            topics: args.topics_of(index),
        };
        tokio::spawn(conn::run(spec, shared.clone(), permit));
    }
}

/// CPU readings over the measurement window.
#[derive(Debug, Default)]
struct Window {
    /// The server process (`--pid`), at the start and the end.
    server: Option<(Sample, Sample)>,
    /// This process.
    tool: Option<(Sample, Sample)>,
    /// Each readable `--cores` core.
    cores: Vec<(usize, CoreSample, CoreSample)>,
}

/// Samples the server (`pid`), this process and `cores` at the start and end of the
/// window.
async fn sample_window(pid: Option<u32>, cores: Vec<usize>, start_us: u64, end_us: u64) -> Window {
    let me = std::process::id();
    let read_cores = || -> Vec<Option<CoreSample>> {
        cores
            .iter()
            .map(|&c| procstat::core_sample(c).ok())
            .collect()
    };
    tokio::time::sleep_until(clock::instant_at(start_us).into()).await;
    let server_a = pid.and_then(|p| procstat::sample(p).ok());
    let tool_a = procstat::sample(me).ok();
    let cores_a = read_cores();
    tokio::time::sleep_until(clock::instant_at(end_us).into()).await;
    let server_b = pid.and_then(|p| procstat::sample(p).ok());
    let tool_b = procstat::sample(me).ok();
    let cores_b = read_cores();
    Window {
        server: server_a.zip(server_b),
        tool: tool_a.zip(tool_b),
        cores: cores
            .iter()
            .zip(cores_a.into_iter().zip(cores_b))
            .filter_map(|(&c, (a, b))| Some((c, a?, b?)))
            .collect(),
    }
}

/// The error for a run where nothing connected, with a hint for the usual causes.
fn no_connection(args: &Args, stats: &Stats) -> RunError {
    let failures = stats::lock(&stats.failures).clone();
    let first = stats::lock(&stats.first_errors)
        .values()
        .next()
        .cloned()
        .unwrap_or_default();
    let hint = if failures.contains_key("refused") {
        " (is the server running and listening there?)"
    } else if failures.contains_key("too_many_open_files") {
        " (raise the open-file limit: ulimit -n)"
    } else if failures.keys().any(|k| k.starts_with("http_")) {
        " (the server refused the upgrade; check the URL's path and any auth)"
    } else {
        ""
    };
    RunError::NoConnection {
        url: args.url.clone(),
        failed: stats.failed.load(Relaxed),
        first,
        hint,
    }
}

/// A host as it goes into a URL (IPv6 addresses in brackets).
fn host_for_url(host: &str) -> String {
    if host.contains(':') {
        format!("[{host}]")
    } else {
        host.to_string()
    }
}

/// Writes a progress line to stderr, unless `--quiet`.
fn progress(args: &Args, started: Instant, line: &str) {
    if !args.quiet {
        eprintln!("[{:6.1}s] {line}", started.elapsed().as_secs_f64());
    }
}
