// End-to-end tests of the client against real gateways, run by the Go test
// TestJSClient (cmd/tablecast), which gives them the gateways' addresses,
// the JWT secret and a control endpoint in TCTEST_* variables. The tests of
// this file run one after another: some stop the main gateway.

import { test } from "node:test";
import assert from "node:assert/strict";
import { readFile } from "node:fs/promises";
import { TablecastClient, TablecastError, VERSION } from "../tablecast.js";
import { gatewayEnv, control, hs256, ALL, waitFor, sleep, recorder, E2E } from "./helpers.mjs";

const env = gatewayEnv();
const now = () => Math.floor(Date.now() / 1000);
const token = (claims = {}) => hs256(env.secret, { sub: "js-test", exp: now() + 3600, tablecast: ALL, ...claims });
const upTo = (n) => Array.from({ length: n }, (_, i) => i + 1);

// client makes a client of the main gateway with a fresh token each time it
// asks, recording what it tells the application; closed after the test.
function client(t, options = {}) {
  const rec = recorder();
  const tc = new TablecastClient({ url: env.ws, getToken: () => token(), ...rec.options, ...options });
  t.after(() => tc.close());
  return { tc, rec };
}

const active = (sub) => waitFor(() => sub.state === "active", 30_000, "subscription " + sub.id + " to be active");

test("the gateway serves this very file at /tablecast.js, and it works from there", E2E, async (t) => {
  for (const [path, type] of [["/tablecast.js", "text/javascript; charset=utf-8"], ["/tablecast.d.ts", "application/typescript; charset=utf-8"]]) {
    const resp = await fetch(env.http + path);
    assert.equal(resp.status, 200);
    const served = Buffer.from(await resp.arrayBuffer());
    const local = await readFile(new URL(".." + path, import.meta.url));
    assert.ok(served.equals(local), path + " of the gateway differs from clients/js" + path);
    assert.equal(resp.headers.get("content-type"), type);
    assert.equal(resp.headers.get("cache-control"), "public, no-cache");
    assert.equal(resp.headers.get("access-control-allow-origin"), "*");
    const again = await fetch(env.http + path, { headers: { "if-none-match": resp.headers.get("etag") } });
    assert.equal(again.status, 304, "revalidated with its ETag");
  }
  // Imported from the gateway, as a page would: it connects (an http URL
  // is taken as ws) and answers.
  const served = Buffer.from(await (await fetch(env.http + "/tablecast.js")).arrayBuffer());
  const mod = await import("data:text/javascript;base64," + served.toString("base64"));
  assert.equal(mod.VERSION, VERSION);
  const tc = new mod.TablecastClient({ url: env.http + "/ws", getToken: () => token() });
  t.after(() => tc.close());
  const list = await tc.topics();
  assert.ok(list.tables.includes("public.orders"), JSON.stringify(list));
});

test("events arrive, filtered and projected; topics are created, published and received", E2E, async (t) => {
  const { tc, rec } = client(t);
  const got = [];
  const sub = tc.subscribe(
    { table: "public.orders", where: { status: { eq: "paid" }, total: { gte: "10" } }, select: ["id", "status"], events: ["create", "update"] },
    { onEvent: (f) => got.push(f) },
  );
  await active(sub);
  await control(env, "/sql", `INSERT INTO orders VALUES (1, 'open', 5), (2, 'paid', 20), (3, 'paid', 5);
    UPDATE orders SET status = 'paid', total = 50 WHERE id = 1;
    DELETE FROM orders WHERE id = 2;
    INSERT INTO orders VALUES (4, 'paid', 100)`);
  await waitFor(() => got.some((f) => f.event.data?.id === 4), 30_000, "row 4");
  await tc.ping(); // anything else sent before row 4 has arrived by now
  assert.deepEqual(got.map((f) => [f.event.op, f.event.data]), [
    ["create", { id: 2, status: "paid" }],
    ["update", { id: 1, status: "paid" }],
    ["create", { id: 4, status: "paid" }],
  ]);
  for (const [i, f] of got.entries()) {
    assert.equal(f.id, sub.id);
    assert.equal(f.event.table, "orders");
    if (i > 0) assert.ok(f.seq > got[i - 1].seq, "seqs increase");
  }
  assert.equal(sub.lastSeq, got.at(-1).seq);

  // The same table as an async iterator, resumed from a seq the application kept.
  const again = tc.subscribe({ table: "public.orders", from: got[0].seq, select: ["id"] });
  const ids = [];
  for await (const f of again) {
    ids.push(f.event.key.id);
    if (f.event.key.id === 4) break;
  }
  assert.deepEqual(ids, [3, 1, 2, 4], "after row 2's create: row 3's create, row 1's update, row 2's delete, row 4's create");
  assert.equal(again.state, "ended");

  const topic = "chat-" + process.pid;
  assert.ok((await tc.createTopic(topic)).topics.includes(topic));
  await assert.rejects(tc.createTopic(topic), (e) => e instanceof TablecastError && e.code === "topic_exists" && e.subscriptionId === null);
  const messages = [];
  const chat = tc.subscribe({ topic }, { onEvent: (f) => messages.push(f.data) });
  await active(chat);
  await tc.publish(topic, { hello: "world" });
  await waitFor(() => messages.length === 1, 30_000, "the message");
  assert.deepEqual(messages, [{ hello: "world" }]);
  await assert.rejects(tc.publish("no-such-topic", 1), (e) => e.code === "unknown_topic");
  assert.ok(!(await tc.topics()).topics.includes("no-such-topic"));
  assert.deepEqual(rec.errors, []);
  assert.deepEqual(rec.disconnects, []);
});

test("reconnects across gateway restarts, killed and stopped, while rows are written: no gap, no duplicate", E2E, async (t) => {
  const { tc, rec } = client(t);
  const ns = [], seqs = [];
  const sub = tc.subscribe({ table: "public.ticks" }, { onEvent: (f) => { ns.push(f.event.data.n); seqs.push(f.seq); } });
  await active(sub);
  await control(env, "/writer/start?table=ticks&every=20ms");
  let stopped = false;
  t.after(() => stopped || control(env, "/writer/stop?table=ticks"));
  for (const signal of ["KILL", "TERM"]) {
    const before = ns.length;
    await waitFor(() => ns.length >= before + 20, 30_000, "rows before stopping the gateway with " + signal);
    const opens = rec.opens;
    await control(env, "/gateway/stop?name=main&signal=" + signal);
    const atStop = ns.length;
    await sleep(500); // rows are written while the gateway is away
    await control(env, "/gateway/start?name=main");
    await waitFor(() => rec.opens > opens && ns.length >= atStop + 50, 60_000, "rows after the gateway came back (" + signal + ")");
  }
  const { last } = await control(env, "/writer/stop?table=ticks");
  stopped = true;
  await waitFor(() => ns.at(-1) === last, 30_000, "row " + last);
  assert.deepEqual(ns, upTo(last), "every row once, in order");
  assert.ok(seqs.every((s, i) => i === 0 || s > seqs[i - 1]), "seqs increase");
  const codes = rec.disconnects.map((d) => d.err.code);
  assert.ok(codes.includes("network"), "a killed gateway is a network error: " + codes);
  assert.ok(codes.includes(1001), "a stopped gateway closes with 1001: " + codes);
  assert.ok(rec.disconnects.every((d) => typeof d.retryIn === "number"), "and both are retried");
  assert.equal(tc.state, "open");
});

test("the 4001 at a token's expiry is followed by a reconnect with a fresh token: no gap, no duplicate", E2E, async (t) => {
  let calls = 0;
  // The gateway allows 30 s of clock skew after exp: the first token, 27 s
  // past it, has 3 s left. Without in-band refresh, the gateway closes then.
  const getToken = () => (++calls === 1 ? token({ exp: now() - 27 }) : token());
  const { tc, rec } = client(t, { getToken, refresh: false });
  const ns = [];
  const sub = tc.subscribe({ table: "public.expiry" }, { onEvent: (f) => ns.push(f.event.data.n) });
  await active(sub);
  await control(env, "/writer/start?table=expiry&every=50ms");
  const expired = await waitFor(() => rec.disconnects.find((d) => d.err.code === 4001), 30_000, "the close at expiry");
  assert.equal(expired.err.reason, "token expired");
  assert.equal(typeof expired.retryIn, "number", "retried");
  const at = ns.length;
  await waitFor(() => ns.length >= at + 20, 30_000, "rows after the reconnect");
  const { last } = await control(env, "/writer/stop?table=expiry");
  await waitFor(() => ns.at(-1) === last, 30_000, "row " + last);
  assert.deepEqual(ns, upTo(last), "every row once, in order");
  assert.equal(calls, 2, "one fresh token");
  assert.equal(rec.disconnects.length, 1);
  assert.equal(tc.state, "open");
});

test("errors of subscriptions and requests are typed and leave the connection open", E2E, async (t) => {
  const grants = { tables: { "public.orders": ["create"], "public.ticks": ["*"] }, topics: { subscribe: ["*"] } };
  const { tc, rec } = client(t, { getToken: () => token({ tablecast: grants }) });
  for (const [spec, code] of [
    [{ table: "public.orders", where: { nope: { eq: 1 } } }, "invalid_filter"],
    [{ table: "public.orders", where: { total: { gte: "ten" } } }, "invalid_filter"],
    [{ table: "public.orders", select: ["nope"] }, "invalid_select"],
    [{ table: "public.nope" }, "unknown_table"],
    [{ table: "public.hist" }, "unknown_table"], // exists, not granted: the same answer
    [{ table: "other.public.orders" }, "unknown_table"],
    [{ table: "public.orders", events: ["delete"] }, "not_allowed"],
    [{ topic: "no-such-topic" }, "unknown_topic"],
  ]) {
    const errs = [];
    const sub = tc.subscribe(spec, { onError: (e) => errs.push(e) });
    const err = await sub.closed;
    assert.ok(err instanceof TablecastError, JSON.stringify(spec));
    assert.equal(err.code, code, JSON.stringify(spec) + ": " + err.message);
    assert.equal(err.subscriptionId, sub.id);
    assert.ok(err.message.length > 0);
    assert.deepEqual(errs, [err]);
    assert.equal(sub.state, "ended");
  }
  await assert.rejects(tc.publish("anything", 1), (e) => e.code === "not_allowed" && e.subscriptionId === null);
  await assert.rejects(tc.createTopic("anything"), (e) => e.code === "not_allowed");
  const ok = tc.subscribe({ table: "public.orders" });
  await active(ok);
  assert.deepEqual(rec.disconnects, []);
  assert.deepEqual(rec.errors, []);

  // A token's own limit on subscriptions.
  const { tc: one } = client(t, { getToken: () => token({ tablecast: { ...ALL, limits: { subscriptions: 1 } } }) });
  await active(one.subscribe({ table: "public.orders" }));
  assert.equal((await one.subscribe({ table: "public.ticks" }).closed).code, "too_many_subscriptions");
});

test("closes that would be refused again stop the client, and say why", E2E, async (t) => {
  const made = [];
  class Counting extends WebSocket {
    constructor(url, protocols) {
      super(url, protocols);
      made.push(url);
    }
  }
  // Node's WebSocket sends no Origin; a browser on another site would.
  class OtherSite extends WebSocket {
    constructor(url, protocols) {
      super(url, { protocols, headers: { origin: "http://evil.example" } });
      made.push(url);
    }
  }
  const wrongSecret = () => hs256("another-secret-of-at-least-32-bytes!", { sub: "js-test", exp: now() + 3600 });
  for (const [what, options, code, reason, attempts] of [
    ["an origin not allowed", { WebSocket: OtherSite }, 4003, /origin/, 1],
    ["a URL subscription the gateway refuses", { url: env.ws + "/tables/public.nope?status=eq.paid", WebSocket: Counting }, 4400, /public\.nope/, 1],
    ["no credential and no way to get one", { getToken: undefined, WebSocket: Counting }, 4001, /no token/, 1],
    ["a fresh token refused too", { getToken: wrongSecret, WebSocket: Counting }, 4001, /signature/, 2],
  ]) {
    made.length = 0;
    const { tc, rec } = client(t, options);
    const err = await tc.closed;
    assert.ok(err instanceof TablecastError && err.isClose, what);
    assert.equal(err.code, code, what + ": " + err.message);
    assert.match(err.reason, reason, what);
    assert.equal(tc.state, "closed", what);
    assert.equal(rec.closedWith, err, what + ": onClose");
    assert.equal(rec.disconnects.at(-1).retryIn, null, what + ": onDisconnect says no retry");
    await sleep(300);
    assert.equal(made.length, attempts, what + ": connections made");
  }
});

test("4029 is retried with backoff until the identity has a connection free", E2E, async (t) => {
  const solo = () => token({ sub: "solo", tablecast: { ...ALL, limits: { connections: 1 } } });
  const a = client(t, { getToken: solo });
  await a.tc.ping();
  const b = client(t, { getToken: solo });
  const refused = await waitFor(() => b.rec.disconnects.find((d) => d.err.code === 4029), 30_000, "4029");
  assert.equal(typeof refused.retryIn, "number");
  a.tc.close();
  // b's next attempt may still meet a's connection, which the gateway has
  // not seen close yet: refused with 4029 again, which rejects a ping
  // waiting on it, and retried.
  await waitFor(async () => {
    try {
      await b.tc.ping(); // waits for a connection, then for its answer
      return true;
    } catch (err) {
      if (err.code === 4029) return false;
      throw err;
    }
  }, 30_000, "b's connection once a's is closed");
  assert.equal(b.tc.state, "open");
});

test("rate_limited is reported; the client slows down and every subscription gets through, once", E2E, async (t) => {
  // This gateway allows 2 messages a second (bursts of 4); the client sends
  // up to 40 (bursts of 80) until told.
  const { tc, rec } = client(t, { url: env.limitedWS });
  const counts = new Map();
  const subs = upTo(6).map((i) => tc.subscribe({ table: "public.orders", where: { id: { gte: 1000 + i } } }, {
    onEvent: (f) => counts.set(f.id, (counts.get(f.id) ?? 0) + 1),
  }));
  await waitFor(() => subs.every((s) => s.state === "active"), 60_000, "every subscription active");
  assert.ok(rec.errors.some((e) => e.code === "rate_limited" && e instanceof TablecastError), "rate_limited reported");
  assert.ok(rec.disconnects.some((d) => d.err.code === "rate_limited" && typeof d.retryIn === "number"));
  await control(env, "/sql", "INSERT INTO orders VALUES (1010, 'open', 1)");
  await waitFor(() => subs.every((s) => counts.get(s.id) === 1), 30_000, "the row on every subscription");
  await tc.ping();
  assert.deepEqual(subs.map((s) => counts.get(s.id)), [1, 1, 1, 1, 1, 1]);
});

// Last: it shrinks the stream.
test("history_unavailable when the stream's retention dropped what the client missed: told, then live again", E2E, async (t) => {
  const { tc, rec } = client(t);
  const ns = [], lost = [];
  const sub = tc.subscribe({ table: "public.hist" }, { onEvent: (f) => ns.push(f.event.data.n), onHistoryUnavailable: (e) => lost.push(e) });
  await active(sub);
  await control(env, "/sql", "INSERT INTO hist VALUES (1), (2)");
  await waitFor(() => ns.length === 2, 30_000, "rows 1 and 2");
  await control(env, "/gateway/stop?name=main&signal=TERM");
  // Rows 3 and 4 are committed while the client is away, and dropped by
  // the stream's retention before it comes back.
  await control(env, "/sql", "INSERT INTO hist VALUES (3), (4)");
  const { seq } = await control(env, "/stream/wait?table=hist&n=4");
  await control(env, "/stream/roll?past=" + seq);
  await control(env, "/gateway/start?name=main");
  await waitFor(() => lost.length === 1 && sub.state === "active", 60_000, "history_unavailable, then subscribed again");
  assert.equal(lost[0].code, "history_unavailable");
  assert.equal(lost[0].subscriptionId, sub.id);
  assert.match(lost[0].message, /no longer in the stream/);
  await control(env, "/sql", "INSERT INTO hist VALUES (5)");
  await waitFor(() => ns.includes(5), 30_000, "row 5");
  assert.deepEqual(ns, [1, 2, 5], "the lost rows are not made up; live rows follow");
  assert.equal(tc.state, "open");
  assert.ok(rec.disconnects.every((d) => d.err.code === 1001 || d.err.code === "network"));
});

test("a view holds exactly the rows that match, through enters, leaves, deletes and a gateway restart", E2E, async (t) => {
  const { tc } = client(t);
  const changes = [];
  const v = tc.view({ table: "public.vrows", where: { n: { gte: 25 } } }, { onChange: (c) => changes.push(c) });
  const expect = new Map();
  for (let id = 25; id <= 50; id++) expect.set(id, id);
  const same = () => v.ready && v.rows.size === expect.size && [...expect].every(([id, n]) => v.rows.get(JSON.stringify({ id }))?.n === n);
  await waitFor(same, 60_000, "the view's first rows");
  await control(env, "/sql", `UPDATE vrows SET n = 0 WHERE id = 30; UPDATE vrows SET n = 99 WHERE id = 3;
    DELETE FROM vrows WHERE id = 2; INSERT INTO vrows VALUES (100, 100)`);
  expect.delete(30);
  expect.set(3, 99);
  expect.set(100, 100);
  await waitFor(same, 30_000, "the view to follow the changes");
  const seen = changes.map((c) => [c.op, c.view ?? "", c.key.id]);
  assert.deepEqual(seen, [["delete", "leave", 30], ["upsert", "enter", 3], ["upsert", "", 100]], "a leave, an enter, no delete of a row the view never held");

  changes.length = 0;
  await control(env, "/gateway/stop?name=main&signal=TERM");
  await control(env, "/sql", `UPDATE vrows SET n = 0 WHERE id = 40; INSERT INTO vrows VALUES (101, 50); UPDATE vrows SET n = 26 WHERE id = 26`);
  expect.delete(40);
  expect.set(101, 50);
  await control(env, "/gateway/start?name=main");
  await waitFor(() => same() && changes.length === 2, 60_000, "the view to be read again after the restart").catch((err) => {
    // What the view holds, to tell a view never read again from one read wrong.
    const rows = [...v.rows.values()].map((r) => [r.id, r.n]).sort((a, b) => a[0] - b[0]);
    throw new Error(`${err.message}: ready ${v.ready}, ${v.rows.size} rows (want ${expect.size}) ${JSON.stringify(rows)}, ` +
      `changes ${JSON.stringify(changes.map((c) => [c.op, c.view ?? "", c.key.id]))}`);
  });
  assert.deepEqual(changes.map((c) => [c.op, c.key.id]).sort(), [["delete", 40], ["upsert", 101]], "what differs is reported, nothing else");
});
