// End-to-end test of the edgechat Worker: runs it in workerd (wrangler's createTestHarness,
// 127.0.0.1 on a random port), serves a local "hibernate now" endpoint that evicts every
// ChatRoom object while keeping its sockets open, and runs the conformance suite against it,
// then the Worker's own checks (test/worker-rules.mjs). Then, once per identity mode
// (wrangler.toml's [env.e2e-auth-optional] and [env.e2e-auth-required]), a fresh Worker
// configured that way runs the suite's auth_* cases only (the other cases ran above; in
// required mode they could not even join). Last, a Worker whose key setting cannot work
// ([env.e2e-auth-misconfigured]) must answer room requests with core's 500 naming the
// setting, and still serve its page.
//
//   node test/e2e.mjs [extra conformance arguments, e.g. --only hibernation]
//
// With extra arguments only the first run happens, with them. Needs the Node of
// package.json's engines (checked first, by test/check-node.mjs) and the build tools on PATH
// (see ci.sh). Exits 1 if any run failed.

import "./check-node.mjs";
import { spawn } from "node:child_process";
import http from "node:http";
import path from "node:path";

const crateDir = path.resolve(import.meta.dirname, "..");
const repoDir = path.resolve(crateDir, "../..");
// The `[env.e2e*]` sections of wrangler.toml hold the test's secrets and admin token.
const ADMIN_TOKEN = "edgechat-e2e-admin-token";
const AUTH_SECRET = "edgechat-e2e-auth-secret, 32 bytes or more";

// Imported only after the Node check above, so an old Node gets that message, not a stack.
const { createTestHarness } = await import("wrangler");

// The [build] command runs in process.cwd(), not next to wrangler.toml.
process.chdir(crateDir);

/** Runs the conformance suite with `args` against a Worker of wrangler environment `env`. */
async function run(env, args, { workerRules }) {
  const server = createTestHarness({
    root: crateDir,
    workers: [{ configPath: "./wrangler.toml", env }],
  });
  let hibernations = 0;
  let evictions = 0;
  let hibernateServer;
  let status = 1;
  try {
    const { url } = await server.listen();
    const worker = server.getWorker();
    console.log(`worker [env.${env}] listening on ${url.origin}`);

    // POST here (with the admin token) evicts every ChatRoom; its WebSockets hibernate.
    hibernateServer = http.createServer(async (req, res) => {
      try {
        if (req.method !== "POST") {
          res.writeHead(405).end("Method not allowed");
          return;
        }
        if (req.headers.authorization !== `Bearer ${ADMIN_TOKEN}`) {
          res.writeHead(401).end("Unauthorized");
          return;
        }
        // Every object that exists (rooms, and also rate limiters and counters, whose state
        // must survive an eviction too); those not in memory right now are already evicted.
        let evicted = 0;
        let ids = [];
        for (const className of ["ChatRoom", "RateLimiter", "Counter"]) {
          const classIds = await worker.listDurableObjectIds(className);
          if (className === "ChatRoom") ids = classIds;
          for (const id of classIds) {
            try {
              await worker.evictDurableObject(className, { id, webSockets: "hibernate" });
              if (className === "ChatRoom") evicted += 1;
            } catch (error) {
              if (!/not currently running/.test(String(error?.message))) throw error;
            }
          }
        }
        hibernations += 1;
        evictions += evicted;
        res.writeHead(200, { "Content-Type": "text/plain" }).end(`evicted ${evicted} of ${ids.length} rooms\n`);
      } catch (error) {
        console.error("hibernate endpoint:", error);
        res.writeHead(500).end(String(error));
      }
    });
    await new Promise((resolve) => hibernateServer.listen(0, "127.0.0.1", resolve));
    const hibernateUrl = `http://127.0.0.1:${hibernateServer.address().port}/hibernate`;

    const cargoArgs = [
      "run", "--quiet", "-p", "edgechat-conformance", "--",
      "--base-url", url.origin,
      "--ip-header", "CF-Connecting-IP",
      "--admin-token", ADMIN_TOKEN,
      "--hibernate-url", hibernateUrl,
      ...args,
    ];
    console.log(`cargo ${cargoArgs.join(" ")}`);
    status = await new Promise((resolve) => {
      // The suite builds in the host workspace's target directory, not the Worker's.
      const childEnv = { ...process.env };
      delete childEnv.CARGO_TARGET_DIR;
      if (process.env.EDGECHAT_HOST_TARGET_DIR) childEnv.CARGO_TARGET_DIR = process.env.EDGECHAT_HOST_TARGET_DIR;
      const child = spawn("cargo", cargoArgs, { cwd: repoDir, stdio: "inherit", env: childEnv });
      child.on("exit", (code, signal) => resolve(code ?? (signal ? 1 : 0)));
    });
    if (workerRules) {
      // The rules only the Worker can be made to show (a failed write, an unreadable address).
      const { run: runWorkerRules } = await import("./worker-rules.mjs");
      if ((await runWorkerRules(url.origin)) > 0) status = 1;
    }
    console.log(`forced hibernations: ${hibernations} (${evictions} room evictions)`);
    // A room that is rebuilt while sockets are open was evicted with them hibernating: this
    // shows the evictions really dropped the objects' memory and the rooms came back.
    const logs = server
      .getLogs()
      .map((log) => String(log.message ?? log.msg ?? JSON.stringify(log)));
    // Tokens are never logged: a JWT's header always encodes to a text starting "eyJ".
    const leaks = logs.filter((text) => text.includes("eyJ"));
    if (leaks.length > 0) {
      console.error(`the Worker logged ${leaks.length} lines holding a token, e.g. ${leaks[0].slice(0, 80)}`);
      status = 1;
    }
    const rebuilds = logs
      .filter((text) => /room: rebuilt from \d+ stored messages and [1-9]\d* sockets/.test(text));
    console.log(`rooms rebuilt from storage and hibernated sockets: ${rebuilds.length}`);
    if (hibernations > 0 && rebuilds.length === 0) {
      console.error("forced hibernations never made a room rebuild itself");
      status = 1;
    }
  } catch (error) {
    console.error(error);
    server.debug?.();
    status = 1;
  } finally {
    hibernateServer?.close();
    await server.close();
  }
  return status;
}

/** A Worker with a secret too short to use: room requests get core's 500, never a crash. */
async function misconfigured() {
  const server = createTestHarness({
    root: crateDir,
    workers: [{ configPath: "./wrangler.toml", env: "e2e-auth-misconfigured" }],
  });
  const expected = "Server misconfigured: AUTH_HS256_SECRET: the HS256 secret must be at least 32 bytes.";
  let failures = 0;
  try {
    const { url } = await server.listen();
    const upgrade = { Upgrade: "websocket", Connection: "Upgrade", "Sec-WebSocket-Version": "13", "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==" };
    const checks = [
      ["upgrade", "/api/room/lobby/websocket", upgrade, 500, expected],
      ["history", "/api/room/lobby/history", {}, 500, expected],
      ["presence", "/api/room/lobby/presence", {}, 500, expected],
      ["health", "/healthz", {}, 200, "ok"],
    ];
    for (const [what, route, headers, status, body] of checks) {
      // node:http, not fetch: fetch refuses to send Upgrade and Connection headers.
      const [got, text] = await new Promise((resolve, reject) => {
        const req = http.get(new URL(route, url), { headers }, (res) => {
          let data = "";
          res.setEncoding("utf8");
          res.on("data", (chunk) => (data += chunk));
          res.on("end", () => resolve([res.statusCode, data.trim()]));
        });
        req.on("upgrade", (res, socket) => {
          socket.destroy();
          resolve([res.statusCode, ""]);
        });
        req.on("error", reject);
      });
      const ok = got === status && text === body;
      if (!ok) failures += 1;
      console.log(`${ok ? "ok  " : "FAILED"} misconfigured worker: ${what}: ${got} ${JSON.stringify(text)}`);
    }
  } catch (error) {
    console.error(error);
    failures += 1;
  } finally {
    await server.close();
  }
  return failures === 0 ? 0 : 1;
}

const extra = process.argv.slice(2);
let failed = false;
// Identity off (the default): every case, the auth_* ones expecting tokens to be ignored.
failed ||= (await run("e2e", extra, { workerRules: true })) !== 0;
if (extra.length === 0) {
  const auth = ["--only", "auth_", "--auth-hs256-secret", AUTH_SECRET];
  const optional = [
    ...auth, "--auth-mode", "optional",
    "--allowed-origins", "https://chat.example",
    "--auth-token-rooms", "auth-token-only",
  ];
  failed = (await run("e2e-auth-optional", optional, { workerRules: false })) !== 0 || failed;
  failed = (await run("e2e-auth-required", [...auth, "--auth-mode", "required"], { workerRules: false })) !== 0 || failed;
  failed = (await misconfigured()) !== 0 || failed;
}
process.exit(failed ? 1 : 0);
