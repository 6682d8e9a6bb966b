// Unit tests of the client's logic: backoff and jitter, JWT exp, table
// names, and the connection's state machine against a scripted WebSocket
// (the gateway itself is in gateway.test.mjs and refresh.test.mjs).

import { test, beforeEach, afterEach } from "node:test";
import assert from "node:assert/strict";
import { TablecastClient, TablecastError, backoffDelay, tokenExpiry, tableName } from "../tablecast.js";
import { readFile } from "node:fs/promises";
import { FakeSocket, waitFor, sleep, hs256 } from "./helpers.mjs";

const clients = [];
beforeEach(() => {
  FakeSocket.all = [];
});
afterEach(() => {
  for (const tc of clients.splice(0)) tc.close();
});

// A client on the scripted socket, reconnecting at once, without liveness pings.
function fakeClient(options = {}) {
  const seen = { disconnects: [], errors: [], closed: undefined, refreshed: [] };
  const tc = new TablecastClient({
    url: "ws://gateway.test/ws",
    WebSocket: FakeSocket,
    initialDelay: 1,
    maxDelay: 2,
    pingInterval: 0,
    onDisconnect: (err, retryIn) => seen.disconnects.push({ err, retryIn }),
    onError: (err) => seen.errors.push(err),
    onClose: (err) => { seen.closed = err; },
    onRefreshed: (exp) => seen.refreshed.push(exp),
    ...options,
  });
  clients.push(tc);
  return { tc, seen };
}

// connected waits for socket number n and opens it.
async function connected(n) {
  const ws = await waitFor(() => FakeSocket.all[n - 1], 2000, "connection " + n);
  ws.open();
  return ws;
}

// ---- pure functions ----

test("backoffDelay: uniform in [0, min(max, initial·2^attempt)), doubling to the cap", { timeout: 20_000 }, () => {
  for (let attempt = 0; attempt < 12; attempt++) {
    const cap = Math.min(30_000, 500 * 2 ** attempt);
    assert.equal(backoffDelay(attempt, 500, 30_000, () => 0), 0, "full jitter starts at 0");
    assert.equal(backoffDelay(attempt, 500, 30_000, () => 0.999999), Math.floor(0.999999 * cap));
    let min = Infinity, max = -Infinity;
    for (let i = 0; i < 2000; i++) {
      const d = backoffDelay(attempt, 500, 30_000);
      assert.ok(Number.isInteger(d) && d >= 0 && d < cap, `attempt ${attempt}: ${d} outside [0, ${cap})`);
      min = Math.min(min, d);
      max = Math.max(max, d);
    }
    // Full jitter spreads over the whole range, not around the cap.
    assert.ok(min < cap * 0.05 && max > cap * 0.95, `attempt ${attempt}: ${min}…${max} does not spread over [0, ${cap})`);
  }
  assert.ok(backoffDelay(1000, 500, 30_000, () => 0.5) === 15_000, "a huge attempt stays at the cap");
  assert.ok(backoffDelay(-3, 500, 30_000, () => 0.5) === 250, "a negative attempt counts as the first");
});

test("tokenExpiry reads exp without verifying, and null for anything else", { timeout: 20_000 }, () => {
  assert.equal(tokenExpiry(hs256("k", { sub: "a", exp: 1798000000 })), 1798000000);
  assert.equal(tokenExpiry(hs256("k", { sub: "a", exp: 1798000000.5 })), 1798000000.5);
  assert.equal(tokenExpiry(hs256("k", { sub: "a" })), null, "no exp");
  assert.equal(tokenExpiry(hs256("k", { exp: "1798000000" })), null, "exp not a number");
  assert.equal(tokenExpiry(hs256("k", ["exp"])), null, "claims not an object");
  assert.equal(tokenExpiry(hs256("k", null)), null, "claims null");
  // base64url with - and _ and no padding, and UTF-8 in the claims.
  const claims = { sub: "ünïcødé ✓ ??>>", exp: 42, pad: "~~~" };
  const t = hs256("k", claims);
  assert.match(t.split(".")[1], /[-_]/, "the payload uses base64url's own characters");
  assert.equal(tokenExpiry(t), 42);
  for (const bad of ["tck_0123456789", "a.b", "a.b.c.d", "x.!!!.y", "x." + Buffer.from("{not json").toString("base64url") + ".y", "", null, undefined, 7]) {
    assert.equal(tokenExpiry(bad), null, JSON.stringify(bad));
  }
});

test("tableName quotes the parts that hold a dot or a quote", { timeout: 20_000 }, () => {
  assert.equal(tableName("public", "orders"), "public.orders");
  assert.equal(tableName("shop", "public", "orders"), "shop.public.orders");
  assert.equal(tableName("my.db", "public", "orders.v2"), '"my.db".public."orders.v2"');
  assert.equal(tableName("public", 'say "hi"'), 'public."say ""hi"""');
  assert.throws(() => tableName("orders"), TypeError);
  assert.throws(() => tableName("public", ""), TypeError);
});

// ---- the connection ----

test("the duplicate filter: nothing at or below the last seq delivered, across a reconnect", { timeout: 20_000 }, async () => {
  const { tc } = fakeClient();
  const got = [];
  const sub = tc.subscribe({ table: "public.t" }, { onEvent: (f) => got.push(f.seq) });
  let ws = await connected(1);
  assert.deepEqual(ws.of("subscribe"), [{ type: "subscribe", id: sub.id, table: "public.t" }]);
  ws.frame({ type: "subscribed", id: sub.id, seq: 10 });
  for (const seq of [9, 10, 11, 12, 12, 11, 13]) ws.frame({ type: "event", id: sub.id, seq, event: {} });
  assert.deepEqual(got, [11, 12, 13]);
  assert.equal(sub.lastSeq, 13);

  ws.serverClose(1001, "server shutting down");
  ws = await connected(2);
  assert.deepEqual(ws.of("subscribe"), [{ type: "subscribe", id: sub.id, table: "public.t", from: 13 }], "resumes from the last seq delivered");
  ws.frame({ type: "subscribed", id: sub.id, seq: 20 });
  for (const seq of [12, 13, 14, 15, 15]) ws.frame({ type: "event", id: sub.id, seq, event: {} });
  assert.deepEqual(got, [11, 12, 13, 14, 15]);
  tc.close();
});

test("events before subscribed, of other ids, or after unsubscribe are not delivered", { timeout: 20_000 }, async () => {
  const { tc } = fakeClient();
  const got = [];
  const sub = tc.subscribe({ topic: "chat" }, { onEvent: (f) => got.push(f.seq) });
  const ws = await connected(1);
  ws.frame({ type: "message", id: sub.id, topic: "chat", seq: 3, data: 1 }); // not subscribed yet
  ws.frame({ type: "subscribed", id: sub.id, seq: 3 });
  ws.frame({ type: "message", id: "s99", topic: "chat", seq: 4, data: 1 });
  ws.frame({ type: "message", id: sub.id, topic: "chat", seq: 5, data: 1 });
  const done = sub.unsubscribe();
  ws.frame({ type: "message", id: sub.id, topic: "chat", seq: 6, data: 1 }); // sent before the gateway read the unsubscribe
  assert.deepEqual(ws.of("unsubscribe"), [{ type: "unsubscribe", id: sub.id }]);
  ws.frame({ type: "unsubscribed", id: sub.id });
  await done;
  assert.deepEqual(got, [5]);
  assert.equal(sub.state, "ended");
  assert.equal(await sub.closed, null);
  tc.close();
});

test("history_unavailable after subscribed: told, then subscribed again without from once unsubscribed", { timeout: 20_000 }, async () => {
  const { tc } = fakeClient();
  const got = [], lost = [];
  const sub = tc.subscribe({ table: "public.t", where: { a: { eq: 1 } } }, { onEvent: (f) => got.push(f.seq), onHistoryUnavailable: (e) => lost.push(e) });
  const ws = await connected(1);
  ws.frame({ type: "subscribed", id: sub.id, seq: 100 });
  ws.frame({ type: "event", id: sub.id, seq: 101, event: {} });
  ws.frame({ type: "error", id: sub.id, code: "history_unavailable", message: "events after 101 were discarded" });
  assert.equal(lost.length, 1);
  assert.ok(lost[0] instanceof TablecastError);
  assert.equal(lost[0].code, "history_unavailable");
  assert.equal(lost[0].subscriptionId, sub.id);
  assert.equal(ws.of("subscribe").length, 1, "the id is still in use until unsubscribed");
  ws.frame({ type: "unsubscribed", id: sub.id });
  assert.deepEqual(ws.of("subscribe")[1], { type: "subscribe", id: sub.id, table: "public.t", where: { a: { eq: 1 } } }, "again, without from");
  ws.frame({ type: "subscribed", id: sub.id, seq: 500 });
  ws.frame({ type: "event", id: sub.id, seq: 400, event: {} }); // at or before subscribed's: dropped
  ws.frame({ type: "event", id: sub.id, seq: 501, event: {} });
  assert.deepEqual(got, [101, 501]);
  assert.equal(sub.state, "active");
  tc.close();
});

test("history_unavailable answering a resume: subscribed again at once without from", { timeout: 20_000 }, async () => {
  const { tc } = fakeClient();
  const lost = [];
  const sub = tc.subscribe({ topic: "chat", from: 7 }, { onError: (e) => lost.push(e) });
  const ws = await connected(1);
  assert.equal(ws.of("subscribe")[0].from, 7, "from given by the application");
  ws.frame({ type: "error", id: sub.id, code: "history_unavailable", message: "events after 7 are no longer in the stream" });
  assert.equal(lost.length, 1, "without onHistoryUnavailable, onError is told");
  assert.deepEqual(ws.of("subscribe")[1], { type: "subscribe", id: sub.id, topic: "chat" });
  assert.equal(sub.lastSeq, null);
  tc.close();
});

test("close codes: which stop the client and which reconnect", { timeout: 20_000 }, async () => {
  const cases = [
    [4003, "origin not allowed", false],
    [4400, "unknown table", false],
    [1002, "protocol error", false],
    [1003, "binary frames are not supported", false],
    [1007, "invalid UTF-8", false],
    [1009, "message too big", false],
    [4001, "no token", false], // without getToken
    [1001, "server shutting down", true],
    [4008, "slow consumer", true],
    [4029, "too many connections", true],
    [1006, "", true],
    [1011, "internal error", true],
    [1000, "normal closure", true], // not asked for
  ];
  for (const [code, reason, reconnects] of cases) {
    FakeSocket.all = [];
    const { tc, seen } = fakeClient();
    const ws = await connected(1);
    ws.serverClose(code, reason);
    const last = seen.disconnects.at(-1);
    assert.ok(last, `${code}: onDisconnect`);
    assert.equal(last.err.code, code === 1006 ? "network" : code, `${code}: the error's code`);
    if (code !== 1006) assert.equal(last.err.reason, reason);
    if (reconnects) {
      assert.equal(typeof last.retryIn, "number", `${code}: reconnects`);
      await waitFor(() => FakeSocket.all.length === 2, 2000, `${code}: a second connection`);
      assert.equal(tc.state, "reconnecting");
      tc.close();
    } else {
      assert.equal(last.retryIn, null, `${code}: stops`);
      assert.equal(tc.state, "closed");
      assert.equal(await tc.closed, last.err);
      assert.equal(seen.closed, last.err);
      await sleep(20);
      assert.equal(FakeSocket.all.length, 1, `${code}: no second connection`);
    }
  }
});

test("a connection that cannot be made (Node fires only error) is retried with backoff", { timeout: 20_000 }, async () => {
  const { tc, seen } = fakeClient();
  (await waitFor(() => FakeSocket.all[0], 1000, "socket")).failConnect();
  await waitFor(() => FakeSocket.all.length === 2, 2000, "a second attempt");
  assert.equal(seen.disconnects[0].err.code, "network");
  FakeSocket.all[1].failConnect();
  await connected(3);
  assert.equal(tc.state, "open");
  tc.close();
  assert.equal(await tc.closed, null);
});

test("4001: one more try with a fresh token, then stop when that one is refused too", { timeout: 20_000 }, async () => {
  let n = 0;
  const { tc, seen } = fakeClient({ getToken: async () => "tok" + ++n });
  let ws = await connected(1);
  assert.deepEqual(ws.protocols, ["tablecast.v1", "token.tok1"]);
  ws.frame({ type: "pong" }); // a working connection…
  ws.serverClose(4001, "token expired"); // …until its token expired
  ws = await connected(2);
  assert.deepEqual(ws.protocols, ["tablecast.v1", "token.tok2"], "a fresh token");
  ws.serverClose(4001, "bad signature"); // the fresh one refused too: would be refused again
  assert.equal((await tc.closed).code, 4001);
  assert.equal(seen.disconnects.at(-1).retryIn, null);
  assert.equal(seen.disconnects.at(-1).err.reason, "bad signature");
  await sleep(20);
  assert.equal(FakeSocket.all.length, 2);
});

test("4001 with a fixed token: no second try with the token refused", { timeout: 20_000 }, async () => {
  const { tc, seen } = fakeClient({ getToken: undefined, token: "fixed" });
  const ws = await connected(1);
  assert.deepEqual(ws.protocols, ["tablecast.v1", "token.fixed"]);
  ws.frame({ type: "pong" }); // a working connection…
  ws.serverClose(4001, "token expired"); // …until its token expired
  assert.equal((await tc.closed).code, 4001);
  assert.equal(seen.disconnects.at(-1).retryIn, null);
  await sleep(20);
  assert.equal(FakeSocket.all.length, 1, "the same token is not tried again");
});

test("tokens travel as a subprotocol or as the query parameter", { timeout: 20_000 }, async () => {
  const { tc } = fakeClient({ token: "abc.def.ghi", tokenTransport: "query" });
  const ws = await waitFor(() => FakeSocket.all[0], 1000, "socket");
  assert.equal(new URL(ws.url).searchParams.get("token"), "abc.def.ghi");
  assert.deepEqual(ws.protocols, ["tablecast.v1"]);
  tc.close();
  const { tc: anon } = fakeClient();
  const ws2 = await waitFor(() => FakeSocket.all[1], 1000, "socket");
  assert.deepEqual(ws2.protocols, ["tablecast.v1"]);
  assert.equal(new URL(ws2.url).search, "");
  anon.close();
});

test("refresh in band shortly before exp; refresh_failed reconnects with a fresh token", { timeout: 20_000 }, async () => {
  let n = 0;
  const tokens = [];
  const getToken = () => {
    const t = hs256("k", { sub: "u", exp: Math.floor(Date.now() / 1000) + 3, n: ++n });
    tokens.push(t);
    return t;
  };
  const { tc, seen } = fakeClient({ getToken });
  let ws = await connected(1);
  // exp is at most 3 s away: refreshed at half its life, well before it.
  const refresh = await waitFor(() => ws.of("refresh")[0], 3000, "a refresh");
  assert.equal(refresh.token, tokens[1]);
  ws.frame({ type: "refreshed", exp: tokenExpiry(tokens[1]) });
  assert.deepEqual(seen.refreshed, [tokenExpiry(tokens[1])]);
  await waitFor(() => ws.of("refresh")[1], 3000, "a second refresh");
  ws.frame({ type: "error", code: "refresh_failed", message: "the credential is for another identity" });
  assert.equal(seen.errors.at(-1).code, "refresh_failed");
  assert.equal(seen.disconnects.at(-1).err.code, "refresh_failed");
  ws = await connected(2);
  assert.deepEqual(ws.protocols, ["tablecast.v1", "token." + tokens.at(-1)], "the new connection has a fresh token");
  tc.close();
});

test("a token already expired by the client's clock is not refreshed in a loop", { timeout: 20_000 }, async () => {
  const old = hs256("k", { sub: "u", exp: Math.floor(Date.now() / 1000) - 100 });
  let calls = 0;
  const { tc } = fakeClient({ getToken: () => { calls++; return old; } });
  const ws = await connected(1);
  await sleep(1500);
  // The same token each time: nothing to send, asked again after 1 s, then 2 s, …
  assert.equal(ws.of("refresh").length, 0);
  assert.ok(calls <= 3, `getToken called ${calls} times in 1.5 s`);
  tc.close();
});

test("rate_limited: reported, slowed down, and every subscription resumed on a new connection", { timeout: 20_000 }, async () => {
  const { tc, seen } = fakeClient();
  const got = [];
  const subs = [1, 2, 3].map(() => tc.subscribe({ topic: "t" }, { onEvent: (f) => got.push(f.id + "@" + f.seq) }));
  let ws = await connected(1);
  ws.frame({ type: "subscribed", id: subs[0].id, seq: 5 });
  ws.frame({ type: "message", id: subs[0].id, topic: "t", seq: 6, data: null });
  ws.frame({ type: "error", code: "rate_limited", message: "more than 50 messages a second; this one was dropped" });
  assert.equal(seen.errors.at(-1).code, "rate_limited");
  ws = await connected(2);
  assert.deepEqual(ws.of("subscribe").map((m) => [m.id, m.from]), [[subs[0].id, 6], [subs[1].id, undefined], [subs[2].id, undefined]]);
  tc.close();
});

test("messages are paced below the gateway's rate", { timeout: 20_000 }, async () => {
  const { tc } = fakeClient({ messagesPerSecond: 5 });
  for (let i = 0; i < 14; i++) tc.subscribe({ topic: "t" + i });
  const ws = await connected(1);
  // A burst of twice the rate (the ping and 9 subscribes), then 5 a second.
  assert.equal(ws.sent.length, 10);
  await waitFor(() => ws.sent.length === 15, 2000, "the rest");
  tc.close();
});

test("an error frame without an id answers the request in flight", { timeout: 20_000 }, async () => {
  const { tc, seen } = fakeClient();
  const ws = await connected(1);
  const p1 = tc.publish("chat", { hi: 1 });
  const p2 = tc.publish("chat", { hi: 2 });
  const t = tc.topics();
  assert.deepEqual(ws.sent.slice(1), [{ type: "publish", topic: "chat", data: { hi: 1 } }, { type: "ping" }], "one request at a time");
  ws.frame({ type: "pong" }); // the first ping, sent on connecting
  ws.frame({ type: "error", id: "", code: "not_allowed", message: "publishing to topic \"chat\" is not granted" });
  await assert.rejects(p1, (e) => e instanceof TablecastError && e.code === "not_allowed" && e.subscriptionId === null);
  ws.frame({ type: "pong" });
  assert.equal(ws.sent.at(-2).type, "publish");
  ws.frame({ type: "pong" });
  await p2;
  assert.equal(ws.sent.at(-1).type, "topics");
  ws.frame({ type: "topics", tables: ["public.t"], topics: ["chat"] });
  assert.deepEqual(await t, { tables: ["public.t"], topics: ["chat"] });
  assert.equal(seen.errors.length, 0);
  tc.close();
});

test("a subscription refused or ended by the gateway ends with a typed error; the others go on", { timeout: 20_000 }, async () => {
  const { tc } = fakeClient();
  const errs = [];
  const bad = tc.subscribe({ table: "public.t", where: { nope: { eq: 1 } } }, { onError: (e) => errs.push(e) });
  const good = tc.subscribe({ table: "public.t" }, { onError: (e) => errs.push(e) });
  const ws = await connected(1);
  ws.frame({ type: "error", id: bad.id, code: "invalid_filter", message: 'column "nope" does not exist' });
  ws.frame({ type: "subscribed", id: good.id, seq: 1 });
  ws.frame({ type: "error", id: good.id, code: "filter_failed", message: "one event could not be judged" });
  assert.equal(good.state, "active", "filter_failed leaves the subscription");
  ws.frame({ type: "error", id: good.id, code: "not_allowed", message: "subscription ended: events create are no longer granted" });
  ws.frame({ type: "unsubscribed", id: good.id });
  assert.deepEqual(errs.map((e) => [e.subscriptionId, e.code]), [[bad.id, "invalid_filter"], [good.id, "filter_failed"], [good.id, "not_allowed"]]);
  assert.equal((await bad.closed).code, "invalid_filter");
  assert.equal((await good.closed).code, "not_allowed");
  ws.serverClose(1001, "");
  const ws2 = await connected(2);
  assert.equal(ws2.of("subscribe").length, 0, "ended subscriptions are not made again");
  tc.close();
});

test("a subscription is async-iterable; break unsubscribes", { timeout: 20_000 }, async () => {
  const { tc } = fakeClient();
  const sub = tc.subscribe({ table: "public.t" });
  const ws = await connected(1);
  ws.frame({ type: "subscribed", id: sub.id, seq: 1 });
  for (const seq of [2, 3, 4]) ws.frame({ type: "event", id: sub.id, seq, event: { op: "create" } });
  const seen = [];
  setTimeout(() => ws.frame({ type: "event", id: sub.id, seq: 5, event: { op: "delete" } }), 20);
  for await (const f of sub) {
    seen.push(f.seq);
    if (f.event.op === "delete") {
      setTimeout(() => ws.frame({ type: "unsubscribed", id: sub.id }), 10);
      break;
    }
  }
  assert.deepEqual(seen, [2, 3, 4, 5]);
  assert.deepEqual(ws.of("unsubscribe"), [{ type: "unsubscribe", id: sub.id }]);
  tc.close();
});

// tx is a transaction frame of subscription id: events at seqs, under seq.
function tx(id, seq, seqs, more) {
  const f = { type: "transaction", id, seq, xid: 731, lsn: "0/16B3748", commit_time: "2026-12-05T09:00:00.123456Z", events: seqs.map((s) => ({ seq: s, event: { op: "create", data: { n: s } } })) };
  if (more) f.more = true;
  return f;
}

test("a batched subscription: one onTransaction per frame, lastSeq at the frame's seq, resumed inside a cut transaction with the rest, once", { timeout: 20_000 }, async () => {
  const { tc } = fakeClient();
  const got = [], rows = [];
  const sub = tc.subscribe({ table: "public.t", batch: "transaction", where: { a: { eq: 1 } } }, {
    onTransaction: (t) => got.push(t),
    onEvent: (f) => rows.push(f.seq),
  });
  let ws = await connected(1);
  assert.deepEqual(ws.of("subscribe"), [{ type: "subscribe", id: sub.id, table: "public.t", batch: "transaction", where: { a: { eq: 1 } } }]);
  ws.frame({ type: "subscribed", id: sub.id, seq: 10 });
  ws.frame(tx(sub.id, 14, [11, 13]));
  ws.frame(tx(sub.id, 14, [11, 13])); // at the last seq: dropped
  assert.equal(got.length, 1);
  assert.deepEqual(got[0], {
    type: "transaction", id: sub.id, seq: 14, xid: 731, lsn: "0/16B3748", commit_time: "2026-12-05T09:00:00.123456Z", more: false,
    events: [{ seq: 11, event: { op: "create", data: { n: 11 } } }, { seq: 13, event: { op: "create", data: { n: 13 } } }],
  });
  assert.equal(sub.lastSeq, 14, "the marker's seq, beyond the events");
  // A snapshot's row (no transaction) is an event frame: onEvent, in order.
  ws.frame({ type: "event", id: sub.id, seq: 15, event: { op: "read" } });
  assert.deepEqual(rows, [15]);
  // A transaction cut in parts: each part's seq is its last event's.
  ws.frame(tx(sub.id, 18, [16, 17, 18], true));
  ws.frame(tx(sub.id, 21, [19, 20, 21], true));
  assert.equal(sub.lastSeq, 21);
  ws.serverClose(1006);

  ws = await connected(2);
  assert.deepEqual(ws.of("subscribe"), [{ type: "subscribe", id: sub.id, table: "public.t", batch: "transaction", where: { a: { eq: 1 } }, from: 21 }],
    "resumes from the last part's seq: the gateway sends the rest of the transaction");
  ws.frame({ type: "subscribed", id: sub.id, seq: 30 });
  ws.frame(tx(sub.id, 21, [19, 20, 21], true)); // resent: dropped
  ws.frame(tx(sub.id, 25, [20, 21, 22, 23])); // what is at or below 21 is not delivered again
  ws.frame(tx(sub.id, 24, [24])); // below the last seq
  ws.frame(tx(sub.id, 27, [26]));
  const parts = got.map((t) => [t.seq, t.more, t.events.map((e) => e.seq)]);
  assert.deepEqual(parts, [[14, false, [11, 13]], [18, true, [16, 17, 18]], [21, true, [19, 20, 21]], [25, false, [22, 23]], [27, false, [26]]]);
  const seqs = got.flatMap((t) => t.events.map((e) => e.seq));
  assert.deepEqual(seqs, [...new Set(seqs)].sort((a, b) => a - b), "every event once, in order");
  assert.equal(sub.lastSeq, 27);
  tc.close();
});

test("a batched subscription without handlers iterates transactions (and snapshot rows); a plain one ignores transaction frames", { timeout: 20_000 }, async () => {
  const { tc } = fakeClient();
  const sub = tc.subscribe({ table: "public.t", batch: "transaction" });
  const plain = [];
  const other = tc.subscribe({ table: "public.t" }, { onEvent: (f) => plain.push(f.seq) });
  const ws = await connected(1);
  ws.frame({ type: "subscribed", id: sub.id, seq: 1 });
  ws.frame({ type: "subscribed", id: other.id, seq: 1 });
  ws.frame(tx(sub.id, 4, [2, 3]));
  ws.frame({ type: "event", id: sub.id, seq: 5, event: { op: "read" } });
  ws.frame(tx(other.id, 4, [2, 3]));
  setTimeout(() => ws.frame(tx(sub.id, 9, [6, 7, 8])), 20);
  const seen = [];
  for await (const v of sub) {
    seen.push([v.type, v.seq]);
    if (v.seq === 9) {
      assert.deepEqual(v.events.map((e) => e.seq), [6, 7, 8]);
      setTimeout(() => ws.frame({ type: "unsubscribed", id: sub.id }), 10);
      break;
    }
  }
  assert.deepEqual(seen, [["transaction", 4], ["event", 5], ["transaction", 9]]);
  assert.deepEqual(ws.of("unsubscribe"), [{ type: "unsubscribe", id: sub.id }]);
  assert.deepEqual(plain, [], "a transaction frame of a plain subscription is not delivered");
  assert.equal(other.lastSeq, 1);
  const handled = tc.subscribe({ table: "public.t", batch: "transaction" }, { onTransaction: () => {} });
  assert.throws(() => handled[Symbol.asyncIterator](), /not iterable/);
  tc.close();
});

test("batch_unavailable ends that subscription with a typed error; the connection and the others go on", { timeout: 20_000 }, async () => {
  const { tc, seen } = fakeClient();
  const errs = [];
  const batched = tc.subscribe({ table: "public.t", batch: "transaction" }, { onTransaction: () => {}, onError: (e) => errs.push(e) });
  const plain = tc.subscribe({ table: "public.t" });
  const ws = await connected(1);
  ws.frame({ type: "error", id: batched.id, code: "batch_unavailable", message: "transaction batches need transaction markers, which this gateway was told the readers do not publish (TABLECAST_TX_MARKERS is off)" });
  ws.frame({ type: "subscribed", id: plain.id, seq: 3 });
  const err = await batched.closed;
  assert.ok(err instanceof TablecastError);
  assert.equal(err.code, "batch_unavailable");
  assert.equal(err.subscriptionId, batched.id);
  assert.deepEqual(errs, [err]);
  assert.equal(batched.state, "ended");
  assert.equal(plain.state, "active");
  assert.deepEqual(seen.errors, [], "the subscription's error, not the client's");
  ws.serverClose(1001, "");
  const ws2 = await connected(2);
  assert.deepEqual(ws2.of("subscribe").map((m) => m.id), [plain.id], "the refused subscription is not made again");
  tc.close();
});

test("a URL subscription with batch=transaction gets transactions and resumes from the last frame's seq", { timeout: 20_000 }, async () => {
  const got = [];
  const { tc } = fakeClient({ url: "ws://gateway.test/ws/tables/public.t?batch=transaction", urlSubscription: { onTransaction: (t) => got.push(t.seq) } });
  let ws = await connected(1);
  ws.frame({ type: "subscribed", id: "url", seq: 10 });
  ws.frame(tx("url", 13, [11, 12], true));
  ws.serverClose(1001, "");
  ws = await connected(2);
  const u = new URL(ws.url);
  assert.equal(u.searchParams.get("from"), "13");
  assert.equal(u.searchParams.get("batch"), "transaction");
  ws.frame({ type: "subscribed", id: "url", seq: 20 });
  ws.frame(tx("url", 13, [11, 12], true));
  ws.frame(tx("url", 15, [14]));
  assert.deepEqual(got, [13, 15]);
  tc.close();
});

test("a URL subscription resumes with from in the URL, and a refused from is history_unavailable", { timeout: 20_000 }, async () => {
  const lost = [], got = [];
  const { tc } = fakeClient({
    url: "ws://gateway.test/ws/tables/public.t?a=eq.1",
    urlSubscription: { onEvent: (f) => got.push(f.seq), onHistoryUnavailable: (e) => lost.push(e) },
  });
  let ws = await connected(1);
  assert.equal(new URL(ws.url).searchParams.get("from"), null);
  ws.frame({ type: "subscribed", id: "url", seq: 10 });
  ws.frame({ type: "event", id: "url", seq: 11, event: {} });
  ws.serverClose(1001, "");
  ws = await connected(2);
  const u = new URL(ws.url);
  assert.equal(u.searchParams.get("from"), "11");
  assert.equal(u.searchParams.get("a"), "eq.1");
  ws.serverClose(4400, "events after 11 are no longer in the stream, which now starts at 90: reload and subscribe without from");
  assert.equal(lost.length, 1);
  assert.match(lost[0].message, /no longer in the stream/);
  ws = await connected(3);
  assert.equal(new URL(ws.url).searchParams.get("from"), null, "again without from");
  ws.frame({ type: "subscribed", id: "url", seq: 95 });
  ws.frame({ type: "event", id: "url", seq: 96, event: {} });
  assert.deepEqual(got, [11, 96]);
  // A URL refused again without from is final.
  ws.serverClose(1001, "");
  ws = await connected(4);
  ws.serverClose(4400, "table \"public.t\" is not streamed");
  assert.equal(lost.length, 2, "a refused resume looks like lost history…");
  ws = await connected(5);
  assert.equal(new URL(ws.url).searchParams.get("from"), null);
  ws.serverClose(4400, "table \"public.t\" is not streamed");
  assert.equal((await tc.closed).code, 4400, "…and the same refusal without from stops the client");
  await sleep(20);
  assert.equal(FakeSocket.all.length, 5);
});

test("a silent connection is given up after a ping goes unanswered", { timeout: 20_000 }, async () => {
  const { tc, seen } = fakeClient({ pingInterval: 50, pongTimeout: 50 });
  const ws = await connected(1);
  await waitFor(() => ws.of("ping").length >= 2, 1000, "a liveness ping after the first");
  await waitFor(() => FakeSocket.all.length === 2, 1000, "a new connection");
  assert.match(seen.disconnects[0].err.message, /did not answer a ping/);
  tc.close();
});

test("a view holds the rows, applies changes, enters and leaves, and after a reconnect reports what differs", { timeout: 20_000 }, async () => {
  const { tc } = fakeClient();
  const changes = [];
  const synced = [];
  const v = tc.view({ table: "public.t", where: { n: { gte: 10 } } }, { onChange: (c) => changes.push(c), onSynced: (s) => synced.push(s) });
  const ws = await connected(1);
  const sub = ws.of("subscribe")[0];
  assert.deepEqual(sub, { type: "subscribe", id: v.id, table: "public.t", where: { n: { gte: 10 } }, snapshot: true });
  ws.frame({ type: "subscribed", id: v.id, seq: 5 });
  ws.frame({ type: "rows", id: v.id, rows: [{ key: { id: 1 }, data: { id: 1, n: 10 } }, { key: { id: 2 }, data: { id: 2, n: 20 } }] });
  ws.frame({ type: "rows", id: v.id, rows: [{ key: { id: 3 }, data: { id: 3, n: 30 } }, { key: { id: 2 }, removed: true }] });
  assert.equal(v.ready, false, "not ready before synced");
  ws.frame({ type: "synced", id: v.id, seq: 9 });
  assert.deepEqual(synced, [9]);
  assert.deepEqual([...v.rows.keys()], ['{"id":1}', '{"id":3}']);
  assert.equal(changes.length, 0, "the first rows are not changes");
  ws.frame({ type: "event", id: v.id, seq: 10, view: "enter", event: { op: "update", key: { id: 4 }, data: { id: 4, n: 40 } } });
  ws.frame({ type: "event", id: v.id, seq: 11, view: "leave", event: { op: "update", key: { id: 1 } } });
  ws.frame({ type: "event", id: v.id, seq: 12, event: { op: "update", key: { id: 3 }, data: { id: 3, n: 31 } } });
  assert.deepEqual(changes.map((c) => [c.op, c.view, c.key.id]), [["upsert", "enter", 4], ["delete", "leave", 1], ["upsert", undefined, 3]]);
  assert.deepEqual(v.rows.get('{"id":3}'), { id: 3, n: 31 });
  assert.equal(v.seq, 12);

  // Reconnected: the rows are read again, and the difference is reported.
  changes.length = 0;
  ws.serverClose(1001, "restart");
  const ws2 = await connected(2);
  assert.equal(ws2.of("subscribe")[0].from, undefined, "a view starts again from its rows, never from");
  ws2.frame({ type: "subscribed", id: v.id, seq: 20 });
  ws2.frame({ type: "rows", id: v.id, rows: [{ key: { id: 3 }, data: { id: 3, n: 31 } }, { key: { id: 5 }, data: { id: 5, n: 50 } }] });
  ws2.frame({ type: "synced", id: v.id, seq: 21 });
  assert.deepEqual(changes.map((c) => [c.op, c.key.id]).sort(), [["delete", 4], ["upsert", 5]]);
  assert.deepEqual([...v.rows.keys()].sort(), ['{"id":3}', '{"id":5}']);
  assert.throws(() => tc.view({ table: "public.t", from: 3 }), /unknown field "from"/);
  tc.close();
});

test("a view reports only what changes its rows: an update to the values held, or a delete of a row not held, is no change, live, batched or after a reconnect", { timeout: 20_000 }, async () => {
  const { tc } = fakeClient();
  const changes = [];
  const v = tc.view({ table: "public.t", select: ["id", "n"] }, { onChange: (c) => changes.push(c) });
  const ws = await connected(1);
  ws.frame({ type: "subscribed", id: v.id, seq: 5 });
  ws.frame({ type: "rows", id: v.id, rows: [{ key: { id: 1 }, data: { id: 1, n: 10 } }, { key: { id: 2 }, data: { id: 2, n: 20 } }] });
  ws.frame({ type: "synced", id: v.id, seq: 9 });
  // An update of a column the view leaves out, one to the row's own
  // values (columns in another order), a delete and a leave of rows never
  // held, an enter of a row held as it is: none changes the rows.
  ws.frame({ type: "event", id: v.id, seq: 10, event: { op: "update", key: { id: 1 }, data: { id: 1, n: 10 } } });
  ws.frame({ type: "event", id: v.id, seq: 11, event: { op: "update", key: { id: 2 }, data: { n: 20, id: 2 } } });
  ws.frame({ type: "event", id: v.id, seq: 12, event: { op: "delete", key: { id: 7 } } });
  ws.frame({ type: "event", id: v.id, seq: 13, view: "leave", event: { op: "update", key: { id: 8 } } });
  ws.frame({ type: "event", id: v.id, seq: 14, view: "enter", event: { op: "update", key: { id: 2 }, data: { id: 2, n: 20 } } });
  assert.deepEqual(changes, [], "no change reported");
  assert.equal(v.seq, 14, "each was taken");
  ws.frame({ type: "event", id: v.id, seq: 15, event: { op: "update", key: { id: 2 }, data: { id: 2, n: 21 } } });
  ws.frame({ type: "event", id: v.id, seq: 16, event: { op: "delete", key: { id: 1 } } });
  assert.deepEqual(changes.map((c) => [c.op, c.key.id, c.data]), [["upsert", 2, { id: 2, n: 21 }], ["delete", 1, { id: 1, n: 10 }]]);

  // Reconnected, the rows read again older than what the view shows (the
  // row state behind): going back to them is reported, and the events
  // after them again, each as a change only where it changes the rows.
  changes.length = 0;
  ws.serverClose(1001, "restart");
  const ws2 = await connected(2);
  ws2.frame({ type: "subscribed", id: v.id, seq: 20 });
  ws2.frame({ type: "rows", id: v.id, rows: [{ key: { id: 1 }, data: { id: 1, n: 10 } }, { key: { id: 2 }, data: { id: 2, n: 21 } }] });
  ws2.frame({ type: "synced", id: v.id, seq: 15 });
  ws2.frame({ type: "event", id: v.id, seq: 16, event: { op: "delete", key: { id: 1 } } });
  ws2.frame({ type: "event", id: v.id, seq: 17, event: { op: "update", key: { id: 2 }, data: { id: 2, n: 21 } } });
  assert.deepEqual(changes.map((c) => [c.op, c.key.id]), [["upsert", 1], ["delete", 1]]);
  assert.deepEqual([...v.rows.entries()], [['{"id":2}', { id: 2, n: 21 }]]);
  tc.close();

  // Batched: a transaction that changes nothing held calls neither
  // onChange nor onTransaction; one that does reports only its changes.
  const b = fakeClient().tc;
  const bchanges = [];
  const txs = [];
  const bv = b.view({ table: "public.t", batch: "transaction" }, { onChange: (c) => bchanges.push(c), onTransaction: (t) => txs.push(t) });
  const ws3 = await connected(3);
  ws3.frame({ type: "subscribed", id: bv.id, seq: 5 });
  ws3.frame({ type: "rows", id: bv.id, rows: [{ key: { id: 1 }, data: { id: 1, n: 1 } }] });
  ws3.frame({ type: "synced", id: bv.id, seq: 9 });
  ws3.frame({ type: "transaction", id: bv.id, seq: 12, xid: 3, lsn: "0/1", commit_time: "2026-01-01T00:00:00Z", events: [
    { seq: 10, event: { op: "update", key: { id: 1 }, data: { id: 1, n: 1 } } },
    { seq: 11, event: { op: "delete", key: { id: 9 } } }] });
  assert.deepEqual([bchanges, txs], [[], []]);
  ws3.frame({ type: "transaction", id: bv.id, seq: 15, xid: 4, lsn: "0/2", commit_time: "2026-01-01T00:00:01Z", events: [
    { seq: 13, event: { op: "update", key: { id: 1 }, data: { id: 1, n: 1 } } },
    { seq: 14, event: { op: "create", key: { id: 2 }, data: { id: 2, n: 2 } } }] });
  assert.deepEqual(bchanges.map((c) => [c.op, c.key.id]), [["upsert", 2]]);
  assert.deepEqual(txs.map((t) => [t.seq, t.changes.length]), [[15, 1]]);
  b.close();
});

test("a view tells apart keys that differ beyond 2^53 (bigint ids): one row each, in rows, events and transactions", { timeout: 20_000 }, async () => {
  const { tc } = fakeClient();
  const changes = [];
  const v = tc.view({ table: "public.t" }, { onChange: (c) => changes.push(c) });
  const ws = await connected(1);
  ws.frame({ type: "subscribed", id: v.id, seq: 5 });
  // Snowflake ids two apart, which JSON.parse reads as one double; data
  // holding a column named key and digits in strings must not confuse the
  // keys with something else.
  ws.frame(`{"type":"rows","id":"${v.id}","rows":[` +
    `{"key":{"id":1234567890123456789},"data":{"id":1234567890123456789,"key":{"id":7},"s":":1234567890123456780"}},` +
    `{"key":{"id":1234567890123456791},"data":{"id":1234567890123456791,"n":2}},` +
    `{"key":{"id":1234567890123456793},"data":{"id":1234567890123456793,"n":3}}]}`);
  ws.frame(`{"type":"rows","id":"${v.id}","rows":[{"key":{"id":1234567890123456793},"removed":true}]}`);
  ws.frame({ type: "synced", id: v.id, seq: 9 });
  assert.deepEqual([...v.rows.keys()], ['{"id":1234567890123456789}', '{"id":1234567890123456791}']);
  ws.frame(`{"type":"event","id":"${v.id}","seq":10,"event":{"op":"delete","key":{"id":1234567890123456791}}}`);
  ws.frame(`{"type":"event","id":"${v.id}","seq":11,"event":{"op":"create","key":{"id":1234567890123456795},"data":{"id":1234567890123456795}}}`);
  assert.deepEqual([...v.rows.keys()], ['{"id":1234567890123456789}', '{"id":1234567890123456795}']);
  assert.deepEqual(changes.map((c) => c.op), ["delete", "upsert"]);
  // Other keys of such a frame are written as JSON.stringify writes them.
  const key = String.raw`{"a":1.0,"b":-0,"c":"\u00e9\"\\","d":1e2,"e":[true,null],"__proto__":{"x":"y"}}`;
  ws.frame(`{"type":"event","id":"${v.id}","seq":12,"event":{"op":"create","key":${key},"data":{"n":12345678901234567890}}}`);
  assert.ok(v.rows.has(JSON.stringify(JSON.parse(key))), [...v.rows.keys()].join(" "));
  tc.close();

  const b = fakeClient().tc;
  const bv = b.view({ table: "public.t", batch: "transaction" });
  const ws2 = await connected(2);
  ws2.frame({ type: "subscribed", id: bv.id, seq: 5 });
  ws2.frame(`{"type":"rows","id":"${bv.id}","rows":[{"key":{"id":1234567890123456789},"data":{"id":1}},{"key":{"id":1234567890123456791},"data":{"id":2}}]}`);
  ws2.frame({ type: "synced", id: bv.id, seq: 9 });
  ws2.frame(`{"type":"transaction","id":"${bv.id}","seq":12,"xid":3,"lsn":"0/1","commit_time":"2026-01-01T00:00:00Z","events":[` +
    `{"seq":10,"view":"leave","event":{"op":"update","key":{"id":1234567890123456789}}},` +
    `{"seq":11,"event":{"op":"update","key":{"id":1234567890123456791},"data":{"id":3}}}]}`);
  assert.deepEqual([...bv.rows.entries()], [['{"id":1234567890123456791}', { id: 3 }]]);
  b.close();
});

test("a view keeps the unchanged TOASTed values of a row it holds: in events, transactions and rows brought up to date", { timeout: 20_000 }, async () => {
  const { tc } = fakeClient();
  const changes = [];
  const v = tc.view({ table: "public.t" }, { onChange: (c) => changes.push(c) });
  const ws = await connected(1);
  ws.frame({ type: "subscribed", id: v.id, seq: 5 });
  ws.frame({ type: "rows", id: v.id, rows: [{ key: { id: 1 }, data: { id: 1, n: 1, notes: "long", ["__proto__"]: "p" } }, { key: { id: 2 }, data: { id: 2, notes: "two" } }] });
  // An update folded into the rows before synced.
  ws.frame({ type: "rows", id: v.id, rows: [{ key: { id: 2 }, data: { id: 2, n: 5 }, unchanged: ["notes"] }] });
  ws.frame({ type: "synced", id: v.id, seq: 9 });
  assert.deepEqual(v.rows.get('{"id":2}'), { id: 2, n: 5, notes: "two" });
  ws.frame('{"type":"event","id":"' + v.id + '","seq":10,"event":{"op":"update","key":{"id":1},"data":{"id":1,"n":2},"unchanged":["notes","__proto__"]}}');
  const row = v.rows.get('{"id":1}');
  assert.deepEqual(Object.entries(row), [["id", 1], ["n", 2], ["notes", "long"], ["__proto__", "p"]]);
  assert.equal(Object.getPrototypeOf(row), Object.prototype, "a column named __proto__ stays a column");
  assert.deepEqual(changes[0].data, row, "the change carries the whole row");
  tc.close();

  const b = fakeClient().tc;
  const bv = b.view({ table: "public.t", batch: "transaction" });
  const ws2 = await connected(2);
  ws2.frame({ type: "subscribed", id: bv.id, seq: 5 });
  ws2.frame({ type: "rows", id: bv.id, rows: [{ key: { id: 1 }, data: { id: 1, n: 1, notes: "long" } }] });
  ws2.frame({ type: "synced", id: bv.id, seq: 9 });
  ws2.frame({ type: "transaction", id: bv.id, seq: 12, xid: 3, lsn: "0/1", commit_time: "2026-01-01T00:00:00Z", events: [
    { seq: 10, event: { op: "update", key: { id: 1 }, data: { id: 1, n: 2 }, unchanged: ["notes"] } },
    { seq: 11, event: { op: "update", key: { id: 1 }, data: { id: 1, n: 3 }, unchanged: ["notes"] } }] });
  assert.deepEqual(bv.rows.get('{"id":1}'), { id: 1, n: 3, notes: "long" });
  b.close();
});

test("a view's frames that name no row (a rows entry or an event that is not an object) are skipped, neither thrown nor held", { timeout: 20_000 }, async () => {
  const { tc } = fakeClient();
  const changes = [];
  const v = tc.view({ table: "public.t" }, { onChange: (c) => changes.push(c) });
  const ws = await connected(1);
  ws.frame({ type: "subscribed", id: v.id, seq: 1 });
  ws.frame({ type: "rows", id: v.id, rows: [null, 7, { data: { id: 9 } }, { key: { id: 1 }, data: { id: 1 } }] });
  ws.frame({ type: "synced", id: v.id, seq: 2 });
  ws.frame({ type: "event", id: v.id, seq: 3, event: null });
  ws.frame({ type: "event", id: v.id, seq: 4, event: { op: "update", data: { id: 5 } } });
  ws.frame({ type: "event", id: v.id, seq: 5, event: { op: "update", key: { id: 1 }, data: { id: 1, n: 2 } } });
  assert.deepEqual([...v.rows.entries()], [['{"id":1}', { id: 1, n: 2 }]]);
  assert.deepEqual(changes.map((c) => c.seq), [5]);
  tc.close();
});

test("a batched view applies a transaction frame's changes together, then onTransaction; a reconnect reads the rows again", { timeout: 20_000 }, async () => {
  const { tc } = fakeClient();
  const changes = [], txs = [];
  let sizeAtChange = null;
  const v = tc.view({ table: "public.t", batch: "transaction" }, {
    onChange: (c) => { changes.push([c.op, c.view, c.key?.id]); sizeAtChange ??= v.rows.size; },
    onTransaction: (t) => txs.push(t),
  });
  const ws = await connected(1);
  assert.deepEqual(ws.of("subscribe"), [{ type: "subscribe", id: v.id, table: "public.t", batch: "transaction", snapshot: true }]);
  ws.frame({ type: "subscribed", id: v.id, seq: 5 });
  ws.frame({ type: "rows", id: v.id, rows: [{ key: { id: 1 }, data: { id: 1 } }, { key: { id: 2 }, data: { id: 2 } }] });
  ws.frame({ type: "synced", id: v.id, seq: 9 });
  const f = tx(v.id, 14, []);
  f.events = [
    { seq: 10, view: "enter", event: { op: "update", key: { id: 4 }, data: { id: 4 } } },
    { seq: 11, view: "leave", event: { op: "update", key: { id: 1 } } },
    { seq: 12, event: { op: "create", key: { id: 5 }, data: { id: 5 } } },
    { seq: 13, event: { op: "delete", key: { id: 2 } } },
  ];
  ws.frame(f);
  assert.deepEqual(changes, [["upsert", "enter", 4], ["delete", "leave", 1], ["upsert", undefined, 5], ["delete", undefined, 2]]);
  assert.equal(sizeAtChange, 2, "the first change is told once the whole frame is applied");
  assert.equal(txs.length, 1);
  assert.deepEqual([txs[0].seq, txs[0].xid, txs[0].more, txs[0].changes.length], [14, 731, false, 4]);
  assert.deepEqual([...v.rows.keys()].sort(), ['{"id":4}', '{"id":5}']);
  assert.equal(v.seq, 14);
  ws.frame(f); // again: below nothing new, applied already
  assert.equal(txs.length, 1);
  const part = tx(v.id, 15, []);
  part.more = true;
  part.events = [{ seq: 15, event: { op: "create", key: { id: 6 }, data: { id: 6 } } }];
  ws.frame(part);
  assert.equal(txs.at(-1).more, true);
  assert.ok(v.rows.has('{"id":6}'));

  ws.serverClose(1001, "restart");
  const ws2 = await connected(2);
  assert.deepEqual(ws2.of("subscribe"), [{ type: "subscribe", id: v.id, table: "public.t", batch: "transaction", snapshot: true }], "a view starts again from its rows, batched, never from");
  tc.close();
});

test("a batched view whose rows end inside a transaction (synced with more) shows them once its rest is applied, never a part of it", { timeout: 20_000 }, async () => {
  const { tc } = fakeClient();
  const changes = [], txs = [], synced = [];
  const v = tc.view({ table: "public.t", batch: "transaction" }, {
    onChange: (c) => changes.push([c.op, c.view, c.key?.id, c.seq]),
    onTransaction: (t) => txs.push([t.seq, t.more, t.changes.length]),
    onSynced: (seq) => synced.push([seq, [...v.rows.keys()].sort()]),
  });
  const create = (seq, id) => ({ seq, event: { op: "create", key: { id }, data: { id } } });
  const frame = (seq, events, more) => ({ ...tx(v.id, seq, [], more), events });
  const ws = await connected(1);
  ws.frame({ type: "subscribed", id: v.id, seq: 5 });
  ws.frame({ type: "rows", id: v.id, rows: [{ key: { id: 1 }, data: { id: 1 } }, { key: { id: 2 }, data: { id: 2 } }] });
  ws.frame({ type: "synced", id: v.id, seq: 9, more: true });
  assert.equal(v.ready, false, "rows inside a transaction are not shown");
  assert.equal(v.rows.size, 0);
  // The rest of the transaction, in two parts (a repeat of the first dropped).
  const p1 = tx(v.id, 11, []);
  p1.more = true;
  p1.events = [create(10, 3), { seq: 11, view: "leave", event: { op: "update", key: { id: 1 } } }];
  ws.frame(p1);
  ws.frame(p1);
  assert.equal(v.ready, false);
  const p2 = tx(v.id, 13, []);
  p2.events = [create(12, 4)];
  ws.frame(p2);
  assert.deepEqual(synced, [[13, ['{"id":2}', '{"id":3}', '{"id":4}']]], "shown once, the whole transaction applied");
  assert.equal(v.seq, 13);
  assert.deepEqual(changes, [], "the first rows are not changes");
  assert.deepEqual(txs, [], "the rest of a transaction is part of the rows, not a transaction of its own");
  ws.frame(frame(16, [create(14, 14), create(15, 15)]));
  assert.deepEqual(txs, [[16, false, 2]]);
  assert.equal(v.rows.size, 5);

  // Read again after a reconnect, ending inside a transaction whose rest
  // the view takes none of: an empty last frame shows the rows.
  changes.length = 0;
  ws.serverClose(1006, "");
  const ws2 = await connected(2);
  ws2.frame({ type: "subscribed", id: v.id, seq: 30 });
  ws2.frame({ type: "rows", id: v.id, rows: [2, 3, 4, 14, 15, 20].map((id) => ({ key: { id }, data: { id } })) });
  ws2.frame({ type: "synced", id: v.id, seq: 31, more: true });
  ws2.frame(frame(14, [create(14, 14)])); // before synced's seq: dropped
  assert.equal(synced.length, 1, "not shown yet");
  assert.deepEqual(changes, []);
  ws2.frame(tx(v.id, 33, []));
  assert.deepEqual(synced.at(-1), [33, ['{"id":14}', '{"id":15}', '{"id":20}', '{"id":2}', '{"id":3}', '{"id":4}']]);
  assert.deepEqual(changes, [["upsert", undefined, 20, 33]], "what differs, once");
  assert.deepEqual(txs, [[16, false, 2]]);
  ws2.frame(frame(35, [create(34, 34)]));
  assert.deepEqual(txs.at(-1), [35, false, 1]);

  // Without more, synced shows the rows at once, as before.
  ws2.serverClose(1006, "");
  const ws3 = await connected(3);
  ws3.frame({ type: "subscribed", id: v.id, seq: 40 });
  ws3.frame({ type: "rows", id: v.id, rows: [{ key: { id: 2 }, data: { id: 2 } }] });
  ws3.frame({ type: "synced", id: v.id, seq: 41 });
  assert.deepEqual(synced.at(-1), [41, ['{"id":2}']]);
  tc.close();
});

test("internal after subscribed (a resume or a view's rows failed): told, then subscribed again after a backoff once unsubscribed", { timeout: 20_000 }, async () => {
  const { tc } = fakeClient();
  const got = [], errs = [];
  const sub = tc.subscribe({ table: "public.t" }, { onEvent: (f) => got.push(f.seq), onError: (e) => errs.push(e) });
  const synced = [];
  const v = tc.view({ table: "public.t" }, { onSynced: (seq) => synced.push(seq), onError: (e) => errs.push(e) });
  const ws = await connected(1);
  ws.frame({ type: "subscribed", id: sub.id, seq: 100 });
  ws.frame({ type: "event", id: sub.id, seq: 101, event: {} });
  ws.frame({ type: "subscribed", id: v.id, seq: 100 });
  for (const id of [sub.id, v.id]) {
    ws.frame({ type: "error", id, code: "internal", message: "resume failed: …; subscribe again with from" });
    ws.frame({ type: "unsubscribed", id });
  }
  assert.deepEqual(errs.map((e) => [e.subscriptionId, e.code]), [[sub.id, "internal"], [v.id, "internal"]]);
  assert.equal(sub.state, "pending", "not ended: waiting to subscribe again");
  await waitFor(() => ws.of("subscribe").length === 4, 3000, "both subscribed again");
  assert.deepEqual(ws.of("subscribe").slice(2).sort((a, b) => a.id.localeCompare(b.id)), [
    { type: "subscribe", id: sub.id, table: "public.t", from: 101 },
    { type: "subscribe", id: v.id, table: "public.t", snapshot: true },
  ]);
  ws.frame({ type: "subscribed", id: sub.id, seq: 101 });
  ws.frame({ type: "event", id: sub.id, seq: 102, event: {} });
  ws.frame({ type: "subscribed", id: v.id, seq: 102 });
  ws.frame({ type: "synced", id: v.id, seq: 102 });
  assert.deepEqual(got, [101, 102]);
  assert.deepEqual(synced, [102]);
  // Again: again subscribed, from where it got to.
  ws.frame({ type: "error", id: sub.id, code: "internal", message: "resume failed" });
  ws.frame({ type: "unsubscribed", id: sub.id });
  await waitFor(() => ws.of("subscribe").length === 5, 3000, "subscribed again");
  assert.deepEqual(ws.of("subscribe")[4], { type: "subscribe", id: sub.id, table: "public.t", from: 102 });
  assert.equal(errs.length, 3);
  tc.close();
});

test("bad arguments are refused at once", { timeout: 20_000 }, () => {
  assert.throws(() => new TablecastClient({ url: "ftp://x/ws", WebSocket: FakeSocket }), TypeError);
  assert.throws(() => new TablecastClient({ url: "ws://x/ws", WebSocket: FakeSocket, tokenTransport: "cookie" }), TypeError);
  const { tc } = fakeClient();
  assert.throws(() => tc.subscribe({ table: "public.t", filter: {} }), /unknown field "filter"/);
  assert.throws(() => tc.subscribe({ table: "public.t", topic: "x" }), /exactly one of table and topic/);
  assert.throws(() => tc.subscribe({ table: "public.t", where: { s: { in: ["x".repeat(70_000)] } } }), (e) => e.code === "message_too_large");
  assert.throws(() => tc.subscribe({ table: "public.t", batch: "statement" }), /batch must be "transaction"/);
  assert.throws(() => tc.subscribe({ table: "public.t", batch: true }), TypeError);
  assert.throws(() => tc.subscribe({ topic: "chat", batch: "transaction" }), /batch applies to table subscriptions, not to topics/);
  assert.throws(() => tc.subscribe({ table: "public.t" }, { onTransaction: () => {} }), /onTransaction needs batch "transaction"/);
  assert.throws(() => tc.subscribe({ table: "public.t", batch: "transaction" }, { onEvent: () => {} }), /give onTransaction/);
  assert.throws(() => tc.subscribe({ table: "public.t", batch: "transaction" }, { onTransaction: "yes" }), /onTransaction must be a function/);
  assert.throws(() => new TablecastClient({ url: "ws://x/ws/tables/public.t?batch=transaction", WebSocket: FakeSocket, urlSubscription: { onEvent: () => {} } }), /give onTransaction/);
  assert.throws(() => tc.view({ table: "public.t", batch: "statement" }), /batch must be "transaction"/);
  assert.throws(() => tc.view({ table: "public.t" }, { onTransaction: () => {} }), /onTransaction needs batch "transaction"/);
  assert.equal(FakeSocket.all.length, 1, "a refused subscribe sends nothing and a refused client does not connect");
  tc.close();
  assert.throws(() => tc.subscribe({ table: "public.t" }), (e) => e.code === "closed");
});

test("tablecast.d.ts declares exactly what tablecast.js exports", { timeout: 20_000 }, async () => {
  const mod = await import("../tablecast.js");
  const dts = await readFile(new URL("../tablecast.d.ts", import.meta.url), "utf8");
  const declared = [...dts.matchAll(/^export declare (?:const|class|function) (\w+)/gm)].map((m) => m[1]);
  assert.deepEqual([...new Set(declared)].sort(), Object.keys(mod).sort());
  for (const [name, value] of Object.entries(mod.CloseCode)) {
    assert.match(dts, new RegExp("^  " + name + ": " + value + ";$", "m"), "CloseCode." + name);
  }
});

test("a view emptied by the truncate that starts a table added again reports its cause", { timeout: 20_000 }, async () => {
  const { tc } = fakeClient();
  const changes = [];
  const v = tc.view({ table: "public.t" }, { onChange: (c) => changes.push(c) });
  const ws = await connected(1);
  ws.frame({ type: "subscribed", id: v.id, seq: 5 });
  ws.frame({ type: "rows", id: v.id, rows: [{ key: { id: 1 }, data: { id: 1 } }, { key: { id: 2 }, data: { id: 2 } }] });
  ws.frame({ type: "synced", id: v.id, seq: 9 });
  ws.frame({ type: "event", id: v.id, seq: 10, event: { op: "truncate", key: {}, cause: "table_added" } });
  assert.equal(v.rows.size, 0);
  ws.frame({ type: "event", id: v.id, seq: 11, event: { op: "read", key: { id: 3 }, data: { id: 3 } } });
  ws.frame({ type: "event", id: v.id, seq: 12, event: { op: "truncate", key: {} } });
  assert.deepEqual(changes.map((c) => [c.op, c.cause]), [["truncate", "table_added"], ["upsert", undefined], ["truncate", undefined]]);
  assert.equal(v.rows.size, 0);
});
