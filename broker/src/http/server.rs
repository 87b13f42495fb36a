//! [`HttpServer`]: actix-web's `HttpServer`, with the upgrade hook that lets
//! WebSocket sessions own their connections ([`super::takeover`]).
//!
//! actix-web's own server offers no upgrade hook, so an app it serves keeps every
//! WebSocket inside actix-http's dispatcher (two 8 KiB buffers and a task per
//! connection, and two task hops per write). The `herald` binary serves with this one;
//! an app that embeds Herald may too, with the same app factory.

use std::fmt;
use std::marker::PhantomData;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Duration;

use actix_codec::{AsyncRead, AsyncWrite, Framed};
use actix_http::body::{BoxBody, MessageBody};
use actix_http::{h1, KeepAlive, Request, Response};
use actix_service::{
    fn_factory, fn_service, map_config, IntoServiceFactory, Service, ServiceFactory,
    ServiceFactoryExt as _,
};
use actix_web::dev::AppConfig;

use super::takeover::{take_over, TakeoverError};

impl From<TakeoverError> for Response<BoxBody> {
    fn from(_: TakeoverError) -> Self {
        Response::internal_server_error()
    }
}

/// The app's types, which the server names but does not hold.
type AppTypes<I, S, B> = fn() -> (I, S, B);

/// An HTTP/1.1 server for an actix-web app whose WebSocket sessions own their
/// connections: use it where `actix_web::HttpServer` would be used.
///
/// ```no_run
/// # async fn serve(broker: herald::Broker) -> std::io::Result<()> {
/// let app_broker = broker.clone();
/// herald::HttpServer::new(move || {
///     actix_web::App::new().configure(app_broker.configure())
/// })
/// .bind("127.0.0.1:8080".parse().unwrap())?
/// .run()
/// .await
/// # }
/// ```
pub struct HttpServer<F, I, S, B> {
    factory: F,
    builder: actix_server::ServerBuilder,
    /// Tells HTTP connections that the server is stopping, so that idle kept-alive
    /// ones close instead of answering more requests (as actix-web's server does).
    shutdown: actix_server::GracefulShutdownSignal,
    keep_alive: KeepAlive,
    client_request_timeout: Duration,
    addrs: Vec<SocketAddr>,
    _app: PhantomData<AppTypes<I, S, B>>,
}

impl<F, I, S, B> HttpServer<F, I, S, B>
where
    F: Fn() -> I + Send + Clone + 'static,
    I: IntoServiceFactory<S, Request>,
    S: ServiceFactory<Request, Config = AppConfig> + 'static,
    S::Error: Into<actix_web::Error> + 'static,
    S::InitError: fmt::Debug,
    S::Response: Into<Response<B>> + 'static,
    S::Service: 'static,
    <S::Service as Service<Request>>::Future: 'static,
    B: MessageBody + 'static,
{
    /// A server for the apps `factory` makes (one per worker thread).
    pub fn new(factory: F) -> Self {
        let builder = actix_server::Server::build();
        HttpServer {
            factory,
            shutdown: builder.graceful_shutdown_signal(),
            builder,
            keep_alive: KeepAlive::default(),
            client_request_timeout: Duration::from_secs(5),
            addrs: Vec::new(),
            _app: PhantomData,
        }
    }

    /// Worker threads (default: one per core).
    pub fn workers(mut self, n: usize) -> Self {
        self.builder = self.builder.workers(n);
        self
    }

    /// How long an idle HTTP connection is kept open between requests.
    pub fn keep_alive(mut self, keep_alive: impl Into<KeepAlive>) -> Self {
        self.keep_alive = keep_alive.into();
        self
    }

    /// How long a client may take to send a request's head (default 5 s).
    pub fn client_request_timeout(mut self, timeout: Duration) -> Self {
        self.client_request_timeout = timeout;
        self
    }

    /// Seconds the workers wait for HTTP connections when stopping gracefully.
    pub fn shutdown_timeout(mut self, seconds: u64) -> Self {
        self.builder = self.builder.shutdown_timeout(seconds);
        self
    }

    /// Leaves SIGINT and SIGTERM to the caller.
    pub fn disable_signals(mut self) -> Self {
        self.builder = self.builder.disable_signals();
        self
    }

    /// Listens on `addr` in plain HTTP.
    pub fn bind(mut self, addr: SocketAddr) -> std::io::Result<Self> {
        let (listener, addr) = self.listener(addr)?;
        let settings = self.settings();
        self.builder = self
            .builder
            .listen(format!("herald-{addr}"), listener, move || {
                let factory = settings.factory.clone();
                settings
                    .service(addr)
                    .upgrade(hook(factory.clone()))
                    .finish(app(&factory))
                    .tcp()
            })?;
        Ok(self)
    }

    /// Listens on `addr` with TLS (HTTP/1.1 only: WebSocket upgrades need it).
    pub fn bind_rustls(
        mut self,
        addr: SocketAddr,
        config: rustls::ServerConfig,
    ) -> std::io::Result<Self> {
        let (listener, addr) = self.listener(addr)?;
        let settings = self.settings();
        self.builder = self
            .builder
            .listen(format!("herald-tls-{addr}"), listener, move || {
                let factory = settings.factory.clone();
                settings
                    .service(addr)
                    .secure()
                    .upgrade(hook(factory.clone()))
                    .finish(app(&factory))
                    .rustls_0_23(config.clone())
            })?;
        Ok(self)
    }

    /// Binds `addr` (port 0 picks one) and records the address bound.
    fn listener(
        &mut self,
        addr: SocketAddr,
    ) -> std::io::Result<(std::net::TcpListener, SocketAddr)> {
        let listener = std::net::TcpListener::bind(addr)?;
        let addr = listener.local_addr()?;
        self.addrs.push(addr);
        Ok((listener, addr))
    }

    /// The addresses bound so far (port 0 resolved).
    pub fn addrs(&self) -> Vec<SocketAddr> {
        self.addrs.clone()
    }

    /// Starts serving.
    pub fn run(self) -> actix_server::Server {
        self.builder.run()
    }

    fn settings(&self) -> Settings<F> {
        Settings {
            factory: self.factory.clone(),
            keep_alive: self.keep_alive,
            client_request_timeout: self.client_request_timeout,
            shutdown: self.shutdown.clone(),
        }
    }
}

/// What each worker's HTTP service is built with.
#[derive(Clone)]
struct Settings<F> {
    factory: F,
    keep_alive: KeepAlive,
    client_request_timeout: Duration,
    shutdown: actix_server::GracefulShutdownSignal,
}

impl<F> Settings<F> {
    /// The HTTP service's builder for a listener on `addr`.
    fn service<T, S>(&self, addr: SocketAddr) -> actix_http::HttpServiceBuilder<T, S>
    where
        S: ServiceFactory<Request, Config = ()>,
        S::Error: Into<Response<BoxBody>> + 'static,
        S::InitError: fmt::Debug,
        <S::Service as Service<Request>>::Future: 'static,
    {
        let shutdown = self.shutdown.clone();
        actix_http::HttpServiceBuilder::default()
            .graceful_shutdown_signal(move || {
                let shutdown = shutdown.clone();
                async move { shutdown.notified().await }
            })
            .keep_alive(self.keep_alive)
            .client_request_timeout(self.client_request_timeout)
            .local_addr(addr)
    }
}

/// The app as the HTTP service's request handler, with actix-web's errors as responses.
fn app<F, I, S, B>(
    factory: &F,
) -> impl ServiceFactory<
    Request,
    Config = (),
    Response = S::Response,
    Error = actix_web::HttpResponse,
    InitError = S::InitError,
>
where
    F: Fn() -> I,
    I: IntoServiceFactory<S, Request>,
    S: ServiceFactory<Request, Config = AppConfig>,
    S::Error: Into<actix_web::Error>,
    S::Response: Into<Response<B>>,
{
    let fac = factory()
        .into_factory()
        .map_err(|err| err.into().error_response());
    map_config(fac, |_| AppConfig::default())
}

/// The upgrade hook: on each worker, a second instance of the app answers upgrade
/// requests, and [`take_over`] hands their connections to sessions.
fn hook<T, F, I, S, B>(
    factory: F,
) -> impl ServiceFactory<
    (Request, Framed<T, h1::Codec>),
    Config = (),
    Response = (),
    Error = TakeoverError,
    InitError = (),
>
where
    T: AsyncRead + AsyncWrite + Unpin + 'static,
    F: Fn() -> I + Clone + 'static,
    I: IntoServiceFactory<S, Request>,
    S: ServiceFactory<Request, Config = AppConfig> + 'static,
    S::Error: Into<actix_web::Error> + 'static,
    S::InitError: fmt::Debug,
    S::Response: Into<Response<B>> + 'static,
    S::Service: 'static,
    B: MessageBody + 'static,
{
    fn_factory(move || {
        let factory = factory.clone();
        async move {
            let app = factory()
                .into_factory()
                .new_service(AppConfig::default())
                .await
                .map_err(|e| tracing::error!(error = ?e, "cannot build the app for upgrades"))?;
            let app = Rc::new(app);
            Ok(fn_service(
                move |(req, framed): (Request, Framed<T, h1::Codec>)| {
                    take_over(app.clone(), req, framed)
                },
            ))
        }
    })
}
