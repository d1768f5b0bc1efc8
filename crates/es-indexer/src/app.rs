//! Building and running the indexer (`/healthz`, `/readyz` when the cluster is reachable,
//! `/metrics`), and the one-shot backfill.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use actix_web::{dev::Server, web, App, HttpResponse, HttpServer};
use kiln_model::{BuildNumber, BuildRef, Name};
use kiln_service_kit::{error, health};
use kiln_store::{Store, StoreOptions};
use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::client::Es;
use crate::config::IndexerConfig;
use crate::indexer::{Indexer, CONSUMER};

/// Why the service could not start.
pub type BuildError = kiln_service_kit::StartError;

struct State {
    store: Store,
    es: Arc<Es>,
    ready: Arc<AtomicBool>,
}

pub struct Application {
    server: Server,
    addr: SocketAddr,
    indexer: Indexer,
}

fn consumer() -> Name {
    Name::parse(CONSUMER).expect("a valid consumer name")
}

impl Application {
    pub async fn build(config: IndexerConfig) -> Result<Self, BuildError> {
        let settings = config.settings()?;
        let mut opts = StoreOptions::new(&config.common.redis.url);
        opts.pool_size = config.common.redis.pool_size;
        let store = Store::new(&opts)?;
        health::warn_about_redis(&store).await;
        // From now on every finished build is kept for us, even while we are down.
        store.register_consumer(&consumer()).await?;
        let es = Arc::new(Es::new(&settings).map_err(BuildError::Dependency)?);
        let ready = Arc::new(AtomicBool::new(false));
        let state = web::Data::new(State {
            store: store.clone(),
            es: es.clone(),
            ready: ready.clone(),
        });
        let (listener, addr) = kiln_service_kit::server::bind(&config.common.http)?;
        let server = HttpServer::new(move || {
            App::new()
                .app_data(state.clone())
                .configure(health::configure)
                .route("/healthz", web::get().to(health::healthz))
                .route("/readyz", web::get().to(readyz))
                .default_service(web::to(|req| error::unrouted_service(req, &[])))
        })
        .listen(listener)
        .map_err(|e| BuildError::bind(addr, e))?
        .workers(1)
        .disable_signals()
        .shutdown_timeout(5)
        .run();
        Ok(Self {
            server,
            addr,
            indexer: Indexer {
                store,
                es,
                settings,
                consumer: consumer(),
                ready,
            },
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub async fn run_until_stopped(self, shutdown: CancellationToken) -> std::io::Result<()> {
        let handle = self.server.handle();
        let loop_stop = shutdown.clone();
        let indexer = tokio::spawn(self.indexer.run(loop_stop));
        let stopper = tokio::spawn(async move {
            shutdown.cancelled().await;
            handle.stop(true).await;
        });
        let r = self.server.await;
        let _ = indexer.await;
        stopper.abort();
        r
    }
}

/// Ready when Redis answers, the cluster answers, and the template is installed.
async fn readyz(state: web::Data<State>) -> HttpResponse {
    let redis = state.store.health().await;
    let cluster = state.es.ping().await;
    let ready = redis.reachable && cluster && state.ready.load(Ordering::Relaxed);
    let backlog = state.store.backlog(&consumer()).await.ok();
    let body =
        json!({"ready": ready, "redis": redis, "cluster_reachable": cluster, "backlog": backlog});
    if ready {
        HttpResponse::Ok().json(body)
    } else {
        HttpResponse::ServiceUnavailable().json(body)
    }
}

/// Queues every finished build still in Redis for indexing (idempotent: documents are
/// indexed under their build key). Returns how many were queued; a running indexer, or
/// this one when started, indexes them.
pub async fn backfill(config: IndexerConfig) -> Result<usize, BuildError> {
    config.settings()?;
    let store = Store::new(&StoreOptions::new(&config.common.redis.url))?;
    store.register_consumer(&consumer()).await?;
    let mut keys = Vec::new();
    for (job, _) in store.list_jobs(None).await? {
        for n in store.recent_numbers(&job).await? {
            keys.push(BuildRef::new(job.clone(), BuildNumber(n)).key());
        }
    }
    let mut queued = 0;
    for chunk in keys.chunks(500) {
        let docs = store.get_builds(chunk).await?;
        let finished: Vec<String> = docs
            .iter()
            .filter(|d| d.status.is_final())
            .map(|d| d.build_ref().key())
            .collect();
        queued += finished.len();
        store.push_finished(&consumer(), &finished).await?;
    }
    Ok(queued)
}
