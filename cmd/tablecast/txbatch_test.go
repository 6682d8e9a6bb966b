package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/tablecast/tablecast/stream"
)

// txFrameE2E is a transaction frame (or any other frame) as a client reads
// it.
type txFrameE2E struct {
	Type       string `json:"type"`
	ID         string `json:"id"`
	Seq        uint64 `json:"seq"`
	Code       string `json:"code"`
	Message    string `json:"message"`
	XID        uint32 `json:"xid"`
	LSN        string `json:"lsn"`
	CommitTime string `json:"commit_time"`
	More       bool   `json:"more"`
	Rows       []struct {
		Key     map[string]any `json:"key"`
		Data    map[string]any `json:"data"`
		Removed bool           `json:"removed"`
	} `json:"rows"`
	Events []struct {
		Seq   uint64 `json:"seq"`
		View  string `json:"view"`
		Event struct {
			Op    string         `json:"op"`
			View  string         `json:"-"`
			Table string         `json:"table"`
			XID   uint32         `json:"xid"`
			LSN   string         `json:"lsn"`
			Data  map[string]any `json:"data"`
		} `json:"event"`
	} `json:"events"`
	raw string
}

// leaveKey returns the key id of the event seq of transaction frame raw.
func leaveKey(t *testing.T, raw string, seq uint64) int {
	t.Helper()
	var f struct {
		Events []struct {
			Seq   uint64 `json:"seq"`
			Event struct {
				Key struct {
					ID int `json:"id"`
				} `json:"key"`
			} `json:"event"`
		} `json:"events"`
	}
	if err := json.Unmarshal([]byte(raw), &f); err != nil {
		t.Fatal(err)
	}
	for _, ev := range f.Events {
		if ev.Seq == seq {
			return ev.Event.Key.ID
		}
	}
	t.Fatalf("no event %d in %s", seq, raw)
	return 0
}

func readTxFrame(t *testing.T, ws *websocket.Conn) txFrameE2E {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	_, b, err := ws.Read(ctx)
	if err != nil {
		t.Fatalf("read: %v", err)
	}
	var f txFrameE2E
	if err := json.Unmarshal(b, &f); err != nil {
		t.Fatalf("frame %s: %v", b, err)
	}
	f.raw = string(b)
	return f
}

// ids returns the "id" of each event of f, checking each is of f's
// transaction and seqs grow.
func (f txFrameE2E) ids(t *testing.T) []int {
	t.Helper()
	if f.Type != "transaction" {
		t.Fatalf("got %s, want a transaction frame", f.raw)
	}
	var out []int
	var last uint64
	for _, ev := range f.Events {
		if ev.Event.XID != f.XID || ev.Event.LSN != f.LSN || ev.Seq <= last || ev.Seq > f.Seq {
			t.Fatalf("event seq %d xid %d lsn %s in frame seq %d xid %d lsn %s (after seq %d)", ev.Seq, ev.Event.XID, ev.Event.LSN, f.Seq, f.XID, f.LSN, last)
		}
		last = ev.Seq
		id, _ := ev.Event.Data["id"].(float64)
		out = append(out, int(id))
	}
	return out
}

// TestTransactionBatches runs the whole pipeline with transaction markers:
// a transaction over two tables reaches a batched subscription of one of
// them as one frame of that table's events in commit order, under the xid,
// LSN and sequence of the marker the reader stored (which counts each
// table's events); a filtered batched subscription gets only its matches,
// and no frame for a transaction without any; a subscription without batch
// is unchanged. A 5,000-row transaction arrives in parts of
// TABLECAST_WS_BATCH_EVENTS, every row once, and a resume from a middle
// part's seq gets the rest exactly once. A gateway with the markers off
// refuses batch, naming the setting.
func TestTransactionBatches(t *testing.T) {
	const big, part = 5000, 500
	c := pgtestRequire(t)
	dbName, url := c.CreateDatabase(t)
	conn := connect(t, url)
	ctx := context.Background()
	if _, err := conn.Exec(ctx, `CREATE TABLE a (id int PRIMARY KEY, v text); CREATE TABLE b (id int PRIMARY KEY)`); err != nil {
		t.Fatal(err)
	}
	slot := fmt.Sprintf("tc_txb_%d", os.Getpid())
	dropSlotAtCleanup(t, url, slot)
	httpAddr, natsAddr, gwAddr := freeAddr(t), freeAddr(t), freeAddr(t)
	env := append(baseEnv(), "TABLECAST_DATABASE_URL="+url, "TABLECAST_SLOT="+slot, "TABLECAST_PUBLICATION=tc_txb",
		"TABLECAST_HTTP_ADDR="+httpAddr, "TABLECAST_NATS_LISTEN="+natsAddr, "TABLECAST_DATA_DIR="+t.TempDir(),
		"TABLECAST_TX_MARKERS=true", fmt.Sprintf("TABLECAST_WS_BATCH_EVENTS=%d", part), "TABLECAST_ROW_STATE=true")
	startProcess(t, env, "run")
	waitFor(t, time.Minute, "/readyz of tablecast run", func() bool {
		code, _, err := httpGet("http://" + httpAddr + "/readyz")
		return err == nil && code == 200
	})
	exec := func(sql string, args ...any) {
		t.Helper()
		if _, err := conn.Exec(ctx, sql, args...); err != nil {
			t.Fatal(err)
		}
	}
	subscribe := func(msg string) *websocket.Conn {
		t.Helper()
		ws := wsDial(t, "ws://"+httpAddr+"/ws")
		ws.SetReadLimit(64 << 20)
		wsSend(t, ws, msg)
		if f := readTxFrame(t, ws); f.Type != "subscribed" {
			t.Fatalf("%s answered %s", msg, f.raw)
		}
		return ws
	}
	all := subscribe(`{"type":"subscribe","id":"all","table":"public.a","batch":"transaction"}`)
	xs := subscribe(`{"type":"subscribe","id":"xs","table":"public.a","batch":"transaction","where":{"v":{"eq":"x"}}}`)
	plain := subscribe(`{"type":"subscribe","id":"plain","table":"public.a"}`)

	exec(`BEGIN; INSERT INTO a VALUES (1, 'x'), (2, 'y'), (3, 'x'); INSERT INTO b VALUES (1), (2); INSERT INTO a VALUES (4, 'y'); COMMIT`)
	f := readTxFrame(t, all)
	if got := f.ids(t); fmt.Sprint(got) != "[1 2 3 4]" || f.More || f.ID != "all" {
		t.Fatalf("frame %s: rows %v, want [1 2 3 4] in one frame", f.raw, got)
	}

	// The marker the frame was cut at, read from the stream.
	nc, err := nats.Connect("nats://" + natsAddr)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	js, _ := jetstream.New(nc)
	str, err := js.Stream(ctx, "TABLECAST")
	if err != nil {
		t.Fatal(err)
	}
	mk, err := str.GetMsg(ctx, f.Seq)
	if err != nil {
		t.Fatal(err)
	}
	var marker struct {
		XID    uint32 `json:"xid"`
		LSN    string `json:"lsn"`
		Events int    `json:"events"`
		Tables []struct {
			Table  string `json:"table"`
			Events int    `json:"events"`
		} `json:"tables"`
	}
	_ = json.Unmarshal(mk.Data, &marker)
	if mk.Subject != stream.TransactionSubject("tablecast", dbName) || marker.XID != f.XID || marker.LSN != f.LSN || marker.Events != 6 ||
		len(marker.Tables) != 2 || marker.Tables[0].Table != "a" || marker.Tables[0].Events != 4 || marker.Tables[1].Events != 2 {
		t.Fatalf("message %d under the frame: %s %s, want the transaction's marker (a 4, b 2)", f.Seq, mk.Subject, mk.Data)
	}

	if f := readTxFrame(t, xs); fmt.Sprint(f.ids(t)) != "[1 3]" || f.Seq != mk.Sequence {
		t.Fatalf("filtered frame %s: want rows 1 and 3 under the marker's seq", f.raw)
	}
	for want := 1; want <= 4; want++ {
		var ev struct {
			Data map[string]any `json:"data"`
		}
		fr := wsRead(t, plain)
		_ = json.Unmarshal(fr.Event, &ev)
		if fr.Type != "event" || ev.Data["id"] != float64(want) {
			t.Fatalf("subscription without batch got %+v %s, want the event of row %d", fr, fr.Event, want)
		}
	}

	exec(`INSERT INTO b VALUES (3)`)      // nothing of a
	exec(`INSERT INTO a VALUES (5, 'y')`) // nothing for xs
	exec(`INSERT INTO a VALUES (6, 'x')`) // for both
	if got := readTxFrame(t, all).ids(t); fmt.Sprint(got) != "[5]" {
		t.Fatalf("next frame holds rows %v, want [5]: the transaction of b alone sends nothing", got)
	}
	if got := readTxFrame(t, all).ids(t); fmt.Sprint(got) != "[6]" {
		t.Fatalf("next frame holds rows %v, want [6]", got)
	}
	if got := readTxFrame(t, xs).ids(t); fmt.Sprint(got) != "[6]" {
		t.Fatalf("filtered subscription's next frame holds rows %v, want [6]: none for a transaction without a match", got)
	}

	exec(`INSERT INTO a SELECT g, 'z' FROM generate_series(1001, 1000 + $1) g`, big)
	var parts []txFrameE2E
	next := 1001
	for {
		f := readTxFrame(t, all)
		for _, id := range f.ids(t) {
			if id != next {
				t.Fatalf("row %d in part %d, want %d: lost, repeated or out of order", id, len(parts), next)
			}
			next++
		}
		parts = append(parts, f)
		if !f.More {
			break
		}
		if len(f.Events) != part {
			t.Fatalf("part %d holds %d events, want %d", len(parts), len(f.Events), part)
		}
	}
	if next != 1001+big || len(parts) != big/part {
		t.Fatalf("%d rows in %d parts, want %d in %d", next-1001, len(parts), big, big/part)
	}
	mid := parts[4]
	resumed := subscribe(fmt.Sprintf(`{"type":"subscribe","id":"r","table":"public.a","batch":"transaction","from":%d}`, mid.Seq))
	next = 1001 + 5*part
	for {
		f := readTxFrame(t, resumed)
		for _, id := range f.ids(t) {
			if id != next {
				t.Fatalf("resumed from part 5's seq %d: row %d, want %d", mid.Seq, id, next)
			}
			next++
		}
		if !f.More {
			if f.Seq != parts[len(parts)-1].Seq || f.LSN != mid.LSN {
				t.Fatalf("resumed transaction ends with seq %d lsn %s, want the marker's %d and %s", f.Seq, f.LSN, parts[len(parts)-1].Seq, mid.LSN)
			}
			break
		}
	}
	if next != 1001+big {
		t.Fatalf("resume sent rows up to %d, want up to %d", next-1, 1000+big)
	}
	exec(`INSERT INTO a VALUES (10000, 'x')`)
	if got := readTxFrame(t, resumed).ids(t); fmt.Sprint(got) != "[10000]" {
		t.Fatalf("after the resumed transaction: rows %v, want [10000] (nothing twice)", got)
	}

	// A live view in transaction frames: after its rows and synced, each
	// transaction's events of the view, enter and leave among them.
	view := wsDial(t, "ws://"+httpAddr+"/ws")
	view.SetReadLimit(64 << 20)
	wsSend(t, view, `{"type":"subscribe","id":"v","table":"public.a","batch":"transaction","snapshot":true,"where":{"v":{"eq":"x"}}}`)
	var rows []int
	for {
		f := readTxFrame(t, view)
		if f.Type == "synced" {
			break
		}
		if f.Type != "subscribed" && f.Type != "rows" {
			t.Fatalf("view got %s before synced", f.raw)
		}
		for _, r := range f.Rows {
			if r.Removed {
				t.Fatalf("view's rows take out %v, which nothing changed: %s", r.Key, f.raw)
			}
			rows = append(rows, int(r.Data["id"].(float64)))
		}
	}
	// Row 10000 was committed just before: the view has it among its rows
	// when the row state had applied it, or else as its first transaction
	// frame after synced, never both and never neither.
	if fmt.Sprint(rows) == "[1 3 6]" {
		f := readTxFrame(t, view)
		if f.Type != "transaction" || len(f.Events) != 1 || f.Events[0].Event.Op != "create" || f.Events[0].Event.Data["id"] != float64(10000) {
			t.Fatalf("view's rows %v and then %s: want row 10000 in its transaction", rows, f.raw)
		}
		rows = append(rows, 10000)
	}
	if fmt.Sprint(rows) != "[1 3 6 10000]" {
		t.Fatalf("view's rows %v, want [1 3 6 10000]", rows)
	}
	exec(`BEGIN; UPDATE a SET v = 'y' WHERE id = 1; UPDATE a SET v = 'x' WHERE id = 2; INSERT INTO a VALUES (20000, 'x'), (20001, 'y');
		UPDATE a SET v = 'x' WHERE id = 20001; UPDATE a SET v = 'w' WHERE id = 4; COMMIT`)
	f = readTxFrame(t, view)
	var got []string
	for _, ev := range f.Events {
		id, _ := ev.Event.Data["id"].(float64)
		got = append(got, fmt.Sprintf("%s:%s:%d", ev.Event.Op, ev.View, int(id)))
	}
	if f.Type != "transaction" || f.More || fmt.Sprint(got) != "[update:leave:0 update:enter:2 create::20000 update:enter:20001]" {
		t.Fatalf("view's transaction frame %s: events %v, want the leave of 1, the enters of 2 and 20001 and the create of 20000", f.raw, got)
	}
	if f.Events[0].Seq == 0 || !strings.Contains(f.raw, `"key":{"id":1}`) {
		t.Fatalf("leave of row 1 without its key: %s", f.raw)
	}

	// Views that start while transactions stream: each keeps the rows that
	// match, from its rows and then its transaction frames (a transaction
	// never split but into parts with more), whatever the moment it
	// started at.
	exec(`INSERT INTO a SELECT g, 'y' FROM generate_series(30000, 30049) g`)
	wctx, stopWriter := context.WithCancel(ctx)
	writer := make(chan error, 1)
	go func() {
		wconn := connect(t, url)
		for i := 0; wctx.Err() == nil; i++ {
			tx, err := wconn.Begin(wctx)
			if err == nil {
				const flip = `UPDATE a SET v = CASE WHEN random() < 0.5 THEN 'x' ELSE 'y' END WHERE id = $1`
				if _, err = tx.Exec(wctx, flip, 30000+i%50); err == nil {
					_, err = tx.Exec(wctx, flip, 30000+(i*7+3)%50)
				}
				if err == nil {
					err = tx.Commit(wctx)
				}
			}
			if err != nil && wctx.Err() == nil {
				writer <- err
				return
			}
			time.Sleep(2 * time.Millisecond)
		}
		writer <- nil
	}()
	type liveView struct {
		ws   *websocket.Conn
		rows map[int]bool
	}
	var views []*liveView
	for i := range 3 {
		time.Sleep(300 * time.Millisecond)
		lv := &liveView{ws: wsDial(t, "ws://"+httpAddr+"/ws"), rows: map[int]bool{}}
		lv.ws.SetReadLimit(64 << 20)
		wsSend(t, lv.ws, fmt.Sprintf(`{"type":"subscribe","id":"v%d","table":"public.a","batch":"transaction","snapshot":true,"where":{"v":{"eq":"x"},"id":{"gte":30000}}}`, i))
		views = append(views, lv)
	}
	time.Sleep(500 * time.Millisecond)
	stopWriter()
	if err := <-writer; err != nil {
		t.Fatal(err)
	}
	exec(`INSERT INTO a VALUES (99999, 'x')`) // the end
	for i, lv := range views {
		var lastLSN string
		more := false
		for done := false; !done; {
			f := readTxFrame(t, lv.ws)
			switch f.Type {
			case "subscribed", "synced":
			case "rows":
				// The rows read, then the changes stored meanwhile
				// (some taking rows out).
				for _, r := range f.Rows {
					if r.Removed {
						delete(lv.rows, int(r.Key["id"].(float64)))
						continue
					}
					id := int(r.Data["id"].(float64))
					lv.rows[id] = true
					done = done || id == 99999 // the end, stored before the rows were read
				}
			case "transaction":
				if more && f.LSN != lastLSN {
					t.Fatalf("view %d: a frame of transaction %s after a part of %s with more", i, f.LSN, lastLSN)
				}
				if !more && f.LSN == lastLSN {
					t.Fatalf("view %d: transaction %s in two frames without more", i, f.LSN)
				}
				lastLSN, more = f.LSN, f.More
				f.ids(t) // each event of the frame's transaction, in order
				for _, ev := range f.Events {
					id, _ := ev.Event.Data["id"].(float64)
					switch {
					case ev.View == "leave", ev.Event.Op == "delete":
						delete(lv.rows, leaveKey(t, f.raw, ev.Seq))
					default:
						lv.rows[int(id)] = true
					}
					if id == 99999 {
						done = true
					}
				}
			default:
				t.Fatalf("view %d got %s", i, f.raw)
			}
		}
		var want []int
		r, err := conn.Query(ctx, `SELECT id FROM a WHERE v = 'x' AND id >= 30000 ORDER BY id`)
		if err != nil {
			t.Fatal(err)
		}
		for r.Next() {
			var id int
			_ = r.Scan(&id)
			want = append(want, id)
		}
		var got []int
		for id := range lv.rows {
			got = append(got, id)
		}
		slices.Sort(got)
		if fmt.Sprint(got) != fmt.Sprint(want) {
			t.Fatalf("view %d holds %v, the table %v", i, got, want)
		}
	}

	// A gateway with the markers off.
	startProcess(t, append(baseEnv(), "TABLECAST_NATS_URL=nats://"+natsAddr, "TABLECAST_HTTP_ADDR="+gwAddr), "gateway")
	waitFor(t, time.Minute, "/readyz of tablecast gateway", func() bool {
		code, _, err := httpGet("http://" + gwAddr + "/readyz")
		return err == nil && code == 200
	})
	off := wsDial(t, "ws://"+gwAddr+"/ws")
	wsSend(t, off, `{"type":"subscribe","id":"b","table":"public.a","batch":"transaction"}`)
	if f := readTxFrame(t, off); f.Type != "error" || f.Code != "batch_unavailable" || !strings.Contains(f.Message, "TABLECAST_TX_MARKERS") {
		t.Fatalf("gateway without markers answered %s, want batch_unavailable naming TABLECAST_TX_MARKERS", f.raw)
	}
}
