package webhook

import (
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/tablecast/tablecast/internal/endpoint"
)

// TestSignaturesVerifiedByStandardWebhooks checks every request's
// signature with the standardwebhooks npm package, an implementation that
// is not ours, for single events and batches; a request whose body was
// changed must fail it. Without node and npm the test is skipped, but
// under CI=true, where it fails.
func TestSignaturesVerifiedByStandardWebhooks(t *testing.T) {
	t.Parallel()
	node, npm := tool(t, "node"), tool(t, "npm")
	dir := t.TempDir()
	for _, f := range []string{"package.json", "package-lock.json", "verify.js"} {
		b, err := os.ReadFile(filepath.Join("testdata", "standardwebhooks", f))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, f), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	install := exec.CommandContext(ctx, npm, "ci", "--no-audit", "--no-fund", "--ignore-scripts")
	install.Dir = dir
	install.Env = append(os.Environ(), "npm_config_update_notifier=false", "npm_config_cache="+filepath.Join(dir, ".npm"))
	if out, err := install.CombinedOutput(); err != nil {
		t.Fatalf("npm ci: %v\n%s", err, out)
	}

	e := newEnv(t, envOptions{})
	r := newReceiver(t)
	one := e.endpoint("single", r.URL(), nil)
	many := e.endpoint("batched", r.URL(), func(w *endpoint.Webhook) { w.Batch = 5 })
	e.waitConsumer(one)
	e.waitConsumer(many)
	e.exec(`INSERT INTO orders SELECT g, 'open é "quoted"', g FROM generate_series(1, 12) g`)
	e.insertOrders(13, 15)
	r.waitAccepted(t, 30, 2*time.Minute)

	type request struct {
		Secret    string `json:"secret"`
		ID        string `json:"id"`
		Timestamp string `json:"timestamp"`
		Signature string `json:"signature"`
		Body      []byte `json:"body"` // base64 in JSON
		Tampered  bool   `json:"tampered"`
	}
	var list []request
	batches := 0
	for _, d := range r.requests() {
		secret := one.Webhook.Secret
		if strings.HasPrefix(string(d.Body), "[") {
			secret = many.Webhook.Secret
			batches++
		}
		list = append(list, request{secret, d.ID, d.Timestamp, d.Signature, d.Body, false})
	}
	if batches == 0 || len(list) == batches {
		t.Fatalf("%d requests, %d of them batches: want both kinds", len(list), batches)
	}
	bad := list[0]
	bad.Body = append([]byte{}, bad.Body...)
	bad.Body[len(bad.Body)-2] ^= 1
	bad.Tampered = true
	list = append(list, bad)
	b, _ := json.Marshal(list)
	file := filepath.Join(dir, "requests.json")
	if err := os.WriteFile(file, b, 0o644); err != nil {
		t.Fatal(err)
	}
	verify := exec.CommandContext(ctx, node, "verify.js", file)
	verify.Dir = dir
	out, err := verify.CombinedOutput()
	if err != nil {
		t.Fatalf("standardwebhooks: %v\n%s", err, out)
	}
	t.Logf("standardwebhooks: %s", strings.TrimSpace(string(out)))
}

// tool returns the path of a program the test needs: skipped without it,
// but under CI=true, where the test fails.
func tool(t *testing.T, name string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("%s not found, and CI=true: install Node.js 20 or later", name)
		}
		t.Skipf("%s not found", name)
	}
	return p
}
