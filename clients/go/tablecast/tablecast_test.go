package tablecast_test

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"math"
	"math/big"
	"os/exec"
	"regexp"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgtype"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/tablecast/tablecast/clients/go/tablecast"
	"github.com/tablecast/tablecast/internal/natstest"
	"github.com/tablecast/tablecast/schema"
	"github.com/tablecast/tablecast/stream"
)

// TestEnvelopeFromTheReader decodes what the reader publishes for every
// operation and reads each kind of value with its typed accessor: the key,
// the old row of an update that changes the key and of a delete, a column
// left out as an unchanged TOASTed value, NULL apart from absent, NaN,
// exact numerics, timestamps and dates, bytea, jsonb and arrays.
func TestEnvelopeFromTheReader(t *testing.T) {
	n := natstest.Start(t)
	p := startPipeline(t, n, `CREATE TABLE kinds (id int PRIMARY KEY, i bigint, n numeric(12,2), f double precision, t text, b bool,
		ts timestamptz, d date, j jsonb, by bytea, arr int[], nul text, big text)`)
	c := consume(t, n, tablecast.ConsumerConfig{Durable: "envelope"}, nil)
	p.exec(t, `INSERT INTO kinds VALUES (1, 9007199254740993, 19.90, 'NaN', 'héllo', true, '2026-11-22 07:00:00.123456+00', '2026-02-28',
		'{"a":[1,2]}', '\x00ff', '{1,2,3}', NULL, (SELECT string_agg(md5(g::text), '') FROM generate_series(1, 1000) g))`)
	p.exec(t, `UPDATE kinds SET t = 'changed' WHERE id = 1`)
	p.exec(t, `UPDATE kinds SET id = 2 WHERE id = 1`)
	p.exec(t, `DELETE FROM kinds WHERE id = 2`)
	p.exec(t, `TRUNCATE kinds`)

	create := c.next(t)
	if create.Op != tablecast.OpCreate || create.DB != p.name || create.Schema != "public" || create.Table != "kinds" {
		t.Fatalf("first event: %s %s.%s.%s", create.Op, create.DB, create.Schema, create.Table)
	}
	if !regexp.MustCompile(`^[0-9A-F]{16}-[0-9A-F]{4,}$`).MatchString(create.ID) || create.LSN == "" || create.XID == 0 ||
		time.Since(create.CommitTime) > time.Hour || create.Subject != "tablecast."+p.name+".public.kinds.create" || create.Sequence == 0 || create.Delivered != 1 {
		t.Errorf("envelope: id %q lsn %q xid %d commit_time %s subject %q seq %d delivered %d", create.ID, create.LSN, create.XID, create.CommitTime, create.Subject, create.Sequence, create.Delivered)
	}
	d := create.Data
	if id, err := create.Key.Int64("id"); err != nil || id != 1 {
		t.Errorf("key id: %d, %v", id, err)
	}
	if i, err := d.Int64("i"); err != nil || i != 9007199254740993 {
		t.Errorf("bigint beyond float64's precision: %d, %v", i, err)
	}
	if q, err := d.Numeric("n"); err != nil || q.Cmp(big.NewRat(199, 10)) != 0 {
		t.Errorf("numeric 19.90: %v, %v", q, err)
	}
	if f, err := d.Float64("f"); err != nil || !math.IsNaN(f) {
		t.Errorf("NaN: %v, %v", f, err)
	}
	if s, err := d.String("t"); err != nil || s != "héllo" {
		t.Errorf("text: %q, %v", s, err)
	}
	if b, err := d.Bool("b"); err != nil || !b {
		t.Errorf("bool: %v, %v", b, err)
	}
	if ts, err := d.Time("ts"); err != nil || !ts.Equal(time.Date(2026, 11, 22, 7, 0, 0, 123456000, time.UTC)) {
		t.Errorf("timestamptz: %v, %v", ts, err)
	}
	if day, err := d.Time("d"); err != nil || !day.Equal(time.Date(2026, 2, 28, 0, 0, 0, 0, time.UTC)) {
		t.Errorf("date: %v, %v", day, err)
	}
	if by, err := d.Bytes("by"); err != nil || !bytes.Equal(by, []byte{0, 0xff}) {
		t.Errorf("bytea: %x, %v", by, err)
	}
	var j struct{ A []int }
	if err := d.Decode("j", &j); err != nil || !slices.Equal(j.A, []int{1, 2}) {
		t.Errorf("jsonb: %+v, %v", j, err)
	}
	var arr []int
	if err := d.Decode("arr", &arr); err != nil || !slices.Equal(arr, []int{1, 2, 3}) {
		t.Errorf("int[]: %v, %v", arr, err)
	}
	if _, err := d.String("nul"); !errors.Is(err, tablecast.ErrNull) || !d.IsNull("nul") || !d.Has("nul") {
		t.Errorf("NULL: %v", err)
	}
	if _, err := d.String("nope"); !errors.Is(err, tablecast.ErrNoColumn) || d.Has("nope") {
		t.Errorf("a column not in the row: %v", err)
	}
	if _, err := d.Int64("t"); err == nil || errors.Is(err, tablecast.ErrNull) {
		t.Errorf("text read as an integer: %v", err)
	}

	update := c.next(t)
	if update.Op != tablecast.OpUpdate || !update.IsUnchanged("big") || update.Data.Has("big") || update.Old != nil {
		t.Errorf("update leaving the TOASTed column: op %s unchanged %v data has big %v old %v", update.Op, update.Unchanged, update.Data.Has("big"), update.Old)
	}
	if s, _ := update.Data.String("t"); s != "changed" {
		t.Errorf("updated text %q", s)
	}
	rekey := c.next(t)
	oldID, _ := rekey.Old.Int64("id")
	keyID, _ := rekey.Key.Int64("id")
	newID, _ := rekey.Data.Int64("id")
	if rekey.Op != tablecast.OpUpdate || oldID != 1 || keyID != 1 || newID != 2 {
		t.Errorf("update of the key: old id %d, key id %d, new id %d", oldID, keyID, newID)
	}
	del := c.next(t)
	if id, err := del.Row().Int64("id"); del.Op != tablecast.OpDelete || del.Data != nil || err != nil || id != 2 {
		t.Errorf("delete: op %s data %v row id %d %v", del.Op, del.Data, id, err)
	}
	if tr := c.next(t); tr.Op != tablecast.OpTruncate || len(tr.Key) != 0 {
		t.Errorf("truncate: op %s key %v", tr.Op, tr.Key)
	}
}

// TestTimeBeyondRFC3339: the timestamps and dates RFC 3339 cannot write,
// which the reader sends as PostgreSQL printed them (BC, years past 9999),
// are read by Time as the instants they are.
func TestTimeBeyondRFC3339(t *testing.T) {
	n := natstest.Start(t)
	p := startPipeline(t, n, `CREATE TABLE times (id int PRIMARY KEY, tz timestamptz, ts timestamp, d date)`)
	c := consume(t, n, tablecast.ConsumerConfig{Durable: "times"}, nil)
	p.exec(t, `INSERT INTO times VALUES
		(1, '0044-03-15 12:00:00.5+00 BC', '0044-03-15 12:00:00 BC', '0044-03-15 BC'),
		(2, '10000-01-01 00:00:00+00', '10000-01-01 00:00:00.25', '10000-02-29')`)
	want := map[int64][3]time.Time{
		1: {time.Date(-43, 3, 15, 12, 0, 0, 5e8, time.UTC), time.Date(-43, 3, 15, 12, 0, 0, 0, time.UTC), time.Date(-43, 3, 15, 0, 0, 0, 0, time.UTC)},
		2: {time.Date(10000, 1, 1, 0, 0, 0, 0, time.UTC), time.Date(10000, 1, 1, 0, 0, 0, 25e7, time.UTC), time.Date(10000, 2, 29, 0, 0, 0, 0, time.UTC)},
	}
	for range want {
		ev := c.next(t)
		id, _ := ev.Key.Int64("id")
		for i, col := range []string{"tz", "ts", "d"} {
			got, err := ev.Data.Time(col)
			if err != nil || !got.Equal(want[id][i]) {
				raw := ev.Data[col]
				t.Errorf("row %d column %s (%s): %v, %v; want %v", id, col, raw, got, err, want[id][i])
			}
		}
	}
	// An offset with seconds (local mean time, under a reader whose
	// session has such a time zone), encoded as the reader encodes it.
	ev, err := tablecast.ParseEvent([]byte(`{"id":"1","op":"create","data":{"tz":` +
		string(schema.AppendValue(nil, pgtype.TimestamptzOID, []byte("1850-01-01 00:00:00+00:19:32"))) + `}}`))
	if err != nil {
		t.Fatal(err)
	}
	if got, err := ev.Data.Time("tz"); err != nil || !got.Equal(time.Date(1849, 12, 31, 23, 40, 28, 0, time.UTC)) {
		t.Errorf("offset with seconds (%s): %v, %v", ev.Data["tz"], got, err)
	}
}

// TestClaimsAndTruncatedEvents: behind a stock NATS (1 MiB messages), the
// reader stores a 2 MB row's event as an object and claims it; Consume
// hands over the full event, the same bytes stream.ResolveEvent reads.
// Once the object is gone the event comes as received, its claim set and
// no rows. A row beyond TABLECAST_MAX_EVENT_BYTES comes truncated, with
// its key.
func TestClaimsAndTruncatedEvents(t *testing.T) {
	n := natstest.StartStock(t)
	p := startPipeline(t, n, `CREATE TABLE docs (id int PRIMARY KEY, body text)`, "TABLECAST_MAX_EVENT_BYTES=4194304")
	c := consume(t, n, tablecast.ConsumerConfig{Durable: "claims"}, nil)
	p.exec(t, `INSERT INTO docs VALUES (1, (SELECT string_agg(md5(g::text), '') FROM generate_series(1, 65536) g))`)
	p.exec(t, `INSERT INTO docs VALUES (2, (SELECT string_agg(md5(g::text), '') FROM generate_series(1, 196608) g))`)

	big := c.next(t)
	body, err := big.Data.String("body")
	if big.Claim != nil || err != nil || len(body) != 65536*32 {
		t.Fatalf("claimed event: claim %v, body of %d bytes, %v", big.Claim, len(body), err)
	}
	stored := n.ReadAll(t, "TABLECAST")
	if len(stored) < 1 || !bytes.Contains(stored[0].Data, []byte(`"claim":`)) {
		t.Fatalf("the stream's first message is not a claim: %.200s", stored[0].Data)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	want, err := stream.ResolveEvent(ctx, n.JS, stored[0].Data)
	if err != nil || !bytes.Equal(big.Raw, want) {
		t.Errorf("Consume's event differs from stream.ResolveEvent's (%d and %d bytes, %v)", len(big.Raw), len(want), err)
	}

	tr := c.next(t)
	if id, err := tr.Key.Int64("id"); !tr.Truncated || tr.Data != nil || tr.Claim != nil || err != nil || id != 2 {
		t.Errorf("event beyond TABLECAST_MAX_EVENT_BYTES: truncated %v data %v claim %v key id %d %v", tr.Truncated, tr.Data != nil, tr.Claim, id, err)
	}

	obs, err := n.JS.ObjectStore(ctx, "TABLECAST_PAYLOADS")
	if err != nil {
		t.Fatal(err)
	}
	if err := obs.Delete(ctx, p.name+"/"+big.ID); err != nil {
		t.Fatal(err)
	}
	again := consume(t, n, tablecast.ConsumerConfig{Durable: "claims-gone"}, nil)
	gone := again.next(t)
	if gone.ID != big.ID || gone.Claim == nil || gone.Claim.Object != p.name+"/"+big.ID || gone.Data != nil {
		t.Errorf("with its object gone: id %s claim %+v data %v", gone.ID, gone.Claim, gone.Data != nil)
	}
	r := tablecast.NewResolver(n.JS)
	if _, err := r.Resolve(ctx, gone); !errors.Is(err, tablecast.ErrClaimGone) {
		t.Errorf("Resolve of a claim to a deleted object: %v, want ErrClaimGone", err)
	}
}

// TestConsumerRedeliversAfterBackoff: an event whose handler fails comes
// back, no sooner than the backoff says, until the handler succeeds; it
// is then acknowledged and never comes again, and the events after it
// still arrive.
func TestConsumerRedeliversAfterBackoff(t *testing.T) {
	n := natstest.Start(t)
	p := startPipeline(t, n, `CREATE TABLE jobs (id int PRIMARY KEY)`)
	backoff := []time.Duration{700 * time.Millisecond, 1500 * time.Millisecond}
	var failures atomic.Int32
	c := consume(t, n, tablecast.ConsumerConfig{Durable: "retry", Backoff: backoff}, func(ev *tablecast.Event) error {
		if id, _ := ev.Key.Int64("id"); id == 1 && failures.Add(1) <= 2 {
			return errors.New("not yet")
		}
		return nil
	})
	p.exec(t, `INSERT INTO jobs VALUES (1)`)
	p.exec(t, `INSERT INTO jobs VALUES (2)`)
	var deliveries []time.Time
	var seen []int64
	for len(deliveries) < 3 || len(seen) < 4 {
		ev := c.next(t)
		id, _ := ev.Key.Int64("id")
		seen = append(seen, id)
		if id == 1 {
			deliveries = append(deliveries, time.Now())
			if ev.Delivered != uint64(len(deliveries)) {
				t.Errorf("delivery %d of event 1 says Delivered %d", len(deliveries), ev.Delivered)
			}
		}
	}
	for i, d := range backoff {
		if gap := deliveries[i+1].Sub(deliveries[i]); gap < d-50*time.Millisecond {
			t.Errorf("delivery %d came %s after the failure, before its backoff of %s", i+2, gap, d)
		}
	}
	if !slices.Contains(seen, 2) {
		t.Errorf("event 2 never arrived: %v", seen)
	}
	c.none(t, 3*time.Second, "after the handler succeeded")
	info, err := n.JS.Consumer(context.Background(), "TABLECAST", "retry")
	if err == nil {
		st, err := info.Info(context.Background())
		if err != nil || st.NumAckPending != 0 || st.NumRedelivered != 0 {
			t.Errorf("consumer state: %+v, %v; want nothing pending", st, err)
		}
	}
}

// TestConsumerSlowHandlerAndDuplicates: a handler that runs three times
// longer than the ack wait is not given a second copy; an event stored a
// second time (as a replay beyond JetStream's duplicate window would) is
// acknowledged without reaching the handler again while its id is in the
// window, and reaches it again without the window; and the message is
// acknowledged only once the handler has returned: a service stopped
// mid-handler gets the event again when it comes back.
func TestConsumerSlowHandlerAndDuplicates(t *testing.T) {
	n := natstest.Start(t)
	p := startPipeline(t, n, `CREATE TABLE jobs (id int PRIMARY KEY)`)
	ackWait := time.Second
	var calls atomic.Int32
	// Without de-duplication, so that a second copy would reach the handler.
	c := consume(t, n, tablecast.ConsumerConfig{Durable: "slow", AckWait: ackWait, DedupWindow: -1}, func(ev *tablecast.Event) error {
		if calls.Add(1) == 1 {
			time.Sleep(3*ackWait + 500*time.Millisecond)
		}
		return nil
	})
	p.exec(t, `INSERT INTO jobs VALUES (1)`)
	first := c.next(t)
	c.none(t, 3*ackWait+2*time.Second, "while and after the slow handler ran")
	if calls.Load() != 1 {
		t.Errorf("the slow handler ran %d times", calls.Load())
	}

	// The same event again, under another message id, as a replay would
	// store it (with its origin).
	stored := n.ReadAll(t, "TABLECAST")
	if stored[0].Header.Get("Tablecast-Origin") == "" {
		t.Fatalf("the event has no Tablecast-Origin: %v", stored[0].Header)
	}
	copyOf := func(id string, edit func(nats.Header)) {
		t.Helper()
		msg := nats.NewMsg(stored[0].Subject)
		msg.Data = stored[0].Data
		for k, v := range stored[0].Header {
			msg.Header[k] = slices.Clone(v)
		}
		msg.Header.Set("Nats-Msg-Id", id)
		if edit != nil {
			edit(msg.Header)
		}
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		if _, err := n.JS.PublishMsg(ctx, msg); err != nil {
			t.Fatal(err)
		}
	}
	copyOf("copy-of-"+first.ID, nil)
	dedup := consume(t, n, tablecast.ConsumerConfig{Durable: "dedup"}, nil)
	if ev := dedup.next(t); ev.ID != first.ID {
		t.Fatalf("first event %s, want %s", ev.ID, first.ID)
	}
	dedup.none(t, 3*time.Second, "a copy of a handled event")
	// The same id from another PostgreSQL cluster (another system
	// identifier) is another event, and reaches the handler. From the same
	// cluster on another timeline it is a copy: a failover slot replays on
	// the promoted server what it sent before, under the same ids.
	origin := strings.Split(stored[0].Header.Get("Tablecast-Origin"), "/")
	copyOf("other-cluster", func(h nats.Header) {
		h.Set("Tablecast-Origin", "1"+origin[0]+"/"+strings.Join(origin[1:], "/"))
	})
	if ev := dedup.next(t); ev.ID != first.ID || ev.Sequence != stored[0].Seq+2 {
		t.Fatalf("after another cluster's event: %s at %d, want %s at %d", ev.ID, ev.Sequence, first.ID, stored[0].Seq+2)
	}
	copyOf("other-timeline", func(h nats.Header) {
		h.Set("Tablecast-Origin", origin[0]+"/9/"+strings.Join(origin[2:], "/"))
	})
	dedup.none(t, 3*time.Second, "a copy of a handled event on another timeline")
	off := consume(t, n, tablecast.ConsumerConfig{Durable: "nodedup", DedupWindow: -1}, nil)
	if a, b := off.next(t), off.next(t); a.ID != first.ID || b.ID != first.ID {
		t.Errorf("without de-duplication: %s then %s, want %s twice", a.ID, b.ID, first.ID)
	}

	// Stopped while the handler runs: not acknowledged, delivered again.
	release := make(chan struct{})
	started := make(chan struct{}, 1)
	stopper := consume(t, n, tablecast.ConsumerConfig{Durable: "stopped"}, func(ev *tablecast.Event) error {
		started <- struct{}{}
		<-release
		return context.Canceled
	})
	<-started
	go func() { time.Sleep(200 * time.Millisecond); close(release) }()
	stopper.stop()
	back := consume(t, n, tablecast.ConsumerConfig{Durable: "stopped"}, nil)
	if ev := back.next(t); ev.ID != first.ID || ev.Delivered < 2 {
		t.Errorf("after a stop mid-handler: %s delivered %d, want %s again", ev.ID, ev.Delivered, first.ID)
	}
}

// TestExampleService runs clients/go/example, the README's service, as a
// process against the reader: it prints each order change it reads.
func TestExampleService(t *testing.T) {
	n := natstest.Start(t)
	p := startPipeline(t, n, `CREATE TABLE orders (id bigserial PRIMARY KEY, status text NOT NULL DEFAULT 'open', total numeric(12,2) NOT NULL DEFAULT 0)`)
	cmd := exec.Command(binary(t, "github.com/tablecast/tablecast/clients/go/example"))
	cmd.Env = []string{"NATS_URL=" + n.URL()}
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	p.exec(t, `INSERT INTO orders (status, total) VALUES ('open', 19.90)`)
	p.exec(t, `UPDATE orders SET status = 'paid' WHERE id = 1`)
	p.exec(t, `DELETE FROM orders WHERE id = 1`)
	p.exec(t, `TRUNCATE orders`)
	lines := make(chan string, 10)
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			lines <- sc.Text()
		}
		close(lines)
	}()
	for _, want := range []string{"order 1 create: open, total 19.90", "order 1 update: paid, total 19.90", "order 1 deleted", "orders truncated"} {
		select {
		case got := <-lines:
			if got != want {
				t.Errorf("the example printed %q, want %q", got, want)
			}
		case <-time.After(time.Minute):
			t.Fatalf("the example printed nothing for %q", want)
		}
	}
}

// TestParseEventCause: the truncate that starts a table added again keeps
// its cause; any other event has none.
func TestParseEventCause(t *testing.T) {
	ev, err := tablecast.ParseEvent([]byte(`{"id":"00000000016B3748-0001","op":"truncate","schema":"public","table":"orders","key":{},"cause":"table_added"}`))
	if err != nil {
		t.Fatal(err)
	}
	if ev.Op != tablecast.OpTruncate || ev.Cause != tablecast.CauseTableAdded || len(ev.Key) != 0 {
		t.Errorf("truncate of a table added: op %s cause %q key %v", ev.Op, ev.Cause, ev.Key)
	}
	ev, err = tablecast.ParseEvent([]byte(`{"id":"00000000016B3748-0003","op":"truncate","schema":"public","table":"invoices","key":{},"cause":"table_renamed"}`))
	if err != nil || ev.Cause != tablecast.CauseTableRenamed {
		t.Errorf("truncate of a table renamed: cause %q, %v", ev.Cause, err)
	}
	ev, err = tablecast.ParseEvent([]byte(`{"id":"00000000016B3748-0004","op":"truncate","schema":"public","table":"invoices","key":{},"cause":"table_dropped"}`))
	if err != nil || ev.Cause != tablecast.CauseTableDropped {
		t.Errorf("truncate of a table dropped: cause %q, %v", ev.Cause, err)
	}
	ev, err = tablecast.ParseEvent([]byte(`{"id":"00000000016B3748-0002","op":"truncate","schema":"public","table":"orders","key":{}}`))
	if err != nil || ev.Cause != "" {
		t.Errorf("a truncate PostgreSQL sent: cause %q, %v", ev.Cause, err)
	}
}

// TestConsumerWideFilterAndDeletedConsumer: a filter that also takes
// transaction markers and custom topics' messages hands the handler the
// events alone, even one event at a time (MaxAckPending 1), where a
// message that is not an event, sent back again and again, would hold up
// every later one; and a consumer deleted under Consume ends it with an
// error instead of pulls that nobody answers, over and over.
func TestConsumerWideFilterAndDeletedConsumer(t *testing.T) {
	n := natstest.Start(t)
	p := startPipeline(t, n, `CREATE TABLE jobs (id int PRIMARY KEY)`, "TABLECAST_TX_MARKERS=true")
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	c := consume(t, n, tablecast.ConsumerConfig{Durable: "wide", Subjects: []string{"tablecast.>"}, MaxAckPending: 1}, nil)
	for i := 1; i <= 3; i++ {
		p.exec(t, fmt.Sprintf(`INSERT INTO jobs VALUES (%d)`, i))
		if _, err := n.JS.Publish(ctx, "tablecast.topic.chat", []byte(`{"hello":"world"}`)); err != nil {
			t.Fatal(err)
		}
	}
	for i := int64(1); i <= 3; i++ {
		ev := c.next(t)
		if id, _ := ev.Key.Int64("id"); id != i || ev.Op != "create" {
			t.Fatalf("event %d: %s of %s", i, ev.Op, ev.Key)
		}
	}
	c.none(t, 2*time.Second, "after the three events")
	var markers int
	for _, m := range n.ReadAll(t, "TABLECAST") {
		if strings.HasSuffix(m.Subject, ".%tx") {
			markers++
		}
	}
	if markers < 3 {
		t.Fatalf("the stream holds %d transaction markers, want 3: the filter took none", markers)
	}

	if err := n.JS.DeleteConsumer(ctx, "TABLECAST", "wide"); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-c.done:
		if !errors.Is(err, jetstream.ErrConsumerNotFound) {
			t.Fatalf("Consume returned %v, want an error wrapping ErrConsumerNotFound", err)
		}
		c.cancel = nil
	case <-time.After(time.Minute):
		t.Fatal("Consume went on for a minute after its consumer was deleted")
	}
}
