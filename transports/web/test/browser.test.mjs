// Browser test of the chat page: two users in two tabs of headless Debian Chromium, driven
// by playwright-core, against a real `edgechat serve` on a free loopback port.
//
//   cd transports/web/test && npm install && node --test
//
// EDGECHAT_BIN names the server binary (default <repo>/target/debug/edgechat, built by
// `cargo build -p edgechat-server`); CHROMIUM the browser (default /usr/bin/chromium).
// SCREENSHOT_DIR (default /tmp) receives edgechat-browser-*.png.

import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { mkdtempSync, rmSync, existsSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve, dirname } from "node:path";
import { createServer } from "node:net";
import { fileURLToPath } from "node:url";
import { chromium } from "playwright-core";
import { newTab } from "./tab.mjs";

const here = dirname(fileURLToPath(import.meta.url));
const BIN = process.env.EDGECHAT_BIN || resolve(here, "../../../target/debug/edgechat");
const CHROMIUM = process.env.CHROMIUM || "/usr/bin/chromium";
const SHOTS = process.env.SCREENSHOT_DIR || "/tmp";
const TIMEOUT = 15_000;

let dataDir;
let port;
let server;
let browser;

function freePort() {
  return new Promise((ok, fail) => {
    const probe = createServer();
    probe.once("error", fail);
    probe.listen(0, "127.0.0.1", () => {
      const { port } = probe.address();
      probe.close(() => ok(port));
    });
  });
}

async function startServer() {
  // Both tabs come from 127.0.0.1, so they share one rate limiter: relax it for this test.
  const args = [
    "serve",
    "--listen", `127.0.0.1:${port}`,
    "--data", join(dataDir, "db"),
    "--rate-limit-cost-ms", "1",
    "--rate-limit-grace-ms", "60000",
  ];
  const child = spawn(BIN, args, { stdio: ["ignore", "pipe", "pipe"], env: { ...process.env, RUST_LOG: "warn" } });
  let output = "";
  child.stdout.on("data", (d) => { output += d; });
  child.stderr.on("data", (d) => { output += d; });
  const exited = new Promise((ok) => child.once("exit", (code, signal) => ok({ code, signal })));
  const deadline = Date.now() + TIMEOUT;
  for (;;) {
    const early = await Promise.race([exited, new Promise((ok) => setTimeout(() => ok(null), 100))]);
    if (early) throw new Error(`edgechat exited early (${JSON.stringify(early)}):\n${output}`);
    try {
      const response = await fetch(`http://127.0.0.1:${port}/healthz`);
      if (response.ok) break;
    } catch { /* not listening yet */ }
    if (Date.now() > deadline) throw new Error(`edgechat did not become healthy:\n${output}`);
  }
  return { child, exited, output: () => output };
}

async function stopServer(s) {
  if (!s || s.child.exitCode !== null) return;
  s.child.kill("SIGTERM");
  const stopped = await Promise.race([s.exited, new Promise((ok) => setTimeout(() => ok(null), 5000))]);
  if (!stopped) { s.child.kill("SIGKILL"); await s.exited; }
}

before(async () => {
  assert.ok(existsSync(BIN), `no edgechat binary at ${BIN} (cargo build -p edgechat-server, or set EDGECHAT_BIN)`);
  assert.ok(existsSync(CHROMIUM), `no Chromium at ${CHROMIUM} (apt-get install chromium, or set CHROMIUM)`);
  dataDir = mkdtempSync(join(tmpdir(), "edgechat-browser-"));
  port = await freePort();
  server = await startServer();
  browser = await chromium.launch({
    executablePath: CHROMIUM,
    args: ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
      "--disable-sync", "--no-first-run", "--disable-quic"],
  });
});

after(async () => {
  await browser?.close();
  await stopServer(server);
  if (dataDir) rmSync(dataDir, { recursive: true, force: true });
});

/** Opens the page for `name` in its own browser context and joins `room` through the form. */
async function openUser(name, room) {
  const { context, page, problems } = await newTab(browser);
  await page.goto(`http://127.0.0.1:${port}/#${room}`);
  await page.getByLabel("Your name", { exact: true }).fill(name);
  assert.equal(await page.getByLabel("Room", { exact: true }).inputValue(), room, "the room comes from the URL hash");
  await page.getByRole("button", { name: "Join room" }).click();
  await waitLive(page);
  return { name, context, page, problems };
}

/** The policy violations the page has seen since it was loaded. */
async function cspViolations(page) {
  return page.evaluate(() => window.cspViolations);
}

/** Errors except the browser's own reports of sockets cut by a server restart. */
function scriptProblems(user) {
  return user.problems.filter((p) => !/^WebSocket connection to .* failed/.test(p));
}

async function waitLive(page) {
  await page.locator('#status[data-state="live"]').waitFor({ timeout: TIMEOUT });
}

/** The chat messages a page shows, in order: [{id, name, text}]. */
async function shown(page) {
  return page.$$eval("#messages li.msg", (items) => items.map((li) => ({
    id: Number(li.dataset.id),
    name: li.querySelector(".who").textContent,
    text: li.querySelector(".text").textContent,
  })));
}

async function say(user, text) {
  await user.page.getByRole("textbox", { name: "Message" }).fill(text);
  await user.page.getByRole("button", { name: "Send" }).click();
  await waitForText(user.page, text);
}

async function waitForText(page, text) {
  await page.locator("#messages li.msg .text", { hasText: text }).first().waitFor({ timeout: TIMEOUT });
}

async function roster(page) {
  return (await page.$$eval("#roster li", (items) => items.map((li) => li.title))).sort();
}

function assertExactlyOnce(list, texts, who) {
  const ids = list.map((m) => m.id);
  assert.equal(new Set(ids).size, ids.length, `${who}: a message is shown twice: ${JSON.stringify(list)}`);
  const sorted = [...ids].sort((a, b) => a - b);
  assert.deepEqual(ids, sorted, `${who}: messages out of order`);
  assert.deepEqual(list.map((m) => m.text), texts, `${who}: expected exactly these messages, in order`);
}

test("the page and its scripts come with their content types and the page's policy", async () => {
  const page = await fetch(`http://127.0.0.1:${port}/`);
  assert.equal(page.status, 200);
  const csp = page.headers.get("content-security-policy") ?? "";
  assert.match(csp, /(^|; )script-src 'self'(;|$)/, `GET / has a CSP allowing only its own scripts: ${csp}`);
  assert.match(csp, /frame-ancestors 'none'/);
  assert.doesNotMatch(csp, /unsafe-inline|unsafe-eval/);
  assert.equal(page.headers.get("x-content-type-options"), "nosniff");
  const html = await page.text();
  assert.doesNotMatch(html, /<script(?![^>]*\bsrc=)[^>]*>/i, "no inline script");
  assert.doesNotMatch(html, /<style|\sstyle=|\son[a-z]+=/i, "no inline style or event handler");
  for (const [path, type, needle] of [
    ["/edgechat.js", "text/javascript;charset=UTF-8", "export function connect"],
    ["/page.js", "text/javascript;charset=UTF-8", 'from "./edgechat.js"'],
    ["/page.css", "text/css;charset=UTF-8", ".msg"],
  ]) {
    const response = await fetch(`http://127.0.0.1:${port}${path}`);
    assert.equal(response.status, 200, path);
    assert.equal(response.headers.get("content-type"), type, path);
    assert.ok((await response.text()).includes(needle), `${path} is the expected file`);
  }
});

test("two users chat; reloads and a server restart lose and double nothing", { timeout: 120_000 }, async () => {
  const room = `browser-${Date.now().toString(36)}`;
  const ada = await openUser("Ada", room);
  const bob = await openUser("Bob", room);
  await ada.page.waitForFunction(() => document.querySelectorAll("#roster li").length === 2, null, { timeout: TIMEOUT });
  assert.deepEqual(await roster(ada.page), ["Ada", "Bob"]);
  assert.deepEqual(await roster(bob.page), ["Ada", "Bob"]);

  const texts = [];
  const send = async (user, text) => { texts.push(text); await say(user, text); };
  await send(ada, "Hello Bob! 👋");
  await send(bob, "Hi Ada — שלום, <b>not bold</b>");
  await send(ada, "How are things?");
  await waitForText(bob.page, "How are things?");
  await waitForText(ada.page, "not bold");
  assertExactlyOnce(await shown(ada.page), texts, "Ada");
  assertExactlyOnce(await shown(bob.page), texts, "Bob");
  assert.equal(await bob.page.locator("#messages b").count(), 0, "message text is never parsed as HTML");

  // Bob reloads while Ada keeps talking: the page rejoins by itself (name remembered, room
  // from the hash) and shows everything once.
  const reloading = bob.page.reload();
  await send(ada, "Sent while Bob reloads");
  await reloading;
  await waitLive(bob.page);
  await waitForText(bob.page, "Sent while Bob reloads");
  assertExactlyOnce(await shown(bob.page), texts, "Bob after reload");

  // Bob goes away for a while; what Ada says meanwhile appears once when he is back.
  await bob.page.goto("about:blank");
  await ada.page.waitForFunction(() => document.querySelectorAll("#roster li").length === 1, null, { timeout: TIMEOUT });
  await send(ada, "Bob, you missed this");
  await send(ada, "…and this");
  await bob.page.goBack();
  await waitLive(bob.page);
  await waitForText(bob.page, "…and this");
  assertExactlyOnce(await shown(bob.page), texts, "Bob after coming back");

  // The server restarts under both tabs: they reconnect on their own with `since`, and
  // nothing is replayed twice.
  await stopServer(server);
  await ada.page.locator('#status:not([data-state="live"])').waitFor({ timeout: TIMEOUT });
  server = await startServer();
  await waitLive(ada.page);
  await waitLive(bob.page);
  await ada.page.locator("#messages li.note", { hasText: "Reconnected" }).first().waitFor({ timeout: TIMEOUT });
  await send(bob, "Back after the restart");
  await waitForText(ada.page, "Back after the restart");
  assertExactlyOnce(await shown(ada.page), texts, "Ada after the restart");
  assertExactlyOnce(await shown(bob.page), texts, "Bob after the restart");

  await ada.page.screenshot({ path: join(SHOTS, "edgechat-browser-ada.png"), animations: "disabled" });
  await bob.page.setViewportSize({ width: 390, height: 760 });
  await bob.page.screenshot({ path: join(SHOTS, "edgechat-browser-bob-narrow.png"), animations: "disabled" });

  // Bob leaves: back to the form, not connected, and Ada sees him go.
  await bob.page.setViewportSize({ width: 1000, height: 700 });
  await bob.page.getByRole("button", { name: "Leave" }).click();
  await bob.page.getByRole("button", { name: "Join room" }).waitFor({ timeout: TIMEOUT });
  assert.equal(await bob.page.locator("#status").getAttribute("data-state"), "idle");
  await ada.page.locator("#messages li.note", { hasText: "Bob left" }).last().waitFor({ timeout: TIMEOUT });

  assert.deepEqual(scriptProblems(ada), [], "no script errors in Ada's tab");
  assert.deepEqual(scriptProblems(bob), [], "no script errors in Bob's tab");
  assert.deepEqual(await cspViolations(ada.page), [], "no policy violations in Ada's tab");
  assert.deepEqual(await cspViolations(bob.page), [], "no policy violations in Bob's tab");
  await ada.context.close();
  await bob.context.close();
});
