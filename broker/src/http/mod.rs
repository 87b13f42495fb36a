//! HTTP: the WebSocket upgrade and the JSON API
//! ([docs/protocol.md, sections 2 and 8](../../../docs/protocol.md#8-http-api)).
//!
//! Every route is in [`ROUTES`], which also answers 405 (with `Allow`) for a known
//! path and 404 for the rest. Every error is `{"error":{"code":"…","message":"…"}}`
//! with a fitting status. The upgrade is checked (subprotocol, Origin, capacity,
//! credentials) before any WebSocket frame is sent.
//!
//! ## Layout
//! - `upgrade.rs`: `GET /ws` (and the test-only `/echo`), into a session;
//! - `api.rs`: `POST /api/publish`, `GET /api/topics`, `POST /api/tickets`;
//! - `health.rs`: `/healthz`, `/readyz`, `/metrics`;
//! - `assets.rs`: the dashboard at `/`, `/herald.js`, `/asyncapi.json`;
//! - `admission.rs`: the upgrade's checks and the connection limiter;
//! - `tls.rs`: the listener's certificate.

pub(crate) mod admission;
mod api;
mod assets;
mod health;
pub(crate) mod tls;
mod upgrade;

use actix_web::http::header;
use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse, ResponseError};

use crate::broker::Broker;
use crate::protocol::ErrorCode;

/// Seconds a client refused for capacity is asked to wait.
const RETRY_AFTER_S: &str = "5";

/// An HTTP method a route answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Method {
    Get,
    Post,
}

impl Method {
    fn as_str(self) -> &'static str {
        match self {
            Method::Get => "GET",
            Method::Post => "POST",
        }
    }

    fn route(self) -> actix_web::Route {
        match self {
            Method::Get => web::get(),
            Method::Post => web::post(),
        }
    }
}

/// One route Herald serves.
pub(crate) struct Route {
    pub(crate) method: Method,
    pub(crate) path: &'static str,
    /// Attaches the handler to a route guarded by `method`.
    handler: fn(actix_web::Route) -> actix_web::Route,
}

/// Every route, in one table: [`configure`] mounts them, and [`not_found`] tells a
/// wrong method on a known path (405) from an unknown path (404) with it.
pub(crate) const ROUTES: &[Route] = &[
    Route {
        method: Method::Get,
        path: "/ws",
        handler: |r| r.to(upgrade::upgrade),
    },
    Route {
        method: Method::Post,
        path: "/api/publish",
        handler: |r| r.to(api::publish),
    },
    Route {
        method: Method::Get,
        path: "/api/topics",
        handler: |r| r.to(api::topics),
    },
    Route {
        method: Method::Post,
        path: "/api/tickets",
        handler: |r| r.to(api::tickets),
    },
    Route {
        method: Method::Get,
        path: "/healthz",
        handler: |r| r.to(health::healthz),
    },
    Route {
        method: Method::Get,
        path: "/readyz",
        handler: |r| r.to(health::readyz),
    },
    Route {
        method: Method::Get,
        path: "/metrics",
        handler: |r| r.to(health::metrics),
    },
    Route {
        method: Method::Get,
        path: "/asyncapi.json",
        handler: |r| r.to(assets::asyncapi),
    },
    Route {
        method: Method::Get,
        path: "/herald.js",
        handler: |r| r.to(assets::client_js),
    },
    Route {
        method: Method::Get,
        path: "/",
        handler: |r| r.to(assets::index),
    },
];

/// An HTTP error with Herald's JSON body.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub(crate) struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
    pub(super) retry_after: bool,
    /// The methods a path answers, for a 405's `Allow` header.
    allow: Option<String>,
}

impl ApiError {
    pub(crate) fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
            retry_after: false,
            allow: None,
        }
    }

    pub(super) fn protocol(
        status: StatusCode,
        code: ErrorCode,
        message: impl Into<String>,
    ) -> Self {
        Self::new(status, code.as_str(), message)
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        self.status
    }

    fn error_response(&self) -> HttpResponse {
        let mut res = HttpResponse::build(self.status);
        if self.retry_after {
            res.insert_header((header::RETRY_AFTER, RETRY_AFTER_S));
        }
        if let Some(allow) = &self.allow {
            res.insert_header((header::ALLOW, allow.as_str()));
        }
        if self.status == StatusCode::UNAUTHORIZED {
            res.insert_header((header::WWW_AUTHENTICATE, "Bearer"));
        }
        res.json(serde_json::json!({"error": {"code": self.code, "message": self.message}}))
    }
}

/// Registers every route of [`ROUTES`] (see [`Broker::configure`]), and `/echo`
/// when `server.conformance_echo` is on.
pub(crate) fn configure(cfg: &mut web::ServiceConfig, broker: Broker) {
    if broker.config().server.conformance_echo {
        upgrade::configure_echo(cfg);
    }
    cfg.app_data(web::Data::new(broker));
    for route in ROUTES {
        cfg.route(route.path, (route.handler)(route.method.route()));
    }
}

/// JSON 404/405 for every route nobody serves. The `herald` binary installs it as
/// its app's default service; an embedding app keeps its own.
pub async fn not_found(req: HttpRequest) -> HttpResponse {
    route_error(&req).error_response()
}

fn route_error(req: &HttpRequest) -> ApiError {
    let allowed: Vec<&str> = ROUTES
        .iter()
        .filter(|r| r.path == req.path())
        .map(|r| r.method.as_str())
        .collect();
    if !allowed.is_empty() {
        let mut e = ApiError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            format!("{} is not allowed on {}", req.method(), req.path()),
        );
        e.allow = Some(allowed.join(", "));
        return e;
    }
    ApiError::new(
        StatusCode::NOT_FOUND,
        "not_found",
        format!("no route {}", req.path()),
    )
}
