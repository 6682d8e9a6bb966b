package main

import (
	"context"
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
)

// TestConsoleHostileNames drives the console over a table whose name and
// column names a DBA chose to be awkward (markup, and names that every
// JavaScript object inherits: "constructor", "__proto__") and whose values
// an application's users wrote (markup). Nothing may become markup; an
// update that changed only the key highlights only the key (the other
// columns are not in its old row, so nothing is known of them); and the
// current rows keep every column's value through an update.
func TestConsoleHostileNames(t *testing.T) {
	t.Parallel() // see "Parallel tests" in main_test.go
	chromium := chromiumForTests(t)
	c := pgtestRequire(t)
	_, url := c.CreateDatabase(t)
	conn := connect(t, url)
	ctx := context.Background()
	const table = `<img src=x onerror=pwned=1>`
	if _, err := conn.Exec(ctx, `CREATE TABLE "`+table+`" (id int PRIMARY KEY, "constructor" text, "__proto__" text, "<b>note</b>" text)`); err != nil {
		t.Fatal(err)
	}
	slot := fmt.Sprintf("tc_console_hostile_%d", os.Getpid())
	dropSlotAtCleanup(t, url, slot)
	addr := freeAddr(t)
	startProcess(t, append(baseEnv(), "TABLECAST_DATABASE_URL="+url, "TABLECAST_SLOT="+slot, "TABLECAST_PUBLICATION=tc_console_hostile",
		"TABLECAST_HTTP_ADDR="+addr, "TABLECAST_NATS_LISTEN="+freeAddr(t), "TABLECAST_DATA_DIR="+t.TempDir(), "TABLECAST_ROW_STATE=true"), "run")
	waitFor(t, time.Minute, "/readyz", func() bool {
		code, _, err := httpGet("http://" + addr + "/readyz")
		return err == nil && code == 200
	})

	alloc, cancel := chromedp.NewExecAllocator(context.Background(), append(chromedp.DefaultExecAllocatorOptions[:],
		chromedp.ExecPath(chromium), chromedp.NoSandbox, chromedp.Flag("disable-gpu", true), chromedp.Flag("disable-dev-shm-usage", true),
		chromedp.Env("TMPDIR="+t.TempDir()))...)
	defer cancel()
	browser, cancel := chromedp.NewContext(alloc)
	defer cancel()
	if err := chromedp.Do(browser); err != nil {
		t.Fatalf("start %s: %v", chromium, err)
	}
	tab := newTab(t, browser)
	if err := chromedp.Do(tab.ctx, chromedp.Navigate("http://"+addr+"/")); err != nil {
		t.Fatalf("load the console: %v", err)
	}
	poll := func(what string, cond func() bool) {
		t.Helper()
		waitFor(t, time.Minute, what, cond)
	}
	status := func() string { return eval[string](tab, `document.getElementById("status").textContent`) }
	poll("the live view of the table", func() bool { return status() == "live: public."+table })

	exec := func(sql string) {
		t.Helper()
		if _, err := conn.Exec(ctx, sql); err != nil {
			t.Fatal(err)
		}
	}
	exec(`INSERT INTO "` + table + `" VALUES (1, 'c1', 'p1', '<img src=x onerror=pwned=2>')`)
	// A key change: under the default replica identity the old row holds
	// the key alone.
	exec(`UPDATE "` + table + `" SET id = 2 WHERE id = 1`)
	poll("the update in the live view", func() bool {
		return eval[bool](tab, `[...document.querySelectorAll("#rows tr")].some((tr) => tr.cells[1].textContent === "update")`)
	})
	if got := eval[[]string](tab, `[...document.querySelectorAll("#rows tr")].filter((tr) => tr.cells[1].textContent === "update")
		.flatMap((tr) => [...tr.querySelectorAll(".c.chg b")].map((b) => b.textContent))`); strings.Join(got, ",") != "id" {
		t.Errorf("the key change highlights columns %q as changed, want the key alone", got)
	}

	// Current rows: an update of one column leaves the others as they are.
	eval[chromedp.Void](tab, `document.getElementById("current-mode").checked = true; document.getElementById("form").requestSubmit()`)
	poll("the current rows", func() bool { return strings.HasPrefix(status(), "current rows: ") })
	exec(`UPDATE "` + table + `" SET "constructor" = 'c2' WHERE id = 2`)
	cells := func() map[string]string {
		// Pairs, not an object: a "__proto__" member would be lost.
		pairs := eval[[][2]string](tab, `(() => {
			const t = document.getElementById("current"), tr = t.tBodies[0].rows[0];
			return tr ? [...t.tHead.rows[0].cells].map((c, i) => [c.textContent, tr.cells[i] ? tr.cells[i].textContent : "(no cell)"]) : [];
		})()`)
		out := map[string]string{}
		for _, p := range pairs {
			out[p[0]] = p[1]
		}
		return out
	}
	poll("the updated row in the current rows", func() bool { return cells()["constructor"] == "c2" })
	if got := cells(); got["__proto__"] != "p1" || got["id"] != "2" || got["<b>note</b>"] != "<img src=x onerror=pwned=2>" {
		t.Errorf("the current row after an update reads %q, want id 2, __proto__ p1 and the note as written", got)
	}

	if n := eval[int](tab, `document.querySelectorAll("img, b b, script:not(:first-of-type)").length`); n != 0 {
		t.Errorf("the console made %d elements of names or values", n)
	}
	if eval[bool](tab, `window.pwned !== undefined`) {
		t.Error("a value's markup ran in the console")
	}
	if p := tab.problems(); len(p) > 0 {
		t.Errorf("console errors or CSP violations:\n%s", strings.Join(p, "\n"))
	}
}
