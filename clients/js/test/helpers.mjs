// Helpers of the client's tests: polling, HS256 tokens, the Go test's
// control endpoint, and a scripted WebSocket for the unit tests.

import { createHmac } from "node:crypto";

/** waitFor polls cond until it holds, failing after ms with what it waited for. */
export async function waitFor(cond, ms, what) {
  const deadline = Date.now() + ms;
  for (;;) {
    const v = await cond();
    if (v) return v;
    if (Date.now() > deadline) throw new Error("timed out after " + ms + " ms waiting for " + what);
    await new Promise((r) => setTimeout(r, 20));
  }
}

export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** hs256 signs claims with secret. */
export function hs256(secret, claims) {
  const enc = (o) => Buffer.from(JSON.stringify(o)).toString("base64url");
  const signing = enc({ alg: "HS256", typ: "JWT" }) + "." + enc(claims);
  return signing + "." + createHmac("sha256", secret).update(signing).digest("base64url");
}

/** Grants of every table and topic. */
export const ALL = { tables: { "*": ["*"] }, topics: { subscribe: ["*"], publish: ["*"], create: ["*"], destroy: ["*"] } };

/**
 * The environment the Go test (TestJSClient in cmd/tablecast) gives the
 * end-to-end tests, or null when they run without it.
 */
export function gatewayEnv() {
  const e = process.env;
  if (!e.TCTEST_CONTROL) return null;
  return {
    http: e.TCTEST_HTTP, // the main gateway's http://host:port
    ws: e.TCTEST_WS, // its ws://host:port/ws
    limitedWS: e.TCTEST_LIMITED_WS, // a gateway allowing 2 messages a second
    refreshWS: e.TCTEST_REFRESH_WS, // a gateway for the token tests
    batchWS: e.TCTEST_BATCH_WS, // a gateway told of transaction markers, 25 events a transaction frame
    secret: e.TCTEST_SECRET,
    control: e.TCTEST_CONTROL,
  };
}

/** control calls the Go test: SQL, writers, gateway processes, the stream. */
export async function control(env, path, body) {
  const resp = await fetch(env.control + path, { method: "POST", body: body ?? "" });
  const text = await resp.text();
  if (!resp.ok) throw new Error("control " + path + ": " + resp.status + " " + text);
  return text ? JSON.parse(text) : null;
}

export const SKIP_E2E = gatewayEnv() ? false : "needs the gateway: run by go test -run TestJSClient ./cmd/tablecast";

/** The options of an end-to-end test: skipped without the gateway, failed (not hung) past 2 minutes. */
export const E2E = { skip: SKIP_E2E, timeout: 120_000 };

/**
 * events records what a client tells the application, to assert on.
 */
export function recorder() {
  const r = { disconnects: [], errors: [], opens: 0, closedWith: undefined, refreshed: [] };
  r.options = {
    onOpen: () => r.opens++,
    onDisconnect: (err, retryIn) => r.disconnects.push({ err, retryIn }),
    onError: (err) => r.errors.push(err),
    onClose: (err) => { r.closedWith = err; },
    onRefreshed: (exp) => r.refreshed.push(exp),
  };
  return r;
}

/**
 * FakeSocket is a scripted WebSocket for the unit tests: the test opens it,
 * hands it frames and closes it as the gateway would, and reads what the
 * client sent.
 */
export class FakeSocket {
  static all = [];
  static get last() {
    return FakeSocket.all[FakeSocket.all.length - 1];
  }

  constructor(url, protocols) {
    this.url = url;
    this.protocols = protocols;
    this.readyState = 0;
    this.sent = [];
    this.closedByClient = null;
    this.onopen = this.onmessage = this.onerror = this.onclose = null;
    FakeSocket.all.push(this);
  }

  send(text) {
    if (this.readyState !== 1) throw new Error("send on a socket that is not open");
    this.sent.push(JSON.parse(text));
  }

  close(code, reason) {
    this.closedByClient = { code, reason };
    this.readyState = 3;
  }

  // What the gateway does:

  open() {
    this.readyState = 1;
    this.onopen?.({});
  }

  // frame hands the client f, as JSON, or as it is when a string (a frame
  // JSON.stringify cannot write, such as one with integers beyond 2^53).
  frame(f) {
    this.onmessage?.({ data: typeof f === "string" ? f : JSON.stringify(f) });
  }

  serverClose(code, reason = "") {
    this.readyState = 3;
    this.onclose?.({ code, reason, wasClean: code !== 1006 });
  }

  failConnect() {
    this.readyState = 3;
    this.onerror?.({});
  }

  /** The messages of a type the client sent. */
  of(type) {
    return this.sent.filter((m) => m.type === type);
  }
}
