package endpoint

import (
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/binary"
	"encoding/json"
	"slices"
	"strings"
	"time"
)

// Orderings of a listing.
const (
	OrderCreatedAt = "created_at"
	OrderName      = "name"
)

// Bounds of a page.
const (
	DefaultLimit = 50
	MaxLimit     = 1000
)

// ListOptions selects, orders and pages a listing. Zero fields select
// everything, in creation order, from the start, DefaultLimit at a time.
type ListOptions struct {
	// Type, State, Filter and Rule select endpoints of that type, in
	// that state, linked to that filter, linked to that rule (endpoint
	// listings only; ignored for filters and rules).
	Type   Type
	State  State
	Filter string
	Rule   string
	// NamePrefix selects the names that start with it.
	NamePrefix string
	// OrderBy is OrderCreatedAt (default; ties, within a microsecond, by
	// id or name) or OrderName. Desc reverses it.
	OrderBy string
	Desc    bool
	// Limit is the most items of a page: default DefaultLimit, at most
	// MaxLimit.
	Limit int
	// Cursor continues a listing from a page's NextCursor or PrevCursor
	// (with the same selection and ordering). Offset, without a cursor,
	// skips that many items instead.
	Cursor string
	Offset int
}

// Page is one page of a listing.
type Page[T any] struct {
	// Items of the page, in the listing's order.
	Items []*T
	// Total is how many items the selection holds, on every page.
	Total int
	// NextCursor continues after the page's last item, PrevCursor before
	// its first; empty when there is nothing there.
	NextCursor, PrevCursor string
}

// Cursors are keyset positions: an item's sort key (its creation time or
// name, and its id or name to break ties), and which way to go from it,
// past it or from it. A page from a cursor starts at the first item beyond
// that key, whatever was created or deleted since; so an item that exists
// for the whole listing is listed exactly once, forwards or backwards, and
// one created or deleted meanwhile is listed at most once. (An endpoint
// renamed during a listing by name moves, and may be listed twice or not
// at all.) An offset is a count instead: an item created or deleted before
// it shifts every later one.

// cursor is what a cursor string holds (JSON, then base64url).
type cursor struct {
	V     int    `json:"v"`           // format: 1
	Sel   string `json:"s"`           // the selection and ordering it was made for (a digest)
	Time  int64  `json:"t,omitempty"` // the item's created_at, Unix nanoseconds (OrderCreatedAt)
	Name  string `json:"n,omitempty"` // the item's name (OrderName)
	Tie   string `json:"i,omitempty"` // the item's id, or name
	Back  bool   `json:"b,omitempty"` // the items before the key, else after
	Incl  bool   `json:"x,omitempty"` // the key's own item included
	Start bool   `json:"z,omitempty"` // no key: from the start (or, Back, from the end)
}

// sortKey is an item's place in a listing.
type sortKey struct {
	t    int64
	name string
	tie  string
}

func compareKeys(orderBy string, a, b sortKey) int {
	if orderBy == OrderName {
		if c := strings.Compare(a.name, b.name); c != 0 {
			return c
		}
	} else if a.t != b.t {
		if a.t < b.t {
			return -1
		}
		return 1
	}
	return strings.Compare(a.tie, b.tie)
}

// selection is a digest of what a listing selects and how it orders, so
// that a cursor is not used with another.
func (o ListOptions) selection(kind string) string {
	h := sha256.New()
	for _, s := range []string{kind, string(o.Type), string(o.State), o.Filter, o.Rule, o.NamePrefix, o.OrderBy} {
		var n [4]byte
		binary.BigEndian.PutUint32(n[:], uint32(len(s)))
		h.Write(n[:])
		h.Write([]byte(s))
	}
	if o.Desc {
		h.Write([]byte{1})
	}
	return base64.RawURLEncoding.EncodeToString(h.Sum(nil)[:9])
}

func (o ListOptions) check(errs *fieldErrors) ListOptions {
	switch o.OrderBy {
	case "":
		o.OrderBy = OrderCreatedAt
	case OrderCreatedAt, OrderName:
	default:
		errs.add("order_by", "want created_at or name, not %q", short(o.OrderBy))
	}
	switch {
	case o.Limit == 0:
		o.Limit = DefaultLimit
	case o.Limit < 1 || o.Limit > MaxLimit:
		errs.add("limit", "want 1 to %d", MaxLimit)
	}
	if o.Offset < 0 {
		errs.add("offset", "want 0 or more")
	}
	if o.Cursor != "" && o.Offset != 0 {
		errs.add("offset", "give a cursor or an offset, not both")
	}
	switch o.Type {
	case "", TypeWebhook, TypeWebSocket:
	default:
		errs.add("type", "want webhook or websocket")
	}
	switch o.State {
	case "", StateActive, StatePaused, StateDisabled:
	default:
		errs.add("state", "want active, paused or disabled")
	}
	return o
}

func decodeCursor(s, sel string) (cursor, bool) {
	var c cursor
	b, err := base64.RawURLEncoding.DecodeString(s)
	if err != nil || json.Unmarshal(b, &c) != nil || c.V != 1 {
		return c, false
	}
	return c, c.Sel == sel
}

func encodeCursor(c cursor) string {
	c.V = 1
	b, _ := json.Marshal(c)
	return base64.RawURLEncoding.EncodeToString(b)
}

// page cuts a page out of items (selected, in any order), each with its
// key.
func page[T any](items []*T, keyOf func(*T) sortKey, o ListOptions, kind string) (*Page[T], error) {
	var errs fieldErrors
	o = o.check(&errs)
	sel := o.selection(kind)
	var cur cursor
	if o.Cursor != "" {
		var ok bool
		if cur, ok = decodeCursor(o.Cursor, sel); !ok {
			errs.add("cursor", "not a cursor of this listing: pass next_cursor or prev_cursor as given, with the same type, state, filter, rule, name_prefix, order_by and order")
		}
	}
	if err := errs.err(); err != nil {
		return nil, err
	}
	keys := make([]sortKey, len(items))
	idx := make([]int, len(items))
	for i, it := range items {
		keys[i], idx[i] = keyOf(it), i
	}
	// Order: by key, reversed for Desc.
	cmp := func(a, b sortKey) int {
		c := compareKeys(o.OrderBy, a, b)
		if o.Desc {
			return -c
		}
		return c
	}
	slices.SortFunc(idx, func(a, b int) int { return cmp(keys[a], keys[b]) })
	n := len(idx)
	var lo, hi int
	switch {
	case o.Cursor == "":
		lo = min(o.Offset, n)
		hi = min(lo+o.Limit, n)
	case cur.Start && !cur.Back:
		lo, hi = 0, min(o.Limit, n)
	case cur.Start:
		lo, hi = max(n-o.Limit, 0), n
	default:
		k := sortKey{t: cur.Time, name: cur.Name, tie: cur.Tie}
		// first: the first item after the key (or at it, Incl, going
		// forwards); going backwards, the page ends before the key (or
		// after it, Incl).
		first := func(incl bool) int {
			return sortSearch(n, func(i int) bool {
				c := cmp(keys[idx[i]], k)
				return c > 0 || incl && c == 0
			})
		}
		if cur.Back {
			hi = first(!cur.Incl)
			lo = max(hi-o.Limit, 0)
		} else {
			lo = first(cur.Incl)
			hi = min(lo+o.Limit, n)
		}
	}
	p := &Page[T]{Items: make([]*T, 0, hi-lo), Total: n}
	for _, i := range idx[lo:hi] {
		p.Items = append(p.Items, items[i])
	}
	at := func(i int, back, incl bool) string {
		k := keys[idx[i]]
		return encodeCursor(cursor{Sel: sel, Time: k.t, Name: k.name, Tie: k.tie, Back: back, Incl: incl})
	}
	switch {
	case hi >= n:
	case hi > lo:
		p.NextCursor = at(hi-1, false, false)
	default:
		p.NextCursor = at(hi, false, true)
	}
	switch {
	case lo <= 0:
	case hi > lo:
		p.PrevCursor = at(lo, true, false)
	default:
		p.PrevCursor = at(lo-1, true, true)
	}
	return p, nil
}

// sortSearch is sort.Search.
func sortSearch(n int, f func(int) bool) int {
	i, j := 0, n
	for i < j {
		h := int(uint(i+j) >> 1)
		if !f(h) {
			i = h + 1
		} else {
			j = h
		}
	}
	return i
}

// ListEndpoints lists the endpoints o selects, a page at a time, with
// their secrets (callers showing them mask them: Redacted). Bad options
// are a *ValidationError naming the option ("order_by", "limit",
// "cursor"…). It shows every change any process made before it was
// called.
func (s *Store) ListEndpoints(ctx context.Context, o ListOptions) (*Page[Endpoint], error) {
	s.eps.sync(ctx)
	var items []*Endpoint
	for _, v := range s.eps.values() {
		e := v.(*Endpoint)
		if o.Type != "" && e.Type != o.Type || o.State != "" && e.State != o.State ||
			o.Filter != "" && !e.HasFilter(o.Filter) || o.Rule != "" && !e.HasRule(o.Rule) ||
			!strings.HasPrefix(e.Name, o.NamePrefix) {
			continue
		}
		items = append(items, e)
	}
	p, err := page(items, func(e *Endpoint) sortKey {
		return sortKey{t: timeKey(e.CreatedAt), name: e.Name, tie: e.ID}
	}, o, "endpoints")
	if err != nil {
		return nil, err
	}
	for i, e := range p.Items {
		p.Items[i] = e.Clone()
	}
	return p, nil
}

// ListFilters lists the filters o selects (NamePrefix; ordering and
// paging as ListEndpoints).
func (s *Store) ListFilters(ctx context.Context, o ListOptions) (*Page[Filter], error) {
	o.Type, o.State, o.Filter, o.Rule = "", "", "", ""
	s.filters.sync(ctx)
	var items []*Filter
	for _, v := range s.filters.values() {
		if f := v.(*Filter); strings.HasPrefix(f.Name, o.NamePrefix) {
			items = append(items, f)
		}
	}
	p, err := page(items, func(f *Filter) sortKey { return sortKey{t: timeKey(f.CreatedAt), name: f.Name, tie: f.Name} }, o, "filters")
	if err != nil {
		return nil, err
	}
	for i, f := range p.Items {
		p.Items[i] = f.Clone()
	}
	return p, nil
}

// ListRules lists the rules o selects, as ListFilters does.
func (s *Store) ListRules(ctx context.Context, o ListOptions) (*Page[Rule], error) {
	o.Type, o.State, o.Filter, o.Rule = "", "", "", ""
	s.rules.sync(ctx)
	var items []*Rule
	for _, v := range s.rules.values() {
		if r := v.(*Rule); strings.HasPrefix(r.Name, o.NamePrefix) {
			items = append(items, r)
		}
	}
	p, err := page(items, func(r *Rule) sortKey { return sortKey{t: timeKey(r.CreatedAt), name: r.Name, tie: r.Name} }, o, "rules")
	if err != nil {
		return nil, err
	}
	for i, r := range p.Items {
		p.Items[i] = r.Clone()
	}
	return p, nil
}

func timeKey(t time.Time) int64 { return t.UnixNano() }
