// Package civil holds the calendar arithmetic that both the value converter
// (schema) and the gateway's timestamp filters (wsgate) need, so that the
// two agree on what a valid date is.
package civil

// DaysIn returns the number of days of month (1-12) in year of the
// proleptic Gregorian calendar (year 0 is 1 BC).
func DaysIn(month int, year int64) int {
	switch month {
	case 2:
		if year%4 == 0 && (year%100 != 0 || year%400 == 0) {
			return 29
		}
		return 28
	case 4, 6, 9, 11:
		return 30
	}
	return 31
}

// TwoDigits reads two ASCII digits as a number from 0 to 99.
func TwoDigits(a, b byte) (int, bool) {
	if a < '0' || a > '9' || b < '0' || b > '9' {
		return 0, false
	}
	return int(a-'0')*10 + int(b-'0'), true
}
