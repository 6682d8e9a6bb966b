//go:build !linux

package tmpfs

import "testing"

// Mount skips the test: tmpfs is Linux's.
func Mount(t testing.TB, _ int64) string {
	t.Helper()
	t.Skip("full-disk tests mount a tmpfs, which needs Linux")
	return ""
}

// Free is not reached: Mount skips first.
func Free(t testing.TB, _ string) int64 { t.Helper(); t.Skip("needs Linux"); return 0 }

// Fill is not reached: Mount skips first.
func Fill(t testing.TB, _ string, _ int64) string { t.Helper(); t.Skip("needs Linux"); return "" }
