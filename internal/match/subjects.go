package match

import (
	"slices"
	"strings"

	"github.com/tablecast/tablecast/internal/auth"
	"github.com/tablecast/tablecast/internal/endpoint"
	"github.com/tablecast/tablecast/schema"
	"github.com/tablecast/tablecast/stream"
)

// subjectTuple is a change subject's four tokens after the prefix:
// database, schema, table, operation; "*" for any.
type subjectTuple [4]string

const anyToken = "*"

func (a subjectTuple) covers(b subjectTuple) bool {
	for i := range a {
		if a[i] != anyToken && a[i] != b[i] {
			return false
		}
	}
	return true
}

func (a subjectTuple) overlaps(b subjectTuple) bool {
	for i := range a {
		if a[i] != anyToken && b[i] != anyToken && a[i] != b[i] {
			return false
		}
	}
	return true
}

// join is the narrowest tuple covering both.
func (a subjectTuple) join(b subjectTuple) subjectTuple {
	var j subjectTuple
	for i := range a {
		if a[i] == b[i] {
			j[i] = a[i]
		} else {
			j[i] = anyToken
		}
	}
	return j
}

// Subjects returns the subject filters of a consumer of the event stream
// (subject prefix prefix) that reads every event filters and rules may
// pass: sorted, none overlapping another (JetStream refuses overlapping
// filters of one consumer). None when there is nothing to read. Patterns
// that do not parse are left out (the store never holds one).
func Subjects(prefix string, filters []*endpoint.Filter, rules []*endpoint.Rule) []string {
	// Operations by table tuple.
	ops := map[[3]string]schema.OpSet{}
	add := func(pat string, names []string) {
		p, err := auth.ParseTablePattern(pat)
		if err != nil {
			return
		}
		db, sch, tbl := p.Parts()
		k := [3]string{token(db), token(sch), token(tbl)}
		ops[k] |= opsOf(names)
	}
	for _, f := range filters {
		for _, t := range f.Tables {
			add(t, f.Operations)
		}
	}
	for _, r := range rules {
		add(r.Table, r.Operations)
	}
	var tuples []subjectTuple
	for k, set := range ops {
		if set&schema.AllOps == schema.AllOps {
			tuples = append(tuples, subjectTuple{k[0], k[1], k[2], anyToken})
			continue
		}
		for _, name := range set.Names() {
			tuples = append(tuples, subjectTuple{k[0], k[1], k[2], name})
		}
	}
	tuples = disjoint(widen(tuples))
	out := make([]string, 0, len(tuples))
	for _, t := range tuples {
		out = append(out, prefix+"."+strings.Join(t[:], "."))
	}
	slices.Sort(out)
	return out
}

// maxSubjects bounds the subject filters of a consumer. disjoint compares
// every pair of tuples, and again after each merge: with the most an
// endpoint may link (100 filters of 100 table patterns, each with a few
// operations: tens of thousands of tuples) that took seconds of the
// webhook Manager's loop for each change of the endpoint, and JetStream
// would have kept as many filters on its consumer.
const maxSubjects = 256

// widen makes tuples fewer than maxSubjects when they are more: every
// operation, then every table of a schema, then every schema of a
// database, then everything. The consumer reads more; the Matcher passes
// no more than before.
func widen(tuples []subjectTuple) []subjectTuple {
	for pos := len(subjectTuple{}) - 1; pos >= 0 && len(tuples) > maxSubjects; pos-- {
		seen := make(map[subjectTuple]bool, len(tuples))
		out := tuples[:0]
		for _, t := range tuples {
			t[pos] = anyToken
			if !seen[t] {
				seen[t] = true
				out = append(out, t)
			}
		}
		tuples = out
	}
	return tuples
}

func token(name string) string {
	if name == "" {
		return anyToken
	}
	return stream.Token(name)
}

// disjoint drops the tuples another covers, and joins two that overlap
// otherwise, until no two overlap.
func disjoint(tuples []subjectTuple) []subjectTuple {
	for {
		changed := false
	scan:
		for i := 0; i < len(tuples); i++ {
			for j := 0; j < len(tuples); j++ {
				if i == j || !tuples[i].overlaps(tuples[j]) {
					continue
				}
				if tuples[i].covers(tuples[j]) {
					tuples = slices.Delete(tuples, j, j+1)
				} else {
					tuples[i] = tuples[i].join(tuples[j])
					tuples = slices.Delete(tuples, j, j+1)
				}
				changed = true
				break scan
			}
		}
		if !changed {
			return tuples
		}
	}
}
