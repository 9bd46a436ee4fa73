// The chat page's script: the join form, the conversation, the roster and the composer.
//
// Everything about the connection (reconnecting with backoff, resuming with `since`, showing
// each message once, acknowledging sends) is the client module's, /edgechat.js
// (clients/js/edgechat.js); this file only draws what its events say. It is a file of its own,
// not inline, because the page is served with a policy that forbids inline script.
//
// URLs are relative to the page, so that it also works mounted under a prefix (/chat/).
//
// Signed-in links: an application that signs tokens for edgechat links its users to
// `/#<room>&token=<jwt>`. The token rides in the fragment because browsers never send a
// fragment to any server: it stays out of access logs, proxies and Referer headers (a
// `?token=` query would land in all three). The page takes it out of the address bar at once
// (so it is not bookmarked or shared along with the room link) and keeps it in
// sessionStorage, which only this tab sees, so a reload stays signed in. The page joins
// without asking for a name, passes the token on the WebSocket URL, and shows the name the
// server answered with; it never decodes the token itself.

import { CLOSE_BANNED, CLOSE_KICKED, CLOSE_TOKEN_EXPIRED, connect } from "./edgechat.js";

/** Where the page is served: the server's base URL (with any mount prefix). */
const SERVER_URL = new URL(".", location.href).href;

const NAME_MAX = 32, MESSAGE_MAX = 256, ROOM_NAME_MAX = 32;
const NOTICE_MS = 6000;
const TOKEN_KEY = "edgechat.token";
const EXPIRED_TEXT = "Your sign-in has expired. Open a fresh link from your app to sign in again, or join as a guest.";
const KICKED_TEXT = "A moderator removed you from this room. Press Leave to join again.";
const BANNED_TEXT = "You are banned from this room.";
const $ = (id) => document.getElementById(id);
const ui = {
  join: $("join"), name: $("name"), room: $("room"), joinError: $("join-error"), create: $("create"),
  chat: $("chat"), messages: $("messages"), composer: $("composer"), message: $("message"),
  send: $("send"), counter: $("counter"), notice: $("notice"), roster: $("roster"),
  rosterCount: $("roster-count"), status: $("status"), roomTitle: $("room-title"),
  leave: $("leave"), share: $("share"), shareLink: $("share-link"), copy: $("copy"),
  whoami: $("whoami"), nameField: $("name-field"), joinIntro: $("join-intro"), topic: $("topic"),
};

/**
 * The room joined now: the client, the countdown shown while it waits to reconnect, whether
 * it ever joined, and whether a failed first join was looked into.
 * @type {{ client: import("./edgechat.js").RoomClient, room: string, everReady: boolean, probed: boolean, tick?: ReturnType<typeof setInterval> } | null}
 */
let session = null;
/** @type {ReturnType<typeof setTimeout> | undefined} */
let noticeTimer;

const isPrivateId = (room) => /^[0-9a-f]{64}$/.test(room);
const cleanRoom = (raw) => {
  const room = raw.trim();
  if (isPrivateId(room.toLowerCase())) return room.toLowerCase();
  return room.replace(/\s+/g, "-").replace(/[^A-Za-z0-9_-]/g, "");
};
/** The fragment's parts: `#<room>`, optionally with `&token=<jwt>`. */
const parseHash = () => {
  let room = "", token = "";
  for (const part of location.hash.slice(1).split("&")) {
    if (part.startsWith("token=")) token = part.slice("token=".length).trim();
    else if (part && !room) {
      try { room = cleanRoom(decodeURIComponent(part)); } catch { /* not a room */ }
    }
  }
  return { room, token };
};
const roomFromHash = () => parseHash().room;

/** The signed-in token of this tab, if any: from a link, or kept for reloads. */
let signedToken = "";
try { signedToken = sessionStorage.getItem(TOKEN_KEY) || ""; } catch { /* storage off */ }

/** Adopts the token of a link (if it has one) and takes it out of the address bar. */
function takeTokenFromHash() {
  const { room, token } = parseHash();
  if (!token) return;
  setSignedToken(token);
  history.replaceState(null, "", room ? "#" + room : location.pathname + location.search);
}

/** Sets (or, with "", forgets) the tab's token, and the join form that goes with it. */
function setSignedToken(token) {
  signedToken = token;
  try {
    if (token) sessionStorage.setItem(TOKEN_KEY, token);
    else sessionStorage.removeItem(TOKEN_KEY);
  } catch { /* storage off: the token lasts until a reload */ }
  // With a token the server decides the name: the form asks only for a room.
  ui.nameField.hidden = Boolean(token);
  ui.joinIntro.textContent = token
    ? "You are signed in by your link. Pick a room."
    : "Pick a name and a public room, or create a private room and share its link.";
}

function setStatus(state, text) {
  ui.status.dataset.state = state;
  ui.status.textContent = text;
}

function showJoinError(text) { ui.joinError.textContent = text; }

function showNotice(text) {
  ui.notice.textContent = text;
  clearTimeout(noticeTimer);
  if (text) noticeTimer = setTimeout(() => { ui.notice.textContent = ""; }, NOTICE_MS);
}

function formatTime(ms) {
  const when = new Date(ms);
  const now = new Date();
  const time = when.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
  if (when.toDateString() === now.toDateString()) return time;
  return when.toLocaleDateString([], { month: "short", day: "numeric" }) + " " + time;
}

function nearBottom() {
  const m = ui.messages;
  return m.scrollHeight - m.scrollTop - m.clientHeight < 80;
}

function append(node) {
  const stick = nearBottom();
  ui.messages.querySelector(".empty")?.remove();
  ui.messages.appendChild(node);
  if (stick) ui.messages.scrollTop = ui.messages.scrollHeight;
}

function addNote(text, kind) {
  const li = document.createElement("li");
  li.className = "note" + (kind ? " " + kind : "");
  li.textContent = text;
  append(li);
}

/** One chat message; the client delivers each once, in id order. */
function addMessage(data, mine, live) {
  const li = document.createElement("li");
  li.className = "msg" + (mine ? " mine" : "") + (live ? " fresh" : "");
  if (typeof data.id === "number") li.dataset.id = String(data.id);
  const sent = new Date(data.timestamp);
  const time = document.createElement("time");
  if (!Number.isNaN(sent.getTime())) {
    time.dateTime = sent.toISOString();
    time.title = sent.toLocaleString();
    time.textContent = formatTime(data.timestamp);
  }
  const who = document.createElement("span");
  who.className = "who";
  who.textContent = data.name;
  const text = document.createElement("span");
  text.className = "text";
  text.textContent = data.message;
  li.append(time, who, text);
  if (data.edited) markEdited(li);
  append(li);
}

/** The shown message `id`, if it is on the page. */
const shownMessage = (id) => ui.messages.querySelector(`li.msg[data-id="${id}"]`);

function markEdited(li) {
  if (li.querySelector(".edited")) return;
  const mark = document.createElement("span");
  mark.className = "edited";
  mark.textContent = "(edited)";
  li.append(mark);
}

/** A deleted message stays in its place as a short note, its text gone. */
function showDeleted(id) {
  const li = shownMessage(id);
  if (!li || li.classList.contains("deleted")) return;
  li.classList.add("deleted");
  li.querySelector(".edited")?.remove();
  const text = li.querySelector(".text");
  if (text) text.textContent = "message deleted";
}

function showEdited(id, message) {
  const li = shownMessage(id);
  if (!li || li.classList.contains("deleted")) return;
  const text = li.querySelector(".text");
  if (text) text.textContent = message;
  markEdited(li);
}

function showTopic(topic) {
  ui.topic.textContent = topic;
  ui.topic.title = topic;
  ui.topic.hidden = !topic;
}

/** @param {Map<string, number>} counts @param {string} me */
function renderRoster(counts, me) {
  ui.roster.textContent = "";
  const names = [...counts.entries()].sort((a, b) => a[0].localeCompare(b[0]));
  let total = 0;
  for (const [name, count] of names) {
    total += count;
    const li = document.createElement("li");
    li.textContent = count > 1 ? `${name} (${count})` : name;
    li.title = name;
    if (name === me) li.classList.add("me");
    ui.roster.appendChild(li);
  }
  ui.rosterCount.textContent = total ? `(${total})` : "";
}

function setComposerEnabled(enabled) {
  ui.send.disabled = !enabled;
  ui.message.setAttribute("aria-disabled", String(!enabled));
}

function updateCounter() {
  const left = MESSAGE_MAX - ui.message.value.length;
  ui.counter.textContent = left <= 40 ? String(left) : "";
  ui.counter.classList.toggle("over", left < 0);
}

/** "Reconnecting in N s…", counted down until the client opens its next socket. */
function showReconnectWait(s, delayMs) {
  clearInterval(s.tick);
  let left = Math.ceil(delayMs / 1000);
  const show = () => {
    if (left > 0) setStatus("waiting", `Reconnecting in ${left} s…`);
    else { clearInterval(s.tick); setStatus("connecting", "Reconnecting…"); }
  };
  show();
  s.tick = setInterval(() => { left -= 1; show(); }, 1000);
}

function start(name, room) {
  if (session) leave();
  const token = signedToken || undefined;
  const client = connect({ url: SERVER_URL, room, name, token });
  const s = { client, room, everReady: false, probed: false };
  session = s;
  const current = () => session === s;
  if (!token) {
    try { localStorage.setItem("edgechat.name", name); } catch { /* private mode */ }
  }
  if (roomFromHash() !== room) history.replaceState(null, "", "#" + room);
  ui.messages.textContent = "";
  ui.notice.textContent = "";
  showTopic("");
  showJoinError("");
  ui.join.hidden = true;
  ui.chat.hidden = false;
  ui.leave.hidden = false;
  const title = isPrivateId(room) ? "Private room" : "#" + room;
  ui.roomTitle.textContent = title;
  ui.roomTitle.title = room;
  document.title = title + " · edgechat";
  ui.share.hidden = false;
  ui.shareLink.textContent = location.origin + location.pathname + "#" + room;
  setComposerEnabled(false);
  renderRoster(new Map(), name);
  setStatus("connecting", "Connecting…");

  client.on("state", ({ state }) => {
    if (!current()) return;
    setComposerEnabled(state === "live");
    if (state !== "reconnecting") clearInterval(s.tick);
    if (state === "live") setStatus("live", "Live");
  });
  client.on("reconnect", ({ delayMs }) => {
    if (!current()) return;
    showReconnectWait(s, delayMs);
    // Never joined: a browser hides why an upgrade failed, so ask once over HTTP, where a
    // refused token (or a missing one) comes back with the server's own words.
    if (!s.everReady && !s.probed) {
      s.probed = true;
      client.presence().catch((error) => {
        if (!current() || s.everReady || (error.status !== 401 && error.status !== 403)) return;
        leave();
        if (token) setSignedToken("");
        showJoinError(token ? `Your sign-in link was refused: ${error.message}` : `This room needs a sign-in: ${error.message}`);
      });
    }
  });
  client.on("message", (message) => {
    if (current()) addMessage(message, message.name === client.name, client.state === "live");
  });
  client.on("deleted", ({ id }) => { if (current()) showDeleted(id); });
  client.on("edited", ({ id, message }) => { if (current()) showEdited(id, message); });
  client.on("topic", ({ topic }) => { if (current()) showTopic(topic); });
  client.on("roster", ({ counts }) => { if (current()) renderRoster(counts, client.name); });
  client.on("join", ({ name: who }) => { if (current()) addNote(`${who} joined`); });
  client.on("quit", ({ name: who }) => { if (current()) addNote(`${who} left`); });
  client.on("gap", () => {
    if (current()) addNote("Some messages sent while you were away could not be recovered.", "error");
  });
  client.on("ready", ({ resumed, recovered }) => {
    if (!current()) return;
    s.everReady = true;
    if (token) {
      // Who we are is the server's answer (our own `joined`), not the token's claims.
      ui.whoami.textContent = "Signed in as ";
      const strong = document.createElement("strong");
      strong.textContent = client.name;
      ui.whoami.append(strong);
      ui.whoami.hidden = false;
    }
    if (resumed && recovered !== false) addNote("Reconnected");
    if (!ui.messages.querySelector(".msg")) {
      const li = document.createElement("li");
      li.className = "empty";
      li.textContent = "No messages yet. Say hello!";
      ui.messages.appendChild(li);
    }
  });
  client.on("ratelimited", ({ message }) => { if (current()) showNotice(`${message} Retrying…`); });
  client.on("error", ({ message, fatal, code }) => {
    if (!current()) return;
    if (!fatal) { showNotice(message); return; }
    if (code === CLOSE_TOKEN_EXPIRED) {
      // The server closed the connection at the token's expiry: only the app can sign in
      // anew. Forget the token; the form offers a guest join meanwhile.
      leave();
      setSignedToken("");
      showJoinError(EXPIRED_TEXT);
      return;
    }
    if (code === CLOSE_KICKED || code === CLOSE_BANNED) {
      // Removed by a moderator: the conversation stays on screen, the composer goes.
      s.client.close();
      setComposerEnabled(false);
      clearInterval(s.tick);
      setStatus("closed", code === CLOSE_KICKED ? "Removed" : "Banned");
      renderRoster(new Map(), "");
      addNote(code === CLOSE_KICKED ? KICKED_TEXT : BANNED_TEXT, "error");
      ui.notice.textContent = "";
      return;
    }
    // The server refused the join itself (e.g. the name is too long): retrying won't help.
    leave();
    showJoinError(message);
  });
  ui.message.focus();
}

function leave() {
  const s = session;
  if (!s) return;
  session = null;
  clearInterval(s.tick);
  s.client.close();
  ui.chat.hidden = true;
  ui.join.hidden = false;
  ui.leave.hidden = true;
  ui.whoami.hidden = true;
  ui.roomTitle.textContent = "";
  showTopic("");
  document.title = "edgechat";
  setStatus("idle", "Not connected");
}

function validName() {
  const name = ui.name.value.trim();
  if (!name) { showJoinError("Please enter a name."); ui.name.focus(); return null; }
  if (name.length > NAME_MAX) { showJoinError("Your name must be at most 32 characters."); ui.name.focus(); return null; }
  return name;
}

/** The name to join with: "" with a token (the server takes the token's), null if invalid. */
function joinName() {
  return signedToken ? "" : validName();
}

ui.join.addEventListener("submit", (event) => {
  event.preventDefault();
  const name = joinName();
  if (name === null) return;
  const room = cleanRoom(ui.room.value);
  if (!room) { showJoinError("Please enter a room name, or create a private room."); ui.room.focus(); return; }
  if (!isPrivateId(room) && room.length > ROOM_NAME_MAX) {
    showJoinError("Room names are at most 32 characters."); ui.room.focus(); return;
  }
  start(name, room);
});

ui.create.addEventListener("click", async () => {
  const name = joinName();
  if (name === null) return;
  ui.create.disabled = true;
  try {
    const response = await fetch(new URL("api/room", SERVER_URL), { method: "POST" });
    const text = (await response.text()).trim();
    if (!response.ok || !isPrivateId(text)) throw new Error(text || response.statusText);
    ui.room.value = text;
    start(name, text);
  } catch (e) {
    showJoinError("Could not create a room: " + e.message);
  } finally {
    ui.create.disabled = false;
  }
});

ui.composer.addEventListener("submit", (event) => {
  event.preventDefault();
  const s = session;
  const text = ui.message.value;
  if (!s || s.client.state !== "live" || !text.trim()) return;
  if (text.length > MESSAGE_MAX) { showNotice("Messages are at most 256 characters."); return; }
  ui.message.value = "";
  updateCounter();
  // The message appears when the server broadcasts it back; a refusal is shown, and the
  // text comes back to the box if nothing new was typed there.
  s.client.send(text).catch((error) => {
    if (session !== s) return;
    showNotice(error.message);
    if (!ui.message.value) { ui.message.value = text; updateCounter(); }
  });
});

ui.message.addEventListener("input", updateCounter);
ui.leave.addEventListener("click", () => { leave(); history.replaceState(null, "", location.pathname); });
ui.copy.addEventListener("click", async () => {
  try { await navigator.clipboard.writeText(ui.shareLink.textContent); ui.copy.textContent = "Copied"; }
  catch { ui.copy.textContent = "Select and copy"; }
  setTimeout(() => { ui.copy.textContent = "Copy link"; }, 1500);
});

// Come back at once when the network or the tab does.
const nudge = () => session?.client.reconnectNow();
window.addEventListener("online", nudge);
document.addEventListener("visibilitychange", () => { if (!document.hidden) nudge(); });

window.addEventListener("hashchange", () => {
  const fresh = parseHash().token;
  takeTokenFromHash();
  const room = roomFromHash();
  if (!room || (session && session.room === room && !fresh)) return;
  ui.room.value = room;
  if (signedToken) { start("", room); return; }
  const name = ui.name.value.trim();
  if (name && name.length <= NAME_MAX) start(name, room);
});

try { ui.name.value = localStorage.getItem("edgechat.name") || ""; } catch { /* private mode */ }
takeTokenFromHash();
setSignedToken(signedToken);
const fromHash = roomFromHash();
if (fromHash) ui.room.value = fromHash;
if (fromHash && signedToken) {
  start("", fromHash);
} else if (fromHash && ui.name.value.trim()) {
  start(ui.name.value.trim(), fromHash);
} else {
  (ui.name.value || signedToken ? ui.room : ui.name).focus();
}
