// edgechat client: one room, with reconnect, resume, de-duplication and acknowledged sends.
//
// Standard APIs only (WebSocket, fetch, EventTarget, setTimeout), so the same file runs in
// browsers, Node 22+, Deno and Cloudflare Workers. The wire protocol is PROTOCOL.md.
//
// Delivery: every chat frame carries the room's gap-free id. The client remembers the
// highest id it has delivered, rejoins with `since` set to it, and drops any frame at or
// below it, so the application sees each message once, in id order. When the server cannot
// fill the gap it says `recovered: false`; the client reports that as a `gap` event.
//
// Acknowledgement: a connection has at most one chat frame in flight (stop and wait). The
// server answers each frame with either an error (at once) or the broadcast of the stored
// message (only once it is durable), and it answers a session's frames in order; but an
// error for a later frame can overtake the echo of an earlier one that is still being
// written. With one frame in flight there is nothing to mix up: the first error after the
// frame is its refusal, and its echo is the first chat frame from our own name (as the
// server echoed it in our `joined`) with the same text and an id above every id seen when
// it was sent. A frame in flight when the socket drops is looked for in the resume replay;
// if it is not there it is sent again. Each message carries a random idempotency `key`
// (PROTOCOL.md, "Idempotent sends"), the same in every resend: the frame from the socket
// given up on may still reach the room after the replay (a server that stalled), and the
// room then stores it once and answers the resend with it. The echo is matched by that key.

/** The server's refusal while a session's rate limiter holds it back (PROTOCOL.md). */
export const ERROR_RATE_LIMITED = "Your IP is being rate-limited, please try again later.";
/** The server's refusal while too many messages wait for storage. */
export const ERROR_ROOM_BUSY = "Room is busy, please try again later.";
/** The WebSocket close code for a name the server refuses (while joining) or a frame over its size limit. */
const CLOSE_TOO_BIG = 1009;
/** The WebSocket close code for a connection whose token expired without a refresh. */
export const CLOSE_TOKEN_EXPIRED = 4001;
/** Close code: a moderator removed this connection from the room (a kick). */
export const CLOSE_KICKED = 4010;
/** Close code: this user or address is banned from the room. */
export const CLOSE_BANNED = 4011;
/** The soonest a token refresh is tried again, whatever the token's lifetime. */
const REFRESH_MIN_MS = 1_000;
/** setTimeout's largest delay. */
const TIMER_MAX_MS = 2 ** 31 - 1;

const DEFAULTS = {
  reconnectInitialMs: 500,
  reconnectMaxMs: 30_000,
  // The limiter's documented cost per action: in a cooldown, the wait for one more action.
  rateLimitCostMs: 5_000,
  // The first retry after a refusal is short: the server also refuses frames while its
  // limiter's answer to the previous action is still on the way.
  rateLimitFirstRetryMs: 100,
  // No answer to a chat frame for this long: the connection is presumed dead and replaced.
  sendTimeoutMs: 20_000,
  // From opening a socket to `ready`: longer, and the socket is replaced.
  joinTimeoutMs: 30_000,
  maxQueuedSends: 1_000,
  closeTimeoutMs: 2_000,
  // With `getToken`, a fresh token is sent this long before the current one's `exp` (or at
  // half its remaining life, if that is shorter).
  refreshBeforeMs: 60_000,
};

/** An event whose payload is `detail` (CustomEvent is not global in every runtime). */
export class EdgechatEvent extends Event {
  /** @param {string} type @param {unknown} detail */
  constructor(type, detail) {
    super(type);
    this.detail = detail;
  }
}

/** A refusal from the server (its `{"error": ...}` text), or a send the client gave up on. */
export class EdgechatError extends Error {
  /** @param {string} message @param {{ server?: boolean, status?: number }} [options] */
  constructor(message, options = {}) {
    super(message);
    this.name = "EdgechatError";
    this.server = Boolean(options.server);
    /** The HTTP status of a refused request (history, presence); undefined otherwise. */
    this.status = options.status;
  }
}

/**
 * Joins `room` on the edgechat server at `url` and keeps the membership alive.
 * @param {import("./edgechat.js").ConnectOptions} options
 * @returns {RoomClient}
 */
export function connect(options) {
  return new RoomClient(options);
}

/** Uniform in [0, 1), from the platform's CSPRNG where there is one (it is only jitter). */
function random() {
  const c = globalThis.crypto;
  if (c && typeof c.getRandomValues === "function") {
    return c.getRandomValues(new Uint32Array(1))[0] / 2 ** 32;
  }
  return Math.random();
}

/**
 * A fresh idempotency key: 128 random bits as hex. Undefined without a CSPRNG (never weak
 * randomness): then sends carry no key and echoes are matched by name and text.
 */
function sendKey() {
  const c = globalThis.crypto;
  if (!c || typeof c.getRandomValues !== "function") return undefined;
  return Array.from(c.getRandomValues(new Uint8Array(16)), (b) => b.toString(16).padStart(2, "0")).join("");
}

/** `http(s)` or `ws(s)` base URL (no trailing slash) for the given scheme family. */
function baseUrl(url, secure, plain) {
  const parsed = new URL(url);
  const tls = parsed.protocol === "https:" || parsed.protocol === "wss:";
  parsed.protocol = tls ? secure : plain;
  parsed.search = "";
  parsed.hash = "";
  return parsed.href.replace(/\/+$/, "");
}

/**
 * One user's membership of one room.
 *
 * ```text
 *   connect() ──► connecting ──ready──► live ──socket ends──► reconnecting ──ready──► live
 *                     │                                        ▲   │
 *                     └──────────socket fails──────────────────┘   └─ backoff, open again
 *   any state ──close(), or a join the server refuses──► closed (for good)
 * ```
 */
export class RoomClient extends EventTarget {
  /** @type {import("./edgechat.js").ConnectOptions & typeof DEFAULTS & { url: string }} */
  #options;
  /** @type {new (url: string) => WebSocket} */
  #WebSocket;
  /** @type {typeof fetch | undefined} */
  #fetch;
  /** @type {WebSocket | null} */
  #ws = null;
  /** @type {import("./edgechat.js").ConnectionState} */
  #state = "connecting";
  /** The highest id delivered to the application (0: none yet). */
  #lastId = 0;
  /** @type {number | null} */
  #oldestId = null;
  /**
   * Where `loadOlder` goes on: undefined before the first page, null after the last.
   * @type {number | null | undefined}
   */
  #olderCursor = undefined;
  /** @type {Promise<unknown>} */
  #olderPages = Promise.resolve();
  /** Whether the next join asks for messages after `#lastId` (after a first join, or `since`). */
  #everReady = false;
  /** @type {boolean | undefined} */
  #recovered = undefined;
  #attempt = 0;
  /** @type {Timer} */
  #reconnectTimer = undefined;
  /** @type {Timer} */
  #retryTimer = undefined;
  /** @type {Timer} */
  #sendTimer = undefined;
  /** @type {Timer} */
  #joinTimer = undefined;
  #rateLimitStreak = 0;
  /**
   * Sends not yet acknowledged, oldest first; only the head is ever in flight.
   * @type {PendingSend[]}
   */
  #queue = [];
  /** @type {Map<string, number>} */
  #roster = new Map();
  /**
   * The name the server knows us by, from our own `joined` in the last join.
   * @type {string | null}
   */
  #joinName = null;
  /**
   * What a join in progress has gathered; null once `ready` arrived.
   * @type {Joining | null}
   */
  #joining = null;
  /**
   * The token the server holds for this connection (the URL's, or the last refreshed).
   * @type {string | undefined}
   */
  #sessionToken = undefined;
  /** @type {Timer} */
  #refreshTimer = undefined;
  /**
   * A fresh token waiting to be sent: it goes out when no chat frame is in flight.
   * @type {string | null}
   */
  #refreshPending = null;
  /**
   * A token frame sent and not answered yet: no chat frame goes out meanwhile, so that the
   * server's answer (`refreshed`, or an error) cannot be taken for a send's.
   * @type {string | null}
   */
  #refreshInFlight = null;

  /** @param {import("./edgechat.js").ConnectOptions} options */
  constructor(options) {
    super();
    if (!options || typeof options.room !== "string" || !options.room) {
      throw new TypeError("connect: `room` is required");
    }
    const url = options.url ?? globalThis.location?.origin;
    if (!url) throw new TypeError("connect: `url` is required outside a browser page");
    baseUrl(url, "wss:", "ws:"); // throws now, not on every reconnect, if it is no URL
    // An option given as undefined keeps its default.
    const given = /** @type {import("./edgechat.js").ConnectOptions} */ (
      Object.fromEntries(Object.entries(options).filter(([, value]) => value !== undefined)));
    this.#options = { ...DEFAULTS, ...given, url };
    this.#WebSocket = options.WebSocket ?? globalThis.WebSocket;
    if (typeof this.#WebSocket !== "function") {
      throw new TypeError("connect: no WebSocket in this runtime; pass the `WebSocket` option");
    }
    this.#fetch = options.fetch ?? globalThis.fetch?.bind(globalThis);
    const since = options.since;
    if (typeof since === "number" && Number.isSafeInteger(since) && since > 0) {
      this.#lastId = since;
      this.#everReady = true;
    }
    queueMicrotask(() => this.#open());
  }

  /** connecting, live, reconnecting or closed. */
  get state() { return this.#state; }
  /** The room this client is in. */
  get room() { return this.#options.room; }
  /** The name the server knows us by (known once joined), else the name asked for. */
  get name() { return this.#joinName ?? this.#options.name ?? ""; }
  /** The highest message id delivered so far (0 if none): resume from here. */
  get lastId() { return this.#lastId; }
  /** The last join's `recovered` flag: true, false (messages were missed) or undefined. */
  get recovered() { return this.#recovered; }
  /** Names in the room now (each once, however many connections share it). */
  get roster() { return new Set(this.#roster.keys()); }
  /** Names in the room now, with how many connections each has. */
  get rosterCounts() { return new Map(this.#roster); }
  /** Sends waiting for their acknowledgement. */
  get pendingSends() { return this.#queue.length; }

  /** Subscribes `listener` to `type`'s payloads; returns the unsubscribe function. */
  on(type, listener) {
    const wrapped = (event) => listener(event.detail);
    this.addEventListener(type, wrapped);
    return () => this.removeEventListener(type, wrapped);
  }

  /**
   * Sends a chat message. Resolves with its id once the server broadcast it (it is durable
   * then); rejects with the server's refusal. Queued while not connected; retried while
   * rate limited.
   * @param {string} text
   * @returns {Promise<number>}
   */
  send(text) {
    if (typeof text !== "string") return Promise.reject(new TypeError("send: text must be a string"));
    if (this.#state === "closed") return Promise.reject(new EdgechatError("The client is closed."));
    if (this.#queue.length >= this.#options.maxQueuedSends) {
      return Promise.reject(new EdgechatError("Too many messages waiting to be sent."));
    }
    return new Promise((resolve, reject) => {
      const pending = { text, key: sendKey(), resolve, reject, sentOn: null, idAtSend: 0, maybeStored: false };
      this.#queue.push(pending);
      this.#pump();
    });
  }

  /**
   * The page of messages before the oldest this client has (or before the previous page),
   * oldest first, from the history endpoint. `hasMore` is false once the start is reached.
   * @param {{ limit?: number }} [options]
   */
  loadOlder({ limit = 50 } = {}) {
    // One page at a time: each page starts where the previous one ended.
    const page = this.#olderPages.then(() => this.#loadOlderNow(limit));
    this.#olderPages = page.catch(() => {});
    return page;
  }

  /** @param {number} limit */
  async #loadOlderNow(limit) {
    if (this.#olderCursor === null) return { messages: [], hasMore: false };
    const before = this.#olderCursor ?? this.#oldestId ?? (this.#lastId > 0 ? this.#lastId + 1 : null);
    const query = new URLSearchParams({ limit: String(limit) });
    if (before != null) query.set("before", String(before));
    const body = await this.#getJson("history", query);
    // Chat messages only (edited ones with their current text): change records and
    // tombstones say nothing to show among older messages.
    const records = Array.isArray(body.messages) ? body.messages.slice().reverse() : [];
    const messages = records.filter((r) => r && typeof r.name === "string" && typeof r.message === "string");
    this.#olderCursor = Number.isInteger(body.next_before) ? body.next_before : null;
    return { messages, hasMore: this.#olderCursor !== null };
  }

  /** Names of the users joined now, from the presence endpoint. @returns {Promise<string[]>} */
  async presence() {
    const body = await this.#getJson("presence", new URLSearchParams());
    return Array.isArray(body.users) ? body.users : [];
  }

  /** Leaves the room: rejects unacknowledged sends and closes the socket. */
  close() {
    if (this.#state === "closed") return Promise.resolve();
    const ws = this.#ws;
    this.#shutdown("closed by the application");
    if (!ws || ws.readyState === 3) return Promise.resolve();
    // Resolves once the closing handshake is done, or after a bounded wait.
    return new Promise((/** @type {(value?: undefined) => void} */ resolve) => {
      const timer = setTimeout(resolve, this.#options.closeTimeoutMs);
      ws.addEventListener("close", () => { clearTimeout(timer); resolve(); });
    });
  }

  /** Whether the client is closed (a method, so that checks after an await are not narrowed away). */
  #isClosed() {
    return this.#state === "closed";
  }

  /** @param {string} type @param {unknown} detail */
  #emit(type, detail) {
    this.dispatchEvent(new EdgechatEvent(type, detail));
  }

  #setState(state, reason) {
    if (state === this.#state) return;
    const previous = this.#state;
    this.#state = state;
    this.#emit("state", { state, previous, reason });
  }

  async #getJson(endpoint, query) {
    if (typeof this.#fetch !== "function") throw new TypeError("no fetch in this runtime; pass the `fetch` option");
    const token = await this.#token();
    const base = baseUrl(this.#options.url, "https:", "http:");
    const search = query.toString();
    const url = `${base}/api/room/${encodeURIComponent(this.#options.room)}/${endpoint}${search ? "?" + search : ""}`;
    // Reads take the token as a bearer credential (PROTOCOL.md), never on the URL.
    const response = await this.#fetch(url, token ? { headers: { authorization: `Bearer ${token}` } } : undefined);
    const text = await response.text();
    if (!response.ok) {
      throw new EdgechatError(text.trim() || `HTTP ${response.status}`, { server: true, status: response.status });
    }
    return JSON.parse(text);
  }

  /** The token to present: `getToken()`'s (bounded by the join timeout), else `token`. */
  async #token() {
    const getToken = this.#options.getToken;
    if (typeof getToken !== "function") return this.#options.token || undefined;
    /** @type {Timer} */
    let timer;
    const late = new Promise((_, reject) => {
      timer = setTimeout(() => reject(new Error("getToken timed out")), this.#options.joinTimeoutMs);
    });
    try {
      return (await Promise.race([getToken(), late])) || undefined;
    } finally {
      clearTimeout(timer);
    }
  }

  async #open() {
    if (this.#isClosed()) return;
    let url;
    try {
      const token = await this.#token();
      // close() may have been called while the token was fetched.
      if (this.#isClosed()) return;
      const base = baseUrl(this.#options.url, "wss:", "ws:");
      url = `${base}/api/room/${encodeURIComponent(this.#options.room)}/websocket`;
      if (token) url += `?token=${encodeURIComponent(token)}`;
      this.#sessionToken = token;
    } catch (error) {
      this.#emit("error", { message: `getToken failed: ${describe(error)}`, fatal: false });
      this.#scheduleReconnect();
      return;
    }
    let ws;
    try {
      ws = new this.#WebSocket(url);
    } catch (error) {
      this.#emit("error", { message: `WebSocket failed: ${describe(error)}`, fatal: false });
      this.#scheduleReconnect();
      return;
    }
    this.#ws = ws;
    this.#joining = { roster: new Map(), messages: [], lastJoined: null };
    ws.addEventListener("open", () => { if (this.#ws === ws) this.#sendJoin(ws); });
    ws.addEventListener("message", (event) => { if (this.#ws === ws) this.#onFrame(ws, event.data); });
    ws.addEventListener("close", (event) => {
      if (this.#ws === ws) this.#onClose(ws, event.code, event.reason);
    });
    // An error ends the socket. Browsers follow it with a close event, but Node 20's
    // WebSocket does not when the connection is refused, so do not wait for one.
    ws.addEventListener("error", () => {
      if (this.#ws !== ws) return;
      try { ws.close(); } catch { /* already closing */ }
      this.#onClose(ws, 1006, "error");
    });
    // Neither joined nor failed in time (a silent network): start over.
    this.#joinTimer = setTimeout(() => {
      if (this.#ws !== ws || !this.#joining) return;
      try { ws.close(4000, "join timeout"); } catch { /* already closing */ }
      this.#onClose(ws, 4000, "join timeout");
    }, this.#options.joinTimeoutMs);
  }

  /** @param {WebSocket} ws */
  #sendJoin(ws) {
    if (!this.#joining) return;
    /** @type {{ name: string, since?: number }} */
    const join = { name: this.#options.name ?? "" };
    if (this.#everReady) join.since = this.#lastId;
    ws.send(JSON.stringify(join));
  }

  #onFrame(ws, raw) {
    if (typeof raw !== "string") return;
    let data;
    try { data = JSON.parse(raw); } catch { return; }
    if (!data || typeof data !== "object") return;
    const joining = this.#joining;
    if (typeof data.error === "string") {
      this.#onError(ws, data.error);
    } else if (data.refreshed === true) {
      this.#onRefreshed();
    } else if (typeof data.joined === "string") {
      if (joining) {
        // The last `joined` before `ready` is our own, with our name as the server has it.
        addName(joining.roster, data.joined);
        joining.lastJoined = data.joined;
      } else {
        addName(this.#roster, data.joined);
        this.#emit("join", { name: data.joined });
        this.#emit("roster", { roster: this.roster, counts: this.rosterCounts });
      }
    } else if (typeof data.quit === "string") {
      if (joining) {
        removeName(joining.roster, data.quit);
      } else {
        removeName(this.#roster, data.quit);
        this.#emit("quit", { name: data.quit });
        this.#emit("roster", { roster: this.roster, counts: this.rosterCounts });
      }
    } else if (data.ready === true && joining) {
      this.#onReady(ws, joining, data.recovered);
    } else if (typeof data.topic === "string") {
      this.#emit("topic", { topic: data.topic });
    } else if (Number.isSafeInteger(data.deleted) || Number.isSafeInteger(data.edited)) {
      // A change record (or, in a replay, a deleted message's tombstone in its place). It
      // has an id of its own: it counts for `since` like a message, in the same order.
      /** @type {Change} */
      const change = {
        change: Number.isSafeInteger(data.deleted) ? "deleted" : "edited",
        id: Number.isSafeInteger(data.id) ? data.id : undefined,
        target: Number.isSafeInteger(data.deleted) ? data.deleted : data.edited,
        message: typeof data.message === "string" ? data.message : "",
      };
      if (change.change === "edited" && typeof data.message !== "string") return;
      if (joining) joining.messages.push(change);
      else this.#deliverChange(change);
    } else if (typeof data.message === "string" && typeof data.name === "string") {
      /** @type {ChatMessage} */
      const message = {
        id: Number.isSafeInteger(data.id) ? data.id : undefined,
        name: data.name,
        message: data.message,
        timestamp: data.timestamp,
      };
      if (typeof data.user === "string") message.user = data.user;
      if (typeof data.key === "string") message.key = data.key;
      if (data.edited === true) message.edited = true;
      if (joining) joining.messages.push(message);
      else this.#deliver(ws, message);
    }
  }

  /** @param {WebSocket} ws @param {Joining} joining @param {unknown} recovered */
  #onReady(ws, joining, recovered) {
    this.#joining = null;
    clearTimeout(this.#joinTimer);
    const resumed = this.#everReady;
    this.#everReady = true;
    this.#attempt = 0;
    this.#rateLimitStreak = 0;
    this.#recovered = typeof recovered === "boolean" ? recovered : undefined;
    this.#roster = joining.roster;
    this.#joinName = joining.lastJoined;
    if (recovered === false) {
      // Messages after our last id are gone from the server; what it sent instead starts a
      // new stretch (after a lost data file its ids may even start again from 1).
      this.#emit("gap", { since: this.#lastId });
      this.#lastId = 0;
    }
    for (const item of joining.messages) {
      if ("change" in item) this.#deliverChange(item);
      else this.#deliver(ws, item);
    }
    const head = this.#queue[0];
    // A frame in flight when the last socket dropped and not in the replay is sent again;
    // its key lets the room store it once should the first copy still arrive.
    if (head && head.maybeStored) head.maybeStored = false;
    this.#setState("live");
    this.#emit("roster", { roster: this.roster, counts: this.rosterCounts });
    this.#emit("ready", { recovered: this.#recovered, resumed });
    this.#scheduleRefresh();
    this.#pump();
  }

  /**
   * With `getToken`, sets the timer that fetches a fresh token before the connection's
   * token expires. The token's `exp` is read only to schedule this; the server decides
   * whether a token is valid.
   */
  #scheduleRefresh() {
    clearTimeout(this.#refreshTimer);
    this.#refreshTimer = undefined;
    if (typeof this.#options.getToken !== "function" || this.#state !== "live") return;
    const expiresAt = tokenExpiryMs(this.#sessionToken);
    if (expiresAt === undefined) return;
    const left = expiresAt - Date.now();
    const before = this.#options.refreshBeforeMs;
    const wanted = left > 2 * before ? left - before : left / 2;
    const delay = Math.min(TIMER_MAX_MS, Math.max(REFRESH_MIN_MS, Math.round(wanted)));
    this.#refreshTimer = setTimeout(() => { this.#refreshTimer = undefined; void this.#refresh(); }, delay);
  }

  /** Asks `getToken` for a fresh token and queues it for the connection. */
  async #refresh() {
    const ws = this.#ws;
    let fresh;
    try {
      fresh = await this.#token();
    } catch (error) {
      this.#emit("error", { message: `getToken failed: ${describe(error)}`, fatal: false });
    }
    if (this.#ws !== ws || this.#state !== "live") return;
    if (!fresh || fresh === this.#sessionToken) {
      // Nothing newer yet: ask again later (still before the expiry if there is time).
      this.#scheduleRefresh();
      return;
    }
    this.#refreshPending = fresh;
    this.#pump();
  }

  #onRefreshed() {
    const token = this.#refreshInFlight;
    if (token === null) return;
    this.#refreshInFlight = null;
    this.#sessionToken = token;
    this.#emit("refreshed", { expiresAt: tokenExpiryMs(token) });
    this.#scheduleRefresh();
    this.#pump();
  }

  /** Advances `lastId` past `id`; false if that record was delivered already. */
  #advance(id) {
    if (id === undefined) return true;
    if (id <= this.#lastId) return false;
    this.#lastId = id;
    if (this.#oldestId === null || id < this.#oldestId) this.#oldestId = id;
    return true;
  }

  /** @param {Change} change */
  #deliverChange(change) {
    if (!this.#advance(change.id)) return;
    if (change.change === "deleted") this.#emit("deleted", { id: change.target });
    else this.#emit("edited", { id: change.target, message: change.message });
  }

  #deliver(ws, message) {
    if (!this.#advance(message.id)) return;
    this.#emit("message", message);
    const head = this.#queue[0];
    if (!head || message.name !== this.#joinName) return;
    if (head.key !== undefined && message.key !== undefined) {
      // Our key is ours alone: the message is the head's, however it reached us.
      if (message.key !== head.key) return;
    } else {
      // A server without keys: the first message from our name with our text and an id
      // above every id seen when the frame was sent.
      const inFlight = head.sentOn === ws || head.maybeStored;
      if (message.message !== head.text || !inFlight) return;
      if (message.id !== undefined && message.id <= head.idAtSend) return;
    }
    this.#queue.shift();
    this.#clearSendTimer();
    this.#rateLimitStreak = 0;
    head.resolve(message.id);
    this.#pump();
  }

  #onError(ws, text) {
    const retryable = text === ERROR_RATE_LIMITED || text === ERROR_ROOM_BUSY;
    if (this.#joining) {
      // A fresh session's first frame is never rate limited today; should a join be refused
      // for a passing reason anyway, a new connection after the backoff asks again.
      if (retryable) {
        this.#emit("error", { message: text, fatal: false });
        try { ws.close(); } catch { /* already closing */ }
        this.#onClose(ws, 4000, text);
        return;
      }
      // Refused to join (a name too long, or worse): rejoining cannot help.
      this.#emit("error", { message: text, fatal: true });
      this.#shutdown(text);
      return;
    }
    if (this.#refreshInFlight !== null) {
      // No chat frame is in flight with a token frame: the refusal is the refresh's. The
      // connection lives until the current token expires, then reconnects with getToken's.
      this.#refreshInFlight = null;
      this.#emit("error", { message: `Token refresh refused: ${text}`, fatal: false });
      this.#pump();
      return;
    }
    const head = this.#queue[0];
    if (!head || head.sentOn !== ws) {
      this.#emit("error", { message: text, fatal: false });
      return;
    }
    this.#clearSendTimer();
    head.sentOn = null;
    if (retryable) {
      const delay = this.#rateLimitDelay();
      this.#emit("ratelimited", { message: text, retryInMs: delay });
      this.#retryTimer = setTimeout(() => { this.#retryTimer = undefined; this.#pump(); }, delay);
      return;
    }
    this.#queue.shift();
    head.reject(new EdgechatError(text, { server: true }));
    this.#pump();
  }

  /** Short first, doubling up to the limiter's cost (and a little beyond), half jittered. */
  #rateLimitDelay() {
    const { rateLimitFirstRetryMs: first, rateLimitCostMs: cost } = this.#options;
    const base = Math.min(cost * 2, first * 2 ** Math.min(this.#rateLimitStreak, 20));
    this.#rateLimitStreak += 1;
    return Math.round(base / 2 + (random() * base) / 2);
  }

  /** Sends the head of the queue if the connection is live and nothing is in flight. */
  #pump() {
    const ws = this.#ws;
    const head = this.#queue[0];
    if (this.#state !== "live" || !ws || ws.readyState !== 1 || this.#refreshInFlight !== null) return;
    if (this.#refreshPending !== null && !(head && head.sentOn === ws)) {
      this.#refreshInFlight = this.#refreshPending;
      this.#refreshPending = null;
      ws.send(JSON.stringify({ token: this.#refreshInFlight }));
      return;
    }
    if (!head || head.sentOn || head.maybeStored || this.#retryTimer) return;
    head.sentOn = ws;
    head.idAtSend = this.#lastId;
    ws.send(JSON.stringify(head.key === undefined ? { message: head.text } : { message: head.text, key: head.key }));
    this.#clearSendTimer();
    this.#sendTimer = setTimeout(() => {
      // No answer: the path is dead without a close. Replace it; resume settles the send.
      if (this.#ws === ws && head.sentOn === ws) {
        try { ws.close(4000, "no answer"); } catch { /* already closing */ }
        this.#onClose(ws, 4000, "no answer");
      }
    }, this.#options.sendTimeoutMs);
  }

  #clearSendTimer() {
    clearTimeout(this.#sendTimer);
    this.#sendTimer = undefined;
  }

  #onClose(ws, code, reason) {
    const wasJoining = this.#joining !== null;
    this.#ws = null;
    this.#joining = null;
    this.#clearRefresh();
    clearTimeout(this.#joinTimer);
    this.#clearSendTimer();
    clearTimeout(this.#retryTimer);
    this.#retryTimer = undefined;
    const head = this.#queue[0];
    if (head && head.sentOn === ws) {
      head.sentOn = null;
      head.maybeStored = true;
      if (code === CLOSE_TOO_BIG) {
        // The frame in flight was over the server's frame size limit: refused, not stored.
        this.#queue.shift();
        head.reject(new EdgechatError(reason || "Message too big.", { server: true }));
      }
    }
    if (this.#state === "closed") return;
    if (code === CLOSE_TOO_BIG && wasJoining) {
      // 1009 before `ready` refuses the name: rejoining cannot help.
      const message = reason || "The server refused the name.";
      this.#emit("error", { message, fatal: true });
      this.#shutdown(message);
      return;
    }
    if (code === CLOSE_KICKED || code === CLOSE_BANNED) {
      // Removed by a moderator: coming straight back would defy the kick (and a ban refuses
      // it anyway). The application may offer to join again.
      const message = reason || (code === CLOSE_KICKED ? "Removed by a moderator." : "Banned from this room.");
      this.#emit("error", { message, fatal: true, code });
      this.#shutdown(message);
      return;
    }
    if (code === CLOSE_TOKEN_EXPIRED && typeof this.#options.getToken !== "function") {
      // The same token again would be refused: only the application can sign in anew.
      const message = reason || "Token expired.";
      this.#emit("error", { message, fatal: true, code });
      this.#shutdown(message);
      return;
    }
    this.#scheduleReconnect();
  }

  #clearRefresh() {
    clearTimeout(this.#refreshTimer);
    this.#refreshTimer = undefined;
    this.#refreshPending = null;
    this.#refreshInFlight = null;
  }

  /** Full jitter: a uniform wait in [0, min(max, initial * 2^attempt)). */
  #scheduleReconnect() {
    if (this.#state === "closed") return;
    const { reconnectInitialMs: initial, reconnectMaxMs: max } = this.#options;
    const cap = Math.min(max, initial * 2 ** Math.min(this.#attempt, 30));
    const delay = Math.round(random() * cap);
    this.#attempt += 1;
    this.#setState("reconnecting");
    this.#emit("reconnect", { attempt: this.#attempt, delayMs: delay });
    clearTimeout(this.#reconnectTimer);
    this.#reconnectTimer = setTimeout(() => { this.#reconnectTimer = undefined; this.#open(); }, delay);
  }

  /** Reconnects now if waiting to (e.g. when the network or the tab comes back). */
  reconnectNow() {
    if (this.#state !== "reconnecting" || this.#ws || !this.#reconnectTimer) return;
    clearTimeout(this.#reconnectTimer);
    this.#reconnectTimer = undefined;
    this.#attempt = 0;
    this.#open();
  }

  #shutdown(reason) {
    const ws = this.#ws;
    this.#setState("closed", reason);
    clearTimeout(this.#reconnectTimer);
    clearTimeout(this.#retryTimer);
    clearTimeout(this.#joinTimer);
    this.#clearSendTimer();
    this.#clearRefresh();
    this.#ws = null;
    this.#joining = null;
    if (ws && ws.readyState < 2) {
      try { ws.close(1000, "leaving"); } catch { /* already closing */ }
    }
    for (const send of this.#queue.splice(0)) send.reject(new EdgechatError(`Not sent: ${reason}`));
  }
}

/**
 * @typedef {ReturnType<typeof setTimeout> | undefined} Timer
 * @typedef {{ text: string, key: string | undefined, resolve: (id: number) => void, reject: (error: Error) => void,
 *   sentOn: WebSocket | null, idAtSend: number, maybeStored: boolean }} PendingSend
 * @typedef {{ change: "deleted" | "edited", id: number | undefined, target: number, message: string }} Change
 * @typedef {{ roster: Map<string, number>, messages: (ChatMessage | Change)[], lastJoined: string | null }} Joining
 * @typedef {import("./edgechat.js").ChatMessage} ChatMessage
 */

/** @param {unknown} error */
function describe(error) {
  return error instanceof Error ? error.message : String(error);
}

/**
 * A JWT's `exp` in milliseconds, read from its payload without verifying it (only to
 * schedule a refresh); undefined if there is none.
 * @param {string | undefined} token
 */
export function tokenExpiryMs(token) {
  const payload = typeof token === "string" ? token.split(".")[1] : undefined;
  if (!payload || payload.length > 16_384) return undefined;
  try {
    const base64 = payload.replace(/-/g, "+").replace(/_/g, "/");
    const json = JSON.parse(atob(base64 + "=".repeat((4 - (base64.length % 4)) % 4)));
    return typeof json?.exp === "number" && Number.isFinite(json.exp) ? json.exp * 1000 : undefined;
  } catch {
    return undefined;
  }
}

/** @param {Map<string, number>} roster @param {string} name */
function addName(roster, name) {
  roster.set(name, (roster.get(name) ?? 0) + 1);
}

/** @param {Map<string, number>} roster @param {string} name */
function removeName(roster, name) {
  const count = (roster.get(name) ?? 0) - 1;
  if (count > 0) roster.set(name, count);
  else roster.delete(name);
}
