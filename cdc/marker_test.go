package cdc

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pglogrepl"

	"github.com/tablecast/tablecast/internal/natstest"
	"github.com/tablecast/tablecast/schema"
	"github.com/tablecast/tablecast/stream"
)

// markerBody is a transaction marker as docs/contract.md describes it.
type markerBody struct {
	XID        uint32 `json:"xid"`
	LSN        string `json:"lsn"`
	CommitTime string `json:"commit_time"`
	Events     int    `json:"events"`
	Tables     []struct {
		Schema string `json:"schema"`
		Table  string `json:"table"`
		Events int    `json:"events"`
	} `json:"tables"`
	Topics []struct {
		Topic    string `json:"topic"`
		Messages int    `json:"messages"`
	} `json:"topics"`
}

// txOf is what the stream holds of one transaction: its messages before
// the marker, and the marker.
type txOf struct {
	lsn    string
	events []natstest.Stored
	marker *natstest.Stored
}

// splitTransactions groups the stream's messages by transaction, checking
// that every message of a transaction comes before its marker and none
// after, and that each marker's id is its commit LSN's with
// schema.MarkerOrdinal.
func splitTransactions(t *testing.T, msgs []natstest.Stored, markerSubject string) []*txOf {
	t.Helper()
	var out []*txOf
	byLSN := map[string]*txOf{}
	for i := range msgs {
		m := &msgs[i]
		var env struct {
			LSN string `json:"lsn"`
		}
		if err := json.Unmarshal(m.Data, &env); err != nil {
			t.Fatalf("message %d: %v", m.Seq, err)
		}
		lsn := env.LSN
		if lsn == "" {
			// A topic message: its id names its transaction's commit LSN.
			commit, _, ok := schema.ParseEventID(m.MsgID)
			if !ok {
				t.Fatalf("message %d has id %q", m.Seq, m.MsgID)
			}
			lsn = pglogrepl.LSN(commit).String()
		}
		tx := byLSN[lsn]
		if tx == nil {
			tx = &txOf{lsn: lsn}
			byLSN[lsn] = tx
			out = append(out, tx)
		}
		if tx.marker != nil {
			t.Fatalf("message %d (%s) of transaction %s comes after its marker %d, or the marker is there twice", m.Seq, m.Subject, lsn, tx.marker.Seq)
		}
		if m.Subject != markerSubject {
			tx.events = append(tx.events, *m)
			continue
		}
		tx.marker = m
		lsnN, _ := pglogrepl.ParseLSN(lsn)
		if want := fmt.Sprintf("%016X-%X", uint64(lsnN), uint64(schema.MarkerOrdinal)); m.MsgID != want {
			t.Errorf("marker %d has id %s, want %s", m.Seq, m.MsgID, want)
		}
	}
	return out
}

// checkMarker checks that tx's marker counts its events per table and
// topic, and carries their transaction.
func checkMarker(t *testing.T, tx *txOf) markerBody {
	t.Helper()
	if tx.marker == nil {
		t.Fatalf("transaction %s (%d events) has no marker", tx.lsn, len(tx.events))
	}
	var body markerBody
	if err := json.Unmarshal(tx.marker.Data, &body); err != nil {
		t.Fatalf("marker %s: %v", tx.marker.Data, err)
	}
	tables, topics := map[string]int{}, map[string]int{}
	var xid uint32
	var at string
	for _, m := range tx.events {
		if i := strings.Index(m.Subject, ".topic."); i >= 0 {
			topics[m.Subject[i+len(".topic."):]]++
			continue
		}
		var env struct {
			Schema, Table, CommitTime string
			XID                       uint32
		}
		_ = json.Unmarshal(m.Data, &env)
		var ct struct {
			CommitTime string `json:"commit_time"`
		}
		_ = json.Unmarshal(m.Data, &ct)
		tables[env.Schema+"."+env.Table]++
		xid, at = env.XID, ct.CommitTime
	}
	gotTables, gotTopics := map[string]int{}, map[string]int{}
	for _, tb := range body.Tables {
		gotTables[tb.Schema+"."+tb.Table] = tb.Events
	}
	for _, tp := range body.Topics {
		gotTopics[stream.Token(tp.Topic)] = tp.Messages
	}
	if fmt.Sprint(gotTables) != fmt.Sprint(tables) || fmt.Sprint(gotTopics) != fmt.Sprint(topics) || body.Events != len(tx.events) {
		t.Errorf("marker %s counts tables %v topics %v events %d; the stream holds tables %v topics %v, %d messages",
			tx.marker.Data, gotTables, gotTopics, body.Events, tables, topics, len(tx.events))
	}
	if body.LSN != tx.lsn || (xid != 0 && body.XID != xid) || (at != "" && body.CommitTime != at) {
		t.Errorf("marker %s: transaction xid %d lsn %s commit_time %s, want xid %d lsn %s commit_time %s", tx.marker.Data, body.XID, body.LSN, body.CommitTime, xid, tx.lsn, at)
	}
	return body
}

// TestTransactionMarkers: with TxMarkers, each transaction that published
// anything is followed in the stream by one marker on the database's
// transaction subject, counting its events per table and topic. A
// transaction that publishes nothing (rolled back, or of no published
// table) has none. A reader restarted in the middle of a transaction, and
// replaying transactions whose markers the stream holds, stores every
// marker exactly once (the duplicate window is too short to help): the
// replayed transaction's marker counts the events stored before the
// restart too.
func TestTransactionMarkers(t *testing.T) {
	t.Parallel() // see parallelTests
	const big = 20_000
	db := newTestDB(t, `CREATE TABLE a (id int PRIMARY KEY, pad text)`, `CREATE TABLE b (id int PRIMARY KEY)`, `CREATE TABLE unpublished (v int)`)
	n := &natsEnv{natstest.Start(t)}
	ctx := context.Background()
	if _, err := stream.EnsureStream(ctx, n.JS, stream.StreamConfig{Name: "TABLECAST", Prefix: testPrefix, DuplicateWindow: 100 * time.Millisecond}); err != nil {
		t.Fatal(err)
	}
	cfg := db.config()
	cfg.TxMarkers = true
	r := startReader(t, cfg, n)
	// Nothing of what follows is confirmed to PostgreSQL: the second
	// reader replays it all, over what the stream holds.
	holdConfirmation(t, db)

	db.exec(t, `BEGIN; INSERT INTO a VALUES (1), (2), (3); INSERT INTO b VALUES (1), (2); INSERT INTO a VALUES (4);
		SELECT pg_logical_emit_message(true, 'tablecast:order.events', '{"n":1}'); COMMIT`)
	db.exec(t, `BEGIN; INSERT INTO b VALUES (3); ROLLBACK`)
	db.exec(t, `INSERT INTO unpublished VALUES (1)`)
	db.exec(t, `INSERT INTO b VALUES (4)`)
	db.exec(t, `INSERT INTO a SELECT g, repeat('x', 100) FROM generate_series(100, 99 + $1) g`, big)
	waitFor(t, 60*time.Second, "a quarter of the large transaction stored", func() bool { return n.Count("TABLECAST") >= 9+big/4 })
	r.stop(t)
	stored := n.Count("TABLECAST")
	if stored >= 9+big {
		t.Fatalf("the stream holds %d messages: the reader finished the large transaction before it was stopped", stored)
	}
	time.Sleep(300 * time.Millisecond) // past the duplicate window

	r2 := startReader(t, cfg, n)
	n.waitCount(t, 9+big+1, 60*time.Second)
	db.exec(t, `INSERT INTO b VALUES (5)`)
	n.waitCount(t, 9+big+3, 30*time.Second)
	time.Sleep(500 * time.Millisecond) // a repeat would be stored by now
	msgs := n.ReadAll(t, "TABLECAST")
	markerSubject := stream.TransactionSubject(testPrefix, db.name)
	txs := splitTransactions(t, msgs, markerSubject)
	if len(txs) != 4 {
		t.Fatalf("the stream holds %d transactions, want 4 (the rolled back one and the unpublished table's have nothing)", len(txs))
	}
	var markers int
	for _, m := range msgs {
		if m.Subject == markerSubject {
			markers++
		}
	}
	if markers != 4 {
		t.Fatalf("the stream holds %d markers, want 4: one per transaction", markers)
	}
	first := checkMarker(t, txs[0])
	if len(first.Tables) != 2 || first.Tables[0].Table != "a" || first.Tables[0].Events != 4 || first.Tables[1].Events != 2 || len(first.Topics) != 1 || first.Topics[0].Topic != "order.events" || first.Events != 7 {
		t.Errorf("first marker %s: want a 4, b 2 (in the order they first changed) and one message of order.events", txs[0].marker.Data)
	}
	checkMarker(t, txs[1])
	if body := checkMarker(t, txs[2]); body.Events != big {
		t.Errorf("the large transaction's marker counts %d events, want %d (those stored before the restart included)", body.Events, big)
	}
	checkMarker(t, txs[3])
	for i, m := range txs[2].events {
		var env struct{ Data struct{ ID int } }
		_ = json.Unmarshal(m.Data, &env)
		if env.Data.ID != 100+i {
			t.Fatalf("event %d of the large transaction is row %d: lost, repeated or out of order", i, env.Data.ID)
		}
	}
	if v, _ := r2.metric("tablecast_cdc_events_skipped_total", ""); v < 9 {
		t.Errorf("the second reader skipped %v messages: it did not replay what the stream held", v)
	}
	if v, _ := r2.metric("tablecast_cdc_transaction_markers_published_total", ""); v != 2 {
		t.Errorf("the second reader published %v markers, want 2 (the large transaction's and the last)", v)
	}
}

// TestMarkerLeavesOutDeadLetteredMessages: a custom-topic message too large
// to publish is dead-lettered, and its transaction's marker counts what the
// stream holds of the transaction, without it: it counted the message, so
// a consumer checking the transaction's messages against the marker waited
// for one that never comes, and a transaction whose only message was
// dead-lettered had a marker of one message and nothing before it.
func TestMarkerLeavesOutDeadLetteredMessages(t *testing.T) {
	t.Parallel() // see parallelTests
	db := newTestDB(t, `CREATE TABLE a (id int PRIMARY KEY)`)
	n := startNATS(t)
	cfg := db.config()
	cfg.TxMarkers = true
	cfg.MaxEventBytes = 4096
	startReader(t, cfg, n)
	const big = `'{"pad":"' || repeat('x', 8192) || '"}'` // over MaxEventBytes
	db.exec(t, `BEGIN; INSERT INTO a VALUES (1);
		SELECT pg_logical_emit_message(true, 'tablecast:big', `+big+`);
		SELECT pg_logical_emit_message(true, 'tablecast:small', '{"n":1}'); COMMIT`)
	db.exec(t, `SELECT pg_logical_emit_message(true, 'tablecast:big', `+big+`)`)
	db.exec(t, `INSERT INTO a VALUES (2)`)
	n.waitCount(t, 5, 30*time.Second)  // a, small, marker; a, marker
	time.Sleep(300 * time.Millisecond) // a marker for the second would be stored by now
	msgs := n.ReadAll(t, "TABLECAST")
	txs := splitTransactions(t, msgs, stream.TransactionSubject(testPrefix, db.name))
	if len(txs) != 2 {
		t.Fatalf("the stream holds %d transactions, want 2 (the one whose only message was dead-lettered has nothing)", len(txs))
	}
	first := checkMarker(t, txs[0])
	if first.Events != 2 || len(first.Topics) != 1 || first.Topics[0].Topic != "small" {
		t.Errorf("first marker %s: want 2 events (the row and the small message), the topic small alone", txs[0].marker.Data)
	}
	checkMarker(t, txs[1])
	if len(msgs) != 5 {
		t.Errorf("the stream holds %d messages, want 5", len(msgs))
	}
}

// TestNoTransactionMarkersByDefault: without TxMarkers, nothing but the
// events is published.
func TestNoTransactionMarkersByDefault(t *testing.T) {
	t.Parallel() // see parallelTests
	db := newTestDB(t, `CREATE TABLE a (id int PRIMARY KEY)`)
	n := startNATS(t)
	startReader(t, db.config(), n)
	db.exec(t, `INSERT INTO a VALUES (1), (2)`)
	db.exec(t, `INSERT INTO a VALUES (3)`)
	n.readAll(t, 3, 15*time.Second)
	time.Sleep(300 * time.Millisecond)
	for _, e := range n.fetch(t) {
		if e.Op != "create" {
			t.Errorf("message %d on %s: want only the events", e.Seq, e.Subject)
		}
	}
}

func TestAppendMarker(t *testing.T) {
	t.Parallel() // see parallelTests
	var txn schema.Txn
	txn.Reset(0x16B3748, 731, time.Date(2026, 12, 5, 9, 0, 0, 123456000, time.UTC))
	var c txCounts
	rel := func(s, name string) *relation {
		return &relation{table: &schema.Table{Schema: s, Name: name}, txKey: s + "\x00" + name}
	}
	orders, items := rel("public", "orders"), rel("sales", `odd"name`)
	for _, r := range []*relation{orders, orders, items, orders} {
		c.addTable(r)
	}
	c.addTopic("order.events")
	got := string(appendMarker(nil, &txn, &c, true))
	want := `{"xid":731,"lsn":"0/16B3748","commit_time":"2026-12-05T09:00:00.123456Z","events":5,` +
		`"tables":[{"schema":"public","table":"orders","events":3},{"schema":"sales","table":"odd\"name","events":1}],` +
		`"topics":[{"topic":"order.events","messages":1}]}`
	if got != want {
		t.Errorf("marker\n%s\nwant\n%s", got, want)
	}
	// Counts too many for one message: the total alone, and a flag.
	short := string(appendMarker(nil, &txn, &c, false))
	if want := `{"xid":731,"lsn":"0/16B3748","commit_time":"2026-12-05T09:00:00.123456Z","events":5,"counts_left_out":true}`; short != want {
		t.Errorf("marker without counts\n%s\nwant\n%s", short, want)
	}
	if id := string(txn.AppendMarkerID(nil)); id != "00000000016B3748-100000000" {
		t.Errorf("marker id %s", id)
	}
	if lsn, ord, ok := schema.ParseEventID("00000000016B3748-100000000"); !ok || lsn != 0x16B3748 || ord != schema.MarkerOrdinal {
		t.Errorf("ParseEventID of a marker id: %x %x %v", lsn, ord, ok)
	}
	// Many tables: counted through the index.
	c.reset()
	for i := range 40 {
		c.addTable(rel("s", fmt.Sprint(i%20)))
	}
	if c.n != 40 || len(c.list) != 20 || c.list[7].n != 2 {
		t.Errorf("counts of 40 events over 20 tables: n %d, %d tables, %+v", c.n, len(c.list), c.list[7])
	}
}
