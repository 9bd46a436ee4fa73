// Test harness: a real `edgechat serve` on loopback, and bounded waits.
//
// EDGECHAT_BIN names the server binary (default <repo>/target/debug/edgechat, built by
// `cargo build -p edgechat-server`).

import { spawn } from "node:child_process";
import { createHmac } from "node:crypto";
import { existsSync, mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";

const here = dirname(fileURLToPath(import.meta.url));
export const BIN = process.env.EDGECHAT_BIN || resolve(here, "../../../target/debug/edgechat");
export const ADMIN_TOKEN = "test-admin-token";
export const WAIT_MS = 20_000;

/** A fresh data directory, removed by `cleanup`. */
export function dataDir() {
  const dir = mkdtempSync(join(tmpdir(), "edgechat-client-js-"));
  return { dir, db: join(dir, "chat.db"), cleanup: () => rmSync(dir, { recursive: true, force: true }) };
}

/**
 * Starts `edgechat serve` on `port` (0: any free one) and resolves once it printed its address.
 * A restart on the same port retries for a while, in case the old socket still holds it.
 * `args` are more flags for `serve` (e.g. the auth flags).
 */
export async function startServer({ db, port = 0, costMs = 1, graceMs = 600_000, args = [] }) {
  if (!existsSync(BIN)) throw new Error(`no edgechat binary at ${BIN} (cargo build -p edgechat-server)`);
  const deadline = Date.now() + WAIT_MS;
  for (;;) {
    try {
      return await startOnce({ db, port, costMs, graceMs, args });
    } catch (error) {
      if (port === 0 || Date.now() > deadline) throw error;
      await sleep(100);
    }
  }
}

function startOnce({ db, port, costMs, graceMs, args: extra }) {
  const args = [
    "serve", "--listen", `127.0.0.1:${port}`, "--data", db, "--admin-token", ADMIN_TOKEN,
    "--rate-limit-cost-ms", String(costMs), "--rate-limit-grace-ms", String(graceMs), ...extra,
  ];
  const child = spawn(BIN, args, { stdio: ["ignore", "pipe", "pipe"], env: { ...process.env, RUST_LOG: "warn" } });
  let output = "";
  const exited = new Promise((ok) => child.once("exit", (code, signal) => ok({ code, signal })));
  return new Promise((ok, fail) => {
    const timer = setTimeout(() => { child.kill("SIGKILL"); fail(new Error(`edgechat did not start:\n${output}`)); }, WAIT_MS);
    child.stderr.on("data", (d) => { output += d; });
    child.stdout.on("data", (d) => {
      output += d;
      const found = /edgechat listening on (http:\/\/\S+)/.exec(output);
      if (!found) return;
      clearTimeout(timer);
      const url = found[1];
      ok({ url, port: Number(new URL(url).port), child, exited, stop: (signal = "SIGTERM") => stop(child, exited, signal) });
    });
    exited.then((how) => { clearTimeout(timer); fail(new Error(`edgechat exited (${JSON.stringify(how)}):\n${output}`)); });
  });
}

async function stop(child, exited, signal) {
  if (child.exitCode !== null || child.signalCode !== null) return;
  child.kill(signal);
  const done = await within(exited, "edgechat to exit", 10_000).catch(() => null);
  if (!done) { child.kill("SIGKILL"); await exited; }
}

export function sleep(ms) {
  return new Promise((ok) => setTimeout(ok, ms));
}

/** Polls `predicate` until it holds; fails after `ms` with `what`. */
export async function waitFor(predicate, what, ms = WAIT_MS) {
  const deadline = Date.now() + ms;
  while (!predicate()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await sleep(20);
  }
}

/** Resolves with `promise`, or fails after `ms` with `what`. */
export function within(promise, what, ms = WAIT_MS) {
  let timer;
  const timeout = new Promise((_, fail) => { timer = setTimeout(() => fail(new Error(`timed out: ${what}`)), ms); });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

/** Publishes `message` into `room` through the admin HTTP endpoint; resolves with the body. */
export async function publish(url, room, message, name = "bot") {
  const response = await fetch(`${url}/api/room/${encodeURIComponent(room)}/messages`, {
    method: "POST",
    headers: { authorization: `Bearer ${ADMIN_TOKEN}`, "content-type": "application/json" },
    body: JSON.stringify({ name, message }),
  });
  const body = await response.text();
  if (!response.ok) throw new Error(`publish failed: ${response.status} ${body}`);
  return body;
}

/** A unique room name (at most 32 characters). */
export function roomName(prefix) {
  return `${prefix}-${Date.now().toString(36)}-${Math.floor(Math.random() * 1e6).toString(36)}`.slice(0, 32);
}

/** Records what a client emits. */
export function record(client) {
  const seen = { messages: [], states: [], ready: [], gaps: [], errors: [], ratelimited: [], joins: [], quits: [], reconnects: [] };
  client.on("message", (m) => seen.messages.push(m));
  client.on("state", (s) => seen.states.push(s.state));
  client.on("ready", (r) => seen.ready.push(r));
  client.on("gap", (g) => seen.gaps.push(g));
  client.on("error", (e) => seen.errors.push(e));
  client.on("ratelimited", (r) => seen.ratelimited.push(r));
  client.on("join", (j) => seen.joins.push(j.name));
  client.on("quit", (q) => seen.quits.push(q.name));
  client.on("reconnect", (r) => seen.reconnects.push(r));
  return seen;
}

/**
 * An HS256 JWT over `claims`, signed with `secret` (node:crypto; what an application that
 * shares a secret with edgechat does).
 */
export function hs256Token(secret, claims) {
  const part = (value) => Buffer.from(JSON.stringify(value)).toString("base64url");
  const body = `${part({ alg: "HS256", typ: "JWT" })}.${part(claims)}`;
  const signature = createHmac("sha256", secret).update(body).digest("base64url");
  return `${body}.${signature}`;
}
