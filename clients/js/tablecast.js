// tablecast.js: the client of the tablecast WebSocket gateway (protocol v1),
// for browsers and Node.js 20 or later.
//
// One ES module without dependencies. Its types are in tablecast.d.ts beside
// it, the protocol it speaks is docs/contract.md of the tablecast repository,
// and the gateway serves this very file at /tablecast.js.
//
// What it does for an application:
//   - reconnects with exponential backoff and full jitter, and resumes every
//     subscription from the last sequence it delivered, so that the
//     application sees no gap and no event twice;
//   - stops on closes that would be refused again (4003, 4400, 4410, 4001 without
//     a fresh credential, client bugs), and says why;
//   - refreshes a JWT in band shortly before its exp, and reconnects with a
//     fresh one when the gateway refuses the refresh or closes for expiry;
//   - delivers a batched table subscription ("batch": "transaction") one
//     transaction frame at a time, resuming inside a transaction cut into
//     parts with the rest of it, nothing twice;
//   - turns every error frame and close code into a TablecastError.

export const VERSION = "0.1.0";

/** The WebSocket subprotocol of protocol v1. */
export const SUBPROTOCOL = "tablecast.v1";

/** Close codes of the gateway (docs/contract.md, "Close codes"). */
export const CloseCode = Object.freeze({
  NORMAL: 1000,
  GOING_AWAY: 1001,
  PROTOCOL_ERROR: 1002,
  UNSUPPORTED_DATA: 1003,
  INVALID_PAYLOAD: 1007,
  MESSAGE_TOO_BIG: 1009,
  UNAUTHORIZED: 4001,
  FORBIDDEN_ORIGIN: 4003,
  SLOW_CONSUMER: 4008,
  TOO_MANY_CONNECTIONS: 4029,
  BAD_REQUEST: 4400,
  ENDPOINT_GONE: 4410,
});

// Closes after which connecting again, unchanged, is refused again: a bad
// origin or URL, a WebSocket endpoint paused or deleted, and the client bugs of RFC 6455 (1009 included: the
// gateway's message limit is lower than maxMessageBytes). 4001 is decided
// apart: it is worth one more try when a fresh credential can be had.
const FINAL_CLOSES = new Set([1002, 1003, 1007, 1009, 4003, 4400, 4410]);

const DEFAULTS = Object.freeze({
  tokenTransport: "protocol",
  refresh: true,
  refreshBefore: 60_000,
  initialDelay: 500,
  maxDelay: 30_000,
  connectTimeout: 10_000,
  requestTimeout: 10_000,
  pingInterval: 20_000,
  pongTimeout: 10_000,
  messagesPerSecond: 40,
  maxMessageBytes: 65_536,
});

// The shortest wait between two refreshes, doubled up to the longest while
// getToken hands out nothing newer, so that a token already expired by the
// client's clock (or a cached one) cannot make the client refresh in a loop.
const MIN_REFRESH_DELAY = 1_000;
const MAX_REFRESH_DELAY = 30_000;
// setTimeout cannot wait longer than 2^31-1 ms; longer waits are taken in steps.
const MAX_TIMER = 86_400_000;

const SPEC_KEYS = new Set(["table", "topic", "where", "select", "events", "from", "batch"]);
const VIEW_KEYS = new Set(["table", "where", "select", "batch"]);
const noop = () => {};

/**
 * An error of the gateway or of the connection. `code` is the error frame's
 * code ("invalid_filter"), the close code (4001) or one of the client's own
 * ("network", "timeout", "disconnected", "closed", "token_unavailable",
 * "message_too_large", "config").
 */
export class TablecastError extends Error {
  constructor(code, message, details = {}) {
    super(message, details.cause === undefined ? undefined : { cause: details.cause });
    this.name = "TablecastError";
    this.code = code;
    this.subscriptionId = details.subscriptionId ?? null;
    this.reason = details.reason ?? null;
  }

  /** Whether the error is a close of the connection by the gateway. */
  get isClose() {
    return typeof this.code === "number";
  }
}

/**
 * The wait before reconnect attempt number `attempt` (0 for the first):
 * exponential backoff with full jitter, uniform in [0, min(max, initial·2^attempt)).
 */
export function backoffDelay(attempt, initialDelay = DEFAULTS.initialDelay, maxDelay = DEFAULTS.maxDelay, random = Math.random) {
  const cap = Math.min(maxDelay, initialDelay * 2 ** Math.min(Math.max(attempt, 0), 40));
  return Math.floor(random() * cap);
}

/**
 * The `exp` claim of a JWT in unix seconds, read without verifying the
 * token; null when it is not a JWT or has no numeric exp (API keys).
 */
export function tokenExpiry(token) {
  if (typeof token !== "string") return null;
  const parts = token.split(".");
  if (parts.length !== 3) return null;
  try {
    const b64 = parts[1].replace(/-/g, "+").replace(/_/g, "/");
    const bin = atob(b64 + "=".repeat((4 - (b64.length % 4)) % 4));
    const claims = JSON.parse(new TextDecoder().decode(Uint8Array.from(bin, (c) => c.charCodeAt(0))));
    const exp = claims === null || typeof claims !== "object" ? undefined : claims.exp;
    return typeof exp === "number" && Number.isFinite(exp) ? exp : null;
  } catch {
    return null;
  }
}

/**
 * A table's name as subscribe takes it: the parts (database, schema, table,
 * or schema, table) joined by dots, each double-quoted when it holds a dot or
 * a quote: tableName("my.db", "public", "orders") is `"my.db".public.orders`.
 */
export function tableName(...parts) {
  if (parts.length < 2 || parts.length > 3 || parts.some((p) => typeof p !== "string" || p === "")) {
    throw new TypeError("tableName takes (schema, table) or (database, schema, table), each a non-empty string");
  }
  return parts.map((p) => (/[."]/.test(p) ? '"' + p.replace(/"/g, '""') + '"' : p)).join(".");
}

// utf8Length is the length of s in UTF-8, without encoding it.
function utf8Length(s) {
  let n = s.length;
  for (let i = 0; i < s.length; i++) {
    const c = s.charCodeAt(i);
    if (c < 0x80) continue;
    if (c < 0x800) n += 1;
    else if (c >= 0xd800 && c <= 0xdbff && i + 1 < s.length) { n += 2; i++; } // a pair: 4 bytes for 2 units
    else n += 2;
  }
  return n;
}

function errorText(e) {
  return e instanceof Error ? e.message : String(e);
}

// call runs an application callback; what it throws is reported the way an
// event listener's exception is, and never breaks the client's state.
function call(fn, ...args) {
  if (typeof fn !== "function") return;
  try {
    fn(...args);
  } catch (e) {
    if (typeof globalThis.reportError === "function") globalThis.reportError(e);
    else queueMicrotask(() => { throw e; });
  }
}

// checkBatchHandlers refuses handlers that would lose what a subscription
// delivers: a batched one's transactions go to onTransaction (or, without
// handlers for either, to the iterator), and only a batched one has them.
function checkBatchHandlers(what, batched, h) {
  if (h.onTransaction != null && typeof h.onTransaction !== "function") throw new TypeError(what + ": onTransaction must be a function");
  if (!batched && h.onTransaction != null) throw new TypeError(what + ': onTransaction needs batch "transaction"');
  if (batched && h.onEvent && h.onTransaction == null) {
    throw new TypeError(what + ": a batched subscription delivers its transactions to onTransaction (onEvent gets only the rows of snapshots): give onTransaction, or neither to iterate");
  }
}

// Keys of a view. view.rows is keyed by a row's key as JSON, and
// JSON.parse reads an integer beyond 2^53 (a bigint key such as a snowflake
// id) as the nearest double: rows whose keys differ only past that
// precision would share one entry, the view would hold one row for several,
// and the delete of one would take out the others. So the keys of a view's
// frame that holds such a number are written from the frame's text, their
// integers with every digit (KEY_ID); other keys are JSON.stringify(key).

// BIG_NUMBER matches, cheaply, a frame that may hold an integer of 16
// digits or more: the frames that need their keys read from the text.
const BIG_NUMBER = /[:,[]\s*-?\d{16}/;

const KEY_ID = Symbol("tablecast.keyId");

// keyId is the entry of view.rows of the object holding a key (a rows
// entry, an event).
function keyId(holder) {
  return holder[KEY_ID] ?? JSON.stringify(holder.key);
}

// tagKeys sets KEY_ID on the key holders of f, the view's frame parsed
// from text: rows[i], event, events[i].event.
function tagKeys(f, text) {
  try {
    forMembers(text, skipSpace(text, 0), (name, i) => {
      if (name === "rows" && Array.isArray(f.rows)) {
        forElements(text, i, (n, j) => tagKey(f.rows[n], text, j));
      } else if (name === "event") {
        tagKey(f.event, text, i);
      } else if (name === "events" && Array.isArray(f.events)) {
        forElements(text, i, (n, j) => {
          const e = f.events[n];
          if (e !== null && typeof e === "object") forMembers(text, j, (m, k) => { if (m === "event") tagKey(e.event, text, k); });
        });
      }
    });
  } catch {
    // Not the JSON JSON.parse took (it cannot be): keys as parsed.
  }
}

function tagKey(holder, text, i) {
  if (holder === null || typeof holder !== "object" || text[i] !== "{") return;
  forMembers(text, i, (name, j) => { if (name === "key") holder[KEY_ID] = canonical(text, j)[0]; });
}

function skipSpace(t, i) {
  while (t[i] === " " || t[i] === "\n" || t[i] === "\r" || t[i] === "\t") i++;
  return i;
}

// forMembers calls fn(name, start of value) for each member of the object
// at t[i] (nothing when it is not one), and returns the index after it.
function forMembers(t, i, fn) {
  if (t[i] !== "{") return skipValue(t, i);
  i = skipSpace(t, i + 1);
  if (t[i] === "}") return i + 1;
  for (;;) {
    const end = skipString(t, i);
    const name = JSON.parse(t.slice(i, end));
    i = skipSpace(t, skipSpace(t, end) + 1);
    fn(name, i);
    i = skipSpace(t, skipValue(t, i));
    if (t[i++] !== ",") return i;
    i = skipSpace(t, i);
  }
}

// forElements calls fn(index, start of value) for each element of the
// array at t[i] (nothing when it is not one), and returns the index after it.
function forElements(t, i, fn) {
  if (t[i] !== "[") return skipValue(t, i);
  i = skipSpace(t, i + 1);
  if (t[i] === "]") return i + 1;
  for (let n = 0; ; n++) {
    fn(n, i);
    i = skipSpace(t, skipValue(t, i));
    if (t[i++] !== ",") return i;
    i = skipSpace(t, i);
  }
}

function skipString(t, i) {
  for (i++; t[i] !== '"'; i++) {
    if (i >= t.length) throw new SyntaxError("unterminated string");
    if (t[i] === "\\") i++;
  }
  return i + 1;
}

function skipValue(t, i) {
  const c = t[i];
  if (c === '"') return skipString(t, i);
  if (c === "{") return forMembers(t, i, noop);
  if (c === "[") return forElements(t, i, noop);
  while (i < t.length && !",}] \n\r\t".includes(t[i])) i++;
  return i;
}

// canonical returns the value at t[i] as JSON.stringify(JSON.parse(value))
// writes it, but for integers beyond 2^53, which keep their digits; and
// the index after it.
function canonical(t, i) {
  const c = t[i];
  if (c === "{" || c === "[") {
    const parts = [];
    const end = c === "{"
      ? forMembers(t, i, (name, j) => parts.push(JSON.stringify(name) + ":" + canonical(t, j)[0]))
      : forElements(t, i, (_, j) => parts.push(canonical(t, j)[0]));
    return [c + parts.join(",") + (c === "{" ? "}" : "]"), end];
  }
  const end = skipValue(t, i);
  const raw = t.slice(i, end);
  if (/^-?\d+$/.test(raw) && !Number.isSafeInteger(Number(raw))) return [raw, end];
  return [JSON.stringify(JSON.parse(raw)), end];
}

function isObject(v) {
  return v !== null && typeof v === "object" && !Array.isArray(v);
}

// withUnchanged returns a row's data with the values PostgreSQL left out
// as unchanged TOAST (the names in unchanged) taken from prev, the row held
// before: an update of a row's other columns would otherwise leave the view
// a row without them.
function withUnchanged(data, unchanged, prev) {
  if (!Array.isArray(unchanged) || unchanged.length === 0 || data === null || typeof data !== "object" || prev === null || typeof prev !== "object") return data;
  const out = { ...data };
  for (const c of unchanged) {
    // defineProperty: a column named __proto__ is a column, not the prototype.
    if (typeof c === "string" && Object.hasOwn(prev, c) && !Object.hasOwn(out, c)) Object.defineProperty(out, c, { value: prev[c], enumerable: true, writable: true, configurable: true });
  }
  return out;
}

// sameRow tells whether two rows hold the same columns with the same
// values, whatever the order of their columns (a row completed with its
// unchanged TOASTed values has them last).
function sameRow(a, b) {
  if (a === b) return true;
  if (!isObject(a) || !isObject(b)) return JSON.stringify(a) === JSON.stringify(b);
  const keys = Object.keys(a);
  if (keys.length !== Object.keys(b).length) return false;
  return keys.every((k) => Object.hasOwn(b, k) && JSON.stringify(a[k]) === JSON.stringify(b[k]));
}

function closeError(e) {
  const code = typeof e?.code === "number" ? e.code : 1006;
  const reason = typeof e?.reason === "string" ? e.reason : "";
  if (code === 1006) return new TablecastError("network", "connection lost" + (reason ? ": " + reason : ""));
  return new TablecastError(code, "closed " + code + (reason ? ": " + reason : ""), { reason });
}

/**
 * One subscription of a TablecastClient, to a table or a custom topic.
 * Made by TablecastClient.subscribe; async-iterable when made without onEvent
 * (and without onTransaction).
 */
export class Subscription {
  #st;

  constructor(st) {
    this.#st = st;
  }

  /** The subscription's id on the wire ("s1", or "url" for a URL subscription). */
  get id() {
    return this.#st.id;
  }

  /** What was subscribed to: table or topic, and where, select, events. */
  get spec() {
    return this.#st.spec;
  }

  /**
   * The sequence of the last event or transaction frame delivered (or
   * subscribed's), where a resume starts. A transaction frame's is its
   * marker's, or its last event's for a part followed by more.
   */
  get lastSeq() {
    return this.#st.lastSeq;
  }

  /** "pending" until subscribed (and while reconnecting), "active", or "ended". */
  get state() {
    if (this.#st.ended) return "ended";
    return this.#st.wire === "active" ? "active" : "pending";
  }

  /** Resolves when the subscription ends: null after unsubscribe or close, else the error that ended it. */
  get closed() {
    return this.#st.closed;
  }

  /** Ends the subscription; resolves once the gateway has confirmed it (at once when disconnected). */
  unsubscribe() {
    return this.#st.ops.unsubscribe();
  }

  /**
   * Changes the columns of a table subscription's events ([] for all);
   * resolves with the seq of the last event sent with the old projection.
   */
  select(fields) {
    return this.#st.ops.select(fields);
  }

  [Symbol.asyncIterator]() {
    const st = this.#st;
    if (!st.iterable) throw new TypeError("a subscription made with onEvent or onTransaction is not iterable");
    return {
      next: () => {
        if (st.queue.length) return Promise.resolve({ value: st.queue.shift(), done: false });
        if (st.ended) return st.error ? Promise.reject(st.error) : Promise.resolve({ value: undefined, done: true });
        return new Promise((resolve, reject) => st.waiters.push({ resolve, reject }));
      },
      return: async () => {
        await this.unsubscribe();
        return { value: undefined, done: true };
      },
      [Symbol.asyncIterator]() {
        return this;
      },
    };
  }
}

/**
 * A live view of a TablecastClient: the rows of a table that match, kept
 * exact across reconnects. Made by TablecastClient.view.
 */
export class View {
  #st;

  constructor(st) {
    this.#st = st;
  }

  /** The subscription's id on the wire. */
  get id() {
    return this.#st.id;
  }

  /** The rows held: key (the key object as JSON) → data. */
  get rows() {
    return this.#st.view.rows;
  }

  /** The sequence the rows are as of; null before the first synced. */
  get seq() {
    return this.#st.view.synced === null ? null : this.#st.lastSeq;
  }

  /** True once the rows are there (the first synced). */
  get ready() {
    return this.#st.view.synced !== null;
  }

  /** Resolves when the view ends: null after close, else the error that ended it. */
  get closed() {
    return this.#st.closed;
  }

  /** Ends the view; resolves once the gateway has confirmed it. */
  close() {
    return this.#st.ops.unsubscribe();
  }
}

/**
 * A connection to a tablecast gateway that survives restarts of the gateway,
 * network failures and expiring tokens, and keeps its subscriptions.
 */
export class TablecastClient {
  #o;
  #url; // URL without credentials
  #WS;
  #getToken;
  #fixedToken;
  #state = "connecting";
  #stopped = false;
  #closed;
  #resolveClosed;

  // The current connection. Handlers of a socket do nothing once #gen has
  // moved on, so a socket given up on (timed out, replaced) is inert.
  #ws = null;
  #gen = 0;
  #open = false;
  #everOpen = false;
  #gotFrame = false;
  #lastFrameAt = 0;
  #attempt = 0;
  #authFailures = 0;

  #retryTimer = null;
  #connectTimer = null;
  #pingTimer = null;
  #pongTimer = null;
  #refreshTimer = null;
  #flushTimer = null;
  #laneTimer = null;

  #subs = new Map(); // id → subscription state, in subscription order
  #subTimers = new Set(); // subscribes to send again later
  #retired = new Set(); // ids ended on this connection, whose late frames are dropped
  #nextId = 0;
  #urlSub = null;
  #urlFrom = false; // the current connection's URL carries a from the client added
  #urlValidated = false; // a connection to the URL subscription has been subscribed

  // Sending is paced by a token bucket below the gateway's rate limit.
  #queue = [];
  #rate;
  #tokens = 0;
  #tokensAt = 0;

  // Answers: pongs answer pings in order; the other messages without an id
  // (topics, create-topic, destroy-topic, publish) go one at a time, so that
  // an error frame without an id belongs to the one in flight.
  #pings = [];
  #lane = [];
  #inFlight = null;

  #token = null;
  #tokenExp = null;
  #tokenAt = 0;
  #refreshing = null;
  #refreshRetry = 0;

  constructor(options) {
    if (options === null || typeof options !== "object") throw new TypeError("TablecastClient needs options: {url, getToken?, …}");
    const o = { ...DEFAULTS };
    for (const [k, v] of Object.entries(options)) if (v !== undefined) o[k] = v;
    this.#o = o;
    if (typeof o.url !== "string" && !(o.url instanceof URL)) throw new TypeError("options.url must be the gateway's WebSocket URL, such as wss://gateway.example/ws");
    const base = globalThis.location?.href;
    const url = base ? new URL(o.url, base) : new URL(o.url);
    if (url.protocol === "http:") url.protocol = "ws:";
    if (url.protocol === "https:") url.protocol = "wss:";
    if (url.protocol !== "ws:" && url.protocol !== "wss:") throw new TypeError("options.url must be ws:, wss:, http: or https:, not " + url.protocol);
    this.#url = url;
    this.#WS = o.WebSocket ?? globalThis.WebSocket;
    if (typeof this.#WS !== "function") {
      throw new TypeError("no WebSocket: pass options.WebSocket (the ws package's), or run Node.js 20 with --experimental-websocket");
    }
    if (o.tokenTransport !== "protocol" && o.tokenTransport !== "query") throw new TypeError('options.tokenTransport must be "protocol" or "query"');
    if (o.getToken !== undefined && typeof o.getToken !== "function") throw new TypeError("options.getToken must be a function");
    if (o.token !== undefined && typeof o.token !== "string") throw new TypeError("options.token must be a string");
    this.#getToken = o.getToken ?? (o.token !== undefined ? () => o.token : null);
    // A fixed token is never refreshed, and one refused would be refused
    // again: its 4001 stops the client at once.
    this.#fixedToken = o.getToken === undefined && o.token !== undefined;
    for (const k of ["initialDelay", "maxDelay", "connectTimeout", "requestTimeout", "pingInterval", "pongTimeout", "refreshBefore", "messagesPerSecond", "maxMessageBytes"]) {
      if (typeof o[k] !== "number" || !(o[k] >= 0)) throw new TypeError("options." + k + " must be a number ≥ 0");
    }
    if (!(o.messagesPerSecond > 0)) throw new TypeError("options.messagesPerSecond must be positive");
    this.#rate = o.messagesPerSecond;
    this.#closed = new Promise((resolve) => { this.#resolveClosed = resolve; });
    if (/\/ws\/tables\//.test(url.pathname)) {
      // A URL subscription: the gateway subscribes on connecting, id "url".
      const from = url.searchParams.get("from");
      url.searchParams.delete("from");
      const handlers = o.urlSubscription ?? {};
      const batched = url.searchParams.get("batch") === "transaction";
      checkBatchHandlers("options.urlSubscription", batched, handlers);
      const st = this.#newSub("url", { url: url.pathname }, handlers);
      st.batched = batched;
      if (from !== null && /^\d+$/.test(from)) st.lastSeq = Number(from);
      this.#urlSub = st;
      this.#subs.set("url", st);
    }
    this.#connect();
  }

  /** "connecting", "open", "reconnecting" or "closed". */
  get state() {
    return this.#state;
  }

  /** Resolves when the client stops for good: null after close(), else the error that stopped it. */
  get closed() {
    return this.#closed;
  }

  /** The subscription of a URL-subscription client (/ws/tables/…), else null. */
  get urlSubscription() {
    return this.#urlSub?.sub ?? null;
  }

  /**
   * Subscribes to a table ({table, where, select, events, from, batch}) or a
   * custom topic ({topic, from}). The subscription lasts across reconnects
   * until unsubscribed, ended by the gateway, or the client is closed. With
   * batch "transaction", each transaction frame goes to onTransaction (or
   * the iterator) instead of one event frame per event.
   */
  subscribe(spec, handlers = {}) {
    if (this.#stopped) throw new TablecastError("closed", "the client is closed");
    if (spec === null || typeof spec !== "object") throw new TypeError("subscribe needs {table} or {topic}");
    for (const k of Object.keys(spec)) if (!SPEC_KEYS.has(k)) throw new TypeError("subscribe: unknown field " + JSON.stringify(k) + " (known: " + [...SPEC_KEYS].join(", ") + ")");
    if ((spec.table === undefined) === (spec.topic === undefined)) throw new TypeError("subscribe needs exactly one of table and topic");
    if (spec.table !== undefined && (typeof spec.table !== "string" || spec.table === "")) throw new TypeError("subscribe: table must be a name such as public.orders");
    if (spec.topic !== undefined && (typeof spec.topic !== "string" || spec.topic === "")) throw new TypeError("subscribe: topic must be a non-empty string");
    if (spec.from !== undefined && !(Number.isSafeInteger(spec.from) && spec.from >= 0)) throw new TypeError("subscribe: from must be a sequence number");
    if (spec.batch !== undefined) {
      if (spec.batch !== "transaction") throw new TypeError('subscribe: batch must be "transaction", not ' + JSON.stringify(spec.batch));
      if (spec.topic !== undefined) throw new TypeError("subscribe: batch applies to table subscriptions, not to topics");
    }
    if (handlers === null || typeof handlers !== "object") throw new TypeError("subscribe: handlers must be an object");
    checkBatchHandlers("subscribe", spec.batch !== undefined, handlers);
    const id = "s" + ++this.#nextId;
    const { from, ...rest } = spec;
    const text = JSON.stringify({ type: "subscribe", id, ...rest, from: Number.MAX_SAFE_INTEGER });
    if (utf8Length(text) > this.#o.maxMessageBytes) {
      throw new TablecastError("message_too_large", "the subscribe message is larger than " + this.#o.maxMessageBytes + " bytes");
    }
    const st = this.#newSub(id, rest, handlers);
    if (from !== undefined) st.lastSeq = from;
    this.#subs.set(id, st);
    this.#sendSubscribe(st);
    return st.sub;
  }

  /**
   * A live view of a table ({table, where, select}): the rows that match
   * now, then every change to that set. `view.rows` is a Map from a row's
   * key (its key object as JSON, e.g. '{"id":42}') to its data; handlers:
   * onSynced(seq) once the rows are there (again after each reconnect),
   * onChange({op, key, data, seq, view}) for each change after (op
   * "upsert", "delete" or "truncate"; view "enter" or "leave" when the row
   * moved into or out of the filter or the row policy; a truncate tablecast
   * sent itself has its cause, "table_added", "table_renamed", "table_dropped",
   * "key_changed" or "snapshot_restarted"), onError(err). An event that changes nothing the view holds (a row
   * updated to the values held, a delete of a row not held) is not a change.
   * After a reconnect the view is read again from the gateway (from NATS,
   * not PostgreSQL), and what differs from the rows held is reported as
   * changes: the view stays exact. With batch "transaction", the changes
   * come a transaction at a time: those of one transaction frame are
   * applied together, then onTransaction({seq, xid, lsn, commit_time,
   * more, changes}) is called.
   */
  view(spec, handlers = {}) {
    if (this.#stopped) throw new TablecastError("closed", "the client is closed");
    if (spec === null || typeof spec !== "object") throw new TypeError("view needs {table}");
    for (const k of Object.keys(spec)) if (!VIEW_KEYS.has(k)) throw new TypeError("view: unknown field " + JSON.stringify(k) + " (known: " + [...VIEW_KEYS].join(", ") + ")");
    if (typeof spec.table !== "string" || spec.table === "") throw new TypeError("view: table must be a name such as public.orders");
    if (spec.batch !== undefined && spec.batch !== "transaction") throw new TypeError('view: batch must be "transaction", not ' + JSON.stringify(spec.batch));
    if (handlers === null || typeof handlers !== "object") throw new TypeError("view: handlers must be an object");
    if (handlers.onTransaction != null && typeof handlers.onTransaction !== "function") throw new TypeError("view: onTransaction must be a function");
    if (spec.batch === undefined && handlers.onTransaction != null) throw new TypeError('view: onTransaction needs batch "transaction"');
    const id = "s" + ++this.#nextId;
    const st = this.#newSub(id, { ...spec, snapshot: true }, handlers);
    st.view = { rows: new Map(), building: null, finishing: false, synced: null, everSynced: false };
    this.#subs.set(id, st);
    this.#sendSubscribe(st);
    return new View(st);
  }

  #viewRows(st, f) {
    const v = st.view;
    if (!v.building || !Array.isArray(f.rows)) return;
    for (const e of f.rows) {
      if (!isObject(e) || !isObject(e.key)) continue; // not a row: nothing to apply
      const k = keyId(e);
      if (e.removed) v.building.delete(k);
      else v.building.set(k, withUnchanged(e.data, e.unchanged, v.building.get(k)));
    }
  }

  #viewSynced(st, f) {
    const v = st.view;
    if (!v.building || v.finishing || typeof f.seq !== "number") return;
    st.lastSeq = f.seq;
    if (f.more === true && st.batched) {
      // The rows end inside a transaction, whose rest comes next: they
      // become the view once it is applied, so that the application is
      // never shown a part of a transaction.
      v.finishing = true;
      return;
    }
    this.#viewShow(st, f.seq);
  }

  // #viewShow makes the rows read (with the transaction they ended inside,
  // for a batched view) the view's, as of seq, and tells what changed.
  #viewShow(st, seq) {
    const v = st.view;
    const next = v.building;
    v.building = null;
    v.finishing = false;
    // What the rows held differ by is what changed meanwhile.
    const changes = [];
    for (const [k, data] of v.rows) {
      if (!next.has(k)) changes.push({ op: "delete", key: JSON.parse(k), data, seq });
    }
    for (const [k, data] of next) {
      if (!v.rows.has(k) || !sameRow(v.rows.get(k), data)) changes.push({ op: "upsert", key: JSON.parse(k), data, seq });
    }
    v.rows.clear();
    for (const [k, data] of next) v.rows.set(k, data);
    v.synced = seq;
    this.#delivered(st);
    if (v.everSynced) for (const c of changes) call(st.h.onChange, c);
    v.everSynced = true;
    call(st.h.onSynced, seq);
  }

  #viewEvent(st, f) {
    const v = st.view;
    if (st.ended || typeof f.seq !== "number") return;
    if (v.finishing) {
      // A snapshot's row (no transaction) among the rest of the
      // transaction the rows ended inside: part of the rows to show.
      if (f.seq > st.lastSeq) {
        st.lastSeq = f.seq;
        this.#viewApply(v.building, f);
      }
      return;
    }
    if (v.building || v.synced === null) return;
    if (f.seq < st.lastSeq) return;
    st.lastSeq = f.seq;
    const change = this.#viewApply(v.rows, f);
    if (change) call(st.h.onChange, change);
  }

  // #viewTransaction applies a batched view's transaction frame: every
  // change of it, then tells each and onTransaction. Its events are objects
  // of the view's event frames ({seq, view, event}); a key change's leave
  // and enter share a seq, hence an event "below", not "at or below",
  // lastSeq was applied.
  #viewTransaction(st, f) {
    const v = st.view;
    if (st.ended || typeof f.seq !== "number" || !Array.isArray(f.events)) return;
    if (v.finishing) {
      // The rest of the transaction the rows ended inside (synced's
      // "more"): applied to them, shown with its last frame.
      if (f.seq <= st.lastSeq) return;
      for (const e of f.events) {
        if (typeof e?.seq === "number" && e.seq >= st.lastSeq) this.#viewApply(v.building, e);
      }
      st.lastSeq = f.seq;
      if (f.more !== true) this.#viewShow(st, f.seq);
      return;
    }
    if (v.building || v.synced === null) return;
    // Two frames never share a seq: one at lastSeq was applied.
    if (f.seq <= st.lastSeq) return;
    const changes = [];
    for (const e of f.events) {
      if (typeof e?.seq !== "number" || e.seq < st.lastSeq) continue;
      const change = this.#viewApply(v.rows, e);
      if (change) changes.push(change);
    }
    st.lastSeq = f.seq;
    if (changes.length === 0) return;
    for (const c of changes) call(st.h.onChange, c);
    call(st.h.onTransaction, { seq: f.seq, xid: f.xid, lsn: f.lsn, commit_time: f.commit_time, more: f.more === true, changes });
  }

  // #viewApply applies one event of a view (an event frame, or an object of
  // a transaction frame) to rows (the view's, or those being read), and
  // returns the change: null for an event that names no row or changes
  // nothing the rows hold (a row updated to the values held, as when it is
  // updated only in columns the view leaves out, or updated to its own
  // values; a delete of a row not held). So a view reports the same
  // changes whether an event comes live or after a reconnect read the rows
  // again.
  #viewApply(rows, f) {
    const ev = f.event;
    if (!isObject(ev) || ev.op !== "truncate" && !isObject(ev.key)) return null;
    const k = keyId(ev);
    const change = { op: "upsert", key: ev.key, data: ev.data, seq: f.seq };
    if (f.view) change.view = f.view;
    if (ev.op === "truncate") {
      rows.clear();
      change.op = "truncate";
      change.key = undefined;
      if (typeof ev.cause === "string") change.cause = ev.cause;
    } else if (ev.op === "delete" || f.view === "leave") {
      if (!rows.has(k)) return null;
      change.op = "delete";
      change.data = rows.get(k);
      rows.delete(k);
    } else {
      const held = rows.has(k);
      const prev = rows.get(k);
      change.data = withUnchanged(ev.data, ev.unchanged, prev);
      rows.set(k, change.data);
      if (held && sameRow(prev, change.data)) return null;
    }
    return change;
  }

  /** The tables and topics the client may subscribe to. */
  topics() {
    return this.#request({ type: "topics" }, "topics");
  }

  /** Creates a custom topic; resolves with the topics list. */
  createTopic(topic) {
    return this.#request({ type: "create-topic", topic }, "topics");
  }

  /** Destroys a custom topic and its messages; resolves with the topics list. */
  destroyTopic(topic) {
    return this.#request({ type: "destroy-topic", topic }, "topics");
  }

  /** Publishes a message on a custom topic; resolves once the gateway has stored it. */
  publish(topic, data) {
    return this.#request({ type: "publish", topic, data: data === undefined ? null : data }, "pong");
  }

  /** Resolves once the gateway has handled every message sent before it. */
  ping() {
    if (this.#stopped) return Promise.reject(new TablecastError("closed", "the client is closed"));
    return this.#ping();
  }

  /** Closes the connection and ends every subscription; the client does not reconnect. */
  close() {
    this.#stop(null);
  }

  // ---- connection ----

  #setState(s) {
    this.#state = s;
  }

  async #connect() {
    const gen = ++this.#gen;
    this.#setState(this.#everOpen ? "reconnecting" : "connecting");
    let token = null;
    if (this.#getToken) {
      try {
        token = (await this.#getToken()) ?? null;
      } catch (e) {
        if (gen === this.#gen) this.#lost(gen, new TablecastError("token_unavailable", "getToken failed: " + errorText(e), { cause: e }));
        return;
      }
      if (gen !== this.#gen) return;
      if (token !== null && typeof token !== "string") {
        this.#stop(new TablecastError("config", "getToken must return a string, null or undefined"));
        return;
      }
    }
    const url = new URL(this.#url);
    const protocols = [SUBPROTOCOL];
    if (token) {
      if (this.#o.tokenTransport === "query") url.searchParams.set("token", token);
      else protocols.push("token." + token);
    }
    this.#urlFrom = false;
    if (this.#urlSub && this.#urlSub.lastSeq !== null) {
      url.searchParams.set("from", String(this.#urlSub.lastSeq));
      this.#urlFrom = true;
    }
    let ws;
    try {
      ws = new this.#WS(url.href, protocols);
    } catch (e) {
      const hint = token && this.#o.tokenTransport === "protocol" ? ' (a token with characters a subprotocol cannot carry needs tokenTransport: "query")' : "";
      this.#stop(new TablecastError("config", "cannot open a WebSocket to " + this.#url.href + ": " + errorText(e) + hint, { cause: e }));
      return;
    }
    this.#ws = ws;
    this.#token = token;
    this.#tokenExp = tokenExpiry(token);
    this.#tokenAt = Date.now();
    this.#refreshRetry = 0;
    ws.onopen = () => { if (gen === this.#gen) this.#opened(gen); };
    ws.onmessage = (m) => { if (gen === this.#gen) this.#onData(m.data); };
    // Browsers fire close after error; Node's WebSocket fires only error
    // when the connection cannot be made.
    ws.onerror = () => { if (gen === this.#gen && !this.#open) this.#lost(gen, new TablecastError("network", "cannot connect to " + this.#url.href)); };
    ws.onclose = (e) => { if (gen === this.#gen) this.#lost(gen, closeError(e)); };
    this.#connectTimer = setTimeout(() => {
      if (gen === this.#gen && !this.#open) this.#lost(gen, new TablecastError("timeout", "no connection to " + this.#url.href + " within " + this.#o.connectTimeout + " ms"));
    }, this.#o.connectTimeout);
  }

  #opened(gen) {
    clearTimeout(this.#connectTimer);
    this.#open = true;
    this.#everOpen = true;
    this.#gotFrame = false;
    this.#lastFrameAt = Date.now();
    this.#retired.clear();
    this.#tokens = 2 * this.#rate;
    this.#tokensAt = Date.now();
    this.#setState("open");
    // A ping first: its answer says the credential was taken and the gateway answers.
    this.#ping().catch(noop);
    for (const st of this.#subs.values()) this.#sendSubscribe(st);
    if (this.#urlSub) this.#urlSub.wire = "subscribing";
    this.#pumpLane();
    this.#scheduleRefresh();
    this.#armLiveness(gen, this.#o.pingInterval);
    call(this.#o.onOpen);
  }

  // #drop ends the current connection's socket and everything that was
  // waiting on it (with err when the client stops, else "disconnected");
  // the subscriptions stay, to be sent again.
  #drop(err, stopping = false) {
    this.#gen++;
    const ws = this.#ws;
    this.#ws = null;
    if (ws) {
      // Never null: the ws package throws on an error event nobody listens to.
      ws.onopen = ws.onmessage = ws.onerror = ws.onclose = noop;
      try {
        if (ws.readyState === 0 || ws.readyState === 1) ws.close(1000);
      } catch {
        // already closing
      }
    }
    this.#open = false;
    for (const t of [this.#connectTimer, this.#pingTimer, this.#pongTimer, this.#refreshTimer, this.#flushTimer, this.#laneTimer, ...this.#subTimers]) clearTimeout(t);
    this.#flushTimer = this.#laneTimer = null;
    this.#subTimers.clear();
    this.#queue = [];
    this.#refreshing = null;
    const pings = this.#pings;
    this.#pings = [];
    for (const p of pings) p.reject(err);
    if (this.#inFlight) {
      const r = this.#inFlight;
      this.#inFlight = null;
      r.reject(stopping || err.code === "rate_limited" ? err : new TablecastError("disconnected", "the connection was lost before the gateway answered: " + err.message, { cause: err }));
    }
    for (const st of [...this.#subs.values()]) {
      if (st.ended) this.#retire(st);
      else st.wire = "idle";
      if (st.pendingSelect) {
        st.pendingSelect.reject(new TablecastError("disconnected", "the connection was lost before the gateway answered the select", { subscriptionId: st.id, cause: err }));
        st.pendingSelect = null;
      }
    }
  }

  #lost(gen, err) {
    if (gen !== this.#gen || this.#stopped) return;
    const wasFrom = this.#urlFrom;
    this.#drop(err);
    let final = false;
    if (err.code === 4001) {
      this.#authFailures++;
      final = !this.#getToken || this.#fixedToken || this.#authFailures >= 2;
    } else if (err.code === 4400 && this.#urlSub && wasFrom && this.#urlValidated && !this.#urlSub.ended) {
      // The URL was accepted before: what is refused now is its from.
      this.#historyUnavailable(this.#urlSub, new TablecastError("history_unavailable", err.reason || err.message, { subscriptionId: "url" }));
    } else {
      final = FINAL_CLOSES.has(err.code);
    }
    if (final) {
      this.#setState("closed");
      call(this.#o.onDisconnect, err, null);
      this.#stop(err);
      return;
    }
    const delay = backoffDelay(this.#attempt++, this.#o.initialDelay, this.#o.maxDelay);
    this.#setState("reconnecting");
    call(this.#o.onDisconnect, err, delay);
    if (this.#state !== "reconnecting") return; // closed by the callback
    this.#retryTimer = setTimeout(() => this.#connect(), delay);
  }

  #stop(err) {
    if (this.#stopped) return;
    this.#stopped = true;
    const closing = err ?? new TablecastError("closed", "the client was closed");
    clearTimeout(this.#retryTimer);
    this.#drop(closing, true);
    this.#setState("closed");
    const lane = this.#lane;
    this.#lane = [];
    for (const r of lane) r.reject(closing);
    for (const st of [...this.#subs.values()]) {
      this.#end(st, err);
      this.#retire(st);
    }
    call(this.#o.onClose, err);
    this.#resolveClosed(err);
  }

  #armLiveness(gen, after) {
    if (!(this.#o.pingInterval > 0)) return;
    clearTimeout(this.#pingTimer);
    this.#pingTimer = setTimeout(() => {
      if (gen !== this.#gen) return;
      const idle = Date.now() - this.#lastFrameAt;
      if (idle < this.#o.pingInterval) {
        this.#armLiveness(gen, this.#o.pingInterval - idle);
        return;
      }
      const sentAt = Date.now();
      this.#ping().catch(noop);
      clearTimeout(this.#pongTimer);
      this.#pongTimer = setTimeout(() => {
        if (gen === this.#gen && this.#lastFrameAt < sentAt) {
          this.#lost(gen, new TablecastError("network", "the gateway did not answer a ping within " + this.#o.pongTimeout + " ms"));
        }
      }, this.#o.pongTimeout);
      this.#armLiveness(gen, this.#o.pingInterval);
    }, after);
  }

  // ---- sending ----

  #send(msg) {
    this.#queue.push(JSON.stringify(msg));
    this.#flush();
  }

  #flush() {
    if (!this.#open) return;
    const now = Date.now();
    this.#tokens = Math.min(2 * this.#rate, this.#tokens + ((now - this.#tokensAt) / 1000) * this.#rate);
    this.#tokensAt = now;
    while (this.#queue.length && this.#tokens >= 1) {
      const text = this.#queue.shift();
      this.#tokens--;
      try {
        this.#ws.send(text);
      } catch {
        // the socket is closing: its close event follows
      }
    }
    if (this.#queue.length && !this.#flushTimer) {
      this.#flushTimer = setTimeout(() => {
        this.#flushTimer = null;
        this.#flush();
      }, Math.ceil(((1 - this.#tokens) / this.#rate) * 1000));
    }
  }

  #ping() {
    return new Promise((resolve, reject) => {
      if (!this.#open) {
        // Sent once connected: the answer then covers what came before.
        this.#lane.push({ msg: null, answer: "pong", resolve, reject });
        return;
      }
      this.#pings.push({ resolve, reject });
      this.#send({ type: "ping" });
    });
  }

  #request(msg, answer) {
    if (this.#stopped) return Promise.reject(new TablecastError("closed", "the client is closed"));
    const size = utf8Length(JSON.stringify(msg));
    if (size > this.#o.maxMessageBytes) {
      return Promise.reject(new TablecastError("message_too_large", "the " + msg.type + " message is " + size + " bytes, more than " + this.#o.maxMessageBytes));
    }
    return new Promise((resolve, reject) => {
      this.#lane.push({ msg, answer, resolve, reject });
      this.#pumpLane();
    });
  }

  #pumpLane() {
    while (this.#open && !this.#inFlight && this.#lane.length) {
      const r = this.#lane.shift();
      if (r.msg === null) {
        // a ping() asked for while disconnected
        this.#pings.push(r);
        this.#send({ type: "ping" });
        continue;
      }
      this.#inFlight = r;
      const gen = this.#gen;
      this.#laneTimer = setTimeout(() => {
        // An answer this late would be taken for the next request's:
        // start again on a new connection instead.
        if (gen === this.#gen && this.#inFlight === r) {
          this.#lost(gen, new TablecastError("timeout", "the gateway did not answer " + r.msg.type + " within " + this.#o.requestTimeout + " ms"));
        }
      }, this.#o.requestTimeout);
      this.#send(r.msg);
      if (r.answer === "pong") {
        // A publish is answered only when it fails; the pong after it says it did not.
        this.#ping().then(() => this.#answerLane(r, null, null), noop);
      }
    }
  }

  #answerLane(r, value, err) {
    if (this.#inFlight !== r) return;
    this.#inFlight = null;
    clearTimeout(this.#laneTimer);
    if (err) r.reject(err);
    else r.resolve(value);
    this.#pumpLane();
  }

  // ---- receiving ----

  #onData(data) {
    this.#lastFrameAt = Date.now();
    if (!this.#gotFrame) {
      // The gateway answers: the credential was taken, the backoff starts over.
      this.#gotFrame = true;
      this.#attempt = 0;
      this.#authFailures = 0;
    }
    if (typeof data !== "string") {
      if (data instanceof ArrayBuffer || ArrayBuffer.isView(data)) data = new TextDecoder().decode(data);
      else return;
    }
    let f;
    try {
      f = JSON.parse(data);
    } catch {
      return;
    }
    if (f === null || typeof f !== "object") return;
    const st = typeof f.id === "string" ? this.#subs.get(f.id) : undefined;
    if (st?.view && (f.type === "rows" || f.type === "event" || f.type === "transaction") && BIG_NUMBER.test(data)) tagKeys(f, data);
    if (typeof f.id === "string" && f.id !== "" && !st && this.#retired.has(f.id)) return;
    switch (f.type) {
      case "event":
        if (st?.view) this.#viewEvent(st, f);
        else if (st) this.#deliver(st, f);
        return;
      case "message":
        if (st) this.#deliver(st, f);
        return;
      case "transaction":
        if (st?.view && st.batched) this.#viewTransaction(st, f);
        else if (st?.batched) this.#deliverTransaction(st, f);
        return;
      case "rows":
        if (st?.view) this.#viewRows(st, f);
        return;
      case "synced":
        if (st?.view) this.#viewSynced(st, f);
        return;
      case "subscribed":
        if (st) this.#subscribed(st, f.seq);
        return;
      case "unsubscribed":
        if (st) this.#unsubscribed(st);
        return;
      case "error":
        this.#errorFrame(st, f);
        return;
      case "topics":
        if (this.#inFlight?.answer === "topics") this.#answerLane(this.#inFlight, { tables: f.tables ?? [], topics: f.topics ?? [] }, null);
        return;
      case "refreshed":
        this.#refreshed(f);
        return;
      case "pong":
        this.#pings.shift()?.resolve();
        return;
    }
  }

  #errorFrame(st, f) {
    const id = typeof f.id === "string" && f.id !== "" ? f.id : null;
    const err = new TablecastError(typeof f.code === "string" ? f.code : "internal", typeof f.message === "string" ? f.message : "", { subscriptionId: id });
    switch (err.code) {
      case "rate_limited":
        // The gateway dropped a message and cannot say which. Slow down and
        // start again on a new connection, where every subscription resumes
        // from its last seq: nothing is left half done.
        this.#rate = Math.max(1, this.#rate / 4);
        call(this.#o.onError, err);
        this.#lost(this.#gen, err);
        return;
      case "refresh_failed":
        // The connection keeps its credential until that expires; a fresh
        // credential goes on a new connection instead.
        this.#refreshing = null;
        call(this.#o.onError, err);
        this.#lost(this.#gen, err);
        return;
    }
    if (st) {
      this.#subError(st, err);
      return;
    }
    if (id === null && this.#inFlight) {
      this.#answerLane(this.#inFlight, null, err);
      return;
    }
    call(this.#o.onError, err);
  }

  #subscribed(st, seq) {
    if (st.wire === "subscribing") {
      st.wire = "active";
      // After internal following subscribed, the backoff grows until the
      // subscription delivers again (#delivered).
      if (!st.failing) st.retries = 0;
      if (st === this.#urlSub) this.#urlValidated = true;
      if (st.lastSeq === null && typeof seq === "number") st.lastSeq = seq;
      if (!st.ended) call(st.h.onSubscribed, seq);
    } else if (st.wire === "active" && st.pendingSelect) {
      const p = st.pendingSelect;
      st.pendingSelect = null;
      st.spec = { ...st.spec, select: p.fields.length ? p.fields : undefined };
      p.resolve(seq);
    }
  }

  #unsubscribed(st) {
    if (st.ended) {
      this.#retire(st);
      return;
    }
    if (st.wire === "resubscribing") {
      st.wire = "idle";
      if (st === this.#urlSub) {
        // Only a new connection makes a URL subscription again.
        this.#lost(this.#gen, new TablecastError("history_unavailable", "the URL subscription is made again without from", { subscriptionId: "url" }));
      } else if (st.failing) {
        this.#subscribeLater(st);
      } else {
        this.#sendSubscribe(st);
      }
      return;
    }
    this.#end(st, new TablecastError("unsubscribed", "the gateway ended the subscription without saying why", { subscriptionId: st.id }));
    this.#retire(st);
  }

  #subError(st, err) {
    if (st.ended) {
      // Waiting for the answer to our unsubscribe: "no subscription" is one.
      if (err.code === "invalid_subscription") this.#retire(st);
      return;
    }
    switch (err.code) {
      case "filter_failed":
        call(st.h.onError, err);
        return;
      case "history_unavailable":
        this.#historyUnavailable(st, err);
        return;
      case "snapshot_unavailable":
        if (st.wire === "active") {
          // unsubscribed follows; the view is read again then
          call(st.h.onError, err);
          st.wire = "resubscribing";
          return;
        }
      // falls through: not there yet, try again later
      case "internal":
        if (st.wire === "subscribing") {
          // The gateway could not follow the table now (NATS): try again later.
          call(st.h.onError, err);
          st.wire = "idle";
          this.#subscribeLater(st);
          return;
        }
        if (st.wire === "active" && st !== this.#urlSub) {
          // A resume or a view's rows failed after subscribed (the
          // gateway's NATS): unsubscribed follows, then the same again
          // later, from lastSeq (a view reads its rows again).
          call(st.h.onError, err);
          st.wire = "resubscribing";
          st.failing = true;
          return;
        }
        break;
      case "invalid_select":
      case "invalid_subscription":
        if (st.pendingSelect && st.wire === "active") {
          const p = st.pendingSelect;
          st.pendingSelect = null;
          p.reject(err);
          return;
        }
        break;
    }
    // Refused, or ended by the gateway (an unsubscribed may follow: dropped).
    this.#end(st, err);
    this.#retire(st);
  }

  // #delivered notes that st delivered something: a failure before it is
  // over, and the next one backs off from the start.
  #delivered(st) {
    if (!st.failing) return;
    st.failing = false;
    st.retries = 0;
  }

  // #subscribeLater subscribes st again after a backoff.
  #subscribeLater(st) {
    const t = setTimeout(() => {
      this.#subTimers.delete(t);
      if (st.wire === "idle") this.#sendSubscribe(st);
    }, backoffDelay(st.retries++, 1000, this.#o.maxDelay));
    this.#subTimers.add(t);
  }

  #historyUnavailable(st, err) {
    st.lastSeq = null;
    const cb = st.h.onHistoryUnavailable ?? st.h.onError ?? this.#o.onError;
    call(cb, err);
    if (st.ended) return; // unsubscribed by the callback
    if (st.wire === "active") st.wire = "resubscribing"; // unsubscribed follows
    else if (st !== this.#urlSub) {
      st.wire = "idle";
      this.#sendSubscribe(st);
    }
  }

  #deliver(st, f) {
    if (st.ended || st.wire !== "active" || typeof f.seq !== "number") return;
    // Drop what was delivered already: nothing twice, whatever the gateway resends.
    if (st.lastSeq !== null && f.seq <= st.lastSeq) return;
    st.lastSeq = f.seq;
    this.#delivered(st);
    if (!st.iterable) {
      // A batched subscription without onEvent lets the rows of a snapshot
      // (event frames, outside any transaction) go: its handlers asked for
      // transactions only.
      call(st.h.onEvent, f);
      return;
    }
    this.#push(st, f);
  }

  // #deliverTransaction delivers a transaction frame of a batched
  // subscription. Its seq is the marker's, beyond every event in it, or,
  // for a part of a transaction cut in several ("more": true), its last
  // event's: lastSeq moves there, so that a resume asks for what follows
  // (the gateway then sends the rest of a cut transaction), and a frame at
  // or below it is dropped as an event frame is.
  #deliverTransaction(st, f) {
    if (st.ended || st.wire !== "active" || typeof f.seq !== "number" || !Array.isArray(f.events)) return;
    if (st.lastSeq !== null && f.seq <= st.lastSeq) return;
    // Nothing twice, whatever the gateway resends: an event at or below
    // lastSeq (a resume from inside a transaction gets the events after
    // that seq only, so this takes none out today). The events are in
    // commit order: when the first is past lastSeq, all are.
    const after = st.lastSeq;
    const events = after === null || !(f.events[0]?.seq <= after) ? f.events : f.events.filter((e) => !(typeof e?.seq === "number" && e.seq <= after));
    st.lastSeq = f.seq;
    this.#delivered(st);
    if (events.length === 0) return;
    const tx = {
      type: "transaction", id: f.id, seq: f.seq, xid: f.xid, lsn: f.lsn, commit_time: f.commit_time,
      more: f.more === true, events,
    };
    if (!st.iterable) {
      call(st.h.onTransaction, tx);
      return;
    }
    this.#push(st, tx);
  }

  // #push hands an iterated subscription's next value to its reader.
  #push(st, value) {
    const w = st.waiters.shift();
    if (w) w.resolve({ value, done: false });
    else st.queue.push(value);
  }

  // ---- subscriptions ----

  #newSub(id, spec, handlers) {
    const st = {
      id, spec, h: handlers, wire: "idle", lastSeq: null, ended: false, error: null,
      iterable: !handlers.onEvent && !handlers.onTransaction, batched: spec.batch !== undefined,
      retries: 0, failing: false, pendingSelect: null, queue: [], waiters: [], sub: null, closed: null, resolveClosed: null, gone: null, resolveGone: null,
    };
    st.closed = new Promise((resolve) => { st.resolveClosed = resolve; });
    st.gone = new Promise((resolve) => { st.resolveGone = resolve; });
    st.ops = {
      unsubscribe: () => this.#unsubscribe(st),
      select: (fields) => this.#select(st, fields),
    };
    st.sub = new Subscription(st);
    return st;
  }

  #sendSubscribe(st) {
    if (!this.#open || st.ended || st === this.#urlSub) return;
    const m = { type: "subscribe", id: st.id, ...st.spec };
    if (st.view) {
      // A view starts again from its rows.
      st.view.building = new Map();
      st.view.finishing = false;
    }
    else if (st.lastSeq !== null) m.from = st.lastSeq;
    st.wire = "subscribing";
    this.#send(m);
  }

  #unsubscribe(st) {
    if (st.ended) return st.gone;
    this.#end(st, null);
    if (st === this.#urlSub) {
      // Its connection exists for it alone.
      this.#stop(null);
    } else if (this.#open && (st.wire === "subscribing" || st.wire === "active")) {
      this.#send({ type: "unsubscribe", id: st.id });
    } else if (st.wire !== "resubscribing") {
      // Not on the gateway now; when resubscribing, its unsubscribed is coming.
      this.#retire(st);
    }
    return st.gone;
  }

  #select(st, fields) {
    if (st.spec.table === undefined || st === this.#urlSub) return Promise.reject(new TypeError("select applies to table subscriptions"));
    if (!Array.isArray(fields) || fields.some((c) => typeof c !== "string")) return Promise.reject(new TypeError("select takes an array of column names"));
    if (st.ended) return Promise.reject(new TablecastError("closed", "the subscription has ended", { subscriptionId: st.id }));
    if (!this.#open || st.wire !== "active") return Promise.reject(new TablecastError("disconnected", "the subscription is not active now", { subscriptionId: st.id }));
    if (st.pendingSelect) return Promise.reject(new TablecastError("busy", "a select of this subscription is already waiting for its answer", { subscriptionId: st.id }));
    return new Promise((resolve, reject) => {
      st.pendingSelect = { fields: [...fields], resolve, reject };
      this.#send({ type: "select", id: st.id, fields });
    });
  }

  // #end ends a subscription for the application: no event after it.
  #end(st, err) {
    if (st.ended) return;
    st.ended = true;
    st.error = err;
    if (err) call(st.h.onError, err);
    for (const w of st.waiters.splice(0)) {
      if (err) w.reject(err);
      else w.resolve({ value: undefined, done: true });
    }
    st.resolveClosed(err);
  }

  // #retire forgets an ended subscription: the gateway holds it no more.
  #retire(st) {
    if (this.#subs.get(st.id) === st) this.#subs.delete(st.id);
    this.#retired.add(st.id);
    st.resolveGone();
  }

  // ---- credentials ----

  #scheduleRefresh() {
    clearTimeout(this.#refreshTimer);
    if (!this.#open || !this.#getToken || this.#fixedToken || this.#o.refresh === false || this.#tokenExp === null) return;
    const expMs = this.#tokenExp * 1000;
    const now = Date.now();
    // Shortly before exp: refreshBefore ahead, or half the token's life when that is shorter.
    const lead = Math.min(this.#o.refreshBefore, Math.max(0, (expMs - this.#tokenAt) / 2));
    let due = expMs - lead;
    if (due < now + MIN_REFRESH_DELAY) {
      // Due already by this clock (a token about to expire, a clock ahead of
      // the issuer's, getToken handing out the same token): try again, less
      // and less often, rather than in a loop.
      due = now + Math.min(MIN_REFRESH_DELAY * 2 ** Math.min(this.#refreshRetry, 10), MAX_REFRESH_DELAY);
      this.#refreshRetry++;
    } else {
      this.#refreshRetry = 0;
    }
    const gen = this.#gen;
    const wait = () => {
      const left = due - Date.now();
      if (left > 0) {
        this.#refreshTimer = setTimeout(wait, Math.min(left, MAX_TIMER));
        return;
      }
      this.#refresh(gen);
    };
    wait();
  }

  async #refresh(gen) {
    let token;
    try {
      token = await this.#getToken();
    } catch (e) {
      if (gen !== this.#gen) return;
      call(this.#o.onError, new TablecastError("token_unavailable", "getToken failed: " + errorText(e), { cause: e }));
      this.#scheduleRefresh();
      return;
    }
    if (gen !== this.#gen || !this.#open) return;
    if (typeof token !== "string" || token === "" || token === this.#token) {
      // Nothing newer yet: ask again later.
      this.#scheduleRefresh();
      return;
    }
    this.#refreshing = { token, at: Date.now() };
    this.#send({ type: "refresh", token });
  }

  #refreshed(f) {
    const r = this.#refreshing;
    if (!r) return;
    this.#refreshing = null;
    this.#token = r.token;
    this.#tokenExp = typeof f.exp === "number" ? f.exp : null;
    this.#tokenAt = r.at;
    call(this.#o.onRefreshed, this.#tokenExp);
    this.#scheduleRefresh();
  }
}
