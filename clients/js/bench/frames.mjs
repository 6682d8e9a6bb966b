// How many event frames a second the client takes from its socket to the
// application (parse, route to the subscription, drop duplicates, call
// onEvent), on a scripted socket: the client's own cost, without the network.
// With a second argument, transaction frames of that many events each, on a
// batched subscription (onTransaction), counted in events.
//
//   node clients/js/bench/frames.mjs [frames] [events a transaction frame]

import { TablecastClient } from "../tablecast.js";
import { FakeSocket } from "../test/helpers.mjs";

const n = Number(process.argv[2] ?? 100_000);
const perTx = process.argv[3] === undefined ? 0 : Number(process.argv[3]);
const tc = new TablecastClient({ url: "ws://bench.invalid/ws", WebSocket: FakeSocket, pingInterval: 0 });
let got = 0;
const sub = perTx > 0
  ? tc.subscribe({ table: "public.orders", batch: "transaction" }, { onTransaction: (tx) => { got += tx.events.length; } })
  : tc.subscribe({ table: "public.orders" }, { onEvent: () => got++ });
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
let seq = 0;
for (let i = 0; i < 2 * n; i++) {
  if (perTx > 0) {
    const events = [];
    for (let j = 0; j < perTx; j++) events.push({ seq: ++seq, event });
    frames.push(JSON.stringify({ type: "transaction", id: sub.id, seq: ++seq, xid: event.xid, lsn: event.lsn, commit_time: event.commit_time, events }));
  } else {
    frames.push(JSON.stringify({ type: "event", id: sub.id, seq: ++seq, event }));
  }
}
const events = n * Math.max(perTx, 1);
for (const [round, from] of [["warm-up", 0], ["measured", n]]) {
  got = 0;
  const t0 = process.hrtime.bigint();
  for (let i = from; i < from + n; i++) ws.onmessage({ data: frames[i] });
  const s = Number(process.hrtime.bigint() - t0) / 1e9;
  if (got !== events) throw new Error(`delivered ${got} of ${events} events`);
  if (round === "measured") {
    const what = perTx > 0 ? `transaction frames of ${perTx} events` : "frames";
    console.log(`${n} ${what}, ${frames[0].length} bytes each: ${(n / s / 1000).toFixed(1)}k frames/s, ${(events / s / 1000).toFixed(0)}k events/s, ${((s / events) * 1e6).toFixed(2)} µs an event`);
  }
}
tc.close();
