package wsgate

import (
	"encoding/json"
	"fmt"
	"maps"
	"net/url"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/tablecast/tablecast/schema"
	"github.com/tablecast/tablecast/stream"
)

// Two readers, two databases, one stream: each database's public.orders is
// a table of its own on every path (catalog, subscriptions, URL
// subscriptions, grants, the topics list, live and resumed delivery).

// billingOrdersShape is public.orders of a second database, shaped unlike
// the shop's.
func billingOrdersShape() schema.Shape {
	return schema.Shape{DB: "billing", Schema: "public", Table: "orders", Version: 1, LSN: "0/1", ReplicaIdentity: "default",
		Columns: []schema.ShapeColumn{
			{Name: "id", Type: "int8", TypeOID: 20, Key: true},
			{Name: "amount", Type: "numeric", TypeOID: 1700},
			{Name: "currency", Type: "text", TypeOID: 25},
		}}
}

// publishIn publishes an event of public.<table> of database db, as the
// reader of that database does, with the envelope members given (key,
// data, old, unchanged), and returns its stream sequence.
func (e *testEnv) publishIn(db, table, op string, members map[string]any) uint64 {
	e.t.Helper()
	n := e.ids.Add(1)
	id := fmt.Sprintf("%016X-%04X", n, 1)
	env := map[string]any{"id": id, "op": op, "db": db, "schema": "public", "table": table,
		"lsn": "0/1", "xid": n, "commit_time": "2026-11-22T07:00:00.123456Z"}
	maps.Copy(env, members)
	b, err := json.Marshal(env)
	if err != nil {
		e.t.Fatal(err)
	}
	return e.publishRaw(stream.ChangeSubject("tablecast", db, "public", table, op), id, b)
}

// createIn publishes the creation of row (its key: id) in public.orders of db.
func (e *testEnv) createIn(db string, row map[string]any) uint64 {
	e.t.Helper()
	return e.publishIn(db, "orders", schema.OpCreate, map[string]any{"key": map[string]any{"id": row["id"]}, "data": row})
}

// untilRow reads c's event frames up to the one whose row id is last, and
// returns those before it; any other frame fails the test.
func untilRow(c *client, last int) []frame {
	c.t.Helper()
	var got []frame
	for {
		f := c.read(10 * time.Second)
		if f.Type != "event" {
			c.t.Fatalf("unexpected frame %s", f.raw)
		}
		if e2eRowID(f) == last {
			return got
		}
		got = append(got, f)
	}
}

// dbsAndIDs renders event frames as "db:id", for comparing.
func dbsAndIDs(frames []frame) []string {
	out := []string{}
	for _, f := range frames {
		out = append(out, fmt.Sprintf("%v:%d", f.event()["db"], e2eRowID(f)))
	}
	return out
}

func startTwoDatabases(t *testing.T, e *testEnv) {
	t.Helper()
	e.putShape(billingOrdersShape())
	if shop := e.gw.cat.TableIn(testDB, "public", "orders"); shop == nil || len(shop.Shape.Columns) != len(ordersShape().Columns) {
		t.Fatalf("the shop's public.orders was replaced by the billing one's: %+v", shop)
	}
}

const twoDBMark = 99 // the last row published to each database

// TestE2ETwoDatabases: without grants, both databases' public.orders are
// listed with their database, a two-part name is ambiguous, and each
// qualified name follows its own database, live, resumed and by URL.
func TestE2ETwoDatabases(t *testing.T) {
	t.Parallel()
	e := startGateway(t, nil)
	startTwoDatabases(t, e)
	start := e.e2eStreamLast()

	c := e.dial("/ws")
	c.send(map[string]any{"type": "topics"})
	if f := c.expect("topics", ""); !slices.Equal(f.Tables, []string{"billing.public.orders", "shop.public.orders"}) {
		t.Fatalf("topics lists %q, want each public.orders with its database", f.Tables)
	}
	c.send(map[string]any{"type": "subscribe", "id": "amb", "table": "public.orders"})
	amb := c.expectError(CodeAmbiguousTable, "amb")
	if !strings.Contains(amb.Message, "billing.public.orders") || !strings.Contains(amb.Message, "shop.public.orders") {
		t.Fatalf("ambiguity does not name the choices: %q", amb.Message)
	}
	// Each table has its own shape: billing's has no status, the shop's no currency.
	c.send(map[string]any{"type": "subscribe", "id": "x", "table": "billing.public.orders", "where": map[string]any{"status": map[string]any{"eq": "open"}}})
	c.expectError(CodeInvalidFilter, "x")
	c.send(map[string]any{"type": "subscribe", "id": "x", "table": "shop.public.orders", "select": []string{"currency"}})
	c.expectError(CodeInvalidSelect, "x")
	c.send(map[string]any{"type": "subscribe", "id": "x", "table": "nowhere.public.orders"})
	c.expectError(CodeUnknownTable, "x")

	shop := e.dial("/ws")
	shop.subscribe(map[string]any{"id": "s", "table": "shop.public.orders"})
	billing := e.dial("/ws")
	billing.subscribe(map[string]any{"id": "b", "table": `"billing".public."orders"`, "where": map[string]any{"currency": map[string]any{"neq": "GBP"}}})
	urlSub := e.dial("/ws/tables/billing.public.orders?currency=neq.GBP")
	urlSub.expect("subscribed", URLSubscriptionID)
	urlResume := e.dial("/ws/tables/shop.public.orders?from=" + fmt.Sprint(start))
	urlResume.expect("subscribed", URLSubscriptionID)

	e.createIn("shop", map[string]any{"id": 1, "status": "open"})
	e.createIn("billing", map[string]any{"id": 1, "amount": "5", "currency": "EUR"})
	e.createIn("billing", map[string]any{"id": 2, "amount": "6", "currency": "GBP"})
	e.createIn("shop", map[string]any{"id": 2, "status": "paid"})
	e.createIn("billing", map[string]any{"id": 3, "amount": "7", "currency": "USD"})
	e.createIn("shop", map[string]any{"id": twoDBMark})
	e.createIn("billing", map[string]any{"id": twoDBMark, "currency": "EUR"})

	resumed := e.dial("/ws")
	resumed.subscribe(map[string]any{"id": "r", "table": "billing.public.orders", "from": start})

	wantShop := []string{"shop:1", "shop:2"}
	wantBilling := []string{"billing:1", "billing:3"}
	for name, tc := range map[string]struct {
		c    *client
		want []string
	}{
		"live shop":         {shop, wantShop},
		"live billing":      {billing, wantBilling},
		"url billing":       {urlSub, wantBilling},
		"url shop, resumed": {urlResume, wantShop},
		"resumed billing":   {resumed, []string{"billing:1", "billing:2", "billing:3"}},
	} {
		if got := dbsAndIDs(untilRow(tc.c, twoDBMark)); !slices.Equal(got, tc.want) {
			t.Errorf("%s: got %v, want %v", name, got, tc.want)
		}
	}

	// A URL naming the table without its database is refused, naming the choices.
	reason := e.dial("/ws/tables/public.orders").expectClose(CloseBadRequest)
	if !strings.Contains(reason, "billing.public.orders") || !strings.Contains(reason, "shop.public.orders") {
		t.Fatalf("close reason %q does not name the choices", reason)
	}
}

// TestAuthTwoDatabases: grants may name the database. The topics list and
// two-part names count only the databases the client may read; policies
// and column grants of one database leave the other's table alone.
func TestAuthTwoDatabases(t *testing.T) {
	t.Parallel()
	e := startAuthGateway(t)
	startTwoDatabases(t, e)
	start := e.e2eStreamLast()
	shopOnly := token(t, map[string]any{"tables": map[string]any{"shop.*.*": []string{"*"}}}, nil)
	split := token(t, map[string]any{
		"tables":   map[string]any{"*": []string{"*"}},
		"policies": map[string]any{"billing.*.*": map[string]any{"currency": map[string]any{"eq": "EUR"}}},
		"columns":  map[string]any{"billing.public.orders": []string{"id", "currency"}},
	}, nil)

	c := e.dial("/ws?token=" + shopOnly)
	c.send(map[string]any{"type": "topics"})
	if f := c.expect("topics", ""); !slices.Equal(f.Tables, []string{"public.orders"}) {
		t.Fatalf("topics lists %q, want the one public.orders the client may read, as before", f.Tables)
	}
	c.send(map[string]any{"type": "subscribe", "id": "b", "table": "billing.public.orders"})
	notGranted := c.expectError(CodeUnknownTable, "b")
	c.send(map[string]any{"type": "subscribe", "id": "n", "table": "nowhere.public.orders"})
	missing := c.expectError(CodeUnknownTable, "n")
	if strings.Replace(notGranted.Message, "billing", "X", 1) != strings.Replace(missing.Message, "nowhere", "X", 1) {
		t.Fatalf("a database not granted is told apart from a missing one: %q vs %q", notGranted.Message, missing.Message)
	}
	c.subscribe(map[string]any{"id": "s", "table": "public.orders"}) // only the shop's is visible
	urlShop := e.dial("/ws/tables/public.orders?token=" + url.QueryEscape(shopOnly))
	urlShop.expect("subscribed", URLSubscriptionID)

	s := e.dial("/ws?token=" + split)
	s.send(map[string]any{"type": "topics"})
	if f := s.expect("topics", ""); !slices.Equal(f.Tables, []string{"billing.public.orders", "shop.public.orders"}) {
		t.Fatalf("topics lists %q", f.Tables)
	}
	s.send(map[string]any{"type": "subscribe", "id": "amb", "table": "public.orders"})
	s.expectError(CodeAmbiguousTable, "amb")
	// The billing policy reads a column the shop's table does not have:
	// applied there, it would refuse the subscription.
	s.subscribe(map[string]any{"id": "shop", "table": "shop.public.orders"})
	sb := e.dial("/ws?token=" + split)
	sb.subscribe(map[string]any{"id": "bill", "table": "billing.public.orders"})
	sb.send(map[string]any{"type": "subscribe", "id": "x", "table": "billing.public.orders", "where": map[string]any{"amount": map[string]any{"gt": 1}}})
	sb.expectError(CodeInvalidFilter, "x")

	e.createIn("shop", map[string]any{"id": 1, "status": "open", "total": "3"})
	e.createIn("billing", map[string]any{"id": 1, "amount": "5", "currency": "EUR"})
	e.createIn("billing", map[string]any{"id": 2, "amount": "6", "currency": "USD"})
	e.createIn("shop", map[string]any{"id": 2, "status": "paid", "total": "4"})
	e.createIn("shop", map[string]any{"id": twoDBMark})
	e.createIn("billing", map[string]any{"id": twoDBMark, "amount": "1", "currency": "EUR"})

	resumed := e.dial("/ws?token=" + shopOnly)
	resumed.subscribe(map[string]any{"id": "r", "table": "public.orders", "from": start})
	resumedBilling := e.dial("/ws?token=" + split)
	resumedBilling.subscribe(map[string]any{"id": "r", "table": "billing.public.orders", "from": start})

	for name, tc := range map[string]struct {
		c    *client
		want []string
		cols []string // data columns of each event; nil: not checked
	}{
		"shop only, live":         {c, []string{"shop:1", "shop:2"}, []string{"id", "status", "total"}},
		"shop only, url":          {urlShop, []string{"shop:1", "shop:2"}, nil},
		"shop only, resumed":      {resumed, []string{"shop:1", "shop:2"}, nil},
		"split, shop":             {s, []string{"shop:1", "shop:2"}, []string{"id", "status", "total"}},
		"split, billing":          {sb, []string{"billing:1"}, []string{"currency", "id"}},
		"split, billing, resumed": {resumedBilling, []string{"billing:1"}, []string{"currency", "id"}},
	} {
		frames := untilRow(tc.c, twoDBMark)
		if got := dbsAndIDs(frames); !slices.Equal(got, tc.want) {
			t.Errorf("%s: got %v, want %v", name, got, tc.want)
		}
		for _, f := range frames {
			if cols := e2eKeys(f.event(), "data"); tc.cols != nil && !slices.Equal(cols, tc.cols) {
				t.Errorf("%s: data columns %v, want %v", name, cols, tc.cols)
			}
		}
	}
}
