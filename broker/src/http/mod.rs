//! HTTP routes: the WebSocket upgrade and the JSON API (PROTOCOL.md sections 2 and 8).
//!
//! Every error is `{"error":{"code":"…","message":"…"}}` with a fitting status, for
//! routes Herald does not have too. The upgrade is checked (subprotocol, Origin,
//! credentials, capacity) before any WebSocket frame is sent.

pub mod admission;
pub mod tls;

use std::collections::BTreeMap;

use actix::prelude::*;
use actix_web::http::header::{self, HeaderValue};
use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse, ResponseError};
use bytes::{Bytes, BytesMut};
use futures_util::StreamExt as _;
use herald_bridges::topic::TopicName;
use herald_bridges::Source;
use serde::Deserialize;
use serde_json::value::RawValue;
use tracing::info;

use crate::auth::{AuthError, Identity};
use crate::broker::Broker;
use crate::http::admission::Subprotocol;
use crate::metrics::{RefusedReason, METRICS};
use crate::protocol::{ErrorCode, SUBPROTOCOL};
use crate::publish::PublishError;
use crate::session::Session;
use crate::topics::Event;

/// Seconds a client refused for capacity is asked to wait.
const RETRY_AFTER_S: &str = "5";

/// Marks the test-only `/echo` resource (`server.conformance_echo`): the same
/// upgrade as `/ws`, and a session in echo mode (docs/conformance.md).
#[derive(Debug, Clone, Copy)]
struct EchoRoute;

/// An HTTP error with Herald's JSON body.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
    retry_after: bool,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
            retry_after: false,
        }
    }

    fn protocol(status: StatusCode, code: ErrorCode, message: impl Into<String>) -> Self {
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
        if self.status == StatusCode::UNAUTHORIZED {
            res.insert_header((header::WWW_AUTHENTICATE, "Bearer"));
        }
        res.json(serde_json::json!({"error": {"code": self.code, "message": self.message}}))
    }
}

/// Registers every route (see [`Broker::configure`]).
pub fn configure(cfg: &mut web::ServiceConfig, broker: Broker) {
    if broker.config().server.conformance_echo {
        cfg.service(
            web::resource("/echo")
                .app_data(EchoRoute)
                .route(web::get().to(upgrade)),
        );
    }
    cfg.app_data(web::Data::new(broker))
        .route("/ws", web::get().to(upgrade))
        .route("/api/publish", web::post().to(publish))
        .route("/api/topics", web::get().to(topics))
        .route("/api/tickets", web::post().to(tickets))
        .route("/healthz", web::get().to(healthz))
        .route("/readyz", web::get().to(readyz))
        .route("/metrics", web::get().to(metrics))
        .route("/asyncapi.json", web::get().to(asyncapi))
        .route("/herald.js", web::get().to(client_js))
        .route("/", web::get().to(index));
}

async fn upgrade(
    req: HttpRequest,
    body: web::Payload,
    broker: web::Data<Broker>,
) -> Result<HttpResponse, ApiError> {
    let cfg = broker.config();
    let subprotocol = admission::subprotocol(req.headers());
    if subprotocol == Subprotocol::Unsupported {
        METRICS.refused(RefusedReason::Subprotocol);
        return Err(ApiError::protocol(
            StatusCode::BAD_REQUEST,
            ErrorCode::BadRequest,
            format!("unsupported WebSocket subprotocol; this server speaks {SUBPROTOCOL}"),
        ));
    }
    if !admission::origin_allowed(req.headers(), &cfg.server.allowed_origins) {
        METRICS.refused(RefusedReason::Origin);
        return Err(ApiError::protocol(
            StatusCode::FORBIDDEN,
            ErrorCode::Forbidden,
            "this Origin may not connect (server.allowed_origins)",
        ));
    }
    let ip = req.peer_addr().map(|a| a.ip());
    let permit = broker.limiter().acquire(ip).map_err(|reason| {
        METRICS.refused(reason);
        let which = match reason {
            RefusedReason::CapacityPerIp => {
                "this client address has too many connections (server.max_connections_per_ip)"
            }
            _ => "the server is at its connection limit (server.max_connections)",
        };
        let mut e = ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", which);
        e.retry_after = true;
        e
    })?;
    // Credentials after the admission checks, so an upgrade refused for capacity
    // never uses up a ticket.
    let identity = broker.authenticator().upgrade(&req).map_err(|e| {
        METRICS.refused(RefusedReason::Unauthorized);
        auth_error(e)
    })?;
    let (mut response, ws, stream) = actix_ws::handle(&req, body).map_err(|e| {
        ApiError::protocol(
            StatusCode::BAD_REQUEST,
            ErrorCode::BadRequest,
            format!("not a WebSocket upgrade: {e}"),
        )
    })?;
    if subprotocol == Subprotocol::Herald {
        response.headers_mut().insert(
            header::SEC_WEBSOCKET_PROTOCOL,
            HeaderValue::from_static(SUBPROTOCOL),
        );
    }
    let max = cfg.session.max_message_bytes;
    let stream = stream
        .max_frame_size(max)
        .aggregate_continuations()
        .max_continuation_size(max);
    let broker = broker.get_ref().clone();
    let echo = req.app_data::<EchoRoute>().is_some();
    Session::create(move |ctx| {
        ctx.add_stream(stream);
        Session::new(broker, ws, identity, ip, permit).echo(echo)
    });
    Ok(response)
}

fn api_identity(req: &HttpRequest, broker: &Broker) -> Result<Identity, ApiError> {
    broker.authenticator().api(req).map_err(auth_error)
}

/// The HTTP answer to refused credentials: 401 (with `WWW-Authenticate`), 403, or
/// 503 when the ticket store is full. The message says what was wrong, never what
/// the credentials were.
fn auth_error(e: AuthError) -> ApiError {
    match e {
        AuthError::Forbidden(_) => {
            ApiError::protocol(StatusCode::FORBIDDEN, ErrorCode::Forbidden, e.to_string())
        }
        AuthError::Unavailable(_) => {
            let mut err = ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                e.to_string(),
            );
            err.retry_after = true;
            err
        }
        AuthError::Missing | AuthError::Invalid(_) | AuthError::Expired => ApiError::protocol(
            StatusCode::UNAUTHORIZED,
            ErrorCode::Unauthorized,
            e.to_string(),
        ),
    }
}

/// `POST /api/tickets`: a one-time ticket carrying the caller's JWT identity.
async fn tickets(req: HttpRequest, broker: web::Data<Broker>) -> Result<HttpResponse, ApiError> {
    let identity = api_identity(&req, &broker)?;
    let (ticket, ttl) = broker
        .authenticator()
        .issue_ticket(&identity)
        .map_err(auth_error)?;
    info!(
        subject = identity.subject.as_deref().unwrap_or("-"),
        ttl_ms = ttl,
        "ticket issued"
    );
    Ok(HttpResponse::Created()
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .json(serde_json::json!({"ticket": ticket, "expires_in_ms": ttl})))
}

/// One event of `POST /api/publish`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PublishItem {
    topic: String,
    #[serde(default, deserialize_with = "present")]
    data: Option<Box<RawValue>>,
    #[serde(default)]
    key: Option<String>,
    #[serde(default)]
    headers: Option<BTreeMap<String, String>>,
}

fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Box<RawValue>>, D::Error> {
    Box::<RawValue>::deserialize(d).map(Some)
}

fn bad_request(message: impl Into<String>) -> ApiError {
    ApiError::protocol(StatusCode::BAD_REQUEST, ErrorCode::BadRequest, message)
}

/// Reads the body up to `max` bytes, answering 413 past it.
async fn read_body(
    mut body: web::Payload,
    req: &HttpRequest,
    max: usize,
    timeout_ms: u64,
) -> Result<Bytes, ApiError> {
    let too_large = || {
        ApiError::protocol(
            StatusCode::PAYLOAD_TOO_LARGE,
            ErrorCode::PayloadTooLarge,
            format!("body larger than {max} bytes (publish.max_body_bytes)"),
        )
    };
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|n| n > max) {
        return Err(too_large());
    }
    // A body dribbled byte by byte must not hold a worker's connection forever: the
    // whole body gets `server.client_request_timeout_ms`, like the headers.
    let deadline = std::time::Duration::from_millis(timeout_ms);
    let read = async {
        let mut buf = BytesMut::new();
        while let Some(chunk) = body.next().await {
            let chunk = chunk.map_err(|e| bad_request(format!("cannot read body: {e}")))?;
            if buf.len() + chunk.len() > max {
                return Err(too_large());
            }
            buf.extend_from_slice(&chunk);
        }
        Ok(buf.freeze())
    };
    tokio::time::timeout(deadline, read).await.unwrap_or_else(|_| {
        Err(ApiError::new(
            StatusCode::REQUEST_TIMEOUT,
            "request_timeout",
            format!("the body did not arrive within {timeout_ms} ms (server.client_request_timeout_ms)"),
        ))
    })
}

fn parse_batch(body: &[u8]) -> Result<Vec<PublishItem>, ApiError> {
    let first = body.iter().find(|b| !b.is_ascii_whitespace()).copied();
    let items: Vec<Box<RawValue>> = match first {
        Some(b'[') => {
            serde_json::from_slice(body).map_err(|e| bad_request(format!("not valid JSON: {e}")))?
        }
        Some(b'{') => vec![serde_json::from_slice(body)
            .map_err(|e| bad_request(format!("not valid JSON: {e}")))?],
        _ => {
            return Err(bad_request(
                "the body must be a JSON object or an array of them",
            ))
        }
    };
    if items.is_empty() {
        return Err(bad_request("the batch is empty"));
    }
    items
        .iter()
        .enumerate()
        .map(|(i, raw)| {
            serde_json::from_str::<PublishItem>(raw.get())
                .map_err(|e| bad_request(format!("event {i}: {e}")))
        })
        .collect()
}

async fn publish(
    req: HttpRequest,
    body: web::Payload,
    broker: web::Data<Broker>,
) -> Result<HttpResponse, ApiError> {
    let cfg = broker.config();
    if !cfg.publish.http {
        return Err(ApiError::protocol(
            StatusCode::FORBIDDEN,
            ErrorCode::PublishDisabled,
            "POST /api/publish is disabled on this server (publish.http = false)",
        ));
    }
    let identity = api_identity(&req, &broker)?;
    let body = read_body(
        body,
        &req,
        cfg.publish.max_body_bytes,
        cfg.server.client_request_timeout_ms,
    )
    .await?;
    let items = parse_batch(&body)?;
    // Validate the whole batch before publishing any of it.
    let mut events = Vec::with_capacity(items.len());
    for (i, item) in items.into_iter().enumerate() {
        let topic = TopicName::new(item.topic).map_err(|e| {
            ApiError::protocol(
                StatusCode::BAD_REQUEST,
                ErrorCode::InvalidTopic,
                format!("event {i}: {e}"),
            )
        })?;
        let data = item
            .data
            .ok_or_else(|| bad_request(format!("event {i}: missing field `data`")))?;
        let max = cfg.session.max_message_bytes;
        if data.get().len() > max {
            return Err(ApiError::protocol(
                StatusCode::PAYLOAD_TOO_LARGE,
                ErrorCode::PayloadTooLarge,
                format!(
                    "event {i}: data is {} bytes; the limit is {max} (session.max_message_bytes)",
                    data.get().len()
                ),
            ));
        }
        if !identity.may_publish(&topic) {
            return Err(ApiError::protocol(
                StatusCode::FORBIDDEN,
                ErrorCode::Forbidden,
                format!("event {i}: not allowed to publish to {topic}"),
            ));
        }
        events.push(Event {
            topic,
            payload: Bytes::copy_from_slice(data.get().as_bytes()),
            key: item.key,
            headers: item.headers.unwrap_or_default(),
            source: Source::Http,
        });
    }
    let total = events.len();
    let refuse = |i: usize, accepted: usize, e: PublishError| {
        let status = match e {
            PublishError::Busy | PublishError::BackplaneDown(_) => StatusCode::SERVICE_UNAVAILABLE,
            PublishError::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            PublishError::InvalidTopic(_) | PublishError::InvalidHeader(_) => {
                StatusCode::BAD_REQUEST
            }
        };
        ApiError::protocol(
            status,
            e.code(),
            format!("event {i}: {e}; accepted {accepted} of {total}"),
        )
    };
    // What the backplane would refuse is refused for the whole batch, up front.
    let prepared = events
        .into_iter()
        .enumerate()
        .map(|(i, event)| broker.prepare(event).map_err(|e| refuse(i, 0, e)))
        .collect::<Result<Vec<_>, _>>()?;
    for (accepted, event) in prepared.into_iter().enumerate() {
        if let Err(e) = broker.send(event).await {
            return Err(refuse(accepted, accepted, e));
        }
    }
    Ok(HttpResponse::Accepted().json(serde_json::json!({ "accepted": total })))
}

async fn topics(req: HttpRequest, broker: web::Data<Broker>) -> Result<HttpResponse, ApiError> {
    api_identity(&req, &broker)?;
    let (topics, patterns) = broker.registry().list().await;
    Ok(HttpResponse::Ok().json(serde_json::json!({ "topics": topics, "patterns": patterns })))
}

async fn healthz() -> HttpResponse {
    HttpResponse::Ok().json(serde_json::json!({"status": "ok"}))
}

async fn readyz(broker: web::Data<Broker>) -> HttpResponse {
    let (ready, reasons) = broker.readiness().report();
    if ready {
        HttpResponse::Ok().json(serde_json::json!({"status": "ready"}))
    } else {
        HttpResponse::ServiceUnavailable()
            .json(serde_json::json!({"status": "not_ready", "reasons": reasons}))
    }
}

async fn metrics(broker: web::Data<Broker>) -> HttpResponse {
    let mut text = METRICS.render();
    text.push_str(&crate::metrics::render_bridges(broker.bridge_counters()));
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4; charset=utf-8")
        .body(text)
}

async fn index() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/html; charset=utf-8")
        .body(include_str!("../../assets/index.html"))
}

/// The JavaScript client (`clients/js`), for pages that want no build step. The same
/// file is the npm package's entry point, so the two cannot differ.
async fn client_js() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/javascript; charset=utf-8")
        .body(include_str!("../../../clients/js/herald.js"))
}

/// The AsyncAPI 3.0 document of the protocol (`docs/asyncapi.json`), checked against
/// the messages the broker really sends by `tests/asyncapi.rs`.
async fn asyncapi() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("application/json")
        .body(include_str!("../../../docs/asyncapi.json"))
}

/// JSON 404/405 for every route nobody serves. The `herald` binary installs it as
/// its app's default service; an embedding app keeps its own.
pub async fn not_found(req: HttpRequest) -> HttpResponse {
    route_error(&req).error_response()
}

fn route_error(req: &HttpRequest) -> ApiError {
    let allowed = [
        "/ws",
        "/api/publish",
        "/api/topics",
        "/api/tickets",
        "/healthz",
        "/readyz",
        "/metrics",
        "/asyncapi.json",
        "/herald.js",
        "/",
    ];
    if allowed.contains(&req.path()) {
        return ApiError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            format!("{} is not allowed on {}", req.method(), req.path()),
        );
    }
    ApiError::new(
        StatusCode::NOT_FOUND,
        "not_found",
        format!("no route {}", req.path()),
    )
}
