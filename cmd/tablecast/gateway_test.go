package main

import (
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/nats-io/nats-server/v2/server"

	"github.com/tablecast/tablecast/internal/testcert"
)

// startProcess starts the binary with env and stops it with SIGTERM when
// the test ends, checking that it exits cleanly.
func startProcess(t *testing.T, env []string, args ...string) *exec.Cmd {
	t.Helper()
	cmd := exec.Command(binary(t), args...)
	cmd.Env = env
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		done := make(chan error, 1)
		go func() { done <- cmd.Wait() }()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("tablecast %s did not exit cleanly on SIGTERM: %v", args[0], err)
			}
		case <-time.After(20 * time.Second):
			_ = cmd.Process.Kill()
			t.Errorf("tablecast %s did not stop within 20s of SIGTERM", args[0])
		}
	})
	return cmd
}

type wsFrame struct {
	Type  string          `json:"type"`
	ID    string          `json:"id"`
	Seq   uint64          `json:"seq"`
	Code  string          `json:"code"`
	Event json.RawMessage `json:"event"`
}

func wsDial(t *testing.T, url string) *websocket.Conn {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	ws, _, err := websocket.Dial(ctx, url, nil)
	if err != nil {
		t.Fatalf("dial %s: %v", url, err)
	}
	t.Cleanup(func() { _ = ws.CloseNow() })
	return ws
}

func wsRead(t *testing.T, ws *websocket.Conn) wsFrame {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	_, b, err := ws.Read(ctx)
	if err != nil {
		t.Fatalf("read: %v", err)
	}
	var f wsFrame
	if err := json.Unmarshal(b, &f); err != nil {
		t.Fatalf("frame %s: %v", b, err)
	}
	return f
}

func wsSend(t *testing.T, ws *websocket.Conn, msg string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := ws.Write(ctx, websocket.MessageText, []byte(msg)); err != nil {
		t.Fatal(err)
	}
}

// TestGatewayEndToEnd runs the whole product as a user would: `tablecast
// run` (reader, gateway, embedded NATS) and a second gateway alone
// (`tablecast gateway`) on the same NATS. A client that writes to
// PostgreSQL right after `subscribed` always gets its own change, on both
// gateways, as does a URL subscription; the page and /readyz are served.
func TestGatewayEndToEnd(t *testing.T) {
	c := pgtestRequire(t)
	_, url := c.CreateDatabase(t)
	conn := connect(t, url)
	if _, err := conn.Exec(context.Background(), `CREATE TABLE items (id int PRIMARY KEY, label text, qty int)`); err != nil {
		t.Fatal(err)
	}
	slot := fmt.Sprintf("tc_gw_%d", os.Getpid())
	dropSlotAtCleanup(t, url, slot)
	httpAddr, natsAddr, gwAddr := freeAddr(t), freeAddr(t), freeAddr(t)
	env := append(baseEnv(), "TABLECAST_DATABASE_URL="+url, "TABLECAST_SLOT="+slot, "TABLECAST_PUBLICATION=tc_gw",
		"TABLECAST_HTTP_ADDR="+httpAddr, "TABLECAST_NATS_LISTEN="+natsAddr, "TABLECAST_DATA_DIR="+t.TempDir())
	startProcess(t, env, "run")
	waitFor(t, time.Minute, "/readyz of tablecast run", func() bool {
		code, _, err := httpGet("http://" + httpAddr + "/readyz")
		return err == nil && code == 200
	})
	startProcess(t, append(baseEnv(), "TABLECAST_NATS_URL=nats://"+natsAddr, "TABLECAST_HTTP_ADDR="+gwAddr), "gateway")
	waitFor(t, time.Minute, "/readyz of tablecast gateway", func() bool {
		code, _, err := httpGet("http://" + gwAddr + "/readyz")
		return err == nil && code == 200
	})

	code, body, err := httpGet("http://" + httpAddr + "/")
	if err != nil || code != 200 || !strings.Contains(body, "subscribe") {
		t.Fatalf("GET /: %d %v", code, err)
	}

	urlSub := wsDial(t, "ws://"+gwAddr+"/ws/tables/public.items?select=id,qty&qty=gte.10")
	if f := wsRead(t, urlSub); f.Type != "subscribed" || f.ID != "url" {
		t.Fatalf("URL subscription answered %+v", f)
	}
	for i, addr := range []string{httpAddr, gwAddr, httpAddr, gwAddr} {
		ws := wsDial(t, "ws://"+addr+"/ws")
		wsSend(t, ws, `{"type":"subscribe","id":"mine","table":"public.items"}`)
		sub := wsRead(t, ws)
		if sub.Type != "subscribed" {
			t.Fatalf("subscribe answered %+v", sub)
		}
		// The client's own write, right after subscribed.
		if _, err := conn.Exec(context.Background(), `INSERT INTO items VALUES ($1, 'mine', $2)`, i, i*10); err != nil {
			t.Fatal(err)
		}
		// Every event after subscribed.seq is sent, the client's own
		// write among them; an earlier row this gateway had not yet seen
		// when the subscription attached may come first (a later seq than
		// subscribed's), never one at or before it.
		for {
			f := wsRead(t, ws)
			if f.Type != "event" || f.Seq <= sub.Seq {
				t.Fatalf("after subscribed seq %d got %+v", sub.Seq, f)
			}
			var ev struct {
				Op   string         `json:"op"`
				Data map[string]any `json:"data"`
			}
			_ = json.Unmarshal(f.Event, &ev)
			if ev.Op != "create" || ev.Data["label"] != "mine" {
				t.Fatalf("event %s", f.Event)
			}
			if ev.Data["id"] == float64(i) {
				break
			}
			if id, _ := ev.Data["id"].(float64); id >= float64(i) {
				t.Fatalf("event %s before the client's own row %d", f.Event, i)
			}
		}
	}
	// The URL subscription saw qty 10, 20, 30 (not 0), projected.
	for _, want := range []float64{1, 2, 3} {
		f := wsRead(t, urlSub)
		var ev struct {
			Data map[string]any `json:"data"`
		}
		_ = json.Unmarshal(f.Event, &ev)
		if f.Type != "event" || ev.Data["id"] != want || len(ev.Data) != 2 {
			t.Fatalf("URL subscription got %+v %s, want row %v projected to id, qty", f, f.Event, want)
		}
	}
	_, metrics, _ := httpGet("http://" + httpAddr + "/metrics")
	for _, m := range []string{"tablecast_gateway_connections", "tablecast_gateway_frames_sent_total", "tablecast_gateway_fanout_seconds", "tablecast_gateway_event_age_seconds", "tablecast_cdc_events_published_total"} {
		if !strings.Contains(metrics, m) {
			t.Errorf("/metrics lacks %s", m)
		}
	}
}

// hs256 signs claims with secret, a JWT by hand (the binary's own library
// verifies it).
func hs256(secret string, claims map[string]any) string {
	enc := base64.RawURLEncoding.EncodeToString
	payload, _ := json.Marshal(claims)
	signing := enc([]byte(`{"alg":"HS256","typ":"JWT"}`)) + "." + enc(payload)
	mac := hmac.New(sha256.New, []byte(secret))
	mac.Write([]byte(signing))
	return signing + "." + enc(mac.Sum(nil))
}

// TestGatewayTLSAndAuth runs `tablecast gateway` with TLS and a JWT secret:
// https and wss work with the certificate, a client without a token is
// closed with 4001, one with a token subscribes. Requests are answered for
// the certificate's names and TABLECAST_ALLOWED_HOSTS, and 421 for others.
func TestGatewayTLSAndAuth(t *testing.T) {
	certFile, keyFile, pool := selfSigned(t)
	secret := "a-secret-of-at-least-32-bytes-for-hs256"
	addr, natsAddr := freeAddr(t), freeAddr(t)
	startProcess(t, append(baseEnv(), "TABLECAST_HTTP_ADDR="+addr, "TABLECAST_NATS_LISTEN="+natsAddr, "TABLECAST_DATA_DIR="+t.TempDir(),
		"TABLECAST_TLS_CERT="+certFile, "TABLECAST_TLS_KEY="+keyFile, "TABLECAST_JWT_SECRET="+secret, "TABLECAST_ALLOWED_HOSTS=app.example"), "gateway")
	client := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}}
	waitFor(t, time.Minute, "https /readyz", func() bool {
		resp, err := client.Get("https://" + addr + "/readyz")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == 200
	})
	_, port, _ := net.SplitHostPort(addr)
	for host, want := range map[string]int{"tablecast.test": 200, "app.example": 200, "127.0.0.1": 200, "evil.example": 421} {
		req, _ := http.NewRequest(http.MethodGet, "https://"+addr+"/healthz", nil)
		req.Host = host + ":" + port
		resp, err := client.Do(req)
		if err != nil {
			t.Fatalf("GET /healthz with Host %s: %v", host, err)
		}
		resp.Body.Close()
		if resp.StatusCode != want {
			t.Errorf("GET /healthz with Host %s answered %s, want %d", host, resp.Status, want)
		}
	}
	dial := func(path string) *websocket.Conn {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		ws, _, err := websocket.Dial(ctx, "wss://"+addr+path, &websocket.DialOptions{HTTPClient: client})
		if err != nil {
			t.Fatalf("dial %s: %v", path, err)
		}
		t.Cleanup(func() { _ = ws.CloseNow() })
		return ws
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_, _, err := dial("/ws").Read(ctx)
	if websocket.CloseStatus(err) != 4001 {
		t.Fatalf("without a token: %v, want close 4001", err)
	}
	tok := hs256(secret, map[string]any{"sub": "svc", "exp": time.Now().Add(time.Hour).Unix(),
		"tablecast": map[string]any{"topics": map[string]any{"create": []string{"*"}, "subscribe": []string{"*"}}}})
	ws := dial("/ws?token=" + tok)
	wsSend(t, ws, `{"type":"create-topic","topic":"tls"}`)
	wsSend(t, ws, `{"type":"subscribe","id":"s","topic":"tls"}`)
	if f := wsRead(t, ws); f.Type != "topics" {
		t.Fatalf("create-topic answered %+v", f)
	}
	if f := wsRead(t, ws); f.Type != "subscribed" {
		t.Fatalf("subscribe answered %+v", f)
	}
}

// TestGatewaySIGHUP runs `tablecast gateway` with an API keys file and
// anonymous grants from a file: a client without credentials gets only the
// anonymous grants; SIGHUP reloads the keys file even when the change
// cannot be seen by polling it (same size, same modification time), closes
// the connection of the key it no longer holds with 4001 "credentials
// revoked", and leaves the process and its other clients running.
func TestGatewaySIGHUP(t *testing.T) {
	dir := t.TempDir()
	key := "tck_sighup-test-key-0123456789"
	keysFile := filepath.Join(dir, "keys.json")
	keys := func(hash string) []byte {
		return []byte(`[{"name":"publisher","hash":"` + hash + `","claims":{"tablecast":{"topics":{"create":["*"],"publish":["*"]}}}}]`)
	}
	sum := sha256.Sum256([]byte(key))
	if err := os.WriteFile(keysFile, keys("sha256:"+fmt.Sprintf("%x", sum)), 0o600); err != nil {
		t.Fatal(err)
	}
	grantsFile := filepath.Join(dir, "public.json")
	if err := os.WriteFile(grantsFile, []byte(`{"topics":{"subscribe":["prices"]}}`), 0o600); err != nil {
		t.Fatal(err)
	}
	addr, natsAddr := freeAddr(t), freeAddr(t)
	cmd := startProcess(t, append(baseEnv(), "TABLECAST_HTTP_ADDR="+addr, "TABLECAST_NATS_LISTEN="+natsAddr, "TABLECAST_DATA_DIR="+t.TempDir(),
		"TABLECAST_API_KEYS_FILE="+keysFile, "TABLECAST_ANONYMOUS_GRANTS=@"+grantsFile), "gateway")
	ready := func() bool {
		code, _, err := httpGet("http://" + addr + "/readyz")
		return err == nil && code == 200
	}
	waitFor(t, time.Minute, "/readyz", ready)

	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	svc, _, err := websocket.Dial(ctx, "ws://"+addr+"/ws", &websocket.DialOptions{HTTPHeader: http.Header{"Authorization": {"Bearer " + key}}})
	if err != nil {
		t.Fatal(err)
	}
	defer svc.CloseNow()
	wsSend(t, svc, `{"type":"create-topic","topic":"prices"}`)
	if f := wsRead(t, svc); f.Type != "topics" {
		t.Fatalf("create-topic answered %+v", f)
	}
	anon := wsDial(t, "ws://"+addr+"/ws")
	wsSend(t, anon, `{"type":"create-topic","topic":"other"}`)
	if f := wsRead(t, anon); f.Type != "error" || f.Code != "not_allowed" {
		t.Fatalf("anonymous create-topic answered %+v", f)
	}
	wsSend(t, anon, `{"type":"subscribe","id":"p","topic":"prices"}`)
	if f := wsRead(t, anon); f.Type != "subscribed" {
		t.Fatalf("anonymous subscribe answered %+v", f)
	}
	wsSend(t, svc, `{"type":"publish","topic":"prices","data":{"eur":1}}`)
	if f := wsRead(t, anon); f.Type != "message" {
		t.Fatalf("anonymous subscriber got %+v", f)
	}

	// Another key in its place: same size, same modification time, same
	// file. Polling cannot see it; SIGHUP reads it.
	fi, err := os.Stat(keysFile)
	if err != nil {
		t.Fatal(err)
	}
	other := sha256.Sum256([]byte(key + "-rotated"))
	if err := os.WriteFile(keysFile, keys("sha256:"+fmt.Sprintf("%x", other)), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Chtimes(keysFile, fi.ModTime(), fi.ModTime()); err != nil {
		t.Fatal(err)
	}
	if err := cmd.Process.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	_, _, err = svc.Read(ctx)
	var ce websocket.CloseError
	if !errors.As(err, &ce) || ce.Code != 4001 || ce.Reason != "credentials revoked" {
		t.Fatalf("the revoked key's connection ended with %v, want 4001 credentials revoked", err)
	}
	if !ready() {
		t.Fatal("the gateway is not ready after SIGHUP")
	}
	wsSend(t, anon, `{"type":"ping"}`)
	if f := wsRead(t, anon); f.Type != "pong" {
		t.Fatalf("anonymous client after SIGHUP: %+v", f)
	}
}

// selfSigned is a certificate for 127.0.0.1 and tablecast.test.
func selfSigned(t *testing.T) (certFile, keyFile string, pool *x509.CertPool) {
	c := testcert.New(t, "127.0.0.1", "tablecast.test")
	return c.CertFile, c.KeyFile, c.Pool
}

// TestRunReaderConnectionOwnsItself: `tablecast run` gives the reader a NATS
// connection of its own, so that the gateway's deliveries never pass
// through it. A client takes 300 events over the gateway: the server sends
// them on the other connection ("tablecast-consumers"), while the reader's
// ("tablecast") receives only its acknowledgements, far fewer than the
// events it published on it.
func TestRunReaderConnectionOwnsItself(t *testing.T) {
	c := pgtestRequire(t)
	_, url := c.CreateDatabase(t)
	conn := connect(t, url)
	if _, err := conn.Exec(context.Background(), `CREATE TABLE items (id int PRIMARY KEY, label text)`); err != nil {
		t.Fatal(err)
	}
	slot := fmt.Sprintf("tc_conns_%d", os.Getpid())
	dropSlotAtCleanup(t, url, slot)
	n := startNATS(t)
	httpAddr := freeAddr(t)
	startProcess(t, append(baseEnv(), "TABLECAST_DATABASE_URL="+url, "TABLECAST_SLOT="+slot, "TABLECAST_PUBLICATION=tc_conns",
		"TABLECAST_NATS_URL="+n.URL(), "TABLECAST_HTTP_ADDR="+httpAddr), "run")
	waitFor(t, time.Minute, "/readyz of tablecast run", func() bool {
		code, _, err := httpGet("http://" + httpAddr + "/readyz")
		return err == nil && code == 200
	})
	ws := wsDial(t, "ws://"+httpAddr+"/ws")
	wsSend(t, ws, `{"type":"subscribe","id":"all","table":"public.items"}`)
	if f := wsRead(t, ws); f.Type != "subscribed" {
		t.Fatalf("subscribe answered %+v", f)
	}

	counts := func() (reader, consumers *server.ConnInfo) {
		for _, ci := range n.Conns(t) {
			switch ci.Name {
			case "tablecast":
				reader = ci
			case "tablecast-consumers":
				consumers = ci
			}
		}
		if reader == nil || consumers == nil {
			t.Fatalf("NATS connections of tablecast run: reader %v, consumers %v; want one of each", reader != nil, consumers != nil)
		}
		return reader, consumers
	}
	reader0, consumers0 := counts()
	const rows = 300
	if _, err := conn.Exec(context.Background(), `INSERT INTO items SELECT g, 'row ' || g FROM generate_series(1, $1) g`, rows); err != nil {
		t.Fatal(err)
	}
	for got := 0; got < rows; {
		if f := wsRead(t, ws); f.Type == "event" {
			got++
		}
	}
	reader1, consumers1 := counts()
	published := reader1.InMsgs - reader0.InMsgs
	toReader := reader1.OutMsgs - reader0.OutMsgs
	toConsumers := consumers1.OutMsgs - consumers0.OutMsgs
	t.Logf("reader's connection: %d messages in, %d out; consumers' connection: %d out", published, toReader, toConsumers)
	if published < rows {
		t.Errorf("the reader's connection published %d messages for %d rows", published, rows)
	}
	if toConsumers < rows {
		t.Errorf("the consumers' connection was sent %d messages while a client took %d events", toConsumers, rows)
	}
	if toReader >= rows/4 {
		t.Errorf("the reader's connection was sent %d messages for %d events: deliveries pass through it", toReader, rows)
	}
}
