//go:build unix

package cdc

import (
	"context"
	"encoding/binary"
	"io"
	"log/slog"
	"strconv"
	"syscall"
	"testing"
	"time"

	"github.com/tablecast/tablecast/internal/natstest"
	"github.com/tablecast/tablecast/schema"
	"github.com/tablecast/tablecast/stream"
)

// BenchmarkReaderPath measures the reader's own work per change: decoding
// pgoutput (XLogData, Begin, Insert, Commit), encoding the event,
// publishing it (nats.go's buffering and writes, fast batches) and handling
// JetStream's acknowledgements, in transactions of 1,000 rows as
// scripts/bench-cdc.sh writes them. NATS runs as a process of its own, so
// that the benchmark's CPU time (cpu-ns/change: user and system, every
// goroutine of the process) is the reader's alone; ns/op is the wall time
// per change, which also waits on that server.
//
//	go test -run '^$' -bench ReaderPath -benchtime 200000x ./cdc
//
// narrow is the table of bench-cdc.sh's many/one/update workloads (6
// columns: bigint, int, text, numeric, timestamptz, boolean), wide its
// 50-column table of mixed types.
func BenchmarkReaderPath(b *testing.B) {
	n := natstest.StartProcess(b)
	ctx := context.Background()
	if _, err := stream.EnsureStream(ctx, n.JS, stream.StreamConfig{Name: "TABLECAST", Prefix: testPrefix, DuplicateWindow: time.Second}); err != nil {
		b.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		rel  *relation
		row  []*string
	}{
		{"narrow", benchRelation(narrowColumns()), narrowRow()},
		{"wide", benchRelation(wideColumns()), wideRow()},
	} {
		b.Run(tc.name, func(b *testing.B) {
			log := slog.New(slog.NewTextHandler(io.Discard, nil))
			r, err := New(Config{DatabaseURL: "postgres://unused", Slot: "bench", Publication: "bench"}, n.NC, n.JS, testPrefix, log, nil)
			if err != nil {
				b.Fatal(err)
			}
			r.db = "shop"
			info, err := r.streamInfo(ctx)
			if err != nil {
				b.Fatal(err)
			}
			pub, err := stream.NewPublisher(n.NC, n.JS, r.cfg.MaxInFlight, log, r.publisherOptions(info.Config, "bench/1/shop/bench")...)
			if err != nil {
				b.Fatal(err)
			}
			defer pub.Close()
			if !pub.Batching() {
				b.Fatal("the publisher sends no batches")
			}
			tc.rel.count = r.tableCount(tc.rel.table.Schema, tc.rel.table.Name)
			s := &session{r: r, pub: pub, relations: map[uint32]*relation{7: tc.rel}, typeNames: map[uint32]string{}, windows: map[string]*window{}}
			insert := xlog(rowMsg('I', 7, []byte{'N'}, tupleBytes(tc.row...)))
			const txn = 1000
			lsn := uint64(0x1000000)
			b.SetBytes(int64(len(insert)))
			b.ReportAllocs()
			b.ResetTimer()
			start, cpu := time.Now(), processCPU()
			for done := 0; done < b.N; {
				rows := min(txn, b.N-done)
				lsn += 0x100000
				now := time.Now()
				if err := s.handleCopyData(ctx, xlog(beginMsg(lsn, uint32(done))), now); err != nil {
					b.Fatal(err)
				}
				for range rows {
					if err := s.handleCopyData(ctx, insert, now); err != nil {
						b.Fatal(err)
					}
				}
				if err := s.handleCopyData(ctx, xlog(commitMsg(lsn)), now); err != nil {
					b.Fatal(err)
				}
				done += rows
			}
			if err := pub.Flush(ctx); err != nil {
				b.Fatal(err)
			}
			for pub.Acked() < uint64(b.N) {
				select {
				case <-pub.Progress():
				case <-pub.Failed():
					b.Fatal(pub.Err())
				case <-time.After(30 * time.Second):
					b.Fatalf("acked %d of %d", pub.Acked(), b.N)
				}
			}
			elapsed, used := time.Since(start), processCPU()-cpu
			b.StopTimer()
			b.ReportMetric(float64(used.Nanoseconds())/float64(b.N), "cpu-ns/change")
			b.ReportMetric(float64(b.N)/elapsed.Seconds(), "changes/s")
		})
	}
}

// processCPU is the CPU time (user and system) this process has used.
func processCPU() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// xlog wraps a pgoutput message in an XLogData message.
func xlog(msg []byte) []byte {
	b := make([]byte, 25, 25+len(msg))
	b[0] = 'w'
	return append(b, msg...)
}

func beginMsg(lsn uint64, xid uint32) []byte {
	b := append([]byte{'B'}, binary.BigEndian.AppendUint64(nil, lsn)...)
	b = binary.BigEndian.AppendUint64(b, uint64(time.Now().UnixMicro()-946684800_000_000))
	return binary.BigEndian.AppendUint32(b, xid)
}

func commitMsg(lsn uint64) []byte {
	b := []byte{'C', 0}
	b = binary.BigEndian.AppendUint64(b, lsn)
	b = binary.BigEndian.AppendUint64(b, lsn+0x100)
	return binary.BigEndian.AppendUint64(b, uint64(time.Now().UnixMicro()-946684800_000_000))
}

// benchRelation is a relation of table public.bench with cols, keyed on
// the first.
func benchRelation(cols []schema.Column) *relation {
	cols[0].Key, cols[0].Identity = true, true
	t := &schema.Table{RelationID: 7, Schema: "public", Name: "bench", ReplicaIdentity: 'd', Columns: cols}
	rel := &relation{table: t, subjects: map[string]string{}}
	for _, op := range []string{schema.OpCreate, schema.OpUpdate, schema.OpDelete, schema.OpTruncate, schema.OpRead} {
		rel.subjects[op] = stream.ChangeSubject(testPrefix, "shop", t.Schema, t.Name, op)
	}
	return rel
}

// OIDs of the built-in types the benchmark tables use.
const (
	oidBool        = 16
	oidInt8        = 20
	oidInt4        = 23
	oidText        = 25
	oidFloat8      = 701
	oidDate        = 1082
	oidTimestamptz = 1184
	oidNumeric     = 1700
	oidUUID        = 2950
	oidJSONB       = 3802
)

func narrowColumns() []schema.Column {
	return []schema.Column{{Name: "id", TypeOID: oidInt8}, {Name: "qty", TypeOID: oidInt4}, {Name: "label", TypeOID: oidText},
		{Name: "price", TypeOID: oidNumeric, TypeMod: 12<<16 | 2 + 4}, {Name: "at", TypeOID: oidTimestamptz}, {Name: "flag", TypeOID: oidBool}}
}

func narrowRow() []*string {
	return []*string{str("123456"), str("456"), str("label-123456"), str("1234.56"), str("2026-12-04 23:17:47.044735+00"), str("t")}
}

// wideSpec is bench-cdc.sh's wide table: a type, how many columns of it,
// and a value in PostgreSQL's text form.
var wideSpec = []struct {
	prefix string
	oid    uint32
	n      int
	value  string
}{
	{"i", oidInt4, 7, "73421"},
	{"b", oidInt8, 5, "123457000123"},
	{"n", oidNumeric, 5, "734.21"},
	{"t", oidText, 9, "text-3-6f1ed002ab5595859014ebf0951522d9"},
	{"ts", oidTimestamptz, 4, "2026-12-04 21:17:47.044735+00"},
	{"f", oidBool, 4, "f"},
	{"j", oidJSONB, 3, `{"g": 123456, "k": 2, "tag": "v3", "list": [123456, 2, true]}`},
	{"u", oidUUID, 3, "8c5e7f0e-6c1d-4b3a-9f6e-2a1b3c4d5e6f"},
	{"d", oidFloat8, 5, "35273.142857142855"},
	{"dt", oidDate, 4, "2023-05-17"},
}

func wideColumns() []schema.Column {
	cols := []schema.Column{{Name: "id", TypeOID: oidInt8}}
	for _, w := range wideSpec {
		for k := 1; k <= w.n; k++ {
			cols = append(cols, schema.Column{Name: w.prefix + strconv.Itoa(k), TypeOID: w.oid})
		}
	}
	return cols
}

func wideRow() []*string {
	row := []*string{str("123456")}
	for _, w := range wideSpec {
		for range w.n {
			row = append(row, str(w.value))
		}
	}
	return row
}
