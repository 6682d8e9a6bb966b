package rowstate

import "github.com/prometheus/client_golang/prometheus/testutil"

// LoseRowsForTest makes the maintainers' batch writers lose, as a dropped
// connection would, the messages of a batch for which lose returns true
// (given their number in the batch), until the returned restore is called.
func LoseRowsForTest(lose func(bseq uint64) bool) (restore func()) {
	dropRow.Store(&lose)
	return func() { dropRow.Store(nil) }
}

// LoseBatchEndsForTest makes the maintainers' batch writers lose the
// message that ends a batch when lose returns true, until the returned
// restore is called.
func LoseBatchEndsForTest(lose func() bool) (restore func()) {
	dropEnd.Store(&lose)
	return func() { dropEnd.Store(nil) }
}

// WithoutBatchesForTest makes maintainers started from now on write rows
// one acknowledged publish each, as they do on a NATS server without fast
// batches, until the returned restore is called.
func WithoutBatchesForTest() (restore func()) {
	noBatches.Store(true)
	return func() { noBatches.Store(false) }
}

// LookupsForTest returns how many rows m read back from the rows stream one
// a request, and read ahead for batches.
func (m *Maintainer) LookupsForTest() (one, ahead float64) {
	return testutil.ToFloat64(m.m.lookupsOne), testutil.ToFloat64(m.m.lookupsAhead)
}
