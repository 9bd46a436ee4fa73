// Types for edgechat.js (hand-written; the module has no build step).

/** The server's refusal while a session's rate limiter holds it back. */
export declare const ERROR_RATE_LIMITED: string;
/** The server's refusal while too many messages wait for storage. */
export declare const ERROR_ROOM_BUSY: string;
/** The close code of a connection whose token expired without a refresh (4001). */
export declare const CLOSE_TOKEN_EXPIRED: number;
/** Close code (4010): a moderator removed the connection from the room; the client closes. */
export declare const CLOSE_KICKED: number;
/** Close code (4011): the user or address is banned from the room; the client closes. */
export declare const CLOSE_BANNED: number;
/** A JWT's `exp` in milliseconds, read without verifying (only to schedule refreshes). */
export declare function tokenExpiryMs(token: string | undefined): number | undefined;

/** Where a client stands. */
export type ConnectionState = "connecting" | "live" | "reconnecting" | "closed";

/** A chat message as the server broadcast it. */
export interface ChatMessage {
  /** The room's gap-free sequence number (absent only from servers without ids). */
  id: number | undefined;
  name: string;
  message: string;
  /** Milliseconds since the epoch, strictly increasing within a room. */
  timestamp: number;
  /** The token subject of a verified sender (absent for anonymous senders). */
  user?: string;
  /** Set when the message was edited since (a replay shows the current text). */
  edited?: true;
  /** The idempotency key its sender gave it (this client sends one with every message). */
  key?: string;
}

export interface ConnectOptions {
  /** The server's base URL (http, https, ws or wss). Defaults to `location.origin` in a page. */
  url?: string;
  /** A public room name (up to 32 characters) or a private room id. */
  room: string;
  /** The user name; the server makes an empty one `anonymous`. */
  name?: string;
  /**
   * A signed token (JWT): put on the WebSocket URL as `?token=...`, sent to history and
   * presence as `Authorization: Bearer`. Without `getToken`, its expiry (close 4001) closes
   * the client for good (`error` with `fatal: true`).
   */
  token?: string;
  /**
   * Called before every (re)connect and HTTP request, and before the connection's token
   * expires (see `refreshBeforeMs`): its answer replaces `token`, and a fresh one is sent
   * to the open connection as `{"token": ...}`.
   */
  getToken?: () => string | undefined | null | Promise<string | undefined | null>;
  /** With `getToken`: refresh this long before the token's `exp` (or at half its remaining life if shorter). Default 60000. */
  refreshBeforeMs?: number;
  /** Resume after this id on the first join (e.g. an id the application stored). */
  since?: number;
  /** The WebSocket constructor, for runtimes without a global one. */
  WebSocket?: new (url: string, protocols?: string | string[]) => WebSocket;
  /** The fetch function, for runtimes without a global one. */
  fetch?: typeof fetch;
  /** First reconnect delay bound, doubled per failed attempt (full jitter). Default 500. */
  reconnectInitialMs?: number;
  /** Largest reconnect delay bound. Default 30000. */
  reconnectMaxMs?: number;
  /** The server limiter's cost per action; rate-limit retries back off up to twice it. Default 5000. */
  rateLimitCostMs?: number;
  /** The first rate-limit retry delay. Default 100. */
  rateLimitFirstRetryMs?: number;
  /** No answer to a sent message for this long replaces the connection. Default 20000. */
  sendTimeoutMs?: number;
  /** From opening a socket to the join's `ready`; longer replaces the socket. Default 30000. */
  joinTimeoutMs?: number;
  /** Most sends waiting at once; more are rejected. Default 1000. */
  maxQueuedSends?: number;
  /** How long `close()` waits for the closing handshake. Default 2000. */
  closeTimeoutMs?: number;
}

/** The payload of each event type. */
export interface RoomEvents {
  /** A chat message, each exactly once, in id order. */
  message: ChatMessage;
  /** Someone joined (after this client's own join completed). */
  join: { name: string };
  /** Someone left. */
  quit: { name: string };
  /** The roster changed (or was rebuilt by a join). */
  roster: { roster: Set<string>; counts: Map<string, number> };
  /** A join completed; `resumed` if it asked for messages after `lastId`. */
  ready: { recovered: boolean | undefined; resumed: boolean };
  /** The server could not replay everything after `since`: messages were missed. */
  gap: { since: number };
  /**
   * Message `id` was deleted: drop it from view. A replay shows a deleted message this way
   * too, in its place. May come more than once for one message (tombstone and announcement).
   */
  deleted: { id: number };
  /** Message `id` now says `message` (it keeps its place). */
  edited: { id: number; message: string };
  /** The room's topic: on joining (right before `ready`) and whenever it changes (`""`: none). */
  topic: { topic: string };
  /**
   * A server error not tied to a send, or a fatal one (then the client is closed). `code`
   * is the close code that ended it, when that says why: `CLOSE_TOKEN_EXPIRED`,
   * `CLOSE_KICKED` or `CLOSE_BANNED`.
   */
  error: { message: string; fatal: boolean; code?: number };
  /** A send was refused by the rate limiter (or a busy room) and will be retried. */
  ratelimited: { message: string; retryInMs: number };
  /** A reconnect is scheduled in `delayMs` (for a countdown). */
  reconnect: { attempt: number; delayMs: number };
  /** The server took a fresh token for the open connection; `expiresAt` is its `exp` in ms. */
  refreshed: { expiresAt: number | undefined };
  state: { state: ConnectionState; previous: ConnectionState; reason?: string };
}

/** The event class dispatched by a RoomClient; the payload is `detail`. */
export declare class EdgechatEvent<T = unknown> extends Event {
  constructor(type: string, detail: T);
  readonly detail: T;
}

/** A server refusal (`server: true`, the message is the server's text) or a send given up. */
export declare class EdgechatError extends Error {
  constructor(message: string, options?: { server?: boolean; status?: number });
  readonly server: boolean;
  /** The HTTP status of a refused request (history, presence); undefined otherwise. */
  readonly status: number | undefined;
}

export declare class RoomClient extends EventTarget {
  constructor(options: ConnectOptions);
  readonly state: ConnectionState;
  readonly room: string;
  /** The name the server knows us by, once joined. */
  readonly name: string;
  /** The highest message id delivered (0 if none). */
  readonly lastId: number;
  /** The last join's `recovered` flag. */
  readonly recovered: boolean | undefined;
  /** Names in the room now. */
  readonly roster: Set<string>;
  /** Names in the room now, with their connection counts. */
  readonly rosterCounts: Map<string, number>;
  /** Sends not yet acknowledged. */
  readonly pendingSends: number;
  /** Subscribes to an event's payload; returns the unsubscribe function. */
  on<K extends keyof RoomEvents>(type: K, listener: (detail: RoomEvents[K]) => void): () => void;
  /** Resolves with the message id once the server broadcast it (durable); rejects with its refusal. */
  send(text: string): Promise<number>;
  /** The page before the oldest message seen (or the previous page), oldest first. */
  loadOlder(options?: { limit?: number }): Promise<{ messages: ChatMessage[]; hasMore: boolean }>;
  /** Names of the users joined now. */
  presence(): Promise<string[]>;
  /** Reconnects at once if waiting to (e.g. on `online` or tab visibility). */
  reconnectNow(): void;
  /** Leaves: rejects unacknowledged sends, closes the socket. */
  close(): Promise<void>;
}

/** Joins a room and keeps the membership alive. */
export declare function connect(options: ConnectOptions): RoomClient;
