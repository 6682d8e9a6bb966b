// Types of tablecast.js, the client of the tablecast WebSocket gateway
// (protocol v1). The protocol is docs/contract.md of the tablecast repository.

/** The client's version. */
export declare const VERSION: string;

/** The WebSocket subprotocol of protocol v1: "tablecast.v1". */
export declare const SUBPROTOCOL: "tablecast.v1";

/** Close codes of the gateway. */
export declare const CloseCode: Readonly<{
  NORMAL: 1000;
  /** The gateway is shutting down or restarting: the client reconnects and resumes. */
  GOING_AWAY: 1001;
  PROTOCOL_ERROR: 1002;
  UNSUPPORTED_DATA: 1003;
  INVALID_PAYLOAD: 1007;
  MESSAGE_TOO_BIG: 1009;
  /** Credentials refused, token expired (reason "token expired") or revoked. */
  UNAUTHORIZED: 4001;
  FORBIDDEN_ORIGIN: 4003;
  /** The client read too slowly: it reconnects and resumes, nothing is lost. */
  SLOW_CONSUMER: 4008;
  TOO_MANY_CONNECTIONS: 4029;
  /** A URL subscription the gateway refuses; the reason says why. */
  BAD_REQUEST: 4400;
  /** The WebSocket endpoint followed (/ws/endpoints/<name>) was paused, disabled or deleted; the reason says which. */
  ENDPOINT_GONE: 4410;
}>;

/** The code of an error frame (docs/contract.md, "Error codes"). */
export type ErrorFrameCode =
  | "invalid_message"
  | "unknown_type"
  | "invalid_subscription"
  | "unknown_table"
  | "ambiguous_table"
  | "unknown_topic"
  | "topic_exists"
  | "invalid_filter"
  | "invalid_select"
  | "too_many_subscriptions"
  | "history_unavailable"
  | "batch_unavailable"
  | "message_too_large"
  | "filter_failed"
  | "not_allowed"
  | "rate_limited"
  | "too_many_topics"
  | "refresh_failed"
  | "internal";

/**
 * Codes of the client itself:
 * - "network": the connection could not be made, or was lost without a close frame (1006);
 * - "timeout": no connection, or no answer to a request, in time (the client reconnects);
 * - "disconnected": the connection was lost before a request was answered;
 * - "closed": the client or the subscription was closed;
 * - "token_unavailable": getToken threw or rejected;
 * - "unsubscribed": the gateway ended a subscription without an error;
 * - "busy": a select of the subscription is already waiting for its answer;
 * - "config": the WebSocket could not be made from the options (a bad URL, a
 *   token a subprotocol cannot carry), or getToken returned something else than a string;
 * - "message_too_large": a message larger than maxMessageBytes, not sent.
 */
export type ClientErrorCode =
  | "network"
  | "timeout"
  | "disconnected"
  | "closed"
  | "token_unavailable"
  | "unsubscribed"
  | "busy"
  | "config"
  | "message_too_large";

/** A close code: those of CloseCode, or any other the connection ended with. */
export type CloseCodeNumber = (typeof CloseCode)[keyof typeof CloseCode] | number;

/** An error of the gateway (an error frame or a close) or of the client. */
export declare class TablecastError extends Error {
  constructor(code: ErrorFrameCode | ClientErrorCode | CloseCodeNumber, message: string, details?: { subscriptionId?: string | null; reason?: string | null; cause?: unknown });
  readonly name: "TablecastError";
  /** The error frame's code, the close code (a number), or the client's own code. */
  readonly code: ErrorFrameCode | ClientErrorCode | CloseCodeNumber;
  /** The subscription the error is about, when it is about one. */
  readonly subscriptionId: string | null;
  /** A close's reason, as the gateway sent it. */
  readonly reason: string | null;
  /** Whether the error is a close of the connection by the gateway (code is a number). */
  readonly isClose: boolean;
}

/** Row operations. "read" is a row sent by a snapshot. */
export type Op = "create" | "update" | "delete" | "truncate" | "read";

/** A row as JSON: column name to value (numeric as strings, timestamps RFC 3339, …). */
export type Row = Record<string, unknown>;

/** One row change (docs/contract.md, "Event envelope"). */
export interface RowEvent<R extends object = Row> {
  /** The commit LSN and the change's ordinal: unique, ordered, stable across replays. */
  id: string;
  op: Op;
  db: string;
  schema: string;
  table: string;
  lsn: string;
  xid: number;
  commit_time: string;
  /** The row's identity (primary key columns); {} for a truncate. Absent only with key_left_out. */
  key: Partial<R>;
  /** The new row (create, update, read). */
  data?: R;
  /** The old row, where PostgreSQL sent one. */
  old?: Partial<R>;
  /** Unchanged TOASTed columns, absent from data. */
  unchanged?: string[];
  /** An event too large for NATS whose object could not be read. */
  claim?: { bucket: string; object: string; size: number };
  /** An event larger than the reader's limit: published without its rows. */
  truncated?: true;
  /** A claim or truncated event whose key alone is too large for one NATS message: it has no key. */
  key_left_out?: true;
  /** On a truncate tablecast sent itself: "table_added", a table added to the publication under a name streamed before (its rows follow as read); "table_renamed", a table renamed (its old name's rows are no table's; under its new name its rows follow as read); "table_dropped", a table dropped (its rows are no table's); "key_changed", the table's key changed (its rows follow under the new key); "snapshot_restarted", an interrupted initial snapshot taken again (rows held from it may be gone; its rows follow as read). */
  cause?: "table_added" | "table_renamed" | "table_dropped" | "key_changed" | "snapshot_restarted";
}

/** A table subscription's event: `{"type":"event","id":"s1","seq":1235,"event":{…}}`. */
export interface EventFrame<R extends object = Row> {
  type: "event";
  /** The subscription's id. */
  id: string;
  /** The event's stream sequence. */
  seq: number;
  event: RowEvent<R>;
}

/** One event of a transaction frame: its stream sequence and the event. */
export interface TransactionEvent<R extends object = Row> {
  seq: number;
  event: RowEvent<R>;
}

/**
 * A batched subscription's transaction: the events of one transaction the
 * subscription takes, in commit order
 * (`{"type":"transaction","id":"t1","seq":1240,"xid":731,"lsn":"0/16B3748","commit_time":"…","events":[…]}`).
 * A transaction larger than the gateway puts in one frame comes in parts,
 * in order: every part but the last has `more` true.
 */
export interface TransactionFrame<R extends object = Row> {
  type: "transaction";
  /** The subscription's id. */
  id: string;
  /**
   * The sequence of the transaction's marker, beyond every event in it; for
   * a part followed by more, its last event's. lastSeq moves here.
   */
  seq: number;
  xid: number;
  /** The commit LSN. */
  lsn: string;
  commit_time: string;
  /** True for every part of a cut transaction but the last. */
  more: boolean;
  events: TransactionEvent<R>[];
}

/** A custom topic's message: `{"type":"message","id":"s2","topic":"chat","seq":88,"data":…}`. */
export interface MessageFrame<T = unknown> {
  type: "message";
  id: string;
  topic: string;
  seq: number;
  data: T;
}

/** A JSON value compared by the column's type (numeric exactly, timestamps as instants). */
export type Value = string | number | boolean | null;

/** Conditions on one column; several AND together. */
export interface Condition {
  eq?: Value;
  neq?: Value;
  lt?: Value;
  lte?: Value;
  gt?: Value;
  gte?: Value;
  in?: Value[];
  nin?: Value[];
  is?: "null" | "not_null" | "true" | "false";
}

/** Conditions per column, ANDed; `or` groups alternatives. */
export interface Where {
  or?: Where[];
  [column: string]: Condition | Where[] | undefined;
}

/** A subscription to a table's changes. */
export interface TableSpec {
  /** `schema.table` or `database.schema.table`; see tableName() for names with dots or quotes. */
  table: string;
  where?: Where;
  /** Columns to keep in data, old and unchanged (key stays whole). */
  select?: string[];
  /** Operations to receive; all granted ones when absent. */
  events?: Op[];
  /** Resume after this sequence (a lastSeq the application kept). */
  from?: number;
  topic?: never;
  batch?: undefined;
}

/**
 * A table subscription delivering one frame per transaction instead of one
 * per event (the gateway's TABLECAST_TX_MARKERS must be on, else
 * batch_unavailable).
 */
export interface BatchedTableSpec extends Omit<TableSpec, "batch"> {
  batch: "transaction";
}

/** A subscription to a custom topic. */
export interface TopicSpec {
  topic: string;
  /** Resume after this sequence. */
  from?: number;
  table?: never;
  where?: never;
  select?: never;
  events?: never;
  batch?: never;
}

/** What a subscription tells the application. Each is optional. */
export interface SubscriptionHandlers<F> {
  /**
   * Each event (or topic message) once, in order, never one at or before the
   * last delivered. Without onEvent the subscription is async-iterable instead.
   */
  onEvent?(frame: F): void;
  /** The gateway confirmed the subscription (again after each reconnect); seq: where delivery is guaranteed from. */
  onSubscribed?(seq: number): void;
  /**
   * An error about this subscription. It ended the subscription unless its
   * code is "filter_failed" (one event could not be judged) or "internal"
   * while subscribing (the client tries again).
   */
  onError?(err: TablecastError): void;
  /**
   * The stream no longer holds the events after the subscription's last
   * seq (its retention dropped them while the client was away or behind):
   * reload what you built from the events. The client then subscribes
   * again without from and goes on with live events. Without this handler,
   * onError gets the error.
   */
  onHistoryUnavailable?(err: TablecastError): void;
}

/**
 * What a batched subscription tells the application. Without onTransaction
 * (and onEvent) the subscription is async-iterable instead, yielding its
 * transactions and, as event frames, the rows of snapshots.
 */
export interface BatchedSubscriptionHandlers<R extends object = Row> extends Omit<SubscriptionHandlers<EventFrame<R>>, "onEvent"> {
  /**
   * Each transaction frame once, in order, never one at or before the last
   * delivered; a transaction cut in parts gives one call per part, and a
   * resume after a part brings the rest of its transaction.
   */
  onTransaction?(tx: TransactionFrame<R>): void;
  /**
   * The rows a snapshot puts in the stream (op "read", outside any
   * transaction), which come as event frames; without it they are not
   * delivered. Only with onTransaction.
   */
  onEvent?(frame: EventFrame<R>): void;
}

/** What a view shows: a table, filtered and projected. */
export interface ViewSpec {
  /** `schema.table` or `database.schema.table`. */
  table: string;
  where?: Where;
  select?: string[];
  /**
   * "transaction": the changes come a transaction frame at a time, applied
   * together, and onTransaction follows each frame (needs the gateway's
   * TABLECAST_TX_MARKERS, else batch_unavailable).
   */
  batch?: "transaction";
}

/** One change of a view. */
export interface ViewChange<R extends object = Row> {
  /** "upsert": the row is now data; "delete": the row left the view; "truncate": every row did. */
  op: "upsert" | "delete" | "truncate";
  /** The row's key object (absent for a truncate). */
  key?: Record<string, unknown>;
  /** The row (for a delete, the row as the view held it). */
  data?: R;
  /** The event's stream sequence (a reconnect's differences: the new synced seq). */
  seq: number;
  /** "enter" or "leave": the row moved into or out of the filter or the row policy. */
  view?: "enter" | "leave";
  /** On a truncate tablecast sent itself: "table_added" (the table was dropped and created again, or added back) or "table_renamed" (a table was renamed from or to this name) or "table_dropped" (the table was dropped) or "key_changed" (the table's key changed; its rows follow under the new key) or "snapshot_restarted" (an interrupted initial snapshot is taken again; its rows follow). */
  cause?: "table_added" | "table_renamed" | "table_dropped" | "key_changed" | "snapshot_restarted";
}

/** The changes of one transaction frame of a batched view, applied to its rows together. */
export interface ViewTransaction<R extends object = Row> {
  /** The transaction's marker's sequence; for a part followed by more, its last event's. */
  seq: number;
  xid: number;
  lsn: string;
  commit_time: string;
  /** True for every part of a cut transaction but the last. */
  more: boolean;
  changes: ViewChange<R>[];
}

export interface ViewHandlers<R extends object = Row> {
  /** The rows are there, as of seq (again after each reconnect); of a batched view, whole transactions. */
  onSynced?(seq: number): void;
  /** A change of the rows after they were there (of a batched view: once its whole frame is applied). An event that changes nothing the view holds (a row updated to the values held, a delete of a row not held) is not one. */
  onChange?(change: ViewChange<R>): void;
  /** A batched view's transaction frame, once its changes are applied and told. */
  onTransaction?(tx: ViewTransaction<R>): void;
  /** An error of the view; one that ends it also resolves `closed`. */
  onError?(err: TablecastError): void;
}

/** A live view of a table. */
export declare class View<R extends object = Row> {
  private constructor();
  /** Its id on the wire. */
  readonly id: string;
  /** The rows held, by key: the key object as JSON (`'{"id":42}'`), integers beyond 2^53 with all their digits. */
  readonly rows: ReadonlyMap<string, R>;
  /** The sequence the rows are as of; null before the first synced. */
  readonly seq: number | null;
  /** True once the rows are there. */
  readonly ready: boolean;
  /** Resolves when the view ends: null after close, else the error that ended it. */
  readonly closed: Promise<TablecastError | null>;
  /** Ends the view. */
  close(): Promise<void>;
}

/** One subscription; async-iterable (its events, in order) when made without onEvent and onTransaction. */
export declare class Subscription<F = EventFrame | MessageFrame | TransactionFrame> implements AsyncIterable<F> {
  private constructor();
  /** Its id on the wire: "s1", "s2", …, or "url" for a URL subscription. */
  readonly id: string;
  readonly spec: Readonly<TableSpec | BatchedTableSpec | TopicSpec | { url: string }>;
  /**
   * The sequence of the last event or transaction frame delivered (at
   * first, subscribed's): where a resume starts.
   */
  readonly lastSeq: number | null;
  /** "pending" until subscribed and while reconnecting, "active", or "ended". */
  readonly state: "pending" | "active" | "ended";
  /** Resolves when the subscription ends: null after unsubscribe or close, else the error that ended it. */
  readonly closed: Promise<TablecastError | null>;
  /** Ends the subscription: no event after this call. Resolves once the gateway has confirmed it. */
  unsubscribe(): Promise<void>;
  /**
   * Changes a table subscription's columns ([]: all). Resolves with the seq
   * of the last event sent with the old projection; rejects (keeping the
   * old one) when the gateway refuses a column or the subscription is not active.
   */
  select(fields: string[]): Promise<number>;
  /** Iterating ends with unsubscribe (break) or the subscription's end; it throws the error that ended it. */
  [Symbol.asyncIterator](): AsyncIterator<F>;
}

/** The tables and topics a client may subscribe to. */
export interface TopicsList {
  tables: string[];
  topics: string[];
}

export interface ClientOptions {
  /**
   * The gateway's WebSocket endpoint: `wss://gateway.example/ws` (http(s) is
   * taken as ws(s); in a browser a relative URL such as "/ws" works). A URL
   * subscription (`…/ws/tables/public.orders?status=eq.paid`) makes a client
   * of that one subscription: see urlSubscription.
   */
  url: string | URL;
  /**
   * Returns the credential (a JWT or an API key), or null for none. Called
   * before each connection and before each in-band refresh; may be async.
   * Return a fresh token each time it is asked after the last one expired or
   * was refused.
   */
  getToken?: () => string | null | undefined | Promise<string | null | undefined>;
  /** A fixed credential, when getToken is not given (it cannot be refreshed). */
  token?: string;
  /**
   * How the credential travels: "protocol" (default), the subprotocol
   * `token.<jwt>` beside tablecast.v1 (browsers cannot set headers), or
   * "query", the `token` query parameter (which servers and proxies may log).
   */
  tokenTransport?: "protocol" | "query";
  /** Refresh a JWT in band before its exp (default true). When false, the client reconnects after the 4001 at expiry. */
  refresh?: boolean;
  /** Refresh this many ms before exp, or at half the token's life when that is sooner (default 60000). */
  refreshBefore?: number;
  /**
   * The WebSocket constructor (default: globalThis.WebSocket). Node.js 20
   * has one with --experimental-websocket; or pass the ws package's.
   */
  WebSocket?: new (url: string, protocols?: string | string[]) => WebSocketLike;
  /** Backoff: the first reconnect waits up to this (ms, default 500), doubling per attempt… */
  initialDelay?: number;
  /** …up to this (ms, default 30000); each wait is uniform from 0 (full jitter). */
  maxDelay?: number;
  /** Give up a connection attempt after this (ms, default 10000). */
  connectTimeout?: number;
  /** Reconnect when a request (topics, publish, …) is not answered within this (ms, default 10000). */
  requestTimeout?: number;
  /** Ping the gateway after this long without a frame (ms, default 20000; 0: never)… */
  pingInterval?: number;
  /** …and reconnect when nothing arrives within this after the ping (ms, default 10000). */
  pongTimeout?: number;
  /**
   * Messages sent a second at most, in bursts of twice that (default 40:
   * below the gateway's TABLECAST_WS_MESSAGES_PER_SECOND of 50). Should the
   * gateway still answer rate_limited, the client slows to a quarter and
   * reconnects (every subscription resumes, nothing is lost).
   */
  messagesPerSecond?: number;
  /** The largest message sent (bytes, default 65536: the gateway's TABLECAST_WS_MAX_MESSAGE). */
  maxMessageBytes?: number;
  /**
   * The handlers of a URL subscription (options.url under /ws/tables/);
   * with `batch=transaction` in the URL, those of a batched subscription.
   */
  urlSubscription?: SubscriptionHandlers<EventFrame> | BatchedSubscriptionHandlers;
  /** A connection was made (again). */
  onOpen?(): void;
  /**
   * A connection was lost or could not be made: why, and the ms before the
   * next attempt, or null when the client stops (then onClose follows).
   */
  onDisconnect?(err: TablecastError, retryIn: number | null): void;
  /** The client stopped for good: null after close(), else why (4001 with no fresh credential, 4003, 4400, …). */
  onClose?(err: TablecastError | null): void;
  /**
   * Errors about no subscription and no request of the application:
   * rate_limited, refresh_failed, token_unavailable during a refresh.
   */
  onError?(err: TablecastError): void;
  /** A credential was refreshed in band; exp is the new one's (unix seconds, null for none). */
  onRefreshed?(exp: number | null): void;
}

/** What the client needs of a WebSocket: the browser's, Node's, or the ws package's. */
export interface WebSocketLike {
  readonly readyState: number;
  onopen: ((ev: any) => any) | null;
  onmessage: ((ev: { data: any }) => any) | null;
  onerror: ((ev: any) => any) | null;
  onclose: ((ev: { code: number; reason: string }) => any) | null;
  send(data: string): void;
  close(code?: number, reason?: string): void;
}

/**
 * A connection to a tablecast gateway that reconnects, resumes every
 * subscription without a gap or a duplicate, and refreshes its credential.
 * It connects when made.
 */
export declare class TablecastClient {
  constructor(options: ClientOptions);
  /** "connecting", "open", "reconnecting" or "closed". */
  readonly state: "connecting" | "open" | "reconnecting" | "closed";
  /** Resolves when the client stops for good: null after close(), else the error that stopped it. */
  readonly closed: Promise<TablecastError | null>;
  /** The subscription of a URL-subscription client, else null. */
  readonly urlSubscription: Subscription<EventFrame | TransactionFrame> | null;

  /** Subscribes to a table's changes, one transaction frame per transaction. */
  subscribe<R extends object = Row>(spec: BatchedTableSpec, handlers?: BatchedSubscriptionHandlers<R>): Subscription<TransactionFrame<R> | EventFrame<R>>;
  /** Subscribes to a table's changes. */
  subscribe<R extends object = Row>(spec: TableSpec, handlers?: SubscriptionHandlers<EventFrame<R>>): Subscription<EventFrame<R>>;
  /** Subscribes to a custom topic. */
  subscribe<T = unknown>(spec: TopicSpec, handlers?: SubscriptionHandlers<MessageFrame<T>>): Subscription<MessageFrame<T>>;

  /**
   * A live view: the rows of a table that match now (filtered by where and
   * the row policy, projected by select), then every change to that set,
   * kept exact across reconnects (the view is read again and what differs
   * is reported as changes).
   */
  view<R extends object = Row>(spec: ViewSpec, handlers?: ViewHandlers<R>): View<R>;

  /** The tables and topics the client may subscribe to (waits for a connection). */
  topics(): Promise<TopicsList>;
  /** Creates a custom topic; resolves with the new list. */
  createTopic(topic: string): Promise<TopicsList>;
  /** Destroys a custom topic and its messages; resolves with the new list. */
  destroyTopic(topic: string): Promise<TopicsList>;
  /** Publishes on a custom topic; resolves once the gateway has stored it, rejects with its error. */
  publish(topic: string, data: unknown): Promise<void>;
  /** Resolves once the gateway has handled every message sent before it. */
  ping(): Promise<void>;
  /** Closes the connection and ends every subscription; no reconnect. */
  close(): void;
}

/**
 * The wait before reconnect attempt `attempt` (0 first): uniform in
 * [0, min(maxDelay, initialDelay·2^attempt)), in ms.
 */
export declare function backoffDelay(attempt: number, initialDelay?: number, maxDelay?: number, random?: () => number): number;

/** A JWT's exp (unix seconds), read without verifying it; null when it has none. */
export declare function tokenExpiry(token: string | null | undefined): number | null;

/**
 * A table name for subscribe from its parts, quoting those that hold a dot
 * or a quote: tableName("my.db", "public", "orders") is `"my.db".public.orders`.
 */
export declare function tableName(schema: string, table: string): string;
export declare function tableName(database: string, schema: string, table: string): string;
