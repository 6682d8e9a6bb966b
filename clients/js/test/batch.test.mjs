// End-to-end tests of transaction batches ("batch": "transaction"), run by
// TestJSClient on a gateway of their own that is told of the reader's
// transaction markers and cuts transaction frames at 25 events
// (TCTEST_BATCH_WS); the main gateway is told the markers are off. The
// tests of this file run one after another: one restarts that gateway.

import { test } from "node:test";
import assert from "node:assert/strict";
import { TablecastClient, TablecastError } from "../tablecast.js";
import { gatewayEnv, control, hs256, ALL, waitFor, sleep, recorder, E2E } from "./helpers.mjs";

const env = gatewayEnv();
const now = () => Math.floor(Date.now() / 1000);
const token = () => hs256(env.secret, { sub: "js-batch", exp: now() + 3600, tablecast: ALL });
const upTo = (n) => Array.from({ length: n }, (_, i) => i + 1);
const PART = 25; // the batch gateway's TABLECAST_WS_BATCH_EVENTS

function client(t, options = {}) {
  const rec = recorder();
  const tc = new TablecastClient({ url: env.batchWS, getToken: () => token(), ...rec.options, ...options });
  t.after(() => tc.close());
  return { tc, rec };
}

const active = (sub) => waitFor(() => sub.state === "active", 30_000, "subscription " + sub.id + " to be active");

// checkFrame asserts what holds of every transaction frame: events of its
// transaction, seqs growing, none beyond the frame's seq.
function checkFrame(tx) {
  assert.equal(tx.type, "transaction");
  assert.equal(typeof tx.more, "boolean");
  assert.ok(tx.events.length > 0, "no empty frame");
  let last = 0;
  for (const { seq, event } of tx.events) {
    assert.equal(event.xid, tx.xid, "an event of the frame's transaction");
    assert.equal(event.lsn, tx.lsn);
    assert.equal(event.commit_time, tx.commit_time);
    assert.ok(seq > last && seq <= tx.seq, `event seq ${seq} after ${last}, at most the frame's ${tx.seq}`);
    last = seq;
  }
  if (!tx.more) assert.ok(tx.seq > last, "a transaction's last frame has its marker's seq, beyond its events");
}

// Cutting is a WebSocket whose first connection breaks (as a network does,
// 1006) right after it has delivered part `after` (the second by default)
// of a cut transaction. With hold, the connections after the break wait
// until release() is called (the client is away meanwhile).
function cutting(after = 2, { hold = false } = {}) {
  const sent = []; // per connection, the messages the client sent
  const synced = []; // the synced frames received
  const after_ = []; // the frames received after the break, in short
  let cut = false;
  let release;
  const held = hold ? new Promise((r) => { release = r; }) : null;
  class Cutting {
    constructor(url, protocols) {
      const mine = [];
      sent.push(mine);
      this.sent = mine;
      this.ws = null;
      this.onopen = this.onmessage = this.onerror = this.onclose = null;
      if (cut && held) held.then(() => this.#dial(url, protocols));
      else this.#dial(url, protocols);
    }
    #dial(url, protocols) {
      const ws = new WebSocket(url, protocols);
      let parts = 0;
      this.ws = ws;
      ws.onopen = (e) => this.onopen?.(e);
      ws.onerror = (e) => this.onerror?.(e);
      ws.onclose = (e) => this.onclose?.(e);
      ws.onmessage = (m) => {
        this.onmessage?.(m);
        const f = JSON.parse(m.data);
        if (f.type === "synced") synced.push(f);
        if (cut) {
          after_.push(brief(f));
          return;
        }
        if (f.type === "transaction" && f.more && ++parts === after) {
          cut = true;
          this.onclose?.({ code: 1006, reason: "" });
        }
      };
    }
    get readyState() {
      return this.ws?.readyState ?? 0;
    }
    send(text) {
      this.sent.push(JSON.parse(text));
      this.ws.send(text);
    }
    close(code, reason) {
      if (this.ws) this.ws.close(code, reason);
      else held.then(() => this.ws.close(code, reason));
    }
  }
  return { Cutting, sent, synced, frames: after_, wasCut: () => cut, release: () => release?.() };
}

// brief is a frame in short, for a failure's report: type, seq, "+" for
// more, and what it holds (rows set and removed, events and their ids).
function brief(f) {
  let b = f.type + (f.seq !== undefined ? ":" + f.seq : "") + (f.more ? "+" : "");
  if (Array.isArray(f.rows)) {
    const ids = (es) => ranges(es.map((e) => e.key?.id));
    b += " set " + ids(f.rows.filter((e) => !e.removed)) + " removed " + ids(f.rows.filter((e) => e.removed));
  }
  if (Array.isArray(f.events)) b += " xid " + f.xid + " [" + f.events.map((e) => (e.view ? e.view + " " : "") + e.event.op + " " + (e.event.key?.id ?? "")).join(",") + "]";
  return b;
}

// ranges writes numbers as sorted runs: "1-5,9".
function ranges(ns) {
  const s = [...new Set(ns)].sort((a, b) => a - b);
  const out = [];
  for (let i = 0; i < s.length; i++) {
    let j = i;
    while (j + 1 < s.length && s[j + 1] === s[j] + 1) j++;
    out.push(i === j ? String(s[i]) : s[i] + "-" + s[j]);
    i = j;
  }
  return out.join(",") || "-";
}

test("gateway restarts while transactions of three rows are written: every row once, in whole transactions", E2E, async (t) => {
  const { tc, rec } = client(t);
  const txs = [];
  const sub = tc.subscribe({ table: "public.batchw", batch: "transaction" }, { onTransaction: (tx) => txs.push(tx) });
  await active(sub);
  await control(env, "/writer/start?table=batchw&every=30ms&rows=3");
  let stopped = false;
  t.after(() => stopped || control(env, "/writer/stop?table=batchw"));
  for (const signal of ["KILL", "TERM"]) {
    const before = txs.length;
    await waitFor(() => txs.length >= before + 5, 30_000, "transactions before stopping the gateway with " + signal);
    const opens = rec.opens;
    await control(env, "/gateway/stop?name=batch&signal=" + signal);
    const atStop = txs.length;
    await sleep(300); // transactions are committed while the gateway is away
    await control(env, "/gateway/start?name=batch");
    await waitFor(() => rec.opens > opens && txs.length >= atStop + 15, 60_000, "transactions after the gateway came back (" + signal + ")");
  }
  const { last } = await control(env, "/writer/stop?table=batchw");
  stopped = true;
  await waitFor(() => txs.at(-1)?.events.at(-1).event.data.n === last, 30_000, "row " + last);
  // A resume whose history ends inside a transaction still being stored
  // sends what it has of it with more, and the rest follows (the
  // contract): the parts of one transaction are joined here.
  const whole = [];
  let part = null;
  for (const [i, tx] of txs.entries()) {
    checkFrame(tx);
    if (i > 0) assert.ok(tx.seq > txs[i - 1].seq);
    if (part) {
      // Said in full: a part followed by another transaction is either the
      // rest lost or history skipped, which the seqs and errors tell apart.
      assert.equal(tx.xid, part.xid, `the rest of a transaction sent in parts: xid ${part.xid} up to seq ${part.seq} (rows ${part.events.map((e) => e.event.data.n)}), then seq ${tx.seq} (rows ${tx.events.map((e) => e.event.data.n)}); errors ${rec.errors.map((e) => e.code)}, disconnects ${rec.disconnects.map((d) => d.err.code)}`);
      part.events.push(...tx.events);
      part.seq = tx.seq;
    } else part = { xid: tx.xid, seq: tx.seq, events: [...tx.events] };
    if (!tx.more) {
      whole.push(part);
      part = null;
    }
  }
  assert.equal(part, null, "the last transaction ends");
  for (const [i, tx] of whole.entries()) {
    assert.deepEqual(tx.events.map((e) => e.event.data.n), [3 * i + 1, 3 * i + 2, 3 * i + 3], "transaction " + i + " whole, once");
    if (i > 0) assert.ok(tx.xid !== whole[i - 1].xid);
  }
  assert.equal(whole.length * 3, last);
  assert.equal(sub.lastSeq, txs.at(-1).seq, "lastSeq is the last marker's");
  const codes = rec.disconnects.map((d) => d.err.code);
  assert.ok(codes.includes("network") && codes.includes(1001), "a kill and a stop: " + codes);
});

test("a transaction larger than a frame comes in parts; a connection broken between two parts resumes with the rest, none twice, none lost", E2E, async (t) => {
  const { Cutting, sent, wasCut } = cutting();
  const { tc, rec } = client(t, { WebSocket: Cutting, initialDelay: 20, maxDelay: 50 });
  const parts = [];
  const sub = tc.subscribe({ table: "public.batched", where: { pad: { eq: "big" } }, batch: "transaction" }, { onTransaction: (tx) => parts.push(tx) });
  await active(sub);
  const rows = 120;
  await control(env, "/sql", `INSERT INTO batched SELECT g, 'big' FROM generate_series(1001, ${1000 + rows}) g`);
  await waitFor(() => parts.length > 0 && !parts.at(-1).more, 30_000, "the transaction's last part");
  await tc.ping();

  assert.ok(wasCut(), "the connection broke between parts");
  assert.equal(rec.disconnects.length, 1);
  assert.equal(rec.disconnects[0].err.code, "network");
  assert.equal(sent.length, 2, "two connections");
  const resumed = sent[1].filter((m) => m.type === "subscribe");
  assert.deepEqual(resumed, [{ type: "subscribe", id: sub.id, table: "public.batched", where: { pad: { eq: "big" } }, batch: "transaction", from: parts[1].seq }],
    "resumed from the second part's seq");

  const ns = parts.flatMap((p) => p.events.map((e) => e.event.data.n));
  assert.deepEqual(ns, upTo(rows).map((i) => 1000 + i), "every row once, in order");
  for (const [i, p] of parts.entries()) {
    checkFrame(p);
    assert.ok(p.events.length <= PART, "at most " + PART + " events a frame");
    assert.equal(p.more, i < parts.length - 1, "more on every part but the last");
    assert.equal(p.xid, parts[0].xid, "one transaction");
    assert.equal(p.lsn, parts[0].lsn);
    if (i > 0) assert.ok(p.seq > parts[i - 1].seq);
  }
  assert.equal(parts[0].events.length, PART);
  assert.equal(parts[1].events.length, PART);
  assert.ok(parts.length >= Math.ceil(rows / PART));
  assert.equal(sub.lastSeq, parts.at(-1).seq);
});

test("a multi-row transaction arrives as one onTransaction with all its events; a filter keeps its own; from an event inside a transaction gets the rest", E2E, async (t) => {
  const { tc, rec } = client(t);
  const all = [], some = [];
  const sub = tc.subscribe({ table: "public.batched", where: { n: { lt: 100 } }, batch: "transaction" }, { onTransaction: (tx) => all.push(tx) });
  const filtered = tc.subscribe({ table: "public.batched", where: { n: { gte: 2, lt: 100 } }, select: ["n"], batch: "transaction" }, { onTransaction: (tx) => some.push(tx) });
  await Promise.all([active(sub), active(filtered)]);
  await control(env, "/sql", `BEGIN;
    INSERT INTO batched VALUES (1, 'a'), (2, 'b');
    UPDATE batched SET pad = 'c' WHERE n = 2;
    DELETE FROM batched WHERE n = 1;
    COMMIT`);
  await control(env, "/sql", "INSERT INTO batched VALUES (3, 'd')");
  await waitFor(() => all.length === 2 && some.length === 2, 30_000, "two transactions on both subscriptions");
  await tc.ping();
  assert.equal(all.length, 2, "one call per transaction");
  const [first, second] = all;
  for (const tx of all) {
    checkFrame(tx);
    assert.equal(tx.more, false);
    assert.equal(tx.id, sub.id);
  }
  assert.deepEqual(first.events.map((e) => [e.event.op, e.event.key.n]), [["create", 1], ["create", 2], ["update", 2], ["delete", 1]]);
  assert.deepEqual(first.events[2].event.data, { n: 2, pad: "c" });
  assert.deepEqual(second.events.map((e) => [e.event.op, e.event.data.n]), [["create", 3]]);
  assert.ok(second.seq > first.seq && second.xid !== first.xid);
  assert.match(first.commit_time, /^\d{4}-\d\d-\d\dT/);
  assert.match(first.lsn, /^[0-9A-F]+\/[0-9A-F]+$/);
  assert.equal(sub.lastSeq, second.seq);

  // The filtered subscription: its events, under the same markers.
  assert.deepEqual(some.map((tx) => [tx.seq, tx.events.map((e) => [e.event.op, e.event.data])]), [
    [first.seq, [["create", { n: 2 }], ["update", { n: 2 }]]],
    [second.seq, [["create", { n: 3 }]]],
  ]);

  // Iterated, from an event's own seq inside the first transaction: the
  // rest of it, then the second.
  const it = tc.subscribe({ table: "public.batched", where: { n: { lt: 100 } }, batch: "transaction", from: first.events[1].seq });
  const got = [];
  for await (const tx of it) {
    got.push([tx.seq, tx.events.map((e) => e.seq)]);
    if (tx.seq === second.seq) break;
  }
  assert.deepEqual(got, [[first.seq, first.events.slice(2).map((e) => e.seq)], [second.seq, second.events.map((e) => e.seq)]]);
  assert.deepEqual(rec.errors, []);
});

test("a batched view applies each transaction's changes together, enters and leaves among them, and a large one part by part", E2E, async (t) => {
  const { tc, rec } = client(t);
  const changes = [], txs = [];
  const v = tc.view({ table: "public.bview", where: { n: { gte: 10 } }, batch: "transaction" }, {
    onChange: (c) => changes.push([c.op, c.view ?? "", c.key.id]),
    onTransaction: (tx) => txs.push({ ...tx, ids: [...v.rows.keys()].map((k) => JSON.parse(k).id).sort((a, b) => a - b) }),
  });
  await waitFor(() => v.ready, 60_000, "the view's rows");
  assert.deepEqual([...v.rows.keys()].map((k) => JSON.parse(k).id).sort((a, b) => a - b), upTo(11).map((i) => i + 9));
  await control(env, "/sql", `BEGIN;
    UPDATE bview SET n = 0 WHERE id = 15;
    UPDATE bview SET n = 50 WHERE id = 3;
    INSERT INTO bview VALUES (100, 100);
    DELETE FROM bview WHERE id = 2;
    UPDATE bview SET n = 12 WHERE id = 12;
    COMMIT`);
  await waitFor(() => txs.length === 1, 30_000, "the transaction");
  // Row 12 updated to its own values changes nothing the view holds.
  assert.deepEqual(changes, [["delete", "leave", 15], ["upsert", "enter", 3], ["upsert", "", 100]], "in commit order; no delete of a row the view never held, no update that changes nothing");
  assert.equal(txs[0].changes.length, 3);
  assert.equal(txs[0].more, false);
  assert.deepEqual(txs[0].ids, [3, 10, 11, 12, 13, 14, 16, 17, 18, 19, 20, 100], "the rows with the whole transaction applied");
  assert.equal(v.seq, txs[0].seq);

  // 60 rows in one transaction: three parts of at most 25, applied one after the other.
  await control(env, "/sql", "INSERT INTO bview SELECT g, g FROM generate_series(201, 260) g");
  await waitFor(() => txs.length > 1 && !txs.at(-1).more, 30_000, "the large transaction's last part");
  const parts = txs.slice(1);
  assert.deepEqual(parts.map((p) => p.changes.length), [25, 25, 10]);
  assert.deepEqual(parts.map((p) => p.more), [true, true, false]);
  assert.ok(parts.every((p) => p.xid === parts[0].xid));
  assert.deepEqual(parts.flatMap((p) => p.changes.map((c) => c.key.id)), upTo(60).map((i) => 200 + i));
  assert.equal(v.rows.size, 12 + 60);
  assert.deepEqual(rec.errors, []);
});

// rowsOf is a view's rows, or a table's, as [[id, n], …] by id.
const rowsOf = (view) => [...view.rows].map(([k, d]) => [JSON.parse(k).id, d.n]).sort((a, b) => a[0] - b[0]);
const select = async (sql) => (await control(env, "/query", sql)).map((r) => [r.id, r.n]);

// cutView follows a batched view of vcut through a connection cut inside a
// transaction. Each step is one transaction, given as SQL and as what it
// does to the rows the view should hold (a Map of id → n); states are the
// view's rows after each step, the points the application may be shown:
// every onSynced and every transaction's last part (more false) must find
// the view holding one of them, never a transaction in part.
function cutView(t, where, cut) {
  const { tc, rec } = client(t, { WebSocket: cut.Cutting, initialDelay: 20, maxDelay: 50 });
  const states = [new Map()];
  const shown = []; // [what, the step the view held then (-1: none of them)]
  const changes = new Map(); // id → [op, …] after the first rows
  const noops = []; // changes that changed nothing: applied twice
  const shadow = new Map(); // id → n: the view kept from the changes told
  const parts = [];
  const misses = []; // how a shown state matching none differed
  let synced = 0;
  const key = (rows) => JSON.stringify([...rows].sort((a, b) => a[0] - b[0]));
  const at = (what) => {
    const rows = rowsOf(v);
    const now = key(rows);
    const i = states.findIndex((m) => key(m) === now);
    shown.push([what, i]);
    if (i < 0) {
      // How it differs from each state, for the report.
      const held = new Map(rows);
      misses.push(what + ": " + states.map((m, j) => {
        const missing = [...m.keys()].filter((id) => held.get(id) !== m.get(id));
        const extra = [...held.keys()].filter((id) => !m.has(id));
        return "state " + j + " missing/other " + ranges(missing) + " extra " + ranges(extra);
      }).join("; "));
    }
  };
  const v = tc.view({ table: "public.vcut", where, batch: "transaction" }, {
    onSynced: () => {
      if (++synced === 1) for (const [id, n] of rowsOf(v)) shadow.set(id, n);
      at("synced " + synced);
    },
    onChange: (c) => {
      const id = c.key.id;
      changes.set(id, [...(changes.get(id) ?? []), c.op]);
      if (c.op === "upsert" ? shadow.get(id) === c.data.n : !shadow.has(id)) noops.push([c.op, id, c.seq]);
      if (c.op === "upsert") shadow.set(id, c.data.n);
      else shadow.delete(id);
    },
    onTransaction: (tx) => { parts.push(tx); if (!tx.more) at("transaction " + tx.xid); },
  });
  return {
    tc, rec, v, shown, changes, noops, shadow, parts, misses, frames: cut.frames,
    synced: () => synced,
    // step runs a transaction and notes the rows it leaves the view.
    step: async (sql, change) => {
      const next = new Map(states.at(-1));
      change(next);
      states.push(next);
      await control(env, "/sql", sql);
    },
    // holds: the view holds the last step's rows (and is synced).
    holds: () => v.ready && key(rowsOf(v)) === key(states.at(-1)),
    states,
  };
}

// wholeAndOnce asserts what a cut view promises the application: every
// point it was shown held whole transactions, in order, ending at the last
// step; every change told changed something (none came twice), and the
// changes told make the rows; and, given, the changes per id.
function wholeAndOnce(c, wantChanges) {
  assert.ok(c.shown.length > 0);
  let last = 0;
  for (const [what, i] of c.shown) {
    assert.ok(i >= 0, `at ${what} the view held part of a transaction: ${JSON.stringify(c.shown)}; ${c.misses.join(" | ")}; frames after the break: ${c.frames?.join(" ; ")}`);
    assert.ok(i >= last, `at ${what} the view went back from step ${last} to ${i}`);
    last = i;
  }
  assert.equal(last, c.states.length - 1, "shown the last step");
  assert.deepEqual(c.noops, [], "no change told twice");
  assert.deepEqual([...c.shadow].sort((a, b) => a[0] - b[0]), rowsOf(c.v), "the changes told make the rows");
  if (!wantChanges) return;
  const got = Object.fromEntries([...c.changes].sort((a, b) => a[0] - b[0]));
  assert.deepEqual(got, wantChanges, "each change once");
}

const range = (from, to) => Array.from({ length: to - from + 1 }, (_, i) => from + i);
const ops = (ids, ...want) => Object.fromEntries(ids.map((id) => [id, want]));

test("a batched view whose connection breaks inside a cut transaction is read again: the database's rows, whole transactions, each change once, and later ones follow", E2E, async (t) => {
  const cut = cutting(1);
  const where = { id: { lte: 1000 }, n: { lt: 5000 } };
  const c = cutView(t, where, cut);
  await waitFor(c.holds, 60_000, "the view's first rows");

  // 120 rows in one transaction: five parts; the connection breaks after
  // the first, and comes back at once. The rows read again are where the
  // row state stands then: inside the transaction (about one run in five),
  // after it, or (rarely) before it, older than what the view was shown.
  await c.step("INSERT INTO vcut SELECT g, g FROM generate_series(1, 120) g", (m) => { for (const id of range(1, 120)) m.set(id, id); });
  await waitFor(() => cut.wasCut() && c.synced() === 2 && c.holds(), 30_000, "the view read again after the break, with every row");
  assert.equal(c.parts[0].more, true);
  assert.equal(c.parts[0].changes.length, PART, "the first part, before the break");

  // Later transactions keep coming: 30 rows leave, 20 change (two parts).
  await c.step(`BEGIN; UPDATE vcut SET n = n + 10000 WHERE id <= 30; UPDATE vcut SET n = n + 1 WHERE id > 100; COMMIT`,
    (m) => { for (const id of range(1, 30)) m.delete(id); for (const id of range(101, 120)) m.set(id, id + 1); });
  await waitFor(c.holds, 30_000, "the transaction after the reconnect");
  await c.tc.ping();
  const after = c.parts.filter((p) => p.changes.some((ch) => ch.view === "leave"));
  assert.deepEqual(after.map((p) => [p.changes.length, p.more]), [[PART, true], [PART, false]], "the later transaction in two parts");

  assert.deepEqual(rowsOf(c.v), await select("SELECT id, n FROM vcut WHERE id <= 1000 AND n < 5000 ORDER BY id"), "the database's rows");
  wholeAndOnce(c);
  if (c.shown[1][1] === 1) {
    // Read again with the whole first transaction: each row's changes exactly.
    wholeAndOnce(c, { ...ops(range(1, 30), "upsert", "delete"), ...ops(range(31, 100), "upsert"), ...ops(range(101, 120), "upsert", "upsert") });
  }
  assert.ok(cut.wasCut());
  assert.deepEqual(c.rec.disconnects.map((d) => d.err.code), ["network"]);
  assert.equal(cut.sent.length, 2, "two connections");
  assert.deepEqual(cut.sent[1].filter((m) => m.type === "subscribe"), [{ type: "subscribe", id: c.v.id, table: "public.vcut", where, batch: "transaction", snapshot: true }],
    "the view read again, batched, without from");
  assert.deepEqual(c.rec.errors, []);
  // Whether the rows read again ended inside the transaction (as the row
  // state stood): every way holds to the above.
  t.diagnostic("synced after the break: " + JSON.stringify(cut.synced.at(-1)) + "; shown " + JSON.stringify(c.shown));
});

test("a batched view cut inside a transaction while more are committed: read again with them all, whole, each change once", E2E, async (t) => {
  const cut = cutting(1, { hold: true });
  const where = { id: { gt: 1000 }, n: { lt: 5000 } };
  const c = cutView(t, where, cut);
  await waitFor(c.holds, 60_000, "the view's first rows");

  await c.step("INSERT INTO vcut SELECT g, g FROM generate_series(1001, 1120) g", (m) => { for (const id of range(1001, 1120)) m.set(id, id); });
  await waitFor(() => cut.wasCut(), 30_000, "the break after the first part");
  // Committed while the client is away: 30 rows leave and 10 are deleted
  // in one transaction, 60 more come in another.
  await c.step(`BEGIN; UPDATE vcut SET n = n + 10000 WHERE id BETWEEN 1001 AND 1030; DELETE FROM vcut WHERE id BETWEEN 1031 AND 1040; COMMIT`,
    (m) => { for (const id of range(1001, 1040)) m.delete(id); });
  await c.step("INSERT INTO vcut SELECT g, g FROM generate_series(1121, 1180) g", (m) => { for (const id of range(1121, 1180)) m.set(id, id); });
  await control(env, "/rowstate/wait?seq=" + c.v.seq);
  cut.release();
  await waitFor(() => c.synced() === 2 && c.holds(), 30_000, "the view read again with what was committed meanwhile");

  await c.step("UPDATE vcut SET n = n + 1 WHERE id BETWEEN 1041 AND 1100", (m) => { for (const id of range(1041, 1100)) m.set(id, id + 1); });
  await waitFor(c.holds, 30_000, "the transaction after the reconnect");
  await c.tc.ping();

  assert.deepEqual(rowsOf(c.v), await select("SELECT id, n FROM vcut WHERE id > 1000 AND n < 5000 ORDER BY id"), "the database's rows");
  // Where the rows read again stood (after the first transaction, or a
  // later one) decides which changes come as differences and which in
  // frames; each once either way.
  wholeAndOnce(c);
  for (const id of range(1001, 1025)) assert.deepEqual(c.changes.get(id), ["upsert", "delete"], "row " + id + ": the first part's, then gone");
  for (const id of range(1121, 1180)) assert.deepEqual(c.changes.get(id), ["upsert"], "row " + id);
  for (const id of range(1041, 1100)) assert.deepEqual(c.changes.get(id)?.at(-1), "upsert", "row " + id);
  assert.deepEqual(c.rec.disconnects.map((d) => d.err.code), ["network"]);
  assert.deepEqual(cut.sent[1].filter((m) => m.type === "subscribe"), [{ type: "subscribe", id: c.v.id, table: "public.vcut", where, batch: "transaction", snapshot: true }]);
  assert.deepEqual(c.rec.errors, []);
});

test("batch_unavailable from a gateway without transaction markers ends that subscription; the others go on", E2E, async (t) => {
  const { tc, rec } = client(t, { url: env.ws });
  const errs = [];
  const batched = tc.subscribe({ table: "public.batched", batch: "transaction" }, { onTransaction: () => assert.fail("no transaction"), onError: (e) => errs.push(e) });
  const plain = tc.subscribe({ table: "public.batched" });
  const err = await batched.closed;
  assert.ok(err instanceof TablecastError);
  assert.equal(err.code, "batch_unavailable");
  assert.equal(err.subscriptionId, batched.id);
  assert.match(err.message, /TABLECAST_TX_MARKERS/);
  assert.deepEqual(errs, [err]);
  assert.equal(batched.state, "ended");
  await active(plain);
  assert.deepEqual(rec.errors, []);
});
