//! Job definitions as this process last read them, so a trigger need not read the
//! definition before its script runs: one round trip fewer between a push and its build.
//!
//! An entry is never trusted for an answer: the trigger script compares the definition it
//! is given with the stored one and refuses a stale one, and any refusal made from a cached
//! entry (disabled, bad parameters...) is asked again of Redis before it reaches the user.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use kiln_model::{JobDefinition, JobName};

/// Most definitions kept; past that the cache starts over.
const MAX_ENTRIES: usize = 10_000;

/// A definition and its exact stored JSON.
pub(crate) type CachedJob = Arc<(String, JobDefinition)>;

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

    pub(crate) fn forget(&self, job: &JobName) {
        if let Ok(mut m) = self.0.lock() {
            m.remove(job);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn def() -> CachedJob {
        let raw = r#"{"steps":[{"name":"s","run":"true"}]}"#.to_owned();
        let d: JobDefinition = serde_json::from_str(&raw).expect("definition");
        Arc::new((raw, d))
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
}
