package civil

import (
	"testing"
	"time"
)

func TestDaysInMatchesTime(t *testing.T) {
	for _, year := range []int64{1, 4, 100, 400, 1900, 2000, 2023, 2024, 2100, 9999} {
		for month := 1; month <= 12; month++ {
			// the day before the first of the next month
			want := time.Date(int(year), time.Month(month)+1, 0, 0, 0, 0, 0, time.UTC).Day()
			if got := DaysIn(month, year); got != want {
				t.Errorf("DaysIn(%d, %d) = %d, want %d", month, year, got, want)
			}
		}
	}
}

func TestTwoDigits(t *testing.T) {
	if n, ok := TwoDigits('0', '7'); !ok || n != 7 {
		t.Errorf("TwoDigits(0, 7) = %d, %v", n, ok)
	}
	if n, ok := TwoDigits('9', '9'); !ok || n != 99 {
		t.Errorf("TwoDigits(9, 9) = %d, %v", n, ok)
	}
	for _, p := range [][2]byte{{'a', '1'}, {'1', '/'}, {':', '0'}} {
		if _, ok := TwoDigits(p[0], p[1]); ok {
			t.Errorf("TwoDigits(%q, %q) accepted", p[0], p[1])
		}
	}
}
