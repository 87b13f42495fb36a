//! The upgrade hook: how a WebSocket session takes its connection out of actix-http's
//! HTTP/1 dispatcher (docs/architecture.md, "Sessions own their sockets").
//!
//! actix-http hands every WebSocket upgrade request to this hook, with the raw
//! connection, instead of to the app. The hook still asks the app (the very routes
//! of [`crate::http::ROUTES`], the access log and the JSON 404/405 included), with a
//! [`Slot`] in the request's extensions. The `/ws` handler runs every check as
//! always, and on success leaves the session to start in the slot and answers `101`.
//! The hook writes the `101`, then gives the connection (and any bytes that came
//! after the handshake) to the session and returns: the dispatcher, its two 8 KiB
//! buffers and its task end there. Any other answer is written whole, and the
//! connection closes.

use std::cell::Cell;
use std::rc::Rc;

use actix_codec::{AsyncRead, AsyncWrite, Framed};
use actix_http::body::{BodySize, BoxBody, MessageBody};
use actix_http::{h1, ConnectionType, Request, Response, StatusCode};
use actix_service::Service;
use futures_util::SinkExt;

use crate::http::upgrade::SessionStart;

/// Where the `/ws` handler leaves the session for the hook to start (see the module
/// doc). Its presence in a request's extensions tells the handler that the hook
/// will write the `101` and hand over the connection.
#[derive(Clone, Default)]
pub(crate) struct Slot(Rc<Cell<Option<SessionStart>>>);

impl Slot {
    pub(crate) fn put(&self, start: SessionStart) {
        self.0.set(Some(start));
    }
}

/// Why a hooked upgrade ended without a session.
#[derive(Debug, thiserror::Error)]
pub(crate) enum TakeoverError {
    #[error("writing the response: {0}")]
    Io(#[from] std::io::Error),
}

/// Answers one upgrade request on `framed` through `app` (see the module doc).
pub(crate) async fn take_over<T, S, B>(
    app: Rc<S>,
    req: Request,
    mut framed: Framed<T, h1::Codec>,
) -> Result<(), TakeoverError>
where
    T: AsyncRead + AsyncWrite + Unpin + 'static,
    S: Service<Request>,
    S::Response: Into<Response<B>>,
    S::Error: Into<actix_web::Error>,
    B: MessageBody + 'static,
{
    let slot = Slot::default();
    actix_web::HttpMessage::extensions_mut(&req).insert(slot.clone());
    let res: Response<BoxBody> = match app.call(req).await {
        Ok(res) => res.into().map_body(|_, body| BoxBody::new(body)),
        Err(e) => e.into().error_response().into(),
    };
    let (mut head, body) = res.into_parts();
    if let (StatusCode::SWITCHING_PROTOCOLS, Some(start)) = (head.status(), slot.0.take()) {
        framed
            .send(h1::Message::Item((head, BodySize::None)))
            .await?;
        let parts = framed.into_parts();
        start.run(Box::new(parts.io), parts.read_buf);
        return Ok(());
    }
    // An HTTP answer (a refusal, a 404): written whole; the connection then closes,
    // as it was asked to switch protocols and cannot go back to HTTP.
    head.head_mut().set_connection_type(ConnectionType::Close);
    let body = actix_web::body::to_bytes(body).await.unwrap_or_default();
    // Head and body in one write: a client reading the refusal gets both at once.
    framed
        .feed(h1::Message::Item((
            head,
            BodySize::Sized(body.len() as u64),
        )))
        .await?;
    if !body.is_empty() {
        framed.feed(h1::Message::Chunk(Some(body))).await?;
    }
    // actix-codec's `close` shuts the stream down without flushing what is fed.
    SinkExt::<h1::Message<(Response<()>, BodySize)>>::flush(&mut framed).await?;
    SinkExt::<h1::Message<(Response<()>, BodySize)>>::close(&mut framed).await?;
    Ok(())
}
