//! # Herald
//!
//! A realtime event broker: events come in from NATS, Kafka, `POST /api/publish` or
//! WebSocket clients, and go out to WebSocket subscribers within milliseconds.
//! Delivery is best-effort (at-most-once) by design; clients learn about every loss
//! they can through sequence gaps, `lagged` and `reset` notices. The wire contract is
//! `docs/protocol.md`.
//!
//! ## Layout
//! - [`broker`]: the [`Broker`] handle: config, registry, epoch, sessions.
//! - [`session`]: one actor per WebSocket connection.
//! - [`topic`]: one actor per topic: seq, history ring, subscribers, fan-out.
//! - [`registry`]: topic name → topic actor, sharded by hash; wildcard subscriptions.
//! - [`ingress`]: where each bridge's events enter the topic layer; `backplane`:
//!   publishing through NATS to every node (feature `nats`).
//! - [`message`]: the messages between those actors.
//! - [`protocol`]: client ops, server messages, error and close codes.
//! - [`event`]: rendering an event frame once, for every subscriber.
//! - [`pattern`]: topic grammar, wildcard matching and grant coverage.
//! - [`outbound`], [`ratelimit`], [`admission`]: per-connection bounds and limits.
//! - [`auth`]: the authentication seam and permissions; [`jwt`]: JWTs, API keys
//!   and [`tickets`]; [`tls`]: the listener's certificate.
//! - [`http`]: routes and the JSON API; [`server`]: the process, signals, shutdown.
//! - [`config`]: configuration loading; [`metrics`]: Prometheus metrics.
//!
//! ## Embedding
//! Inside an actix-web application (within its actix system):
//! ```no_run
//! # async fn run() -> std::io::Result<()> {
//! let broker = herald::Broker::start(herald::Config::default()).expect("valid config");
//! actix_web::HttpServer::new(move || actix_web::App::new().configure(broker.configure()))
//!     .bind("127.0.0.1:8080")?
//!     .run()
//!     .await
//! # }
//! ```

pub mod auth;
pub mod broker;
pub mod config;
pub mod http;
pub mod metrics;
pub mod protocol;
pub mod publish;
pub mod session;
pub mod topics;

pub use broker::Broker;
pub use config::Config;
pub use herald_bridges::topic;
pub use herald_bridges::{BridgeEvent, Source};
