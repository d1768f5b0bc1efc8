// BullMQ running the same `sh -c true` job through the same Redis, for Kiln's bench:
// add -> processor starting the command (p50/p99, sequential), and throughput of N jobs
// with concurrency 4 and 16. Prints one JSON object.
import { spawn, spawnSync } from "node:child_process";
import { Queue, Worker, QueueEvents } from "bullmq";

const [url, sequentialArg, bulkArg] = process.argv.slice(2);
const u = new URL(url);
const connection = { host: u.hostname, port: Number(u.port), maxRetriesPerRequest: null };
const sequential = Number(sequentialArg);
const bulk = Number(bulkArg);

function pct(a, p) {
  const s = [...a].sort((x, y) => x - y);
  return s[Math.max(0, Math.ceil((p / 100) * s.length) - 1)];
}

async function latency() {
  const name = "kiln-bench-latency";
  const queue = new Queue(name, { connection });
  const starts = new Map();
  const samples = [];
  const worker = new Worker(
    name,
    async (job) => {
      samples.push(performance.now() - starts.get(job.id));
      spawnSync("sh", ["-c", "true"]);
    },
    { connection, concurrency: 1 },
  );
  await worker.waitUntilReady();
  const events = new QueueEvents(name, { connection });
  await events.waitUntilReady();
  for (let i = 0; i < sequential; i++) {
    // The start time is recorded before the add: the processor can run before the add's
    // promise resolves, and would then find no start time for its job.
    const jobId = `latency-${i}`;
    starts.set(jobId, performance.now());
    // Kept until the queue is obliterated: waitUntilFinished fails on a job already removed.
    const job = await queue.add("true", {}, { jobId, removeOnComplete: false });
    await job.waitUntilFinished(events);
  }
  await worker.close();
  await events.close();
  await queue.obliterate({ force: true });
  await queue.close();
  if (samples.length !== sequential || !samples.every(Number.isFinite)) {
    throw new Error(`latency samples incomplete: ${samples.length} of ${sequential}`);
  }
  return { p50: pct(samples, 50), p99: pct(samples, 99) };
}

async function throughput(concurrency) {
  const name = `kiln-bench-tp-${concurrency}`;
  const queue = new Queue(name, { connection });
  let done = 0;
  let finish;
  const finished = new Promise((r) => (finish = r));
  const worker = new Worker(
    name,
    async () => {
      await new Promise((resolve) => spawn("sh", ["-c", "true"]).on("exit", resolve));
      done++;
      if (done === bulk) finish();
    },
    { connection, concurrency },
  );
  await worker.waitUntilReady();
  // End to end, as Kiln's figure: the clock runs from the first add until every job ran.
  const t0 = performance.now();
  await queue.addBulk(Array.from({ length: bulk }, () => ({ name: "true", data: {}, opts: { removeOnComplete: true } })));
  await finished;
  const rate = bulk / ((performance.now() - t0) / 1000);
  await worker.close();
  await queue.obliterate({ force: true });
  await queue.close();
  return rate;
}

const l = await latency();
const c4 = await throughput(4);
const c16 = await throughput(16);
console.log(JSON.stringify({ p50_ms: l.p50, p99_ms: l.p99, rate_c4: c4, rate_c16: c16 }));
process.exit(0);
