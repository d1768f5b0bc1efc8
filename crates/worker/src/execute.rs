//! Running a build's steps in an empty workspace: optional git checkout, each step under the
//! configured shell with the job's environment, the build's deadline and its stop signal,
//! then the artifacts copied into file storage.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use chrono::Utc;
use kiln_model::{
    output, BuildDocument, BuildRef, BuildStatus, JobDefinition, Masker, Step, StepResult, Stream,
    Upstream,
};
use kiln_store::StoreError;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::output::LogSink;
use crate::process;
use crate::start::{Progress, StartState};
use crate::state::{Active, StopReason, Worker};

/// After a step's main process ends, how long its output may still drain (from processes
/// that escaped its process group) before the readers are abandoned.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

/// Clones the repository and checks out the build's sha, else the job's ref, else the
/// default branch. A branch ref is looked up on the remote first.
const CHECKOUT: &str = r#"git clone --quiet --no-checkout "$KILN_REPO_URL" .
if [ -n "$KILN_GIT_SHA" ]; then
  git checkout --quiet --detach "$KILN_GIT_SHA"
elif [ -n "$KILN_GIT_REF" ]; then
  git checkout --quiet --detach "origin/$KILN_GIT_REF" 2>/dev/null || git checkout --quiet --detach "$KILN_GIT_REF"
else
  git checkout --quiet --detach origin/HEAD
fi
echo "checked out $(git rev-parse HEAD)"
"#;

/// How a build ended, before it is recorded.
pub(crate) struct Outcome {
    pub(crate) status: BuildStatus,
    pub(crate) exit_code: Option<i32>,
    pub(crate) reason: Option<String>,
    /// The last log line's sequence number, for the end message.
    pub(crate) last_seq: u64,
}

pub(crate) struct Execution<'a> {
    pub(crate) worker: &'a Worker,
    pub(crate) active: &'a Active,
    pub(crate) def: &'a JobDefinition,
    pub(crate) sink: LogSink,
    pub(crate) build_dir: PathBuf,
    pub(crate) deadline: Instant,
    /// Whether Redis accepted the build's start, once it answered: the steps run meanwhile,
    /// but no step result is written before the start itself.
    pub(crate) started: watch::Receiver<StartState>,
    /// Tells a lingering start that a step result is due (`crate::start`).
    pub(crate) progress: &'a watch::Sender<Progress>,
}

impl Execution<'_> {
    /// Runs everything; `doc.steps` grows as steps finish and each change is recorded
    /// (fenced by the lease).
    pub(crate) async fn run(&self, doc: &mut BuildDocument) -> Outcome {
        let ws = match self.worker.workspaces.take().await {
            Ok(ws) => ws,
            Err(e) => return error(format!("cannot create a workspace: {e}")),
        };
        let outcome = self.run_in(&ws, doc).await;
        self.worker.workspaces.give_back(ws).await;
        outcome
    }

    async fn run_in(&self, ws: &Path, doc: &mut BuildDocument) -> Outcome {
        let mut env = self.base_env(ws, doc);
        if !self.def.secrets.is_empty() {
            let key = self.worker.settings.seal_key.as_deref();
            match self
                .worker
                .store
                .secret_values(&self.def.secrets, self.def.folder.as_ref(), key)
                .await
            {
                Ok(values) => {
                    self.sink
                        .hide(Masker::new(values.iter().map(String::as_str)));
                    env.extend(self.def.secrets.iter().cloned().zip(values));
                }
                Err(StoreError::NotFound(what)) => {
                    return error(format!(
                        "{what} is not defined (PUT /api/v1/secrets/<name> sets it)"
                    ))
                }
                Err(e) => return error(format!("cannot read the job's secrets: {e}")),
            }
        }
        if let Some(up) = &doc.trigger.upstream {
            let (first, matrix) = self.upstream_artifacts(up).await;
            if let Some(dir) = first {
                env.insert("KILN_UPSTREAM_ARTIFACTS".into(), dir.display().to_string());
            }
            if !matrix.is_empty() {
                let dirs: Vec<String> = matrix.iter().map(|d| d.display().to_string()).collect();
                env.insert("KILN_UPSTREAM_MATRIX_ARTIFACTS".into(), dirs.join(":"));
            }
        }
        if let Some(repo) = &self.def.repository {
            env.insert("KILN_REPO_URL".into(), repo.url.clone());
            if let Some(r) = doc.trigger.git_ref.as_ref().or(repo.git_ref.as_ref()) {
                env.insert("KILN_GIT_REF".into(), r.clone());
            }
            let step = self.run_step("checkout", CHECKOUT, None, ws, &env).await;
            let ok = step.status == BuildStatus::Success;
            let code = step.exit_code;
            self.record(doc, step, ok).await;
            if !ok {
                return self.ended(doc, code, true);
            }
            if let Some(sha) = head_sha(ws).await {
                env.insert("KILN_GIT_SHA".into(), sha);
            }
        }
        let mut last_code = None;
        // The first step that failed and its exit code: they decide the build's result,
        // whatever the `when: failure` or `always` steps after it do.
        let mut failed: Option<(&str, Option<i32>)> = None;
        let steps = &self.def.steps;
        for (i, s) in steps.iter().enumerate() {
            if !s.when.runs(failed.is_some()) {
                continue;
            }
            let step = self.run_with_retries(s, ws, &env).await;
            let allowed = s.allow_failure && step.status == BuildStatus::Failure;
            if allowed {
                let note = format!("{} may fail (allow_failure): the build goes on", s.name);
                self.sink.line(Stream::System, note).await;
            } else {
                last_code = step.exit_code;
            }
            if step.status == BuildStatus::Failure && !allowed && failed.is_none() {
                failed = Some((&s.name, step.exit_code));
            }
            let ends_now = matches!(
                step.status,
                BuildStatus::TimedOut | BuildStatus::Cancelled | BuildStatus::Error
            );
            let more_follow =
                !ends_now && steps[i + 1..].iter().any(|s| s.when.runs(failed.is_some()));
            self.record(doc, step, more_follow).await;
            if ends_now {
                self.collect_artifacts(ws).await;
                let mut outcome = self.ended(doc, last_code, false);
                // Its own timeout, not the build's: the build's deadline is still ahead.
                if let (BuildStatus::TimedOut, Some(t)) = (outcome.status, s.timeout_secs) {
                    if Instant::now() < self.deadline {
                        outcome.reason = Some(format!(
                            "step '{}' timed out after its timeout_secs of {t} s; its processes were killed",
                            s.name
                        ));
                    }
                }
                return outcome;
            }
        }
        self.collect_artifacts(ws).await;
        match failed {
            Some((name, code)) => Outcome {
                status: BuildStatus::Failure,
                exit_code: code,
                reason: Some(failed_reason(name, code)),
                last_seq: 0,
            },
            None => Outcome {
                status: BuildStatus::Success,
                exit_code: last_code,
                reason: None,
                last_seq: 0,
            },
        }
    }

    /// The folder of the files the upstream build archived, in the shared storage, for a
    /// downstream build's steps to take what they need from (`None` when it archived none
    /// or is gone); for an upstream matrix, also the folder of each of its builds that
    /// archived files, in cell order.
    async fn upstream_artifacts(&self, up: &Upstream) -> (Option<PathBuf>, Vec<PathBuf>) {
        let build = BuildRef::new(up.job.clone(), up.number);
        let Ok(Some(doc)) = self.worker.store.get_build(&build).await else {
            return (None, Vec::new());
        };
        let first = self.artifacts_dir(&doc).await;
        let Some(cell) = &doc.matrix else {
            return (first, Vec::new());
        };
        let mut matrix = Vec::new();
        if let Ok(group) = self.worker.store.matrix_group(&up.job, cell).await {
            for d in group.iter().flatten() {
                matrix.extend(self.artifacts_dir(d).await);
            }
        }
        (first, matrix)
    }

    /// The folder holding what `doc`'s build archived, if it archived anything.
    async fn artifacts_dir(&self, doc: &BuildDocument) -> Option<PathBuf> {
        let dir =
            kiln_model::storage::build_dir(&self.worker.settings.storage_root, &doc.storage_path)?
                .join(output::ARTIFACTS_DIR);
        tokio::fs::metadata(&dir)
            .await
            .is_ok_and(|m| m.is_dir())
            .then_some(dir)
    }

    /// Runs a step, and again while its command fails, up to its `retries`.
    async fn run_with_retries(
        &self,
        s: &Step,
        ws: &Path,
        env: &BTreeMap<String, String>,
    ) -> StepResult {
        let timeout = s.timeout_secs.map(Duration::from_secs);
        let mut step = self.run_step(&s.name, &s.run, timeout, ws, env).await;
        let started = step.started_at;
        while step.status == BuildStatus::Failure && step.attempts <= s.retries {
            let attempts = step.attempts + 1;
            let note = format!(
                "{} failed with exit code {}; running it again (attempt {attempts} of {})",
                s.name,
                step.exit_code.map_or("?".into(), |c| c.to_string()),
                s.retries + 1
            );
            self.sink.line(Stream::System, note).await;
            step = self.run_step(&s.name, &s.run, timeout, ws, env).await;
            step.attempts = attempts;
        }
        if step.attempts > 1 {
            step.started_at = started;
            step.duration_ms = (step.finished_at - started).num_milliseconds().max(0) as u64;
        }
        step
    }

    /// The outcome of a build whose checkout failed, or whose last step ended it (timed
    /// out, was cancelled, could not start).
    fn ended(&self, doc: &BuildDocument, code: Option<i32>, checkout: bool) -> Outcome {
        let (last, name) = doc
            .steps
            .last()
            .map_or((BuildStatus::Error, ""), |s| (s.status, s.name.as_str()));
        let (status, reason) = match last {
            BuildStatus::TimedOut => (
                BuildStatus::TimedOut,
                format!(
                    "timed out after {} s; the step's processes were killed",
                    self.def.timeout_secs
                ),
            ),
            BuildStatus::Cancelled => (BuildStatus::Cancelled, "cancelled".to_owned()),
            _ if checkout => (BuildStatus::Error, "git checkout failed".to_owned()),
            BuildStatus::Error => (BuildStatus::Error, format!("step '{name}' could not start")),
            _ => (BuildStatus::Failure, failed_reason(name, code)),
        };
        Outcome {
            status,
            exit_code: code,
            reason: Some(reason),
            last_seq: 0,
        }
    }

    /// What every step of the build gets on top of the worker's own environment (less its
    /// `KILN_*` settings, see `process::Launcher`): the job's env, the build's parameters,
    /// its matrix cell's values, and Kiln's variables, each overriding the one before.
    fn base_env(&self, ws: &Path, doc: &BuildDocument) -> BTreeMap<String, String> {
        let mut env = self.def.env.clone();
        env.extend(doc.parameters.clone());
        if let Some(m) = &doc.matrix {
            env.extend(m.cell.clone());
            env.insert("KILN_MATRIX".into(), m.label());
        }
        env.insert("KILN_JOB".into(), doc.job.to_string());
        env.insert("KILN_BUILD_NUMBER".into(), doc.number.to_string());
        env.insert("KILN_ATTEMPT".into(), doc.attempt.to_string());
        env.insert("KILN_WORKSPACE".into(), ws.display().to_string());
        env.insert("KILN_NODE".into(), self.worker.settings.id.to_string());
        env.insert(
            "KILN_BUILD_DIR".into(),
            self.build_dir.display().to_string(),
        );
        if let Some(sha) = &doc.trigger.sha {
            env.insert("KILN_GIT_SHA".into(), sha.clone());
        }
        if let Some(up) = &doc.trigger.upstream {
            env.insert("KILN_UPSTREAM_JOB".into(), up.job.to_string());
            env.insert("KILN_UPSTREAM_BUILD_NUMBER".into(), up.number.to_string());
            env.insert("KILN_UPSTREAM_STATUS".into(), up.status.to_string());
        }
        env
    }

    /// Appends a step's result to the document; while more steps follow it is also written
    /// to Redis (fenced by the lease). After the last step the final write carries it, one
    /// round trip fewer per build.
    async fn record(&self, doc: &mut BuildDocument, step: StepResult, more_follow: bool) {
        doc.steps.push(step);
        if !more_follow {
            return;
        }
        self.progress.send_replace(Progress::StartDue);
        if !self.start_accepted().await {
            return;
        }
        match self
            .worker
            .store
            .update_build(&self.active.lease, doc)
            .await
        {
            Ok(()) => {}
            Err(kiln_store::StoreError::Stale(_)) => self.active.stop(StopReason::LeaseLost),
            Err(e) => {
                self.worker.record_redis_failure();
                tracing::warn!(error = %e, "cannot record step result; the final write will carry it");
            }
        }
    }

    /// Waits for Redis's answer to the build's start; `false` when it was not accepted
    /// (the build is being stopped then).
    async fn start_accepted(&self) -> bool {
        let mut started = self.started.clone();
        let accepted = started
            .wait_for(|s| *s != StartState::Pending)
            .await
            .is_ok_and(|s| *s == StartState::Accepted);
        accepted
    }

    /// Runs one step until it exits, the build's deadline (or the step's own `timeout`,
    /// when sooner) passes, or the build is stopped.
    async fn run_step(
        &self,
        name: &str,
        script: &str,
        timeout: Option<Duration>,
        ws: &Path,
        env: &BTreeMap<String, String>,
    ) -> StepResult {
        self.sink.line(Stream::System, format!("▶ {name}")).await;
        let started = Utc::now();
        let t0 = Instant::now();
        let deadline = timeout.map_or(self.deadline, |t| self.deadline.min(t0 + t));
        let result = |status, exit_code| StepResult {
            name: name.to_owned(),
            status,
            exit_code,
            started_at: started,
            finished_at: Utc::now(),
            duration_ms: t0.elapsed().as_millis() as u64,
            attempts: 1,
        };
        if self.active.stop.is_cancelled() {
            return result(BuildStatus::Cancelled, None);
        }
        let mut p = match self.worker.settings.launcher.spawn(script, ws, env) {
            Ok(p) => p,
            Err(e) => {
                self.sink
                    .line(Stream::System, format!("cannot start step '{name}': {e}"))
                    .await;
                return result(BuildStatus::Error, None);
            }
        };
        // The pipes are read inside this step's future, not by tasks of their own: two task
        // spawns per step cost the workers about 5 % of their CPU per build (session 12).
        let out = p
            .stdout
            .take()
            .map(|o| process::pump(o, Stream::Stdout, self.sink.clone()));
        let err = p
            .stderr
            .take()
            .map(|e| process::pump(e, Stream::Stderr, self.sink.clone()));
        let pumping = async move {
            tokio::join!(
                async {
                    if let Some(f) = out {
                        f.await
                    }
                },
                async {
                    if let Some(f) = err {
                        f.await
                    }
                }
            );
        };
        tokio::pin!(pumping);
        let mut pumped = false;
        let ended = loop {
            tokio::select! {
                s = p.wait() => break Some(s),
                _ = tokio::time::sleep_until(deadline) => break None,
                _ = self.active.stop.cancelled() => break None,
                _ = &mut pumping, if !pumped => pumped = true,
            }
        };
        // Kill whatever the step left behind in its group, and everything on timeout/stop.
        p.kill_group();
        let finished = ended.is_some();
        let exit = match ended {
            Some(s) => s.ok(),
            None => p.wait().await.ok(),
        };
        if !pumped
            && tokio::time::timeout(DRAIN_TIMEOUT, &mut pumping)
                .await
                .is_err()
        {
            tracing::warn!(
                step = name,
                "output still open after the step ended; abandoned"
            );
        }
        let code = exit.and_then(|s| {
            use std::os::unix::process::ExitStatusExt;
            s.code().or_else(|| s.signal().map(|sig| 128 + sig))
        });
        let status = if finished {
            if code == Some(0) {
                BuildStatus::Success
            } else {
                BuildStatus::Failure
            }
        } else if self.active.stop.is_cancelled() {
            BuildStatus::Cancelled
        } else {
            BuildStatus::TimedOut
        };
        let note = match status {
            BuildStatus::Success => format!("✔ {name}"),
            BuildStatus::TimedOut => format!("✖ {name}: timed out, process group killed"),
            BuildStatus::Cancelled => format!("✖ {name}: stopped, process group killed"),
            _ => format!(
                "✖ {name}: exit code {}",
                code.map_or("?".into(), |c| c.to_string())
            ),
        };
        self.sink.line(Stream::System, note).await;
        result(status, code)
    }

    /// Copies the files matching the job's artifact globs into `<build>/artifacts/`,
    /// keeping their relative paths. Symlinks are skipped, so nothing outside the
    /// workspace is copied. The walk runs in the blocking pool: a large workspace must not
    /// hold up the worker's other builds or its lease renewals.
    async fn collect_artifacts(&self, ws: &Path) {
        if self.def.artifacts.is_empty() || self.active.reason() == Some(StopReason::LeaseLost) {
            return;
        }
        let patterns = self.def.artifacts.clone();
        let ws = ws.to_owned();
        let dest = self.build_dir.join(output::ARTIFACTS_DIR);
        let notes = tokio::task::spawn_blocking(move || copy_artifacts(&patterns, &ws, &dest))
            .await
            .unwrap_or_else(|e| vec![format!("cannot archive artifacts: {e}")]);
        for note in notes {
            self.sink.line(Stream::System, note).await;
        }
    }
}

/// Copies the files of `ws` matching `patterns` under `dest`; returns the lines to log.
fn copy_artifacts(patterns: &[String], ws: &Path, dest: &Path) -> Vec<String> {
    let mut notes = Vec::new();
    let mut copied = 0usize;
    for pattern in patterns {
        let Ok(paths) = glob::glob(&ws.join(pattern).to_string_lossy()) else {
            notes.push(format!("invalid artifact pattern {pattern:?}"));
            continue;
        };
        for path in paths.flatten() {
            let Ok(rel) = path.strip_prefix(ws) else {
                continue;
            };
            if !std::fs::symlink_metadata(&path).is_ok_and(|m| m.is_file()) {
                continue;
            }
            let to = dest.join(rel);
            let copy = || {
                if let Some(parent) = to.parent() {
                    std::fs::create_dir_all(parent)?;
                }
                std::fs::copy(&path, &to)
            };
            match copy() {
                Ok(_) => copied += 1,
                Err(e) => notes.push(format!("cannot archive {}: {e}", rel.display())),
            }
        }
    }
    notes.push(format!("archived {copied} artifact(s)"));
    notes
}

fn error(reason: String) -> Outcome {
    Outcome {
        status: BuildStatus::Error,
        exit_code: None,
        reason: Some(reason),
        last_seq: 0,
    }
}

async fn head_sha(ws: &Path) -> Option<String> {
    let out = tokio::process::Command::new("git")
        .args(["rev-parse", "HEAD"])
        .current_dir(ws)
        .output()
        .await
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// A failed build's `reason`.
fn failed_reason(step: &str, code: Option<i32>) -> String {
    format!(
        "step '{step}' failed with exit code {}",
        code.map_or("?".into(), |c| c.to_string())
    )
}
