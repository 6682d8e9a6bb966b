package rowstate

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
