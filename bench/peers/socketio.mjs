// bench/run.sh's socket.io peer: chat rooms with edgechat's semantics on one socket.io 4
// server, WebSocket transport only, everything in memory.
//
//   node socketio.mjs [port]          (127.0.0.1; default 18789)
//
// A client opens /socket.io/?EIO=4&transport=websocket&room=<room>, emits
// join {name}, and receives the room's history (the last 100 messages) as `message` events,
// then `ready`. Each `message` {message} it emits goes to every member of the room, the
// sender included, as `message` {name, message, timestamp}; the others also see `joined`
// when someone joins. Refusals are `failure` events (socket.io reserves `error`).
import { createServer } from "node:http";
import { Server } from "socket.io";

const HISTORY = 100;
const NAME_MAX = 32;
const MESSAGE_MAX = 256;
const port = Number(process.argv[2] ?? 18789);

/** Room name → its last HISTORY messages, oldest first. */
const histories = new Map();

const http = createServer((req, res) => {
  res.writeHead(req.url === "/" ? 200 : 404, { "content-type": "text/plain" });
  res.end(req.url === "/" ? "ok\n" : "not found\n");
});
const io = new Server(http, {
  transports: ["websocket"],
  serveClient: false,
  perMessageDeflate: false,
});

io.on("connection", (socket) => {
  const room = String(socket.handshake.query.room ?? "");
  let name = null;
  socket.on("join", (data) => {
    const wanted = data?.name;
    if (name !== null || typeof wanted !== "string" || wanted.length === 0 || wanted.length > NAME_MAX) {
      socket.emit("failure", "bad join");
      return;
    }
    name = wanted;
    socket.join(room);
    for (const message of histories.get(room) ?? []) socket.emit("message", message);
    socket.emit("ready", {});
    socket.to(room).emit("joined", name);
  });
  socket.on("message", (data) => {
    const text = data?.message;
    if (name === null || typeof text !== "string" || text.length > MESSAGE_MAX) {
      socket.emit("failure", "not joined, or message too long");
      return;
    }
    const message = { name, message: text, timestamp: Date.now() };
    let history = histories.get(room);
    if (!history) histories.set(room, (history = []));
    history.push(message);
    if (history.length > HISTORY) history.shift();
    io.to(room).emit("message", message);
  });
  socket.on("disconnect", () => {
    if (name !== null) socket.to(room).emit("quit", name);
  });
});

http.listen(port, "127.0.0.1", () => console.log(`listening on 127.0.0.1:${port}`));
for (const signal of ["SIGINT", "SIGTERM"]) {
  process.on(signal, () => {
    io.close();
    process.exit(0);
  });
}
