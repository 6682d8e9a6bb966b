package wsgate

import (
	"fmt"
	"net"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tablecast/tablecast/internal/catalog"
	"github.com/tablecast/tablecast/internal/query"
	"github.com/tablecast/tablecast/schema"
)

// discardConn is a net.Conn that swallows writes, so that the benchmarks
// below measure the gateway's fan-out work and not a network.
type discardConn struct {
	net.Conn
	written atomic.Int64
}

func (c *discardConn) Write(p []byte) (int, error)      { c.written.Add(int64(len(p))); return len(p), nil }
func (c *discardConn) SetWriteDeadline(time.Time) error { return nil }
func (c *discardConn) Close() error                     { return nil }

// benchFeed builds a feed of public.orders with n subscriptions, each on a
// connection of its own, made by where(i).
func benchFeed(b *testing.B, n int, where func(i int) string) (*feed, []*discardConn) {
	cfg, _ := Config{}.withDefaults()
	g := &Gateway{cfg: cfg, log: cfg.Logger, met: newMetrics(nil), poll: nopoll{}, conns: map[*conn]struct{}{}}
	t := catalog.NewTable("tablecast", ordersShape())
	f := &feed{g: g, subject: t.Subject, groups: map[string]*frameGroup{}}
	ncs := make([]*discardConn, n)
	for i := range n {
		ncs[i] = &discardConn{}
		c := &conn{g: g, nc: ncs[i], fd: -1}
		flt, err := query.CompileWhere([]byte(where(i)), t.Name, t.Types)
		if err != nil {
			b.Fatal(err)
		}
		s := &sub{c: c, id: "s1", table: t, ops: schema.AllOps, filter: flt}
		f.attach(s, nil, false)
	}
	return f, ncs
}

type nopoll struct{}

func (nopoll) add(*conn) error   { return errNoPoll }
func (nopoll) rearm(*conn) error { return nil }
func (nopoll) remove(*conn)      {}
func (nopoll) close()            {}

var benchEvent = []byte(`{"id":"00000000016B3748-0003","op":"update","db":"shop","schema":"public","table":"orders","lsn":"0/16B3748","xid":771,"commit_time":"2026-11-22T07:00:00.123456Z","key":{"id":42},"data":{"id":42,"status":"paid","total":"19.90","paid":true,"created":"2026-11-22T07:00:00Z","tenant":"t42","notes":null}}`)

// BenchmarkFanoutIndexed: 10,000 subscriptions each filtering on its own
// tenant; an event matches one. The cost must not grow with the number of
// subscriptions.
func BenchmarkFanoutIndexed(b *testing.B) {
	for _, n := range []int{100, 10000} {
		b.Run(fmt.Sprint(n), func(b *testing.B) {
			f, _ := benchFeed(b, n, func(i int) string { return fmt.Sprintf(`{"tenant":{"eq":"t%d"}}`, i) })
			subject := "tablecast.shop.public.orders.update"
			b.ReportAllocs()
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				f.mu.Lock()
				f.deliverEvent(uint64(i+1), subject, benchEvent)
				f.mu.Unlock()
			}
		})
	}
}

// BenchmarkFanoutAll: every subscription matches (same id, no projection):
// one frame encoded, queued on every connection. ns/op divided by the
// subscriptions is the per-subscriber cost of fan-out.
func BenchmarkFanoutAll(b *testing.B) {
	for _, n := range []int{1000, 10000} {
		b.Run(fmt.Sprint(n), func(b *testing.B) {
			f, _ := benchFeed(b, n, func(int) string { return `{"status":{"eq":"paid"},"total":{"gte":"10"}}` })
			subject := "tablecast.shop.public.orders.update"
			b.ReportAllocs()
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				f.mu.Lock()
				f.deliverEvent(uint64(i+1), subject, benchEvent)
				f.mu.Unlock()
			}
			b.StopTimer()
			b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N)/float64(n), "ns/subscriber")
		})
	}
}
