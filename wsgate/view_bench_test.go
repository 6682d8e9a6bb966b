package wsgate

import (
	"fmt"
	"testing"

	"github.com/tablecast/tablecast/internal/catalog"
	"github.com/tablecast/tablecast/schema"
)

// BenchmarkViewDecide measures what a view costs per event of its table:
// single-row transactions inserting a row then updating it, decided by
// one view, for a table under the default replica identity and one under
// REPLICA IDENTITY FULL (whose views track the rows that came onto keys in
// each transaction, for deferrable keys).
//
//	go test -run='^$' -bench=ViewDecide -benchmem ./wsgate/
func BenchmarkViewDecide(b *testing.B) {
	for _, identity := range []string{"default", "full"} {
		b.Run(identity, func(b *testing.B) {
			s := &sub{id: "v", snapshot: true, view: map[uint64]struct{}{}, table: &catalog.Table{Shape: schema.Shape{ReplicaIdentity: identity}}}
			const n = 4096
			creates, updates := make([][]byte, n), make([][]byte, n)
			for i := range n {
				row := fmt.Sprintf(`{"id":%d,"name":"row %d","total":"19.90","status":"open"}`, i, i)
				lsn := fmt.Sprintf(`"0/%X"`, 2*i)
				creates[i] = fmt.Appendf(nil, `{"id":"%016X-0001","op":"create","db":"shop","schema":"public","table":"orders","lsn":%s,"key":{"id":%d},"data":%s}`, 2*i, lsn, i, row)
				lsn = fmt.Sprintf(`"0/%X"`, 2*i+1)
				updates[i] = fmt.Appendf(nil, `{"id":"%016X-0001","op":"update","db":"shop","schema":"public","table":"orders","lsn":%s,"key":{"id":%d},"data":{"id":%d,"name":"row %d","total":"20.90","status":"paid"},"old":%s}`, 2*i+1, lsn, i, i, i, row)
			}
			emit := func(string, []byte) {}
			b.ReportAllocs()
			b.ResetTimer()
			for i := range b.N {
				k := i % n
				if k == 0 {
					clear(s.view)
				}
				s.viewDecide(schema.BitCreate, creates[k], emit)
				s.viewDecide(schema.BitUpdate, updates[k], emit)
			}
		})
	}
}
