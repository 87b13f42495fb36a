//! The JSON API: `POST /api/publish` (a batch, refused whole or accepted whole),
//! `GET /api/topics`, and `POST /api/tickets`.

use std::collections::BTreeMap;

use actix_web::http::header;
use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse};
use bytes::{Bytes, BytesMut};
use futures_util::StreamExt as _;
use herald_bridges::topic::TopicName;
use herald_bridges::Source;
use serde::Deserialize;
use serde_json::value::RawValue;
use tracing::info;

use super::ApiError;
use crate::auth::{AuthError, Identity};
use crate::broker::Broker;
use crate::protocol::ErrorCode;
use crate::publish::PublishError;
use crate::topics::Event;

async fn api_identity(req: &HttpRequest, broker: &Broker) -> Result<Identity, ApiError> {
    crate::auth::with_fresh_keys(broker.authenticator(), |auth| auth.api(req))
        .await
        .map_err(auth_error)
}

/// The HTTP answer to refused credentials: 401 (with `WWW-Authenticate`), 403, or
/// 503 when the ticket store is full or the JWKS has not been fetched yet. The
/// message says what was wrong, never what the credentials were.
pub(super) fn auth_error(e: AuthError) -> ApiError {
    match e {
        AuthError::Forbidden(_) => {
            ApiError::protocol(StatusCode::FORBIDDEN, ErrorCode::Forbidden, e.to_string())
        }
        AuthError::Unavailable(_) | AuthError::NoKeysYet => {
            let mut err = ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                e.to_string(),
            );
            err.retry_after = Some(super::RETRY_AFTER_S);
            err
        }
        AuthError::Missing | AuthError::Invalid(_) | AuthError::Expired | AuthError::UnknownKey => {
            ApiError::protocol(
                StatusCode::UNAUTHORIZED,
                ErrorCode::Unauthorized,
                e.to_string(),
            )
        }
    }
}

/// `POST /api/tickets`: a one-time ticket carrying the caller's JWT identity.
pub(super) async fn tickets(
    req: HttpRequest,
    broker: web::Data<Broker>,
) -> Result<HttpResponse, ApiError> {
    let identity = api_identity(&req, &broker).await?;
    broker
        .authenticator()
        .may_request_ticket(&identity)
        .map_err(auth_error)?;
    let address = broker
        .client_ip(&req)
        .unwrap_or(std::net::IpAddr::from([0, 0, 0, 0]));
    broker
        .ticket_rate()
        .admit(identity.subject.as_deref(), address)
        .map_err(|e| {
            let mut err = ApiError::protocol(
                StatusCode::TOO_MANY_REQUESTS,
                ErrorCode::RateLimited,
                format!("{e} (auth.ticket_rate_per_s)"),
            );
            err.retry_after = Some(e.retry_after_s());
            err
        })?;
    let (ticket, ttl) = broker
        .tickets()
        .issue(&identity)
        .await
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

pub(super) async fn publish(
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
    let identity = api_identity(&req, &broker).await?;
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
            position: None,
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
    if let Err((failed, accepted, e)) = broker.send_all(prepared).await {
        return Err(refuse(failed, accepted, e));
    }
    Ok(HttpResponse::Accepted().json(serde_json::json!({ "accepted": total })))
}

/// The query of `GET /api/topics` (other parameters are ignored).
#[derive(Deserialize)]
struct TopicsQuery {
    /// `node` (the default) or `cluster`.
    #[serde(default)]
    scope: Option<String>,
    /// At most this many topics, the first by name; `total` says how many there are.
    #[serde(default)]
    limit: Option<usize>,
}

/// Largest `limit` of `GET /api/topics`.
const MAX_TOPICS_LIMIT: usize = 10_000;

/// `GET /api/topics`: this node's topics (`scope=node`, the default), or the whole
/// cluster's (`scope=cluster`), either way only what the caller may subscribe to.
pub(super) async fn topics(
    req: HttpRequest,
    broker: web::Data<Broker>,
) -> Result<HttpResponse, ApiError> {
    let identity = api_identity(&req, &broker).await?;
    let query = web::Query::<TopicsQuery>::from_query(req.query_string())
        .map_err(|e| bad_request(format!("query: {e}")))?;
    let limit = match query.limit {
        Some(n) if !(1..=MAX_TOPICS_LIMIT).contains(&n) => {
            return Err(bad_request(format!(
                "limit {n}: expected 1 to {MAX_TOPICS_LIMIT}"
            )))
        }
        n => n.unwrap_or(usize::MAX),
    };
    // Only what the caller may subscribe to (the coverage rule of `subscribe`):
    // topic names often carry customer or tenant ids. API keys are granted `>`.
    // Then the first `limit` by name (both lists come sorted by name); `total` counts
    // what the filter left.
    let visible = |topics: &mut Vec<crate::topics::message::TopicInfo>,
                   patterns: &mut Vec<crate::topics::message::PatternInfo>| {
        topics.retain(|t| identity.may_subscribe(&t.topic));
        patterns.retain(|p| identity.may_subscribe(&p.pattern));
        let total = topics.len();
        topics.truncate(limit);
        total
    };
    match query.scope.as_deref() {
        None | Some("node") => {
            let (mut topics, mut patterns) = broker.registry().list().await;
            let total = visible(&mut topics, &mut patterns);
            Ok(HttpResponse::Ok().json(
                serde_json::json!({ "topics": topics, "patterns": patterns, "total": total }),
            ))
        }
        #[cfg(feature = "nats")]
        Some("cluster") => {
            let mut view = crate::cluster::view(&broker).await;
            view.total = visible(&mut view.topics, &mut view.patterns);
            Ok(HttpResponse::Ok().json(view))
        }
        Some(other) => Err(bad_request(format!(
            "scope `{}`: expected `node` or `cluster`",
            crate::protocol::truncate(other, 64)
        ))),
    }
}
