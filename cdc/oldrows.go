package cdc

// Old values for everyone: complete old rows on tables opted in
// (Config.OldRows).
//
// Under the default replica identity PostgreSQL sends of an updated row's
// old version nothing (or its key, when the key changed), of a deleted row
// its key, and of a new version it leaves out the TOASTed values the
// update did not change. Where the row state (internal/rowstate) keeps a
// table, the previous version of every row is known, and the reader
// completes the events of the tables opted in: "old" is the complete
// previous version, and "data" has the unchanged TOASTed values filled in
// (so "unchanged" is absent). The reader takes the previous version
//
//   - from the versions it published itself in this session (the cache):
//     the row, a tombstone for a deleted one, "unknown" for a row
//     published as a claim or without its rows (the row state keeps no
//     data for them either); a truncate marks its table;
//   - else from the row state's stream "<STREAM>_ROWS": the last message of
//     the row's subject, read with those of the changes that follow in one
//     multi-last direct get (oldrows_batch.go), or alone.
//
// A row state lookup gives the previous version only when the state has
// applied every earlier event of that row. So the cache forgets a version
// only once the state has applied its event, and a lookup waits until the
// state has applied every event the stream held when the session started
// and every version the cache forgot. Events are compared by id, which the
// reader knows as it publishes (commit LSN, ordinal; they increase for one
// reader), not by stream sequence, which it learns later, and an applied id
// counts only once the state is past the session's start, where every
// event of the database is this reader's. The cache's memory is bounded
// (Config.OldRowsCacheBytes): when full, the reader waits for the state to
// apply what the cache holds (it sends what it has published first), and
// never drops a version it still needs, so a transaction of any size
// streams in bounded memory, at the pace the state is written.
//
// After a truncate, until the state has applied it, a row the cache lacks
// has no previous version. Where the previous version is unknown (the
// state lacks the row, or kept it without its data), the event stays as
// PostgreSQL sent it. Under REPLICA IDENTITY FULL the old row is complete
// already; the unchanged TOASTed values of "data" are taken from it.
//
// Everything here runs on the session's goroutine.

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/tablecast/tablecast/internal/jsonx"
	"github.com/tablecast/tablecast/internal/rowstate"
	"github.com/tablecast/tablecast/schema"
	"github.com/tablecast/tablecast/stream"
)

// RowState is what the reader needs of the row state kept beside it
// (rowstate.Maintainer): how far it has applied the event stream.
type RowState interface {
	// LastApplied returns the stream sequence and the event id (the
	// message's Nats-Msg-Id, "" when not known) of the last event the
	// state applied; every event of the database up to seq is in the
	// state. ready is false while there is no state to read: not started,
	// or being opened.
	LastApplied() (seq uint64, id string, ready bool)
}

// RowStateFunc is a RowState as a function.
type RowStateFunc func() (seq uint64, id string, ready bool)

// LastApplied calls f.
func (f RowStateFunc) LastApplied() (uint64, string, bool) { return f() }

// DefaultOldRowsCacheBytes is the default of Config.OldRowsCacheBytes:
// 64 MiB. The cache holds the versions published until the state applies
// them, usually well under a second of changes; 64 MiB holds a second of
// 30,000 changes of 2 KiB rows, beyond which the reader waits for the
// state rather than grow.
const DefaultOldRowsCacheBytes = 64 << 20

// cacheEntryOverhead is what the cache counts per version beside its key
// and data: the map entry, the version, its place in the queue.
const cacheEntryOverhead = 128

// Kinds of a cached version.
const (
	versionRow      = iota // data holds the row
	versionDeleted         // deleted: no previous row
	versionUnknown         // published without its rows: its data is not known
	versionTruncate        // a table's truncate (tableRows.trunc)
)

// cachedVersion is one version of a row the session published, or a
// table's truncate.
type cachedVersion struct {
	id   eventID
	kind int
	data []byte
}

// tableRows is the cache of one table.
type tableRows struct {
	rows  map[string]*cachedVersion // by key, as the reader writes keys
	trunc *cachedVersion            // the last truncate, until the state applied it
	base  string                    // the rows' subject in the row state, without the key token
}

// cacheItem is a version in the order it was published: the cache forgets
// them in that order, once the state has applied them. An item whose
// version was replaced since (a later version of its row, a truncate) is
// stale: it only holds its size until it leaves the queue.
type cacheItem struct {
	t    *tableRows
	key  string
	v    *cachedVersion
	size int
}

func (it *cacheItem) stale() bool {
	if it.v.kind == versionTruncate {
		return it.t.trunc != it.v
	}
	return it.t.rows[it.key] != it.v
}

// oldRows is one session's part of it: the cache, and where the state
// must be for a lookup.
type oldRows struct {
	tables rowstate.Patterns
	state  RowState
	budget int

	byTable map[[2]string]*tableRows
	queue   []cacheItem
	head    int
	used    int

	// startSeq is the stream sequence of the database's last message when
	// the session started: a lookup waits until the state is there.
	startSeq uint64
	// forgot is the last id the cache forgot (forgotten: any): a lookup
	// waits until the state has applied it too (it may have gone back, a
	// state deleted and being built again).
	forgot    eventID
	forgotten bool

	ahead   readAhead      // changes kept to read their rows at once (oldrows_batch.go)
	scratch []schema.Value // the previous version by column
	old     []schema.Value // the completed old row
	key     []byte
	scan    jsonx.Scanner
}

// newOldRows returns the session's cache, or nil when no table is opted
// in.
func (r *Reader) newOldRows(ctx context.Context) (*oldRows, error) {
	if len(r.cfg.OldRows) == 0 || r.cfg.RowState == nil {
		return nil, nil
	}
	tables, _ := rowstate.ParsePatterns(r.cfg.OldRows)
	o := &oldRows{tables: tables, state: r.cfg.RowState, budget: r.cfg.OldRowsCacheBytes, byTable: map[[2]string]*tableRows{}}
	// Every event of the database the stream holds now was published
	// before this session: the state must have applied them all before
	// it is asked for a row.
	str, err := r.js.Stream(ctx, r.cfg.Stream)
	if err != nil {
		return nil, fmt.Errorf("open stream %s: %w", r.cfg.Stream, err)
	}
	msg, err := str.GetLastMsgForSubject(ctx, r.prefix+"."+stream.Token(r.db)+".>")
	switch {
	case errors.Is(err, jetstream.ErrMsgNotFound):
	case err != nil:
		return nil, fmt.Errorf("read the last event of %s in stream %s: %w", r.db, r.cfg.Stream, err)
	default:
		o.startSeq = msg.Sequence
	}
	return o, nil
}

// opted reports whether rel's events are completed (completes), deciding
// once per Relation message.
func (o *oldRows) opted(rel *relation) bool {
	if rel.oldRows == 0 {
		rel.oldRows = -1
		if completes(o.tables, rel.table) {
			rel.oldRows = 1
		}
	}
	return rel.oldRows > 0
}

// completes is the one rule for which tables' events carry complete old
// rows: opted in by pattern, and keyed (a row without a key cannot be
// found again).
func completes(tables rowstate.Patterns, t *schema.Table) bool {
	if !tables.Match(t.Schema, t.Name) {
		return false
	}
	for i := range t.Columns {
		if t.Columns[i].Key {
			return true
		}
	}
	return false
}

func (o *oldRows) table(r *Reader, tbl *schema.Table) *tableRows {
	k := [2]string{tbl.Schema, tbl.Name}
	t := o.byTable[k]
	if t == nil {
		t = &tableRows{rows: map[string]*cachedVersion{}, base: rowstate.RowSubject(r.prefix, r.db, tbl.Schema, tbl.Name, "")}
		o.byTable[k] = t
	}
	return t
}

// applied returns the id of the last event of this session the state
// applied; ok is false when it has applied none yet (or is not there).
func (o *oldRows) applied() (eventID, bool) {
	seq, id, ready := o.state.LastApplied()
	if !ready || seq <= o.startSeq {
		return eventID{}, false
	}
	lsn, ord, ok := schema.ParseEventID(id)
	if !ok {
		return eventID{}, false
	}
	return eventID{lsn, ord}, true
}

// lookupReady reports whether a row state lookup gives the row's previous
// version: the state has applied every event the stream held at the start
// and every version the cache forgot.
func (o *oldRows) lookupReady() bool {
	seq, _, ready := o.state.LastApplied()
	if !ready || seq < o.startSeq {
		return false
	}
	if !o.forgotten {
		return true
	}
	id, ok := o.applied()
	return ok && !o.forgot.after(id)
}

// evict forgets, in publishing order, the versions the state has applied,
// and stale items, until room bytes fit in the budget or the head of the
// queue is a version the state has not applied yet. It reports whether
// they fit.
func (o *oldRows) evict(room int) bool {
	var applied eventID
	var known, asked bool
	for o.head < len(o.queue) && o.used+room > o.budget {
		it := &o.queue[o.head]
		if !it.stale() {
			if !asked {
				applied, known = o.applied()
				asked = true
			}
			if !known || it.v.id.after(applied) {
				break
			}
			if it.v.kind == versionTruncate {
				it.t.trunc = nil
			} else {
				delete(it.t.rows, it.key)
			}
			if !o.forgotten || it.v.id.after(o.forgot) {
				o.forgot, o.forgotten = it.v.id, true
			}
		}
		o.used -= it.size
		*it = cacheItem{}
		o.head++
	}
	if o.head == len(o.queue) {
		o.queue, o.head = o.queue[:0], 0
	} else if o.head > 1024 && o.head > len(o.queue)/2 {
		n := copy(o.queue, o.queue[o.head:])
		clear(o.queue[n:])
		o.queue, o.head = o.queue[:n], 0
	}
	// A version larger than the whole budget goes in alone.
	return o.used+room <= o.budget || o.head == len(o.queue)
}

// put records v as the version of key (or as t's truncate, key "").
func (o *oldRows) put(t *tableRows, key string, v *cachedVersion) {
	if v.kind == versionTruncate {
		t.trunc = v
		clear(t.rows)
	} else {
		t.rows[key] = v
		o.published(t, []byte(key))
	}
	size := len(key) + len(v.data) + cacheEntryOverhead
	o.queue = append(o.queue, cacheItem{t: t, key: key, v: v, size: size})
	o.used += size
}

// waitState waits, until ctx ends, for the row state to reach where cond
// says, having first sent what the session published (the state can only
// apply what the stream stores). PostgreSQL keeps getting status updates.
func (s *session) waitState(ctx context.Context, what string, cond func() bool) error {
	if cond() {
		return nil
	}
	o := s.old
	s.r.m.oldRowsWaits.WithLabelValues(what).Inc()
	began := time.Now()
	defer func() { s.r.m.oldRowsWaitSeconds.WithLabelValues(what).Add(time.Since(began).Seconds()) }()
	if err := s.pub.Flush(ctx); err != nil {
		return fmt.Errorf("publish to JetStream: %w", err)
	}
	pause := 100 * time.Microsecond
	logAt := began.Add(time.Second)
	for !cond() {
		if err := s.pub.Err(); err != nil {
			return fmt.Errorf("publish to JetStream: %w", err)
		}
		now := time.Now()
		if now.After(logAt) {
			seq, id, ready := o.state.LastApplied()
			s.r.log.Info("old rows: waiting for the row state to apply the events published so far", "for", what,
				"waited", now.Sub(began).Round(time.Millisecond), "state_ready", ready, "state_seq", seq, "state_id", id,
				"session_start_seq", o.startSeq, "cache_bytes", o.used)
			logAt = now.Add(10 * time.Second)
		}
		s.advance()
		if now.Sub(s.lastStatus) >= statusMinInterval {
			if err := s.sendStatus(now); err != nil {
				return err
			}
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(pause):
		}
		pause = min(2*pause, 10*time.Millisecond)
	}
	return nil
}

// makeRoom waits until size more bytes fit in the cache.
func (s *session) makeRoom(ctx context.Context, size int) error {
	o := s.old
	if o.evict(size) {
		return nil
	}
	return s.waitState(ctx, "cache", func() bool { return o.evict(size) })
}

// previous returns the previous version of the row of key in table t: its
// data, or nil when it is not known (or there is none).
func (s *session) previous(ctx context.Context, t *tableRows, key []byte) ([]byte, error) {
	o := s.old
	if v, ok := t.rows[string(key)]; ok {
		s.r.m.oldRowsCache.Inc()
		if v.kind == versionRow {
			return v.data, nil
		}
		return nil, nil
	}
	if t.trunc != nil {
		// Truncated since the state was last asked: no row before.
		s.r.m.oldRowsCache.Inc()
		return nil, nil
	}
	subj := t.base + rowstate.KeyToken(key)
	if data, err := o.prefetched(subj); err == nil {
		s.r.m.oldRowsLookups.Inc()
		return data, nil
	}
	if err := s.waitState(ctx, "lookup", o.lookupReady); err != nil {
		return nil, err
	}
	s.r.m.oldRowsLookups.Inc()
	// One row, read as a batch is (readRows): checked against a lagging
	// replica the same way.
	if err := s.readRows(ctx, []string{subj}); err != nil {
		return nil, err
	}
	data, err := o.prefetched(subj)
	if err != nil {
		return nil, fmt.Errorf("look up row %s in the row state: no answer for it", subj)
	}
	delete(o.ahead.got, subj)
	return data, nil
}

// complete fills change c of rel (an update or a delete of an opted
// table) with the row's previous version: "old" whole where PostgreSQL
// sent only the key or nothing, and the unchanged TOASTed values of
// "data". It returns the key the change had before.
func (s *session) complete(ctx context.Context, rel *relation, c *schema.Change) ([]byte, error) {
	o := s.old
	tbl := rel.table
	o.key = schema.AppendEventKey(o.key[:0], tbl, c)
	if c.Old != nil && !c.OldKeyOnly {
		// REPLICA IDENTITY FULL: the old row is whole; it holds the values
		// the update did not change.
		fillUnchanged(c.New, c.Old)
		return o.key, nil
	}
	prev, err := s.previous(ctx, o.table(s.r, tbl), o.key)
	if err != nil {
		return o.key, err
	}
	if prev == nil {
		s.r.m.oldRowsUnknown.Inc()
		return o.key, nil
	}
	pv, err := rowValues(o.scratch[:0], rel, prev)
	if err != nil {
		// A row the reader cannot read is not the previous version it
		// needs: the event stays as sent.
		s.r.log.Warn("old rows: a previous version that is not a row object; the event stays as PostgreSQL sent it",
			"table", tbl.QualifiedName(), "key", string(o.key), "err", err)
		s.r.m.oldRowsUnknown.Inc()
		return o.key, nil
	}
	o.scratch = pv
	fillUnchanged(c.New, pv)
	old := append(o.old[:0], pv...)
	for i := range old {
		col := &tbl.Columns[i]
		switch {
		case c.Old != nil && (col.Key || col.Identity) && i < len(c.Old):
			old[i] = c.Old[i] // what PostgreSQL sent of the old row
		case c.Old == nil && col.Key && c.New[i].Kind != schema.KindUnchanged:
			old[i] = c.New[i] // the key did not change
		}
	}
	o.old = old
	c.Old, c.OldKeyOnly = old, false
	return o.key, nil
}

// fillUnchanged replaces the unchanged TOASTed values of row with those of
// prev (a row of the same columns) where prev has them.
func fillUnchanged(row, prev []schema.Value) {
	for i := range row {
		if row[i].Kind == schema.KindUnchanged && i < len(prev) && prev[i].Kind != schema.KindUnchanged {
			row[i] = prev[i]
		}
	}
}

func hasUnchanged(row []schema.Value) bool {
	for i := range row {
		if row[i].Kind == schema.KindUnchanged {
			return true
		}
	}
	return false
}

// rowValues reads a row object (as the state or the cache holds it) into
// one value per column of rel, appended to dst: KindJSON for a column the
// row has, KindUnchanged (left out when written) for one it lacks.
// Members of columns the table no longer has are left out.
func rowValues(dst []schema.Value, rel *relation, row []byte) ([]schema.Value, error) {
	cols := rel.table.Columns
	for range cols {
		dst = append(dst, schema.Value{Kind: schema.KindUnchanged})
	}
	if rel.columnIndex == nil {
		rel.columnIndex = make(map[string]int, len(cols))
		for i := range cols {
			rel.columnIndex[cols[i].Name] = i
		}
	}
	i := jsonx.SkipSpace(row, 0)
	if i >= len(row) || row[i] != '{' {
		return dst, jsonx.ErrSyntax
	}
	i = jsonx.SkipSpace(row, i+1)
	if i < len(row) && row[i] == '}' {
		return dst, nil
	}
	var sc jsonx.Scanner
	for {
		name, plain, at, err := jsonx.Member(row, i)
		if err != nil {
			return dst, err
		}
		end, err := sc.SkipValue(row, at)
		if err != nil {
			return dst, err
		}
		var col int
		var ok bool
		if plain {
			col, ok = rel.columnIndex[string(name)]
		} else {
			col, ok = rel.columnIndex[jsonx.DecodeString(name)]
		}
		if ok {
			dst[len(dst)-len(cols)+col] = schema.Value{Kind: schema.KindJSON, Data: row[at:end]}
		}
		next, more, err := jsonx.Next(row, end, '}')
		if err != nil {
			return dst, err
		}
		if !more {
			return dst, nil
		}
		i = next
	}
}

// eventData returns the "data" member of an envelope, nil when it has
// none.
func (o *oldRows) eventData(ev []byte) []byte {
	i := jsonx.SkipSpace(ev, 0)
	if i >= len(ev) || ev[i] != '{' {
		return nil
	}
	i = jsonx.SkipSpace(ev, i+1)
	for {
		name, _, at, err := jsonx.Member(ev, i)
		if err != nil {
			return nil
		}
		end, err := o.scan.SkipValue(ev, at)
		if err != nil {
			return nil
		}
		if string(name) == "data" {
			return ev[at:end]
		}
		next, more, err := jsonx.Next(ev, end, '}')
		if err != nil || !more {
			return nil
		}
		i = next
	}
}

// remember records in the cache the version change c (just published,
// with id) made of its row: the new row (whole when its event was
// published whole, else unknown) under its new key, a tombstone under
// oldKey when the row was deleted or its key changed. ev is the event
// when it was published whole, else nil.
func (s *session) remember(ctx context.Context, tbl *schema.Table, id eventID, c *schema.Change, oldKey, ev []byte) error {
	o := s.old
	t := o.table(s.r, tbl)
	if c.Op == schema.OpTruncate {
		if err := s.makeRoom(ctx, cacheEntryOverhead); err != nil {
			return err
		}
		o.put(t, "", &cachedVersion{id: id, kind: versionTruncate})
		return nil
	}
	if c.Op == schema.OpDelete {
		if err := s.makeRoom(ctx, len(oldKey)+cacheEntryOverhead); err != nil {
			return err
		}
		o.put(t, string(oldKey), &cachedVersion{id: id, kind: versionDeleted})
		return nil
	}
	v := &cachedVersion{id: id, kind: versionUnknown}
	if data := o.eventData(ev); data != nil && !hasUnchanged(c.New) {
		v.kind, v.data = versionRow, data
	}
	// The new key: the old one when a key column is an unchanged TOASTed
	// value (it did not change), else the new row's.
	newKey := oldKey
	if oldKey == nil || !keyUnchanged(tbl, c.New) {
		newKey = schema.AppendEventKey(nil, tbl, &schema.Change{New: c.New})
	}
	need := len(newKey) + len(v.data) + cacheEntryOverhead
	moved := oldKey != nil && string(oldKey) != string(newKey)
	if moved {
		need += len(oldKey) + cacheEntryOverhead
	}
	if err := s.makeRoom(ctx, need); err != nil {
		return err
	}
	if v.data != nil {
		v.data = append([]byte(nil), v.data...) // ev is the publisher's scratch
	}
	if moved {
		o.put(t, string(oldKey), &cachedVersion{id: id, kind: versionDeleted})
	}
	o.put(t, string(newKey), v)
	s.r.m.oldRowsCacheBytes.Set(float64(o.used))
	return nil
}

// keyUnchanged reports whether a key column of row is an unchanged
// TOASTed value.
func keyUnchanged(tbl *schema.Table, row []schema.Value) bool {
	for i := range row {
		if i < len(tbl.Columns) && tbl.Columns[i].Key && row[i].Kind == schema.KindUnchanged {
			return true
		}
	}
	return false
}

// completesOldRows reports whether the events of t carry complete old rows
// (opted in, with a key), as its shape in the schema registry says.
func (r *Reader) completesOldRows(t *schema.Table) bool {
	if len(r.cfg.OldRows) == 0 || r.cfg.RowState == nil {
		return false
	}
	// The patterns were checked with the configuration; a bad one opts
	// nothing in, as newOldRows treats it.
	tables, err := rowstate.ParsePatterns(r.cfg.OldRows)
	return err == nil && completes(tables, t)
}
