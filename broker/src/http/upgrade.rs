//! `GET /ws`: the WebSocket upgrade. Checked in this order before anything is
//! written: subprotocol, Origin, capacity (`server.max_connections`, per IP), then
//! credentials, so an upgrade refused for capacity never spends a ticket. The test-
//! only `/echo` route is the same upgrade into a session in echo mode.
//!
//! Under [`crate::HttpServer`] (the `herald` binary) the session then takes the
//! connection itself ([`super::takeover`]); under actix-web's own `HttpServer` it runs
//! on the request's payload and the response's body ([`Dispatched`]).

use actix::prelude::*;
use actix_web::body::{BodyStream, BoxBody, MessageBody as _};
use actix_web::http::header::{self, HeaderValue};
use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse};

use super::admission::{self, Subprotocol};
use super::api::auth_error;
use super::ApiError;
use std::net::IpAddr;

use super::admission::Permit;
use crate::auth::{Identity, Upgrade};
use crate::broker::Broker;
use crate::config::Compression;
use crate::metrics::{RefusedReason, METRICS};
use crate::protocol::{ErrorCode, SUBPROTOCOL};
use crate::session::socket::io::{Dispatched, Io};
use crate::session::socket::{deflate, Deflate, Socket};
use crate::session::{Session, Sink};

/// Marks the test-only `/echo` resource (`server.conformance_echo`): the same
/// upgrade as `/ws`, and a session in echo mode (docs/conformance.md).
#[derive(Debug, Clone, Copy)]
struct EchoRoute;

/// Mounts `/echo` (`server.conformance_echo`).
pub(super) fn configure_echo(cfg: &mut web::ServiceConfig) {
    cfg.service(
        web::resource("/echo")
            .app_data(EchoRoute)
            .route(web::get().to(upgrade)),
    );
}

pub(super) async fn upgrade(
    req: HttpRequest,
    body: web::Payload,
    broker: web::Data<Broker>,
) -> Result<HttpResponse, ApiError> {
    refuse_if_unavailable(&broker)?;
    let subprotocol = admission::subprotocol(req.headers());
    if subprotocol == Subprotocol::Unsupported {
        METRICS.refused(RefusedReason::Subprotocol);
        return Err(ApiError::protocol(
            StatusCode::BAD_REQUEST,
            ErrorCode::BadRequest,
            format!("unsupported WebSocket subprotocol; this server speaks {SUBPROTOCOL}"),
        ));
    }
    let admitted = admit(&req, &broker).await?;
    let mut response = actix_http::ws::handshake(req.head()).map_err(|e| {
        ApiError::protocol(
            StatusCode::BAD_REQUEST,
            ErrorCode::BadRequest,
            format!("not a WebSocket upgrade: {e}"),
        )
    })?;
    if subprotocol == Subprotocol::Herald {
        response.insert_header((
            header::SEC_WEBSOCKET_PROTOCOL,
            HeaderValue::from_static(SUBPROTOCOL),
        ));
    }
    let deflate = match broker.config().session.compression {
        Compression::None => None,
        Compression::Deflate => deflate::negotiate(
            req.headers()
                .get_all(header::SEC_WEBSOCKET_EXTENSIONS)
                .filter_map(|v| v.to_str().ok()),
        ),
    };
    if let Some(d) = deflate {
        if let Ok(value) = HeaderValue::from_str(&d.response()) {
            response.insert_header((header::SEC_WEBSOCKET_EXTENSIONS, value));
        }
    }
    let start = SessionStart {
        broker: broker.get_ref().clone(),
        admitted,
        echo: req.app_data::<EchoRoute>().is_some(),
        deflate,
    };
    let slot = actix_web::HttpMessage::extensions(&req)
        .get::<super::takeover::Slot>()
        .cloned();
    let body = match slot {
        // The hook writes the 101 and hands the connection to the session.
        Some(slot) => {
            slot.put(start);
            BoxBody::new(())
        }
        None => {
            let (io, body) = Dispatched::new(body.into_inner());
            start.run(Box::new(io), bytes::BytesMut::new());
            BodyStream::new(body).boxed()
        }
    };
    let response = response.message_body(body).map_err(|e| {
        ApiError::protocol(
            StatusCode::INTERNAL_SERVER_ERROR,
            ErrorCode::Internal,
            format!("cannot answer the upgrade: {e}"),
        )
    })?;
    Ok(response.into())
}

/// A session to start once its connection is handed over.
pub(crate) struct SessionStart {
    broker: Broker,
    admitted: Admitted,
    echo: bool,
    deflate: Option<Deflate>,
}

impl SessionStart {
    /// Starts the session on `io`; `early` holds bytes that came after the handshake.
    pub(crate) fn run(self, io: Box<dyn Io>, early: bytes::BytesMut) {
        let SessionStart {
            broker,
            admitted:
                Admitted {
                    identity,
                    ip,
                    permit,
                },
            echo,
            deflate,
        } = self;
        let max = broker.config().session.max_message_bytes;
        let socket = Socket::new(io, early, max, deflate);
        Session::create(move |_| {
            Session::new(broker, Sink::WebSocket(socket), identity, ip, permit).echo(echo)
        });
    }
}

/// 503 while the node shuts down (a new session would be closed at once), and
/// with cluster history before its stream is set up (no epoch to give yet).
pub(super) fn refuse_if_unavailable(broker: &Broker) -> Result<(), ApiError> {
    let why = if broker.is_shutting_down() {
        Some("the server is shutting down; connect again (to another node)".to_owned())
    } else {
        broker.history_unready()
    };
    if let Some(why) = why {
        let mut e = ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", why);
        e.retry_after = Some(super::RETRY_AFTER_S);
        return Err(e);
    }
    Ok(())
}

/// A connection let in: its slot, address and credentials.
pub(super) struct Admitted {
    /// `None`: the client must authenticate with its first message.
    pub(super) identity: Option<Identity>,
    pub(super) ip: Option<IpAddr>,
    pub(super) permit: Permit,
}

/// What every new session passes, WebSocket or SSE, in this order: Origin,
/// capacity (`server.max_connections`, per IP, upgrade rate), then credentials, so
/// a connection refused for capacity never spends a ticket.
pub(super) async fn admit(req: &HttpRequest, broker: &Broker) -> Result<Admitted, ApiError> {
    if !admission::origin_allowed(req.headers(), &broker.config().server.allowed_origins) {
        METRICS.refused(RefusedReason::Origin);
        return Err(ApiError::protocol(
            StatusCode::FORBIDDEN,
            ErrorCode::Forbidden,
            "this Origin may not connect (server.allowed_origins)",
        ));
    }
    let ip = broker.client_ip(req);
    let permit = broker.limiter().acquire(ip).map_err(|reason| {
        METRICS.refused(reason);
        let (which, retry_after) = match reason {
            RefusedReason::CapacityPerIp => (
                "this client address has too many connections (server.max_connections_per_ip)",
                super::RETRY_AFTER_S,
            ),
            // Jittered, so that the clients refused together come back spread out.
            RefusedReason::UpgradeRate => (
                "too many connections are being opened right now (server.max_upgrades_per_s)",
                rand::random_range(1..=5),
            ),
            _ => (
                "the server is at its connection limit (server.max_connections)",
                super::RETRY_AFTER_S,
            ),
        };
        let mut e = ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", which);
        e.retry_after = Some(retry_after);
        e
    })?;
    let refused = |e| {
        METRICS.refused(RefusedReason::Unauthorized);
        auth_error(e)
    };
    let upgrade = crate::auth::with_fresh_keys(broker.authenticator(), |auth| auth.upgrade(req));
    let identity = match upgrade.await.map_err(refused)? {
        Upgrade::Identified(identity) => Some(identity),
        Upgrade::Ticket(ticket) => Some(broker.tickets().redeem(&ticket).await.map_err(refused)?),
        Upgrade::Later => None,
    };
    Ok(Admitted {
        identity,
        ip,
        permit,
    })
}
