//! A matrix's `fail_fast`: the worker that records a cell's failure cancels the matrix's
//! other cells still queued or running (when the definition the cell ran with says so), so
//! a matrix that has failed frees its workers. It runs after the failure is recorded; a
//! worker that dies in between leaves the other cells to run to their end, which costs
//! time, never a result.

use kiln_model::{BuildDocument, BuildStatus, JobDefinition};

use crate::state::Worker;

/// Cancels the rest of `doc`'s matrix when `doc` is a cell that failed, timed out or could
/// not run, and the definition it ran with (`def`) says `fail_fast`.
pub(crate) async fn after_cell(w: &Worker, def: &JobDefinition, doc: &BuildDocument) {
    let Some(cell) = &doc.matrix else { return };
    let failed = matches!(
        doc.status,
        BuildStatus::Failure | BuildStatus::TimedOut | BuildStatus::Error
    );
    if !failed || !def.matrix.as_ref().is_some_and(|m| m.fail_fast) {
        return;
    }
    let by = format!(
        "fail_fast (#{} {} ended {})",
        doc.number,
        cell.label(),
        doc.status
    );
    match w.store.cancel_matrix(&doc.job, cell, &by).await {
        Ok(cancelled) => {
            tracing::info!(build = %doc.build_ref(), cancelled = cancelled.len(), "fail_fast: the matrix's other cells cancelled")
        }
        Err(e) => {
            tracing::warn!(build = %doc.build_ref(), error = %e, "fail_fast: cannot cancel the matrix's other cells")
        }
    }
}
