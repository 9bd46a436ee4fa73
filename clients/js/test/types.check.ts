// Compiled (never run) by test/ci.sh with `tsc --noEmit`: the declarations in edgechat.d.ts
// describe what a TypeScript application writes against the module.
import { connect, CLOSE_BANNED, CLOSE_KICKED, CLOSE_TOKEN_EXPIRED, EdgechatError, ERROR_RATE_LIMITED, tokenExpiryMs, type ChatMessage, type ConnectionState } from "../edgechat.js";

const room = connect({ url: "https://chat.example.com", room: "lobby", name: "Ada", getToken: async () => "t" });
const stop: () => void = room.on("message", (m: ChatMessage) => console.log(m.id, m.name, m.message, m.timestamp));
room.on("state", ({ state, previous }) => { const s: ConnectionState = state; console.log(s, previous); });
room.on("gap", ({ since }) => console.log(since.toFixed()));
room.on("ratelimited", ({ retryInMs, message }) => console.log(retryInMs, message === ERROR_RATE_LIMITED));
room.on("roster", ({ roster, counts }) => console.log([...roster], counts.get("Ada")));
room.addEventListener("ready", (event) => console.log(event.type));
room.on("refreshed", ({ expiresAt }) => console.log(expiresAt ?? tokenExpiryMs("a.b.c"), CLOSE_TOKEN_EXPIRED));
room.on("deleted", ({ id }) => console.log(id.toFixed()));
room.on("edited", ({ id, message }) => console.log(id, message.length));
room.on("topic", ({ topic }) => console.log(topic.length));
room.on("message", (m) => console.log(m.user ?? "anonymous", m.edited === true));
room.on("error", ({ code }) => console.log(code === CLOSE_KICKED || code === CLOSE_BANNED));
connect({ room: "lobby", token: "t", getToken: () => null, refreshBeforeMs: 5_000 });
stop();

async function main(): Promise<void> {
  try {
    const id: number = await room.send("hello");
    console.log(id);
  } catch (error) {
    if (error instanceof EdgechatError && error.server) console.log(error.message);
  }
  const { messages, hasMore } = await room.loadOlder({ limit: 10 });
  const users: string[] = await room.presence();
  const names: Set<string> = room.roster;
  const last: number = room.lastId;
  const recovered: boolean | undefined = room.recovered;
  console.log(messages.length, hasMore, users, names, last, recovered);
  await room.close();
}
void main();

// @ts-expect-error: `room` is required.
connect({ url: "http://x", name: "n" });
// @ts-expect-error: no such event.
room.on("nonsense", () => {});
