//! Building and running the api server: all fallible set-up happens in `build`, which
//! binds the port (0 in tests) so callers learn the real address before serving.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use actix_web::{dev::Server, middleware, web, App, HttpServer};
use kiln_service_kit::auth::Authenticator;
use kiln_service_kit::body::BodyLimit;
use kiln_service_kit::error::ApiError;
use kiln_service_kit::health;
use kiln_store::{SealKey, Store, StoreOptions};
use tokio_util::sync::CancellationToken;

use crate::config::ApiConfig;
use crate::downstream::{self, DownstreamTrigger};
use crate::routes;
use crate::scheduler::Scheduler;

/// Why the service could not start.
pub type BuildError = kiln_service_kit::StartError;

/// What every handler shares.
#[derive(Clone)]
pub(crate) struct AppState {
    pub(crate) store: Store,
    pub(crate) storage_root: PathBuf,
    /// Seals secret values before they are stored (`secrets.key`).
    pub(crate) seal_key: Option<Arc<SealKey>>,
}

pub struct Application {
    server: Server,
    addr: SocketAddr,
    scheduler: Scheduler,
    downstream: DownstreamTrigger,
    /// The store the queue-timeout and storage-orphan loops use.
    background: Store,
    notifier: crate::notify::Notifier,
    /// Where the storage orphans' folders are removed from.
    storage_root: PathBuf,
    retention_sweep: Duration,
}

impl Application {
    pub async fn build(config: ApiConfig) -> Result<Self, BuildError> {
        config.validate()?;
        let mut opts = StoreOptions::new(&config.common.redis.url);
        opts.pool_size = config.common.redis.pool_size;
        let store = Store::new(&opts)?;
        health::warn_about_redis(&store).await;
        let scheduler_store = store.clone();
        let background_store = store.clone();
        let downstream = DownstreamTrigger::new(
            store.clone(),
            Store::blocking(&config.common.redis.url, downstream::BLOCK)?,
        );
        let storage_root = config.common.storage.root.clone();
        let seal_key = config.common.seal_key()?.map(Arc::new);
        let notifier =
            crate::notify::Notifier::new(store.clone(), seal_key.clone(), config.public_url())
                .map_err(|e| BuildError::Dependency(format!("cannot make the HTTP client: {e}")))?;
        let (listener, addr) = kiln_service_kit::server::bind(&config.common.http)?;
        let auth = Authenticator::new(&config.common.auth);
        let max_body = config.common.http.max_body_bytes;
        let prometheus = health::prometheus();
        let served_root = storage_root.clone();
        let mut server = HttpServer::new(move || {
            let state = AppState {
                store: store.for_this_thread(),
                storage_root: served_root.clone(),
                seal_key: seal_key.clone(),
            };
            App::new()
                .app_data(web::Data::new(state))
                .app_data(web::Data::new(auth.clone()))
                .app_data(web::Data::new(prometheus.clone()))
                .app_data(BodyLimit(max_body))
                .app_data(
                    web::PathConfig::default()
                        .error_handler(|e, _| ApiError::bad_request("path", e.to_string()).into()),
                )
                .wrap(middleware::from_fn(routes::count_requests))
                .route("/healthz", web::get().to(health::healthz))
                .route("/readyz", web::get().to(routes::readyz))
                .route("/metrics", web::get().to(routes::metrics))
                .service(web::scope(routes::API_PREFIX).configure(routes::register))
                .default_service(web::to(routes::unrouted))
        })
        .listen(listener)
        .map_err(|e| BuildError::bind(addr, e))?
        .disable_signals()
        .shutdown_timeout(10);
        if config.api.workers > 0 {
            server = server.workers(config.api.workers);
        }
        Ok(Self {
            server: server.run(),
            addr,
            scheduler: Scheduler::new(scheduler_store),
            downstream,
            background: background_store,
            notifier,
            storage_root,
            retention_sweep: config.retention_sweep(),
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Serves, queues scheduled and downstream builds, sends notifications, cancels builds past their queue
    /// timeout, sweeps retention and removes the folders retention left behind, until `shutdown` is cancelled, then stops gracefully (in-flight requests
    /// finish, bounded by the shutdown timeout).
    pub async fn run_until_stopped(self, shutdown: CancellationToken) -> std::io::Result<()> {
        tokio::spawn(self.scheduler.run(shutdown.clone()));
        tokio::spawn(self.downstream.run(shutdown.clone()));
        tokio::spawn(self.notifier.run(shutdown.clone()));
        tokio::spawn(crate::expiry::run(
            self.background.clone(),
            shutdown.clone(),
        ));
        tokio::spawn(crate::retention::run(
            self.background.clone(),
            self.storage_root.clone(),
            self.retention_sweep,
            shutdown.clone(),
        ));
        tokio::spawn(crate::orphans::run(
            self.background,
            self.storage_root,
            shutdown.clone(),
        ));
        let handle = self.server.handle();
        tokio::spawn(async move {
            shutdown.cancelled().await;
            handle.stop(true).await;
        });
        self.server.await
    }
}
