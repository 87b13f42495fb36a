//! Herald inside an existing actix-web application: the app keeps its own routes and
//! publishes to Herald topics from a request handler (`Broker::publish`, no HTTP hop),
//! while browsers subscribe on the same port at `/ws`. Herald's other routes
//! (`/api/*`, `/healthz`, `/readyz`, `/metrics`, the dashboard at `/`) come along.
//!
//! Run it (the argument is the address to listen on; port 0 picks a free one):
//!     cargo run -p herald-examples --example embedded -- 127.0.0.1:8090
//! then, in two other terminals:
//!     cargo run -p herald-examples --example subscriber -- ws://127.0.0.1:8090/ws 'orders.*'
//!     curl -X POST 127.0.0.1:8090/orders/7
//! and the subscriber prints the `orders.created` event the handler published
//! (`{"id":7,"status":"created"}`, key `order-7`). `tests/examples.rs` does the same.

use actix_web::{web, App, HttpResponse, HttpServer};
use herald::{BridgeEvent, Broker, Config, Source};

/// The application's own handler: create an order, then tell every live dashboard.
async fn create_order(path: web::Path<u64>, broker: web::Data<Broker>) -> HttpResponse {
    let id = path.into_inner();
    let payload = serde_json::json!({ "id": id, "status": "created" }).to_string();
    let mut event = BridgeEvent::new("orders.created", payload, Source::Http);
    event.key = Some(format!("order-{id}"));
    // Best-effort: `Ok` means accepted for fan-out, not delivered.
    match broker.publish(event).await {
        Ok(()) => HttpResponse::Created().json(serde_json::json!({ "id": id })),
        Err(e) => {
            HttpResponse::ServiceUnavailable().json(serde_json::json!({ "error": e.to_string() }))
        }
    }
}

#[actix_web::main]
async fn main() -> anyhow::Result<()> {
    let listen = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:8090".into());
    // Herald needs the actix system that `#[actix_web::main]` runs.
    let broker = Broker::start(Config::default())?;
    let app_broker = broker.clone();
    let server = HttpServer::new(move || {
        App::new()
            .app_data(web::Data::new(app_broker.clone()))
            .route(
                "/hello",
                web::get().to(|| async { "hello from the host app\n" }),
            )
            .route("/orders/{id}", web::post().to(create_order))
            // Herald's routes: /ws, /api/*, /healthz, /readyz, /metrics and /.
            .configure(app_broker.configure())
    })
    .bind(&listen)?;
    println!("embedded example listening on http://{}", server.addrs()[0]);
    server.run().await?;
    Ok(())
}
