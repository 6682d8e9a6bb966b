package endpoint

import (
	"crypto/rand"
	"encoding/binary"
	"sync"
	"time"
)

// Ids: 26 characters of Crockford's base32 (0-9, A-Z without I, L, O, U),
// the first 10 for 48 bits of Unix milliseconds, the other 16 for 80 random
// bits, as ULIDs are. They sort by creation time (to the millisecond,
// across processes), and within one process strictly: an id made in the
// same millisecond as the one before is that one plus 1.

const crockford = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"

// IDLen is the length of an endpoint id.
const IDLen = 26

var (
	idMu   sync.Mutex
	lastID [16]byte
)

// NewID returns a new id for the time now.
func NewID(now time.Time) string {
	ms := uint64(max(now.UnixMilli(), 0))
	idMu.Lock()
	var b [16]byte
	last := binary.BigEndian.Uint64(lastID[:8]) >> 16
	if ms <= last {
		// Same millisecond (or the clock went back): the last id plus 1.
		b = lastID
		for i := 15; i >= 0; i-- {
			b[i]++
			if b[i] != 0 {
				break
			}
		}
	} else {
		var t [8]byte
		binary.BigEndian.PutUint64(t[:], ms<<16)
		copy(b[:6], t[:6])
		_, _ = rand.Read(b[6:])
	}
	lastID = b
	idMu.Unlock()
	return encodeID(b)
}

// encodeID writes 128 bits as 26 base32 characters (the first carries 3
// bits).
func encodeID(b [16]byte) string {
	hi, lo := binary.BigEndian.Uint64(b[:8]), binary.BigEndian.Uint64(b[8:])
	var out [IDLen]byte
	for i := IDLen - 1; i >= 0; i-- {
		out[i] = crockford[lo&31]
		lo = lo>>5 | hi<<59
		hi >>= 5
	}
	return string(out[:])
}

// ValidID reports whether s has the form of an id.
func ValidID(s string) bool {
	if len(s) != IDLen || s[0] > '7' {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= '0' && c <= '9' || c >= 'A' && c <= 'Z' && c != 'I' && c != 'L' && c != 'O' && c != 'U') {
			return false
		}
	}
	return true
}
