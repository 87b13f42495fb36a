//! The serve loop: bind, serve, log what it did, and shut down gracefully on
//! SIGTERM/SIGINT, in this order: drain for `server.drain_ms` (`/readyz` answers 503,
//! everything else is served as before), stop accepting connections, close every
//! session with 1001, stop the bridges, exit; all but the drain within
//! `server.shutdown_grace_ms`.

use std::time::{Duration, Instant};

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::KeepAlive;
use actix_web::middleware::{from_fn, Next};
use actix_web::App;
use tracing::{debug, info, warn};

use herald::config::{Config, Origin};
use herald::{Broker, Components, HttpServer};

/// One access-log line per request. Only the path is logged, never the query
/// string: it may carry a ticket.
async fn access_log(
    req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    let start = Instant::now();
    let method = req.method().clone();
    let path = req.path().to_owned();
    let peer = req.peer_addr();
    // Who the client is behind `server.trusted_proxies` (the peer otherwise).
    let client = req
        .app_data::<actix_web::web::Data<Broker>>()
        .and_then(|broker| broker.client_ip(req.request()))
        .map_or_else(|| "-".to_owned(), |ip| ip.to_string());
    let res = next.call(req).await?;
    let status = res.status().as_u16();
    let elapsed_us = start.elapsed().as_micros() as u64;
    if matches!(path.as_str(), "/healthz" | "/readyz" | "/metrics") {
        debug!(%method, %path, status, elapsed_us, ?peer, %client, "http");
    } else {
        info!(%method, %path, status, elapsed_us, ?peer, %client, "http");
    }
    Ok(res)
}

async fn signal() -> &'static str {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => tokio::select! {
                _ = term.recv() => "SIGTERM",
                _ = tokio::signal::ctrl_c() => "SIGINT",
            },
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
                "SIGINT"
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
        "ctrl-c"
    }
}

/// Serves `config` (validated, with its `components` built) until a signal; returns
/// once shut down.
pub(crate) async fn run(config: Config, components: Components) -> anyhow::Result<()> {
    let addr = config.listen_addr()?;
    let admin_addr = config.admin_addr()?;
    let grace = Duration::from_millis(config.server.shutdown_grace_ms);
    let drain = Duration::from_millis(config.server.drain_ms);
    // Slowloris: the head of a connection's first request must arrive in time.
    // actix-web sets no such deadline for later requests on a kept-alive
    // connection; `keep_alive_ms = 0` closes that gap (docs/configuration.md).
    let request_timeout = Duration::from_millis(config.server.client_request_timeout_ms);
    let keep_alive = match config.server.keep_alive_ms {
        0 => KeepAlive::Disabled,
        ms => KeepAlive::Timeout(Duration::from_millis(ms)),
    };
    let workers = match config.server.workers {
        0 => herald::cores(),
        n => n,
    };
    let broker = Broker::start_with(config, components);
    let app_broker = broker.clone();
    // Herald's server, not actix-web's: its upgrade hook lets every WebSocket
    // session own its connection (docs/architecture.md).
    let server = HttpServer::new(move || {
        App::new()
            .wrap(from_fn(access_log))
            .configure(app_broker.configure())
            .default_service(actix_web::web::to(herald::not_found))
    })
    .workers(workers)
    .client_request_timeout(request_timeout)
    .keep_alive(keep_alive)
    .disable_signals()
    .shutdown_timeout(grace.as_secs().max(1));
    let cfg = broker.config();
    let tls = broker.tls();
    let server = if let Some(tls_config) = &tls {
        server.bind_rustls(addr, (**tls_config).clone())
    } else {
        server.bind(addr)
    }
    .map_err(|e| anyhow::anyhow!("cannot listen on {addr} (server.listen): {e}"))?;
    let bound = server.addrs().first().copied().unwrap_or(addr);
    let (http, ws) = if tls.is_some() {
        ("https", "wss")
    } else {
        ("http", "ws")
    };
    // The operational routes on an address of their own (`server.admin_listen`):
    // plain HTTP, one worker, the same access log and JSON 404/405.
    let admin = match admin_addr {
        None => None,
        Some(admin_addr) => {
            let admin_broker = broker.clone();
            let server = actix_web::HttpServer::new(move || {
                App::new()
                    .wrap(from_fn(access_log))
                    .configure(admin_broker.configure_admin())
                    .default_service(actix_web::web::to(herald::not_found))
            })
            .workers(1)
            .client_request_timeout(request_timeout)
            .keep_alive(keep_alive)
            .disable_signals()
            .shutdown_timeout(grace.as_secs().max(1))
            .bind(admin_addr)
            .map_err(|e| {
                anyhow::anyhow!("cannot listen on {admin_addr} (server.admin_listen): {e}")
            })?;
            let bound = server.addrs().first().copied().unwrap_or(admin_addr);
            Some((server.run(), bound))
        }
    };
    let admin_note = match &admin {
        Some((_, bound)) => {
            format!("; /metrics, /healthz, /readyz and /api/topics on http://{bound}/")
        }
        None => String::new(),
    };
    let setup = match cfg.origin() {
        Origin::Defaults => "no config file: embedded defaults".to_owned(),
        Origin::File(p) => format!("config {}", p.display()),
    };
    let dashboard = if cfg.server.dashboard {
        "dashboard at /, "
    } else {
        ""
    };
    info!(
        addr = %bound,
        admin = admin.as_ref().map(|(_, a)| a.to_string()),
        node = broker.node(),
        epoch = broker.epoch(),
        "herald listening on {http}://{bound}/ ({dashboard}WebSocket at {ws}://{bound}/ws){admin_note}; {setup}; bridges: {}; auth: {}",
        cfg.bridge.nats.len() + cfg.bridge.kafka.len(),
        cfg.auth.mode,
    );
    let server = server.run();
    let handle = server.handle();
    let admin_handle = admin.as_ref().map(|(server, _)| server.handle());
    if let Some((server, _)) = admin {
        actix_rt::spawn(async move {
            if let Err(e) = server.await {
                warn!(error = %e, "admin listener failed");
            }
        });
    }
    let shutdown_broker = broker.clone();
    actix_rt::spawn(async move {
        let which = signal().await;
        // 0. Drain (`server.drain_ms`): `/readyz` says 503 at once and everything is
        //    served as before, so load balancers stop sending new clients before the
        //    sessions are closed. A second signal cuts it short.
        if !drain.is_zero() {
            shutdown_broker.drain();
            info!(
                signal = which,
                drain_ms = drain.as_millis() as u64,
                sessions = shutdown_broker.open_sessions(),
                "draining: /readyz answers 503; still serving"
            );
            tokio::select! {
                () = tokio::time::sleep(drain) => {}
                again = signal() => info!(signal = again, "second signal: drain cut short"),
            }
        }
        // Past the grace period (and a second for the last steps) the process exits
        // whatever is still open. A thread, not a task: it must fire even while the
        // runtime itself is shutting down (waiting on a blocking task, say).
        std::thread::spawn(move || {
            std::thread::sleep(grace + Duration::from_secs(1));
            warn!("grace period over; exiting with connections still open");
            std::process::exit(0);
        });
        let deadline = tokio::time::Instant::now() + grace;
        // 1. No new connections: a load balancer's next attempt goes elsewhere.
        handle.pause().await;
        // 2. Every session writes what it has queued and closes with 1001.
        // Said before it is done: a session closes on its own worker thread as soon
        // as it is told, and its line must not come before this one.
        info!(
            signal = which,
            sessions = shutdown_broker.open_sessions(),
            grace_ms = grace.as_millis() as u64,
            "shutting down: stopped accepting; closing sessions with 1001"
        );
        shutdown_broker.shutdown();
        while shutdown_broker.open_sessions() > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        info!(
            still_open = shutdown_broker.open_sessions(),
            "sessions closed"
        );
        // 3. The bridges stop reading and close their clients.
        shutdown_broker.stop_bridges().await;
        // 4. The HTTP server finishes what is left (its workers wait at most
        //    `shutdown_grace_ms` for their connections; the watchdog above bounds
        //    the whole shutdown by the grace period and a second). The admin
        //    listener answers probes until here (`/readyz` says 503 by now).
        if let Some(admin) = admin_handle {
            admin.stop(true).await;
        }
        handle.stop(true).await;
    });
    server.await?;
    info!("herald stopped");
    Ok(())
}
