//! `/healthz` (the process is up), `/readyz` helpers (its dependencies answer) and the
//! Prometheus `/metrics` endpoint, shared by every service.

use std::sync::OnceLock;

use actix_web::{web, HttpResponse};
use kiln_store::Store;
pub use metrics_exporter_prometheus::PrometheusHandle;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder};

static PROMETHEUS: OnceLock<PrometheusHandle> = OnceLock::new();

/// Bucket bounds (seconds) of the build histograms (`kiln_build_duration_seconds`,
/// `kiln_build_queue_wait_seconds`): from a `true` step to a two-hour build. Buckets, not
/// the exporter's default summaries, so dashboards can add up every worker's.
const BUILD_BUCKETS: &[f64] = &[
    0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0, 7200.0,
];

/// Installs the process-wide metrics recorder once and returns its handle. Several
/// services started in one test process share it.
pub fn prometheus() -> PrometheusHandle {
    PROMETHEUS
        .get_or_init(|| {
            // Refused only for empty bounds, which `BUILD_BUCKETS` is not.
            let recorder = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Prefix("kiln_build_".into()), BUILD_BUCKETS)
                .unwrap_or_else(|_| PrometheusBuilder::new())
                .build_recorder();
            let handle = recorder.handle();
            // Fails only if another recorder was installed first; metrics then go there.
            let _ = metrics::set_global_recorder(recorder);
            handle
        })
        .clone()
}

pub async fn healthz() -> HttpResponse {
    HttpResponse::Ok().json(serde_json::json!({"status": "ok"}))
}

pub async fn metrics_endpoint(handle: web::Data<PrometheusHandle>) -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4")
        .body(handle.render())
}

/// The readiness answer for a service whose only dependency is Redis: 200 when it
/// answers, 503 otherwise, with the persistence and eviction warnings either way.
pub async fn redis_readiness(store: &Store) -> HttpResponse {
    let h = store.health().await;
    let body = serde_json::json!({"ready": h.reachable, "redis": h});
    if h.reachable {
        HttpResponse::Ok().json(body)
    } else {
        HttpResponse::ServiceUnavailable().json(body)
    }
}

/// Registers `/metrics`. Each service adds its own `/healthz` (this module's [`healthz`]
/// when being up is all it can tell; the worker's checks its claim loop) and `/readyz`:
/// registering a shared `/healthz` here once hid the worker's own, since the first route
/// registered for a path wins.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.app_data(web::Data::new(prometheus()))
        .route("/metrics", web::get().to(metrics_endpoint));
}

/// The routes every service serves with `GET`, for its unknown-route answer
/// ([`crate::error::unrouted`]): `/metrics` from [`configure`], and the `/healthz` and
/// `/readyz` each service registers.
pub const ROUTES: &[crate::error::Route] =
    &[("GET", "/healthz"), ("GET", "/readyz"), ("GET", "/metrics")];

/// Logs the Redis warnings loudly at start-up (evictions and lost persistence lose builds).
pub async fn warn_about_redis(store: &Store) {
    let h = store.health().await;
    for w in &h.warnings {
        tracing::warn!(redis.warning = %w, "Redis is not safe for builds");
    }
}
