package main

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"
)

// adminSecret signs the admin tests' tokens.
const adminSecret = "the admin command tests' HS256 secret, 32 bytes+"

// TestAdminCommands runs `tablecast run` with authentication and its admin
// API, and `tablecast gateway` beside it on the same NATS with an admin
// API of its own, and drives them with the real binary's endpoints,
// filters and rules commands: every command, a change made through one
// process seen through the other, a rule refused for the table's replica
// identity with the ALTER TABLE that fixes it, a stale revision refused,
// and credentials without the admin grant refused.
func TestAdminCommands(t *testing.T) {
	t.Parallel() // see "Parallel tests" in main_test.go
	c := pgtestRequire(t)
	_, url := c.CreateDatabase(t)
	conn := connect(t, url)
	if _, err := conn.Exec(context.Background(), `CREATE TABLE orders (id int PRIMARY KEY, status text, total numeric)`); err != nil {
		t.Fatal(err)
	}
	slot := fmt.Sprintf("tc_admin_%d", os.Getpid())
	dropSlotAtCleanup(t, url, slot)
	httpAddr, natsAddr, adminAddr, gwAddr, gwAdminAddr := freeAddr(t), freeAddr(t), freeAddr(t), freeAddr(t), freeAddr(t)
	auth := []string{"TABLECAST_JWT_SECRET=" + adminSecret}
	startProcess(t, append(append(baseEnv(), auth...), "TABLECAST_DATABASE_URL="+url, "TABLECAST_SLOT="+slot, "TABLECAST_PUBLICATION=tc_admin",
		"TABLECAST_HTTP_ADDR="+httpAddr, "TABLECAST_NATS_LISTEN="+natsAddr, "TABLECAST_DATA_DIR="+t.TempDir(), "TABLECAST_ADMIN_ADDR="+adminAddr), "run")
	waitFor(t, time.Minute, "/readyz of tablecast run", func() bool {
		code, _, err := httpGet("http://" + httpAddr + "/readyz")
		return err == nil && code == 200
	})
	startProcess(t, append(append(baseEnv(), auth...), "TABLECAST_NATS_URL=nats://"+natsAddr, "TABLECAST_HTTP_ADDR="+gwAddr, "TABLECAST_ADMIN_ADDR="+gwAdminAddr), "gateway")
	waitFor(t, time.Minute, "/readyz of tablecast gateway", func() bool {
		code, _, err := httpGet("http://" + gwAddr + "/readyz")
		return err == nil && code == 200
	})

	writer := hs256(adminSecret, map[string]any{"sub": "ops", "exp": time.Now().Add(time.Hour).Unix(), "tablecast": map[string]any{"admin": []any{"write"}}})
	reader := hs256(adminSecret, map[string]any{"sub": "dash", "exp": time.Now().Add(time.Hour).Unix(), "tablecast": map[string]any{"admin": []any{"read"}}})
	app := hs256(adminSecret, map[string]any{"sub": "app", "exp": time.Now().Add(time.Hour).Unix(), "tablecast": map[string]any{"tables": map[string]any{"*": []any{"*"}}}})
	// cli runs a command against the run process's admin API (the
	// address from TABLECAST_ADMIN_ADDR, as on the same host) with tok.
	cli := func(tok string, args ...string) (int, string, string) {
		t.Helper()
		return runBinary(t, time.Minute, []string{"TABLECAST_ADMIN_ADDR=" + adminAddr, "TABLECAST_ADMIN_TOKEN=" + tok}, args...)
	}
	ok := func(out any, args ...string) {
		t.Helper()
		code, stdout, stderr := cli(writer, args...)
		if code != 0 {
			t.Fatalf("tablecast %s: exit %d\n%s%s", strings.Join(args, " "), code, stdout, stderr)
		}
		if out != nil {
			if err := json.Unmarshal([]byte(stdout), out); err != nil {
				t.Fatalf("tablecast %s printed %q: %v", strings.Join(args, " "), stdout, err)
			}
		}
	}
	refused := func(tok, want string, args ...string) {
		t.Helper()
		code, stdout, stderr := cli(tok, args...)
		if code != 1 || !strings.Contains(stderr, want) {
			t.Fatalf("tablecast %s: exit %d, stderr %q (stdout %q); want exit 1 saying %q", strings.Join(args, " "), code, stderr, stdout, want)
		}
	}

	var f struct {
		Name     string `json:"name"`
		Revision uint64 `json:"revision"`
	}
	ok(&f, "filters", "create", `{"name": "paid", "tables": ["public.orders"], "where": {"status": {"eq": "paid"}}, "select": ["id", "total"]}`)
	if f.Name != "paid" || f.Revision == 0 {
		t.Fatalf("filters create: %+v", f)
	}
	// Checked against the streamed table: a column it does not have.
	refused(writer, "nope", "filters", "create", `{"name": "bad", "tables": ["public.orders"], "select": ["nope"]}`)

	type ep struct {
		ID       string   `json:"id"`
		Name     string   `json:"name"`
		State    string   `json:"state"`
		Revision uint64   `json:"revision"`
		Filters  []string `json:"filters"`
		Webhook  *struct {
			URL    string `json:"url"`
			Secret string `json:"secret"`
		} `json:"webhook"`
	}
	var hook ep
	ok(&hook, "endpoints", "create", `{"name": "billing", "type": "webhook", "filters": ["paid"], "webhook": {"url": "https://billing.example.com/hook", "timeout": "5s", "start": {"from": {"seq": 1}}}}`)
	if hook.ID == "" || hook.Webhook == nil || !strings.HasPrefix(hook.Webhook.Secret, "whsec_") {
		t.Fatalf("endpoints create: %+v", hook)
	}
	// From standard input.
	var live ep
	{
		cmd := cliCommand(t, []string{"TABLECAST_ADMIN_ADDR=" + adminAddr, "TABLECAST_ADMIN_TOKEN=" + writer}, "endpoints", "create", "-")
		cmd.Stdin = strings.NewReader(`{"name": "live", "type": "websocket"}`)
		out, err := cmd.Output()
		if err != nil || json.Unmarshal(out, &live) != nil || live.ID == "" {
			t.Fatalf("endpoints create -: %v %s", err, out)
		}
	}

	// The gateway process's API sees what the run process's made.
	gwCLI := func(args ...string) string {
		t.Helper()
		code, stdout, stderr := runBinary(t, time.Minute, []string{"TABLECAST_ADMIN_URL=http://" + gwAdminAddr, "TABLECAST_ADMIN_TOKEN=" + reader}, args...)
		if code != 0 {
			t.Fatalf("tablecast %s on the gateway: exit %d %s", strings.Join(args, " "), code, stderr)
		}
		return stdout
	}
	var got ep
	if err := json.Unmarshal([]byte(gwCLI("endpoints", "get", hook.ID)), &got); err != nil || got.Name != "billing" || got.Webhook.URL != "https://billing.example.com/hook" {
		t.Fatalf("endpoints get on the gateway: %+v %v", got, err)
	}
	if strings.HasPrefix(got.Webhook.Secret, "whsec_") && got.Webhook.Secret == hook.Webhook.Secret {
		t.Fatalf("get shows the whole secret")
	}

	var page struct {
		Items []ep `json:"items"`
		Total int  `json:"total"`
	}
	ok(&page, "endpoints", "list", "--type", "webhook", "--order-by", "name")
	if page.Total != 1 || page.Items[0].ID != hook.ID {
		t.Fatalf("endpoints list --type webhook: %+v", page)
	}
	ok(&page, "endpoints", "list", "--order-by=name", "--order", "desc", "--limit", "1")
	if page.Total != 2 || len(page.Items) != 1 || page.Items[0].Name != "live" {
		t.Fatalf("endpoints list --order desc --limit 1: %+v", page)
	}
	refused(writer, "order_by", "endpoints", "list", "--order-by", "size")

	ok(&got, "endpoints", "pause", hook.ID)
	if got.State != "paused" {
		t.Fatalf("pause: %+v", got)
	}
	ok(&got, "endpoints", "resume", hook.ID)
	if got.State != "active" {
		t.Fatalf("resume: %+v", got)
	}
	rev := got.Revision
	ok(&got, "endpoints", "update", hook.ID, `{"webhook": {"timeout": "20s"}}`, "--revision", fmt.Sprint(rev))
	if got.Revision <= rev {
		t.Fatalf("update: %+v", got)
	}
	refused(writer, "409", "endpoints", "update", hook.ID, `{"name": "stale"}`, "--revision", fmt.Sprint(rev))

	ok(nil, "filters", "link", "paid", live.ID)
	var fed struct {
		Items []ep `json:"items"`
	}
	ok(&fed, "filters", "endpoints", "paid")
	if len(fed.Items) != 2 {
		t.Fatalf("filters endpoints paid: %+v", fed)
	}
	var links struct {
		Items []struct {
			Name string `json:"name"`
		} `json:"items"`
	}
	ok(&links, "endpoints", "filters", live.ID)
	if len(links.Items) != 1 || links.Items[0].Name != "paid" {
		t.Fatalf("endpoints filters: %+v", links)
	}
	refused(writer, "linked", "filters", "delete", "paid")

	// Rules: old-row conditions need REPLICA IDENTITY FULL, and the
	// refusal says how to get it.
	refused(writer, `ALTER TABLE "public"."orders" REPLICA IDENTITY FULL`, "rules", "create",
		`{"name": "refund", "table": "public.orders", "old": {"status": {"eq": "paid"}}, "new": {"status": {"eq": "refunded"}}}`)
	var r struct {
		Name       string   `json:"name"`
		Operations []string `json:"operations"`
	}
	ok(&r, "rules", "create", `{"name": "paid-now", "table": "public.orders", "new": {"status": {"eq": "paid"}}}`)
	ok(nil, "rules", "link", "paid-now", hook.ID)
	ok(&got, "endpoints", "get", hook.ID)
	ok(nil, "rules", "unlink", "paid-now", hook.ID)
	ok(&r, "rules", "update", "paid-now", `{"description": "an order is paid"}`)
	ok(nil, "rules", "get", "paid-now")
	ok(nil, "rules", "list")
	ok(nil, "rules", "delete", "paid-now")

	// Credentials: none, without the admin grant, read-only for a write.
	refused("", "401", "endpoints", "list")
	refused(app, "403", "endpoints", "list")
	refused(reader, "403", "endpoints", "pause", hook.ID)

	ok(nil, "filters", "delete", "paid", "--force")
	var del struct {
		Deleted  []string `json:"deleted"`
		NotFound []string `json:"not_found"`
	}
	ok(&del, "endpoints", "delete", hook.ID, live.ID, "nonexistent0")
	if len(del.Deleted) != 2 || len(del.NotFound) != 1 {
		t.Fatalf("endpoints delete (many): %+v", del)
	}
	// --admin-url names the API too (over TABLECAST_ADMIN_ADDR).
	if code, out, stderr := runBinary(t, time.Minute, []string{"TABLECAST_ADMIN_TOKEN=" + reader}, "endpoints", "list", "--admin-url", "http://"+gwAdminAddr); code != 0 || !strings.Contains(out, `"total": 0`) {
		t.Fatalf("the gateway still lists endpoints: exit %d %s %s", code, out, stderr)
	}
	refused(writer, "404", "endpoints", "get", hook.ID)
	if code, _, stderr := cli(writer, "endpoints", "frobnicate"); code != 2 || !strings.Contains(stderr, "frobnicate") {
		t.Fatalf("an unknown command: exit %d %s", code, stderr)
	}
}

// TestAdminAnonymousOnlyOnLoopback: without authentication the admin API
// lets anyone in, so tablecast refuses to serve it off loopback, even
// with TABLECAST_ALLOW_ANONYMOUS (which opens the gateway only).
func TestAdminAnonymousOnlyOnLoopback(t *testing.T) {
	n := startNATS(t)
	code, _, stderr := runBinary(t, time.Minute, []string{"TABLECAST_NATS_URL=" + n.URL(), "TABLECAST_HTTP_ADDR=" + freeAddr(t),
		"TABLECAST_ADMIN_ADDR=0.0.0.0:0", "TABLECAST_ALLOW_ANONYMOUS=true"}, "gateway")
	if code != 1 || !strings.Contains(stderr, "TABLECAST_ADMIN_ADDR 0.0.0.0:0 is not a loopback address and no authentication is configured") {
		t.Fatalf("exit %d, stderr %s", code, stderr)
	}
}

// cliCommand is the binary with env added to a clean environment, to
// run with stdin of the test's choosing.
func cliCommand(t *testing.T, env []string, args ...string) *exec.Cmd {
	t.Helper()
	cmd := exec.Command(binary(t), args...)
	cmd.Env = append(baseEnv(), env...)
	return cmd
}

// TestAdminRefusesRebindingWhenAnonymous: a gateway behind a proxy that
// answers every Host (TABLECAST_ALLOWED_HOSTS=*) with no authentication
// still serves its anonymous admin API on loopback only to its own names:
// a DNS rebinding page's requests (Host and Origin its own name, which the
// browser takes as same-origin) get 421.
func TestAdminRefusesRebindingWhenAnonymous(t *testing.T) {
	t.Parallel() // see "Parallel tests" in main_test.go
	n := startNATS(t)
	adminAddr, httpAddr := freeAddr(t), freeAddr(t)
	startProcess(t, append(baseEnv(), "TABLECAST_NATS_URL="+n.URL(), "TABLECAST_HTTP_ADDR="+httpAddr, "TABLECAST_ADMIN_ADDR="+adminAddr,
		"TABLECAST_ALLOW_ANONYMOUS=true", "TABLECAST_ALLOWED_HOSTS=*"), "gateway")
	// Ready, so that it has started whole when the test stops it.
	waitFor(t, time.Minute, "/readyz of tablecast gateway", func() bool {
		code, _, err := httpGet("http://" + httpAddr + "/readyz")
		return err == nil && code == 200
	})
	get := func(host string) int {
		req, err := http.NewRequest("GET", "http://"+adminAddr+"/v1/endpoints", nil)
		if err != nil {
			t.Fatal(err)
		}
		req.Host = host
		req.Header.Set("Sec-Fetch-Site", "same-origin")
		req.Header.Set("Origin", "http://"+host)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			return 0
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	waitFor(t, time.Minute, "the admin API", func() bool { return get(adminAddr) == 200 })
	_, port, _ := strings.Cut(adminAddr, ":")
	for _, host := range []string{"evil.example:" + port, "evil.example"} {
		if code := get(host); code != http.StatusMisdirectedRequest {
			t.Errorf("Host %s: %d, want 421", host, code)
		}
	}
}
