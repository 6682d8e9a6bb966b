package main

import (
	"context"
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"github.com/tablecast/tablecast/wsgate"
)

// chromiumForTests returns the path of a Chromium or Chrome, skipping the
// test without one, except under CI=true, where it fails
// (scripts/test-tools.sh installs Debian's chromium).
func chromiumForTests(t *testing.T) string {
	t.Helper()
	for _, name := range []string{"chromium", "chromium-browser", "google-chrome", "chrome"} {
		if p, err := exec.LookPath(name); err == nil {
			return p
		}
	}
	if os.Getenv("CI") == "true" {
		t.Fatal("no chromium in PATH: the console's test needs a headless Chromium (scripts/test-tools.sh install)")
	}
	t.Skip("no chromium in PATH: the console's test needs a headless Chromium (scripts/test-tools.sh install)")
	return ""
}

// browserTab is one tab of the test's browser, and every console message,
// exception and browser log entry (CSP violations among them) it had.
type browserTab struct {
	t   *testing.T
	ctx context.Context
	mu  sync.Mutex
	msg []chromedp.ConsoleMessage
}

func newTab(t *testing.T, browser context.Context) *browserTab {
	t.Helper()
	ctx, cancel := chromedp.NewContext(browser)
	t.Cleanup(cancel)
	tab := &browserTab{t: t, ctx: ctx}
	// Run once so that the tab exists, then listen from before the page loads.
	if err := chromedp.Do(ctx, chromedp.EmulateViewport(1280, 860)); err != nil {
		t.Fatalf("open a tab: %v", err)
	}
	messages := chromedp.Console(ctx)
	go func() {
		for m, err := range messages {
			if err != nil {
				return
			}
			tab.mu.Lock()
			tab.msg = append(tab.msg, m)
			tab.mu.Unlock()
		}
	}()
	return tab
}

// eval evaluates a JavaScript expression in the tab into a T.
func eval[T any](tab *browserTab, expr string) T {
	tab.t.Helper()
	ctx, cancel := context.WithTimeout(tab.ctx, 20*time.Second)
	defer cancel()
	v, err := chromedp.Run(ctx, chromedp.Evaluate[T](expr))
	if err != nil {
		tab.t.Fatalf("evaluate %s: %v", expr, err)
	}
	return v
}

// problems are the tab's console errors, exceptions, and anything said of
// the Content Security Policy.
func (tab *browserTab) problems() []string {
	tab.mu.Lock()
	defer tab.mu.Unlock()
	var out []string
	for _, m := range tab.msg {
		if m.Type == chromedp.ConsoleError || m.IsException() || strings.Contains(m.Text, "Content Security Policy") {
			out = append(out, fmt.Sprintf("%s (%s %s:%d)", m, m.Source, m.URL, m.Line))
		}
	}
	return out
}

// apiStatus is GET /api/status as the key sees it.
func apiStatus(t *testing.T, addr, key string) wsgate.Status {
	t.Helper()
	req, _ := http.NewRequest("GET", "http://"+addr+wsgate.StatusPath, nil)
	req.Header.Set("Authorization", "Bearer "+key)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var st wsgate.Status
	if resp.StatusCode != 200 {
		t.Fatalf("/api/status: %s", resp.Status)
	}
	if err := json.NewDecoder(resp.Body).Decode(&st); err != nil {
		t.Fatal(err)
	}
	return st
}

// TestConsole drives the console at / in a real headless Chromium against
// `tablecast run` (PostgreSQL, the reader, the embedded NATS and the
// gateway) with API keys of three grants: every table, one table, none.
// The console must load under its Content-Security-Policy without one
// console error; show a row inserted in PostgreSQL in its live view; show
// the tables, event counts, slot and client figures the server's
// /api/status gives; and show a key nothing of what it may not read. With
// TABLECAST_SCREENSHOTS=dir it writes dir/console.png, the README's picture.
func TestConsole(t *testing.T) {
	t.Parallel() // see "Parallel tests" in main_test.go
	chromium := chromiumForTests(t)
	c := pgtestRequire(t)
	dbName, url := c.CreateDatabase(t)
	conn := connect(t, url)
	ctx := context.Background()
	if _, err := conn.Exec(ctx, `CREATE TABLE orders (id int PRIMARY KEY, status text, total numeric(10,2));
		CREATE TABLE payroll (id int PRIMARY KEY, employee text, salary numeric(10,2))`); err != nil {
		t.Fatal(err)
	}
	slot := fmt.Sprintf("tc_console_%d", os.Getpid())
	dropSlotAtCleanup(t, url, slot)

	keys := map[string]string{} // name → key
	var list []map[string]any
	for name, grants := range map[string]map[string]any{
		"ops":    {"tables": map[string]any{"*": []string{"*"}}, "admin": []string{"write"}},
		"clerk":  {"tables": map[string]any{"public.orders": []string{"*"}}},
		"nobody": {},
	} {
		keys[name] = "tck_console-test-" + name + "-0123456789abcdef"
		list = append(list, map[string]any{"name": name, "hash": fmt.Sprintf("sha256:%x", sha256.Sum256([]byte(keys[name]))),
			"claims": map[string]any{"tablecast": grants}})
	}
	keysFile := filepath.Join(t.TempDir(), "keys.json")
	b, _ := json.Marshal(list)
	if err := os.WriteFile(keysFile, b, 0o600); err != nil {
		t.Fatal(err)
	}
	addr, adminAddr := freeAddr(t), freeAddr(t)
	startProcess(t, append(baseEnv(), "TABLECAST_ADMIN_ADDR="+adminAddr, "TABLECAST_DATABASE_URL="+url, "TABLECAST_SLOT="+slot, "TABLECAST_PUBLICATION=tc_console",
		"TABLECAST_HTTP_ADDR="+addr, "TABLECAST_NATS_LISTEN="+freeAddr(t), "TABLECAST_DATA_DIR="+t.TempDir(),
		"TABLECAST_API_KEYS_FILE="+keysFile, "TABLECAST_ROW_STATE=true"), "run")
	waitFor(t, time.Minute, "/readyz", func() bool {
		code, _, err := httpGet("http://" + addr + "/readyz")
		return err == nil && code == 200
	})

	alloc, cancel := chromedp.NewExecAllocator(context.Background(), append(chromedp.DefaultExecAllocatorOptions[:],
		chromedp.ExecPath(chromium), chromedp.NoSandbox, chromedp.Flag("disable-gpu", true), chromedp.Flag("disable-dev-shm-usage", true),
		// Chromium puts its singleton socket in TMPDIR and leaves it there.
		chromedp.Env("TMPDIR="+t.TempDir()))...)
	defer cancel()
	browser, cancel := chromedp.NewContext(alloc)
	defer cancel()
	if err := chromedp.Do(browser); err != nil { // starts the browser
		t.Fatalf("start %s: %v", chromium, err)
	}
	open := func(key string) *browserTab {
		tab := newTab(t, browser)
		if err := chromedp.Do(tab.ctx, chromedp.Navigate("http://"+addr+"/?token="+key)); err != nil {
			t.Fatalf("load the console: %v", err)
		}
		return tab
	}
	domTables := func(tab *browserTab) []string {
		return eval[[]string](tab, `[...document.querySelectorAll("#tables tbody tr")].map((tr) => tr.cells[0].textContent)`)
	}
	poll := func(what string, cond func() bool) {
		t.Helper()
		waitFor(t, time.Minute, what, cond)
	}

	// Every table: the console lists both, subscribes to the first, and
	// shows a row inserted in PostgreSQL.
	ops := open(keys["ops"])
	poll("the console to list the tables", func() bool { return len(domTables(ops)) == 2 })
	if got, want := domTables(ops), []string{"public.orders", "public.payroll"}; !slices.Equal(got, want) {
		t.Errorf("the console lists %v, want %v", got, want)
	}
	var apiNames []string
	for _, ts := range apiStatus(t, addr, keys["ops"]).Tables {
		apiNames = append(apiNames, ts.Name)
	}
	if !slices.Equal(apiNames, domTables(ops)) {
		t.Errorf("the console lists %v, /api/status %v", domTables(ops), apiNames)
	}
	poll("the live view to subscribe", func() bool {
		return eval[string](ops, `document.getElementById("status").textContent`) == "live: public.orders"
	})
	hasRow := func(tab *browserTab, id int) bool {
		return eval[bool](tab, fmt.Sprintf(`[...document.querySelectorAll("#rows tr")].some((tr) => tr.cells[3].textContent === "id%d")`, id))
	}
	inserted := time.Now()
	if _, err := conn.Exec(ctx, `INSERT INTO orders VALUES (4242, 'paid', 19.90)`); err != nil {
		t.Fatal(err)
	}
	for !hasRow(ops, 4242) {
		if time.Since(inserted) > 30*time.Second {
			t.Fatal("the inserted row did not appear in the console's live view within 30s")
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Logf("a row inserted in PostgreSQL appeared in the console after %s", time.Since(inserted).Round(time.Millisecond))

	// More changes, then the figures: the console's equal the server's.
	for i := 1; i <= 5; i++ {
		if _, err := conn.Exec(ctx, `INSERT INTO orders VALUES ($1::int, 'open', $1::int * 10)`, i); err != nil {
			t.Fatal(err)
		}
		if _, err := conn.Exec(ctx, `INSERT INTO payroll VALUES ($1::int, 'employee ' || $1::int, 5000)`, i); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := conn.Exec(ctx, `UPDATE orders SET status = 'paid' WHERE id = 2`); err != nil {
		t.Fatal(err)
	}
	type figures struct {
		Events  []string `json:"events"`
		Conns   string   `json:"conns"`
		Subs    string   `json:"subs"`
		LSN     string   `json:"lsn"`
		Readers []string `json:"readers"`
	}
	dom := func() figures {
		return eval[figures](ops, `({
			events: [...document.querySelectorAll("#tables tbody tr")].map((tr) => tr.cells[1].textContent),
			conns: document.getElementById("gw-conns").textContent,
			subs: document.getElementById("gw-subs").textContent,
			readers: [...document.querySelectorAll(".reader")].map((r) => r.dataset.slot),
			lsn: (document.querySelector(".reader .lsn b") || {}).textContent || "",
		})`)
	}
	var last figures
	var api wsgate.Status
	poll("the console's figures to equal /api/status's", func() bool {
		last, api = dom(), apiStatus(t, addr, keys["ops"])
		if len(api.Tables) != 2 || api.Tables[0].Events == nil || *api.Tables[0].Events != 7 || *api.Tables[1].Events != 5 || len(api.Readers) != 1 {
			return false // the reader's record is written every few seconds
		}
		return slices.Equal(last.Events, []string{"7", "5"}) && last.Conns == fmt.Sprint(api.Gateway.Connections) &&
			last.Subs == fmt.Sprint(api.Gateway.Subscriptions) && slices.Equal(last.Readers, []string{slot}) && last.LSN == api.Readers[0].AckedLSN
	})
	if api.Gateway.Connections < 1 || api.Gateway.Subscriptions < 1 || api.Readers[0].Database != dbName || !api.Readers[0].Streaming {
		t.Errorf("status %+v: want the console's connection and subscription, and the reader streaming %s", api, dbName)
	}
	if eval[bool](ops, `document.querySelector(".reader svg polyline.lag") === null`) {
		t.Error("no chart of the slot's lag")
	}
	// The managed endpoints: one created through the admin API shows in
	// the console of a key with the admin grant (and no secret of it).
	body := `{"name":"billing-hook","type":"webhook","webhook":{"url":"https://billing.example/hook","secret":"whsec_c2VjcmV0LXNlY3JldC1zZWNyZXQtc2VjcmV0"}}`
	req, _ := http.NewRequest("POST", "http://"+adminAddr+"/v1/endpoints", strings.NewReader(body))
	req.Header.Set("Authorization", "Bearer "+keys["ops"])
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusCreated && resp.StatusCode != http.StatusOK {
		t.Fatalf("create an endpoint through the admin API: %s", resp.Status)
	}
	poll("the console to show the managed endpoint", func() bool {
		return !eval[bool](ops, `document.getElementById("endpoints-panel").hidden`) &&
			strings.Contains(eval[string](ops, `document.getElementById("endpoints-panel").textContent`), "billing-hook")
	})
	if strings.Contains(eval[string](ops, `document.documentElement.outerHTML`), "c2VjcmV0") {
		t.Error("the console shows a webhook's secret")
	}
	// And a rule, in the rules section.
	req, _ = http.NewRequest("POST", "http://"+adminAddr+"/v1/rules", strings.NewReader(`{"name":"big-orders","table":"public.orders","new":{"total":{"gte":"100"}}}`))
	req.Header.Set("Authorization", "Bearer "+keys["ops"])
	req.Header.Set("Content-Type", "application/json")
	if resp, err = http.DefaultClient.Do(req); err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusCreated && resp.StatusCode != http.StatusOK {
		t.Fatalf("create a rule through the admin API: %s", resp.Status)
	}
	poll("the console to show the rule", func() bool {
		return !eval[bool](ops, `document.getElementById("rules-panel").hidden`) &&
			strings.Contains(eval[string](ops, `document.getElementById("rules").textContent`), "big-orders")
	})

	// The filter box: a where on status shows only the matching rows.
	filter := func(where string) {
		t.Helper()
		eval[chromedp.Void](ops, fmt.Sprintf(`document.getElementById("where").value = %q; document.getElementById("form").requestSubmit()`, where))
	}
	filter(`{"status":{"eq":"closed"}}`)
	poll("the filtered subscription", func() bool {
		return eval[int](ops, `document.querySelectorAll("#rows tr").length`) == 0 &&
			eval[string](ops, `document.getElementById("status").textContent`) == "live: public.orders"
	})
	if _, err := conn.Exec(ctx, `INSERT INTO orders VALUES (90, 'open', 1), (91, 'closed', 1)`); err != nil {
		t.Fatal(err)
	}
	poll("the row the filter keeps", func() bool { return hasRow(ops, 91) })
	if hasRow(ops, 90) {
		t.Error("the filter let through a row it does not match")
	}

	// Current rows: the paid orders of now, then kept live; a row that
	// comes to match enters (marked), one that stops matching leaves.
	currentKeys := func() []string {
		return eval[[]string](ops, `[...document.querySelectorAll("#current tbody tr")].map((tr) => tr.dataset.key).sort()`)
	}
	paidNow := func() []string {
		rows, err := conn.Query(ctx, `SELECT json_build_object('id', id)::text FROM orders WHERE status = 'paid'`)
		if err != nil {
			t.Fatal(err)
		}
		var keys []string
		for rows.Next() {
			var k string
			if err := rows.Scan(&k); err != nil {
				t.Fatal(err)
			}
			keys = append(keys, strings.ReplaceAll(k, " ", ""))
		}
		if rows.Err() != nil {
			t.Fatal(rows.Err())
		}
		slices.Sort(keys)
		return keys
	}
	eval[chromedp.Void](ops, `document.getElementById("where").value = '{"status":{"eq":"paid"}}'; document.getElementById("current-mode").checked = true; document.getElementById("form").requestSubmit()`)
	poll("the current paid orders", func() bool {
		return strings.HasPrefix(eval[string](ops, `document.getElementById("status").textContent`), "current rows: public.orders") &&
			slices.Equal(currentKeys(), paidNow())
	})
	if n := len(currentKeys()); n != 2 {
		t.Errorf("%d paid orders shown, want 2 (4242 and 2)", n)
	}
	if !eval[bool](ops, `document.getElementById("events").hidden`) {
		t.Error("the list of changes is shown beside the current rows")
	}
	if _, err := conn.Exec(ctx, `UPDATE orders SET status = 'paid' WHERE id = 3; UPDATE orders SET status = 'refunded' WHERE id = 4242`); err != nil {
		t.Fatal(err)
	}
	poll("order 3 to enter the view and 4242 to leave it", func() bool { return slices.Equal(currentKeys(), paidNow()) })
	if !eval[bool](ops, `[...document.querySelectorAll("#current tbody tr")].some((tr) => tr.dataset.key === '{"id":3}' && tr.dataset.marked !== undefined)`) {
		t.Error("order 3 is shown but was not marked as entering the view")
	}
	if _, err := conn.Exec(ctx, `DELETE FROM orders WHERE id = 2`); err != nil {
		t.Fatal(err)
	}
	poll("a deleted paid order to leave the view", func() bool { return slices.Equal(currentKeys(), paidNow()) })
	eval[chromedp.Void](ops, `document.getElementById("current-mode").checked = false; document.getElementById("where").value = ""; document.getElementById("form").requestSubmit()`)
	poll("the list of changes again", func() bool {
		return !eval[bool](ops, `document.getElementById("events").hidden`) && eval[bool](ops, `document.getElementById("current").hidden`)
	})

	if dir := os.Getenv("TABLECAST_SCREENSHOTS"); dir != "" {
		// A few samples in the chart first, and a view with both kinds of row.
		filter("")
		for i := 0; i < 6; i++ {
			if _, err := conn.Exec(ctx, `INSERT INTO orders SELECT g, 'open', g FROM generate_series($1::int, $1::int + 199) g`, 1000+i*200); err != nil {
				t.Fatal(err)
			}
			if _, err := conn.Exec(ctx, `UPDATE orders SET total = total + 1 WHERE id = 3`); err != nil {
				t.Fatal(err)
			}
			time.Sleep(3 * time.Second)
		}
		png, err := chromedp.Run(ops.ctx, chromedp.CaptureScreenshot())
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, "console.png"), png, 0o644); err != nil {
			t.Fatal(err)
		}
	}

	// One table: the other is nowhere on the page.
	clerk := open(keys["clerk"])
	poll("the clerk's console to list its table and the slot", func() bool {
		return slices.Equal(domTables(clerk), []string{"public.orders"}) && eval[int](clerk, `document.querySelectorAll(".reader").length`) == 1
	})
	// No grants: no table, no slot, no database.
	nobody := open(keys["nobody"])
	poll("the console of a key without grants to load its status", func() bool {
		return !eval[bool](nobody, `document.getElementById("tables-empty").hidden`) &&
			eval[string](nobody, `document.getElementById("gw-conns").textContent`) != "–" &&
			strings.HasPrefix(eval[string](nobody, `document.getElementById("empty").textContent`), "No tables")
	})
	if got := eval[string](nobody, `document.getElementById("readers-none").textContent`); got != "No reader streams a database you may read." {
		t.Errorf("the slot section of a key without grants says %q", got)
	}
	for name, tab := range map[string]*browserTab{"clerk": clerk, "nobody": nobody} {
		if !eval[bool](tab, `document.getElementById("endpoints-panel").hidden`) || !eval[bool](tab, `document.getElementById("rules-panel").hidden`) {
			t.Errorf("the console of %s, without the admin grant, shows the managed endpoints or rules", name)
		}
		text := eval[string](tab, `document.documentElement.outerHTML`)
		leaks := []string{"payroll", "billing-hook", "big-orders"}
		if name == "nobody" {
			leaks = append(leaks, "orders", slot, dbName)
		}
		for _, leak := range leaks {
			if strings.Contains(text, leak) {
				t.Errorf("the console of %s shows %q", name, leak)
			}
		}
	}

	for name, tab := range map[string]*browserTab{"ops": ops, "clerk": clerk, "nobody": nobody} {
		if p := tab.problems(); len(p) > 0 {
			t.Errorf("the console of %s had console errors or CSP violations:\n%s", name, strings.Join(p, "\n"))
		}
	}

	// The listener does catch a CSP violation: an injected inline script.
	probe := open(keys["nobody"])
	eval[chromedp.Void](probe, `(() => { const s = document.createElement("script"); s.textContent = "window.ran = 1"; document.body.append(s); })()`)
	poll("the CSP violation of an injected script to be reported", func() bool { return len(probe.problems()) > 0 })
	if eval[bool](probe, `window.ran === 1`) {
		t.Error("an injected inline script ran despite the Content-Security-Policy")
	}
}
