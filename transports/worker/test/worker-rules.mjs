// Checks of rules that only the Worker can be made to show, run by test/e2e.mjs after the
// conformance suite, against the same workerd:
//
// - a failed storage write (the [env.e2e] fault E2E_FAIL_WRITES_CONTAINING makes a room's
//   transaction throw and roll back): the sender gets core's error frame, nothing is
//   broadcast or stored, and the next message takes the id the failed one had;
// - a WebSocket message over 64 KiB closes the socket with 1009 "Frame too large.", as on the
//   server (the conformance suite does not send one);
// - a WebSocket request whose CF-Connecting-IP is not an address is refused with core's
//   answer (workerd fills in a missing header, so an unreadable one stands for it).
//
// Exports `run(baseUrl)`, which prints one line per check and returns the failure count.

import WebSocket from "ws";

const STORAGE_PROBE = "e2e-storage-failure-probe";
const ERROR_STORAGE_UNAVAILABLE = "Message not sent: storage unavailable.";
const ERROR_RATE_LIMITED = "Your IP is being rate-limited, please try again later.";
const FRAME_TIMEOUT_MS = 10_000;
const RETRIES_MAX = 50;

/** A socket whose text frames are read in order with `next()`. */
async function connect(baseUrl, room, ip) {
  const url = `${baseUrl.replace(/^http/, "ws")}/api/room/${room}/websocket`;
  const ws = new WebSocket(url, { headers: { "CF-Connecting-IP": ip } });
  const frames = [];
  const waiting = [];
  ws.on("message", (data) => {
    const frame = JSON.parse(String(data));
    const waiter = waiting.shift();
    if (waiter) waiter(frame);
    else frames.push(frame);
  });
  await new Promise((resolve, reject) => {
    ws.once("open", resolve);
    ws.once("error", reject);
  });
  const next = () =>
    frames.length > 0
      ? Promise.resolve(frames.shift())
      : new Promise((resolve, reject) => {
          const timer = setTimeout(() => reject(new Error("no frame within 10 s")), FRAME_TIMEOUT_MS);
          waiting.push((frame) => {
            clearTimeout(timer);
            resolve(frame);
          });
        });
  return { ws, next };
}

async function joinAs(baseUrl, room, name, ip) {
  const client = await connect(baseUrl, room, ip);
  client.ws.send(JSON.stringify({ name }));
  for (;;) {
    const frame = await client.next();
    if (frame.ready !== undefined) return client;
    if (frame.error !== undefined) throw new Error(`${name} could not join: ${frame.error}`);
  }
}

/** Sends `message` until it is not refused for the rate limit; returns the first answer. */
async function sendAccepted(client, message) {
  for (let attempt = 0; attempt < RETRIES_MAX; attempt += 1) {
    client.ws.send(JSON.stringify({ message }));
    let frame = await client.next();
    // Roster changes (`joined`, `quit`) may come first.
    while (frame.error === undefined && frame.message === undefined) frame = await client.next();
    if (frame.error !== ERROR_RATE_LIMITED) return frame;
    // The verdict for the previous frame is still on its way; the suite's clients retry too.
    await new Promise((resolve) => setTimeout(resolve, 200));
  }
  throw new Error(`"${message}" was rate-limited ${RETRIES_MAX} times`);
}

function assert(condition, what) {
  if (!condition) throw new Error(what);
}

async function failedWriteTellsOnlyTheSender(baseUrl) {
  const room = `storefail${Date.now().toString(36)}`;
  const ann = await joinAs(baseUrl, room, "ann", "203.0.113.71");
  const bob = await joinAs(baseUrl, room, "bob", "203.0.113.72");
  const failed = await sendAccepted(ann, `hello ${STORAGE_PROBE}`);
  assert(
    failed.error === ERROR_STORAGE_UNAVAILABLE,
    `the sender of a failed write got ${JSON.stringify(failed)}`,
  );
  const kept = await sendAccepted(ann, "kept");
  assert(kept.message === "kept" && kept.id === 1, `the next message is ${JSON.stringify(kept)}, expected id 1`);
  // Bob's first chat frame is the kept one: the failed message never reached him.
  let seen = await bob.next();
  while (seen.joined !== undefined) seen = await bob.next();
  assert(seen.message === "kept" && seen.id === 1, `another member first saw ${JSON.stringify(seen)}`);
  const history = await (await fetch(`${baseUrl}/api/room/${room}/history`)).json();
  const stored = history.messages.map((m) => m.message);
  assert(JSON.stringify(stored) === '["kept"]', `history holds ${JSON.stringify(stored)}`);
  ann.ws.close();
  bob.ws.close();
}

async function messagesOver64KiBClose1009(baseUrl) {
  const room = `bigframe${Date.now().toString(36)}`;
  const ann = await joinAs(baseUrl, room, "ann", "203.0.113.73");
  // Under the limit: core's answer for a frame over its 4 KiB, and the socket stays open.
  const error = await sendAccepted(ann, "x".repeat(60 * 1024));
  assert(error.error === "Frame too large.", `a 60 KiB frame got ${JSON.stringify(error)}`);
  const closed = new Promise((resolve) => ann.ws.once("close", (code, reason) => resolve({ code, reason: String(reason) })));
  ann.ws.send("y".repeat(64 * 1024 + 1));
  const { code, reason } = await closed;
  assert(code === 1009 && reason === "Frame too large.", `a 64 KiB + 1 frame closed with ${code} ${JSON.stringify(reason)}`);
}

async function unreadableClientAddressIsRefused(baseUrl) {
  const url = `${baseUrl.replace(/^http/, "ws")}/api/room/noaddress/websocket`;
  const ws = new WebSocket(url, { headers: { "CF-Connecting-IP": "not-an-address" } });
  const { status, body } = await new Promise((resolve, reject) => {
    ws.once("open", () => reject(new Error("the upgrade was accepted")));
    ws.once("error", reject);
    ws.once("unexpected-response", (_req, res) => {
      let text = "";
      res.on("data", (chunk) => (text += chunk));
      res.on("end", () => resolve({ status: res.statusCode, body: text }));
    });
  });
  assert(status === 400 && body === "Client address unknown.", `got ${status} ${JSON.stringify(body)}`);
}

export async function run(baseUrl) {
  const checks = [failedWriteTellsOnlyTheSender, messagesOver64KiBClose1009, unreadableClientAddressIsRefused];
  let failed = 0;
  for (const check of checks) {
    try {
      await check(baseUrl);
      console.log(`ok   worker rule: ${check.name}`);
    } catch (error) {
      failed += 1;
      console.log(`FAIL worker rule: ${check.name}: ${error.message}`);
    }
  }
  console.log(`worker rules: ${checks.length - failed} passed, ${failed} failed`);
  return failed;
}
