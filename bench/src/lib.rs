//! Herald's fan-out load tool (`herald-bench`) and the pieces it is made of.
//!
//! The tool opens many WebSocket connections (or Herald event streams) to a server under test, subscribes them
//! across topics, publishes timestamped messages through NATS or Herald's HTTP API at a
//! fixed rate, and measures what arrives: deliveries per second, loss, and the latency
//! from publish to receipt. It speaks three protocols, so that Herald can be measured
//! side by side with nats-server's own WebSocket listener and with `ws-broadcast`, the
//! "no features at all" reference server in `src/bin/ws-broadcast.rs`.
//!
//! # Layout
//!
//! - [`args`]: the command line.
//! - [`run`]: one benchmark run from start to summary: limits, connections,
//!   publisher, progress, drain, report.
//! - [`conn`]: one client connection: source address, TCP connect, upgrade,
//!   subscription, then the read loop.
//! - [`ws`]: a minimal WebSocket client (upgrade request, frame parsing, masked
//!   frames). Hand-written so the receiving side parses in place and allocates nothing
//!   per message.
//! - [`sse`]: a minimal Server-Sent Events client (request, chunked body, messages),
//!   for Herald's `GET /sse`.
//! - [`target`]: what each server's protocol needs from a client: Herald's JSON
//!   (over WebSocket or SSE), NATS over WebSocket, ws-broadcast's one-line subscribe.
//! - [`nats_proto`]: a NATS protocol parser for byte streams split anywhere.
//! - [`payload`]: the stamp (send time, sequence, topic) every message carries, and
//!   how to find it again in whatever frame the server wraps it in.
//! - [`publish`]: the rate-paced publisher (NATS or HTTP), on its own thread.
//! - [`stats`]: counters and latency histograms shared by the connection tasks.
//! - [`procstat`]: CPU time and resident memory of a process, from `/proc`.
//! - [`limits`]: raising `RLIMIT_NOFILE` so tens of thousands of sockets fit.
//! - [`report`]: the live progress line and the JSON summary.
//! - [`clock`]: the process-wide microsecond clock stamps are measured in.

pub mod args;
pub mod clock;
pub mod conn;
pub mod limits;
pub mod nats_proto;
pub mod payload;
pub mod procstat;
pub mod publish;
pub mod report;
pub mod run;
pub mod sse;
pub mod stats;
pub mod target;
pub mod ws;
