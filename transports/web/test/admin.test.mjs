// Browser test of the admin page and of what moderation looks like on the chat page: Ada and
// Bob chat in two tabs, an admin in a third deletes and edits Ada's messages, sets the topic,
// kicks Bob and bans him; each tab shows what it should. Headless Debian Chromium driven by
// playwright-core against a real `edgechat serve --admin-token` on a free loopback port.
//
// EDGECHAT_BIN, CHROMIUM and SCREENSHOT_DIR as in browser.test.mjs; the screenshots are
// edgechat-admin-*.png.

import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { mkdtempSync, rmSync, existsSync, writeFileSync } from "node:fs";
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
const ADMIN_TOKEN = "admin-test-token-5f2c";

let dataDir;
let base;
let server;
let browser;
/** Servers started by a test of their own, stopped at the end. */
const extraServers = [];

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

before(async () => {
  assert.ok(existsSync(BIN), `no edgechat binary at ${BIN} (cargo build -p edgechat-server, or set EDGECHAT_BIN)`);
  assert.ok(existsSync(CHROMIUM), `no Chromium at ${CHROMIUM} (apt-get install chromium, or set CHROMIUM)`);
  dataDir = mkdtempSync(join(tmpdir(), "edgechat-admin-"));
  server = await startServer("db", []);
  base = server.base;
  browser = await chromium.launch({
    executablePath: CHROMIUM,
    args: ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
      "--disable-sync", "--no-first-run", "--disable-quic"],
  });
});

after(async () => {
  await browser?.close();
  for (const s of [server, ...extraServers]) {
    if (!s || s.child.exitCode !== null) continue;
    s.child.kill("SIGTERM");
    const stopped = await Promise.race([s.exited, new Promise((ok) => setTimeout(() => ok(null), 5000))]);
    if (!stopped) { s.child.kill("SIGKILL"); await s.exited; }
  }
  if (dataDir) rmSync(dataDir, { recursive: true, force: true });
});

/** `edgechat serve` with the admin token and `extra` flags on a free port, once healthy. */
async function startServer(db, extra) {
  const port = await freePort();
  // All tabs come from 127.0.0.1, so they share one rate limiter: relax it for this test.
  const args = ["serve", "--listen", `127.0.0.1:${port}`, "--data", join(dataDir, db), "--admin-token", ADMIN_TOKEN,
    "--rate-limit-cost-ms", "1", "--rate-limit-grace-ms", "60000", ...extra];
  const child = spawn(BIN, args, { stdio: ["ignore", "pipe", "pipe"], env: { ...process.env, RUST_LOG: "warn" } });
  let output = "";
  child.stdout.on("data", (d) => { output += d; });
  child.stderr.on("data", (d) => { output += d; });
  const exited = new Promise((ok) => child.once("exit", (code, signal) => ok({ code, signal })));
  const started = { child, exited, base: `http://127.0.0.1:${port}` };
  const deadline = Date.now() + TIMEOUT;
  for (;;) {
    const early = await Promise.race([exited, new Promise((ok) => setTimeout(() => ok(null), 100))]);
    if (early) throw new Error(`edgechat exited early (${JSON.stringify(early)}):\n${output}`);
    try { if ((await fetch(`${started.base}/healthz`)).ok) return started; } catch { /* not listening yet */ }
    if (Date.now() > deadline) throw new Error(`edgechat did not become healthy:\n${output}`);
  }
}

async function shot(page, name) {
  await page.screenshot({ path: join(SHOTS, `edgechat-admin-${name}.png`), fullPage: true });
}

/** Opens the chat page for `name` and joins `room` through the form. */
async function openUser(name, room) {
  const tab = await newTab(browser);
  await tab.page.goto(`${base}/#${room}`);
  await joinRoom(tab.page, name);
  return { name, ...tab };
}

async function joinRoom(page, name) {
  await page.getByLabel("Your name", { exact: true }).fill(name);
  await page.getByRole("button", { name: "Join room" }).click();
  await page.locator('#status[data-state="live"]').waitFor({ timeout: TIMEOUT });
}

async function say(user, text) {
  await user.page.getByRole("textbox", { name: "Message" }).fill(text);
  await user.page.getByRole("button", { name: "Send" }).click();
  await user.page.locator("#messages li.msg .text", { hasText: text }).first().waitFor({ timeout: TIMEOUT });
}

/** The chat messages a page shows: [{id, text, edited, deleted}]. */
async function shown(page) {
  return page.$$eval("#messages li.msg", (items) => items.map((li) => ({
    id: Number(li.dataset.id),
    text: li.querySelector(".text").textContent,
    edited: li.querySelector(".edited") !== null,
    deleted: li.classList.contains("deleted"),
  })));
}

async function notes(page) {
  return page.$$eval("#messages li.note", (items) => items.map((li) => li.textContent));
}

function noProblems(tab, who) {
  // A socket the server closed on purpose may be reported by the browser; nothing else may.
  const problems = tab.problems.filter((p) => !/^WebSocket connection to .* failed/.test(p));
  assert.deepEqual(problems, [], `${who}: script errors`);
}

test("the admin page and its files come with the chat page's policy; the API still needs the token", async () => {
  const page = await fetch(`${base}/admin`);
  assert.equal(page.status, 200);
  const csp = page.headers.get("content-security-policy") ?? "";
  assert.match(csp, /(^|; )script-src 'self'(;|$)/, csp);
  assert.match(csp, /frame-ancestors 'none'/);
  assert.doesNotMatch(csp, /unsafe-inline|unsafe-eval/);
  const html = await page.text();
  assert.doesNotMatch(html, /<script(?![^>]*\bsrc=)[^>]*>/i, "no inline script");
  assert.doesNotMatch(html, /<style|\sstyle=|\son[a-z]+=/i, "no inline style or event handler");
  for (const [path, type] of [["/admin.js", "text/javascript;charset=UTF-8"], ["/admin.css", "text/css;charset=UTF-8"]]) {
    const response = await fetch(`${base}${path}`);
    assert.equal(response.status, 200, path);
    assert.equal(response.headers.get("content-type"), type, path);
  }
  assert.equal((await fetch(`${base}/api/admin/rooms`)).status, 401, "the page is public, the API is not");
});

test("an admin deletes, edits, sets the topic, kicks and bans; the chat pages show it", { timeout: 120_000 }, async () => {
  const room = `mod-${Date.now().toString(36)}`;
  const ada = await openUser("ada", room);
  const bob = await openUser("bob", room);
  await say(ada, "first from ada");
  await say(ada, "second from ada");
  await say(bob, "hello from bob");
  await say(ada, "third from ada");
  await bob.page.locator("#messages li.msg .text", { hasText: "third from ada" }).waitFor({ timeout: TIMEOUT });

  // The admin signs in: a wrong token is refused, the right one is kept for the tab only.
  const admin = await newTab(browser);
  await admin.page.goto(`${base}/admin`);
  await admin.page.getByLabel("Admin token").fill("wrong");
  await admin.page.getByRole("button", { name: "Sign in" }).click();
  await admin.page.locator("#signin-error", { hasText: "refused" }).waitFor({ timeout: TIMEOUT });
  await admin.page.getByLabel("Admin token").fill(ADMIN_TOKEN);
  await admin.page.getByRole("button", { name: "Sign in" }).click();
  const row = admin.page.locator(`#rooms tr[data-room="${room}"]`);
  await row.waitFor({ timeout: TIMEOUT });
  assert.ok(!admin.page.url().includes(ADMIN_TOKEN), "the token is not in the URL");
  assert.equal(await admin.page.evaluate(() => sessionStorage.getItem("edgechat.admin-token")), ADMIN_TOKEN);
  assert.equal((await row.locator("td").nth(1).textContent()).trim(), "2", "two connections in the room");

  await row.getByRole("button").click();
  await admin.page.waitForFunction(() => document.querySelectorAll("#members tr[data-user]").length === 2, null, { timeout: TIMEOUT });
  const users = await admin.page.$$eval("#members tr[data-user]", (rows) => rows.map((r) => [...r.cells].slice(0, 3).map((c) => c.textContent)));
  assert.deepEqual(users, [["ada", "ada", "127.0.0.1"], ["bob", "bob", "127.0.0.1"]]);
  const messageRow = (text) => admin.page.locator("#messages li", { hasText: text });
  await messageRow("third from ada").waitFor({ timeout: TIMEOUT });
  const [first, second] = (await shown(ada.page)).map((m) => m.id);

  // Delete: the message stays in place on both pages as "message deleted", its text gone.
  await messageRow("first from ada").getByRole("button", { name: "Delete" }).click();
  await admin.page.locator("#notice", { hasText: `Deleted message ${first}.` }).waitFor({ timeout: TIMEOUT });
  for (const user of [ada, bob]) {
    await user.page.locator(`#messages li.msg.deleted[data-id="${first}"]`).waitFor({ timeout: TIMEOUT });
    assert.ok(!(await user.page.locator("#messages").textContent()).includes("first from ada"), `${user.name}: the deleted text is gone`);
  }
  await admin.page.locator(`#messages li.deleted[data-id="${first}"]`).waitFor({ timeout: TIMEOUT });
  assert.ok(!(await admin.page.locator("#messages").textContent()).includes("null"), "no placeholder leaks into the list");

  // Edit: the text is replaced in place and marked.
  await messageRow("second from ada").getByRole("button", { name: "Edit" }).click();
  await admin.page.locator("#messages .edit-text").fill("second, corrected");
  await admin.page.getByRole("button", { name: "Save", exact: true }).click();
  for (const user of [ada, bob]) {
    await user.page.locator(`#messages li.msg[data-id="${second}"] .edited`).waitFor({ timeout: TIMEOUT });
    const texts = (await shown(user.page)).map((m) => [m.text, m.edited, m.deleted]);
    assert.deepEqual(texts, [["message deleted", false, true], ["second, corrected", true, false],
      ["hello from bob", false, false], ["third from ada", false, false]], `${user.name}'s messages`);
  }

  // The topic: shown above the conversation to everyone in the room.
  await admin.page.getByLabel("Topic").fill("Be kind, stay on topic");
  await admin.page.getByRole("button", { name: "Save settings" }).click();
  for (const user of [ada, bob]) {
    await user.page.locator("#topic:not([hidden])", { hasText: "Be kind, stay on topic" }).waitFor({ timeout: TIMEOUT });
  }
  await shot(ada.page, "ada-after-edits");
  await shot(admin.page, "admin-room");

  // Kick: Bob's page says so and stops; Ada sees him leave.
  await admin.page.locator('#members tr[data-user="bob"]').getByRole("button", { name: "Kick" }).click();
  await bob.page.locator("#messages li.note.error", { hasText: "removed you" }).waitFor({ timeout: TIMEOUT });
  assert.equal(await bob.page.locator("#status").textContent(), "Removed");
  assert.ok(await bob.page.locator("#send").isDisabled(), "no composer after a kick");
  await ada.page.locator("#messages li.note", { hasText: "bob left" }).waitFor({ timeout: TIMEOUT });
  await shot(bob.page, "bob-kicked");

  // Bob comes back (a kick is not a ban), then is banned while in the room.
  await bob.page.getByRole("button", { name: "Leave" }).click();
  await joinRoom(bob.page, "bob");
  await admin.page.waitForFunction(() => document.querySelector('#members tr[data-user="bob"]') !== null, null, { timeout: TIMEOUT });
  await admin.page.locator('#members tr[data-user="bob"]').getByRole("button", { name: "Ban", exact: true }).click();
  await bob.page.locator("#messages li.note.error", { hasText: "banned" }).waitFor({ timeout: TIMEOUT });
  assert.equal(await bob.page.locator("#status").textContent(), "Banned");
  assert.equal(await bob.page.locator("#roster li").count(), 0, "out of the room: nobody listed");
  await admin.page.locator("#bans li", { hasText: "bob" }).waitFor({ timeout: TIMEOUT });
  await shot(bob.page, "bob-banned");

  // A banned name cannot rejoin: the join form says why.
  await bob.page.getByRole("button", { name: "Leave" }).click();
  await bob.page.getByLabel("Your name", { exact: true }).fill("bob");
  await bob.page.getByRole("button", { name: "Join room" }).click();
  await bob.page.locator("#join-error", { hasText: "Banned from this room." }).waitFor({ timeout: TIMEOUT });
  await shot(bob.page, "bob-rejoin-refused");
  assert.deepEqual(await admin.page.$$eval("#members tr[data-user]", (rows) => rows.map((r) => r.dataset.user)), ["ada"]);

  // Ada's page is otherwise unchanged: still live, still sending.
  await say(ada, "still here");
  assert.ok((await notes(ada.page)).includes("bob left"));

  // The server's figures: each chart has drawn a line after a few polls.
  for (const id of ["chart-connections", "chart-rate", "chart-commit"]) {
    await admin.page.locator(`#${id} polyline`).waitFor({ timeout: TIMEOUT });
  }
  assert.match(await admin.page.locator("#fig-connections").textContent(), /^\d+$/);
  await shot(admin.page, "admin-final");

  for (const [tab, who] of [[ada, "Ada"], [bob, "Bob"], [admin, "admin"]]) {
    assert.deepEqual(await tab.page.evaluate(() => window.cspViolations), [], `${who}: policy violations`);
    if (tab !== admin) noProblems(tab, who);
  }
  // The admin page logged no errors besides the wrong token's refused request.
  assert.deepEqual(admin.problems.filter((p) => !/401/.test(p)), [], "admin: script errors");
  for (const tab of [ada, bob, admin]) await tab.context.close();
});

test("with signed identities required, the admin token still reads the room's recent messages", async () => {
  const secretFile = join(dataDir, "secret");
  writeFileSync(secretFile, "0123456789abcdef0123456789abcdef-admin-test");
  const strict = await startServer("strict-db", ["--auth-mode", "required", "--auth-hs256-secret-file", secretFile]);
  extraServers.push(strict);
  const published = await fetch(`${strict.base}/api/room/lobby/messages`, {
    method: "POST",
    headers: { authorization: `Bearer ${ADMIN_TOKEN}`, "content-type": "application/json" },
    body: JSON.stringify({ name: "ops", message: "read with the admin token" }),
  });
  assert.equal(published.status, 200, "publish with the admin token");
  const admin = await newTab(browser);
  await admin.page.goto(`${strict.base}/admin`);
  await admin.page.getByLabel("Admin token").fill(ADMIN_TOKEN);
  await admin.page.getByRole("button", { name: "Sign in" }).click();
  await admin.page.getByPlaceholder("Room name or id").fill("lobby");
  await admin.page.getByRole("button", { name: "Open" }).click();
  await admin.page.locator("#members", { hasText: "Nobody is connected." }).waitFor({ timeout: TIMEOUT });
  await admin.page.locator("#messages", { hasText: "read with the admin token" }).waitFor({ timeout: TIMEOUT });
  assert.equal(await admin.page.locator("#messages", { hasText: "unavailable" }).count(), 0);
  await admin.page.getByLabel("Topic").fill("Announcements only");
  await admin.page.getByRole("button", { name: "Save settings" }).click();
  await admin.page.locator("#notice", { hasText: "Settings saved." }).waitFor({ timeout: TIMEOUT });
  assert.equal(await admin.page.locator("#status").getAttribute("data-state"), "live", "still signed in");
  await shot(admin.page, "admin-auth-required");
  await admin.context.close();
});
