//! Operations: liveness (`/healthz`), readiness (`/readyz`: every bridge ready, the
//! JWKS fetched and not stale, and not shutting down) and Prometheus metrics
//! (`/metrics`).

use actix_web::{web, HttpResponse};

use crate::broker::Broker;
use crate::metrics::METRICS;

pub(super) async fn healthz() -> HttpResponse {
    HttpResponse::Ok().json(serde_json::json!({"status": "ok"}))
}

pub(super) async fn readyz(broker: web::Data<Broker>) -> HttpResponse {
    let (mut ready, mut reasons) = broker.readiness().report();
    if let Some(problem) = broker.jwks().and_then(|jwks| jwks.problem()) {
        ready = false;
        reasons.push(problem);
    }
    // Shutting down: said first, so a load balancer stops sending new clients while
    // the sessions already here are still served (`server.drain_ms`).
    if broker.is_draining() {
        ready = false;
        reasons.insert(0, "shutting down".to_owned());
    }
    if ready {
        HttpResponse::Ok().json(serde_json::json!({"status": "ready"}))
    } else {
        HttpResponse::ServiceUnavailable()
            .json(serde_json::json!({"status": "not_ready", "reasons": reasons}))
    }
}

pub(super) async fn metrics(broker: web::Data<Broker>) -> HttpResponse {
    let mut text = METRICS.render();
    text.push_str(&crate::metrics::render_bridges(broker.bridge_counters()));
    if let Some(jwks) = broker.jwks() {
        text.push_str(&crate::metrics::render_jwks(&jwks.snapshot()));
    }
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4; charset=utf-8")
        .body(text)
}
