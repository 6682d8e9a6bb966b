package query

import (
	"cmp"

	"github.com/tablecast/tablecast/internal/civil"
)

// instant is a point in time, or a day for dates (at midnight UTC).
type instant struct {
	inf  int8  // -1 for -infinity, 1 for infinity, else 0
	sec  int64 // since 1970-01-01 00:00:00 UTC
	nsec int32
}

func compareInstant(a, b instant) int {
	if c := cmp.Compare(a.inf, b.inf); c != 0 || a.inf != 0 {
		return c
	}
	if c := cmp.Compare(a.sec, b.sec); c != 0 {
		return c
	}
	return cmp.Compare(a.nsec, b.nsec)
}

// parseInstant parses a timestamp, or with dateOnly a date, allocating
// nothing. It reads what the event envelope holds and what a client is
// likely to write:
//
//   - RFC 3339: 2026-11-22T07:00:00.123456Z, 2026-11-22T12:30:00+05:30;
//   - PostgreSQL's ISO output, which the envelope keeps for what RFC 3339
//     cannot say: 2026-11-22 07:00:00.123456+00, offsets with seconds
//     (+05:53:28), years past 9999, and a trailing " BC";
//   - no zone (timestamp without time zone): read as UTC;
//   - a date alone: midnight; infinity and -infinity.
//
// Fractional seconds may have any length; digits past nanoseconds are
// dropped.
func parseInstant(s []byte, dateOnly bool) (instant, bool) {
	switch {
	case equalFold(s, "infinity") || equalFold(s, "+infinity"):
		return instant{inf: 1}, true
	case equalFold(s, "-infinity"):
		return instant{inf: -1}, true
	}
	bc := false
	if n := len(s); n > 3 && s[n-3] == ' ' && s[n-2]|0x20 == 'b' && s[n-1]|0x20 == 'c' {
		bc, s = true, s[:n-3]
	}
	i := skipDigits(s, 0)
	if i < 4 || i > 7 || len(s) < i+6 || s[i] != '-' || s[i+3] != '-' {
		return instant{}, false
	}
	var year int64
	for _, c := range s[:i] {
		year = year*10 + int64(c-'0')
	}
	month, ok1 := civil.TwoDigits(s[i+1], s[i+2])
	day, ok2 := civil.TwoDigits(s[i+4], s[i+5])
	if !ok1 || !ok2 || year == 0 {
		return instant{}, false
	}
	if bc {
		year = 1 - year
	}
	if month < 1 || month > 12 || day < 1 || day > civil.DaysIn(month, year) {
		return instant{}, false
	}
	t := instant{sec: daysFromCivil(year, month, day) * 86400}
	s = s[i+6:]
	if len(s) == 0 {
		return t, true
	}
	if dateOnly || len(s) < 6 || s[0] != 'T' && s[0] != 't' && s[0] != ' ' || s[3] != ':' {
		return instant{}, false
	}
	hour, ok1 := civil.TwoDigits(s[1], s[2])
	minute, ok2 := civil.TwoDigits(s[4], s[5])
	if !ok1 || !ok2 || minute > 59 {
		return instant{}, false
	}
	s = s[6:]
	second := int64(0)
	if len(s) >= 3 && s[0] == ':' {
		ss, ok := civil.TwoDigits(s[1], s[2])
		if !ok || ss > 60 { // 60: PostgreSQL reads a leap second as the next minute
			return instant{}, false
		}
		second, s = int64(ss), s[3:]
		if len(s) > 0 && s[0] == '.' {
			j := skipDigits(s, 1)
			if j == 1 {
				return instant{}, false
			}
			scale := int32(100_000_000)
			for _, c := range s[1:min(j, 10)] {
				t.nsec += int32(c-'0') * scale
				scale /= 10
			}
			s = s[j:]
		}
	}
	if hour > 24 || hour == 24 && (minute != 0 || second != 0 || t.nsec != 0) {
		return instant{}, false
	}
	t.sec += int64(hour)*3600 + int64(minute)*60 + second
	if len(s) == 0 {
		return t, true
	}
	if len(s) == 1 && (s[0] == 'Z' || s[0] == 'z') {
		return t, true
	}
	if s[0] != '+' && s[0] != '-' {
		return instant{}, false
	}
	off, ok := parseOffset(s[1:])
	if !ok {
		return instant{}, false
	}
	if s[0] == '+' {
		off = -off
	}
	t.sec += off
	return t, true
}

// parseOffset reads a zone offset after its sign: HH, HHMM, HH:MM,
// HH:MM:SS, HHMMSS; it returns seconds.
func parseOffset(s []byte) (int64, bool) {
	var parts [3]int
	n := 0
	for len(s) > 0 && n < 3 {
		if n > 0 && s[0] == ':' {
			s = s[1:]
		}
		if len(s) < 2 {
			return 0, false
		}
		v, ok := civil.TwoDigits(s[0], s[1])
		if !ok {
			return 0, false
		}
		parts[n] = v
		n++
		s = s[2:]
	}
	if len(s) != 0 || n == 0 || parts[0] > 23 || parts[1] > 59 || parts[2] > 59 {
		return 0, false
	}
	return int64(parts[0])*3600 + int64(parts[1])*60 + int64(parts[2]), true
}

// daysFromCivil returns the days from 1970-01-01 to a date of the proleptic
// Gregorian calendar, year 0 being 1 BC (Howard Hinnant's algorithm).
func daysFromCivil(year int64, month, day int) int64 {
	if month <= 2 {
		year--
	}
	era := year / 400
	if year < 0 && year%400 != 0 {
		era--
	}
	yoe := year - era*400
	mp := int64((month + 9) % 12)
	doy := (153*mp+2)/5 + int64(day) - 1
	doe := yoe*365 + yoe/4 - yoe/100 + doy
	return era*146097 + doe - 719468
}
