package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/tablecast/tablecast/internal/natstest"
	"github.com/tablecast/tablecast/stream"
)

// oldRowsEvent is an event of the old rows tests, its claim resolved.
type oldRowsEvent struct {
	ID        string          `json:"id"`
	Op        string          `json:"op"`
	Table     string          `json:"table"`
	Key       json.RawMessage `json:"key"`
	Data      json.RawMessage `json:"data"`
	Old       json.RawMessage `json:"old"`
	Unchanged []string        `json:"unchanged"`
	claimed   bool
}

// readOldRowsEvents reads every event of db's public tables the stream
// holds, in order, claims resolved.
func readOldRowsEvents(t *testing.T, js jetstream.JetStream, db string) []oldRowsEvent {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	str, err := js.Stream(ctx, "TABLECAST")
	if err != nil {
		t.Fatal(err)
	}
	cons, err := str.OrderedConsumer(ctx, jetstream.OrderedConsumerConfig{FilterSubjects: []string{oldRowsSubjects(db)}})
	if err != nil {
		t.Fatal(err)
	}
	var out []oldRowsEvent
	for {
		batch, err := cons.FetchNoWait(500)
		if err != nil {
			t.Fatal(err)
		}
		n := 0
		for msg := range batch.Messages() {
			n++
			data := msg.Data()
			claimed := bytes.Contains(data, []byte(`"`+stream.ClaimMember+`":`))
			if claimed {
				if data, err = stream.ResolveEvent(ctx, js, data); err != nil {
					t.Fatal(err)
				}
			}
			var ev oldRowsEvent
			if err := json.Unmarshal(data, &ev); err != nil {
				t.Fatalf("event %s: %v", msg.Data(), err)
			}
			ev.claimed = claimed
			out = append(out, ev)
		}
		if batch.Error() != nil {
			t.Fatal(batch.Error())
		}
		if n == 0 {
			return out
		}
	}
}

// countOldRowsEvents returns how many events of db's public tables the
// stream holds (the messages readOldRowsEvents reads).
func countOldRowsEvents(t *testing.T, js jetstream.JetStream, db string) int {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	n, err := storedOn(ctx, js, oldRowsSubjects(db))
	if err != nil {
		t.Fatal(err)
	}
	return int(n)
}

// storedOn returns how many messages the event stream holds on the
// subjects filter matches. The count is the sum of State.Subjects: a
// subject filter does not narrow State.Msgs, which counts the whole stream.
func storedOn(ctx context.Context, js jetstream.JetStream, filter string) (uint64, error) {
	str, err := js.Stream(ctx, "TABLECAST")
	if err != nil {
		return 0, fmt.Errorf("open stream TABLECAST: %w", err)
	}
	info, err := str.Info(ctx, jetstream.WithSubjectFilter(filter))
	if err != nil {
		return 0, fmt.Errorf("read stream TABLECAST on %s: %w", filter, err)
	}
	var n uint64
	for _, c := range info.State.Subjects {
		n += c
	}
	return n, nil
}

// oldRowsSubjects are the subjects of the events of db's public tables.
func oldRowsSubjects(db string) string { return "tablecast." + stream.Token(db) + ".public.>" }

// sameJSON reports whether two JSON values are equal as values.
func sameJSON(a, b json.RawMessage) bool {
	var x, y any
	if json.Unmarshal(a, &x) != nil || json.Unmarshal(b, &y) != nil {
		return false
	}
	xa, _ := json.Marshal(x)
	ya, _ := json.Marshal(y)
	return bytes.Equal(xa, ya)
}

// checkOldRowsChain checks the events of an opted table in stream order:
// every update and delete of a row whose previous version is known (its
// last create, read or update, published whole) carries exactly that
// version as old, and an update carries every column in data and no
// unchanged; a row whose version is not known (its last event was a
// claim: the row state keeps no data of a row too large for one message)
// is published as PostgreSQL sent it. It returns the updates and deletes
// checked.
func checkOldRowsChain(t *testing.T, evs []oldRowsEvent, table string, columns int) int {
	t.Helper()
	type version struct {
		data  json.RawMessage
		known bool
	}
	prev := map[string]version{}
	keyOf := func(m json.RawMessage) string {
		var v map[string]any
		_ = json.Unmarshal(m, &v)
		k, _ := json.Marshal(map[string]any{"id": v["id"]})
		return string(k)
	}
	checked := 0
	for _, ev := range evs {
		if ev.Table != table {
			continue
		}
		key := keyOf(ev.Key)
		switch ev.Op {
		case "truncate":
			clear(prev)
			continue
		case "create", "read":
			prev[key] = version{ev.Data, !ev.claimed}
			continue
		}
		p, ok := prev[key]
		checked++
		switch {
		case !ok:
			t.Fatalf("event %s: %s of a row never seen", ev.ID, ev.Op)
		case p.known && !sameJSON(ev.Old, p.data):
			t.Errorf("event %s (%s of %s): old %s, want the previous version %s", ev.ID, ev.Op, key, ev.Old, p.data)
		case !p.known && ev.Op == "update" && ev.Old != nil:
			t.Errorf("event %s (%s of %s, previous version unknown): old %s, want none (as PostgreSQL sent it)", ev.ID, ev.Op, key, ev.Old)
		}
		if ev.Op == "update" {
			var data map[string]any
			_ = json.Unmarshal(ev.Data, &data)
			if p.known && (len(data) != columns || len(ev.Unchanged) > 0) {
				t.Errorf("event %s: update with data of %d columns (want %d) and unchanged %q", ev.ID, len(data), columns, ev.Unchanged)
			}
			delete(prev, key)
			prev[keyOf(ev.Data)] = version{ev.Data, !ev.claimed && len(ev.Unchanged) == 0}
		} else {
			delete(prev, key)
		}
	}
	return checked
}

// metricValue reads a counter from a process's /metrics; 0 when absent.
func metricValue(t *testing.T, httpAddr, series string) float64 {
	t.Helper()
	_, body, err := httpGet("http://" + httpAddr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile(`(?m)^` + regexp.QuoteMeta(series) + ` (\S+)$`).FindStringSubmatch(body)
	if m == nil {
		return 0
	}
	v, _ := strconv.ParseFloat(m[1], 64)
	return v
}

// TestOldRows: with TABLECAST_OLD_ROWS_TABLES, updates and deletes of a
// table under the default replica identity carry the complete previous
// version of the row as old, and updates the unchanged TOASTed value in
// data (no unchanged), through a key change, an event too large for one
// message (a claim), a cache of 16 KiB that holds a handful of versions,
// a restart with rows the new process finds only in the row state (while
// the state may still be applying what the first process published), and
// truncates; a table not opted in carries what PostgreSQL sent.
func TestOldRows(t *testing.T) {
	c := pgtestRequire(t)
	db, url := c.CreateDatabase(t)
	conn := connect(t, url)
	ctx := context.Background()
	// body: 3,200 bytes of md5 hex, which pglz does not compress: stored
	// out of line (TOAST), so an update that leaves it alone does not send
	// it.
	const body = `(SELECT string_agg(md5(g::text || $1::text), '') FROM generate_series(1, 100) g)`
	if _, err := conn.Exec(ctx, `CREATE TABLE docs (id int PRIMARY KEY, n int NOT NULL, body text NOT NULL);
		CREATE TABLE plain (id int PRIMARY KEY, n int NOT NULL, body text NOT NULL)`); err != nil {
		t.Fatal(err)
	}
	exec := func(sql string, args ...any) {
		t.Helper()
		if _, err := conn.Exec(ctx, sql, args...); err != nil {
			t.Fatalf("%s: %v", sql, err)
		}
	}
	slot := fmt.Sprintf("tc_oldrows_%d", os.Getpid())
	dropSlotAtCleanup(t, url, slot)
	// A stock NATS server: a maximum payload of 1 MiB, and it outlives
	// the processes under test, so the row state can be deleted between
	// them.
	n := natstest.StartStock(t)
	js := n.JS
	httpAddr := freeAddr(t)
	env := append(baseEnv(), "TABLECAST_ROW_STATE=true", "TABLECAST_OLD_ROWS_TABLES=public.docs", "TABLECAST_OLD_ROWS_CACHE_BYTES=16384",
		"TABLECAST_DATABASE_URL="+url, "TABLECAST_SLOT="+slot, "TABLECAST_PUBLICATION=tc_oldrows",
		"TABLECAST_HTTP_ADDR="+httpAddr, "TABLECAST_NATS_URL="+n.URL())
	ready := func() {
		t.Helper()
		waitFor(t, time.Minute, "/readyz of tablecast cdc", func() bool {
			code, _, err := httpGet("http://" + httpAddr + "/readyz")
			return err == nil && code == 200
		})
	}
	p := startKeep(t, env, "cdc")
	ready()
	waitEvents := func(n int) []oldRowsEvent {
		t.Helper()
		var evs []oldRowsEvent
		// The stream's count of db's public events is polled, and the
		// events (a thousand of 3 KB and more, claims resolved) read once
		// there are enough: reading them all at each poll took a core from
		// the process under test.
		waitFor(t, time.Minute, fmt.Sprintf("%d events", n), func() bool {
			if countOldRowsEvents(t, js, db) < n {
				return false
			}
			evs = readOldRowsEvents(t, js, db)
			return len(evs) >= n
		})
		return evs
	}

	for _, tbl := range []string{"docs", "plain"} {
		exec(`INSERT INTO `+tbl+` VALUES (1, 0, `+body+`)`, "a")
		exec(`UPDATE ` + tbl + ` SET n = 1 WHERE id = 1`)
		exec(`UPDATE ` + tbl + ` SET id = 2 WHERE id = 1`)
		exec(`DELETE FROM ` + tbl + ` WHERE id = 2`)
	}
	evs := waitEvents(8)
	// The schema registry says which table's events carry old rows, so
	// that rules reading the old row are accepted on it.
	schemas, err := js.KeyValue(ctx, "TABLECAST_SCHEMAS")
	if err != nil {
		t.Fatal(err)
	}
	for tbl, want := range map[string]bool{"docs": true, "plain": false} {
		entry, err := schemas.Get(ctx, stream.SchemaKey(db, "public", tbl))
		if err != nil {
			t.Fatalf("shape of %s: %v", tbl, err)
		}
		var shape struct {
			OldRows bool `json:"old_rows"`
		}
		if err := json.Unmarshal(entry.Value(), &shape); err != nil || shape.OldRows != want {
			t.Errorf("shape of %s: old_rows %v (%v), want %v: %s", tbl, shape.OldRows, err, want, entry.Value())
		}
	}
	var full string
	if err := conn.QueryRow(ctx, `SELECT `+body, "a").Scan(&full); err != nil {
		t.Fatal(err)
	}
	bodyJSON, _ := json.Marshal(full)
	row := func(id, n int) json.RawMessage {
		return json.RawMessage(fmt.Sprintf(`{"id":%d,"n":%d,"body":%s}`, id, n, bodyJSON))
	}
	for i, want := range []struct {
		old, data json.RawMessage
		unchanged []string
	}{
		{nil, row(1, 0), nil},
		{row(1, 0), row(1, 1), nil},
		{row(1, 1), row(2, 1), nil},
		{row(2, 1), nil, nil},
		// Not opted in: as PostgreSQL sent it.
		{nil, row(1, 0), nil},
		{nil, json.RawMessage(`{"id":1,"n":1}`), []string{"body"}},
		{json.RawMessage(`{"id":1}`), json.RawMessage(`{"id":2,"n":1}`), []string{"body"}},
		{json.RawMessage(`{"id":2}`), nil, nil},
	} {
		ev := evs[i]
		if (ev.Old == nil) != (want.old == nil) || want.old != nil && !sameJSON(ev.Old, want.old) {
			t.Errorf("event %d (%s %s): old %.120s, want %.120s", i, ev.Op, ev.Table, ev.Old, want.old)
		}
		if (ev.Data == nil) != (want.data == nil) || want.data != nil && !sameJSON(ev.Data, want.data) {
			t.Errorf("event %d (%s %s): data %.120s, want %.120s", i, ev.Op, ev.Table, ev.Data, want.data)
		}
		if strings.Join(ev.Unchanged, ",") != strings.Join(want.unchanged, ",") {
			t.Errorf("event %d (%s %s): unchanged %q, want %q", i, ev.Op, ev.Table, ev.Unchanged, want.unchanged)
		}
	}

	// An update whose old row makes it larger than a NATS message (640 KB
	// twice, beyond the server's 1 MiB) is a
	// claim with the old row whole; the row state keeps no data for it,
	// so the next update goes as PostgreSQL sent it.
	exec(`INSERT INTO docs VALUES (9999, 0, (SELECT string_agg(md5(g::text), '') FROM generate_series(1, 20000) g))`)
	exec(`UPDATE docs SET n = 1 WHERE id = 9999`)
	exec(`UPDATE docs SET n = 2 WHERE id = 9999`)
	evs = waitEvents(11)
	if claim := evs[9]; !claim.claimed || claim.Old == nil || !bytes.Contains(claim.Old, []byte(`"body"`)) || !bytes.Contains(claim.Data, []byte(`"body"`)) {
		t.Errorf("update of a 640 KB row: claimed %v, old %.80s, data %.80s; want a claim with body in old and data", claim.claimed, claim.Old, claim.Data)
	}
	if next := evs[10]; next.Old != nil || strings.Join(next.Unchanged, ",") != "body" {
		t.Errorf("update after a claim: old %.80s, unchanged %q; want no old and unchanged [body]", next.Old, next.Unchanged)
	}

	// Many versions of 50 rows in one transaction, across a cache of a
	// handful: the reader waits for the row state to apply them.
	exec(`INSERT INTO docs SELECT g, 0, ` + strings.ReplaceAll(body, "$1::text", "g::text") + ` FROM generate_series(100, 149) g`)
	tx, err := conn.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for range 20 {
		if _, err := tx.Exec(ctx, `UPDATE docs SET n = n + 1 WHERE id BETWEEN 100 AND 149`); err != nil {
			t.Fatal(err)
		}
	}
	if err := tx.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	waitEvents(11 + 50 + 1000)
	if waits := metricValue(t, httpAddr, `tablecast_cdc_old_rows_waits_total{for="cache"}`); waits == 0 {
		t.Errorf("no wait for room in a 16 KiB cache through 1,000 updates of 3 KB rows")
	}
	// The rows change while the reader is stopped, and the next process
	// reads their previous versions from the row state (not its cache).
	p.stop(t)
	exec(`UPDATE docs SET n = n + 1 WHERE id BETWEEN 100 AND 149`)
	exec(`DELETE FROM docs WHERE id = 149`)
	// The row state is deleted: the next process builds it again from the
	// event stream, and reads no row of it before it has applied every
	// event the stream held.
	if err := js.DeleteStream(ctx, "TABLECAST_ROWS"); err != nil {
		t.Fatal(err)
	}
	p = startKeep(t, env, "cdc")
	ready()
	waitEvents(11 + 50 + 1000 + 51)
	if lookups := metricValue(t, httpAddr, "tablecast_cdc_old_rows_lookups_total"); lookups < 50 {
		t.Errorf("%v rows read from the row state after the restart; want the 50 updated", lookups)
	}
	if batches := metricValue(t, httpAddr, "tablecast_cdc_old_rows_batch_reads_total"); batches < 1 || batches > 10 {
		t.Errorf("%v batch reads of the row state for the 50 rows of one update; want a few", batches)
	}

	// Truncates: a row inserted again after one has no other previous
	// version than its new one, with or without the truncate applied.
	exec(`TRUNCATE docs`)
	exec(`INSERT INTO docs VALUES (100, 7, `+body+`)`, "b")
	exec(`UPDATE docs SET n = 8 WHERE id = 100`)
	exec(`BEGIN; TRUNCATE docs; INSERT INTO docs VALUES (100, 9, 'short'); UPDATE docs SET n = 10 WHERE id = 100; COMMIT`)
	exec(`UPDATE docs SET n = 11 WHERE id = 101`) // no such row: nothing
	exec(`INSERT INTO docs VALUES (101, 0, 'x'); UPDATE docs SET n = 12 WHERE id = 100; DELETE FROM docs WHERE id = 100`)
	evs = waitEvents(11 + 50 + 1000 + 51 + 9)
	if n := checkOldRowsChain(t, evs, "docs", 3); n != 3+2+1000+51+4 {
		t.Errorf("checked %d updates and deletes; want every one", n)
	}
}

// TestOldRowsSoakLargeTransaction (TABLECAST_SOAK=1): a transaction of
// TABLECAST_OLD_ROWS_SOAK_ROWS inserts (default 300,000), then one that
// updates every row, on a table with old rows and a cache of 1 MiB: every
// update carries its row's previous version, and the cache never holds
// more than its budget (and one version): the reader waits for the row
// state instead. The process's peak resident memory is logged.
func TestOldRowsSoakLargeTransaction(t *testing.T) {
	if os.Getenv("TABLECAST_SOAK") != "1" {
		t.Skip("soak test: set TABLECAST_SOAK=1")
	}
	rows := 300000
	if v, err := strconv.Atoi(os.Getenv("TABLECAST_OLD_ROWS_SOAK_ROWS")); err == nil && v > 0 {
		rows = v
	}
	c := pgtestRequire(t)
	db, url := c.CreateDatabase(t)
	conn := connect(t, url)
	ctx := context.Background()
	if _, err := conn.Exec(ctx, `CREATE TABLE big (id int PRIMARY KEY, n int NOT NULL, pad text NOT NULL)`); err != nil {
		t.Fatal(err)
	}
	slot := fmt.Sprintf("tc_oldbig_%d", os.Getpid())
	dropSlotAtCleanup(t, url, slot)
	n := natstest.StartProcess(t)
	httpAddr := freeAddr(t)
	const budget = 1 << 20
	p := startKeep(t, append(baseEnv(), "TABLECAST_ROW_STATE=true", "TABLECAST_OLD_ROWS_TABLES=public.big",
		"TABLECAST_OLD_ROWS_CACHE_BYTES="+strconv.Itoa(budget), "TABLECAST_DATABASE_URL="+url, "TABLECAST_SLOT="+slot,
		"TABLECAST_PUBLICATION=tc_oldbig", "TABLECAST_HTTP_ADDR="+httpAddr, "TABLECAST_NATS_URL="+n.URL(), "TABLECAST_LOG_LEVEL=warn"), "cdc")
	waitFor(t, time.Minute, "/readyz of tablecast cdc", func() bool {
		code, _, err := httpGet("http://" + httpAddr + "/readyz")
		return err == nil && code == 200
	})
	// The cache's size, sampled throughout.
	var most float64
	sample, sampled := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(sampled)
		for {
			select {
			case <-sample:
				return
			case <-time.After(50 * time.Millisecond):
			}
			if _, body, err := httpGet("http://" + httpAddr + "/metrics"); err == nil {
				if m := regexp.MustCompile(`(?m)^tablecast_cdc_old_rows_cache_bytes (\S+)$`).FindStringSubmatch(body); m != nil {
					v, _ := strconv.ParseFloat(m[1], 64)
					most = max(most, v)
				}
			}
		}
	}()
	began := time.Now()
	if _, err := conn.Exec(ctx, `INSERT INTO big SELECT g, 0, repeat(md5(g::text), 4) FROM generate_series(1, $1) g`, rows); err != nil {
		t.Fatal(err)
	}
	if _, err := conn.Exec(ctx, `UPDATE big SET n = 1`); err != nil {
		t.Fatal(err)
	}
	updates := "tablecast." + stream.Token(db) + ".public.big.update"
	waitFor(t, 10*time.Minute, "every update in the stream", func() bool {
		got, err := storedOn(ctx, n.JS, updates)
		return err == nil && got >= uint64(rows)
	})
	took := time.Since(began)
	close(sample)
	<-sampled
	status, _ := os.ReadFile(fmt.Sprintf("/proc/%d/status", p.cmd.Process.Pid))
	hwm := regexp.MustCompile(`VmHWM:\s+(\d+) kB`).FindSubmatch(status)
	t.Logf("%d inserts and %d updates in two transactions in %s; cache at most %.0f bytes; peak resident %s kB; waits for the state %v",
		rows, rows, took.Round(time.Millisecond), most, hwm[1], metricValue(t, httpAddr, `tablecast_cdc_old_rows_waits_total{for="cache"}`))
	if most > budget+4096 {
		t.Errorf("the cache held %.0f bytes, over its budget of %d", most, budget)
	}
	str, err := n.JS.Stream(ctx, "TABLECAST")
	if err != nil {
		t.Fatal(err)
	}
	cons, err := str.OrderedConsumer(ctx, jetstream.OrderedConsumerConfig{FilterSubjects: []string{updates}})
	if err != nil {
		t.Fatal(err)
	}
	checked := 0
	for checked < rows {
		batch, err := cons.Fetch(1000, jetstream.FetchMaxWait(5*time.Second))
		if err != nil {
			t.Fatal(err)
		}
		for msg := range batch.Messages() {
			var ev struct {
				Key struct{ ID int }
				Old struct {
					ID, N int
					Pad   string
				}
			}
			if err := json.Unmarshal(msg.Data(), &ev); err != nil {
				t.Fatal(err)
			}
			if ev.Old.ID != ev.Key.ID || ev.Old.N != 0 || len(ev.Old.Pad) != 128 {
				t.Fatalf("update of row %d: old %+v, want the row as inserted", ev.Key.ID, ev.Old)
			}
			checked++
		}
		if batch.Error() != nil {
			t.Fatal(batch.Error())
		}
	}
}
