//! # Herald
//!
//! A realtime event broker: events come in from NATS, Kafka, `POST /api/publish` or
//! WebSocket clients, and go out to WebSocket subscribers within milliseconds.
//! Delivery is best-effort (at-most-once) by design; clients learn about every loss
//! they can through sequence gaps, `lagged` and `reset` notices. The wire contract is
//! `docs/protocol.md`.
//!
//! ## Layout
//! An event's path reads top to bottom through the folders in this order:
//! - `publish/`: the way in. HTTP, WebSocket and embedded publishes are prepared
//!   once and sent to the local topic or, with a cluster backplane, through NATS to
//!   every node; each bridge runs as a task with a sink straight into the registry.
//!   (The bridges themselves, and the topic grammar, are in the `herald-bridges`
//!   crate.)
//! - `history/`: cluster history on JetStream (`cluster.history = "jetstream"`):
//!   the stream every node reads, its epoch, and reading events back by position.
//! - `topics/`: the topic layer: the sharded registry (topic name → topic actor,
//!   wildcard subscriptions), the topic actors (seq, history ring, fan-out of one
//!   rendered frame) and the messages between them.
//! - `session/`: one actor per WebSocket connection: its byte-bounded inbox and
//!   outbound queue, the client's requests, replay planning, the single write in
//!   flight.
//! - [`protocol`]: the wire contract: client ops, server messages, error and close
//!   codes, and the event frame rendered once for every subscriber.
//! - `http/`: routes (one table), the WebSocket upgrade and its admission checks,
//!   the JSON API, health and metrics, the listener's TLS.
//! - `auth/`: the authentication seam and grants; JWTs, API keys and tickets.
//! - [`config`]: the configuration's schema, loading, validation and masking.
//! - `broker.rs`: the [`Broker`] handle and the [`Components`] built at start;
//!   `metrics.rs`: every Prometheus metric; `clock.rs`: the one wall clock.
//! - `bin/herald/`: the binary: flags, logging, and the serve loop with graceful
//!   shutdown.
//!
//! [docs/architecture.md](../../docs/architecture.md) walks one event through each
//! file.
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

#![warn(unreachable_pub)]

mod auth;
mod broker;
mod clock;
#[cfg(feature = "nats")]
mod cluster;
pub mod config;
#[cfg(feature = "nats")]
mod history;
mod http;
mod metrics;
pub mod protocol;
mod publish;
mod session;
mod topics;

pub use broker::{cores, Broker, Components};
pub use config::Config;
pub use herald_bridges::topic;
pub use herald_bridges::{BridgeEvent, Source};
pub use http::not_found;
pub use http::server::HttpServer;
pub use publish::PublishError;
