package admin_test

import (
	"context"
	"fmt"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"

	"github.com/tablecast/tablecast/internal/endpoint"
)

// createMany creates n WebSocket endpoints through the store, 8 at a time,
// named so that name order is not creation order, and returns them.
func createMany(t testing.TB, ctx context.Context, store *endpoint.Store, n int) []*endpoint.Endpoint {
	t.Helper()
	out := make([]*endpoint.Endpoint, n)
	var wg sync.WaitGroup
	errs := make(chan error, n)
	next := make(chan int)
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range next {
				e, err := store.CreateEndpoint(ctx, &endpoint.Endpoint{Name: fmt.Sprintf("ep-%04d", (i*7919)%n), Type: endpoint.TypeWebSocket})
				if err != nil {
					errs <- err
					continue
				}
				out[i] = e
			}
		}()
	}
	for i := range n {
		next <- i
	}
	close(next)
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	return out
}

// TestPaging1000 lists 1,000 endpoints in every ordering (created_at and
// name, ascending and descending), a page at a time: forwards with
// next_cursor to the end, then backwards with prev_cursor to the start,
// and with offsets. Every endpoint is listed exactly once, in the
// ordering's order, each way, and every page gives the total.
func TestPaging1000(t *testing.T) {
	h := start(t, nil)
	ctx := testCtx(t)
	const n, limit = 1000, 37
	all := createMany(t, ctx, h.store, n)

	for _, orderBy := range []string{"created_at", "name"} {
		for _, desc := range []bool{false, true} {
			want := slices.Clone(all)
			slices.SortFunc(want, func(a, b *endpoint.Endpoint) int {
				if orderBy == "name" {
					return strings.Compare(a.Name, b.Name)
				}
				if c := a.CreatedAt.Compare(b.CreatedAt); c != 0 {
					return c
				}
				return strings.Compare(a.ID, b.ID)
			})
			if desc {
				slices.Reverse(want)
			}
			wantIDs := make([]string, n)
			for i, e := range want {
				wantIDs[i] = e.ID
			}
			order := "asc"
			if desc {
				order = "desc"
			}
			what := orderBy + " " + order
			page := func(q url.Values) pageJSON {
				t.Helper()
				q.Set("order_by", orderBy)
				q.Set("order", order)
				q.Set("limit", strconv.Itoa(limit))
				var p pageJSON
				h.call(ctx, "GET", "/v1/endpoints", q, nil, 0, &p)
				if p.Total != n {
					t.Fatalf("%s %v: total %d, want %d", what, q, p.Total, n)
				}
				if len(p.Items) > limit || len(p.Items) == 0 {
					t.Fatalf("%s %v: %d items", what, q, len(p.Items))
				}
				return p
			}

			// Forwards.
			var fwd []string
			var pages []pageJSON
			p := page(url.Values{})
			if p.PrevCursor != nil {
				t.Fatalf("%s: the first page has a prev_cursor", what)
			}
			for {
				pages = append(pages, p)
				for _, e := range p.Items {
					fwd = append(fwd, e.ID)
				}
				if p.NextCursor == nil {
					break
				}
				if len(pages) > n {
					t.Fatalf("%s: no end", what)
				}
				p = page(url.Values{"cursor": {*p.NextCursor}})
			}
			if !slices.Equal(fwd, wantIDs) {
				t.Fatalf("%s forwards: %d ids, not the %d in order (first difference at %d)", what, len(fwd), n, firstDiff(fwd, wantIDs))
			}

			// Backwards, from the last page to the first.
			last := pages[len(pages)-1]
			back := idsOf(last)
			p = last
			for p.PrevCursor != nil {
				p = page(url.Values{"cursor": {*p.PrevCursor}})
				back = append(idsOf(p), back...)
				if len(back) > n {
					break
				}
			}
			if !slices.Equal(back, wantIDs) {
				t.Fatalf("%s backwards: %d ids, not the %d in order (first difference at %d)", what, len(back), n, firstDiff(back, wantIDs))
			}

			// Offsets.
			var off []string
			for o := 0; o < n; o += limit {
				off = append(off, idsOf(page(url.Values{"offset": {strconv.Itoa(o)}}))...)
			}
			if !slices.Equal(off, wantIDs) {
				t.Fatalf("%s by offset: %d ids, not the %d in order (first difference at %d)", what, len(off), n, firstDiff(off, wantIDs))
			}
		}
	}

	// A selection pages within itself: the 100 names ep-01xx.
	var sel []string
	q := url.Values{"name_prefix": {"ep-01"}, "order_by": {"name"}, "limit": {"30"}}
	for {
		var p pageJSON
		h.call(ctx, "GET", "/v1/endpoints", q, nil, 0, &p)
		if p.Total != 100 {
			t.Fatalf("name_prefix ep-01: total %d", p.Total)
		}
		for _, e := range p.Items {
			sel = append(sel, e.Name)
		}
		if p.NextCursor == nil {
			break
		}
		q.Set("cursor", *p.NextCursor)
	}
	if len(sel) != 100 || !slices.IsSorted(sel) || sel[0] != "ep-0100" || sel[99] != "ep-0199" {
		t.Fatalf("name_prefix ep-01 by name: %d names %v…", len(sel), sel[:min(3, len(sel))])
	}
}

func idsOf(p pageJSON) []string {
	ids := make([]string, len(p.Items))
	for i, e := range p.Items {
		ids[i] = e.ID
	}
	return ids
}

func firstDiff(a, b []string) int {
	for i := range min(len(a), len(b)) {
		if a[i] != b[i] {
			return i
		}
	}
	return min(len(a), len(b))
}
