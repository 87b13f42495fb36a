//! `GET /sse`: the same session as `/ws`, over Server-Sent Events
//! (docs/protocol.md#10-server-sent-events). The request says what to subscribe to
//! (`topics`, `last`) and where a previous stream stopped (`Last-Event-ID`, or
//! `?last_event_id=`); everything wrong with it (a pattern, a grant, the count, the
//! credentials, the id) is an HTTP error before the stream starts. The admission
//! checks and credentials are the WebSocket upgrade's ([`super::upgrade::admit`]);
//! there is no first-message auth, since the client cannot send messages.

use actix::prelude::*;
use actix_web::http::header;
use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse};
use bytes::Bytes;
use serde::Deserialize;

use super::upgrade::{admit, refuse_if_unavailable, Admitted};
use super::ApiError;
use crate::broker::Broker;
use crate::metrics::{RefusedReason, METRICS};
use crate::protocol::ErrorCode;
use crate::session::{check_patterns, sse, Session, Sink, StreamStart};

/// The query string of `GET /sse`.
#[derive(Debug, Deserialize)]
struct SseQuery {
    /// Comma-separated patterns.
    topics: Option<String>,
    last: Option<u32>,
    last_event_id: Option<String>,
    /// The `resume` object of `subscribe`, as JSON: positions a client kept itself
    /// (one that moves from WebSocket to a stream, or builds its own).
    resume: Option<String>,
}

fn bad_request(code: ErrorCode, message: impl Into<String>) -> ApiError {
    ApiError::protocol(StatusCode::BAD_REQUEST, code, message)
}

/// Where the request resumes from: its id (the `Last-Event-ID` header, which a
/// browser's own reconnect sends, else `?last_event_id=`), or `?resume=`; not both.
fn resumed(req: &HttpRequest, query: &SseQuery) -> Result<Option<sse::LastEventId>, ApiError> {
    let given = |id: &&str| !id.trim().is_empty();
    let id = req
        .headers()
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .filter(given)
        .or(query.last_event_id.as_deref().filter(given));
    let resumed = match (id, query.resume.as_deref()) {
        (None, None) => return Ok(None),
        (Some(_), Some(_)) => {
            return Err(bad_request(
                ErrorCode::BadRequest,
                "resume and Last-Event-ID (or last_event_id) are exclusive: send one",
            ))
        }
        (Some(id), None) => sse::decode(id)
            .map_err(|why| bad_request(ErrorCode::BadRequest, format!("Last-Event-ID {why}")))?,
        (None, Some(json)) => {
            let resume = serde_json::from_str(json).map_err(|e| {
                bad_request(
                    ErrorCode::BadRequest,
                    format!("resume is not {{\"epoch\":…,\"topics\":{{topic: seq}}}}: {e}"),
                )
            })?;
            sse::LastEventId::from_resume(resume)
                .map_err(|why| bad_request(ErrorCode::InvalidTopic, format!("resume {why}")))?
        }
    };
    Ok(Some(resumed))
}

pub(super) async fn sse(
    req: HttpRequest,
    broker: web::Data<Broker>,
) -> Result<HttpResponse, ApiError> {
    refuse_if_unavailable(&broker)?;
    let query = web::Query::<SseQuery>::from_query(req.query_string())
        .map_err(|e| bad_request(ErrorCode::BadRequest, format!("bad query string: {e}")))?
        .into_inner();
    // `topics=` (present, empty) is a stream of no subscription yet: welcome and
    // pings, which tell a client the broker is there. A missing `topics` is a typo.
    let Some(topics) = query.topics.as_deref() else {
        return Err(bad_request(
            ErrorCode::BadRequest,
            "topics is required: comma-separated patterns, e.g. ?topics=orders.*,news.> (or topics= for none yet)",
        ));
    };
    let topics: Vec<String> = topics
        .split(',')
        .filter(|t| !t.is_empty())
        .map(str::to_owned)
        .collect();
    let resumed = resumed(&req, &query)?;
    let max = broker.config().session.max_subscriptions;
    let checked = |identity: &crate::auth::Identity| {
        check_patterns(identity, &topics, &Default::default(), max).map_err(|e| {
            let status = match e.code {
                ErrorCode::Forbidden => StatusCode::FORBIDDEN,
                _ => StatusCode::BAD_REQUEST,
            };
            ApiError::protocol(status, e.code, e.message)
        })
    };
    // Patterns and their number first, so that a malformed request never spends a
    // ticket; the grants once the credentials are known.
    checked(&crate::auth::Identity::anonymous())?;
    let Admitted {
        identity,
        ip,
        permit,
    } = admit(&req, &broker).await?;
    let Some(identity) = identity else {
        METRICS.refused(RefusedReason::Unauthorized);
        return Err(super::api::auth_error(crate::auth::AuthError::Invalid(
            "an event stream needs Authorization: Bearer <JWT> or ?ticket=".into(),
        )));
    };
    checked(&identity)?;
    // One chunk in flight: a client that stops reading holds its session's queue
    // bound and this one chunk, as over WebSocket.
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Bytes>(1);
    let broker = broker.get_ref().clone();
    let start = StreamStart {
        topics,
        last: query.last,
        resumed,
    };
    Session::create(move |_| {
        Session::new(broker, Sink::Sse(tx), Some(identity), ip, permit).stream(start)
    });
    let body = futures_util::stream::poll_fn(move |cx| {
        rx.poll_recv(cx)
            .map(|chunk| chunk.map(Ok::<_, std::convert::Infallible>))
    });
    Ok(HttpResponse::Ok()
        .content_type("text/event-stream")
        .insert_header((header::CACHE_CONTROL, "no-cache"))
        // nginx: pass each message on at once (docker/nginx.conf sets it too).
        .insert_header(("x-accel-buffering", "no"))
        .streaming(body))
}
