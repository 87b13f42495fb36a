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
//! - `takeover.rs`, `server.rs`: the upgrade hook that hands a WebSocket's
//!   connection to its session, and the server built with it;
//! - `admission.rs`: the upgrade's checks and the connection limiter;
//! - `forwarded.rs`: the client's address behind `server.trusted_proxies`;
//! - `tls.rs`: the listener's certificate.

pub(crate) mod admission;
mod api;
mod assets;
pub(crate) mod forwarded;
mod health;
pub(crate) mod server;
mod sse;
mod takeover;
pub(crate) mod tls;
mod upgrade;

use actix_web::http::header;
use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse, ResponseError};

use crate::broker::Broker;
use crate::protocol::ErrorCode;

/// Seconds a client refused for capacity is asked to wait.
const RETRY_AFTER_S: u64 = 5;

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

/// What a caller must present to use a route when `auth.mode = "jwt"` (with auth
/// off every route is open). The names are the ones of the route table in
/// docs/security.md, which a unit test below keeps equal to [`ROUTES`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Credential {
    /// Nothing.
    None,
    /// The WebSocket upgrade: a JWT or a one-time ticket, or none and
    /// `{"op":"auth"}` as the first message; an API key is refused.
    JwtOrTicket,
    /// `Authorization: Bearer` with a JWT or an API key.
    JwtOrApiKey,
    /// `Authorization: Bearer` with a JWT; an API key is refused.
    Jwt,
}

impl Credential {
    /// Its name in docs/security.md.
    #[cfg(test)]
    fn doc_name(self) -> &'static str {
        match self {
            Credential::None => "none",
            Credential::JwtOrTicket => "JWT or ticket",
            Credential::JwtOrApiKey => "JWT or API key",
            Credential::Jwt => "JWT",
        }
    }
}

/// Where a route is served.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Place {
    /// On `server.listen`.
    Public,
    /// On `server.admin_listen` when it is set, else on `server.listen`.
    Admin,
    /// On `server.listen`, unless `server.dashboard = false`.
    Dashboard,
}

/// The listener a request came in on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Surface {
    Public,
    Admin,
}

/// One route Herald serves.
pub(crate) struct Route {
    pub(crate) method: Method,
    pub(crate) path: &'static str,
    /// What a caller must present (auth on). Each handler enforces it itself (the
    /// upgrade, `api_identity`, ticket issuing); this column is what the unit test
    /// holds docs/security.md to, and what tests/auth.rs walks.
    #[cfg_attr(
        not(test),
        expect(
            dead_code,
            reason = "documentation, held to docs/security.md by a test"
        )
    )]
    pub(crate) credential: Credential,
    /// Which listener serves it.
    pub(crate) place: Place,
    /// Attaches the handler to a route guarded by `method`.
    handler: fn(actix_web::Route) -> actix_web::Route,
}

impl Route {
    /// Whether `surface` serves this route under `config`.
    fn served_on(&self, surface: Surface, config: &crate::config::ServerConfig) -> bool {
        let admin_apart = !config.admin_listen.is_empty();
        match (self.place, surface) {
            (Place::Public, Surface::Public) => true,
            (Place::Dashboard, Surface::Public) => config.dashboard,
            (Place::Admin, Surface::Public) => !admin_apart,
            (Place::Admin, Surface::Admin) => true,
            (Place::Public | Place::Dashboard, Surface::Admin) => false,
        }
    }
}

/// Every route, in one table: [`configure`] and [`configure_admin`] mount them, and
/// [`not_found`] tells a wrong method on a served path (405) from an unknown path
/// (404) with it. docs/security.md documents it row by row.
pub(crate) const ROUTES: &[Route] = &[
    Route {
        method: Method::Get,
        path: "/ws",
        credential: Credential::JwtOrTicket,
        place: Place::Public,
        handler: |r| r.to(upgrade::upgrade),
    },
    Route {
        method: Method::Get,
        path: "/sse",
        credential: Credential::JwtOrTicket,
        place: Place::Public,
        handler: |r| r.to(sse::sse),
    },
    Route {
        method: Method::Post,
        path: "/api/publish",
        credential: Credential::JwtOrApiKey,
        place: Place::Public,
        handler: |r| r.to(api::publish),
    },
    Route {
        method: Method::Get,
        path: "/api/topics",
        credential: Credential::JwtOrApiKey,
        place: Place::Admin,
        handler: |r| r.to(api::topics),
    },
    Route {
        method: Method::Post,
        path: "/api/tickets",
        credential: Credential::Jwt,
        place: Place::Public,
        handler: |r| r.to(api::tickets),
    },
    Route {
        method: Method::Get,
        path: "/healthz",
        credential: Credential::None,
        place: Place::Admin,
        handler: |r| r.to(health::healthz),
    },
    Route {
        method: Method::Get,
        path: "/readyz",
        credential: Credential::None,
        place: Place::Admin,
        handler: |r| r.to(health::readyz),
    },
    Route {
        method: Method::Get,
        path: "/metrics",
        credential: Credential::None,
        place: Place::Admin,
        handler: |r| r.to(health::metrics),
    },
    Route {
        method: Method::Get,
        path: "/asyncapi.json",
        credential: Credential::None,
        place: Place::Public,
        handler: |r| r.to(assets::asyncapi),
    },
    Route {
        method: Method::Get,
        path: "/herald.js",
        credential: Credential::None,
        place: Place::Dashboard,
        handler: |r| r.to(assets::client_js),
    },
    Route {
        method: Method::Get,
        path: "/",
        credential: Credential::None,
        place: Place::Dashboard,
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
    /// Seconds for a `Retry-After` header.
    pub(super) retry_after: Option<u64>,
    /// The methods a path answers, for a 405's `Allow` header.
    allow: Option<String>,
}

impl ApiError {
    pub(crate) fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
            retry_after: None,
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
        if let Some(seconds) = self.retry_after {
            res.insert_header((header::RETRY_AFTER, seconds.to_string()));
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

/// Registers the routes of [`ROUTES`] that `server.listen` serves (see
/// [`Broker::configure`]), and `/echo` when `server.conformance_echo` is on.
pub(crate) fn configure(cfg: &mut web::ServiceConfig, broker: Broker) {
    if broker.config().server.conformance_echo {
        upgrade::configure_echo(cfg);
    }
    mount(cfg, broker, Surface::Public);
}

/// Registers the routes `server.admin_listen` serves (see
/// [`Broker::configure_admin`]).
pub(crate) fn configure_admin(cfg: &mut web::ServiceConfig, broker: Broker) {
    mount(cfg, broker, Surface::Admin);
}

fn mount(cfg: &mut web::ServiceConfig, broker: Broker, surface: Surface) {
    for route in ROUTES {
        if route.served_on(surface, &broker.config().server) {
            cfg.route(route.path, (route.handler)(route.method.route()));
        }
    }
    cfg.app_data(surface).app_data(web::Data::new(broker));
}

/// JSON 404/405 for every route nobody serves. The `herald` binary installs it as
/// its apps' default service; an embedding app keeps its own.
pub async fn not_found(req: HttpRequest) -> HttpResponse {
    route_error(&req).error_response()
}

fn route_error(req: &HttpRequest) -> ApiError {
    let surface = req
        .app_data::<Surface>()
        .copied()
        .unwrap_or(Surface::Public);
    let served = |r: &Route| match req.app_data::<web::Data<Broker>>() {
        Some(broker) => r.served_on(surface, &broker.config().server),
        None => true,
    };
    let allowed: Vec<&str> = ROUTES
        .iter()
        .filter(|r| r.path == req.path() && served(r))
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The route table in docs/security.md, one row per route: `` `METHOD /path` ``
    /// then the credential's name.
    #[test]
    fn docs_security_lists_every_route_with_its_credential() {
        let doc = include_str!("../../../docs/security.md");
        let rows: Vec<(&str, &str)> = doc
            .lines()
            .filter_map(|l| {
                let cells: Vec<&str> = l.split('|').map(str::trim).collect();
                let route = cells.get(1)?.strip_prefix('`')?.strip_suffix('`')?;
                let (method, path) = route.split_once(' ')?;
                (matches!(method, "GET" | "POST") && path.starts_with('/'))
                    .then(|| (route, *cells.get(2).unwrap_or(&"")))
            })
            .collect();
        for r in ROUTES {
            let route = format!("{} {}", r.method.as_str(), r.path);
            let found: Vec<_> = rows.iter().filter(|(doc, _)| *doc == route).collect();
            assert_eq!(found.len(), 1, "docs/security.md lists `{route}` once");
            assert_eq!(
                found[0].1,
                r.credential.doc_name(),
                "credential of `{route}`"
            );
        }
        assert_eq!(
            rows.len(),
            ROUTES.len(),
            "docs/security.md lists no other route"
        );
    }
}
