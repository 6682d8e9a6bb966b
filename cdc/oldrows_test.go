package cdc

import (
	"bytes"
	"encoding/json"
	"strconv"
	"testing"
	"time"

	"github.com/tablecast/tablecast/schema"
)

// fakeRowState is a row state that has applied what the test says.
type fakeRowState struct {
	seq   uint64
	id    string
	ready bool
}

func (f *fakeRowState) LastApplied() (uint64, string, bool) { return f.seq, f.id, f.ready }

// TestOldRowsCacheForgetsOnlyWhatTheStateApplied: the cache of versions
// stays within its budget by forgetting, in publishing order, only the
// versions whose events the row state has applied (by id, compared as
// numbers, counted only once the state is past the session's start), so
// that a full cache makes the reader wait; and a lookup in the state
// waits until it has applied every version forgotten.
func TestOldRowsCacheForgetsOnlyWhatTheStateApplied(t *testing.T) {
	st := &fakeRowState{seq: 10, id: "00000000000000FF-0001", ready: true}
	data := bytes.Repeat([]byte("x"), 1000)
	key := func(n int) string { return `{"id":` + strconv.Itoa(1000+n) + `}` }
	size := len(key(1)) + len(data) + cacheEntryOverhead
	o := &oldRows{state: st, budget: 4 * size, byTable: map[[2]string]*tableRows{}, startSeq: 10}
	tr := &tableRows{rows: map[string]*cachedVersion{}}
	// Ordinals past 0xFFFF take five hex digits: 0x10000 comes after 0xFFFF.
	id := func(n int) eventID { return eventID{0x100, 0xFFFF + uint64(n)} }
	idString := func(n int) string { return id(n).String() }
	put := func(n int) {
		t.Helper()
		if !o.evict(size) {
			t.Fatalf("no room for version %d with %d of %d bytes used", n, o.used, o.budget)
		}
		o.put(tr, key(n), &cachedVersion{id: id(n), kind: versionRow, data: data})
		if o.used > o.budget {
			t.Fatalf("%d bytes used, over the budget of %d", o.used, o.budget)
		}
	}
	for n := 0; n < 4; n++ {
		put(n)
	}
	if !o.lookupReady() {
		t.Fatal("lookup not ready although the state is at the session's start and nothing was forgotten")
	}
	if o.evict(size) {
		t.Fatal("room made although the state applied nothing of the session")
	}
	// A state before the session's start counts for nothing, whatever the
	// id of its last event (another origin's, say).
	st.id = "FFFFFFFFFFFFFFFF-FFFF"
	if o.evict(size) {
		t.Fatal("room made from an event at or before the session's start")
	}
	if o.lookupReady() != true {
		t.Fatal("lookup not ready at the session's start")
	}
	st.seq, st.id = 11, idString(1) // versions 0 and 1 applied
	put(4)
	if _, ok := tr.rows[key(0)]; ok {
		t.Fatal("version 0 kept although room was needed and it was applied")
	}
	if _, ok := tr.rows[key(2)]; !ok {
		t.Fatal("version 2 forgotten before the state applied it")
	}
	if o.evict(2 * size) {
		t.Fatal("room for two versions made by forgetting one the state has not applied")
	}
	if _, ok := tr.rows[key(1)]; ok {
		t.Fatal("version 1 kept although room was needed and it was applied")
	}
	if !o.lookupReady() {
		t.Fatal("lookup not ready although the state applied every version forgotten")
	}
	// The state deleted and being built again: no lookup until it is back
	// past what was forgotten.
	st.seq, st.id = 3, "0000000000000001-0001"
	if o.lookupReady() {
		t.Fatal("lookup ready while the state is rebuilt from before the session")
	}
	st.seq, st.id = 12, idString(0)
	if o.lookupReady() {
		t.Fatal("lookup ready before the state applied the last version forgotten")
	}
	st.seq, st.id = 13, idString(1)
	if !o.lookupReady() {
		t.Fatal("lookup not ready once the state applied the last version forgotten")
	}
	// Later versions of one row leave the versions before them stale: they
	// leave the queue without waiting for the state.
	for n := 0; n < 10; n++ {
		st.seq, st.id = 14, idString(4) // versions 2, 3 and 4 applied
		if !o.evict(size) {
			t.Fatalf("no room for version %d of one row", n)
		}
		o.put(tr, key(9), &cachedVersion{id: id(10 + n), kind: versionRow, data: data})
	}
	if o.used > o.budget || len(tr.rows) != 1 {
		t.Fatalf("%d bytes used (budget %d), %d rows held; want key 9 alone", o.used, o.budget, len(tr.rows))
	}
	// A truncate empties the table; until the state applied it, it stays.
	o.put(tr, "", &cachedVersion{id: id(30), kind: versionTruncate})
	if len(tr.rows) != 0 || tr.trunc == nil {
		t.Fatal("a truncate did not empty the table's versions")
	}
	o.evict(o.budget)
	if tr.trunc == nil {
		t.Fatal("truncate forgotten before the state applied it")
	}
	st.seq, st.id = 20, idString(30)
	o.evict(o.budget)
	if tr.trunc != nil || o.used != 0 {
		t.Fatalf("truncate kept (%v) or %d bytes used once the state applied everything", tr.trunc != nil, o.used)
	}
}

// TestRowValues reads a row of the state into the table's columns: members
// by name (escaped or not), values as they are, columns the row lacks left
// out, members of columns gone ignored.
func TestRowValues(t *testing.T) {
	rel := &relation{table: &schema.Table{Schema: "public", Name: "t", Columns: []schema.Column{
		{Name: "id", TypeOID: 23, Key: true}, {Name: "na\"me", TypeOID: 25}, {Name: "body", TypeOID: 25}, {Name: "added", TypeOID: 23},
	}}}
	vals, err := rowValues(nil, rel, []byte(`{"id":7, "gone":[1,{"a":2}],"na\"me":"x\u00e9","body":{"j":[1,2]}}`))
	if err != nil {
		t.Fatal(err)
	}
	want := []schema.Value{{Kind: schema.KindJSON, Data: []byte(`7`)}, {Kind: schema.KindJSON, Data: []byte(`"x\u00e9"`)},
		{Kind: schema.KindJSON, Data: []byte(`{"j":[1,2]}`)}, {Kind: schema.KindUnchanged}}
	for i := range want {
		if vals[i].Kind != want[i].Kind || string(vals[i].Data) != string(want[i].Data) {
			t.Errorf("column %d: %c %s, want %c %s", i, vals[i].Kind, vals[i].Data, want[i].Kind, want[i].Data)
		}
	}
	// Written into an event as they are: old is the row of the table's
	// columns.
	var txn schema.Txn
	txn.Reset(0x100, 1, time.Unix(0, 0))
	ev := schema.AppendEvent(nil, "db", rel.table, &txn, &schema.Change{Op: schema.OpDelete, Ordinal: 1, Old: vals})
	var got struct{ Key, Old json.RawMessage }
	if err := json.Unmarshal(ev, &got); err != nil {
		t.Fatalf("event %s: %v", ev, err)
	}
	if string(got.Key) != `{"id":7}` || string(got.Old) != `{"id":7,"na\"me":"x\u00e9","body":{"j":[1,2]}}` {
		t.Errorf("key %s, old %s", got.Key, got.Old)
	}
	if _, err := rowValues(nil, rel, []byte(`[1]`)); err == nil {
		t.Error("an array read as a row")
	}
	if _, err := rowValues(nil, rel, []byte(`{"id":}`)); err == nil {
		t.Error("malformed JSON read as a row")
	}
}
