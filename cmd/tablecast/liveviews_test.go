package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/jackc/pgx/v5"
)

// viewRow is a row of the things table as a client holds it.
type viewRow struct {
	ID  int `json:"id"`
	Grp int `json:"grp"`
	Val int `json:"val"`
}

// viewSpec is one client's view: its where (JSON), its row policy's grp
// (-1: none), and the SQL condition they make together.
type viewSpec struct {
	where  string
	policy int
	sql    string
}

func viewSpecFor(i int) viewSpec {
	switch i % 4 {
	case 0:
		return viewSpec{policy: -1, sql: "true"}
	case 1:
		return viewSpec{where: fmt.Sprintf(`{"grp":{"eq":%d}}`, i%10), policy: -1, sql: fmt.Sprintf("grp = %d", i%10)}
	case 2:
		v := i * 7 % 100
		return viewSpec{where: fmt.Sprintf(`{"val":{"gte":%d}}`, v), policy: -1, sql: fmt.Sprintf("val >= %d", v)}
	default:
		return viewSpec{where: `{"val":{"lt":50}}`, policy: i % 10, sql: fmt.Sprintf("val < 50 AND grp = %d", i%10)}
	}
}

// viewClient keeps a view the way the protocol tells a client to: rows
// frames set (or, "removed", take out) their keys, then every event after
// synced: a delete or a leave takes the key out, a truncate empties the
// view, anything else sets the key to the event's data. It fails on any
// event the view cannot explain (a delete, leave or plain update of a row
// it does not hold, an event at or before synced).
type viewClient struct {
	spec viewSpec
	ws   *websocket.Conn
	// dial, when set, connects again after the gateway closes the
	// connection as a slow consumer (4008): a view catching up under a
	// heavy writer may hold more live events than its bound, and the
	// protocol's answer is to start the view again.
	dial func(context.Context) (*websocket.Conn, error)

	msg string // its subscribe message

	mu         sync.Mutex
	subscribed bool
	retries    int
	reconnects int
	lastErr    string
	rows       map[int]viewRow
	isSynced   bool // synced came (its seq may be 0: a state built from nothing yet)
	synced     uint64
	last       uint64
	err        error
	frames     int
}

func (vc *viewClient) fail(format string, args ...any) {
	vc.mu.Lock()
	if vc.err == nil {
		vc.err = fmt.Errorf(format, args...)
	}
	vc.mu.Unlock()
}

func (vc *viewClient) run(ctx context.Context) {
	type entry struct {
		Key     struct{ ID int } `json:"key"`
		Data    *viewRow         `json:"data"`
		Removed bool             `json:"removed"`
	}
	type frame struct {
		Type  string  `json:"type"`
		Seq   uint64  `json:"seq"`
		View  string  `json:"view"`
		Rows  []entry `json:"rows"`
		Code  string  `json:"code"`
		Msg   string  `json:"message"`
		Event struct {
			Op    string           `json:"op"`
			Table string           `json:"table"`
			Key   struct{ ID int } `json:"key"`
			Data  *viewRow         `json:"data"`
		} `json:"event"`
	}
	for {
		_, b, err := vc.ws.Read(ctx)
		// 4008: too slow for what the writer sends. No close code (-1)
		// or 1001: the process was killed or stopped under the client,
		// which dials again until it is back.
		if code := websocket.CloseStatus(err); err != nil && vc.dial != nil && ctx.Err() == nil &&
			(code == 4008 || code == -1 || code == websocket.StatusGoingAway) {
			vc.mu.Lock()
			vc.reconnects++
			vc.lastErr = err.Error()
			vc.mu.Unlock()
			var ws *websocket.Conn
			derr := errors.New("not dialled")
			for try := 0; try < 300 && ctx.Err() == nil; try++ {
				if ws, derr = vc.dial(ctx); derr == nil {
					break
				}
				time.Sleep(200 * time.Millisecond)
			}
			if derr == nil {
				ws.SetReadLimit(1 << 24)
				vc.mu.Lock()
				vc.ws = ws
				vc.resubscribe(ctx)
				vc.mu.Unlock()
				continue
			}
			err = derr
		}
		if err != nil {
			if ctx.Err() == nil {
				vc.fail("read: %v", err)
			}
			return
		}
		var f frame
		if err := json.Unmarshal(b, &f); err != nil {
			vc.fail("frame %s: %v", b, err)
			return
		}
		vc.mu.Lock()
		vc.frames++
		switch f.Type {
		case "subscribed":
		case "rows":
			if vc.isSynced {
				vc.mu.Unlock()
				vc.fail("rows after synced: %s", b)
				return
			}
			for _, e := range f.Rows {
				switch {
				case e.Removed:
					if _, ok := vc.rows[e.Key.ID]; !ok {
						vc.mu.Unlock()
						vc.fail("rows entry removes %d, which was never sent", e.Key.ID)
						return
					}
					delete(vc.rows, e.Key.ID)
				case e.Data != nil:
					vc.rows[e.Key.ID] = *e.Data
				}
			}
		case "synced":
			vc.isSynced, vc.synced, vc.last = true, f.Seq, f.Seq
		case "event":
			bad := ""
			_, held := vc.rows[f.Event.Key.ID]
			switch {
			case !vc.isSynced:
				bad = "an event before synced"
			case f.Seq < vc.last || f.Seq <= vc.synced:
				bad = fmt.Sprintf("seq %d after %d (synced %d)", f.Seq, vc.last, vc.synced)
			case f.Event.Op == "truncate":
				clear(vc.rows)
			case f.Event.Op == "delete", f.View == "leave":
				if !held {
					bad = "a delete or leave of a row the view does not hold"
				}
				delete(vc.rows, f.Event.Key.ID)
			case f.Event.Data == nil:
				bad = "an event without data"
			case f.View == "enter" && held:
				bad = "an enter of a row the view holds"
			case f.View == "" && f.Event.Op == "update" && !held:
				bad = "an update of a row the view does not hold"
			case f.View == "" && f.Event.Op == "create" && held && f.Event.Table != "slots":
				// (Under slots' deferred key, a row is inserted onto a key
				// another row still holds: a create of the key held.)
				bad = "a create of a row the view holds"
			default:
				vc.rows[f.Event.Key.ID] = *f.Event.Data
			}
			vc.last = f.Seq
			if bad != "" {
				vc.mu.Unlock()
				vc.fail("%s: %s", bad, b)
				return
			}
		case "error":
			if f.Code != "internal" && f.Code != "snapshot_unavailable" {
				vc.mu.Unlock()
				vc.fail("error frame %s", b)
				return
			}
			// The gateway could not send the rows now (NATS under
			// load): the view starts again, as the protocol says.
			vc.retries++
			vc.lastErr = string(b)
			if !vc.subscribed {
				vc.resubscribe(ctx)
			}
		case "unsubscribed":
			vc.resubscribe(ctx)
		}
		if f.Type == "subscribed" {
			vc.subscribed = true
		}
		vc.mu.Unlock()
	}
}

// resubscribe starts the view again: the rows of a new snapshot replace
// what it holds. vc.mu is held.
func (vc *viewClient) resubscribe(ctx context.Context) {
	vc.rows, vc.isSynced, vc.synced, vc.last, vc.subscribed = map[int]viewRow{}, false, 0, 0, false
	if err := vc.ws.Write(ctx, websocket.MessageText, []byte(vc.msg)); err != nil && ctx.Err() == nil {
		vc.err = fmt.Errorf("subscribe again: %v", err)
	}
}

// wantView reads what a view must hold from PostgreSQL.
func wantView(ctx context.Context, conn *pgx.Conn, sql string) (map[int]viewRow, error) {
	return wantViewOf(ctx, conn, "things", sql)
}

// wantViewOf is wantView of another table of the same columns.
func wantViewOf(ctx context.Context, conn *pgx.Conn, table, sql string) (map[int]viewRow, error) {
	rs, err := conn.Query(ctx, "SELECT id, grp, val FROM "+table+" WHERE "+sql)
	if err != nil {
		return nil, err
	}
	out := map[int]viewRow{}
	for rs.Next() {
		var r viewRow
		if err := rs.Scan(&r.ID, &r.Grp, &r.Val); err != nil {
			return nil, err
		}
		out[r.ID] = r
	}
	return out, rs.Err()
}

// waitEqual waits 30 s at most for the view to hold exactly the rows want
// returns (asked again at each look), failing on an error of the view's.
func (vc *viewClient) waitEqual(t *testing.T, what string, want func() map[int]viewRow) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		w := want()
		vc.mu.Lock()
		same, verr, n := sameView(vc.rows, w), vc.err, len(vc.rows)
		vc.mu.Unlock()
		if verr != nil {
			t.Fatal(verr)
		}
		if same {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s holds %d rows, never the %d of the table", what, n, len(w))
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func sameView(a, b map[int]viewRow) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if b[k] != v {
			return false
		}
	}
	return true
}

// TestLiveViews: clients with different filters and row policies
// subscribe with snapshot while a writer inserts, updates (moving rows
// into and out of their filters and policies, changing keys) and deletes;
// every client's view, kept only from what the protocol sends, ends equal
// to SELECT … WHERE <its filter> exactly, and no client ever gets an event
// its view cannot explain (a delete of a row it never held, a leave, an
// event at or before synced). Half the clients subscribe before the
// writes and half during them, so their snapshots are read while rows
// change under them: each must still reach synced (a scan is bounded by
// where the row state stood when it began). Midway through the writes the
// process (reader and gateway) is killed and started again: the clients
// dial again and take their views again. 20 clients for 8s of writes;
// under TABLECAST_SOAK=1, 100 clients for 20s (TABLECAST_VIEWS_CLIENTS
// sets the clients either way).
func TestLiveViews(t *testing.T) {
	// The short run's writer makes at most 200 statements a second, so
	// that twenty views catch up (their history is read at a bounded
	// rate) within seconds on a race-built process; the soak's writer is
	// unpaced.
	clients, writeFor, pace := 20, 8*time.Second, 5*time.Millisecond
	if os.Getenv("TABLECAST_SOAK") == "1" {
		clients, writeFor, pace = 100, 20*time.Second, 0
	}
	if v, err := strconv.Atoi(os.Getenv("TABLECAST_VIEWS_CLIENTS")); err == nil && v > 0 {
		clients = v
	}
	c := pgtestRequire(t)
	_, url := c.CreateDatabase(t)
	conn := connect(t, url)
	ctx := context.Background()
	if _, err := conn.Exec(ctx, `CREATE TABLE things (id int PRIMARY KEY, grp int NOT NULL, val int NOT NULL);
		INSERT INTO things SELECT g, g % 10, g % 100 FROM generate_series(1, 3000) g`); err != nil {
		t.Fatal(err)
	}
	slot := fmt.Sprintf("tc_views_%d", os.Getpid())
	dropSlotAtCleanup(t, url, slot)
	secret := "a-secret-of-at-least-32-bytes-for-hs256"
	httpAddr, natsAddr := freeAddr(t), freeAddr(t)
	env := append(baseEnv(), "TABLECAST_ROW_STATE=true", "TABLECAST_DATABASE_URL="+url, "TABLECAST_SLOT="+slot, "TABLECAST_PUBLICATION=tc_views",
		"TABLECAST_HTTP_ADDR="+httpAddr, "TABLECAST_NATS_LISTEN="+natsAddr, "TABLECAST_DATA_DIR="+t.TempDir(),
		"TABLECAST_JWT_SECRET="+secret, "TABLECAST_WS_MAX_REPLAYS=4")
	ready := func() {
		waitFor(t, time.Minute, "/readyz of tablecast run", func() bool {
			code, _, err := httpGet("http://" + httpAddr + "/readyz")
			return err == nil && code == 200
		})
	}
	first := startKillable(t, env, "run")
	ready()

	rctx, stop := context.WithCancel(ctx)
	defer stop()
	var wg sync.WaitGroup
	views := make([]*viewClient, clients)
	open := func(i int) {
		spec := viewSpecFor(i)
		grants := map[string]any{"tables": map[string]any{"*": []string{"*"}}}
		claims := map[string]any{"sub": fmt.Sprintf("client-%d", i), "tablecast": grants}
		if spec.policy >= 0 {
			grants["policies"] = map[string]any{"public.things": map[string]any{"grp": map[string]any{"eq": map[string]any{"claim": "grp"}}}}
			claims["grp"] = spec.policy
		}
		wsURL := "ws://" + httpAddr + "/ws?token=" + hs256(secret, claims)
		ws := wsDial(t, wsURL)
		ws.SetReadLimit(1 << 24)
		msg := `{"type":"subscribe","id":"v","table":"public.things","snapshot":true`
		if spec.where != "" {
			msg += `,"where":` + spec.where
		}
		wsSend(t, ws, msg+"}")
		vc := &viewClient{spec: spec, ws: ws, msg: msg + "}", rows: map[int]viewRow{}}
		vc.dial = func(ctx context.Context) (*websocket.Conn, error) {
			ws, _, err := websocket.Dial(ctx, wsURL, nil)
			return ws, err
		}
		views[i] = vc
		wg.Add(1)
		go func() { defer wg.Done(); vc.run(rctx) }()
	}
	for i := 0; i < clients/2; i++ {
		open(i)
	}

	writer := make(chan error, 1)
	wctx, wstop := context.WithTimeout(ctx, writeFor)
	defer wstop()
	go func() {
		wc, err := pgx.Connect(ctx, url)
		if err != nil {
			writer <- err
			return
		}
		defer wc.Close(ctx)
		rng := rand.New(rand.NewPCG(1, 2))
		next := 3001
		for wctx.Err() == nil {
			time.Sleep(pace)
			id := rng.IntN(next) + 1
			var sql string
			switch rng.IntN(6) {
			case 0:
				sql = fmt.Sprintf(`INSERT INTO things VALUES (%d, %d, %d)`, next, rng.IntN(10), rng.IntN(100))
				next++
			case 1:
				sql = fmt.Sprintf(`UPDATE things SET val = %d WHERE id = %d`, rng.IntN(100), id)
			case 2:
				sql = fmt.Sprintf(`UPDATE things SET grp = %d WHERE id = %d`, rng.IntN(10), id)
			case 3:
				sql = fmt.Sprintf(`UPDATE things SET id = %d WHERE id = %d`, next, id)
				next++
			case 4:
				sql = fmt.Sprintf(`DELETE FROM things WHERE id = %d`, id)
			case 5:
				sql = fmt.Sprintf(`UPDATE things SET val = (val + 37) %% 100, grp = (grp + 1) %% 10 WHERE id BETWEEN %d AND %d`, id, id+20)
			}
			if _, err := wc.Exec(ctx, sql); err != nil {
				writer <- fmt.Errorf("%s: %w", sql, err)
				return
			}
		}
		writer <- nil
	}()
	time.Sleep(writeFor / 3) // the second half subscribes while rows change
	for i := clients / 2; i < clients; i++ {
		open(i)
	}
	// The reader and the gateway (one process) are killed while rows
	// change and views are being read and followed: every client is cut
	// off, dials again and takes its view again from what the restarted
	// process holds.
	time.Sleep(writeFor / 6)
	if err := first.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	_ = first.Wait()
	startProcess(t, env, "run")
	ready()
	if err := <-writer; err != nil {
		t.Fatalf("writer: %v", err)
	}

	// While views still receive frames, they are catching up: the
	// deadline moves (up to five minutes in all). After the restart every
	// view takes a snapshot again, TABLECAST_WS_MAX_REPLAYS at a time, so a
	// view may wait its turn receiving nothing while the others are served;
	// only when no view has received anything for 30s does one that
	// differs from the table count as having lost something.
	hardDeadline := time.Now().Add(5 * time.Minute)
	allFrames := func() int {
		n := 0
		for _, vc := range views {
			vc.mu.Lock()
			n += vc.frames
			vc.mu.Unlock()
		}
		return n
	}
	for i, vc := range views {
		deadline, lastFrames := time.Now().Add(30*time.Second), -1
		for {
			want, err := wantView(ctx, conn, vc.spec.sql)
			if err != nil {
				t.Fatal(err)
			}
			vc.mu.Lock()
			same, verr, n, isSynced, synced, frames, retries := sameView(vc.rows, want), vc.err, len(vc.rows), vc.isSynced, vc.synced, vc.frames, vc.retries
			vc.mu.Unlock()
			total := allFrames()
			if verr != nil {
				t.Fatalf("client %d (where %s, policy grp %d): %v", i, vc.spec.where, vc.spec.policy, verr)
			}
			if same && isSynced {
				break
			}
			if total != lastFrames {
				deadline, lastFrames = time.Now().Add(30*time.Second), total
			}
			if time.Now().After(deadline) || time.Now().After(hardDeadline) {
				vc.mu.Lock()
				last := vc.last
				vc.mu.Unlock()
				t.Fatalf("client %d (where %s, policy grp %d): view of %d rows (synced %d, last event %d, %d frames, %d retries, %d reconnects, last error %s) never equalled the %d rows of SELECT … WHERE %s",
					i, vc.spec.where, vc.spec.policy, n, synced, last, frames, retries, vc.reconnects, vc.lastErr, len(want), vc.spec.sql)
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	stop()
	wg.Wait()
	if testing.Verbose() {
		var b strings.Builder
		for i, vc := range views {
			fmt.Fprintf(&b, "%d:%d/%d/%d/%d ", i, len(vc.rows), vc.frames, vc.retries, vc.reconnects)
		}
		t.Log("rows/frames/retries/reconnects per client:", b.String())
	}
}

// TestLiveViewEdges: a table without a key is refused a snapshot with
// no_key; snapshot with from is refused; a subscribe without id gets one
// in subscribed and is unsubscribed by it; a URL subscription with
// snapshot=true gets the rows, then synced, then the events after; a row
// leaving a row policy is a leave, and a delete of a row never in a view
// is not sent to it.
func TestLiveViewEdges(t *testing.T) {
	c := pgtestRequire(t)
	_, url := c.CreateDatabase(t)
	conn := connect(t, url)
	ctx := context.Background()
	if _, err := conn.Exec(ctx, `CREATE TABLE things (id int PRIMARY KEY, grp int NOT NULL, val int NOT NULL);
		CREATE TABLE keyless (v int); ALTER TABLE keyless REPLICA IDENTITY FULL;
		INSERT INTO things SELECT g, g % 10, g % 100 FROM generate_series(1, 2500) g`); err != nil {
		t.Fatal(err)
	}
	slot := fmt.Sprintf("tc_edges_%d", os.Getpid())
	dropSlotAtCleanup(t, url, slot)
	secret := "a-secret-of-at-least-32-bytes-for-hs256"
	httpAddr, natsAddr := freeAddr(t), freeAddr(t)
	startProcess(t, append(baseEnv(), "TABLECAST_ROW_STATE=true", "TABLECAST_DATABASE_URL="+url, "TABLECAST_SLOT="+slot, "TABLECAST_PUBLICATION=tc_edges",
		"TABLECAST_HTTP_ADDR="+httpAddr, "TABLECAST_NATS_LISTEN="+natsAddr, "TABLECAST_DATA_DIR="+t.TempDir(),
		"TABLECAST_JWT_SECRET="+secret), "run")
	waitFor(t, time.Minute, "/readyz of tablecast run", func() bool {
		code, _, err := httpGet("http://" + httpAddr + "/readyz")
		return err == nil && code == 200
	})
	token := func(claims map[string]any) string {
		claims["sub"] = "edges"
		return hs256(secret, claims)
	}
	all := token(map[string]any{"tablecast": map[string]any{"tables": map[string]any{"*": []string{"*"}}}})
	ws := wsDial(t, "ws://"+httpAddr+"/ws?token="+all)
	wsSend(t, ws, `{"type":"subscribe","id":"k","table":"public.keyless","snapshot":true}`)
	if f := wsRead(t, ws); f.Type != "error" || f.Code != "no_key" || f.ID != "k" {
		t.Fatalf("snapshot of a table without a key answered %+v, want error no_key", f)
	}
	wsSend(t, ws, `{"type":"subscribe","id":"f","table":"public.things","snapshot":true,"from":1}`)
	if f := wsRead(t, ws); f.Type != "error" || f.Code != "invalid_subscription" {
		t.Fatalf("snapshot with from answered %+v, want error invalid_subscription", f)
	}
	wsSend(t, ws, `{"type":"subscribe","table":"public.things"}`)
	f := wsRead(t, ws)
	if f.Type != "subscribed" || f.ID == "" {
		t.Fatalf("subscribe without id answered %+v, want subscribed with an id", f)
	}
	wsSend(t, ws, `{"type":"unsubscribe","id":"`+f.ID+`"}`)
	if u := wsRead(t, ws); u.Type != "unsubscribed" || u.ID != f.ID {
		t.Fatalf("unsubscribe %q answered %+v", f.ID, u)
	}

	// A URL view of grp 3 under a row policy of grp 3 or 4 and val < 50.
	policy := token(map[string]any{"grps": []int{3, 4}, "tablecast": map[string]any{"tables": map[string]any{"*": []string{"*"}},
		"policies": map[string]any{"public.things": map[string]any{"grp": map[string]any{"in": map[string]any{"claim": "grps"}}}}}})
	uv := wsDial(t, "ws://"+httpAddr+"/ws/tables/public.things?snapshot=true&val=lt.50&token="+policy)
	uv.SetReadLimit(1 << 24)
	vc := &viewClient{spec: viewSpec{sql: "grp IN (3, 4) AND val < 50"}, ws: uv, rows: map[int]viewRow{}}
	rctx, stop := context.WithCancel(ctx)
	defer stop()
	done := make(chan struct{})
	go func() { defer close(done); vc.run(rctx) }()
	waitFor(t, time.Minute, "the URL view to sync", func() bool {
		vc.mu.Lock()
		defer vc.mu.Unlock()
		return vc.isSynced || vc.err != nil
	})
	for _, sql := range []string{
		`UPDATE things SET grp = 5 WHERE id = 3`,  // leaves the policy: a leave
		`UPDATE things SET grp = 4 WHERE id = 5`,  // enters the policy: an enter
		`UPDATE things SET val = 60 WHERE id = 4`, // leaves the where: a leave
		`DELETE FROM things WHERE id = 7`,         // never in the view: not sent
		`UPDATE things SET id = 9999 WHERE id = 13`,
		`DELETE FROM things WHERE id = 23`,
	} {
		if _, err := conn.Exec(ctx, sql); err != nil {
			t.Fatal(err)
		}
	}
	vc.waitEqual(t, "the URL view", func() map[int]viewRow {
		want, err := wantView(ctx, conn, vc.spec.sql)
		if err != nil {
			t.Fatal(err)
		}
		return want
	})
	stop()
	<-done

	// A column dropped is not served: the row state keeps each row as its
	// last event wrote it, and rows not changed since the DROP COLUMN
	// still held the column's values (here row 1's), which views sent.
	// subscribes reports whether the gateway answers subscribe message msg
	// (its id "s") with subscribed, and then unsubscribes.
	subscribes := func(msg string) bool {
		wsSend(t, ws, msg)
		f := wsRead(t, ws)
		for f.ID != "s" {
			f = wsRead(t, ws) // an event of an earlier subscription
		}
		if f.Type != "subscribed" {
			return false
		}
		wsSend(t, ws, `{"type":"unsubscribe","id":"s"}`)
		for f.Type != "unsubscribed" {
			f = wsRead(t, ws)
		}
		return true
	}
	// knows reports whether the gateway takes things to have secret (else
	// invalid_select: no such column).
	knows := func() bool {
		return subscribes(`{"type":"subscribe","id":"s","table":"public.things","select":["secret"]}`)
	}
	for _, sql := range []string{
		`ALTER TABLE things ADD COLUMN secret text`,
		`UPDATE things SET secret = 'dropped-value' WHERE id = 1`,
	} {
		if _, err := conn.Exec(ctx, sql); err != nil {
			t.Fatal(err)
		}
	}
	waitFor(t, 30*time.Second, "the gateway to know things with secret", knows)
	for _, sql := range []string{
		`ALTER TABLE things DROP COLUMN secret`,
		`UPDATE things SET val = 61 WHERE id = 2`, // describes the table without it
	} {
		if _, err := conn.Exec(ctx, sql); err != nil {
			t.Fatal(err)
		}
	}
	waitFor(t, 30*time.Second, "the gateway to know things without secret", func() bool { return !knows() })
	ws.SetReadLimit(1 << 24)
	wsSend(t, ws, `{"type":"subscribe","id":"d","table":"public.things","snapshot":true}`)
	rctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	seen := 0
	for synced := false; !synced; {
		_, b, err := ws.Read(rctx)
		if err != nil {
			t.Fatalf("read the view after the drop: %v", err)
		}
		var f struct {
			Type string                       `json:"type"`
			Rows []map[string]json.RawMessage `json:"rows"`
		}
		if err := json.Unmarshal(b, &f); err != nil {
			t.Fatalf("frame %s: %v", b, err)
		}
		switch f.Type {
		case "rows":
			for _, r := range f.Rows {
				var data map[string]json.RawMessage
				if err := json.Unmarshal(r["data"], &data); err != nil {
					t.Fatalf("rows entry %s: %v", r["data"], err)
				}
				if v, ok := data["secret"]; ok {
					t.Fatalf("the view's row %s holds the dropped column secret = %s", r["key"], v)
				}
				seen++
			}
		case "synced":
			synced = true
		}
	}
	if seen < 2000 {
		t.Fatalf("the view after the drop had %d rows, want the table's", seen)
	}

	// A table dropped and created again under its name: the row state kept
	// the dropped table's rows whose keys the new one lacks, and every view
	// was sent them. Its addition to the publication now starts with a
	// truncate: a view open across it is emptied and filled with the new
	// table's rows, and a view taken after holds those alone.
	// openView opens a view of table kept up by a client of its own until
	// the returned stop.
	openView := func(table string) (*viewClient, func()) {
		t.Helper()
		ov := wsDial(t, "ws://"+httpAddr+"/ws/tables/"+table+"?snapshot=true&token="+all)
		ov.SetReadLimit(1 << 24)
		vc := &viewClient{spec: viewSpec{sql: "true"}, ws: ov, rows: map[int]viewRow{}}
		vctx, cancel := context.WithCancel(ctx)
		done := make(chan struct{})
		go func() { defer close(done); vc.run(vctx) }()
		stop := sync.OnceFunc(func() { cancel(); <-done })
		t.Cleanup(stop)
		return vc, stop
	}
	ovc, ostop := openView("public.things")
	waitFor(t, time.Minute, "the view open across the drop to sync", func() bool {
		ovc.mu.Lock()
		defer ovc.mu.Unlock()
		return ovc.isSynced || ovc.err != nil
	})
	if _, err := conn.Exec(ctx, `DROP TABLE things;
		CREATE TABLE things (id int PRIMARY KEY, grp int NOT NULL, val int NOT NULL);
		INSERT INTO things VALUES (1, 1, 1), (2, 2, 2), (5000, 3, 3)`); err != nil {
		t.Fatal(err)
	}
	want, err := wantView(ctx, conn, "true")
	if err != nil {
		t.Fatal(err)
	}
	ovc.waitEqual(t, "the view open across the drop", func() map[int]viewRow { return want })
	ostop()
	nctx, ncancel := context.WithTimeout(ctx, 4*time.Minute)
	defer ncancel()
	// freshViewEquals takes views of table until one equals want.
	views := 0
	freshViewEquals := func(table string, want map[int]viewRow) {
		t.Helper()
		got := map[int]viewRow{}
		for i := 0; ; i++ {
			clear(got)
			views++
			id := fmt.Sprintf("n%d", views)
			wsSend(t, ws, fmt.Sprintf(`{"type":"subscribe","id":"%s","table":"%s","snapshot":true}`, id, table))
			for synced := false; !synced; {
				_, b, err := ws.Read(nctx)
				if err != nil {
					t.Fatalf("read the view of %s: %v", table, err)
				}
				var f struct {
					Type string `json:"type"`
					ID   string `json:"id"`
					Rows []struct {
						Data viewRow `json:"data"`
					} `json:"rows"`
				}
				if err := json.Unmarshal(b, &f); err != nil {
					t.Fatalf("frame %s: %v", b, err)
				}
				if f.ID != id {
					continue // an event of an earlier subscription
				}
				switch f.Type {
				case "rows":
					for _, r := range f.Rows {
						got[r.Data.ID] = r.Data
					}
				case "synced":
					synced = true
				case "error":
					t.Fatalf("the view of %s: %s", table, b)
				}
			}
			wsSend(t, ws, fmt.Sprintf(`{"type":"unsubscribe","id":"%s"}`, id))
			if sameView(got, want) {
				return
			}
			if i == 50 {
				t.Fatalf("a view of %s holds %d rows, want its %d", table, len(got), len(want))
			}
			time.Sleep(200 * time.Millisecond)
		}
	}
	freshViewEquals("public.things", want)

	// The table renamed, and another created under its old name, in one
	// transaction: the rows held under the old name are truncated before
	// the new table's come, and the renamed table's rows come under its
	// new name. A view open across it holds the new table's rows alone.
	ovc, ostop = openView("public.things")
	ovc.waitEqual(t, "the view open across the rename, before it", func() map[int]viewRow { return want })
	if _, err := conn.Exec(ctx, `ALTER TABLE things RENAME TO parts;
		CREATE TABLE things (id int PRIMARY KEY, grp int NOT NULL, val int NOT NULL);
		INSERT INTO things VALUES (7, 7, 7);
		INSERT INTO parts VALUES (6000, 6, 6)`); err != nil {
		t.Fatal(err)
	}
	wantThings, err := wantView(ctx, conn, "true")
	if err != nil {
		t.Fatal(err)
	}
	wantParts, err := wantViewOf(ctx, conn, "parts", "true")
	if err != nil {
		t.Fatal(err)
	}
	ovc.waitEqual(t, "the view open across the rename", func() map[int]viewRow { return wantThings })
	ostop()
	freshViewEquals("public.parts", wantParts)
	freshViewEquals("public.things", wantThings)

	// parts dropped: a view open across the drop is emptied by its
	// truncate; before, the row state and every view kept its rows.
	ovc, ostop = openView("public.parts")
	ovc.waitEqual(t, "the view of parts open across its drop, before it", func() map[int]viewRow { return wantParts })
	if _, err := conn.Exec(ctx, `DROP TABLE parts`); err != nil {
		t.Fatal(err)
	}
	ovc.waitEqual(t, "the view of parts open across its drop", func() map[int]viewRow { return map[int]viewRow{} })
	ostop()

	// Under a deferred key, transactions insert a row's new version before
	// they delete, change or move off the old one, or move a row onto a
	// key held and delete the row there. A view open across them and a
	// view taken after (from the row state) hold the table; both lost the
	// rows that came onto the keys.
	if _, err := conn.Exec(ctx, `CREATE TABLE slots (id int PRIMARY KEY DEFERRABLE INITIALLY DEFERRED, grp int NOT NULL, val int NOT NULL);
		ALTER TABLE slots REPLICA IDENTITY FULL;
		INSERT INTO slots SELECT g, g, g FROM generate_series(1, 20) g`); err != nil {
		t.Fatal(err)
	}
	wantSlots := func() map[int]viewRow {
		w, err := wantViewOf(ctx, conn, "slots", "true")
		if err != nil {
			t.Fatal(err)
		}
		return w
	}
	waitFor(t, 30*time.Second, "the gateway to know slots (else unknown_table)", func() bool {
		return subscribes(`{"type":"subscribe","id":"s","table":"public.slots"}`)
	})
	svc, sstop := openView("public.slots")
	svc.waitEqual(t, "the view of slots, before", wantSlots)
	for _, tx := range []string{
		`BEGIN; INSERT INTO slots VALUES (3, 30, 30); DELETE FROM slots WHERE id = 3 AND val = 3; COMMIT`,
		`BEGIN; INSERT INTO slots VALUES (4, 40, 40); UPDATE slots SET id = 400 WHERE id = 4 AND val = 4; COMMIT`,
		`BEGIN; INSERT INTO slots VALUES (5, 50, 50); UPDATE slots SET grp = 55 WHERE id = 5 AND val = 5; DELETE FROM slots WHERE grp = 55; COMMIT`,
		`BEGIN; UPDATE slots SET id = 6 WHERE id = 7; DELETE FROM slots WHERE id = 6 AND val = 6; COMMIT`,
		// The new version changed in place: its old row (sent whole) is
		// the row the view took the key's to be.
		`BEGIN; INSERT INTO slots VALUES (8, 80, 80); UPDATE slots SET val = 81 WHERE id = 8 AND grp = 80; DELETE FROM slots WHERE id = 8 AND val = 8; COMMIT`,
		`BEGIN; UPDATE slots SET id = 9, grp = 90 WHERE id = 10; UPDATE slots SET val = 91 WHERE id = 9 AND grp = 90; UPDATE slots SET id = 1000 WHERE id = 9 AND val = 9; COMMIT`,
	} {
		if _, err := conn.Exec(ctx, tx); err != nil {
			t.Fatalf("%s: %v", tx, err)
		}
	}
	svc.waitEqual(t, "the view of slots open across keys shared in a transaction", wantSlots)
	sstop()
	freshViewEquals("public.slots", wantSlots())
}

// TestLiveViewSlowClient (TABLECAST_SOAK=1): a client that asks for the
// snapshot of a 200,000-row table and reads nothing is closed with 4008
// once its send queue is full and the write timeout passes, the gateway
// holding the table neither in its queue nor anywhere else (its resident
// memory grows by less than 48 MiB over idle); the same client then subscribes again and gets every
// row.
func TestLiveViewSlowClient(t *testing.T) {
	if os.Getenv("TABLECAST_SOAK") != "1" {
		t.Skip("a soak test: TABLECAST_SOAK=1")
	}
	c := pgtestRequire(t)
	_, url := c.CreateDatabase(t)
	conn := connect(t, url)
	ctx := context.Background()
	if _, err := conn.Exec(ctx, `CREATE TABLE big (id int PRIMARY KEY, grp int NOT NULL, payload text NOT NULL);
		INSERT INTO big SELECT g, g % 10, repeat(md5(g::text), 4) FROM generate_series(1, 200000) g`); err != nil {
		t.Fatal(err)
	}
	slot := fmt.Sprintf("tc_slow_%d", os.Getpid())
	dropSlotAtCleanup(t, url, slot)
	httpAddr, natsAddr := freeAddr(t), freeAddr(t)
	// Built without the race detector, whose shadow memory would swamp
	// the figure measured.
	_, p := startBinary(t, plainBinary(t), append(baseEnv(), "TABLECAST_ROW_STATE=true", "TABLECAST_DATABASE_URL="+url, "TABLECAST_SLOT="+slot, "TABLECAST_PUBLICATION=tc_slow",
		"TABLECAST_HTTP_ADDR="+httpAddr, "TABLECAST_NATS_LISTEN="+natsAddr, "TABLECAST_DATA_DIR="+t.TempDir(),
		"TABLECAST_ALLOW_ANONYMOUS=true", "TABLECAST_WS_WRITE_TIMEOUT=2s"), "run")
	waitFor(t, 2*time.Minute, "/readyz", func() bool {
		code, _, err := httpGet("http://" + httpAddr + "/readyz")
		return err == nil && code == 200
	})
	ws := "ws://" + httpAddr + "/ws"
	// The rows are applied in id order: the last ten there, every row is.
	waitFor(t, 5*time.Minute, "the row state to hold every row", func() bool {
		n, _, err := snapshotOnce(ws, `{"id":{"gt":199990}}`)
		return err == nil && n == 10
	})
	idle := vmRSS(p.Process.Pid)
	peak := idle
	sampled := make(chan struct{})
	sctx, sstop := context.WithCancel(ctx)
	go func() {
		defer close(sampled)
		for sctx.Err() == nil {
			peak = max(peak, vmRSS(p.Process.Pid))
			time.Sleep(50 * time.Millisecond)
		}
	}()
	slow := wsDial(t, ws)
	slow.SetReadLimit(1 << 24)
	wsSend(t, slow, `{"type":"subscribe","id":"v","table":"public.big","snapshot":true}`)
	time.Sleep(10 * time.Second) // reads nothing, far beyond the write timeout
	rctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	var err error
	for err == nil {
		_, _, err = slow.Read(rctx)
	}
	// The gateway gives up on it as on any slow client: 4008, or, when the
	// write timeout strikes inside a frame the client never read, the
	// connection shut down there (a close frame cannot follow half a
	// frame).
	if code := websocket.CloseStatus(err); code != 4008 && (rctx.Err() != nil || !strings.Contains(err.Error(), "EOF")) {
		t.Fatalf("a client reading nothing of its snapshot ended with %v (close %d), want 4008 or the connection shut down", err, code)
	}
	sstop()
	<-sampled
	t.Logf("the slow client ended with: %v", err)
	t.Logf("gateway RSS %d MiB idle, at most %d MiB while the slow client's snapshot was sent (+%d MiB)", idle>>20, peak>>20, (peak-idle)>>20)
	// The table is about 40 MiB of rows: a gateway that read it ahead of
	// the client would hold it. Paced by the send queue (4 MiB), a batch
	// of rows and the frames in the socket are all it holds.
	if peak-idle > 48<<20 {
		t.Errorf("gateway RSS grew by %d MiB while a client that reads nothing got a snapshot, want it bounded (at most 48 MiB)", (peak-idle)>>20)
	}
	n, took, err := snapshotOnce(ws, "")
	if err != nil || n != 200000 {
		t.Fatalf("subscribing again: %d rows, %v", n, err)
	}
	t.Logf("the whole table again: %d rows in %s", n, took)
}

// TestLiveViewManySnapshots (TABLECAST_SOAK=1): 1,000 WebSocket clients
// (TABLECAST_VIEWS_CONCURRENT) connected at once subscribe with snapshot
// to a table of 10,000 rows; each gets every row and synced. The gateway's
// resident memory and Go heap (in use) at their peak are logged, and its
// resident memory must grow by less than 128 bytes a row held over idle:
// the snapshots are read a batch at a time, a few frames ahead of each
// client, and take turns (TABLECAST_WS_MAX_REPLAYS); what stays is each
// view's set of key hashes.
func TestLiveViewManySnapshots(t *testing.T) {
	if os.Getenv("TABLECAST_SOAK") != "1" {
		t.Skip("a soak test: TABLECAST_SOAK=1")
	}
	clients := 1000
	if v, err := strconv.Atoi(os.Getenv("TABLECAST_VIEWS_CONCURRENT")); err == nil && v > 0 {
		clients = v
	}
	c := pgtestRequire(t)
	_, url := c.CreateDatabase(t)
	conn := connect(t, url)
	ctx := context.Background()
	if _, err := conn.Exec(ctx, `CREATE TABLE big (id int PRIMARY KEY, grp int NOT NULL, payload text NOT NULL);
		INSERT INTO big SELECT g, g % 10, md5(g::text) FROM generate_series(1, 10000) g`); err != nil {
		t.Fatal(err)
	}
	slot := fmt.Sprintf("tc_many_%d", os.Getpid())
	dropSlotAtCleanup(t, url, slot)
	httpAddr, natsAddr := freeAddr(t), freeAddr(t)
	// The write timeout is long, and no pings go out while it runs: the
	// clients share a race-built process, and one starved for a while is
	// not what is measured (the client library gives a pong 5 s to be
	// written, and closes its connection when that passes).
	_, p := startBinary(t, plainBinary(t), append(baseEnv(), "TABLECAST_ROW_STATE=true", "TABLECAST_DATABASE_URL="+url, "TABLECAST_SLOT="+slot, "TABLECAST_PUBLICATION=tc_many",
		"TABLECAST_HTTP_ADDR="+httpAddr, "TABLECAST_NATS_LISTEN="+natsAddr, "TABLECAST_DATA_DIR="+t.TempDir(),
		"TABLECAST_ALLOW_ANONYMOUS=true", "TABLECAST_WS_MAX_CONNECTIONS_PER_IDENTITY=5000", "TABLECAST_WS_WRITE_TIMEOUT=60s",
		"TABLECAST_WS_PING_INTERVAL=10m"), "run")
	waitFor(t, 2*time.Minute, "/readyz", func() bool {
		code, _, err := httpGet("http://" + httpAddr + "/readyz")
		return err == nil && code == 200
	})
	ws := "ws://" + httpAddr + "/ws"
	waitFor(t, 2*time.Minute, "the row state to hold every row", func() bool {
		n, _, err := snapshotOnce(ws, `{"id":{"gt":9990}}`)
		return err == nil && n == 10
	})
	heap := func() int64 {
		_, body, err := httpGet("http://" + httpAddr + "/metrics")
		if err != nil {
			return 0
		}
		for _, line := range strings.Split(body, "\n") {
			if v, ok := strings.CutPrefix(line, "go_memstats_heap_inuse_bytes "); ok {
				f, _ := strconv.ParseFloat(strings.TrimSpace(v), 64)
				return int64(f)
			}
		}
		return 0
	}
	idleRSS, idleHeap := vmRSS(p.Process.Pid), heap()
	peakRSS, peakHeap := idleRSS, idleHeap
	sctx, sstop := context.WithCancel(ctx)
	sampled := make(chan struct{})
	go func() {
		defer close(sampled)
		for sctx.Err() == nil {
			peakRSS, peakHeap = max(peakRSS, vmRSS(p.Process.Pid)), max(peakHeap, heap())
			time.Sleep(100 * time.Millisecond)
		}
	}()

	rctx, cancel := context.WithTimeout(ctx, 10*time.Minute)
	defer cancel()
	conns := make([]*websocket.Conn, clients)
	for i := range conns {
		wc, _, err := websocket.Dial(rctx, ws, nil)
		if err != nil {
			t.Fatalf("connection %d: %v", i, err)
		}
		defer wc.CloseNow()
		wc.SetReadLimit(1 << 24)
		conns[i] = wc
	}
	began := time.Now()
	var wg sync.WaitGroup
	errs := make(chan error, clients)
	var mu sync.Mutex
	var slowest time.Duration
	for i, wc := range conns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := wc.Write(rctx, websocket.MessageText, []byte(`{"type":"subscribe","id":"v","table":"public.big","snapshot":true}`)); err != nil {
				errs <- fmt.Errorf("client %d: %w", i, err)
				return
			}
			rows := 0
			for {
				_, b, err := wc.Read(rctx)
				if err != nil {
					errs <- fmt.Errorf("client %d after %d rows: %w", i, rows, err)
					return
				}
				// The frame's type is read from its start, and rows are
				// counted by their keys, rather than by decoding every
				// row: a thousand clients in the race-built test
				// process would read too slowly for the gateway.
				typ := ""
				if t, ok := bytes.CutPrefix(b, []byte(`{"type":"`)); ok {
					typ, _, _ = strings.Cut(string(t[:min(len(t), 16)]), `"`)
				}
				switch typ {
				case "rows":
					rows += bytes.Count(b, []byte(`{"key":`))
				case "error":
					errs <- fmt.Errorf("client %d: %s", i, b)
					return
				case "synced":
					if rows != 10000 {
						errs <- fmt.Errorf("client %d: synced after %d rows, want 10000", i, rows)
					}
					mu.Lock()
					slowest = max(slowest, time.Since(began))
					mu.Unlock()
					return
				}
			}
		}()
	}
	wg.Wait()
	sstop()
	<-sampled
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	t.Logf("%d snapshots of 10,000 rows at once: the last synced after %s; gateway RSS %d MiB idle, %d MiB at its peak (+%d MiB); Go heap in use %d MiB idle, %d MiB at its peak",
		clients, slowest.Round(time.Millisecond), idleRSS>>20, peakRSS>>20, (peakRSS-idleRSS)>>20, idleHeap>>20, peakHeap>>20)
	// Each view keeps a 64-bit hash of the key of each row its client
	// holds (wsgate's viewKey), about 16 bytes a row in its map, and the
	// heap grows to twice what is live before it is collected; measured:
	// about 86 bytes a row held. 128 guards against anything holding the
	// keys or rows themselves (the keys alone were 50 bytes a row).
	if held := int64(clients) * 10000; peakRSS-idleRSS > held*128 {
		t.Errorf("gateway RSS grew by %d MiB for %d snapshots of 10,000 rows, want less than 128 bytes a row held", (peakRSS-idleRSS)>>20, clients)
	}
}
