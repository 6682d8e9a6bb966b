package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/tablecast/tablecast/internal/endpoint"
)

// TestWebhookSurvivesSIGKILL kills `tablecast run` with SIGKILL while it
// delivers to a webhook, and starts it again: every event arrives, in
// order, nothing skipped, and an event that arrives again does so with the
// same webhook-id, before any later event. (`make soak`, TABLECAST_SOAK=1,
// kills it three times under more events.)
func TestWebhookSurvivesSIGKILL(t *testing.T) {
	kills, rows := 1, 300
	if os.Getenv("TABLECAST_SOAK") != "" {
		kills, rows = 3, 1500
	}
	c := pgtestRequire(t)
	_, url := c.CreateDatabase(t)
	conn := connect(t, url)
	if _, err := conn.Exec(context.Background(), `CREATE TABLE orders (id int PRIMARY KEY, status text)`); err != nil {
		t.Fatal(err)
	}
	slot := fmt.Sprintf("tc_webhook_%d", os.Getpid())
	dropSlotAtCleanup(t, url, slot)
	n := startNATS(t)

	type got struct{ webhookID, eventID string }
	var (
		mu       sync.Mutex
		received []got
		rowOf    = map[string]float64{}
	)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		var ev struct {
			ID   string         `json:"id"`
			Data map[string]any `json:"data"`
		}
		if err := json.Unmarshal(body, &ev); err != nil {
			t.Errorf("body %s: %v", body, err)
		}
		time.Sleep(2 * time.Millisecond) // a receiver that takes a moment: kills land mid-request
		mu.Lock()
		received = append(received, got{r.Header.Get("webhook-id"), ev.ID})
		rowOf[ev.ID] = ev.Data["id"].(float64)
		mu.Unlock()
		w.WriteHeader(http.StatusNoContent)
	}))
	defer srv.Close()

	ctx := context.Background()
	store, err := endpoint.Open(ctx, n.JS, endpoint.Config{})
	if err != nil {
		t.Fatal(err)
	}
	defer store.Close()
	if _, err := store.CreateFilter(ctx, &endpoint.Filter{Name: "orders", Tables: []string{"public.orders"}}); err != nil {
		t.Fatal(err)
	}
	if _, err := store.CreateEndpoint(ctx, &endpoint.Endpoint{Name: "hook", Type: endpoint.TypeWebhook, Filters: []string{"orders"},
		Webhook: &endpoint.Webhook{URL: srv.URL + "/hook"}}); err != nil {
		t.Fatal(err)
	}

	env := append(baseEnv(), "TABLECAST_DATABASE_URL="+url, "TABLECAST_NATS_URL="+n.URL(), "TABLECAST_SLOT="+slot,
		"TABLECAST_PUBLICATION=tc_webhook", "TABLECAST_HTTP_ADDR=127.0.0.1:0", "TABLECAST_LOG_LEVEL=warn",
		"TABLECAST_WEBHOOK_ALLOW_NETS=127.0.0.1/32")
	start := func() *exec.Cmd {
		cmd := exec.Command(binary(t), "run")
		cmd.Env = env
		cmd.Stderr = os.Stderr
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		return cmd
	}
	proc := start()
	t.Cleanup(func() {
		_ = proc.Process.Signal(syscall.SIGTERM)
		_ = proc.Wait()
	})
	count := func() int {
		mu.Lock()
		defer mu.Unlock()
		return len(received)
	}

	for i := 1; i <= rows; i++ {
		if _, err := conn.Exec(ctx, `INSERT INTO orders VALUES ($1, 'open')`, i); err != nil {
			t.Fatal(err)
		}
	}
	for k := 1; k <= kills; k++ {
		at := rows * k / (kills + 1)
		waitFor(t, 3*time.Minute, fmt.Sprintf("%d deliveries", at), func() bool { return count() >= at })
		_ = proc.Process.Signal(syscall.SIGKILL)
		_ = proc.Wait()
		t.Logf("killed after %d deliveries", count())
		proc = start()
	}
	waitFor(t, 3*time.Minute, "every event", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(rowOf) == rows
	})

	mu.Lock()
	defer mu.Unlock()
	highest, prev := 0.0, 0.0
	webhookIDs := map[string]string{}
	dups, back := 0, 0
	for i, g := range received {
		row := rowOf[g.eventID]
		if prev, ok := webhookIDs[g.eventID]; ok {
			dups++
			if prev != g.webhookID {
				t.Fatalf("event %s sent again with webhook-id %s, first %s", g.eventID, g.webhookID, prev)
			}
		}
		webhookIDs[g.eventID] = g.webhookID
		// One event at a time is in flight, in row order, and nothing is
		// skipped. A kill sends again what was accepted but whose
		// acknowledgement JetStream had not kept (the last event, or the
		// last few: the server keeps a consumer's acknowledgements on disk
		// a moment after it takes them), from the first of those on and
		// before any later event: a step back at most once per kill.
		switch {
		case row > highest+1:
			t.Fatalf("delivery %d is of row %v after row %v: row %v skipped", i, row, highest, highest+1)
		case row == prev+1 || row == prev:
		case row < prev:
			back++
			if back > kills {
				t.Fatalf("delivery %d is of row %v after row %v: more steps back than the %d kills", i, row, prev, kills)
			}
		default:
			t.Fatalf("delivery %d is of row %v after row %v: out of order", i, row, prev)
		}
		prev, highest = row, max(highest, row)
	}
	t.Logf("%d deliveries of %d events (%d again, after a kill)", len(received), rows, dups)
}
