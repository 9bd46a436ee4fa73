// The module in a real browser, used as a third-party page would: a page served from its own
// origin imports /edgechat.js, joins a room on the edgechat server, and two pages chat.
// playwright-core drives Debian's Chromium (CHROMIUM, default /usr/bin/chromium).

import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { createServer } from "node:http";
import { existsSync, readFileSync } from "node:fs";
import { dirname, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { chromium } from "playwright-core";
import { dataDir, roomName, startServer } from "./harness.mjs";

const here = dirname(fileURLToPath(import.meta.url));
const CHROMIUM = process.env.CHROMIUM || "/usr/bin/chromium";
const TIMEOUT = 15_000;

// The application page: everything it knows of edgechat is the module's public API.
const PAGE = `<!doctype html>
<meta charset="utf-8">
<title>third-party chat</title>
<link rel="icon" href="data:,">
<ul id="log"></ul>
<script type="module">
  import { connect } from "/edgechat.js";
  const params = new URLSearchParams(location.search);
  const client = connect({ url: params.get("server"), room: params.get("room"), name: params.get("name") });
  window.seen = [];
  client.on("message", (m) => {
    window.seen.push(m);
    const li = document.createElement("li");
    li.textContent = m.name + ": " + m.message;
    document.getElementById("log").append(li);
  });
  client.on("state", ({ state }) => { document.body.dataset.state = state; });
  window.client = client;
</script>`;

let data;
let chat;
let site;
let siteUrl;
let browser;

before(async () => {
  assert.ok(existsSync(CHROMIUM), `no Chromium at ${CHROMIUM} (apt-get install chromium, or set CHROMIUM)`);
  data = dataDir();
  chat = await startServer({ db: data.db });
  const moduleSource = readFileSync(resolve(here, "../edgechat.js"));
  site = createServer((request, response) => {
    const path = new URL(request.url, "http://x").pathname;
    if (path === "/edgechat.js") {
      response.writeHead(200, { "content-type": "text/javascript; charset=utf-8" }).end(moduleSource);
    } else if (path === "/") {
      response.writeHead(200, { "content-type": "text/html; charset=utf-8" }).end(PAGE);
    } else {
      response.writeHead(404).end("not found");
    }
  });
  await new Promise((ok) => site.listen(0, "127.0.0.1", ok));
  siteUrl = `http://127.0.0.1:${site.address().port}`;
  browser = await chromium.launch({
    executablePath: CHROMIUM,
    args: ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
      "--disable-sync", "--no-first-run", "--disable-quic"],
  });
});

after(async () => {
  await browser?.close();
  await new Promise((ok) => (site ? site.close(ok) : ok()));
  await chat?.stop();
  data?.cleanup();
});

async function openPage(name, room) {
  const page = await browser.newPage();
  const problems = [];
  page.on("pageerror", (e) => problems.push(String(e)));
  page.on("console", (m) => { if (m.type() === "error") problems.push(m.text()); });
  const query = new URLSearchParams({ server: chat.url, room, name });
  await page.goto(`${siteUrl}/?${query}`);
  await page.waitForFunction(() => document.body.dataset.state === "live", null, { timeout: TIMEOUT });
  return { page, problems };
}

test("a page imports the module, joins, sends; a second page sees the message", { timeout: 60_000 }, async () => {
  const room = roomName("browser");
  const ada = await openPage("Ada", room);
  const bob = await openPage("Bob", room);
  await ada.page.waitForFunction(() => window.client.roster.has("Bob"), null, { timeout: TIMEOUT });
  const id = await ada.page.evaluate(() => window.client.send("Hello from a page 👋"));
  assert.equal(typeof id, "number");
  await bob.page.locator("#log li", { hasText: "Ada: Hello from a page 👋" }).waitFor({ timeout: TIMEOUT });
  const seen = await bob.page.evaluate(() => window.seen);
  assert.deepEqual(seen.map((m) => [m.id, m.name, m.message]), [[id, "Ada", "Hello from a page 👋"]]);
  await ada.page.evaluate(() => window.client.close());
  await bob.page.waitForFunction(() => !window.client.roster.has("Ada"), null, { timeout: TIMEOUT });
  assert.deepEqual(ada.problems, []);
  assert.deepEqual(bob.problems, []);
  await ada.page.close();
  await bob.page.close();
});
