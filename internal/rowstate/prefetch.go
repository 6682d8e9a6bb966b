package rowstate

// Reading ahead the rows a batch looks up under deferrable keys.
//
// The changes of a table whose key is deferrable (marked by the reader with
// stream.KeyDeferrableHeader) look up what their key holds (heldNow): one
// round trip each, which alone would hold the maintainer to a third of its
// rate on such tables. So before a batch is applied, the rows its marked
// changes will look up are read in one multi-last direct get per
// maxPrefetch of them, and current takes them from there (prefetched). What
// the batch, or its transaction, writes since is in recent, which current
// asks first; a truncate drops what was read of its table. Only on a rows
// stream of one replica: a direct get may be answered by a replica behind
// the writes the maintainer was acknowledged for (see lastFromLeader), so a
// replicated one keeps its reads from the leader. A read that fails, or is
// cut short, leaves the rows it did not bring to those reads.

import (
	"context"
	"encoding/json"
	"fmt"
	"strconv"
	"strings"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/tablecast/tablecast/schema"
	"github.com/tablecast/tablecast/stream"
)

// maxPrefetch bounds the rows of one read: the server answers a multi-last
// direct get with at most 1,024 messages.
const maxPrefetch = 1000

// prefetch reads the rows the marked changes of msgs will look up into
// s.pre, replacing what it held.
func (s *session) prefetch(ctx context.Context, msgs []jetstream.Msg) {
	clear(s.pre)
	if s.rows.CachedInfo().Config.Replicas > 1 {
		return
	}
	var subjects []string
	seen := map[string]struct{}{}
	want := func(subj string) {
		// Rows the transaction being applied wrote are read too: recent,
		// which current asks first, holds them only while it lasts, and
		// the batch may begin another.
		if _, ok := seen[subj]; !ok {
			seen[subj] = struct{}{}
			subjects = append(subjects, subj)
		}
	}
	for _, msg := range msgs {
		if msg.Headers().Get(stream.KeyDeferrableHeader) != "true" {
			continue
		}
		subject := msg.Subject()
		op := subject[strings.LastIndexByte(subject, '.')+1:]
		if op != schema.OpCreate && op != schema.OpUpdate && op != schema.OpDelete {
			continue
		}
		c, err := parseChange(0, op, msg.Data())
		if err != nil || !c.keyed() || !s.m.tables.Match(c.schema, c.table) {
			continue
		}
		want(s.rowSubject(c.schema, c.table, c.key))
		if op == schema.OpUpdate {
			if key, err := c.newKey(); err == nil && string(key) != string(c.key) {
				want(s.rowSubject(c.schema, c.table, key))
			}
		}
	}
	if len(subjects) > 0 && s.pre == nil {
		s.pre = make(map[string]version, len(subjects))
	}
	for len(subjects) > 0 {
		n := min(len(subjects), maxPrefetch)
		if err := s.readLast(ctx, subjects[:n]); err != nil {
			s.m.log.Debug("row state: reading ahead the rows of a batch failed; they are read one by one", "rows", n, "err", err)
		}
		subjects = subjects[n:]
	}
}

// readLast reads the last message of each of subjects into s.pre (ReadLast):
// a subject with no message has no row, unless the answer was cut short
// (then it is left out).
func (s *session) readLast(ctx context.Context, subjects []string) error {
	s.m.m.lookupsAhead.Add(float64(len(subjects)))
	rctx, cancel := context.WithTimeout(ctx, leaderGetTimeout)
	defer cancel()
	got := make(map[string]version, len(subjects))
	none, cutShort, err := ReadLast(rctx, s.m.nc, s.rows.CachedInfo().Config.Name, subjects, func(subj string, h nats.Header, data []byte) error {
		v, err := versionOf(h, data)
		got[subj] = v
		return err
	})
	if err != nil {
		return err
	}
	for _, subj := range subjects {
		if v, ok := got[subj]; ok || none || !cutShort {
			s.pre[subj] = v
		}
	}
	return nil
}

// ReadLast reads the last message of each of subjects in the stream name
// with one multi-last direct get (the stream allows direct gets), handing
// each to fn, in the order the server sends them. none says that no subject
// holds a message; cutShort, that the server left some out (it answers at
// most 1,024): their subjects are not known to have none. Any replica of the
// stream may answer; ctx bounds the wait.
func ReadLast(ctx context.Context, nc *nats.Conn, name string, subjects []string, fn func(subject string, h nats.Header, data []byte) error) (none, cutShort bool, err error) {
	req, err := json.Marshal(struct {
		MultiLast []string `json:"multi_last"`
		Batch     int      `json:"batch"`
	}{subjects, len(subjects)})
	if err != nil {
		return false, false, fmt.Errorf("encode a read of %d subjects of %s: %w", len(subjects), name, err)
	}
	inbox := nc.NewRespInbox()
	sub, err := nc.SubscribeSync(inbox)
	if err != nil {
		return false, false, fmt.Errorf("read %d subjects of %s: %w", len(subjects), name, err)
	}
	defer func() { _ = sub.Unsubscribe() }()
	if err := nc.PublishRequest("$JS.API.DIRECT.GET."+name, inbox, req); err != nil {
		return false, false, fmt.Errorf("read %d subjects of %s: %w", len(subjects), name, err)
	}
	for {
		msg, err := sub.NextMsgWithContext(ctx)
		if err != nil {
			return false, false, fmt.Errorf("read %d subjects of %s: %w", len(subjects), name, err)
		}
		switch status := msg.Header.Get("Status"); status {
		case "":
		case "404": // none of them holds a message
			return true, false, nil
		case "204": // the end
			pending, _ := strconv.ParseUint(msg.Header.Get("Nats-Num-Pending"), 10, 64)
			return false, pending > 0, nil
		default:
			return false, false, fmt.Errorf("read %d subjects of %s: status %s %s", len(subjects), name, status, msg.Header.Get("Description"))
		}
		subj := msg.Header.Get("Nats-Subject")
		if err := fn(subj, msg.Header, msg.Data); err != nil {
			return false, false, fmt.Errorf("message of %s in %s: %w", subj, name, err)
		}
	}
}

// versionOf reads a row message of the rows stream.
func versionOf(h nats.Header, data []byte) (version, error) {
	r, err := DecodeRow(h, data)
	if err != nil {
		return version{}, err
	}
	v := version{seq: r.Seq, data: r.Data, deleted: r.Deleted, displaced: int(parseUint(h.Get(HeaderDisplaced)))}
	if lsn := h.Get(HeaderLSN); lsn != "" {
		v.lsn = []byte(lsn)
	}
	return v, nil
}
