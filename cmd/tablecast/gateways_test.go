package main

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"syscall"
	"testing"
	"time"
)

// TestGatewaysShareOnlyNATS: three `tablecast gateway` processes beside
// `tablecast run`, sharing nothing but its NATS, behind a "load balancer"
// (a client that dials the next gateway whenever its connection ends).
// The gateway a client is on is killed with SIGKILL under a steady writer;
// the client resumes with `from` on the next and has received every change
// of its table once, in commit order. A custom topic created through one
// gateway is listed by another, and a message published through one
// reaches a subscriber on another.
func TestGatewaysShareOnlyNATS(t *testing.T) {
	c := pgtestRequire(t)
	_, url := c.CreateDatabase(t)
	conn := connect(t, url)
	if _, err := conn.Exec(context.Background(), `CREATE TABLE a (id int PRIMARY KEY, v int); CREATE TABLE b (id int PRIMARY KEY, v text)`); err != nil {
		t.Fatal(err)
	}
	const secret = "a-secret-of-at-least-thirty-two-bytes!!"
	slot := fmt.Sprintf("tc_gws_%d", os.Getpid())
	dropSlotAtCleanup(t, url, slot)
	runAddr, natsAddr := freeAddr(t), freeAddr(t)
	startProcess(t, append(baseEnv(), "TABLECAST_DATABASE_URL="+url, "TABLECAST_SLOT="+slot, "TABLECAST_PUBLICATION=tc_gws",
		"TABLECAST_HTTP_ADDR="+runAddr, "TABLECAST_NATS_LISTEN="+natsAddr, "TABLECAST_DATA_DIR="+t.TempDir(),
		"TABLECAST_JWT_SECRET="+secret, "TABLECAST_LOG_LEVEL=warn"), "run")
	waitFor(t, time.Minute, "/readyz of tablecast run", func() bool {
		code, _, err := httpGet("http://" + runAddr + "/readyz")
		return err == nil && code == 200
	})
	gwEnv := func(addr string) []string {
		return append(baseEnv(), "TABLECAST_NATS_URL=nats://"+natsAddr, "TABLECAST_HTTP_ADDR="+addr,
			"TABLECAST_JWT_SECRET="+secret, "TABLECAST_LOG_LEVEL=warn")
	}
	var addrs []string
	var first *exec.Cmd
	for i := range 3 {
		addr := freeAddr(t)
		if i == 0 {
			first = startKillable(t, gwEnv(addr), "gateway")
		} else {
			startProcess(t, gwEnv(addr), "gateway")
		}
		waitFor(t, time.Minute, "/readyz of gateway "+addr, func() bool {
			code, _, err := httpGet("http://" + addr + "/readyz")
			return err == nil && code == 200
		})
		addrs = append(addrs, addr)
	}
	tok := hs256(secret, map[string]any{"sub": "svc", "exp": time.Now().Add(time.Hour).Unix(),
		"tablecast": map[string]any{"tables": map[string]any{"*": []string{"*"}}, "topics": map[string]any{"create": []string{"*"}, "subscribe": []string{"*"}, "publish": []string{"*"}}}})
	var urls []string
	for _, addr := range addrs {
		urls = append(urls, "ws://"+addr+"/ws?token="+tok)
	}

	client := startResumingClient(t, "public.a", urls...)
	load := startOrderedLoad(t, conn, 2*time.Millisecond)
	waitFor(t, time.Minute, "the client to receive changes", func() bool { return client.count() > 200 })
	if err := first.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	_ = first.Wait()
	at := client.count()
	waitFor(t, time.Minute, "the client to receive changes through another gateway", func() bool { return client.count() > at+200 })
	committed := load.stop(t)
	got := client.expectAll(t, committed["a"], time.Minute, " across gateways")
	if client.resumes() == 0 {
		t.Fatal("the client never resumed: its gateway's death went unnoticed")
	}

	// A custom topic: created through gateway 2, subscribed through
	// gateway 3, published to through gateway 2.
	pub, sub := wsDial(t, urls[1]), wsDial(t, urls[2])
	wsSend(t, pub, `{"type":"create-topic","topic":"news"}`)
	if f := wsRead(t, pub); f.Type != "topics" {
		t.Fatalf("create-topic answered %+v", f)
	}
	waitFor(t, 30*time.Second, "gateway 3 to know the topic", func() bool {
		wsSend(t, sub, `{"type":"subscribe","id":"n","topic":"news"}`)
		f := wsRead(t, sub)
		if f.Type == "error" && f.Code == "unknown_topic" {
			return false
		}
		if f.Type != "subscribed" {
			t.Fatalf("subscribe to the topic through gateway 3 answered %+v", f)
		}
		return true
	})
	wsSend(t, pub, `{"type":"publish","topic":"news","data":{"headline":"hello"}}`)
	for {
		f := wsRead(t, sub)
		if f.Type == "message" {
			break
		}
		if f.Type == "error" {
			t.Fatalf("gateway 3 answered %+v", f)
		}
	}
	t.Logf("%d changes of a received once, in order, across a SIGKILL of the client's gateway (%d resumes)", len(got), client.resumes())
}

// startKillable starts the binary for a test that kills it; it is killed
// at the test's end if it still runs.
func startKillable(t *testing.T, env []string, args ...string) *exec.Cmd {
	t.Helper()
	cmd := exec.Command(binary(t), args...)
	cmd.Env = env
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if cmd.ProcessState == nil {
			_ = cmd.Process.Kill()
			_ = cmd.Wait()
		}
	})
	return cmd
}
