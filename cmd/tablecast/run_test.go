package main

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tablecast/tablecast/stream"
)

// handedOut are the addresses freeAddr returned in this test binary.
var handedOut sync.Map

// freeAddr returns a loopback address no one listens on now, for a process
// to listen on. The port is free only until someone binds it, and the
// kernel may offer it again meanwhile: so freeAddr never returns an address
// twice in one test binary, or two tests running in parallel could be given
// the same one, and one's process would answer the other's requests.
//
// The port is below the kernel's range of ephemeral ports where it can be:
// a test that stops a process and starts another on the same address needs
// it free again, and a port in that range may meanwhile become the local
// port of any connection on the machine (another package's tests make
// thousands), which made such a restart fail with "address already in use".
func freeAddr(t testing.TB) string {
	t.Helper()
	low, high := belowEphemeral()
	for tries := 0; ; tries++ {
		port := 0
		if high > low && tries < 1000 {
			port = low + rand.IntN(high-low)
		}
		ln, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(port)))
		if err != nil {
			if port != 0 {
				continue // taken: try another
			}
			t.Fatal(err)
		}
		addr := ln.Addr().String()
		ln.Close()
		if _, taken := handedOut.LoadOrStore(addr, true); !taken {
			return addr
		}
	}
}

// belowEphemeral is the range of ports freeAddr picks from: the 10,000
// below the kernel's ephemeral ports (ip_local_port_range), or none when
// that cannot be read (freeAddr then asks the kernel for any).
func belowEphemeral() (low, high int) {
	b, err := os.ReadFile("/proc/sys/net/ipv4/ip_local_port_range")
	if err != nil {
		return 0, 0
	}
	f := strings.Fields(string(b))
	if len(f) < 1 {
		return 0, 0
	}
	first, err := strconv.Atoi(f[0])
	if err != nil || first < 11024 {
		return 0, 0
	}
	return first - 10000, first
}

func httpGet(url string) (int, string, error) {
	resp, err := http.Get(url)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b), err
}

// TestRunEndToEnd runs `tablecast run` as a user would, on its embedded
// NATS: /healthz says healthy, changes reach `tablecast tail`, and /metrics
// counts them.
func TestRunEndToEnd(t *testing.T) {
	c := pgtestRequire(t)
	_, url := c.CreateDatabase(t)
	conn := connect(t, url)
	if _, err := conn.Exec(context.Background(), `CREATE TABLE items (id int PRIMARY KEY, label text)`); err != nil {
		t.Fatal(err)
	}
	slot := fmt.Sprintf("tc_run_%d", os.Getpid())
	dropSlotAtCleanup(t, url, slot)
	httpAddr, natsAddr := freeAddr(t), freeAddr(t)
	env := append(baseEnv(), "TABLECAST_DATABASE_URL="+url, "TABLECAST_SLOT="+slot, "TABLECAST_PUBLICATION=tc_run",
		"TABLECAST_HTTP_ADDR="+httpAddr, "TABLECAST_NATS_LISTEN="+natsAddr, "TABLECAST_DATA_DIR="+t.TempDir())

	startProcess(t, env, "run")

	waitFor(t, time.Minute, "/healthz to report streaming", func() bool {
		code, body, err := httpGet("http://" + httpAddr + "/healthz")
		return err == nil && code == 200 && strings.Contains(body, `"streaming":true`)
	})

	// tail, started before the changes, sees them as they come; --all so
	// that it cannot miss them while its consumer attaches.
	tail := exec.Command(binary(t), "tail", "--all", "-n", "2", "public.items")
	tail.Env = env
	stdout, err := tail.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	tail.Stderr = os.Stderr
	if err := tail.Start(); err != nil {
		t.Fatal(err)
	}
	if _, err := conn.Exec(context.Background(), `INSERT INTO items VALUES (1, 'one'), (2, 'two')`); err != nil {
		t.Fatal(err)
	}
	lines := make(chan string, 4)
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			lines <- sc.Text()
		}
		close(lines)
	}()
	var got []map[string]any
	timeout := time.After(30 * time.Second)
	for len(got) < 2 {
		select {
		case l, ok := <-lines:
			if !ok {
				t.Fatalf("tail ended after %d events", len(got))
			}
			var e map[string]any
			if err := json.Unmarshal([]byte(l), &e); err != nil {
				t.Fatalf("tail printed %q, not a JSON event: %v", l, err)
			}
			got = append(got, e)
		case <-timeout:
			t.Fatalf("tail printed %d events in 30s, want 2", len(got))
		}
	}
	if err := tail.Wait(); err != nil {
		t.Fatalf("tail -n 2 did not exit cleanly: %v", err)
	}
	for i, e := range got {
		if e["op"] != "create" || e["table"] != "items" || e["data"].(map[string]any)["id"] != float64(i+1) {
			t.Errorf("tail event %d: %v", i, e)
		}
	}

	created := regexp.MustCompile(`(?m)^tablecast_cdc_events_published_total\{op="create"\} (\d+)$`)
	waitFor(t, 20*time.Second, "/metrics to count 2 published creates", func() bool {
		_, body, err := httpGet("http://" + httpAddr + "/metrics")
		m := created.FindStringSubmatch(body)
		return err == nil && m != nil && m[1] == "2"
	})
	_, body, _ := httpGet("http://" + httpAddr + "/metrics")
	for _, name := range []string{"tablecast_cdc_publish_latency_seconds_bucket", "tablecast_cdc_acked_lsn", "tablecast_cdc_replication_lag_bytes", "tablecast_cdc_streaming 1"} {
		if !strings.Contains(body, name) {
			t.Errorf("/metrics lacks %s", name)
		}
	}
}

// TestTailRejectsBadArguments: usage errors exit 2 with the usage.
func TestTailRejectsBadArguments(t *testing.T) {
	for _, args := range [][]string{{"tail", "nodot"}, {"tail", "a.b", "c.d"}, {"tail", "-n", "x"}, {"run", "extra"}} {
		code, _, stderr := runBinary(t, time.Minute, nil, args...)
		if code != 2 || !strings.HasPrefix(lastLine(stderr), "tablecast: ") {
			t.Errorf("tablecast %v: exit %d, stderr %q; want 2 and a reason", args, code, stderr)
		}
	}
}

// TestTailUnknownTable: tail of a table no reader streams says so and
// exits, naming the tables that are streamed, instead of waiting forever.
func TestTailUnknownTable(t *testing.T) {
	n := startNATS(t)
	env := []string{"TABLECAST_NATS_URL=" + n.URL()}

	code, _, stderr := runBinary(t, time.Minute, env, "tail", "public.nope")
	if last := lastLine(stderr); code != 1 || !strings.Contains(last, "table public.nope is not streamed") || !strings.Contains(last, "schema registry does not exist") {
		t.Fatalf("without a registry: exit %d, last line %q; want 1 and the reason", code, last)
	}

	ctx := context.Background()
	reg, err := stream.OpenRegistry(ctx, n.JS, "", 1)
	if err != nil {
		t.Fatal(err)
	}
	for _, key := range []string{stream.SchemaKey("shop", "public", "orders"), stream.SchemaKey("shop", "My Schema", "ordérs.v2")} {
		if err := reg.Put(ctx, key, []byte(`{}`), 0); err != nil {
			t.Fatal(err)
		}
	}
	code, _, stderr = runBinary(t, time.Minute, env, "tail", "public.nope")
	last := lastLine(stderr)
	if code != 1 || !strings.Contains(last, "table public.nope is not streamed") || !strings.Contains(last, `streamed tables: My Schema."ordérs.v2", public.orders`) {
		t.Fatalf("exit %d, last line %q; want 1, the reason and the streamed tables", code, last)
	}

	// A streamed table is followed: -n 1 returns once its event arrives.
	if _, err := stream.EnsureStream(ctx, n.JS, stream.StreamConfig{}); err != nil {
		t.Fatal(err)
	}
	done := make(chan string, 1)
	go func() {
		code, stdout, stderr := runBinary(t, time.Minute, env, "tail", "-n", "1", `"My Schema"."ordérs.v2"`)
		done <- fmt.Sprintf("%d|%s|%s", code, stdout, stderr)
	}()
	subject := stream.ChangeSubject("tablecast", "shop", "My Schema", "ordérs.v2", "create")
	waitFor(t, 30*time.Second, "tail to print the event", func() bool {
		if _, err := n.JS.Publish(ctx, subject, []byte(`{"op":"create"}`)); err != nil {
			t.Fatal(err)
		}
		select {
		case out := <-done:
			if !strings.HasPrefix(out, `0|{"op":"create"}`) {
				t.Fatalf("tail of a streamed table: %s", out)
			}
			return true
		case <-time.After(200 * time.Millisecond):
			return false
		}
	})
}
