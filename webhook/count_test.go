package webhook

import "testing"

// TestCountEnvelopes: the benchmarks' receiver counts a batch's envelopes
// as encoding/json would.
func TestCountEnvelopes(t *testing.T) {
	for body, want := range map[string]int{
		`{"id":"a"}`:   1,
		`[]`:           0,
		`[ ]`:          0,
		`[{"id":"a"}]`: 1,
		`[{"id":"a","data":{"v":[1,2]}}, {"id":"b"} ,{"id":"c,]"}]`: 3,
		`[{"id":"a"},`: 1, // malformed: parseBody fails the test
	} {
		if got := countEnvelopes([]byte(body)); got != want {
			t.Errorf("countEnvelopes(%s) = %d, want %d", body, got, want)
		}
	}
}
