//! Folders and job definitions: the `jobs` / `folder_<name>` tree and `job_<name>`.

use deadpool_redis::redis::{self, AsyncCommands, RedisError};
use kiln_model::{keys, BuildDocument, Entry, JobDefinition, JobName, Name};

use crate::connect::Store;
use crate::error::{script_code, StoreError};
use crate::scripts;

/// How many times an optimistic (compare-and-set) write is retried when a concurrent
/// writer changed what it read; more than this means heavy contention on one key.
const CAS_ATTEMPTS: usize = 5;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PutOutcome {
    Created,
    Replaced,
}

/// Maps our scripts' error replies (`CODE detail`) onto [`StoreError`]; `None` means the
/// script asked to be retried because what the caller read has changed.
pub(crate) fn script_error(e: RedisError, what: &str) -> Option<StoreError> {
    match script_code(&e) {
        Some(("RETRY", _)) => None,
        Some(("NOTFOUND", _)) => Some(StoreError::NotFound(what.to_owned())),
        Some(("CONFLICT", d)) => Some(StoreError::Conflict(d)),
        Some(("STALE", d)) => Some(StoreError::Stale(d)),
        Some(("NOFOLDER", d)) => Some(StoreError::Invalid {
            field: if d == "parent" { "parent" } else { "folder" }.into(),
            message: "no such folder".into(),
        }),
        _ => Some(StoreError::Redis(e)),
    }
}

pub(crate) fn parse<T: serde::de::DeserializeOwned>(key: &str, raw: &str) -> Result<T, StoreError> {
    serde_json::from_str(raw).map_err(|e| StoreError::corrupt(key, e))
}

impl Store {
    /// The entries of the root (`None`) or of a folder, in insertion order.
    pub async fn list_entries(&self, folder: Option<&Name>) -> Result<Vec<Entry>, StoreError> {
        if let Some(f) = folder {
            if self.folder_parent(f).await?.is_none() {
                return Err(StoreError::NotFound(format!("folder {f}")));
            }
        }
        let mut c = self.conn().await?;
        let raw: Vec<String> = c.lrange(keys::folder_list(folder), 0, -1).await?;
        // Entries are only written by our scripts; one we cannot read is skipped, not fatal.
        Ok(raw.iter().filter_map(|e| e.parse().ok()).collect())
    }

    /// `None` when the folder does not exist, `Some(None)` when it sits at the root.
    pub async fn folder_parent(&self, name: &Name) -> Result<Option<Option<Name>>, StoreError> {
        let mut c = self.conn().await?;
        let parent: Option<String> = c.hget(keys::FOLDER_PARENTS, name.as_str()).await?;
        Ok(parent.map(|p| Name::parse(&p).ok()))
    }

    /// The folders from the root down to `folder`, for storage paths.
    pub async fn folder_chain(&self, folder: Option<&Name>) -> Result<Vec<Name>, StoreError> {
        let mut chain = Vec::new();
        let mut next = folder.cloned();
        while let Some(f) = next {
            if chain.len() > 64 || chain.contains(&f) {
                break;
            }
            next = self
                .folder_parent(&f)
                .await?
                .ok_or_else(|| StoreError::NotFound(format!("folder {f}")))?;
            chain.push(f);
        }
        chain.reverse();
        Ok(chain)
    }

    pub async fn create_folder(
        &self,
        name: &Name,
        parent: Option<&Name>,
    ) -> Result<(), StoreError> {
        let mut c = self.conn().await?;
        let job = JobName::from_name(name);
        scripts::CREATE_FOLDER
            .key(keys::FOLDER_PARENTS)
            .key(keys::folder_list(parent))
            .key(keys::job(&job))
            .arg(name.as_str())
            .arg(parent.map_or("", Name::as_str))
            .arg(Entry::Folder(name.clone()).to_string())
            .invoke_async::<i64>(&mut c)
            .await
            .map(|_| ())
            .map_err(|e| {
                script_error(e, "folder").unwrap_or_else(|| StoreError::Conflict("retry".into()))
            })
    }

    /// Deletes an empty folder; a folder that still holds entries is a conflict.
    pub async fn delete_folder(&self, name: &Name) -> Result<(), StoreError> {
        for _ in 0..CAS_ATTEMPTS {
            let parent = self
                .folder_parent(name)
                .await?
                .ok_or_else(|| StoreError::NotFound(format!("folder {name}")))?;
            let mut c = self.conn().await?;
            let r = scripts::DELETE_FOLDER
                .key(keys::FOLDER_PARENTS)
                .key(keys::folder(name))
                .key(keys::folder_list(parent.as_ref()))
                .key(keys::folder_secrets(name))
                .arg(name.as_str())
                .arg(Entry::Folder(name.clone()).to_string())
                .arg(parent.as_ref().map_or("", Name::as_str))
                .invoke_async::<i64>(&mut c)
                .await;
            match r {
                Ok(_) => return Ok(()),
                Err(e) => match script_error(e, &format!("folder {name}")) {
                    Some(err) => return Err(err),
                    None => continue,
                },
            }
        }
        Err(StoreError::Conflict(format!(
            "folder {name} is changing; try again"
        )))
    }

    /// The stored definition and its exact JSON (used as the expected value of
    /// compare-and-set scripts).
    pub async fn job_raw(
        &self,
        name: &JobName,
    ) -> Result<Option<(String, JobDefinition)>, StoreError> {
        let raw = self.job_json(name).await?;
        raw.map(|r| parse(&keys::job(name), &r).map(|d| (r, d)))
            .transpose()
    }

    /// The stored definition's JSON, unparsed.
    pub(crate) async fn job_json(&self, name: &JobName) -> Result<Option<String>, StoreError> {
        let mut c = self.conn().await?;
        Ok(c.get(keys::job(name)).await?)
    }

    pub async fn get_job(&self, name: &JobName) -> Result<Option<JobDefinition>, StoreError> {
        Ok(self.job_raw(name).await?.map(|(_, d)| d))
    }

    /// Every job with a `schedule`, with when that schedule was set (seconds since the
    /// epoch) and its definition (`None` if it went meanwhile or cannot be read, so one bad
    /// definition holds up no other job): two round trips however many jobs there are.
    pub async fn scheduled_jobs(
        &self,
    ) -> Result<Vec<(JobName, i64, Option<JobDefinition>)>, StoreError> {
        let mut c = self.conn().await?;
        let since: Vec<(String, i64)> = c.hgetall(keys::SCHEDULES).await?;
        let jobs: Vec<(JobName, i64)> = since
            .into_iter()
            .filter_map(|(n, t)| Some((JobName::parse(&n).ok()?, t)))
            .collect();
        if jobs.is_empty() {
            return Ok(Vec::new());
        }
        let keys: Vec<String> = jobs.iter().map(|(n, _)| keys::job(n)).collect();
        let raws: Vec<Option<String>> = redis::cmd("MGET").arg(&keys).query_async(&mut c).await?;
        Ok(jobs
            .into_iter()
            .zip(keys.iter().zip(raws))
            .map(|((name, t), (key, raw))| {
                let def = raw.and_then(|r| parse(key, &r).ok());
                (name, t, def)
            })
            .collect())
    }

    /// Creates or replaces a definition; its folder entry is written (or moved) in the same
    /// atomic step.
    pub async fn put_job(
        &self,
        name: &JobName,
        def: &JobDefinition,
        by: &str,
    ) -> Result<PutOutcome, StoreError> {
        let json = serde_json::to_string(def).map_err(|e| StoreError::corrupt("job", e))?;
        let revision = format!(
            "\"by\":{},\"at\":\"{}\",\"definition\":{json}}}",
            serde_json::Value::from(by),
            crate::builds::now_rfc3339()
        );
        let entry = Entry::Job(name.clone()).to_string();
        for _ in 0..CAS_ATTEMPTS {
            let old = self.job_raw(name).await?;
            let old_folder = old.as_ref().and_then(|(_, d)| d.folder.clone());
            // Only enabled jobs are scheduled; one enabled again starts afresh, owing nothing
            // for the minutes it spent disabled.
            let scheduled = |d: &JobDefinition| {
                let s = d.schedule.clone().filter(|_| !d.disabled)?;
                Some((s, d.schedule_timezone.clone()))
            };
            let schedule = match (scheduled(def), old.as_ref().and_then(|(_, d)| scheduled(d))) {
                (None, _) => "clear",
                (Some(new), Some(old)) if new == old => "keep",
                (Some(_), _) => "set",
            };
            let group = def.slot_group();
            let (group_slots, group_waiting) = keys::slot_keys(name, group);
            let mut c = self.conn().await?;
            let r = scripts::PUT_JOB
                .key(keys::job(name))
                .key(keys::FOLDER_PARENTS)
                .key(keys::folder_list(old_folder.as_ref()))
                .key(keys::folder_list(def.folder.as_ref()))
                .key(keys::SCHEDULES)
                .key(keys::job_slots(name))
                .key(keys::job_waiting(name))
                .key(keys::job_recent(name))
                .key(group_slots)
                .key(group_waiting)
                .key(keys::job_revisions(name))
                .arg(&json)
                .arg(&entry)
                .arg(name.as_str())
                .arg(old.as_ref().map_or("", |(r, _)| r.as_str()))
                .arg(def.folder.as_ref().map_or("", Name::as_str))
                .arg(schedule)
                .arg(chrono::Utc::now().timestamp())
                .arg(def.concurrency.map(|c| c.to_string()).unwrap_or_default())
                .arg(keys::build_prefix(name))
                .arg(keys::prefix::QUEUE)
                .arg(keys::prefix::QUEUE_MARKER)
                .arg(group.map_or("", Name::as_str))
                .arg(keys::prefix::JOB)
                .arg(&revision)
                .arg(keys::JOB_REVISIONS_KEPT)
                .invoke_async::<i64>(&mut c)
                .await;
            match r {
                Ok(1) => return Ok(PutOutcome::Created),
                Ok(_) => return Ok(PutOutcome::Replaced),
                Err(e) => match script_error(e, &format!("job {name}")) {
                    Some(err) => return Err(err),
                    None => continue,
                },
            }
        }
        Err(StoreError::Conflict(format!(
            "job {name} is changing; try again"
        )))
    }

    /// The job's recorded definitions (`keys::job_revisions`), newest first, at most
    /// `limit`: `{"revision", "by", "at", "definition"}` each.
    pub async fn job_revisions(
        &self,
        name: &JobName,
        limit: usize,
    ) -> Result<Vec<serde_json::Value>, StoreError> {
        let key = keys::job_revisions(name);
        let mut c = self.conn().await?;
        let raw: Vec<String> = c.lrange(&key, 0, limit.saturating_sub(1) as isize).await?;
        raw.iter().map(|r| parse(&key, r)).collect()
    }

    /// Every job in the tree, walking folders from the root, or the jobs directly in
    /// `folder`.
    pub async fn list_jobs(
        &self,
        folder: Option<&Name>,
    ) -> Result<Vec<(JobName, JobDefinition)>, StoreError> {
        let mut names = Vec::new();
        let mut pending = vec![folder.cloned()];
        while let Some(f) = pending.pop() {
            for e in self.list_entries(f.as_ref()).await? {
                match e {
                    Entry::Job(j) => names.push(j),
                    Entry::Folder(sub) if folder.is_none() => pending.push(Some(sub)),
                    Entry::Folder(_) => {}
                }
            }
        }
        if names.is_empty() {
            return Ok(Vec::new());
        }
        let keys: Vec<String> = names.iter().map(keys::job).collect();
        let mut c = self.conn().await?;
        let raws: Vec<Option<String>> = redis::cmd("MGET").arg(&keys).query_async(&mut c).await?;
        let mut out = Vec::with_capacity(names.len());
        for ((name, key), raw) in names.into_iter().zip(&keys).zip(raws) {
            if let Some(r) = raw {
                out.push((name, parse(key, &r)?));
            }
        }
        Ok(out)
    }

    /// Deletes a job as [`Store::delete_job`] does, then its files: its builds' folders and
    /// the job's emptied folder under `storage_root` (in the blocking pool). The api and
    /// github-ingest's cleanup both delete jobs this way. Files that cannot be removed are
    /// logged, not returned: Redis already forgot the builds, and a leftover folder only
    /// costs disk.
    pub async fn delete_job_with_files(
        &self,
        name: &JobName,
        storage_root: &std::path::Path,
    ) -> Result<(), StoreError> {
        let docs = self.delete_job(name).await?;
        let root = storage_root.to_owned();
        let failed = tokio::task::spawn_blocking(move || {
            kiln_model::storage::remove_deleted_builds(
                &root,
                docs.iter().map(|d| d.storage_path.as_str()),
            )
        })
        .await
        .unwrap_or_default();
        for (path, e) in failed {
            tracing::warn!(job = %name, path = %path.display(), error = %e, "cannot remove a deleted build's folder");
        }
        Ok(())
    }

    /// Deletes a job, its entry, counter and build documents in one step. Returns the
    /// deleted build documents so the caller can remove their files.
    pub async fn delete_job(&self, name: &JobName) -> Result<Vec<BuildDocument>, StoreError> {
        for _ in 0..CAS_ATTEMPTS {
            let (raw, def) = self
                .job_raw(name)
                .await?
                .ok_or_else(|| StoreError::NotFound(format!("job {name}")))?;
            let mut c = self.conn().await?;
            let r = scripts::DELETE_JOB
                .key(keys::job(name))
                .key(keys::job_recent(name))
                .key(keys::folder_list(def.folder.as_ref()))
                .key(keys::BUILD_COUNTERS)
                .key(keys::LEASES)
                .key(keys::LEASE_OWNERS)
                .key(keys::queue(&def.queue))
                .key(keys::running(&def.queue))
                .key(keys::SCHEDULES)
                .key(keys::job_slots(name))
                .key(keys::job_waiting(name))
                .key(keys::job_revisions(name))
                .arg(&raw)
                .arg(Entry::Job(name.clone()).to_string())
                .arg(name.as_str())
                .arg(keys::build_prefix(name))
                .arg(keys::CANCEL_CHANNEL)
                .arg(keys::prefix::GROUP_SLOTS)
                .arg(keys::prefix::GROUP_WAITING)
                .arg(keys::prefix::JOB)
                .arg(keys::prefix::QUEUE)
                .arg(keys::prefix::QUEUE_MARKER)
                .invoke_async::<Vec<String>>(&mut c)
                .await;
            match r {
                Ok(docs) => {
                    return Ok(docs
                        .iter()
                        .filter_map(|d| serde_json::from_str(d).ok())
                        .collect())
                }
                Err(e) => match script_error(e, &format!("job {name}")) {
                    Some(err) => return Err(err),
                    None => continue,
                },
            }
        }
        Err(StoreError::Conflict(format!(
            "job {name} is changing; try again"
        )))
    }
}
