//! Building and running a worker: set-up in `build` (config checked, pools made, health
//! port bound), then `run_until_stopped` runs the claim loop, heartbeat, reaper and cancel
//! listener until shutdown, drains, and hands back what is left.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use actix_web::{dev::Server, web, App, HttpServer};
use chrono::Utc;
use kiln_model::Name;
use kiln_service_kit::{error, health};
use kiln_store::{Store, StoreOptions};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::WorkerConfig;
use crate::spares::Spares;
use crate::state::{now_ms, StopReason, Worker};
use crate::workspace::Workspaces;

/// Why the service could not start.
pub type BuildError = kiln_service_kit::StartError;

pub struct Application {
    worker: Arc<Worker>,
    redis_url: String,
    server: Server,
    addr: SocketAddr,
}

impl Application {
    pub async fn build(config: WorkerConfig) -> Result<Self, BuildError> {
        let settings = config.settings()?;
        let mut opts = StoreOptions::new(&config.common.redis.url);
        opts.pool_size =
            (settings.concurrency as usize + 4).min(config.common.redis.pool_size.max(4));
        let store = Store::new(&opts)?;
        let blocking = Store::blocking(&config.common.redis.url, settings.claim_block)?;
        health::warn_about_redis(&store).await;
        let slots = Arc::new(Semaphore::new(settings.concurrency as usize));
        let settings_max_builds = settings.max_builds.unwrap_or(0);
        let spares = Arc::new(Spares::new(
            &settings.storage_root,
            settings.id.as_str(),
            2 * settings.concurrency as usize,
        ));
        clear_spares(&spares).await;
        let worker = Arc::new(Worker {
            store,
            blocking,
            workspaces: Workspaces::new(settings.workspace_root.clone(), settings.id.as_str()),
            settings,
            pruned: Default::default(),
            spares,
            active: Mutex::new(HashMap::new()),
            slots,
            started_at: Utc::now(),
            draining: AtomicBool::new(false),
            paused: AtomicBool::new(false),
            claim_progress_ms: AtomicI64::new(now_ms()),
            redis_failed_ms: AtomicI64::new(0),
            renewed_ms: AtomicI64::new(now_ms()),
            budget: AtomicU64::new(settings_max_builds),
            last_build_ms: AtomicI64::new(now_ms()),
        });
        let (listener, addr) = kiln_service_kit::server::bind(&config.common.http)?;
        let data = web::Data::new(worker.clone());
        let server = HttpServer::new(move || {
            App::new()
                .app_data(data.clone())
                .configure(health::configure)
                .route("/healthz", web::get().to(crate::http::healthz))
                .route("/readyz", web::get().to(crate::http::readyz))
                .default_service(web::to(|req| error::unrouted_service(req, &[])))
        })
        .listen(listener)
        .map_err(|e| BuildError::bind(addr, e))?
        .workers(1)
        .disable_signals()
        .shutdown_timeout(2)
        .run();
        Ok(Self {
            worker,
            redis_url: config.common.redis.url.clone(),
            server,
            addr,
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn id(&self) -> &Name {
        &self.worker.settings.id
    }

    /// Runs until `shutdown`; then stops claiming, lets running builds finish within the
    /// grace period, hands the rest back to their queue, and deregisters the node.
    pub async fn run_until_stopped(self, shutdown: CancellationToken) -> std::io::Result<()> {
        let w = self.worker;
        let background = CancellationToken::new();
        let http = self.server.handle();
        let server = tokio::spawn(self.server);
        let tasks = [
            tokio::spawn(crate::heartbeat::heartbeat_loop(
                w.clone(),
                background.clone(),
            )),
            tokio::spawn(crate::reaper::reaper_loop(w.clone(), background.clone())),
            tokio::spawn(crate::heartbeat::cancel_listener(
                w.clone(),
                self.redis_url,
                background.clone(),
            )),
        ];
        let builds = TaskTracker::new();
        crate::claim::claim_loop(w.clone(), shutdown.clone(), builds.clone()).await;

        w.draining.store(true, Ordering::Relaxed);
        builds.close();
        if !shutdown.is_cancelled() {
            // Retired (`max_builds`, `idle_exit_secs`): its builds run to their end, unless
            // a shutdown comes first and the grace period below applies.
            tokio::select! {
                _ = builds.wait() => {}
                _ = shutdown.cancelled() => {}
            }
        }
        tracing::info!(
            running = w.running(),
            grace_secs = w.settings.grace.as_secs(),
            "draining"
        );
        if tokio::time::timeout(w.settings.grace, builds.wait())
            .await
            .is_err()
        {
            for a in w.all() {
                a.stop(StopReason::Shutdown);
            }
            builds.wait().await;
        }
        background.cancel();
        for t in tasks {
            let _ = t.await;
        }
        clear_spares(&w.spares).await;
        let node = crate::heartbeat::node_info(&w);
        if let Err(e) = w.store.remove_node(&node).await {
            tracing::warn!(error = %e, "cannot deregister the node; its key expires by itself");
        }
        http.stop(true).await;
        let _ = server.await;
        tracing::info!("worker stopped");
        Ok(())
    }
}

/// Spare build folders are this run's only (a worker that dies leaves its own behind until
/// a worker with its id starts again); failing to remove them costs disk, not correctness.
async fn clear_spares(spares: &Arc<Spares>) {
    let s = spares.clone();
    match tokio::task::spawn_blocking(move || s.clear()).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::warn!(error = %e, "cannot remove spare build folders"),
        Err(e) => tracing::warn!(error = %e, "cannot remove spare build folders"),
    }
}
