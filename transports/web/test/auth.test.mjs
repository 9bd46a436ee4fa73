// Browser test of signed-in links and the origin allow-list: headless Debian Chromium,
// driven by playwright-core, against real `edgechat serve` processes on loopback.
//
//   cd transports/web/test && npm install && node --test auth.test.mjs
//
// Tokens are minted here with node:crypto's HMAC (what an application sharing an HS256
// secret with edgechat does). EDGECHAT_BIN, CHROMIUM and SCREENSHOT_DIR as in
// browser.test.mjs; screenshots are edgechat-auth-*.png.

import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { createHmac } from "node:crypto";
import { createServer as createHttpServer } from "node:http";
import { mkdtempSync, rmSync, existsSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve, dirname } from "node:path";
import { fileURLToPath } from "node:url";
import { chromium } from "playwright-core";
import { newTab as openTab } from "./tab.mjs";

const here = dirname(fileURLToPath(import.meta.url));
const BIN = process.env.EDGECHAT_BIN || resolve(here, "../../../target/debug/edgechat");
const CHROMIUM = process.env.CHROMIUM || "/usr/bin/chromium";
const SHOTS = process.env.SCREENSHOT_DIR || "/tmp";
const TIMEOUT = 15_000;
const SECRET = "the browser test secret, 32 bytes or more";
/** A name the foreign page is reached by (Chromium maps it to 127.0.0.1). */
const APP_HOST = "app.test";

let dataDir;
let browser;
/** @type {{ url: string, stop: () => Promise<void>, output: () => string }[]} */
const servers = [];

/** Starts `edgechat serve` on a free port with `args`; resolves once it printed its address. */
async function startServer(args) {
  const db = join(dataDir, `db-${servers.length}`);
  const child = spawn(BIN, ["serve", "--listen", "127.0.0.1:0", "--data", db,
    "--rate-limit-cost-ms", "1", "--rate-limit-grace-ms", "60000", ...args],
  { stdio: ["ignore", "pipe", "pipe"], env: { ...process.env, RUST_LOG: "warn" } });
  let output = "";
  const exited = new Promise((ok) => child.once("exit", (code, signal) => ok({ code, signal })));
  const url = await new Promise((ok, fail) => {
    const timer = setTimeout(() => fail(new Error(`edgechat did not start:\n${output}`)), TIMEOUT);
    child.stderr.on("data", (d) => { output += d; });
    child.stdout.on("data", (d) => {
      output += d;
      const found = /edgechat listening on (http:\/\/\S+)/.exec(output);
      if (found) { clearTimeout(timer); ok(found[1]); }
    });
    exited.then((how) => { clearTimeout(timer); fail(new Error(`edgechat exited (${JSON.stringify(how)}):\n${output}`)); });
  });
  const stop = async () => {
    if (child.exitCode !== null || child.signalCode !== null) return;
    child.kill("SIGTERM");
    const done = await Promise.race([exited, new Promise((ok) => setTimeout(() => ok(null), 5000))]);
    if (!done) { child.kill("SIGKILL"); await exited; }
  };
  const server = { url, stop, output: () => output };
  servers.push(server);
  return server;
}

/** An HS256 JWT over `claims`. */
function mint(claims) {
  const part = (value) => Buffer.from(JSON.stringify(value)).toString("base64url");
  const body = `${part({ alg: "HS256", typ: "JWT" })}.${part(claims)}`;
  return `${body}.${createHmac("sha256", SECRET).update(body).digest("base64url")}`;
}

/** A token for `name` (its sub too) writing every room, expiring in `ttlS` seconds. */
function tokenFor(name, ttlS = 600) {
  return mint({ sub: `user-${name}`, name, exp: Math.ceil(Date.now() / 1000) + ttlS, rooms: { "*": "write" } });
}

before(async () => {
  assert.ok(existsSync(BIN), `no edgechat binary at ${BIN} (cargo build -p edgechat-server, or set EDGECHAT_BIN)`);
  assert.ok(existsSync(CHROMIUM), `no Chromium at ${CHROMIUM} (apt-get install chromium, or set CHROMIUM)`);
  dataDir = mkdtempSync(join(tmpdir(), "edgechat-browser-auth-"));
  browser = await chromium.launch({
    executablePath: CHROMIUM,
    args: ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
      "--disable-sync", "--no-first-run", "--disable-quic", `--host-resolver-rules=MAP ${APP_HOST} 127.0.0.1`],
  });
});

after(async () => {
  await browser?.close();
  for (const server of servers) await server.stop();
  if (dataDir) rmSync(dataDir, { recursive: true, force: true });
});

/** A fresh tab of this test's browser (see tab.mjs). */
function newTab() {
  return openTab(browser);
}

async function waitLive(page) {
  await page.locator('#status[data-state="live"]').waitFor({ timeout: TIMEOUT });
}

async function say(page, text) {
  await page.getByRole("textbox", { name: "Message" }).fill(text);
  await page.getByRole("button", { name: "Send" }).click();
}

/** The name shown on the message `text`, once it is shown. */
async function shownAuthor(page, text) {
  const item = page.locator("#messages li.msg", { hasText: text }).first();
  await item.waitFor({ timeout: TIMEOUT });
  return item.locator(".who").textContent();
}

test("a signed-in link joins without the name prompt, as the token's user; expiry is explained", { timeout: 120_000 }, async () => {
  const secretFile = join(dataDir, "hs256");
  writeFileSync(secretFile, SECRET);
  // Optional mode: tokens fix the user, guests still join. No leeway, so an expiry is quick.
  const server = await startServer(["--auth-mode", "optional", "--auth-hs256-secret-file", secretFile,
    "--auth-leeway-ms", "0"]);
  const room = `signed-${Date.now().toString(36)}`;

  const ada = await newTab();
  await ada.page.goto(`${server.url}/#${room}&token=${tokenFor("Ada")}`);
  await waitLive(ada.page);
  assert.equal(await ada.page.locator("#whoami").textContent(), "Signed in as Ada");
  assert.ok(!ada.page.url().includes("token"), `the token left the address bar: ${ada.page.url()}`);
  assert.equal(new URL(ada.page.url()).hash, `#${room}`);
  assert.equal(await ada.page.locator("#share-link").textContent(), `${server.url}/#${room}`, "the share link has no token");
  await say(ada.page, "hello from a signed-in link");
  assert.equal(await shownAuthor(ada.page, "hello from a signed-in link"), "Ada");

  // A guest joins the same room the demo's way, by name.
  const guest = await newTab();
  await guest.page.goto(`${server.url}/#${room}`);
  assert.ok(await guest.page.getByLabel("Your name", { exact: true }).isVisible(), "guests are asked for a name");
  await guest.page.getByLabel("Your name", { exact: true }).fill("Guest");
  await guest.page.getByRole("button", { name: "Join room" }).click();
  await waitLive(guest.page);
  assert.ok(await guest.page.locator("#whoami").isHidden());
  assert.equal(await shownAuthor(guest.page, "hello from a signed-in link"), "Ada");
  await say(guest.page, "hi Ada");
  assert.equal(await shownAuthor(ada.page, "hi Ada"), "Guest");

  // A reload stays signed in (the tab kept the token), still without a prompt.
  await ada.page.reload();
  await waitLive(ada.page);
  assert.equal(await ada.page.locator("#whoami").textContent(), "Signed in as Ada");
  await ada.page.screenshot({ path: join(SHOTS, "edgechat-auth-signed-in.png"), animations: "disabled" });

  // A token that expires: the server closes the connection (4001) and the page says so.
  const una = await newTab();
  await una.page.goto(`${server.url}/#${room}&token=${tokenFor("Una", 2)}`);
  await waitLive(una.page);
  assert.equal(await una.page.locator("#whoami").textContent(), "Signed in as Una");
  const error = una.page.locator("#join-error", { hasText: "Your sign-in has expired." });
  await error.waitFor({ timeout: TIMEOUT });
  assert.equal(await una.page.locator("#status").getAttribute("data-state"), "idle");
  assert.ok(await una.page.getByLabel("Your name", { exact: true }).isVisible(), "a guest join is offered");
  assert.equal(await una.page.evaluate(() => sessionStorage.getItem("edgechat.token")), null, "the token is forgotten");
  await una.page.screenshot({ path: join(SHOTS, "edgechat-auth-expired.png"), animations: "disabled" });

  // A link whose token expired before it was opened: the upgrade is refused (401), and the
  // page learns why over HTTP and says so instead of retrying for ever.
  const late = await newTab();
  await late.page.goto(`${server.url}/#${room}&token=${tokenFor("Late", -60)}`);
  await late.page.locator("#join-error", { hasText: "Your sign-in link was refused: Token expired." })
    .waitFor({ timeout: TIMEOUT });
  assert.equal(await late.page.locator("#status").getAttribute("data-state"), "idle");
  await late.page.screenshot({ path: join(SHOTS, "edgechat-auth-refused-link.png"), animations: "disabled" });

  // A link with a token and no room: the form asks only for the room.
  const cy = await newTab();
  await cy.page.goto(`${server.url}/#token=${tokenFor("Cy")}`);
  await cy.page.getByRole("button", { name: "Join room" }).waitFor({ timeout: TIMEOUT });
  assert.ok(await cy.page.getByLabel("Your name", { exact: true }).isHidden(), "no name prompt");
  assert.equal(new URL(cy.page.url()).hash, "", "the token left the address bar");
  await cy.page.screenshot({ path: join(SHOTS, "edgechat-auth-pick-room.png"), animations: "disabled" });
  await cy.page.getByLabel("Room", { exact: true }).fill(room);
  await cy.page.getByRole("button", { name: "Join room" }).click();
  await waitLive(cy.page);
  assert.equal(await cy.page.locator("#whoami").textContent(), "Signed in as Cy");

  for (const tab of [ada, guest, una, cy, late]) {
    // The browser's own reports of the refused upgrade (and, for the late link, of the
    // refused read that tells the page why) are expected; anything else is not.
    const expected = tab === late ? /^(WebSocket connection to .* failed|Failed to load resource: .* 401)/ : /^WebSocket connection to .* failed/;
    const problems = tab.problems.filter((p) => !expected.test(p));
    assert.deepEqual(problems, [], "no script errors");
    assert.deepEqual(await tab.page.evaluate(() => window.cspViolations), [], "no policy violations");
    await tab.context.close();
  }
  assert.ok(!server.output().includes(tokenFor("Ada").split(".")[2]), "no token in the server's output");
});

/** A page on another origin that opens a WebSocket to edgechat and records what happens. */
const FOREIGN_PAGE = `<!doctype html><meta charset="utf-8"><title>foreign</title><script src="/foreign.js"></script>`;
const FOREIGN_SCRIPT = `
  window.result = new Promise((done) => {
    const target = new URLSearchParams(location.search).get("ws");
    const seen = { opened: false, error: false, code: null };
    const ws = new WebSocket(target);
    ws.onopen = () => { seen.opened = true; ws.close(1000); };
    ws.onerror = () => { seen.error = true; };
    ws.onclose = (event) => { seen.code = event.code; done(seen); };
  });`;

test("a page from a foreign origin is refused; an allowed origin and the page's own are not", { timeout: 60_000 }, async () => {
  const foreign = createHttpServer((request, response) => {
    const script = request.url.startsWith("/foreign.js");
    response.writeHead(200, { "content-type": script ? "text/javascript" : "text/html" });
    response.end(script ? FOREIGN_SCRIPT : FOREIGN_PAGE);
  });
  await new Promise((ok) => foreign.listen(0, "127.0.0.1", ok));
  const foreignPort = foreign.address().port;
  try {
    const server = await startServer(["--allowed-origins", `http://${APP_HOST}:${foreignPort}`]);
    const ws = `${server.url.replace("http:", "ws:")}/api/room/origins/websocket`;
    const tab = await newTab();
    const attempt = async (origin) => {
      await tab.page.goto(`${origin}/?ws=${encodeURIComponent(ws)}`);
      return tab.page.evaluate(() => window.result);
    };
    // 127.0.0.1:<foreign port> is not on the list: the upgrade is refused (403), which a
    // page sees as an error and close 1006, never an open socket.
    const refused = await attempt(`http://127.0.0.1:${foreignPort}`);
    assert.deepEqual(refused, { opened: false, error: true, code: 1006 });
    // The listed origin (the same server under another name) may connect.
    const allowed = await attempt(`http://${APP_HOST}:${foreignPort}`);
    assert.deepEqual(allowed, { opened: true, error: false, code: 1000 });
    // edgechat's own page is its own origin: it joins as usual.
    await tab.page.goto(`${server.url}/#origins`);
    await tab.page.getByLabel("Your name", { exact: true }).fill("Own");
    await tab.page.getByRole("button", { name: "Join room" }).click();
    await waitLive(tab.page);
    await tab.context.close();
  } finally {
    await new Promise((ok) => foreign.close(ok));
  }
});
