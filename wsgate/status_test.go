package wsgate

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/tablecast/tablecast/internal/auth"
	"github.com/tablecast/tablecast/stream"
)

// getStatus requests StatusPath with the header pairs hdr ("Host" sets the
// request's Host) and returns the status code, the raw body and, for 200,
// the decoded status.
func (e *testEnv) getStatus(method, query string, hdr ...string) (int, string, *Status) {
	e.t.Helper()
	req, err := http.NewRequest(method, "http://"+e.addr+StatusPath+query, nil)
	if err != nil {
		e.t.Fatal(err)
	}
	for i := 0; i+1 < len(hdr); i += 2 {
		if hdr[i] == "Host" {
			req.Host = hdr[i+1]
			continue
		}
		req.Header.Add(hdr[i], hdr[i+1])
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		e.t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		e.t.Fatal(err)
	}
	if resp.StatusCode != http.StatusOK || method == http.MethodHead {
		return resp.StatusCode, string(body), nil
	}
	if ct := resp.Header.Get("Content-Type"); ct != "application/json" {
		e.t.Errorf("Content-Type %q", ct)
	}
	var st Status
	if err := json.Unmarshal(body, &st); err != nil {
		e.t.Fatalf("status body %s: %v", body, err)
	}
	return resp.StatusCode, string(body), &st
}

// putReaderStatus stores a reader's status record as the reader does.
func (e *testEnv) putReaderStatus(st stream.ReaderStatus) {
	e.t.Helper()
	ctx := testCtx(e.t)
	kv, err := e.nats.JS.CreateOrUpdateKeyValue(ctx, jetstream.KeyValueConfig{Bucket: stream.StateBucket, History: 1})
	if err != nil {
		e.t.Fatal(err)
	}
	if err := stream.WriteReaderStatus(ctx, kv, &st); err != nil {
		e.t.Fatal(err)
	}
}

func tableNames(st *Status) []string {
	var out []string
	for _, t := range st.Tables {
		out = append(out, t.Name)
	}
	return out
}

// TestStatusEndpoint: /api/status answers as /ws authenticates, and shows a
// caller only the tables its grants let it read, and only the readers of
// their databases: nothing of a table, database or slot it may not read
// appears in the body at all.
func TestStatusEndpoint(t *testing.T) {
	t.Parallel()
	var endpointsCaller *auth.Identity
	e := startAuthGateway(t, func(c *Config) {
		c.Version = "v9.9.9-test"
		c.Endpoints = func(_ context.Context, id *auth.Identity) (any, error) {
			endpointsCaller = id
			return []map[string]any{{"name": "hook-1"}}, nil
		}
	})
	secret := ordersShape()
	secret.Table = "payroll"
	e.putShape(secret)
	elsewhere := ordersShape()
	elsewhere.DB, elsewhere.Table = "hr", "reviews"
	e.putShape(elsewhere)

	all := token(t, map[string]any{"tables": map[string]any{"*": []string{"*"}}}, nil)
	orders := token(t, map[string]any{"tables": map[string]any{"public.orders": []string{"*"}}}, nil)
	none := token(t, map[string]any{}, nil)

	// No reader has written a record yet: not visible.
	code, body, st := e.getStatus("GET", "", "Authorization", "Bearer "+all)
	if code != 200 || st.ReadersVisible || len(st.Readers) != 0 {
		t.Fatalf("before any reader: %d %s, want 200 and readers not visible", code, body)
	}
	if st.Version != "v9.9.9-test" || !st.Gateway.Ready || !st.Gateway.NATSConnected {
		t.Errorf("gateway part %+v version %q", st.Gateway, st.Version)
	}
	if !slices.Equal(tableNames(st), []string{"public.orders", "public.payroll", "public.reviews"}) {
		t.Errorf("tables %v for every grant", tableNames(st))
	}
	for _, ts := range st.Tables {
		if ts.Events != nil || ts.Rate != nil {
			t.Errorf("table %s has events %v without a reader record", ts.Name, ts.Events)
		}
	}

	e.putReaderStatus(stream.ReaderStatus{Database: testDB, Slot: "shop_slot", Streaming: true, Healthy: true, AckedLSN: "0/16B3748",
		LagBytes: 1234, RetainedWALBytes: 56789, SafeWALSizeBytes: -1, WALStatus: "reserved", Reasons: []string{"about public.payroll"},
		Tables:  map[string]stream.TableCount{"public.orders": {Events: 42, Rate: 1.5}, "public.payroll": {Events: 7, Rate: 0.25}},
		Started: time.Now().Add(-time.Hour), Updated: time.Now(), Interval: 5 * time.Second})
	e.putReaderStatus(stream.ReaderStatus{Database: "hr", Slot: "hr_slot", Streaming: true, Healthy: false,
		Tables: map[string]stream.TableCount{"public.reviews": {Events: 3}}, Updated: time.Now(), Interval: 5 * time.Second})

	// A client subscribed to orders: counted on the gateway and the table.
	c := e.dial("/ws", "Authorization", "Bearer "+orders)
	c.subscribe(map[string]any{"id": "o", "table": "public.orders"})

	time.Sleep(statusCacheFor) // the records are read anew
	code, body, st = e.getStatus("GET", "?token="+url.QueryEscape(orders))
	if code != 200 {
		t.Fatalf("orders token: %d %s", code, body)
	}
	if !slices.Equal(tableNames(st), []string{"public.orders"}) {
		t.Errorf("orders token sees tables %v, want [public.orders]", tableNames(st))
	}
	o := st.Tables[0]
	if o.Database != testDB || o.Subscribers != 1 || o.Events == nil || *o.Events != 42 || *o.Rate != 1.5 {
		t.Errorf("orders: %+v (events %v), want database shop, 1 subscriber, 42 events at 1.5/s", o, o.Events)
	}
	if !st.ReadersVisible || len(st.Readers) != 1 {
		t.Fatalf("orders token sees readers %+v, want the shop's alone", st.Readers)
	}
	if r := st.Readers[0]; r.Slot != "shop_slot" || r.LagBytes != 1234 || r.RetainedWALBytes != 56789 || r.WALStatus != "reserved" ||
		!r.Streaming || !r.Healthy || r.IntervalSeconds != 5 || r.AgeSeconds > 60 {
		t.Errorf("shop reader %+v", r)
	}
	if st.Gateway.Connections < 1 || st.Gateway.Subscriptions < 1 {
		t.Errorf("gateway %+v, want the subscribed client counted", st.Gateway)
	}
	for _, leak := range []string{"payroll", "hr", "reviews", "hr_slot"} {
		if strings.Contains(body, leak) {
			t.Errorf("the orders token's status names %q: %s", leak, body)
		}
	}
	if st.Endpoints == nil || endpointsCaller == nil || endpointsCaller.Subject != "user-1" {
		t.Errorf("endpoints %v for caller %+v, want the section for the caller", st.Endpoints, endpointsCaller)
	}

	// No grants: nothing of any table, database or slot.
	code, body, st = e.getStatus("GET", "", "Cookie", "other=1; "+TokenCookie+"="+none)
	if code != 200 || len(st.Tables) != 0 || len(st.Readers) != 0 {
		t.Fatalf("token without grants: %d %s, want 200 with no tables and no readers", code, body)
	}
	for _, leak := range []string{"orders", "payroll", "reviews", "shop", "hr_slot", "shop_slot"} {
		if strings.Contains(body, leak) {
			t.Errorf("the status of a token without grants names %q: %s", leak, body)
		}
	}

	// Refusals, each with a JSON error.
	for _, tc := range []struct {
		name, method, query string
		hdr                 []string
		want                int
	}{
		{"no token", "GET", "", nil, 401},
		{"bad token", "GET", "?token=not.a.jwt", nil, 401},
		{"bearer of another scheme", "GET", "", []string{"Authorization", "Basic " + all}, 401},
		{"foreign host", "GET", "", []string{"Authorization", "Bearer " + all, "Host", "evil.example"}, 421},
		{"foreign origin", "GET", "", []string{"Authorization", "Bearer " + all, "Origin", "http://evil.example"}, 403},
		{"POST", "POST", "", []string{"Authorization", "Bearer " + all}, 405},
		{"DELETE", "DELETE", "", []string{"Authorization", "Bearer " + all}, 405},
	} {
		code, body, _ := e.getStatus(tc.method, tc.query, tc.hdr...)
		if code != tc.want {
			t.Errorf("%s: %d %s, want %d", tc.name, code, body, tc.want)
		}
		if code != 421 && !strings.HasPrefix(body, `{"error":`) {
			t.Errorf("%s: body %q, want a JSON error", tc.name, body)
		}
		if strings.Contains(body, "orders") {
			t.Errorf("%s: refusal names a table: %s", tc.name, body)
		}
	}
	if code, _, _ := e.getStatus("HEAD", "", "Authorization", "Bearer "+all); code != 200 {
		t.Errorf("HEAD: %d", code)
	}
	// The gateway's own origin is allowed.
	if code, body, _ := e.getStatus("GET", "", "Authorization", "Bearer "+all, "Origin", "http://"+e.addr); code != 200 {
		t.Errorf("own origin: %d %s", code, body)
	}
}

// TestStatusAnonymous: with anonymous grants, a caller without a token gets
// the status of those grants; without authentication at all, every table;
// and without Endpoints, no endpoints member.
func TestStatusAnonymous(t *testing.T) {
	t.Parallel()
	grants, err := auth.ParseGrants([]byte(`{"tables": {"public.orders": ["*"]}}`))
	if err != nil {
		t.Fatal(err)
	}
	authn, err := auth.New(auth.Config{JWTSecret: e2eSecret, AnonymousGrants: grants, Logger: testLogger()})
	if err != nil {
		t.Fatal(err)
	}
	e := startGateway(t, func(c *Config) { c.Auth = authn })
	hidden := ordersShape()
	hidden.Table = "payroll"
	e.putShape(hidden)
	code, body, st := e.getStatus("GET", "")
	if code != 200 || !slices.Equal(tableNames(st), []string{"public.orders"}) {
		t.Errorf("anonymous: %d %s, want public.orders alone", code, body)
	}
	if strings.Contains(body, "payroll") || strings.Contains(body, `"endpoints"`) {
		t.Errorf("anonymous status %s names payroll or endpoints", body)
	}

	open := startGateway(t, nil)
	open.putShape(hidden)
	code, body, st = open.getStatus("GET", "")
	if code != 200 || !slices.Equal(tableNames(st), []string{"public.orders", "public.payroll"}) {
		t.Errorf("without authentication: %d %s, want every table", code, body)
	}
}

// TestStatusDottedNames: tables whose schema or name holds a dot each get
// their own events. Schema "a.b" with table "c" and schema "a" with table
// "b.c" both read "a.b.c" when the parts are joined with a dot as written,
// so the reader's status record names them as the contract writes table
// names (a part with a dot or a quote double-quoted), and the gateway
// looks each up by that name: neither shows the other's events.
func TestStatusDottedNames(t *testing.T) {
	t.Parallel()
	e := startGateway(t, nil)
	first := ordersShape()
	first.Schema, first.Table = "a.b", "c"
	e.putShape(first)
	second := ordersShape()
	second.Schema, second.Table = "a", "b.c"
	e.putShape(second)
	e.putReaderStatus(stream.ReaderStatus{Database: testDB, Slot: "shop_slot", Streaming: true, Healthy: true,
		Tables:  map[string]stream.TableCount{`"a.b".c`: {Events: 5, Rate: 0.5}, `a."b.c"`: {Events: 9, Rate: 0.9}},
		Updated: time.Now(), Interval: 5 * time.Second})
	time.Sleep(statusCacheFor) // the records are read anew
	code, body, st := e.getStatus("GET", "")
	if code != 200 {
		t.Fatalf("status: %d %s", code, body)
	}
	want := map[string]int64{`"a.b".c`: 5, `a."b.c"`: 9}
	seen := 0
	for _, ts := range st.Tables {
		n, ok := want[ts.Name]
		if !ok {
			continue
		}
		seen++
		if ts.Events == nil || *ts.Events != n {
			t.Errorf("table %s: events %s, want %d", ts.Name, strings.TrimSpace(body), n)
		}
	}
	if seen != 2 {
		t.Errorf("tables %v, want both dotted tables listed", tableNames(st))
	}
}
