//! Job definitions as this process last read them, so a trigger need not read the
//! definition before its script runs (one round trip fewer between a push and its build),
//! and a worker need not parse the same definition again for every build it claims.
//!
//! An entry is never trusted for an answer: the trigger script compares the definition it
//! is given with the stored one and refuses a stale one, and any refusal made from a cached
//! entry (disabled, bad parameters...) is asked again of Redis before it reaches the user;
//! a claim reuses an entry only when its JSON is the very one the claim read.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use kiln_model::{keys, JobDefinition, JobName};

use crate::error::StoreError;
use crate::tree::parse;

/// Most definitions kept; past that the cache starts over.
const MAX_ENTRIES: usize = 10_000;

/// A job's definition with its exact stored JSON, shared between this process's cache
/// and whoever uses it (a trigger, a claimed build).
#[derive(Debug)]
pub struct StoredJob {
    /// The JSON as stored in `job_<name>`: what a later read is compared with.
    pub(crate) raw: String,
    pub def: JobDefinition,
}

pub(crate) type CachedJob = Arc<StoredJob>;

#[derive(Default)]
pub(crate) struct JobCache(Mutex<HashMap<JobName, CachedJob>>);

impl JobCache {
    pub(crate) fn get(&self, job: &JobName) -> Option<CachedJob> {
        self.0.lock().ok()?.get(job).cloned()
    }

    pub(crate) fn put(&self, job: &JobName, entry: CachedJob) {
        if let Ok(mut m) = self.0.lock() {
            if m.len() >= MAX_ENTRIES && !m.contains_key(job) {
                m.clear();
            }
            m.insert(job.clone(), entry);
        }
    }

    /// The definition stored as `raw`: the cached one when its JSON is the same (a memory
    /// comparison instead of a parse), else parsed and cached.
    pub(crate) fn resolve(&self, job: &JobName, raw: String) -> Result<CachedJob, StoreError> {
        if let Some(hit) = self.get(job).filter(|c| c.raw == raw) {
            return Ok(hit);
        }
        let def = parse(&keys::job(job), &raw)?;
        let entry = Arc::new(StoredJob { raw, def });
        self.put(job, entry.clone());
        Ok(entry)
    }

    pub(crate) fn forget(&self, job: &JobName) {
        if let Ok(mut m) = self.0.lock() {
            m.remove(job);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RAW: &str = r#"{"steps":[{"name":"s","run":"true"}]}"#;

    fn def() -> CachedJob {
        let def: JobDefinition = serde_json::from_str(RAW).expect("definition");
        Arc::new(StoredJob {
            raw: RAW.to_owned(),
            def,
        })
    }

    #[test]
    fn entries_are_per_job_and_can_be_forgotten() {
        let c = JobCache::default();
        let app = JobName::parse("app").expect("name");
        let lib = JobName::parse("lib").expect("name");
        c.put(&app, def());
        assert!(c.get(&app).is_some());
        assert!(c.get(&lib).is_none());
        c.forget(&app);
        assert!(c.get(&app).is_none());
    }

    #[test]
    fn a_definition_is_parsed_once_while_its_json_stays_the_same() {
        let c = JobCache::default();
        let app = JobName::parse("app").expect("name");
        let first = c.resolve(&app, RAW.to_owned()).expect("parsed");
        let again = c.resolve(&app, RAW.to_owned()).expect("cached");
        assert!(
            Arc::ptr_eq(&first, &again),
            "the same JSON reuses the entry"
        );
        let changed = RAW.replace("true", "false");
        let new = c.resolve(&app, changed).expect("parsed");
        assert!(!Arc::ptr_eq(&first, &new), "changed JSON is parsed again");
        assert_eq!(new.def.steps[0].run, "false");
        assert!(
            c.resolve(&app, "{".to_owned()).is_err(),
            "corrupt JSON is an error"
        );
    }
}
