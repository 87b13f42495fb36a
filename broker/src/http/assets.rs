//! What the binary carries for browsers and tools: the dashboard page, the
//! JavaScript client and the AsyncAPI document, each embedded at build time.
//!
//! All three are read from `broker/assets/`: the client and the AsyncAPI document
//! are symbolic links there to `clients/js/herald.js` and `docs/asyncapi.json`, so
//! the packaged crate (which holds only files under `broker/`) carries them too.

use actix_web::HttpResponse;

pub(super) async fn index() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/html; charset=utf-8")
        .body(include_str!("../../assets/index.html"))
}

/// The JavaScript client (`clients/js`), for pages that want no build step. The same
/// file is the npm package's entry point, so the two cannot differ.
pub(super) async fn client_js() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/javascript; charset=utf-8")
        .body(include_str!("../../assets/herald.js"))
}

/// The AsyncAPI 3.0 document of the protocol (`docs/asyncapi.json`), checked against
/// the messages the broker really sends by `tests/asyncapi.rs`.
pub(super) async fn asyncapi() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("application/json")
        .body(include_str!("../../assets/asyncapi.json"))
}
