// The client with moderation against a real server: deletions, edits and the topic as events
// (change records count for `lastId`), replays to a later joiner, and kicks and bans that close
// the client for good with their codes.

import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { connect, CLOSE_BANNED, CLOSE_KICKED } from "../edgechat.js";
import { ADMIN_TOKEN, dataDir, record, roomName, startServer, waitFor, within } from "./harness.mjs";

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

/** One moderation action through the admin API; resolves with the parsed answer. */
async function moderate(room, action) {
  const response = await fetch(`${server.url}/api/room/${encodeURIComponent(room)}/moderate`, {
    method: "POST",
    headers: { authorization: `Bearer ${ADMIN_TOKEN}`, "content-type": "application/json" },
    body: JSON.stringify(action),
  });
  const body = await response.text();
  assert.equal(response.status, 200, `${JSON.stringify(action)}: ${body}`);
  return JSON.parse(body);
}

/** Records the moderation events too. */
function recordAll(client) {
  const seen = record(client);
  seen.deleted = [];
  seen.edited = [];
  seen.topics = [];
  client.on("deleted", (d) => seen.deleted.push(d.id));
  client.on("edited", (e) => seen.edited.push(e));
  client.on("topic", (t) => seen.topics.push(t.topic));
  return seen;
}

test("deletions, edits and the topic arrive as events, live and replayed; lastId counts change records", async () => {
  const room = roomName("mod");
  const ada = connect({ url: server.url, room, name: "Ada", ...FAST });
  const adaSeen = recordAll(ada);
  let carol;
  try {
    await waitFor(() => ada.state === "live", "Ada live");
    const ids = [];
    for (const text of ["one", "two", "three"]) ids.push(await within(ada.send(text), `send ${text}`));
    await moderate(room, { delete: ids[0] });
    await moderate(room, { edit: ids[1], message: "TWO" });
    await moderate(room, { settings: { topic: "Welcome" } });
    await waitFor(() => adaSeen.deleted.length === 1 && adaSeen.edited.length === 1 && adaSeen.topics.includes("Welcome"), "changes at Ada");
    assert.deepEqual(adaSeen.deleted, [ids[0]]);
    assert.deepEqual(adaSeen.edited, [{ id: ids[1], message: "TWO" }]);
    // The two change records have ids of their own after the messages': `since` must skip them.
    assert.equal(ada.lastId, ids[2] + 2);

    carol = connect({ url: server.url, room, name: "Carol", ...FAST });
    const carolSeen = recordAll(carol);
    await waitFor(() => carol.state === "live", "Carol live");
    assert.deepEqual(carolSeen.topics, ["Welcome"], "the topic comes with the join");
    const shown = carolSeen.messages.map((m) => [m.id, m.message, m.edited === true]);
    assert.deepEqual(shown, [[ids[1], "TWO", true], [ids[2], "three", false]], "the replay shows the current state");
    assert.ok(carolSeen.deleted.includes(ids[0]), "the tombstone of the deleted message");
    assert.ok(!carolSeen.messages.some((m) => m.message === "one"), "the deleted text never comes back");
    assert.equal(carol.lastId, ids[2] + 2);

    const older = await carol.loadOlder({ limit: 10 });
    assert.deepEqual(older.messages.map((m) => m.message), [], "nothing older than what the join showed");
  } finally {
    await ada.close();
    await carol?.close();
  }
});

test("a kick (4010) and a ban (4011) close the client for good; a banned name cannot rejoin", async () => {
  const room = roomName("kick");
  const bob = connect({ url: server.url, room, name: "Bob", ...FAST });
  const bobSeen = recordAll(bob);
  let again, third;
  try {
    await waitFor(() => bob.state === "live", "Bob live");
    await moderate(room, { kick: "Bob" });
    await waitFor(() => bob.state === "closed", "Bob closed by the kick");
    assert.deepEqual(bobSeen.errors.map((e) => [e.fatal, e.code, e.message]), [[true, CLOSE_KICKED, "Removed by a moderator."]]);
    assert.equal(bobSeen.reconnects.length, 0, "no reconnect after a kick");

    again = connect({ url: server.url, room, name: "Bob", ...FAST });
    const againSeen = recordAll(again);
    await waitFor(() => again.state === "live", "Bob back after the kick");
    await moderate(room, { ban: "Bob" });
    await waitFor(() => again.state === "closed", "Bob closed by the ban");
    assert.deepEqual(againSeen.errors.map((e) => [e.fatal, e.code, e.message]), [[true, CLOSE_BANNED, "Banned from this room."]]);

    third = connect({ url: server.url, room, name: "Bob", ...FAST });
    const thirdSeen = recordAll(third);
    await waitFor(() => third.state === "closed", "a banned join is refused");
    assert.equal(thirdSeen.errors[0]?.message, "Banned from this room.");
    assert.equal(thirdSeen.errors[0]?.fatal, true);
    assert.equal(thirdSeen.ready.length, 0);
  } finally {
    await bob.close();
    await again?.close();
    await third?.close();
  }
});

test("a resume after a restart asks after the last change record: nothing is delivered twice", { timeout: 60_000 }, async () => {
  const own = dataDir();
  let restarted = await startServer({ db: own.db });
  const port = restarted.port;
  const room = roomName("resume");
  const action = async (body) => {
    const response = await fetch(`${restarted.url}/api/room/${room}/moderate`, {
      method: "POST",
      headers: { authorization: `Bearer ${ADMIN_TOKEN}`, "content-type": "application/json" },
      body: JSON.stringify(body),
    });
    assert.equal(response.status, 200, await response.text());
  };
  const ada = connect({ url: restarted.url, room, name: "Ada", ...FAST });
  const seen = recordAll(ada);
  try {
    await waitFor(() => ada.state === "live", "Ada live");
    const ids = [];
    for (const text of ["a", "b", "c"]) ids.push(await within(ada.send(text), `send ${text}`));
    await action({ delete: ids[0] });
    await waitFor(() => seen.deleted.length === 1, "the deletion");
    const before = ada.lastId;
    assert.equal(before, ids[2] + 1, "the change record's id");
    await restarted.stop("SIGTERM");
    restarted = await startServer({ db: own.db, port });
    await waitFor(() => seen.ready.length === 2, "Ada resumed");
    assert.deepEqual(seen.ready[1], { recovered: true, resumed: true });
    await action({ edit: ids[1], message: "B" });
    const last = await within(ada.send("d"), "send after the resume");
    await waitFor(() => seen.edited.length === 1 && seen.messages.length === 4, "the edit and the new message");
    assert.deepEqual(seen.deleted, [ids[0]], "the deletion once, not again from the replay");
    assert.deepEqual(seen.edited, [{ id: ids[1], message: "B" }]);
    assert.deepEqual(seen.messages.map((m) => m.message), ["a", "b", "c", "d"]);
    assert.equal(last, before + 2, "ids go on after the change records");
    assert.equal(ada.lastId, last);
  } finally {
    await ada.close();
    await restarted.stop();
    own.cleanup();
  }
});
