package cdc

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/tablecast/tablecast/schema"
	"github.com/tablecast/tablecast/stream"
)

// TestKeyKeepsItsShape: a table switched to REPLICA IDENTITY FULL (what
// tablecast doctor recommends for row policies) keeps the primary key as
// its events' key, for create, update, delete and the rows of both
// snapshots, while old carries the whole old row. Only a table without a
// primary key or identity index has every column as its key under FULL.
func TestKeyKeepsItsShape(t *testing.T) {
	t.Parallel() // see parallelTests
	db := newTestDB(t,
		`CREATE TABLE docs (id int PRIMARY KEY, title text, body text)`,
		`INSERT INTO docs VALUES (1, 'a', 'x')`,
		`CREATE TABLE fulldocs (id int PRIMARY KEY, title text)`,
		`ALTER TABLE fulldocs REPLICA IDENTITY FULL`,
		`INSERT INTO fulldocs VALUES (1, 'a')`,
		`CREATE TABLE loose (a int, b text)`,
		`ALTER TABLE loose REPLICA IDENTITY FULL`,
		`CREATE TABLE coded (id int PRIMARY KEY, code text NOT NULL, v int)`,
		`CREATE UNIQUE INDEX coded_code ON coded (code)`,
		`ALTER TABLE coded REPLICA IDENTITY USING INDEX coded_code`)
	n := startNATS(t)
	r := startReader(t, db.config(), n) // with the initial snapshot
	n.readAll(t, 2, 15*time.Second)

	db.exec(t, `INSERT INTO docs VALUES (2, 'b', 'y')`)
	db.exec(t, `UPDATE docs SET title = 'bb' WHERE id = 2`)
	db.exec(t, `ALTER TABLE docs REPLICA IDENTITY FULL`)
	db.exec(t, `INSERT INTO docs VALUES (3, 'c', 'z')`)
	db.exec(t, `UPDATE docs SET title = 'cc' WHERE id = 3`)
	db.exec(t, `UPDATE docs SET id = 4 WHERE id = 3`) // the key changes: key is the old one
	db.exec(t, `DELETE FROM docs WHERE id = 4`)
	db.exec(t, `INSERT INTO loose VALUES (1, 'p')`)
	db.exec(t, `DELETE FROM loose WHERE a = 1`)
	db.exec(t, `INSERT INTO coded VALUES (1, 'k1', 0)`)
	db.exec(t, `DELETE FROM coded WHERE id = 1`)
	if _, err := RequestSnapshot(context.Background(), n.NC, testPrefix, db.slot, "public.docs"); err != nil {
		t.Fatal(err)
	}
	if _, err := RequestSnapshot(context.Background(), n.NC, testPrefix, db.slot, "public.fulldocs"); err != nil {
		t.Fatal(err)
	}
	evs := n.readAll(t, 15, 30*time.Second)

	type want struct {
		table, op, key, old string
	}
	wants := []want{
		{"docs", "read", `{"id":1}`, ``}, // the initial snapshot
		{"fulldocs", "read", `{"id":1}`, ``},
		{"docs", "create", `{"id":2}`, ``}, // REPLICA IDENTITY DEFAULT
		{"docs", "update", `{"id":2}`, ``},
		{"docs", "create", `{"id":3}`, ``}, // FULL from here on
		{"docs", "update", `{"id":3}`, `{"id":3,"title":"c","body":"z"}`},
		{"docs", "update", `{"id":3}`, `{"id":3,"title":"cc","body":"z"}`},
		{"docs", "delete", `{"id":4}`, `{"id":4,"title":"cc","body":"z"}`},
		{"loose", "create", `{"a":1,"b":"p"}`, ``}, // FULL without a key: every column
		{"loose", "delete", `{"a":1,"b":"p"}`, `{"a":1,"b":"p"}`},
		// USING INDEX of another index than the primary key: a delete
		// carries only the index's columns, which are the key.
		{"coded", "create", `{"code":"k1"}`, ``},
		{"coded", "delete", `{"code":"k1"}`, `{"code":"k1"}`},
		{"docs", "read", `{"id":1}`, ``}, // the on-demand snapshots
		{"docs", "read", `{"id":2}`, ``},
		{"fulldocs", "read", `{"id":1}`, ``},
	}
	var got []event
	for _, e := range evs {
		if e.Op != "truncate" {
			got = append(got, e)
		}
	}
	// The two on-demand snapshots may come in either order.
	if len(got) >= 15 && got[12].Table == "fulldocs" {
		got[12], got[13], got[14] = got[13], got[14], got[12]
	}
	for i, w := range wants {
		if i >= len(got) {
			t.Fatalf("%d events, want %d", len(got), len(wants))
		}
		e := got[i]
		if e.Table != w.table || e.Op != w.op {
			t.Fatalf("event %d: %s %s, want %s %s (%s)", i, e.Op, e.Table, w.op, w.table, e.Raw)
		}
		assertJSON(t, fmt.Sprintf("event %d (%s %s) key", i, w.op, w.table), e.Key, w.key)
		assertJSON(t, fmt.Sprintf("event %d (%s %s) old", i, w.op, w.table), e.Old, w.old)
	}

	// The registry says both: the key, and the replica identity.
	val, _, found, err := r.registry.Get(context.Background(), stream.SchemaKey(db.name, "public", "docs"))
	if err != nil || !found {
		t.Fatalf("shape of docs: %v, found %v", err, found)
	}
	var shape schema.Shape
	if err := json.Unmarshal(val, &shape); err != nil {
		t.Fatal(err)
	}
	if shape.ReplicaIdentity != "full" {
		t.Fatalf("shape %s: replica identity %q, want full", val, shape.ReplicaIdentity)
	}
	for _, c := range shape.Columns {
		if c.Key != (c.Name == "id") || !c.Identity {
			t.Errorf("shape of docs, column %s: key %v identity %v; want the key to be id alone, every column in the identity", c.Name, c.Key, c.Identity)
		}
	}
}

func TestEventKey(t *testing.T) {
	t.Parallel() // see parallelTests
	pk, idx, both := []string{"id"}, []string{"code"}, []string{"code", "id"}
	tests := []struct {
		replident byte
		k         keyColumns
		want      string
	}{
		{'d', keyColumns{primaryKey: pk}, "[id]"},
		{'f', keyColumns{primaryKey: pk}, "[id]"},
		{'n', keyColumns{primaryKey: pk}, "[id]"},
		{'i', keyColumns{primaryKey: pk, identityIndex: idx}, "[code]"},
		{'i', keyColumns{primaryKey: pk, identityIndex: both}, "[id]"}, // the index holds the primary key
		{'i', keyColumns{identityIndex: idx}, "[code]"},
		{'i', keyColumns{primaryKey: pk}, "[id]"}, // its index was dropped
		{'f', keyColumns{}, "every"},
		{'d', keyColumns{}, "[]"},
		{'n', keyColumns{}, "[]"},
	}
	for _, tt := range tests {
		key, every := eventKey(tt.replident, tt.k)
		got := fmt.Sprint(key)
		if every {
			got = "every"
		}
		if got != tt.want {
			t.Errorf("eventKey(%c, %+v) = %s, want %s", tt.replident, tt.k, got, tt.want)
		}
	}
}

// TestKeyOfChangesBeforeAKeyChange: a reader that catches up on changes
// committed before the primary key was replaced (it was stopped, or NATS
// was away, during the migration) keys them by the primary key they were
// written under, as a reader streaming live does: a delete carries only
// those columns, and the new key would have made it {"id":2,"tenant":null}.
func TestKeyOfChangesBeforeAKeyChange(t *testing.T) {
	t.Parallel() // see parallelTests
	db := newTestDB(t, `CREATE TABLE t (id int PRIMARY KEY, tenant int NOT NULL, v text)`,
		`INSERT INTO t VALUES (1, 7, 'a'), (2, 7, 'b')`)
	cfg := db.config()
	cfg.Snapshot = SnapshotNever
	n := startNATS(t)
	r := startReader(t, cfg, n)
	r.stop(t)
	db.waitSlotInactive(t)
	db.exec(t, `DELETE FROM t WHERE id = 2`)
	db.exec(t, `UPDATE t SET v = 'c' WHERE id = 1`)
	db.exec(t, `ALTER TABLE t DROP CONSTRAINT t_pkey, ADD PRIMARY KEY (tenant, id)`)
	db.exec(t, `DELETE FROM t WHERE id = 1`)
	startReader(t, cfg, n)
	// Then the key change is seen in the catalog: a truncate, and no rows
	// to send again.
	evs := n.readAll(t, 4, 30*time.Second)
	wants := []struct{ op, key, old string }{
		{"delete", `{"id":2}`, `{"id":2}`},
		{"update", `{"id":1}`, ``},
		{"delete", `{"tenant":7,"id":1}`, `{"tenant":7,"id":1}`}, // written under the new key
		{"truncate", `{}`, ``},
	}
	if len(evs) != len(wants) {
		t.Fatalf("%d events, want %d", len(evs), len(wants))
	}
	for i, w := range wants {
		if evs[i].Op != w.op {
			t.Fatalf("event %d: %s, want %s (%s)", i, evs[i].Op, w.op, evs[i].Raw)
		}
		assertJSON(t, fmt.Sprintf("event %d (%s) key", i, w.op), evs[i].Key, w.key)
		assertJSON(t, fmt.Sprintf("event %d (%s) old", i, w.op), evs[i].Old, w.old)
	}
	if evs[3].Cause != "key_changed" {
		t.Errorf("the truncate's cause is %q, want key_changed", evs[3].Cause)
	}
}

// TestDeferrableKeyMarked: the creates, updates and deletes of a table whose
// key is a deferrable primary key carry stream.KeyDeferrableHeader (their
// truncated form too, published apart from the others); its snapshot rows
// and truncates, the events of a table with an immediate primary key, and
// those of a table whose key is another index do not.
func TestDeferrableKeyMarked(t *testing.T) {
	t.Parallel() // see parallelTests
	db := newTestDB(t,
		`CREATE TABLE slots (id int PRIMARY KEY DEFERRABLE INITIALLY DEFERRED, name text NOT NULL)`,
		`ALTER TABLE slots REPLICA IDENTITY FULL`,
		`INSERT INTO slots VALUES (1, 'n1')`,
		`CREATE TABLE plain (id int PRIMARY KEY, name text)`,
		`ALTER TABLE plain REPLICA IDENTITY FULL`,
		`CREATE TABLE coded (id int PRIMARY KEY DEFERRABLE, code text NOT NULL)`,
		`CREATE UNIQUE INDEX coded_code ON coded (code)`,
		`ALTER TABLE coded REPLICA IDENTITY USING INDEX coded_code`)
	n := startNATS(t)
	cfg := db.config()
	cfg.MaxEventBytes = 4096
	startReader(t, cfg, n)
	n.readAll(t, 1, 15*time.Second)

	db.exec(t, `BEGIN; INSERT INTO slots VALUES (1, 'new1'); DELETE FROM slots WHERE name = 'n1'; COMMIT`)
	db.exec(t, `UPDATE slots SET name = 'new1x' WHERE id = 1`)
	db.exec(t, `INSERT INTO slots VALUES (2, repeat('x', 8000))`) // past MaxEventBytes: truncated
	db.exec(t, `INSERT INTO plain VALUES (1, 'p')`)
	db.exec(t, `DELETE FROM plain WHERE id = 1`)
	db.exec(t, `INSERT INTO coded VALUES (1, 'k1')`)
	db.exec(t, `DELETE FROM coded WHERE id = 1`)
	db.exec(t, `TRUNCATE slots`)
	evs := n.readAll(t, 10, 30*time.Second)
	wants := []struct {
		table, op string
		marked    bool
	}{
		{"slots", "read", false},
		{"slots", "create", true},
		{"slots", "delete", true},
		{"slots", "update", true},
		{"slots", "create", true},
		{"plain", "create", false},
		{"plain", "delete", false},
		{"coded", "create", false},
		{"coded", "delete", false},
		{"slots", "truncate", false},
	}
	if len(evs) != len(wants) {
		t.Fatalf("%d events, want %d", len(evs), len(wants))
	}
	for i, w := range wants {
		e := evs[i]
		if e.Table != w.table || e.Op != w.op {
			t.Fatalf("event %d: %s %s, want %s %s (%s)", i, e.Op, e.Table, w.op, w.table, e.Raw)
		}
		if got := e.Header[stream.KeyDeferrableHeader]; got != map[bool]string{true: "true"}[w.marked] {
			t.Errorf("event %d (%s %s): %s %q, want marked %v", i, w.op, w.table, stream.KeyDeferrableHeader, got, w.marked)
		}
	}
	if !strings.Contains(string(evs[4].Raw), `"truncated":true`) {
		t.Errorf("event 4 is not truncated: %.300s", evs[4].Raw)
	}
}
