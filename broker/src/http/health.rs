//! Operations: liveness (`/healthz`), readiness (`/readyz`: every bridge ready) and
//! Prometheus metrics (`/metrics`).

use actix_web::{web, HttpResponse};

use crate::broker::Broker;
use crate::metrics::METRICS;

pub(super) async fn healthz() -> HttpResponse {
    HttpResponse::Ok().json(serde_json::json!({"status": "ok"}))
}

pub(super) async fn readyz(broker: web::Data<Broker>) -> HttpResponse {
    let (ready, reasons) = broker.readiness().report();
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
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4; charset=utf-8")
        .body(text)
}
