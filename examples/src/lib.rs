//! Runnable examples of Herald live beside this crate root, one file each (this
//! library gives them a package and holds what several of them share):
//!
//! - `embedded.rs`: Herald inside an existing actix-web application;
//! - `nats_publisher.rs`: services publishing metrics to NATS subjects
//!   `metrics.<service>.<metric>`;
//! - `kafka_producer.rs`: an order service producing order events to Kafka;
//! - `subscriber.rs`: a terminal WebSocket client that reconnects, resumes and
//!   reports every loss it learns about.
//!
//! Each file starts with what it shows and the command that runs it. Together with
//! `docker/herald.toml` they make the demo stack of `docker/compose.yaml`.

/// Resolves on Ctrl-C or SIGTERM (what `docker stop` sends), so a demo process stops
/// at once instead of being killed after a grace period.
pub async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("install the SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
