// How many event frames a second the client takes from its socket to the
// application (parse, route to the subscription, drop duplicates, call
// onEvent), on a scripted socket: the client's own cost, without the network.
//
//   node clients/js/bench/frames.mjs [frames]

import { TablecastClient } from "../tablecast.js";
import { FakeSocket } from "../test/helpers.mjs";

const n = Number(process.argv[2] ?? 100_000);
const tc = new TablecastClient({ url: "ws://bench.invalid/ws", WebSocket: FakeSocket, pingInterval: 0 });
let got = 0;
const sub = tc.subscribe({ table: "public.orders" }, { onEvent: () => got++ });
await new Promise((r) => setTimeout(r, 10));
const ws = FakeSocket.last;
ws.open();
ws.frame({ type: "subscribed", id: sub.id, seq: 0 });
const event = {
  id: "00000000016B3748-0003", op: "update", db: "shop", schema: "public", table: "orders",
  lsn: "0/16B3748", xid: 771, commit_time: "2026-11-22T07:00:00.123456Z",
  key: { id: 42 }, data: { id: 42, status: "paid", total: "19.90", note: "x".repeat(200) },
};
// The warm-up's frames, then the measured ones, their seqs going on so that none is a duplicate.
const frames = [];
for (let seq = 1; seq <= 2 * n; seq++) frames.push(JSON.stringify({ type: "event", id: sub.id, seq, event }));
for (const [round, from] of [["warm-up", 0], ["measured", n]]) {
  got = 0;
  const t0 = process.hrtime.bigint();
  for (let i = from; i < from + n; i++) ws.onmessage({ data: frames[i] });
  const s = Number(process.hrtime.bigint() - t0) / 1e9;
  if (got !== n) throw new Error(`delivered ${got} of ${n}`);
  if (round === "measured") {
    console.log(`${n} frames of ${frames[0].length} bytes: ${(n / s / 1000).toFixed(0)}k frames/s, ${((s / n) * 1e6).toFixed(2)} µs a frame`);
  }
}
tc.close();
