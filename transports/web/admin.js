// The admin page's script: rooms, one room's members and messages with the moderation actions,
// and the server's own figures as small live charts.
//
// The page is static and public (a browser sends no Bearer header when it navigates); it asks
// for the admin token, keeps it in sessionStorage (this tab only: never in the URL, never in
// a log line) and sends it with every API call. Everything shown comes from the admin API
// (/api/admin/rooms, /api/room/<room>/admin, /history, /moderate) and /metrics; the page
// draws the charts itself (inline SVG), with no library and no build step.

const BASE = new URL(".", location.href);
const TOKEN_KEY = "edgechat.admin-token";
const POLL_MS = 2000;
/** Points kept per chart (one a poll). */
const CHART_POINTS = 60;
const HISTORY_LIMIT = 50;

const $ = (id) => document.getElementById(id);
const ui = {
  signin: $("signin"), token: $("token"), signinError: $("signin-error"), signout: $("signout"),
  status: $("status"), console: $("console"), rooms: $("rooms"), roomsNote: $("rooms-note"),
  openRoom: $("open-room"), openName: $("open-name"), room: $("room"), roomTitle: $("room-title"),
  notice: $("notice"), members: $("members"), messages: $("messages"), bans: $("bans"),
  mutes: $("mutes"), ban: $("ban"), banKind: $("ban-kind"), banTarget: $("ban-target"),
  banMinutes: $("ban-minutes"), settings: $("settings"),
  setHistoryMax: $("set-history-max"), setHistoryAge: $("set-history-age"),
  setMembersMax: $("set-members-max"), setReadOnly: $("set-read-only"), setTopic: $("set-topic"),
};

let token = "";
try { token = sessionStorage.getItem(TOKEN_KEY) || ""; } catch { /* storage off */ }
/** The room shown (its name or id, as the API takes it), or null. */
let openRoom = null;
/** Per room id: the last poll's `last_id` and when, for the message rate. */
const lastSeen = new Map();
/** The previous metrics sample, for rates and the mean commit latency between polls. */
let lastMetrics = null;
const series = { connections: [], rate: [], commit: [] };
/** The message being edited (its id), kept across redraws of the list. */
let editing = null;
let pollTimer;

/** A DOM element with properties and children (strings become text, never HTML). */
function h(tag, props = {}, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(props)) {
    if (key === "dataset") Object.assign(el.dataset, value);
    else if (key.startsWith("on")) el.addEventListener(key.slice(2), value);
    else el[key] = value;
  }
  el.append(...children.filter((c) => c !== null && c !== undefined));
  return el;
}

function setStatus(state, text) { ui.status.dataset.state = state; ui.status.textContent = text; }
function notice(text, kind = "") { ui.notice.textContent = text; ui.notice.className = kind; }

class ApiError extends Error {
  constructor(status, message) { super(message); this.status = status; }
}

/** Calls the API with the token; JSON back, or an ApiError with the server's text. */
async function api(path, body) {
  const init = { headers: { authorization: `Bearer ${token}` }, cache: "no-store" };
  if (body !== undefined) {
    init.method = "POST";
    init.headers["content-type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  const response = await fetch(new URL(path, BASE), init);
  const text = await response.text();
  if (!response.ok) throw new ApiError(response.status, text.trim() || response.statusText);
  return path === "metrics" ? text : JSON.parse(text);
}

const roomPath = (room) => `api/room/${encodeURIComponent(room)}/`;

function signOut(message = "") {
  token = "";
  try { sessionStorage.removeItem(TOKEN_KEY); } catch { /* storage off */ }
  clearTimeout(pollTimer);
  ui.console.hidden = true;
  ui.signin.hidden = false;
  ui.signout.hidden = true;
  ui.signinError.textContent = message;
  setStatus("idle", "Signed out");
  ui.token.focus();
}

async function signIn(candidate) {
  token = candidate;
  try {
    await api("api/admin/rooms");
  } catch (error) {
    // 501: a server without a room list (the Worker); the token is checked on the first action.
    if (!(error instanceof ApiError) || error.status !== 501) {
      signOut(error.status === 401 || error.status === 403 ? "That token was refused." : `Could not reach the server: ${error.message}`);
      return;
    }
  }
  try { sessionStorage.setItem(TOKEN_KEY, token); } catch { /* lasts until a reload */ }
  ui.token.value = "";
  ui.signin.hidden = true;
  ui.console.hidden = false;
  ui.signout.hidden = false;
  setStatus("live", "Signed in");
  poll();
}

// --- polling -------------------------------------------------------------------------------

async function poll() {
  clearTimeout(pollTimer);
  const jobs = [pollRooms(), pollMetrics()];
  if (openRoom !== null) jobs.push(pollRoom());
  const results = await Promise.allSettled(jobs);
  const refused = results.find((r) => r.status === "rejected" && r.reason?.status === 401);
  if (refused) { signOut("The server refused the token."); return; }
  const failed = results.find((r) => r.status === "rejected");
  if (failed) setStatus("waiting", `Trouble: ${failed.reason?.message}`);
  else setStatus("live", "Live");
  if (token) pollTimer = setTimeout(poll, POLL_MS);
}

async function pollRooms() {
  let rooms;
  try {
    ({ rooms } = await api("api/admin/rooms"));
  } catch (error) {
    if (error.status !== 501) throw error;
    ui.roomsNote.textContent = "This server lists no rooms; open one by name.";
    return;
  }
  const now = performance.now();
  ui.rooms.textContent = "";
  // Busiest first, then by name: the order of the table does not depend on the server's.
  rooms.sort((a, b) => b.connections - a.connections || (a.room ?? a.id).localeCompare(b.room ?? b.id));
  for (const room of rooms) {
    const before = lastSeen.get(room.id);
    let rate = "–";
    if (room.last_id !== null && before && before.lastId !== null && now > before.at) {
      rate = (Math.max(0, room.last_id - before.lastId) * 1000 / (now - before.at)).toFixed(1);
    }
    lastSeen.set(room.id, { lastId: room.last_id, at: now });
    const label = room.room ?? `${room.id.slice(0, 12)}…`;
    const address = room.room ?? room.id;
    ui.rooms.append(h("tr", { dataset: { room: address }, className: address === openRoom ? "current" : "" },
      h("td", {}, h("button", { className: "link", type: "button", title: room.id, onclick: () => open(address) }, label)),
      h("td", { className: "num" }, String(room.connections)),
      h("td", { className: "num" }, room.members === null ? "–" : String(room.members)),
      h("td", { className: "num" }, room.last_id === null ? "–" : String(room.last_id)),
      h("td", { className: "num rate" }, rate),
      h("td", {}, room.resident ? "running" : "hibernated")));
  }
  ui.roomsNote.textContent = rooms.length ? "" : "No rooms yet.";
}

/** The Prometheus text's unlabelled samples, by name. */
function parseMetrics(text) {
  const values = new Map();
  for (const line of text.split("\n")) {
    const match = /^([a-z_]+) (\S+)$/.exec(line);
    if (match) values.set(match[1], Number(match[2]));
  }
  return values;
}

async function pollMetrics() {
  const values = parseMetrics(await api("metrics"));
  const now = performance.now();
  const sample = {
    at: now,
    connections: values.get("edgechat_connections") ?? 0,
    messages: values.get("edgechat_messages_total") ?? 0,
    commitSum: values.get("edgechat_storage_commit_seconds_sum") ?? 0,
    commitCount: values.get("edgechat_storage_commit_seconds_count") ?? 0,
  };
  push(series.connections, sample.connections);
  $("fig-connections").textContent = String(sample.connections);
  if (lastMetrics) {
    const seconds = (now - lastMetrics.at) / 1000;
    const rate = Math.max(0, sample.messages - lastMetrics.messages) / seconds;
    const commits = sample.commitCount - lastMetrics.commitCount;
    const meanMs = commits > 0 ? (sample.commitSum - lastMetrics.commitSum) * 1000 / commits : 0;
    push(series.rate, rate);
    push(series.commit, meanMs);
    $("fig-rate").textContent = rate.toFixed(1);
    $("fig-commit").textContent = commits > 0 ? meanMs.toFixed(2) : "idle";
  }
  lastMetrics = sample;
  draw($("chart-connections"), series.connections);
  draw($("chart-rate"), series.rate);
  draw($("chart-commit"), series.commit);
}

function push(list, value) {
  list.push(Number.isFinite(value) ? value : 0);
  if (list.length > CHART_POINTS) list.shift();
}

const SVG = "http://www.w3.org/2000/svg";
/** A line chart of `values` scaled to its own maximum, newest on the right. */
function draw(svg, values) {
  const [w, hgt] = [240, 60];
  const max = Math.max(1e-9, ...values);
  // The window grows to CHART_POINTS polls; until then the first few points span the width
  // (from the right) instead of a sliver at its right edge.
  const span = Math.min(CHART_POINTS, Math.max(values.length, 12));
  const step = w / (span - 1);
  const offset = (span - values.length) * step;
  const points = values.map((v, i) => `${(offset + i * step).toFixed(1)},${(hgt - 2 - (v / max) * (hgt - 6)).toFixed(1)}`);
  svg.textContent = "";
  if (points.length < 2) return;
  const area = document.createElementNS(SVG, "polygon");
  area.setAttribute("points", `${offset.toFixed(1)},${hgt} ${points.join(" ")} ${w},${hgt}`);
  area.setAttribute("class", "area");
  const line = document.createElementNS(SVG, "polyline");
  line.setAttribute("points", points.join(" "));
  line.setAttribute("class", "line");
  svg.append(area, line);
}

// --- one room ------------------------------------------------------------------------------

function open(room) {
  openRoom = room;
  editing = null;
  ui.room.hidden = false;
  ui.roomTitle.textContent = `Room ${room.length === 64 ? room.slice(0, 12) + "…" : "#" + room}`;
  ui.roomTitle.title = room;
  notice("");
  for (const row of ui.rooms.querySelectorAll("tr")) row.classList.toggle("current", row.dataset.room === room);
  pollRoom().then(fillSettings, (error) => notice(error.message, "error"));
}

async function pollRoom() {
  const room = openRoom;
  // The history is the public endpoint: with signed identities on it wants a user's token and
  // refuses the admin's, so the room view goes on without its messages then.
  const [view, history] = await Promise.all([
    api(roomPath(room) + "admin"),
    api(roomPath(room) + `history?limit=${HISTORY_LIMIT}`).catch((error) => ({ error })),
  ]);
  if (room !== openRoom) return null;
  renderMembers(view.members);
  renderRestrictions(ui.bans, view.bans, (r) => (r.ip !== undefined ? { unban_ip: r.ip } : { unban: r.user }), "Unban");
  renderRestrictions(ui.mutes, view.mutes, (r) => ({ unmute: r.user }), "Unmute");
  // While an edit box is open, the poll leaves the message list alone (it would replace it).
  if (history.error) {
    ui.messages.textContent = "";
    ui.messages.append(h("li", { className: "hint" }, `Recent messages unavailable: ${history.error.message}`));
  } else if (editing === null || !ui.messages.querySelector(".edit-text")) {
    renderMessages(history.messages);
  }
  return view;
}

/** Sends one action; the result shows in the room's notice line, then the view refreshes. */
async function act(action, done) {
  try {
    await api(roomPath(openRoom) + "moderate", action);
    notice(done, "ok");
  } catch (error) {
    notice(`${done.replace(/\.$/, "")} failed: ${error.message}`, "error");
    if (error.status === 401) signOut("The server refused the token.");
    return false;
  }
  await pollRoom().catch(() => {});
  return true;
}

function renderMembers(members) {
  ui.members.textContent = "";
  const sorted = [...members].sort((a, b) => (a.name ?? "").localeCompare(b.name ?? "") || a.conn - b.conn);
  for (const m of sorted) {
    const flags = [m.moderator ? "moderator" : null, m.muted ? "muted" : null].filter(Boolean).join(", ");
    const user = m.user;
    const actions = user === null ? [] : [
      h("button", { className: "btn small", type: "button", onclick: () => act({ kick: user }, `Kicked ${user}.`) }, "Kick"),
      h("button", { className: "btn small danger", type: "button", onclick: () => banUser(user) }, "Ban"),
      m.muted
        ? h("button", { className: "btn small", type: "button", onclick: () => act({ unmute: user }, `Unmuted ${user}.`) }, "Unmute")
        : h("button", { className: "btn small", type: "button", onclick: () => act({ mute: user, ...duration() }, `Muted ${user}.`) }, "Mute"),
      h("button", { className: "btn small", type: "button", title: "Ban this IP", onclick: () => act({ ban_ip: m.ip, ...duration() }, `Banned IP ${m.ip}.`) }, "Ban IP"),
    ];
    ui.members.append(h("tr", { dataset: { user: user ?? "" } },
      h("td", {}, m.name ?? "(joining)"), h("td", {}, user ?? "–"), h("td", { className: "mono" }, m.ip),
      h("td", {}, flags), h("td", { className: "actions" }, ...actions)));
  }
  if (!sorted.length) ui.members.append(h("tr", {}, h("td", { colSpan: 5, className: "hint" }, "Nobody is connected.")));
}

/** `for_ms` from the ban form's minutes, if given. */
function duration() {
  const minutes = Number(ui.banMinutes.value);
  return ui.banMinutes.value && minutes > 0 ? { for_ms: Math.round(minutes * 60000) } : {};
}

function banUser(user) { return act({ ban: user, ...duration() }, `Banned ${user}.`); }

function renderRestrictions(list, items, lift, label) {
  list.textContent = "";
  for (const r of items) {
    const who = r.ip !== undefined ? `IP ${r.ip}` : r.user;
    const until = r.until === null ? "until lifted" : `until ${new Date(r.until).toLocaleString()}`;
    list.append(h("li", {}, h("span", {}, `${who} `, h("span", { className: "hint" }, until)),
      h("button", { className: "btn small", type: "button", onclick: () => act(lift(r), `${label}: ${who}.`) }, label)));
  }
  if (!items.length) list.append(h("li", { className: "hint" }, "None."));
}

/** History, newest first: chat messages (and tombstones) get a row; change records do not. */
function renderMessages(records) {
  ui.messages.textContent = "";
  for (const r of records) {
    if (typeof r.id !== "number") continue;
    if (typeof r.deleted === "number") {
      if (r.deleted === r.id) ui.messages.append(h("li", { className: "deleted", dataset: { id: String(r.id) } }, h("span", { className: "id" }, `#${r.id}`), h("em", {}, "deleted")));
      continue;
    }
    if (typeof r.name !== "string" || typeof r.message !== "string") continue;
    const id = r.id;
    const li = h("li", { dataset: { id: String(id) } },
      h("span", { className: "id" }, `#${id}`),
      h("time", { title: new Date(r.timestamp).toLocaleString() }, new Date(r.timestamp).toLocaleTimeString()),
      h("b", {}, r.name), r.user ? h("span", { className: "hint" }, ` (${r.user})`) : null);
    if (editing === id) {
      const input = h("input", { type: "text", value: r.message, maxLength: 256, className: "edit-text" });
      li.append(h("form", { className: "inline", onsubmit: async (e) => {
        e.preventDefault();
        editing = null;
        await act({ edit: id, message: input.value }, `Edited message ${id}.`);
      } }, input, h("button", { className: "btn small primary", type: "submit" }, "Save"),
      h("button", { className: "btn small", type: "button", onclick: () => { editing = null; pollRoom(); } }, "Cancel")));
    } else {
      li.append(h("span", { className: "text" }, r.message, r.edited ? h("span", { className: "hint" }, " (edited)") : null),
        h("span", { className: "actions" },
          h("button", { className: "btn small", type: "button", onclick: () => { editing = id; pollRoom(); } }, "Edit"),
          h("button", { className: "btn small danger", type: "button", onclick: () => act({ delete: id }, `Deleted message ${id}.`) }, "Delete")));
    }
    ui.messages.append(li);
  }
  if (!ui.messages.children.length) ui.messages.append(h("li", { className: "hint" }, "No messages."));
  ui.messages.querySelector(".edit-text")?.focus();
}

function fillSettings(view) {
  if (!view) return;
  const s = view.settings;
  ui.setHistoryMax.value = s.history_max ?? "";
  ui.setHistoryAge.value = s.history_max_age_ms == null ? "" : String(s.history_max_age_ms / 3600000);
  ui.setMembersMax.value = s.members_max ?? "";
  ui.setReadOnly.checked = Boolean(s.read_only);
  ui.setTopic.value = s.topic ?? "";
}

// --- wiring --------------------------------------------------------------------------------

ui.signin.addEventListener("submit", (event) => {
  event.preventDefault();
  const candidate = ui.token.value.trim();
  if (candidate) signIn(candidate);
});
ui.signout.addEventListener("click", () => signOut());
ui.openRoom.addEventListener("submit", (event) => {
  event.preventDefault();
  const room = ui.openName.value.trim();
  if (room) open(room);
});
ui.ban.addEventListener("submit", (event) => {
  event.preventDefault();
  const target = ui.banTarget.value.trim();
  if (!target || openRoom === null) return;
  const kind = ui.banKind.value;
  act({ [kind]: target, ...duration() }, `Banned ${kind === "ban_ip" ? "IP " : ""}${target}.`).then((ok) => { if (ok) ui.banTarget.value = ""; });
});
ui.settings.addEventListener("submit", async (event) => {
  event.preventDefault();
  if (openRoom === null) return;
  const count = (input) => (input.value === "" ? null : Math.round(Number(input.value)));
  const settings = {
    history_max: count(ui.setHistoryMax),
    history_max_age_ms: ui.setHistoryAge.value === "" ? null : Math.round(Number(ui.setHistoryAge.value) * 3600000),
    members_max: count(ui.setMembersMax),
    read_only: ui.setReadOnly.checked,
    topic: ui.setTopic.value.trim() || null,
  };
  if (await act({ settings }, "Settings saved.")) fillSettings(await pollRoom().catch(() => null));
});

if (token) signIn(token); else ui.token.focus();
