package cdc

import (
	"context"
	"fmt"
	"strconv"
	"time"

	"github.com/tablecast/tablecast/internal/jsonx"
	"github.com/tablecast/tablecast/schema"
	"github.com/tablecast/tablecast/stream"
)

// Transaction markers (Config.TxMarkers).
//
// The reader publishes each event as it decodes it, so a consumer of one
// table's subjects cannot tell where a transaction's events end. At the
// commit of a transaction that published at least one event or topic
// message, the reader then publishes a marker on the database's
// stream.TransactionSubject, through the same publisher as the events: it is
// stored after them, under the same fence, and its id (the commit LSN and
// schema.MarkerOrdinal) sorts after theirs, so that a restart skips it when
// the stream holds it already and publishes it when it does not, as it does
// an event (alreadyStoredID), and the duplicate window drops a repeat.

// txCount is one table's (or topic's) events in a transaction.
type txCount struct {
	key           string // relation.txKey, or the topic's name
	schema, table string // empty for a topic
	topic         string
	n             int
}

// txCounts are the open transaction's events, counted whether or not they
// were stored already, in the order their tables first appear.
type txCounts struct {
	n     int
	list  []txCount
	index map[string]int // key → position in list, once list is long
	last  int            // position of the last hit: rows of one table come in runs
}

// txIndexAfter is how many tables a transaction touches before their
// counts are found through a map rather than by a look along the list.
const txIndexAfter = 8

func (t *txCounts) reset() {
	t.n, t.list, t.last = 0, t.list[:0], 0
	if t.index != nil {
		clear(t.index)
	}
}

func (t *txCounts) find(key string) int {
	if t.last < len(t.list) && t.list[t.last].key == key {
		return t.last
	}
	if t.index != nil {
		if i, ok := t.index[key]; ok {
			return i
		}
		return -1
	}
	for i := range t.list {
		if t.list[i].key == key {
			return i
		}
	}
	return -1
}

func (t *txCounts) add(c txCount) {
	t.n++
	i := t.find(c.key)
	if i < 0 {
		i = len(t.list)
		c.n = 0
		t.list = append(t.list, c)
		if t.index == nil && len(t.list) > txIndexAfter {
			t.index = make(map[string]int, 2*txIndexAfter)
			for j := range t.list {
				t.index[t.list[j].key] = j
			}
		} else if t.index != nil {
			t.index[c.key] = i
		}
	}
	t.list[i].n++
	t.last = i
}

// addTable counts an event of rel's table.
func (t *txCounts) addTable(rel *relation) {
	t.add(txCount{key: rel.txKey, schema: rel.table.Schema, table: rel.table.Name})
}

// addTopic counts a custom-topic message. Its key cannot be a table's,
// which holds a NUL byte.
func (t *txCounts) addTopic(topic string) {
	t.add(txCount{key: "\x01" + topic, topic: topic})
}

// appendMarker appends the marker's body (see docs/contract.md):
//
//	{"xid":…,"lsn":"X/Y","commit_time":"…","events":N,
//	 "tables":[{"schema":…,"table":…,"events":n},…],"topics":[{"topic":…,"messages":n},…]}
//
// "events" counts the table events and topic messages together; "topics"
// is left out when there are none. Without lists (a transaction touching
// so many tables that their counts do not fit in one message), "tables"
// and "topics" are left out and "counts_left_out":true says so.
func appendMarker(dst []byte, txn *schema.Txn, t *txCounts, lists bool) []byte {
	dst = append(dst, `{"xid":`...)
	dst = strconv.AppendUint(dst, uint64(txn.XID), 10)
	dst = append(dst, `,"lsn":"`...)
	dst = schema.AppendLSN(dst, txn.CommitLSN)
	dst = append(dst, `","commit_time":"`...)
	dst = txn.CommitTime.UTC().AppendFormat(dst, time.RFC3339Nano)
	dst = append(dst, `","events":`...)
	dst = strconv.AppendInt(dst, int64(t.n), 10)
	if !lists {
		return append(dst, `,"counts_left_out":true}`...)
	}
	dst = append(dst, `,"tables":[`...)
	first := true
	for _, c := range t.list {
		if c.topic != "" {
			continue
		}
		if !first {
			dst = append(dst, ',')
		}
		first = false
		dst = append(dst, `{"schema":`...)
		dst = jsonx.AppendString(dst, c.schema)
		dst = append(dst, `,"table":`...)
		dst = jsonx.AppendString(dst, c.table)
		dst = append(dst, `,"events":`...)
		dst = strconv.AppendInt(dst, int64(c.n), 10)
		dst = append(dst, '}')
	}
	dst = append(dst, ']')
	first = true
	for _, c := range t.list {
		if c.topic == "" {
			continue
		}
		if first {
			dst = append(dst, `,"topics":[`...)
		} else {
			dst = append(dst, ',')
		}
		first = false
		dst = append(dst, `{"topic":`...)
		dst = jsonx.AppendString(dst, c.topic)
		dst = append(dst, `,"messages":`...)
		dst = strconv.AppendInt(dst, int64(c.n), 10)
		dst = append(dst, '}')
	}
	if !first {
		dst = append(dst, ']')
	}
	return append(dst, '}')
}

// publishMarker publishes the marker of the transaction being committed,
// when markers are on and it published anything (or would have, were its
// events not stored already).
func (s *session) publishMarker(ctx context.Context) error {
	if !s.r.cfg.TxMarkers || s.tx.n == 0 {
		return nil
	}
	if s.alreadyStoredID(eventID{s.txn.CommitLSN, schema.MarkerOrdinal}) {
		return nil
	}
	if s.markerSubject == "" {
		s.markerSubject = stream.TransactionSubject(s.r.prefix, s.r.db)
	}
	s.ids = s.txn.AppendMarkerID(s.ids[:0])
	s.buf = appendMarker(s.buf[:0], &s.txn, &s.tx, true)
	if !s.pub.Fits(string(s.ids), len(s.buf)) {
		// Thousands of tables in one transaction: the total alone.
		s.buf = appendMarker(s.buf[:0], &s.txn, &s.tx, false)
	}
	seq, err := s.pub.Publish(ctx, s.markerSubject, string(s.ids), s.buf)
	if err != nil {
		return fmt.Errorf("publish the marker of transaction %d (commit %s): %w", s.txn.XID, schema.AppendLSN(nil, s.txn.CommitLSN), err)
	}
	if cap(s.buf) > keptBufferBytes {
		s.buf = nil
	}
	s.lastSeq, s.txnPublished = seq, true
	s.r.m.markers.Inc()
	return nil
}
