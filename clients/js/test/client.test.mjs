// The client against a real `edgechat serve`: chat between two clients, history paging,
// presence, refusals, and exactly-once delivery across a graceful restart and a kill -9.
//
//   node --test test/          (Node 22+; on Node 20 add --experimental-websocket)

import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { connect, EdgechatError } from "../edgechat.js";
import { dataDir, publish, record, roomName, startServer, waitFor, within } from "./harness.mjs";

const FAST = { reconnectInitialMs: 50, reconnectMaxMs: 500 };

let data;
let server;

before(async () => {
  data = dataDir();
  server = await startServer({ db: data.db });
});

after(async () => {
  await server?.stop();
  data?.cleanup();
});

test("two clients chat: sends resolve with ids, both see every message once", async () => {
  const room = roomName("chat");
  const ada = connect({ url: server.url, room, name: "Ada", ...FAST });
  const bob = connect({ url: server.url, room, name: "Bob", ...FAST });
  const adaSeen = record(ada);
  const bobSeen = record(bob);
  try {
    await waitFor(() => ada.state === "live" && bob.state === "live", "both live");
    await waitFor(() => ada.roster.has("Bob") && bob.roster.has("Ada"), "each in the other's roster");
    const ids = [];
    for (const text of ["hello", "how are you?", "bye"]) ids.push(await within(ada.send(text), `send ${text}`));
    ids.push(await within(bob.send("fine, thanks"), "bob's send"));
    assert.ok(ids.every(Number.isSafeInteger), `ids: ${ids}`);
    assert.deepEqual([...ids].sort((a, b) => a - b), ids, "ids follow the send order");
    await waitFor(() => adaSeen.messages.length === 4 && bobSeen.messages.length === 4, "four messages each");
    for (const seen of [adaSeen, bobSeen]) {
      assert.deepEqual(seen.messages.map((m) => m.id), ids);
      assert.deepEqual(seen.messages.map((m) => `${m.name}: ${m.message}`),
        ["Ada: hello", "Ada: how are you?", "Ada: bye", "Bob: fine, thanks"]);
    }
    assert.equal(ada.lastId, ids[3]);
    assert.deepEqual((await ada.presence()).sort(), ["Ada", "Bob"]);
    // A refusal rejects with the server's text; the connection carries on.
    await assert.rejects(ada.send("x".repeat(257)), (e) => e instanceof EdgechatError && e.server && e.message === "Message too long.");
    assert.equal(typeof await within(ada.send("still here"), "send after a refusal"), "number");
    await bob.close();
    await waitFor(() => adaSeen.quits.includes("Bob") && !ada.roster.has("Bob"), "Bob's quit at Ada");
    assert.equal(bob.state, "closed");
    await assert.rejects(bob.send("too late"), EdgechatError);
  } finally {
    await ada.close();
    await bob.close();
  }
});

test("loadOlder pages back through the history endpoint with next_before", async () => {
  const room = roomName("history");
  for (let i = 1; i <= 150; i += 1) await publish(server.url, room, `m${i}`);
  const carol = connect({ url: server.url, room, name: "Carol", token: "t0k3n", ...FAST });
  const seen = record(carol);
  try {
    await waitFor(() => carol.state === "live", "Carol live");
    // The join replays the newest 100.
    assert.deepEqual(seen.messages.map((m) => m.message), Array.from({ length: 100 }, (_, i) => `m${i + 51}`));
    // Asked for at once, the pages still follow each other.
    const [first, second] = await Promise.all([carol.loadOlder({ limit: 30 }), carol.loadOlder({ limit: 30 })]);
    assert.deepEqual(first.messages.map((m) => m.message), Array.from({ length: 30 }, (_, i) => `m${i + 21}`));
    assert.equal(first.hasMore, true);
    assert.deepEqual(second.messages.map((m) => m.message), Array.from({ length: 20 }, (_, i) => `m${i + 1}`));
    assert.equal(second.hasMore, false);
    assert.deepEqual(await carol.loadOlder(), { messages: [], hasMore: false });
    // Paging never touched the live stream.
    assert.equal(seen.messages.length, 100);
  } finally {
    await carol.close();
  }
});

test("chat frames that arrive twice (as from a resume that overlaps) are delivered once", async () => {
  const room = roomName("twice");
  // Every chat frame from the real server is handed to the client a second time.
  class Doubling extends WebSocket {
    addEventListener(type, listener, options) {
      if (type !== "message") return super.addEventListener(type, listener, options);
      return super.addEventListener(type, (event) => {
        listener(event);
        if (String(event.data).includes('"id":')) listener({ data: event.data });
      }, options);
    }
  }
  for (const text of ["old 1", "old 2"]) await publish(server.url, room, text);
  const client = connect({ url: server.url, room, name: "Dana", WebSocket: Doubling, ...FAST });
  const seen = record(client);
  // Sent before the join completed: queued until `ready`.
  const early = client.send("new");
  try {
    assert.equal(client.state, "connecting");
    const id = await within(early, "the early send");
    await publish(server.url, room, "newer");
    await waitFor(() => seen.messages.at(-1)?.message === "newer", "the last message");
    assert.deepEqual(seen.messages.map((m) => m.message), ["old 1", "old 2", "new", "newer"]);
    assert.equal(seen.messages[2].id, id);
  } finally {
    await client.close();
  }
});

test("a frame over the server's size limit rejects that send; the client reconnects and goes on", async () => {
  const room = roomName("big");
  const client = connect({ url: server.url, room, name: "Big", ...FAST });
  const seen = record(client);
  try {
    await waitFor(() => client.state === "live", "live");
    // Over --max-frame-bytes (64 KiB by default): the server closes with 1009.
    await within(assert.rejects(client.send("x".repeat(70_000)), (e) => e instanceof EdgechatError && e.server), "rejected");
    const id = await within(client.send("small"), "the next send");
    assert.equal(typeof id, "number");
    assert.ok(seen.states.includes("reconnecting"));
    assert.deepEqual(seen.messages.map((m) => m.message), ["small"]);
  } finally {
    await client.close();
  }
});

test("a name the server refuses closes the client for good", async () => {
  const room = roomName("refused");
  const client = connect({ url: server.url, room, name: "n".repeat(33), ...FAST });
  const seen = record(client);
  const pending = client.send("never");
  await within(assert.rejects(pending, EdgechatError), "queued send rejected");
  await waitFor(() => client.state === "closed", "closed");
  assert.deepEqual(seen.errors.map((e) => [e.message, e.fatal]), [["Name too long.", true]]);
  assert.ok(!seen.states.includes("live"));
});
