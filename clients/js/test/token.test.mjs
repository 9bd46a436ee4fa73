// Signed tokens against a real `edgechat serve --auth-mode required` with no leeway: a client
// with `getToken` refreshes its connection's token before it expires and outlives it; with a
// static `token` the expiry closes it (4001) for good; reads send the token as a bearer.

import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { writeFileSync } from "node:fs";
import { join } from "node:path";
import { CLOSE_TOKEN_EXPIRED, connect, tokenExpiryMs } from "../edgechat.js";
import { dataDir, hs256Token, record, roomName, startServer, waitFor, within } from "./harness.mjs";

const SECRET = "the js client test secret, 32 bytes or more";
const FAST = { reconnectInitialMs: 50, reconnectMaxMs: 500 };
/** Token lifetime: short, so the tests see an expiry; the server has no leeway. */
const TTL_S = 4;

let data;
let server;

before(async () => {
  data = dataDir();
  const secretFile = join(data.dir, "hs256");
  writeFileSync(secretFile, SECRET);
  server = await startServer({
    db: data.db,
    args: ["--auth-mode", "required", "--auth-hs256-secret-file", secretFile, "--auth-leeway-ms", "0"],
  });
});

after(async () => {
  await server?.stop();
  data?.cleanup();
});

/** A token for `sub` named `name` in every room, expiring `ttlS` seconds from now. */
function mint(sub, name, ttlS = TTL_S) {
  const exp = Math.ceil(Date.now() / 1000) + ttlS;
  return hs256Token(SECRET, { sub, name, exp, rooms: { "*": "write" } });
}

test("tokenExpiryMs reads exp for scheduling only, and tolerates garbage", () => {
  assert.equal(tokenExpiryMs(hs256Token(SECRET, { sub: "a", exp: 1234 })), 1_234_000);
  for (const bad of [undefined, "", "abc", "a.b.c", "a.e30.c", "a.!!!.c"]) assert.equal(tokenExpiryMs(bad), undefined);
});

test("with getToken the connection outlives its first token: refreshed in place, no reconnect", async () => {
  const room = roomName("refresh");
  let calls = 0;
  const getToken = () => { calls += 1; return mint("u-ada", "Ada"); };
  const client = connect({ url: server.url, room, name: "ignored", getToken, ...FAST });
  const seen = record(client);
  const refreshed = [];
  client.on("refreshed", (r) => refreshed.push(r));
  try {
    await waitFor(() => client.state === "live", "live");
    assert.equal(client.name, "Ada", "the token's name, as the server answered");
    const firstExpiry = Math.ceil(Date.now() / 1000) * 1000 + TTL_S * 1000;
    // Well past the first token's expiry (and the server's close it would bring).
    await waitFor(() => Date.now() > firstExpiry + 3_000 && refreshed.length >= 2, "two refreshes past the first expiry");
    const id = await within(client.send("still here"), "a send after the first token expired");
    assert.ok(Number.isSafeInteger(id));
    assert.deepEqual(seen.reconnects, [], "never reconnected");
    assert.deepEqual(seen.states, ["live"], "live throughout");
    assert.deepEqual(seen.errors, []);
    assert.ok(calls >= 3, `getToken called for the join and each refresh (${calls})`);
    assert.ok(refreshed.every((r) => typeof r.expiresAt === "number"));
  } finally {
    await client.close();
  }
});

test("negative control: with a static token the expiry closes the client for good (4001)", async () => {
  const room = roomName("expire");
  const client = connect({ url: server.url, room, name: "ignored", token: mint("u-bob", "Bob", 2), ...FAST });
  const seen = record(client);
  try {
    await waitFor(() => client.state === "live", "live");
    assert.equal(client.name, "Bob");
    await waitFor(() => client.state === "closed", "closed by the expiry");
    assert.deepEqual(seen.errors, [{ message: "Token expired.", fatal: true, code: CLOSE_TOKEN_EXPIRED }]);
    await assert.rejects(client.send("too late"), /closed/);
  } finally {
    await client.close();
  }
});

test("after an expiry close, getToken's fresh token rejoins", async () => {
  const room = roomName("rejoin");
  // The provider has nothing newer than the first token until it has expired, so the server
  // closes the connection (4001); the reconnect then asks for a token and gets a fresh one.
  const first = mint("u-cy", "Cy", 1);
  const firstExpiry = tokenExpiryMs(first) ?? 0;
  const getToken = () => (Date.now() < firstExpiry ? first : mint("u-cy", "Cy", 600));
  const client = connect({ url: server.url, room, name: "ignored", getToken, ...FAST });
  const seen = record(client);
  try {
    await waitFor(() => seen.ready.length >= 2 && client.state === "live", "a rejoin after the first token's expiry");
    assert.ok(seen.reconnects.length >= 1);
    assert.equal(client.name, "Cy");
    assert.ok(Number.isSafeInteger(await within(client.send("back"), "a send after the rejoin")));
  } finally {
    await client.close();
  }
});

test("history and presence take the token as a bearer credential", async () => {
  const room = roomName("bearer");
  const client = connect({ url: server.url, room, name: "ignored", token: mint("u-dee", "Dee", 600), ...FAST });
  try {
    await waitFor(() => client.state === "live", "live");
    await within(client.send("kept"), "send");
    // Without the bearer token both would be refused (401 "A token is required.").
    const page = await within(client.loadOlder({ limit: 10 }), "history");
    assert.deepEqual(page, { messages: [], hasMore: false }, "nothing before the first message");
    assert.deepEqual(await within(client.presence(), "presence"), ["Dee"]);
    // A reader without a token is refused with the server's text and status.
    const anonymous = connect({ url: server.url, room, name: "anon", ...FAST });
    try {
      const refused = await within(anonymous.presence().catch((error) => error), "refused presence");
      assert.equal(refused.message, "A token is required.");
      assert.equal(refused.status, 401);
    } finally {
      await anonymous.close();
    }
  } finally {
    await client.close();
  }
});

test("a refused refresh is reported, never taken for a send's answer; the expiry then rejoins", async () => {
  const room = roomName("refused");
  // The first token is Fay's; every later one names another user, which the server refuses
  // as a refresh ("must name the same user") but admits on a new connection.
  let calls = 0;
  const getToken = () => { calls += 1; return calls === 1 ? mint("u-fay", "Fay") : mint("u-gus", "Gus", 600); };
  const client = connect({ url: server.url, room, name: "ignored", getToken, ...FAST });
  const seen = record(client);
  try {
    await waitFor(() => client.state === "live", "live");
    assert.equal(client.name, "Fay");
    // Sends keep going while the refresh is tried and refused: each is acknowledged.
    const sends = [];
    await waitFor(() => {
      if (sends.length < 200 && client.state === "live") sends.push(client.send(`m${sends.length}`));
      return seen.errors.length > 0;
    }, "the refused refresh");
    assert.deepEqual(seen.errors, [{ message: "Token refresh refused: A refreshed token must name the same user.", fatal: false }]);
    const ids = await within(Promise.all(sends), "every send acknowledged");
    assert.ok(ids.every(Number.isSafeInteger));
    // The first token then expires: the server closes (4001), the client rejoins as Gus.
    await waitFor(() => seen.ready.length >= 2 && client.state === "live", "the rejoin");
    assert.equal(client.name, "Gus");
  } finally {
    await client.close();
  }
});
