package admin_test

import (
	"context"
	"net/http"
	"net/url"
	"testing"
	"time"

	"github.com/tablecast/tablecast/admin"
	"github.com/tablecast/tablecast/internal/endpoint"
	"github.com/tablecast/tablecast/internal/natstest"
)

// BenchmarkListEndpoints measures GET /v1/endpoints over 1,000 endpoints,
// authenticated with a JWT: a page of 50 by name from a cursor in the
// middle, and the store's own listing of the same page.
func BenchmarkListEndpoints(b *testing.B) {
	n := natstest.Start(b)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	h := startWith(b, n, n.JS, endpoint.Config{}, nil)
	store := h.store
	createMany(b, ctx, store, 1000)
	p, err := store.ListEndpoints(ctx, endpoint.ListOptions{OrderBy: endpoint.OrderName, Limit: 500})
	if err != nil {
		b.Fatal(err)
	}
	cur := p.NextCursor
	c := &admin.Client{BaseURL: h.base, Token: h.reader, HTTP: &http.Client{}}
	q := url.Values{"order_by": {"name"}, "limit": {"50"}, "cursor": {cur}}

	b.Run("api", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if _, err := c.Do(ctx, "GET", "/v1/endpoints", q, nil, 0); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("store", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if _, err := store.ListEndpoints(ctx, endpoint.ListOptions{OrderBy: endpoint.OrderName, Limit: 50, Cursor: cur}); err != nil {
				b.Fatal(err)
			}
		}
	})
}
