//! The worker's `/healthz` (its claim loop makes progress), `/readyz` (Redis answers) and
//! `/metrics`.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use actix_web::{web, HttpResponse};
use serde_json::json;

use crate::state::{now_ms, Worker};

/// Healthy while the claim loop turns: it checks in at least every `claim_block`, or all
/// slots are busy (then it rightly waits). A loop stuck on a dead connection fails this,
/// where a PING on another connection would still pass.
pub(crate) async fn healthz(w: web::Data<Arc<Worker>>) -> HttpResponse {
    let since = now_ms() - w.claim_progress_ms.load(Ordering::Relaxed);
    let limit = (w.settings.claim_block * 3).as_millis() as i64 + 5_000;
    let busy = w.running() >= w.settings.concurrency as usize;
    let draining = w.draining.load(Ordering::Relaxed);
    let body = json!({"claim_loop_idle_ms": since, "running": w.running(), "draining": draining});
    if since <= limit || busy || draining {
        HttpResponse::Ok().json(body)
    } else {
        HttpResponse::ServiceUnavailable().json(body)
    }
}

pub(crate) async fn readyz(w: web::Data<Arc<Worker>>) -> HttpResponse {
    kiln_service_kit::health::redis_readiness(&w.store).await
}
