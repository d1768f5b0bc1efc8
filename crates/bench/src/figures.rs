//! Every figure with its same-run baseline.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use chrono::{DateTime, Utc};
use deadpool_redis::redis::{self, AsyncCommands};
use futures::StreamExt;
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

use crate::cluster::{Cluster, TOKEN};
use crate::cpu::Cpu;
use crate::http1;
use crate::report::Report;
use crate::stats::Samples;
use crate::Size;

/// The figures by the names `--only` takes, in the order a full run measures them.
pub(crate) const NAMES: [&str; 6] = ["trigger", "throughput", "output", "api", "scale", "peers"];

/// Runs the figures named in `only` (every figure when it is empty).
pub(crate) async fn run(size: Size, only: &[String], report: &mut Report) -> anyhow::Result<()> {
    let wanted = |name: &str| only.is_empty() || only.iter().any(|o| o == name);
    let mut c = Cluster::start().await?;
    if wanted("trigger") {
        trigger_to_start(&mut c, size, report).await?;
    }
    if wanted("throughput") {
        throughput(&mut c, size, report).await?;
    }
    if wanted("output") {
        output_latency(&mut c, size, report).await?;
    }
    if wanted("api") {
        api(&mut c, size, report).await?;
    }
    if wanted("scale") {
        scale(size, report).await?;
    }
    if wanted("peers") {
        peers(&c, size, report).await?;
    }
    Ok(())
}

fn job(run: &str) -> Value {
    json!({"steps": [{"name": "s", "run": run}], "retention": {"builds": 10000}})
}

/// Figure 1: `POST /builds` -> the first step's process being spawned (the worker's timestamp of
/// the step's start), sequentially. Baseline: LPUSH -> BLMOVE on another connection, plus
/// spawning `sh -c true`.
///
/// The bench learns that a build finished from a durable consumer's list of finished builds,
/// blocked on, as BullMQ's figure waits on its queue events: polling the api meanwhile put
/// the bench, the api and Redis on the 2 cores the measured build needs, and delayed its
/// wake-ups by up to 0.2 ms each (`perf trace`).
async fn trigger_to_start(c: &mut Cluster, size: Size, report: &mut Report) -> anyhow::Result<()> {
    c.workers(1, 1).await?;
    c.apply("t2s", job("true")).await?;
    let mut finished = c.redis().await?;
    let _: () = finished
        .sadd("kiln:finished-consumers", "bench-t2s")
        .await?;
    let _: () = finished.del("kiln:finished:bench-t2s").await?;
    let mut kiln = Samples::new();
    for _ in 0..size.trigger_builds {
        kiln.push_ms(trigger_once(c, &mut finished).await?);
    }
    let pool = c.redis.pool();
    // The blocked side may wait longer than a pooled connection waits for a reply.
    let blocked = redis::Client::open(c.redis.url())?
        .get_multiplexed_async_connection_with_config(
            &redis::AsyncConnectionConfig::new().set_response_timeout(None),
        )
        .await?;
    let mut bare = BareRound {
        blocked: Some(blocked),
        pusher: pool.get().await?,
    };
    let mut base = Samples::new();
    for _ in 0..size.trigger_builds {
        base.push(bare.run(Duration::from_millis(1)).await?);
    }
    // CI builds mostly arrive one by one, after every service sat idle for a while. Kiln's
    // quiet builds alternate with the baseline's quiet rounds, so a slow spell of the machine
    // (session 11 saw one push a run's p50 to 17 ms) falls on both.
    let mut quiet = Samples::new();
    let mut base_quiet = Samples::new();
    let pings_before = pings(&mut finished).await?;
    for _ in 0..size.quiet_builds {
        tokio::time::sleep(QUIET).await;
        quiet.push_ms(trigger_once(c, &mut finished).await?);
        base_quiet.push(bare.run(QUIET).await?);
    }
    let checks = pings(&mut finished).await? - pings_before;
    let _: () = finished
        .srem("kiln:finished-consumers", "bench-t2s")
        .await?;
    let note = format!("{} sequential builds of `true`", size.trigger_builds);
    report.add(
        "trigger_to_start_p50",
        kiln.pct(50.0),
        "ms",
        base.pct(50.0),
        &note,
    );
    report.add(
        "trigger_to_start_p99",
        kiln.pct(99.0),
        "ms",
        base.pct(99.0),
        &note,
    );
    report.add(
        "trigger_to_start_after_quiet_p50",
        quiet.pct(50.0),
        "ms",
        base_quiet.pct(50.0),
        &format!(
            "{} builds of `true`, each triggered after {} s without any; baseline: the same bare queue-plus-spawn round, each after as long without any, alternating with Kiln's",
            size.quiet_builds,
            QUIET.as_secs()
        ),
    );
    report.add(
        "health_checks_per_quiet_build",
        checks as f64 / size.quiet_builds as f64,
        "PING",
        f64::NAN,
        "connection checks (`PING`) by all services over the quiet builds, per build: each is a round trip before an operation",
    );
    c.stop_extras();
    Ok(())
}

/// Figure 1's baseline: an LPUSH seen by a BLMOVE blocked on another connection for
/// `after`, then spawning `sh -c true` and waiting for it.
struct BareRound {
    /// `None` only while a round's BLMOVE holds it.
    blocked: Option<redis::aio::MultiplexedConnection>,
    pusher: deadpool_redis::Connection,
}

impl BareRound {
    async fn run(&mut self, after: Duration) -> anyhow::Result<Duration> {
        let mut blocked = self.blocked.take().context("a round failed earlier")?;
        let waiter = tokio::spawn(async move {
            let r: redis::RedisResult<Option<String>> = redis::cmd("BLMOVE")
                .arg("bench:q")
                .arg("bench:p")
                .arg("RIGHT")
                .arg("LEFT")
                .arg(after.as_secs_f64() + 10.0)
                .query_async(&mut blocked)
                .await;
            (r, blocked)
        });
        tokio::time::sleep(after).await;
        let t0 = Instant::now();
        let _: () = self.pusher.lpush("bench:q", 1).await?;
        let (moved, conn) = waiter.await?;
        anyhow::ensure!(moved?.is_some(), "the bare round's BLMOVE saw nothing");
        self.blocked = Some(conn);
        spawn_true().await?;
        Ok(t0.elapsed())
    }
}

/// Runs `sh -c true` to its end, the way every baseline of the bench spawns it.
async fn spawn_true() -> std::io::Result<std::process::ExitStatus> {
    tokio::process::Command::new("sh")
        .args(["-c", "true"])
        .status()
        .await
}

/// How long every service sits idle before each of figure 1's quiet builds.
const QUIET: Duration = Duration::from_secs(2);

/// Triggers one build of `t2s` and waits for its end on the bench's durable list; returns
/// the time from the trigger to its first step's start, in ms.
async fn trigger_once(
    c: &Cluster,
    finished: &mut deadpool_redis::Connection,
) -> anyhow::Result<f64> {
    let t0 = Utc::now();
    let n = c.trigger("t2s").await?;
    let key: Option<(String, String)> = finished.brpop("kiln:finished:bench-t2s", 60.0).await?;
    anyhow::ensure!(
        key.is_some_and(|(_, k)| k == format!("job_t2s_{n}")),
        "t2s#{n} did not finish in time"
    );
    let doc = c.build("t2s", n).await?;
    let started: DateTime<Utc> = doc["steps"][0]["started_at"]
        .as_str()
        .context("no step start")?
        .parse()?;
    Ok((started - t0).num_microseconds().unwrap_or(0) as f64 / 1000.0)
}

async fn wait_final(c: &Cluster, job: &str, n: u64) -> anyhow::Result<Value> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let b = c.build(job, n).await?;
        let s = b["status"].as_str().unwrap_or("");
        if s != "queued" && s != "running" {
            return Ok(b);
        }
        anyhow::ensure!(Instant::now() < deadline, "{job}#{n} did not finish");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// What spawning `sh -c true` in a loop reaches: the ceiling of any runner.
struct Ceiling {
    /// Spawns per second.
    rate: f64,
    /// CPU per spawn, in ms: the bench's own (spawning and waiting) and the shell's.
    cpu: (f64, f64),
}

/// Spawns `sh -c true` from `threads` tasks for `total` runs.
async fn spawn_ceiling(total: usize, threads: usize) -> anyhow::Result<Ceiling> {
    let left = Arc::new(AtomicU64::new(total as u64));
    let cpu0 = Cpu::of(std::process::id()).unwrap_or_default();
    let t0 = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..threads {
        let left = left.clone();
        tasks.push(tokio::spawn(async move {
            while left.fetch_sub(1, Ordering::Relaxed) as i64 > 0 {
                let _ = spawn_true().await;
            }
        }));
    }
    for t in tasks {
        t.await?;
    }
    let rate = total as f64 / t0.elapsed().as_secs_f64();
    let cpu = Cpu::of(std::process::id())
        .unwrap_or_default()
        .per(cpu0, total);
    Ok(Ceiling { rate, cpu })
}

impl Ceiling {
    /// The mean of several measurements (at least one).
    fn mean(all: &[Ceiling]) -> Ceiling {
        let n = all.len() as f64;
        let sum = |f: fn(&Ceiling) -> f64| all.iter().map(f).sum::<f64>() / n;
        Ceiling {
            rate: sum(|c| c.rate),
            cpu: (sum(|c| c.cpu.0), sum(|c| c.cpu.1)),
        }
    }
}

/// What making a build's folder and log costs on the storage's filesystem at this moment:
/// on ext4 without a journal it grows with the inodes freed there in the last minutes (by
/// anything: a build, `cargo`, the previous run), so it explains run-to-run swings of the
/// throughput figure. The median of `n` folders with an empty file, left in place: removing
/// them would slow the figures that follow.
fn storage_create_p50(storage: &std::path::Path, n: usize) -> anyhow::Result<f64> {
    let probe = storage.join("probe");
    std::fs::create_dir_all(&probe)?;
    let mut made = Samples::new();
    for i in 0..n {
        let t = Instant::now();
        let dir = probe.join(i.to_string());
        std::fs::create_dir(&dir)?;
        std::fs::File::create(dir.join("log.jsonl"))?;
        made.push(t.elapsed());
    }
    Ok(made.pct(50.0))
}

/// Every command Redis ran so far with its number of calls (`INFO commandstats`), asked on
/// `conn`: a connection the caller holds is not checked with a `PING` when taken, as a
/// pooled one is.
async fn command_calls(
    conn: &mut deadpool_redis::Connection,
) -> anyhow::Result<Vec<(String, u64)>> {
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(conn)
        .await?;
    Ok(info
        .lines()
        .filter_map(|line| {
            let (name, rest) = line.strip_prefix("cmdstat_")?.split_once(':')?;
            let calls = rest
                .split(',')
                .find_map(|kv| kv.strip_prefix("calls="))
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            Some((name.to_owned(), calls))
        })
        .collect())
}

/// How many `PING`s Redis answered so far.
async fn pings(conn: &mut deadpool_redis::Connection) -> anyhow::Result<u64> {
    let calls = command_calls(conn).await?;
    Ok(calls
        .iter()
        .find_map(|(name, n)| (name == "ping").then_some(*n))
        .unwrap_or(0))
}

/// Commands and scripts Redis ran so far.
async fn commandstats(c: &Cluster) -> anyhow::Result<(u64, u64)> {
    let calls = command_calls(&mut c.redis().await?).await?;
    let all = calls.iter().map(|(_, n)| n).sum();
    let scripts = calls
        .iter()
        .filter(|(name, _)| name == "evalsha" || name == "eval")
        .map(|(_, n)| n)
        .sum();
    Ok((all, scripts))
}

/// Rounds of figure 2 per worker count and of figure 3 per watcher count: on a shared machine
/// a few seconds can run 20 % slow for everything at once (in session 11 the 4-worker ratio
/// of single-round runs ranged from 0.46 to 0.69 with the same binaries), and one such spell
/// should not decide a figure. Figure 2 sets each round against the ceilings measured right
/// before and after it and reports the median round; figure 3 alternates Kiln's rounds with
/// the baseline's and pools each side's samples.
const ROUNDS: usize = 3;

/// Figure 2: Builds of `true` through 1 and 4 workers (concurrency 4 each), triggered all at once,
/// until every one finished; against the spawn-only ceiling, in [`ROUNDS`] rounds that
/// alternate with the ceiling's loop. Figure 6: Redis commands per build.
async fn throughput(c: &mut Cluster, size: Size, report: &mut Report) -> anyhow::Result<()> {
    report.add(
        "storage_folder_and_log_p50",
        storage_create_p50(&c.storage, 200)?,
        "ms",
        f64::NAN,
        "making a folder and an empty file in the bench's storage, before the throughput runs: what a build without a spare folder pays on this filesystem now (docs/performance.md)",
    );
    let n = size.throughput_builds;
    let mut ceiling4 = f64::NAN;
    for workers in [1usize, 4] {
        c.workers(workers, 4).await?;
        let name = format!("tp{workers}");
        c.apply(&name, job("true")).await?;
        let mut conn = c.redis().await?;
        let _: () = conn.sadd("kiln:finished-consumers", "bench").await?;
        let _: () = conn.del("kiln:finished:bench").await?;
        // The ceiling runs while the workers wait for work, as between any two rounds.
        let mut ceilings = vec![spawn_ceiling(n, workers).await?];
        let usage = match workers {
            4 => Some(CpuUsage::start(c).await?),
            _ => None,
        };
        let (cmds0, scripts0) = commandstats(c).await?;
        // The bench's own commands (its polls and the first INFO) are not Kiln's cost.
        let mut own_commands = 1u64;
        let mut rates = Vec::with_capacity(ROUNDS);
        for round in 1..=ROUNDS {
            let t0 = Instant::now();
            trigger_many(c, &name, n, None).await?;
            loop {
                own_commands += 1;
                let done: u64 = conn.llen("kiln:finished:bench").await?;
                if done as usize >= round * n {
                    break;
                }
                anyhow::ensure!(
                    t0.elapsed() < Duration::from_secs(300),
                    "throughput run did not finish"
                );
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            rates.push(n as f64 / t0.elapsed().as_secs_f64());
            if round < ROUNDS {
                ceilings.push(spawn_ceiling(n, workers).await?);
            }
        }
        let usage = usage.and_then(|u| u.per_build(ROUNDS * n));
        let (cmds1, scripts1) = commandstats(c).await?;
        let _: () = conn.srem("kiln:finished-consumers", "bench").await?;
        c.stop_extras();
        ceilings.push(spawn_ceiling(n, workers).await?);
        let rounds = Rounds::new(&rates, &ceilings);
        report.add(
            &format!("throughput_{workers}_workers"),
            rounds.rate,
            "builds/s",
            rounds.ceiling,
            &format!(
                "median of {ROUNDS} rounds of {n} builds triggered by {TRIGGER_CLIENTS} clients, concurrency 4 per worker, until all are recorded (round ratios {}); baseline: `sh -c true` spawned by {workers} tasks, mean of the ceilings right before and after that round ({:.0}-{:.0} spawns/s over the run)",
                rounds.ratios,
                ceilings.iter().map(|c| c.rate).fold(f64::INFINITY, f64::min),
                ceilings.iter().map(|c| c.rate).fold(0.0, f64::max),
            ),
        );
        if workers == 4 {
            let builds = (ROUNDS * n) as f64;
            report.add(
                "redis_commands_per_build",
                (cmds1 - cmds0 - own_commands) as f64 / builds,
                "commands",
                f64::NAN,
                "INFO commandstats delta, script-internal commands included (api, worker, heartbeats)",
            );
            report.add(
                "redis_scripts_per_build",
                (scripts1 - scripts0) as f64 / builds,
                "EVALSHA",
                f64::NAN,
                "atomic scripts: trigger, finish (with the next claim, and the start when the build ended while its start lingered); a start of its own when it did not, a claim of its own when a slot was idle, step results of longer builds, renewals",
            );
            if let Some(usage) = usage {
                usage.report(&Ceiling::mean(&ceilings), report);
            }
            ceiling4 = Ceiling::mean(&ceilings).rate;
        }
    }
    throughput_at_retention(c, size, ceiling4, report).await
}

/// Figure 2's median round.
struct Rounds {
    rate: f64,
    /// The mean of the ceilings measured right before and after the median round.
    ceiling: f64,
    /// Every round's ratio, in order, for the note.
    ratios: String,
}

impl Rounds {
    /// `rates[i]` ran between `ceilings[i]` and `ceilings[i + 1]`.
    fn new(rates: &[f64], ceilings: &[Ceiling]) -> Self {
        let mut rounds: Vec<(f64, f64)> = rates
            .iter()
            .zip(ceilings.windows(2))
            .map(|(rate, pair)| (*rate, (pair[0].rate + pair[1].rate) / 2.0))
            .collect();
        let ratios = rounds
            .iter()
            .map(|(rate, ceiling)| format!("{:.3}", rate / ceiling))
            .collect::<Vec<_>>()
            .join(" / ");
        rounds.sort_by(|a, b| (a.0 / a.1).total_cmp(&(b.0 / b.1)));
        let (rate, ceiling) = rounds[rounds.len() / 2];
        Self {
            rate,
            ceiling,
            ratios,
        }
    }
}

/// The CPU the processes of a throughput run use, from its start.
struct CpuUsage {
    workers: Vec<u32>,
    others: Vec<(&'static str, u32)>,
    start: (Option<Cpu>, Vec<Option<Cpu>>),
}

/// CPU per build in ms: the steps' processes, the workers, then the other services.
struct PerBuild {
    step: f64,
    worker: f64,
    others: Vec<(&'static str, f64)>,
}

impl CpuUsage {
    async fn start(c: &Cluster) -> anyhow::Result<Self> {
        let workers = c.pids("kiln-worker");
        let others = vec![
            ("redis", c.info("server", "process_id").await?),
            (
                "api",
                c.pids("kiln-api").first().copied().context("no api")?,
            ),
        ];
        let start = (
            Cpu::of_all(&workers),
            others.iter().map(|(_, p)| Cpu::of(*p)).collect(),
        );
        Ok(Self {
            workers,
            others,
            start,
        })
    }

    /// Per build of the `n` the run made; `None` without `/proc`.
    fn per_build(self, n: usize) -> Option<PerBuild> {
        let (worker, step) = Cpu::of_all(&self.workers)?.per(self.start.0?, n);
        let others = self
            .others
            .iter()
            .zip(self.start.1)
            .map(|((name, pid), start)| Some((*name, Cpu::of(*pid)?.per(start?, n).0)))
            .collect::<Option<_>>()?;
        Some(PerBuild {
            step,
            worker,
            others,
        })
    }
}

impl PerBuild {
    /// The step's CPU against the same spawn in the ceiling's loop; every part of Kiln
    /// against the step's CPU in this run.
    fn report(&self, ceiling: &Ceiling, report: &mut Report) {
        report.add(
            "cpu_per_build_step",
            self.step,
            "ms",
            ceiling.cpu.1,
            "4-worker run: CPU of the steps' processes (`sh -c true`) per build; baseline: the same shell spawned in the ceiling's loop",
        );
        report.add(
            "cpu_per_build_worker",
            self.worker,
            "ms",
            self.step,
            &format!(
                "4-worker run: the workers' own CPU per build (claim, start, spawn and wait, log, events, finish, folders); baseline: the step's CPU; a bare spawning loop spends {:.2} ms per spawn",
                ceiling.cpu.0
            ),
        );
        for (name, ms) in &self.others {
            report.add(
                &format!("cpu_per_build_{name}"),
                *ms,
                "ms",
                self.step,
                &format!("4-worker run: {name}'s CPU per build; baseline: the step's CPU"),
            );
        }
    }
}

/// How many HTTP clients trigger the throughput figure's builds at once.
const TRIGGER_CLIENTS: usize = 16;

/// The retention of the at-retention figure's job, and how many of its builds may be queued
/// or running at once: fewer, so that the job stays at its retention, every trigger retiring
/// its oldest build (one still running holds the trimming back: `trigger.lua`).
const AT_RETENTION_KEEP: usize = 100;
const AT_RETENTION_IN_FLIGHT: u64 = 64;

/// Figure 2, for a job at its retention, as most jobs of a CI server are: every build also
/// retires the job's oldest, whose folder a worker clears away (docs/architecture.md, spare
/// folders). The job keeps 100 builds, so at most 64 are queued or running at once; the
/// retention is filled first, then the same number of builds as figure 2 is timed through
/// 4 workers. Baseline: the same spawn ceiling.
async fn throughput_at_retention(
    c: &mut Cluster,
    size: Size,
    ceiling: f64,
    report: &mut Report,
) -> anyhow::Result<()> {
    c.workers(4, 4).await?;
    let name = "tpr";
    c.apply(
        name,
        json!({"steps": [{"name": "s", "run": "true"}], "retention": {"builds": AT_RETENTION_KEEP}}),
    )
    .await?;
    let mut conn = c.redis().await?;
    let _: () = conn.sadd("kiln:finished-consumers", "bench").await?;
    let _: () = conn.del("kiln:finished:bench").await?;
    run_gated(c, name, AT_RETENTION_KEEP, 0).await?;
    let usage = CpuUsage::start(c).await?;
    let t0 = Instant::now();
    run_gated(c, name, size.throughput_builds, AT_RETENTION_KEEP as u64).await?;
    let rate = size.throughput_builds as f64 / t0.elapsed().as_secs_f64();
    let usage = usage.per_build(size.throughput_builds);
    let _: () = conn.srem("kiln:finished-consumers", "bench").await?;
    report.add(
        "throughput_4_workers_at_retention",
        rate,
        "builds/s",
        ceiling,
        &format!(
            "{} builds of a job keeping {AT_RETENTION_KEEP} (full), at most {AT_RETENTION_IN_FLIGHT} queued or running, {TRIGGER_CLIENTS} clients, 4 workers x 4; baseline: `sh -c true` spawned by 4 tasks",
            size.throughput_builds
        ),
    );
    if let Some(usage) = usage {
        report.add(
            "cpu_per_build_worker_at_retention",
            usage.worker,
            "ms",
            usage.step,
            "job at its retention: the workers' own CPU per build, recycling the folder of the build that fell out included; baseline: the step's CPU in the same run",
        );
    }
    c.stop_extras();
    Ok(())
}

/// Triggers `n` builds of `job` from [`TRIGGER_CLIENTS`] clients, never more than
/// [`AT_RETENTION_IN_FLIGHT`] unfinished, and returns when all are on the bench's finished
/// list (which held `before` entries).
async fn run_gated(c: &Cluster, job: &str, n: usize, before: u64) -> anyhow::Result<()> {
    // A permit per build that may still be unfinished; each finished build returns one.
    let permits = Arc::new(tokio::sync::Semaphore::new(AT_RETENTION_IN_FLIGHT as usize));
    let target = before + n as u64;
    let watch = {
        let permits = permits.clone();
        let mut conn = c.redis().await?;
        async move {
            let deadline = Instant::now() + Duration::from_secs(300);
            let mut seen = before;
            loop {
                let done: u64 = conn.llen("kiln:finished:bench").await?;
                permits.add_permits(done.saturating_sub(seen) as usize);
                seen = seen.max(done);
                if done >= target {
                    return anyhow::Ok(());
                }
                anyhow::ensure!(
                    Instant::now() < deadline,
                    "builds at retention did not finish"
                );
                tokio::time::sleep(Duration::from_micros(500)).await;
            }
        }
    };
    let (triggered, watched) = tokio::join!(trigger_many(c, job, n, Some(&permits)), watch);
    triggered?;
    watched
}

/// Triggers `n` builds of `job` the way they arrive on a busy server: from
/// [`TRIGGER_CLIENTS`] clients at once, each on a keep-alive connection, each taking a
/// permit from `gate` (when given) before a trigger. The minimal HTTP client, as in the api
/// figure: the load generator shares the two cores with what it measures (with `reqwest`
/// and a decoded reply it took about 2.5 % of the 4-worker run).
async fn trigger_many(
    c: &Cluster,
    job: &str,
    n: usize,
    gate: Option<&tokio::sync::Semaphore>,
) -> anyhow::Result<()> {
    let left = std::sync::atomic::AtomicUsize::new(n);
    let path = format!("/api/v1/jobs/{job}/builds");
    let clients = (0..TRIGGER_CLIENTS).map(|_| async {
        let mut conn = http1::Connection::post(c.api, &path, TOKEN).await?;
        while left
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |l| l.checked_sub(1))
            .is_ok()
        {
            if let Some(gate) = gate {
                gate.acquire().await?.forget();
            }
            conn.send().await?;
        }
        anyhow::Ok(())
    });
    futures::future::try_join_all(clients).await?;
    Ok(())
}

/// Figure 3: A worker writes ~1000 lines/s; latency from the worker's timestamp of each line to a
/// WebSocket client receiving it, for several watcher counts, in [`ROUNDS`] builds each
/// followed by a round of the baseline: PUBLISH -> as many subscribers on the same Redis.
async fn output_latency(c: &mut Cluster, size: Size, report: &mut Report) -> anyhow::Result<()> {
    c.workers(1, 1).await?;
    let gw = c.spawn("kiln-stream-gateway", &[]).await?;
    let lines = size.output_lines.div_ceil(ROUNDS);
    let script = format!(
        "sleep 1; i=0; while [ $i -lt {lines} ]; do echo line-$i; i=$((i+1)); [ $((i % 50)) -eq 0 ] && sleep 0.05; done; true"
    );
    c.apply("out", job(&script)).await?;
    for &watchers in size.watchers {
        // Kiln and the baseline take turns, so a slow spell of the machine (which can set a
        // p99 on its own: it is the worst batch or two) is as likely to fall on either.
        let mut all = Samples::new();
        let mut direct = Samples::new();
        let behind_before = watchers_behind(c, gw).await?;
        for _ in 0..ROUNDS {
            let n = c.trigger("out").await?;
            let mut tasks = Vec::new();
            for _ in 0..watchers {
                let mut req =
                    format!("ws://127.0.0.1:{gw}/ws/builds/out/{n}").into_client_request()?;
                req.headers_mut()
                    .insert("authorization", format!("Bearer {TOKEN}").parse()?);
                let (ws, _) = tokio_tungstenite::connect_async(req).await?;
                tasks.push(tokio::spawn(watch(ws)));
            }
            for t in tasks {
                all.extend(t.await??);
            }
            wait_final(c, "out", n).await?;
            direct.extend(direct_baseline(c, watchers, lines).await?);
        }
        let behind = watchers_behind(c, gw).await? - behind_before;
        let note = format!(
            "{watchers} watchers, {} latency samples from {ROUNDS} builds of {lines} lines, {behind} times a watcher fell behind the gateway's buffer and caught up from the log; baseline: {watchers} Redis subscribers decoding the same messages, a round after each build",
            all.len()
        );
        for p in [50.0, 99.0] {
            report.add(
                &format!("output_latency_p{p}_{watchers}_watchers"),
                all.pct(p),
                "ms",
                direct.pct(p),
                &note,
            );
        }
    }
    let mut raw = pubsub_round_trip(c, 2_000).await?;
    for p in [50.0, 99.0] {
        report.add(
            &format!("pubsub_round_trip_p{p}"),
            raw.pct(p),
            "ms",
            f64::NAN,
            "one PUBLISH of a 1-byte message to one SUBSCRIBE connection, for scale",
        );
    }
    c.stop_extras();
    Ok(())
}

/// How many times a watcher fell behind the gateway's buffer so far (the gateway's
/// `kiln_gateway_resyncs_total{cause="watcher_behind"}`): each such watcher catches up from
/// the log file, and its lines then arrive late, which explains a p99 far from the baseline.
async fn watchers_behind(c: &Cluster, gw: u16) -> anyhow::Result<u64> {
    let text = c
        .http
        .get(format!("http://127.0.0.1:{gw}/metrics"))
        .send()
        .await?
        .error_for_status()?
        .text()
        .await?;
    let series = r#"kiln_gateway_resyncs_total{cause="watcher_behind"} "#;
    Ok(text
        .lines()
        .find_map(|l| l.strip_prefix(series)?.parse::<u64>().ok())
        .unwrap_or(0))
}

/// Reads one build stream; returns receive time minus the line's worker timestamp, for
/// live lines only (the replay of lines written before the client joined is not latency).
async fn watch(
    mut ws: tokio_tungstenite::WebSocketStream<
        tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
    >,
) -> anyhow::Result<Samples> {
    let mut s = Samples::new();
    let joined = Utc::now();
    while let Some(m) = ws.next().await {
        let Message::Text(t) = m? else { continue };
        if record_latencies(&t, joined, &mut s)? {
            break;
        }
    }
    Ok(s)
}

/// What a latency sample needs of an output message: the texts are skipped and the
/// timestamps borrowed. With 1,000 watchers this process decodes a million lines a second,
/// and decoding into `Value`s took enough of a 2-core machine's CPU to decide whether the
/// gateway kept up.
#[derive(serde::Deserialize)]
struct Sampled<'a> {
    #[serde(rename = "type")]
    kind: &'a str,
    #[serde(default, borrow)]
    lines: Vec<SampledLine<'a>>,
}

#[derive(serde::Deserialize)]
struct SampledLine<'a> {
    ts: &'a str,
    stream: &'a str,
}

/// Adds the latency of every live stdout line in one output message; true at the end
/// message. The gateway's clients and the baseline's subscribers decode alike.
fn record_latencies(text: &str, joined: DateTime<Utc>, s: &mut Samples) -> anyhow::Result<bool> {
    let now = Utc::now();
    let m: Sampled<'_> = serde_json::from_str(text)?;
    match m.kind {
        "lines" => {
            for l in m.lines {
                let ts = DateTime::parse_from_rfc3339(l.ts)?;
                if ts > joined && l.stream == "stdout" {
                    s.push_ms((now - ts.to_utc()).num_microseconds().unwrap_or(0) as f64 / 1000.0);
                }
            }
            Ok(false)
        }
        "end" => Ok(true),
        _ => Ok(false),
    }
}

/// The same output without the gateway: `watchers` Redis subscribers of one channel, and
/// a publisher sending the worker's message shape at the step's pace (50 lines every 50 ms).
async fn direct_baseline(c: &Cluster, watchers: usize, lines: usize) -> anyhow::Result<Samples> {
    let client = deadpool_redis::redis::Client::open(c.redis.url())?;
    let joined = Utc::now();
    let mut tasks = Vec::new();
    for _ in 0..watchers {
        let mut sub = client.get_async_pubsub().await?;
        sub.subscribe("bench:output").await?;
        tasks.push(tokio::spawn(async move {
            let mut s = Samples::new();
            let mut stream = sub.into_on_message();
            while let Some(m) = stream.next().await {
                let text: String = m.get_payload()?;
                if record_latencies(&text, joined, &mut s)? {
                    break;
                }
            }
            anyhow::Ok(s)
        }));
    }
    let mut publisher = c.redis().await?;
    let mut seq = 0u64;
    for _ in 0..lines.div_ceil(50) {
        let batch: Vec<Value> = (0..50)
            .map(|_| {
                seq += 1;
                json!({"seq": seq, "ts": Utc::now(), "stream": "stdout", "attempt": 1, "line": format!("line-{seq}")})
            })
            .collect();
        let msg = json!({"type": "lines", "lines": batch}).to_string();
        let _: i64 = publisher.publish("bench:output", msg).await?;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let _: i64 = publisher
        .publish(
            "bench:output",
            json!({"type": "end", "attempt": 1}).to_string(),
        )
        .await?;
    let mut all = Samples::new();
    for t in tasks {
        all.extend(t.await??);
    }
    Ok(all)
}

async fn pubsub_round_trip(c: &Cluster, n: usize) -> anyhow::Result<Samples> {
    let client = deadpool_redis::redis::Client::open(c.redis.url())?;
    let mut sub = client.get_async_pubsub().await?;
    sub.subscribe("bench:latency").await?;
    let mut stream = sub.into_on_message();
    let mut publisher = c.redis().await?;
    let mut s = Samples::new();
    for _ in 0..n {
        let t0 = Instant::now();
        let _: i64 = publisher.publish("bench:latency", "x").await?;
        stream.next().await.context("subscriber closed")?;
        s.push(t0.elapsed());
    }
    Ok(s)
}

/// Figure 4: 64 concurrent connections reading a page of 50 builds and one build, for a fixed time;
/// baseline: the same reads straight from Redis (LRANGE + MGET, GET) with 64 tasks.
async fn api(c: &mut Cluster, size: Size, report: &mut Report) -> anyhow::Result<()> {
    c.apply("hist", job("true")).await?;
    let mut conn = c.redis().await?;
    // Fill history directly (document shape as the worker writes it).
    for n in 1..=200u64 {
        c.trigger("hist").await?;
        let _: () = conn
            .set(format!("job_hist_{n}"), sample_doc("hist", n))
            .await?;
    }
    let _: () = conn.del("kiln:queue:default").await?;
    for (name, path, key_read) in [
        ("api_builds_page", "/api/v1/jobs/hist/builds?limit=50", true),
        ("api_build_get", "/api/v1/jobs/hist/builds/100", false),
    ] {
        let port = c.api;
        let (rate, mut lat) = load(size.api_secs, 64, move |end| {
            Box::pin(async move {
                let mut conn = http1::Connection::get(port, path, TOKEN).await?;
                let mut s = Samples::new();
                while Instant::now() < end {
                    let t = Instant::now();
                    conn.send().await?;
                    s.push(t.elapsed());
                }
                Ok(s)
            })
        })
        .await?;
        let client = deadpool_redis::redis::Client::open(c.redis.url())?;
        let (base_rate, mut base_lat) = load(size.api_secs, 64, move |end| {
            let client = client.clone();
            Box::pin(async move {
                let mut conn = client.get_multiplexed_async_connection().await?;
                let mut s = Samples::new();
                while Instant::now() < end {
                    let t = Instant::now();
                    if key_read {
                        page_reads(&mut conn, "hist").await?;
                    } else {
                        let _: Option<String> = conn.get("job_hist_100").await?;
                    }
                    s.push(t.elapsed());
                }
                Ok(s)
            })
        })
        .await?;
        report.add(
            &format!("{name}_rate"),
            rate,
            "req/s",
            base_rate,
            "64 keep-alive connections; baseline: the same reads from Redis on 64 connections",
        );
        report.add(
            &format!("{name}_p99"),
            lat.pct(99.0),
            "ms",
            base_lat.pct(99.0),
            "64 connections",
        );
    }
    Ok(())
}

/// One load-generating task: opens its own connection, then runs requests back to back
/// until the deadline and returns the latency of each.
type Task = Pin<Box<dyn Future<Output = anyhow::Result<Samples>> + Send>>;

/// Runs `tasks` tasks made by `task` for `secs`; returns requests/s and every latency.
async fn load(
    secs: u64,
    tasks: usize,
    task: impl Fn(Instant) -> Task,
) -> anyhow::Result<(f64, Samples)> {
    let t0 = Instant::now();
    let end = t0 + Duration::from_secs(secs);
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..tasks {
        set.spawn(task(end));
    }
    let mut all = Samples::new();
    while let Some(r) = set.join_next().await {
        all.extend(r??);
    }
    Ok((all.len() as f64 / t0.elapsed().as_secs_f64(), all))
}

/// A finished build document as the worker writes it, for bulk-loaded history.
fn sample_doc(job: &str, n: u64) -> String {
    json!({
        "number": n, "storage_path": format!("jobs/{job}/{n}"), "schema_version": 1, "job": job,
        "folder": null, "status": "success", "trigger": {"kind": "api", "by": "bench"},
        "parameters": {}, "queue": "default", "queued_at": "2026-11-30T00:00:00Z",
        "started_at": "2026-11-30T00:00:00.010Z", "finished_at": "2026-11-30T00:00:00.030Z",
        "duration_ms": 20, "exit_code": 0,
        "steps": [{"name": "s", "status": "success", "exit_code": 0, "started_at": "2026-11-30T00:00:00.011Z",
                   "finished_at": "2026-11-30T00:00:00.029Z", "duration_ms": 18}],
        "node": "bench-0", "attempt": 1, "reason": null, "cancel_requested": false
    })
    .to_string()
}

/// Loads `jobs` jobs of `per_job` builds each, in folders of 100 jobs, with pipelined writes
/// that lay out exactly what the api and workers would have written (each job's first
/// revision included).
async fn load_history(
    c: &Cluster,
    first_job: usize,
    jobs: usize,
    per_job: usize,
) -> anyhow::Result<()> {
    let mut conn = c.redis().await?;
    let def = job("true").to_string();
    for j in first_job..first_job + jobs {
        let folder = if j < SMALL_JOBS {
            "f0".to_owned()
        } else {
            format!("f{}", 1 + j / 100)
        };
        let name = format!("j{j}");
        let mut p = redis::pipe();
        if j == 0 || j == SMALL_JOBS || (j > SMALL_JOBS && j % 100 == 0) {
            p.hset("kiln:folder-parents", &folder, "").ignore();
            p.rpush("jobs", format!("folder_{folder}")).ignore();
        }
        let def = def.replacen("{", &format!("{{\"folder\":\"{folder}\","), 1);
        // The revision the put-job script records when the job is created.
        p.lpush(
            format!("kiln:job-revisions:{name}"),
            format!(r#"{{"revision":1,"by":"bench","at":"2026-12-02T00:00:00.000Z","definition":{def}}}"#),
        )
        .ignore();
        p.set(format!("job_{name}"), def).ignore();
        p.rpush(format!("folder_{folder}"), format!("job_{name}"))
            .ignore();
        p.hset("kiln:build-counters", &name, per_job).ignore();
        for n in (1..=per_job as u64).rev() {
            p.rpush(format!("job_{name}_recent"), n).ignore();
        }
        for n in 1..=per_job as u64 {
            p.set(format!("job_{name}_{n}"), sample_doc(&name, n))
                .ignore();
        }
        let _: () = p.query_async(&mut conn).await?;
    }
    Ok(())
}

/// Medians of `path` on two clusters, requests alternating between them so that the
/// machine's noise falls on both alike.
async fn latency_pair(
    a: &Cluster,
    b: &Cluster,
    path: &str,
    n: usize,
) -> anyhow::Result<(f64, f64)> {
    let (mut sa, mut sb) = (Samples::new(), Samples::new());
    for _ in 0..n {
        for (c, s) in [(a, &mut sa), (b, &mut sb)] {
            let t = Instant::now();
            let r = c.http.get(c.url(path)).bearer_auth(TOKEN).send().await?;
            anyhow::ensure!(r.status().is_success(), "{path}: {}", r.status());
            r.bytes().await?;
            s.push(t.elapsed());
        }
    }
    Ok((sa.pct(50.0), sb.pct(50.0)))
}

/// What the api reads from Redis for a page of `job`'s 50 newest builds: `LRANGE` of the
/// job's recent builds, then `MGET` of their documents. The baseline of figure 4's page
/// and figure 5's direct reads.
async fn page_reads<C: redis::aio::ConnectionLike + Send + Sync>(
    conn: &mut C,
    job: &str,
) -> redis::RedisResult<Vec<Option<String>>> {
    let numbers: Vec<u64> = conn.lrange(format!("job_{job}_recent"), 0, 49).await?;
    let keys: Vec<String> = numbers.iter().map(|n| format!("job_{job}_{n}")).collect();
    redis::cmd("MGET").arg(&keys).query_async(conn).await
}

/// The history page's reads sent straight to each cluster's Redis ([`page_reads`]),
/// alternating as the api requests do: how much of a growth with the total is Redis's own,
/// and so not the api's.
async fn redis_page_pair(
    a: &Cluster,
    b: &Cluster,
    job: &str,
    n: usize,
) -> anyhow::Result<(f64, f64)> {
    let (mut ca, mut cb) = (a.redis().await?, b.redis().await?);
    let (mut sa, mut sb) = (Samples::new(), Samples::new());
    for _ in 0..n {
        for (conn, s) in [(&mut ca, &mut sa), (&mut cb, &mut sb)] {
            let t = Instant::now();
            let docs = page_reads(&mut **conn, job).await?;
            anyhow::ensure!(
                docs.len() == 50 && docs.iter().all(Option::is_some),
                "job {job}: a page of 50 documents expected"
            );
            s.push(t.elapsed());
        }
    }
    Ok((sa.pct(50.0), sb.pct(50.0)))
}

/// How long a loaded Redis must have used no CPU before figure 5 times requests to it, and
/// the longest the figure waits for that.
const SETTLED_FOR: Duration = Duration::from_millis(500);
const SETTLE_MAX: Duration = Duration::from_secs(60);

/// Waits until `c`'s Redis has used no CPU for [`SETTLED_FOR`] (at most [`SETTLE_MAX`]);
/// returns how long it waited. Requests timed right after a million documents were loaded
/// made the large cluster look slower than the small one (history page 1.09–1.36×), while
/// the same reads sent to Redis directly a second later, and the api's after this wait, were
/// flat (1.00–1.05×); why is not established (docs/performance-history.md, session 14). A server
/// holding a million builds gathered them over months: the figure times it at rest. Without
/// `/proc` it does not wait.
async fn settle(c: &Cluster) -> anyhow::Result<Duration> {
    let pid: u32 = c.info("server", "process_id").await?;
    let t0 = Instant::now();
    let Some(mut used) = Cpu::of(pid).map(|c| c.own) else {
        return Ok(Duration::ZERO);
    };
    let mut quiet_since = Instant::now();
    while t0.elapsed() < SETTLE_MAX && quiet_since.elapsed() < SETTLED_FOR {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let now = Cpu::of(pid).map_or(used, |c| c.own);
        if now > used {
            used = now;
            quiet_since = Instant::now();
        }
    }
    Ok(t0.elapsed())
}

/// Jobs of the small history, all in folder `f0`; the large one adds jobs in other folders,
/// so both clusters answer the measured requests with the same content.
const SMALL_JOBS: usize = 10;

/// Figure 5: Memory per build document, and read latency with the full history loaded
/// against a second cluster holding 1,000 builds, measured alternately: the large one must
/// not be slower.
async fn scale(size: Size, report: &mut Report) -> anyhow::Result<()> {
    let small = Cluster::start().await?;
    load_history(&small, 0, SMALL_JOBS, size.scale_builds_per_job).await?;
    let big = Cluster::start().await?;
    let m0 = big.info::<f64>("memory", "used_memory").await?;
    load_history(&big, 0, size.scale_jobs, size.scale_builds_per_job).await?;
    let m1 = big.info::<f64>("memory", "used_memory").await?;
    let total = (size.scale_jobs * size.scale_builds_per_job) as f64;
    let settled = settle(&small).await?.max(settle(&big).await?);
    let (page_small, page_big) =
        latency_pair(&small, &big, "/api/v1/jobs/j5/builds?limit=50", 500).await?;
    let (folder_small, folder_big) = latency_pair(&small, &big, "/api/v1/folders/f0", 500).await?;
    let (redis_small, redis_big) = redis_page_pair(&small, &big, "j5", 500).await?;
    report.add(
        "redis_memory_per_build",
        (m1 - m0) / total,
        "bytes",
        f64::NAN,
        &format!(
            "{} jobs x {} builds; includes the job's list entries and definitions",
            size.scale_jobs, size.scale_builds_per_job
        ),
    );
    let note = format!(
        "p50 with {} builds; baseline: the same read from a cluster with {} builds, requests alternating, once both Redis servers had been idle for {:.1} s ({:.1} s after the load)",
        total as u64,
        SMALL_JOBS * size.scale_builds_per_job,
        SETTLED_FOR.as_secs_f64(),
        settled.as_secs_f64()
    );
    report.add(
        "history_page_latency_at_scale",
        page_big,
        "ms",
        page_small,
        &note,
    );
    report.add(
        "folder_listing_latency_at_scale",
        folder_big,
        "ms",
        folder_small,
        &note,
    );
    report.add(
        "history_page_redis_only_at_scale",
        redis_big,
        "ms",
        redis_small,
        &format!(
            "the history page's LRANGE + MGET sent straight to each cluster's Redis, alternating: {note}; the growth Redis itself shows"
        ),
    );
    Ok(())
}

/// Figure 7: BullMQ running the same `sh -c true` job through the same Redis, when installed.
async fn peers(c: &Cluster, size: Size, report: &mut Report) -> anyhow::Result<()> {
    let script = std::path::Path::new("crates/bench/peers/bullmq.mjs");
    if !std::path::Path::new("crates/bench/peers/node_modules/bullmq").exists() {
        println!("peers: BullMQ skipped (not installed: run `make bench-peers`)");
        return Ok(());
    }
    let out = tokio::process::Command::new("node")
        .arg(script)
        .arg(c.redis.url())
        .arg(size.trigger_builds.to_string())
        .arg(size.throughput_builds.to_string())
        .output()
        .await?;
    anyhow::ensure!(
        out.status.success(),
        "bullmq bench failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout)?;
    let note = "BullMQ, same Redis, processor spawns `sh -c true`";
    for (name, key, unit) in [
        ("bullmq_add_to_start_p50", "p50_ms", "ms"),
        ("bullmq_add_to_start_p99", "p99_ms", "ms"),
        ("bullmq_throughput_concurrency_4", "rate_c4", "builds/s"),
        ("bullmq_throughput_concurrency_16", "rate_c16", "builds/s"),
    ] {
        report.add(
            name,
            v[key].as_f64().unwrap_or(f64::NAN),
            unit,
            f64::NAN,
            note,
        );
    }
    Ok(())
}
