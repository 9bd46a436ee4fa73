// Side-by-side benchmark: edgechat-worker and the Cloudflare workers-chat-demo, both under
// one workerd (wrangler's createTestHarness on 127.0.0.1), both rate limiters set never to
// make anyone wait. Run it with bench/run.sh, which builds the tools first:
//
//   bash bench/run.sh <workers-chat-demo checkout> [--seconds 8] [--rounds 2]
//                     [--markdown ../../BENCHMARKS.md]
//
// The demo's code is not part of this repository: the script copies the checkout's
// src/chat.mjs and src/chat.html into a temporary folder, changes its limiter's cost from
// 5 s to 0 (as RATE_LIMIT_COST_MS = 0 does for edgechat in wrangler.toml's [env.bench]),
// and gives it a route `demo.bench/*`; edgechat is the primary worker. A limiter that never
// waits is not asked at all by edgechat (PROTOCOL.md), so a third target, edgechat with
// [env.bench-asked] (cost 1 ms: asked about every frame, never waiting at these rates) at
// `asked.bench/*`, shows what asking costs.
//
// Each scenario is one room: `receivers` joined sockets that only listen, plus `senders`
// joined sockets that each send a message, wait for their own echo, and send the next (a
// rejected frame is retried after 1 ms). Targets rotate within each round, so all see the
// same machine load. Reported per target and scenario:
// - accepted msg/s: echoes the senders got, per second of the measured window;
// - CPU ms/msg: CPU time of the workerd processes (user + system, all threads, from
//   /proc/<pid>/stat) during the window, per accepted message; it includes the WebSocket
//   fan-out to every socket, the limiter objects and storage;
// - p50/p99: echo latency (send to own echo) in ms.

import "../test/check-node.mjs";
import { execFileSync } from "node:child_process";
import { copyFileSync, mkdtempSync, readFileSync, readdirSync, rmSync, writeFileSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import WebSocket from "ws";

const crateDir = path.resolve(import.meta.dirname, "..");
const { createTestHarness } = await import("wrangler");

const SCENARIOS = [
  { name: "1 room × 20 receivers, 1 sender", receivers: 20, senders: 1 },
  { name: "1 room × 20 receivers, 4 senders", receivers: 20, senders: 4 },
  { name: "1 room × 20 receivers, 16 senders", receivers: 20, senders: 16 },
  { name: "1 room × 200 receivers, 1 sender", receivers: 200, senders: 1 },
];
const ECHO_TIMEOUT_MS = 5_000;
const CONNECT_TIMEOUT_MS = 15_000;
const OPEN_PARALLEL = 20;

function parseArgs(argv) {
  const options = { seconds: 8, rounds: 2, markdown: null, demo: null };
  for (let i = 0; i < argv.length; i += 1) {
    const arg = argv[i];
    if (arg === "--seconds") options.seconds = Number(argv[++i]);
    else if (arg === "--rounds") options.rounds = Number(argv[++i]);
    else if (arg === "--markdown") options.markdown = path.resolve(argv[++i]);
    else if (!arg.startsWith("--") && options.demo === null) options.demo = path.resolve(arg);
    else throw new Error(`unknown argument ${arg}`);
  }
  if (!options.demo) {
    throw new Error("usage: bench/run.sh <workers-chat-demo checkout> [--seconds N] [--rounds N] [--markdown FILE]");
  }
  if (!(options.seconds > 0 && options.seconds <= 60 && options.rounds >= 1 && options.rounds <= 10)) {
    throw new Error("--seconds must be in (0, 60] and --rounds in [1, 10]");
  }
  return options;
}

/** Copies the demo's worker into a temporary folder, limiter cost 0, with a route. */
function prepareDemo(demoDir) {
  const dir = mkdtempSync(path.join(os.tmpdir(), "edgechat-bench-demo-"));
  for (const file of ["chat.mjs", "chat.html"]) {
    copyFileSync(path.join(demoDir, "src", file), path.join(dir, file));
  }
  const chat = readFileSync(path.join(dir, "chat.mjs"), "utf8");
  const costLine = "this.nextAllowedTime += 5;";
  if (chat.split(costLine).length !== 2) {
    throw new Error(`the demo's chat.mjs does not contain "${costLine}" exactly once`);
  }
  writeFileSync(path.join(dir, "chat.mjs"), chat.replace(costLine, "this.nextAllowedTime += 0;"));
  writeFileSync(
    path.join(dir, "wrangler.toml"),
    `name = "bench-demo"
main = "chat.mjs"
compatibility_date = "2024-01-01"
routes = [{ pattern = "demo.bench/*", zone_name = "demo.bench" }]

[[rules]]
type = "Data"
globs = ["**/*.html"]
fallthrough = false

[[durable_objects.bindings]]
name = "rooms"
class_name = "ChatRoom"

[[durable_objects.bindings]]
name = "limiters"
class_name = "RateLimiter"

[[migrations]]
tag = "v1"
new_sqlite_classes = ["ChatRoom", "RateLimiter"]
`,
  );
  return dir;
}

/** The pids of the workerd processes that this script started (descendants of it). */
function findWorkerd() {
  const parents = new Map();
  const names = new Map();
  for (const entry of readdirSync("/proc")) {
    if (!/^\d+$/.test(entry)) continue;
    try {
      const stat = readFileSync(`/proc/${entry}/stat`, "utf8");
      const close = stat.lastIndexOf(")");
      names.set(Number(entry), stat.slice(stat.indexOf("(") + 1, close));
      parents.set(Number(entry), Number(stat.slice(close + 2).split(" ")[1]));
    } catch {
      // The process ended while we looked.
    }
  }
  const mine = [...names].filter(([pid, name]) => {
    if (name !== "workerd") return false;
    for (let p = parents.get(pid); p; p = parents.get(p)) if (p === process.pid) return true;
    return false;
  });
  if (mine.length === 0) throw new Error("no workerd below this process");
  return mine.map(([pid]) => pid);
}

const TICKS_PER_SECOND = Number(execFileSync("getconf", ["CLK_TCK"], { encoding: "utf8" }).trim());

/** CPU time of the processes `pids` so far, in ms (user + system, all threads). */
function cpuMs(pids) {
  let ticks = 0;
  for (const pid of pids) {
    const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
    const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
    ticks += Number(fields[11]) + Number(fields[12]);
  }
  return (ticks * 1000) / TICKS_PER_SECOND;
}

/** A joined chat socket that queues the frames it receives. */
class Client {
  constructor(ws, name) {
    this.ws = ws;
    this.name = name;
    this.waiter = null;
    this.received = 0;
    ws.on("message", (data) => {
      this.received += 1;
      if (!this.waiter) return;
      let frame;
      try {
        frame = JSON.parse(String(data));
      } catch {
        return;
      }
      if (this.waiter.matches(frame)) {
        const { resolve } = this.waiter;
        this.waiter = null;
        resolve(frame);
      }
    });
  }

  /** The next frame that satisfies `matches`, or null after `timeoutMs`. */
  next(matches, timeoutMs) {
    return new Promise((resolve) => {
      const timer = setTimeout(() => {
        this.waiter = null;
        resolve(null);
      }, timeoutMs);
      this.waiter = {
        matches,
        resolve: (frame) => {
          clearTimeout(timer);
          resolve(frame);
        },
      };
    });
  }
}

/** Opens a socket to `room` as `name` from `ip`, joins, and waits for `ready`. */
async function join(target, room, name, ip) {
  const ws = new WebSocket(`ws://127.0.0.1:${target.port}/api/room/${room}/websocket`, {
    headers: { "CF-Connecting-IP": ip, ...(target.host ? { Host: target.host } : {}) },
    perMessageDeflate: false,
  });
  const client = new Client(ws, name);
  await new Promise((resolve, reject) => {
    ws.once("open", resolve);
    ws.once("error", reject);
  });
  const ready = client.next((frame) => frame.ready !== undefined || frame.error !== undefined, CONNECT_TIMEOUT_MS);
  ws.send(JSON.stringify({ name }));
  const frame = await ready;
  if (!frame || frame.error !== undefined) {
    throw new Error(`${target.name}: ${name} could not join ${room}: ${JSON.stringify(frame)}`);
  }
  return client;
}

async function joinAll(target, room, prefix, count, ipBase) {
  const clients = [];
  for (let start = 0; start < count; start += OPEN_PARALLEL) {
    const batch = [];
    for (let i = start; i < Math.min(count, start + OPEN_PARALLEL); i += 1) {
      batch.push(join(target, room, `${prefix}${i}`, `${ipBase}.${i >> 8}.${i & 255}`));
    }
    clients.push(...(await Promise.all(batch)));
  }
  return clients;
}

/** Sends, waits for the own echo, repeats until `deadline`; records into `stats`. */
async function sendLoop(client, deadline, stats) {
  for (let seq = 0; performance.now() < deadline; seq += 1) {
    const message = `${client.name} ${seq}`;
    const started = performance.now();
    const reply = client.next(
      (frame) => frame.error !== undefined || (frame.name === client.name && frame.message === message),
      ECHO_TIMEOUT_MS,
    );
    client.ws.send(JSON.stringify({ message }));
    const frame = await reply;
    if (frame === null) {
      stats.lost += 1;
    } else if (frame.error !== undefined) {
      stats.rejected += 1;
      await new Promise((resolve) => setTimeout(resolve, 1));
    } else {
      stats.accepted += 1;
      stats.latencies.push(performance.now() - started);
    }
  }
}

let runNumber = 0;

async function runScenario(target, scenario, seconds, workerd) {
  runNumber += 1;
  const room = `b${Date.now().toString(36)}${runNumber}`;
  const ipBase = `10.${runNumber % 250}`;
  const receivers = await joinAll(target, room, "r", scenario.receivers, ipBase);
  const senders = await joinAll(target, room, "s", scenario.senders, `11.${runNumber % 250}`);
  const stats = { accepted: 0, rejected: 0, lost: 0, latencies: [], cpuMs: 0, seconds };
  const cpuBefore = cpuMs(workerd);
  const started = performance.now();
  await Promise.all(senders.map((client) => sendLoop(client, started + seconds * 1000, stats)));
  stats.seconds = (performance.now() - started) / 1000;
  stats.cpuMs = cpuMs(workerd) - cpuBefore;
  stats.delivered = receivers.reduce((sum, client) => sum + client.received, 0);
  for (const client of [...receivers, ...senders]) client.ws.close(1000);
  // Let the quits drain before the next run.
  await new Promise((resolve) => setTimeout(resolve, 1_000));
  return stats;
}

function percentile(sorted, p) {
  if (sorted.length === 0) return NaN;
  return sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))];
}

function merge(runs) {
  const total = { accepted: 0, rejected: 0, lost: 0, latencies: [], cpuMs: 0, seconds: 0 };
  for (const run of runs) {
    for (const key of ["accepted", "rejected", "lost", "cpuMs", "seconds"]) total[key] += run[key];
    total.latencies.push(...run.latencies);
  }
  total.latencies.sort((a, b) => a - b);
  return total;
}

function table(results, targets) {
  const lines = [
    "| scenario | target | accepted msg/s | rejected/s | workerd CPU ms/msg | p50 echo ms | p99 echo ms |",
    "|---|---|---:|---:|---:|---:|---:|",
  ];
  for (const scenario of SCENARIOS) {
    for (const target of targets) {
      const total = merge(results.get(`${scenario.name}/${target.name}`));
      const perMessage = total.accepted > 0 ? (total.cpuMs / total.accepted).toFixed(3) : "–";
      lines.push(
        `| ${scenario.name} | ${target.name} | ${(total.accepted / total.seconds).toFixed(0)} | ` +
          `${(total.rejected / total.seconds).toFixed(0)} | ${perMessage} | ` +
          `${percentile(total.latencies, 50).toFixed(2)} | ${percentile(total.latencies, 99).toFixed(2)} |`,
      );
    }
  }
  return lines.join("\n");
}

function writeMarkdown(file, body) {
  const start = "<!-- worker-bench:start -->";
  const end = "<!-- worker-bench:end -->";
  const text = readFileSync(file, "utf8");
  const section = `${start}\n${body}\n${end}`;
  const from = text.indexOf(start);
  const to = text.indexOf(end);
  const next = from >= 0 && to > from ? text.slice(0, from) + section + text.slice(to + end.length) : `${text.trimEnd()}\n\n${section}\n`;
  writeFileSync(file, next);
}

const options = parseArgs(process.argv.slice(2));
const demoDir = prepareDemo(options.demo);
process.chdir(crateDir); // the [build] command runs in the current directory
const server = createTestHarness({
  root: crateDir,
  workers: [
    { configPath: path.join(crateDir, "wrangler.toml"), env: "bench" },
    { configPath: path.join(demoDir, "wrangler.toml") },
    { configPath: path.join(crateDir, "wrangler.toml"), env: "bench-asked" },
  ],
});
let status = 1;
try {
  const { url } = await server.listen();
  const port = Number(url.port);
  const workerd = findWorkerd();
  const targets = [
    { name: "edgechat-worker", port, host: null },
    { name: "workers-chat-demo", port, host: "demo.bench" },
    { name: "edgechat-worker, limiter asked", port, host: "asked.bench" },
  ];
  const load = [os.loadavg()[0]];
  const results = new Map();
  // A short warm-up of both (compiles, first objects), not measured.
  for (const target of targets) await runScenario(target, SCENARIOS[0], 1, workerd);
  for (let round = 0; round < options.rounds; round += 1) {
    for (const scenario of SCENARIOS) {
      // Rotated each round, so that no target always runs right after another.
      const order = targets.map((_, i) => targets[(i + round) % targets.length]);
      for (const target of order) {
        const stats = await runScenario(target, scenario, options.seconds, workerd);
        const key = `${scenario.name}/${target.name}`;
        results.set(key, [...(results.get(key) ?? []), stats]);
        console.log(
          `round ${round + 1} ${key}: ${stats.accepted} accepted, ${stats.rejected} rejected, ` +
            `${stats.lost} lost, ${stats.cpuMs.toFixed(0)} ms CPU, ${stats.delivered} frames to receivers`,
        );
      }
    }
    load.push(os.loadavg()[0]);
  }
  const lost = [...results.values()].flat().reduce((sum, run) => sum + run.lost, 0);
  const body = [
    table(results, targets),
    "",
    `${options.rounds} rounds × ${options.seconds} s per scenario and target, targets interleaved; ` +
      `1-minute load average during the run: ${load.map((l) => l.toFixed(1)).join(" → ")} ` +
      `on ${os.cpus().length} CPUs; echoes lost (no answer in ${ECHO_TIMEOUT_MS / 1000} s): ${lost}; ` +
      `Node ${process.versions.node}, ${new Date().toISOString().slice(0, 16)}Z.`,
  ].join("\n");
  console.log(`\n${body}\n`);
  if (options.markdown) {
    writeMarkdown(options.markdown, body);
    console.log(`table written into ${options.markdown}`);
  }
  status = 0;
} catch (error) {
  console.error(error);
} finally {
  await server.close();
  rmSync(demoDir, { recursive: true, force: true });
}
process.exit(status);
