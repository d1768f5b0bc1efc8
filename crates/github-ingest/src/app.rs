//! Building and running github-ingest: the webhook server, the status reporter, the
//! reconcile scan and the cleanup task, stopped together.

use std::net::SocketAddr;
use std::path::PathBuf;

use actix_web::{dev::Server, web, App, HttpRequest, HttpResponse, HttpServer};
use kiln_model::Name;
use kiln_service_kit::{error, health};
use kiln_store::{Store, StoreOptions};
use tokio_util::sync::CancellationToken;

use crate::config::{IngestConfig, Settings};
use crate::reconcile::Reconciler;
use crate::reporter::Reporter;

/// Why the service could not start.
pub type BuildError = kiln_service_kit::StartError;

#[derive(Clone)]
pub(crate) struct State {
    pub(crate) store: Store,
    pub(crate) settings: Settings,
    /// The reporter's consumer name when commit statuses are posted.
    pub(crate) reporter: Option<Name>,
}

pub struct Application {
    server: Server,
    addr: SocketAddr,
    store: Store,
    settings: Settings,
    storage_root: PathBuf,
    reporter: Option<Reporter>,
    reconciler: Option<Reconciler>,
}

impl Application {
    pub async fn build(config: IngestConfig) -> Result<Self, BuildError> {
        let settings = config.settings()?;
        let mut opts = StoreOptions::new(&config.common.redis.url);
        opts.pool_size = config.common.redis.pool_size;
        opts.response_timeout = settings.redis_timeout;
        let store = Store::new(&opts)?;
        health::warn_about_redis(&store).await;
        let github = crate::client::client(&settings).map_err(BuildError::Dependency)?;
        let reporter = github
            .clone()
            .map(|g| Reporter::new(store.clone(), &settings, g));
        let reconciler = match (github, settings.reconcile_interval) {
            (Some(g), Some(every)) => Some(Reconciler::new(
                store.clone(),
                &settings,
                g,
                reporter.as_ref().map(|r| r.consumer().clone()),
                every,
            )),
            _ => None,
        };
        match &reporter {
            Some(r) => store.register_consumer(r.consumer()).await?,
            None => {
                tracing::warn!("github.token is not set: commit statuses are not posted and missed webhooks are not reconciled");
                store
                    .unregister_consumer(
                        &Name::parse(crate::reporter::CONSUMER).expect("valid name"),
                    )
                    .await?;
            }
        }
        let state = State {
            store: store.clone(),
            settings: settings.clone(),
            reporter: reporter.as_ref().map(|r| r.consumer().clone()),
        };
        let (listener, addr) = kiln_service_kit::server::bind(&config.common.http)?;
        let path = settings.webhook_path.clone();
        let server = HttpServer::new(move || {
            App::new()
                .app_data(web::Data::new(State {
                    store: state.store.for_this_thread(),
                    ..state.clone()
                }))
                .configure(health::configure)
                .route("/healthz", web::get().to(health::healthz))
                .route("/readyz", web::get().to(crate::webhook::readyz))
                .route(&path, web::post().to(crate::webhook::receive))
                .default_service(web::to({
                    let path = path.clone();
                    move |req: HttpRequest| {
                        let webhook = [("POST", path.as_str())];
                        let routes = health::ROUTES.iter().copied().chain(webhook);
                        let e = error::unrouted(&req, req.path(), routes);
                        async move { Err::<HttpResponse, _>(e) }
                    }
                }))
        })
        .listen(listener)
        .map_err(|e| BuildError::bind(addr, e))?
        .disable_signals()
        .shutdown_timeout(10)
        .run();
        Ok(Self {
            server,
            addr,
            store,
            settings,
            storage_root: config.common.storage.root.clone(),
            reporter,
            reconciler,
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub async fn run_until_stopped(self, shutdown: CancellationToken) -> std::io::Result<()> {
        let handle = self.server.handle();
        let tasks = CancellationToken::new();
        let mut background = Vec::new();
        if let Some(r) = self.reporter {
            background.push(tokio::spawn(r.run(tasks.clone())));
        }
        if let Some(r) = self.reconciler {
            background.push(tokio::spawn(r.run(tasks.clone())));
        }
        background.push(tokio::spawn(crate::cleanup::cleanup_loop(
            self.store.clone(),
            self.settings.clone(),
            self.storage_root.clone(),
            tasks.clone(),
        )));
        let stopper = tokio::spawn(async move {
            shutdown.cancelled().await;
            handle.stop(true).await;
        });
        let result = self.server.await;
        tasks.cancel();
        for t in background {
            let _ = t.await;
        }
        stopper.abort();
        result
    }
}
