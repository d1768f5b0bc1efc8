//! Building and running the gateway: routes, the token and origin checks made before the
//! WebSocket upgrade, and graceful shutdown (clients get a close frame with their resume
//! position).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use actix_web::{dev::Server, web, App, HttpRequest, HttpResponse, HttpServer};
use kiln_model::{BuildNumber, BuildRef, JobName};
use kiln_service_kit::auth::Authenticator;
use kiln_service_kit::error::{self, ApiError, Route};
use kiln_service_kit::query::Query;
use kiln_service_kit::{health, Role};
use kiln_store::{Store, StoreOptions};
use serde::Deserialize;
use tokio_util::sync::CancellationToken;

use crate::config::{GatewayConfig, Limits};
use crate::hub::Hub;
use crate::live_streams::EventFilter;
use crate::session::Client;

const WS_BUILD: &str = "/ws/builds/{job}/{number}";
const WS_NODES: &str = "/ws/nodes";
const WS_EVENTS: &str = "/ws/events";
/// The gateway's own routes (beside `/healthz`, `/readyz`, `/metrics`), for its answer to
/// a wrong method (405) or path (404).
const ROUTES: &[Route] = &[("GET", WS_BUILD), ("GET", WS_NODES), ("GET", WS_EVENTS)];

/// Why the service could not start.
pub type BuildError = kiln_service_kit::StartError;

#[derive(Clone)]
struct State {
    hub: Arc<Hub>,
    store: Store,
    storage_root: PathBuf,
    limits: Limits,
    auth: Authenticator,
    shutdown: CancellationToken,
}

pub struct Application {
    server: Server,
    addr: SocketAddr,
    hub: Arc<Hub>,
    shutdown: CancellationToken,
}

impl Application {
    pub async fn build(config: GatewayConfig) -> Result<Self, BuildError> {
        let limits = config.limits()?;
        let mut opts = StoreOptions::new(&config.common.redis.url);
        opts.pool_size = config.common.redis.pool_size;
        let store = Store::new(&opts)?;
        health::warn_about_redis(&store).await;
        let hub = Hub::start(&config.common.redis.url, limits.channel_buffer)
            .map_err(|e| BuildError::Dependency(e.to_string()))?;
        let shutdown = CancellationToken::new();
        let state = State {
            hub: hub.clone(),
            store,
            storage_root: config.common.storage.root.clone(),
            limits,
            auth: Authenticator::new(&config.common.auth),
            shutdown: shutdown.clone(),
        };
        let (listener, addr) = kiln_service_kit::server::bind(&config.common.http)?;
        let mut server = HttpServer::new(move || {
            App::new()
                .app_data(web::Data::new(State {
                    store: state.store.for_this_thread(),
                    ..state.clone()
                }))
                .configure(health::configure)
                .route("/healthz", web::get().to(health::healthz))
                .route("/readyz", web::get().to(readyz))
                .route(WS_BUILD, web::get().to(ws_build))
                .route(WS_NODES, web::get().to(ws_nodes))
                .route(WS_EVENTS, web::get().to(ws_events))
                .default_service(web::to(|req| error::unrouted_service(req, ROUTES)))
        })
        .listen(listener)
        .map_err(|e| BuildError::bind(addr, e))?
        // Live output is a stream of small frames: with Nagle's algorithm (the OS default,
        // which actix keeps) a frame could wait for the client's delayed ACK of the one
        // before; `make bench` saw lines 40 ms late in about one output run in four.
        .tcp_nodelay(true)
        .disable_signals()
        .shutdown_timeout(5);
        if config.gateway.workers > 0 {
            server = server.workers(config.gateway.workers);
        }
        Ok(Self {
            server: server.run(),
            addr,
            hub,
            shutdown,
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Serves until `shutdown`; then every client gets a close frame (with its resume
    /// position for build streams) and the server stops.
    pub async fn run_until_stopped(self, shutdown: CancellationToken) -> std::io::Result<()> {
        let handle = self.server.handle();
        let sessions = self.shutdown.clone();
        let hub = self.hub.clone();
        tokio::spawn(async move {
            shutdown.cancelled().await;
            sessions.cancel();
            handle.stop(true).await;
            hub.quit().await;
        });
        self.server.await
    }
}

async fn readyz(state: web::Data<State>) -> HttpResponse {
    kiln_service_kit::health::redis_readiness(&state.store).await
}

/// The token (header, or `?access_token=` for browsers) and the Origin, checked before the
/// upgrade so a refused client gets a plain HTTP error.
fn admit(req: &HttpRequest, state: &State) -> Result<(), ApiError> {
    state
        .auth
        .check(Authenticator::token_of(req, true).as_deref(), Role::Read)?;
    if let Some(origin) = req.headers().get("origin").and_then(|o| o.to_str().ok()) {
        let allowed = &state.limits.allowed_origins;
        if !allowed.is_empty() && !allowed.iter().any(|a| a == origin) {
            return Err(ApiError::Forbidden(format!(
                "origin {origin} is not allowed"
            )));
        }
    }
    Ok(())
}

fn upgrade(
    req: &HttpRequest,
    body: web::Payload,
    state: &State,
) -> Result<(HttpResponse, Client), actix_web::Error> {
    let (res, session, stream) = actix_ws::handle(req, body)?;
    Ok((res, Client::new(session, stream, state.limits.clone())))
}

#[derive(Deserialize)]
struct BuildQuery {
    #[serde(default)]
    from: u64,
}

async fn ws_build(
    req: HttpRequest,
    body: web::Payload,
    state: web::Data<State>,
    path: web::Path<(String, String)>,
    q: Query<BuildQuery>,
) -> Result<HttpResponse, actix_web::Error> {
    admit(&req, &state)?;
    let job = JobName::parse(&path.0).map_err(|e| ApiError::bad_request("job", e.to_string()))?;
    let number: BuildNumber = path
        .1
        .parse()
        .map_err(|_| ApiError::bad_request("number", "must be a positive integer"))?;
    let (res, client) = upgrade(&req, body, &state)?;
    let s = state.get_ref().clone();
    actix_web::rt::spawn(crate::build_stream::stream_build(
        client,
        s.hub,
        s.store,
        s.storage_root,
        BuildRef::new(job, number),
        q.from,
        s.shutdown,
    ));
    Ok(res)
}

async fn ws_nodes(
    req: HttpRequest,
    body: web::Payload,
    state: web::Data<State>,
) -> Result<HttpResponse, actix_web::Error> {
    admit(&req, &state)?;
    let (res, client) = upgrade(&req, body, &state)?;
    let s = state.get_ref().clone();
    actix_web::rt::spawn(crate::live_streams::stream_nodes(
        client, s.hub, s.store, s.shutdown,
    ));
    Ok(res)
}

#[derive(Deserialize)]
struct EventsQuery {
    job: Option<String>,
    folder: Option<String>,
}

async fn ws_events(
    req: HttpRequest,
    body: web::Payload,
    state: web::Data<State>,
    q: Query<EventsQuery>,
) -> Result<HttpResponse, actix_web::Error> {
    admit(&req, &state)?;
    let q = q.into_inner();
    let (res, client) = upgrade(&req, body, &state)?;
    let s = state.get_ref().clone();
    let filter = EventFilter {
        job: q.job,
        folder: q.folder,
    };
    actix_web::rt::spawn(crate::live_streams::stream_events(
        client, s.hub, filter, s.shutdown,
    ));
    Ok(res)
}
