//! Reading a matrix's builds together, and deciding which of its cells' ends stands for the
//! whole matrix's (see `kiln_model::matrix`).

use deadpool_redis::redis;
use kiln_model::{keys, BuildDocument, BuildNumber, BuildRef, BuildStatus, JobName, MatrixCell};

use crate::builds::CancelOutcome;
use crate::connect::Store;
use crate::error::StoreError;
use crate::tree::parse;

impl Store {
    /// The documents of every build of `cell`'s matrix, in cell order; `None` for one that
    /// retention or a deletion took away.
    pub async fn matrix_group(
        &self,
        job: &JobName,
        cell: &MatrixCell,
    ) -> Result<Vec<Option<BuildDocument>>, StoreError> {
        let keys: Vec<String> = cell
            .numbers()
            .map(|n| BuildRef::new(job.clone(), n).key())
            .collect();
        let raw = self.get_raw(&keys).await?;
        keys.iter()
            .zip(raw)
            .map(|(key, raw)| raw.map(|r| parse(key, &r)).transpose())
            .collect()
    }

    /// Cancels every build of `cell`'s matrix still queued or running, as `by` (a person, or
    /// the matrix's `fail_fast`); returns what each cancel did, in cell order. Queued builds
    /// go first: a running one's worker, once it stops, must not find another cell of the
    /// matrix still queued and start it. Builds that end meanwhile are passed over.
    pub async fn cancel_matrix(
        &self,
        job: &JobName,
        cell: &MatrixCell,
        by: &str,
    ) -> Result<Vec<(BuildNumber, CancelOutcome)>, StoreError> {
        let group = self.matrix_group(job, cell).await?;
        let mut open: Vec<&BuildDocument> = group
            .iter()
            .flatten()
            .filter(|d| !d.status.is_final())
            .collect();
        open.sort_by_key(|d| (d.status == BuildStatus::Running, d.number));
        let mut done = Vec::new();
        for d in open {
            match self.cancel(&d.build_ref(), by).await {
                Ok(outcome) => done.push((d.number, outcome)),
                Err(StoreError::Conflict(_) | StoreError::NotFound(_)) => {}
                Err(e) => return Err(e),
            }
        }
        done.sort_by_key(|(n, _)| *n);
        Ok(done)
    }

    /// What follows the end of `doc` (downstream builds, notifications) acts on: `doc`
    /// itself, or for a cell of a matrix the whole matrix's outcome
    /// (`kiln_model::matrix::group_outcome`), `None` while one of its cells has not ended
    /// or when one is gone.
    pub async fn ended_as_a_whole(
        &self,
        doc: BuildDocument,
    ) -> Result<Option<BuildDocument>, StoreError> {
        match &doc.matrix {
            None => Ok(Some(doc)),
            Some(cell) => Ok(kiln_model::matrix::group_outcome(
                &self.matrix_group(&doc.job, cell).await?,
            )),
        }
    }

    /// Records that `entry` (an ended cell's build key) handles the end of the matrix whose
    /// outcome is `outcome` (`keys::matrix_ended`); true for the first entry to ask, and for
    /// that entry again, so a consumer that restarts mid-entry carries on where it stopped.
    pub async fn claim_matrix_end(
        &self,
        outcome: &BuildDocument,
        entry: &str,
        ttl_secs: u64,
    ) -> Result<bool, StoreError> {
        let key = keys::matrix_ended(&outcome.build_ref(), outcome.queued_at.timestamp_millis());
        let mut c = self.conn().await?;
        let before: Option<String> = redis::cmd("SET")
            .arg(&key)
            .arg(entry)
            .arg("NX")
            .arg("GET")
            .arg("EX")
            .arg(ttl_secs)
            .query_async(&mut c)
            .await?;
        Ok(before.is_none_or(|b| b == entry))
    }
}
