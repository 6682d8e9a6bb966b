// End-to-end tests of in-band token refresh, on a gateway of their own (run
// by TestJSClient beside gateway.test.mjs, which stops its gateway).

import { test } from "node:test";
import assert from "node:assert/strict";
import { TablecastClient } from "../tablecast.js";
import { gatewayEnv, control, hs256, ALL, waitFor, recorder, E2E } from "./helpers.mjs";

const env = gatewayEnv();
const now = () => Math.floor(Date.now() / 1000);
const upTo = (n) => Array.from({ length: n }, (_, i) => i + 1);

function client(t, getToken) {
  const rec = recorder();
  const tc = new TablecastClient({ url: env.refreshWS, getToken, ...rec.options });
  t.after(() => tc.close());
  return { tc, rec };
}

test("refresh_failed: the fresh token goes on a new connection, and nothing is lost", E2E, async (t) => {
  let calls = 0;
  // 1: alice's token, 20 s past exp, which the gateway's 30 s leeway still
  // takes for 10 s (time to connect and subscribe on a loaded machine): due
  // for a refresh at once (the client waits a second);
  // 2: bob's, for that refresh: another identity, refused;
  // 3: bob's again, on a new connection.
  const getToken = () => {
    calls++;
    return calls === 1
      ? hs256(env.secret, { sub: "alice", exp: now() - 20, tablecast: ALL })
      : hs256(env.secret, { sub: "bob", exp: now() + 3600, tablecast: ALL });
  };
  const { tc, rec } = client(t, getToken);
  const ns = [];
  const sub = tc.subscribe({ table: "public.swaps" }, { onEvent: (f) => ns.push(f.event.data.n) });
  await waitFor(() => sub.state === "active", 30_000, "subscribed");
  await control(env, "/writer/start?table=swaps&every=50ms");
  await waitFor(() => rec.errors.some((e) => e.code === "refresh_failed"), 30_000, "refresh_failed");
  assert.match(rec.errors.find((e) => e.code === "refresh_failed").message, /another identity/);
  assert.ok(rec.disconnects.some((d) => d.err.code === "refresh_failed" && typeof d.retryIn === "number"), "reconnected");
  const at = ns.length;
  await waitFor(() => ns.length >= at + 20 && calls >= 3, 30_000, "rows on the new connection");
  const { last } = await control(env, "/writer/stop?table=swaps");
  await waitFor(() => ns.at(-1) === last, 30_000, "row " + last);
  assert.deepEqual(ns, upTo(last), "every row once, in order");
  assert.ok(!rec.disconnects.some((d) => d.err.code === 4001), "never closed for expiry");
  assert.equal(tc.state, "open");
});

test("a 4 s token is refreshed in band: the connection outlives it and the gateway's leeway", E2E, async (t) => {
  const LIFE = 4;
  const first = now() + LIFE;
  let calls = 0;
  const getToken = () => hs256(env.secret, { sub: "refresher", exp: ++calls === 1 ? first : now() + LIFE, tablecast: ALL });
  const { tc, rec } = client(t, getToken);
  const ns = [];
  const sub = tc.subscribe({ table: "public.beats" }, { onEvent: (f) => ns.push(f.event.data.n) });
  await waitFor(() => sub.state === "active", 30_000, "subscribed");
  await control(env, "/writer/start?table=beats&every=100ms");
  // The gateway closes a connection (4001 "token expired") 30 s, its
  // leeway for clock skew, after its token's exp. Wait past that instant
  // for the first token, watching that nothing closes.
  await waitFor(() => rec.disconnects.length > 0 || now() > first + 32, 60_000, "the first token's end at the gateway");
  assert.deepEqual(rec.disconnects.map((d) => d.err.message), [], "never disconnected");
  const at = ns.length;
  await waitFor(() => ns.length >= at + 10, 30_000, "rows still arriving");
  const { last } = await control(env, "/writer/stop?table=beats");
  await waitFor(() => ns.at(-1) === last, 30_000, "row " + last);
  assert.deepEqual(ns, upTo(last), "every row once, in order");
  // Refreshed at half the token's life: every 2 s or so.
  assert.ok(rec.refreshed.length >= 8, rec.refreshed.length + " refreshes");
  assert.ok(rec.refreshed.every((exp, i) => exp > first && (i === 0 || exp >= rec.refreshed[i - 1])));
  assert.deepEqual(rec.disconnects, []);
  assert.equal(tc.state, "open");
});
