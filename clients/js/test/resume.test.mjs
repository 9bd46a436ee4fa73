// Exactly-once delivery across server restarts and a kill -9, `recovered: false` after a gap
// longer than the retained history, and sends retried through the real rate limiter.

import { test } from "node:test";
import assert from "node:assert/strict";
import { connect } from "../edgechat.js";
import { dataDir, publish, record, roomName, startServer, waitFor, within } from "./harness.mjs";

const FAST = { reconnectInitialMs: 50, reconnectMaxMs: 500 };
/** RoomConfig::history_retained_max in core/src/room.rs. */
const HISTORY_RETAINED = 1_000;

test("a restart and a kill -9 mid-stream: every acknowledged message arrives once, in order", { timeout: 120_000 }, async () => {
  const data = dataDir();
  let server = await startServer({ db: data.db });
  const port = server.port;
  const room = roomName("restart");
  let tokenCalls = 0;
  const writer = connect({ url: server.url, room, name: "Writer", ...FAST });
  const reader = connect({ url: server.url, room, name: "Reader", getToken: async () => `token-${++tokenCalls}`, ...FAST });
  const readerSeen = record(reader);
  const writerSeen = record(writer);
  try {
    await waitFor(() => writer.state === "live" && reader.state === "live", "both live");
    const texts = Array.from({ length: 60 }, (_, i) => `msg ${i + 1}`);
    const acked = [];
    const send = (text) => {
      const sent = writer.send(text).then((id) => { acked.push({ id, text }); return id; });
      // Closing the client on a failure rejects what is left; the failure is reported, not that.
      sent.catch(() => {});
      return sent;
    };
    const sends = texts.map(send);
    await waitFor(() => acked.length >= 15, "15 acknowledged");
    await server.stop("SIGTERM");
    await waitFor(() => writer.state === "reconnecting", "the writer notices");
    // Sent while the server is down: queued behind the others, sent after the resume.
    texts.push("sent while the server was down");
    sends.push(send(texts.at(-1)));
    server = await startServer({ db: data.db, port });
    // The reader is back (so the kill below cuts it off again) and the stream goes on.
    await waitFor(() => readerSeen.ready.length >= 2 && acked.length >= 35, "the reader back, 35 acknowledged");
    await server.stop("SIGKILL");
    server = await startServer({ db: data.db, port });
    const ids = await within(Promise.all(sends), "every send acknowledged", 60_000);
    await waitFor(() => readerSeen.ready.length >= 3, "the reader back after the kill");
    assert.deepEqual(acked.map((a) => a.text), texts, "acknowledged in send order");
    assert.deepEqual([...ids].sort((a, b) => a - b), ids);
    const last = ids[ids.length - 1];
    await waitFor(() => reader.lastId >= last && writer.lastId >= last, "both caught up");
    for (const seen of [readerSeen, writerSeen]) {
      const mine = seen.messages.filter((m) => m.name === "Writer");
      assert.deepEqual(mine.map((m) => m.id), ids, "every acknowledged id once, in order");
      assert.deepEqual(mine.map((m) => m.message), texts);
      const all = seen.messages.map((m) => m.id);
      assert.equal(new Set(all).size, all.length, "no duplicates");
    }
    assert.ok(readerSeen.states.includes("reconnecting"), `reader states: ${readerSeen.states}`);
    assert.ok(readerSeen.ready.slice(1).every((r) => r.resumed && r.recovered === true),
      `resumes recovered: ${JSON.stringify(readerSeen.ready)}`);
    assert.deepEqual(readerSeen.gaps, []);
    assert.ok(tokenCalls >= 3, `getToken called on every connect (${tokenCalls})`);
  } finally {
    await writer.close();
    await reader.close();
    await server.stop();
    data.cleanup();
  }
});

/** A WebSocket whose connections can be cut and refused, to keep a client away for a while. */
function gate() {
  const state = { open: true, sockets: new Set() };
  class GatedWebSocket extends WebSocket {
    constructor(url, protocols) {
      // Port 9 on loopback: nothing listens, the connection fails at once.
      super(state.open ? url : "ws://127.0.0.1:9/", protocols);
      state.sockets.add(this);
    }
  }
  state.WebSocket = GatedWebSocket;
  state.cut = () => {
    state.open = false;
    for (const socket of state.sockets) socket.close();
    state.sockets.clear();
  };
  return state;
}

test("a gap longer than the retained history surfaces recovered: false", { timeout: 120_000 }, async () => {
  const data = dataDir();
  const server = await startServer({ db: data.db });
  const room = roomName("gap");
  const door = gate();
  const client = connect({ url: server.url, room, name: "Away", WebSocket: door.WebSocket, ...FAST });
  const seen = record(client);
  try {
    await waitFor(() => client.state === "live", "live");
    await publish(server.url, room, "before");
    await waitFor(() => seen.messages.length === 1, "the first message");
    door.cut();
    await waitFor(() => client.state === "reconnecting", "reconnecting");
    const total = HISTORY_RETAINED + 20;
    const batch = 16;
    for (let i = 0; i < total; i += batch) {
      await Promise.all(Array.from({ length: Math.min(batch, total - i) }, (_, k) => publish(server.url, room, `away ${i + k}`)));
    }
    door.open = true;
    await waitFor(() => seen.ready.length === 2, "the second ready", 30_000);
    assert.deepEqual(seen.ready[1], { recovered: false, resumed: true });
    assert.equal(client.recovered, false);
    assert.deepEqual(seen.gaps, [{ since: seen.messages[0].id }]);
    const after = seen.messages.slice(1);
    assert.equal(after.length, 100, "the newest 100 instead of the gap");
    assert.equal(after[after.length - 1].id, total + 1);
    assert.deepEqual(after.map((m) => m.id), Array.from({ length: 100 }, (_, i) => total - 98 + i));
    // Live messages still flow after the gap.
    await publish(server.url, room, "after");
    await waitFor(() => seen.messages.at(-1)?.message === "after", "a live message after the gap");
  } finally {
    await client.close();
    await server.stop();
    data.cleanup();
  }
});

test("rate-limited sends are retried and resolve", { timeout: 120_000 }, async () => {
  const data = dataDir();
  // No grace: every action puts this IP into a cooldown of one cost.
  const server = await startServer({ db: data.db, costMs: 150, graceMs: 0 });
  const room = roomName("limited");
  const sender = connect({ url: server.url, room, name: "Eager", rateLimitCostMs: 150, ...FAST });
  const watcher = connect({ url: server.url, room, name: "Watcher", rateLimitCostMs: 150, ...FAST });
  const sent = record(sender);
  const watched = record(watcher);
  try {
    await waitFor(() => sender.state === "live" && watcher.state === "live", "both live");
    const texts = ["one", "two", "three", "four", "five"];
    const ids = await within(Promise.all(texts.map((t) => sender.send(t))), "all five acknowledged", 60_000);
    assert.ok(sent.ratelimited.length > 0, "the limiter refused at least one frame");
    assert.ok(sent.ratelimited.every((r) => r.message === "Your IP is being rate-limited, please try again later."));
    await waitFor(() => watched.messages.length === 5, "five messages at the watcher");
    assert.deepEqual(watched.messages.map((m) => m.message), texts);
    assert.deepEqual(watched.messages.map((m) => m.id), ids);
  } finally {
    await sender.close();
    await watcher.close();
    await server.stop();
    data.cleanup();
  }
});

test("a server that stops answering: the send times out, the client rejoins, the send settles once", { timeout: 120_000 }, async () => {
  const data = dataDir();
  const server = await startServer({ db: data.db });
  const room = roomName("stalled");
  const writer = connect({ url: server.url, room, name: "Writer", sendTimeoutMs: 300, joinTimeoutMs: 500, ...FAST });
  const reader = connect({ url: server.url, room, name: "Reader", ...FAST });
  const writerSeen = record(writer);
  const readerSeen = record(reader);
  let stopped = false;
  try {
    await waitFor(() => writer.state === "live" && reader.state === "live", "both live");
    await within(writer.send("before the stall"), "the first send");
    // The process stops but its sockets stay open: nothing closes, nothing answers.
    process.kill(server.child.pid, "SIGSTOP");
    stopped = true;
    const pending = writer.send("during the stall");
    await waitFor(() => writer.state === "reconnecting", "the writer gives up on the silent socket");
    // Its rejoins reach the kernel's backlog and hang there too, until the join timeout.
    await waitFor(() => writerSeen.reconnects.length >= 2, "a rejoin timed out during the stall");
    assert.notEqual(writer.state, "live");
    process.kill(server.child.pid, "SIGCONT");
    stopped = false;
    const id = await within(pending, "the send made during the stall");
    await waitFor(() => reader.lastId >= id && writer.lastId >= id, "both caught up");
    for (const seen of [writerSeen, readerSeen]) {
      assert.deepEqual(seen.messages.filter((m) => m.name === "Writer").map((m) => m.message),
        ["before the stall", "during the stall"], "each message exactly once");
    }
    assert.equal(writerSeen.messages.find((m) => m.message === "during the stall").id, id);
    // Each message carries the key its sender gave it, the same in every resend.
    for (const m of writerSeen.messages) assert.match(m.key ?? "", /^[0-9a-f]{32}$/);
  } finally {
    if (stopped) process.kill(server.child.pid, "SIGCONT");
    await writer.close();
    await reader.close();
    await server.stop();
    data.cleanup();
  }
});
