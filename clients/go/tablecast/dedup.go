package tablecast

import "time"

// seenIDs remembers the event ids handled within a window of time, oldest
// first, so that a second delivery of one is recognised. Memory is one
// entry per event of the window (about 130 bytes each, the id with its
// cluster and database): a window of 10 minutes at 1,000 events a second
// holds 600,000 ids, some 80 MB. Not safe
// for concurrent use; Consume uses one from one goroutine.
type seenIDs struct {
	window time.Duration
	at     map[string]time.Time
	order  []seenID // in the order added; times never decrease
	head   int      // order[:head] are expired and removed from at
}

type seenID struct {
	id string
	at time.Time
}

func newSeenIDs(window time.Duration) *seenIDs {
	return &seenIDs{window: window, at: map[string]time.Time{}}
}

// seen reports whether id was added within the window before now.
func (s *seenIDs) seen(id string, now time.Time) bool {
	s.expire(now)
	_, ok := s.at[id]
	return ok
}

// add records id as handled at now.
func (s *seenIDs) add(id string, now time.Time) {
	s.expire(now)
	if _, ok := s.at[id]; ok {
		return
	}
	s.at[id] = now
	s.order = append(s.order, seenID{id, now})
}

// expire forgets the ids added before now minus the window.
func (s *seenIDs) expire(now time.Time) {
	cut := now.Add(-s.window)
	for s.head < len(s.order) && s.order[s.head].at.Before(cut) {
		delete(s.at, s.order[s.head].id)
		s.order[s.head] = seenID{}
		s.head++
	}
	// Reclaim the expired prefix once it is half the slice.
	if s.head > 0 && s.head >= len(s.order)/2 {
		s.order = append(s.order[:0], s.order[s.head:]...)
		s.head = 0
	}
}

func (s *seenIDs) len() int { return len(s.at) }
