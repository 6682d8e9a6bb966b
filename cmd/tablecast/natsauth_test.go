package main

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/tablecast/tablecast/internal/testcert"
	"github.com/tablecast/tablecast/stream"
)

// TestNATSMisconfiguration: each mistake in the NATS variables ends the
// process with a non-zero code and a one-line reason naming the variables.
func TestNATSMisconfiguration(t *testing.T) {
	seed := filepath.Join(t.TempDir(), "bad.nk")
	if err := os.WriteFile(seed, []byte("not a seed"), 0o600); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name string
		env  []string
		want []string
	}{
		{"open off loopback", []string{"TABLECAST_NATS_LISTEN=0.0.0.0:4222"},
			[]string{"TABLECAST_NATS_LISTEN 0.0.0.0:4222 is not a loopback address and the embedded NATS has no credentials",
				"TABLECAST_NATS_USER", "TABLECAST_NATS_PASSWORD", "TABLECAST_NATS_TOKEN", "TABLECAST_NATS_NKEY"}},
		{"open on all interfaces", []string{"TABLECAST_NATS_LISTEN=:4222"}, []string{"TABLECAST_NATS_LISTEN :4222 is not a loopback address"}},
		{"read-only user alone", []string{"TABLECAST_NATS_LISTEN=0.0.0.0:4222", "TABLECAST_NATS_READ_USER=r", "TABLECAST_NATS_READ_PASSWORD=p"},
			[]string{"TABLECAST_NATS_READ_USER or TABLECAST_NATS_READ_NKEYS turns on authentication", "tablecast then needs credentials of its own"}},
		{"user without password", []string{"TABLECAST_NATS_USER=tc"}, []string{"TABLECAST_NATS_USER and TABLECAST_NATS_PASSWORD go together"}},
		{"two ways to sign in", []string{"TABLECAST_NATS_USER=tc", "TABLECAST_NATS_PASSWORD=p", "TABLECAST_NATS_TOKEN=t"},
			[]string{"TABLECAST_NATS_USER, TABLECAST_NATS_TOKEN: set one way"}},
		{"bad nkey seed", []string{"TABLECAST_NATS_NKEY=" + seed}, []string{"TABLECAST_NATS_NKEY: nkey seed"}},
		{"creds for the embedded NATS", []string{"TABLECAST_NATS_CREDS=" + seed}, []string{"TABLECAST_NATS_CREDS signs in to an external NATS"}},
		{"unbounded stream in the embedded store", []string{"TABLECAST_STREAM_MAX_BYTES=-1"},
			[]string{"TABLECAST_STREAM_MAX_BYTES -1", "TABLECAST_NATS_MAX_STORE"}},
		{"stream larger than the store", []string{"TABLECAST_NATS_MAX_STORE=1073741824", "TABLECAST_STREAM_MAX_BYTES=1073741824"},
			[]string{"TABLECAST_STREAM_MAX_BYTES 1073741824 does not fit in TABLECAST_NATS_MAX_STORE 1073741824"}},
		{"tiny store", []string{"TABLECAST_NATS_MAX_STORE=1000"}, []string{"TABLECAST_NATS_MAX_STORE 1000: must be at least"}},
		{"TLS certificate with an external NATS", []string{"TABLECAST_NATS_URL=nats://127.0.0.1:1", "TABLECAST_NATS_TLS_CERT=" + seed, "TABLECAST_NATS_TLS_KEY=" + seed},
			[]string{"TABLECAST_NATS_TLS_CERT and TABLECAST_NATS_TLS_KEY are the embedded NATS's certificate"}},
		{"read-only user with an external NATS", []string{"TABLECAST_NATS_URL=nats://127.0.0.1:1", "TABLECAST_NATS_READ_USER=r", "TABLECAST_NATS_READ_PASSWORD=p"},
			[]string{"define them on that server"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			env := append([]string{"TABLECAST_HTTP_ADDR=127.0.0.1:0", "TABLECAST_DATA_DIR=" + t.TempDir()}, tt.env...)
			code, _, stderr := runBinary(t, time.Minute, env, "gateway")
			reason := strings.TrimSpace(stderr)
			if code == 0 || strings.Contains(reason, "\n") || !strings.HasPrefix(reason, "tablecast: ") {
				t.Fatalf("exit %d, stderr:\n%s\nwant non-zero and one line", code, stderr)
			}
			for _, w := range tt.want {
				if !strings.Contains(reason, w) {
					t.Errorf("reason %q does not say %q", reason, w)
				}
			}
		})
	}
}

// TestNATSCredentials runs `tablecast run` with its embedded NATS on every
// interface, with a user for tablecast, a read-only user for backend
// services and TLS (a certificate for another name than 127.0.0.1, which
// tablecast's own connections accept because it is the configured one).
// A client without credentials, or without TLS, is refused; `tablecast
// tail` with the same variables reads events; the read-only user reads
// them live and through a durable consumer, and what it publishes into the
// stream is neither stored nor sent to WebSocket clients.
func TestNATSCredentials(t *testing.T) {
	c := pgtestRequire(t)
	db, url := c.CreateDatabase(t)
	conn := connect(t, url)
	if _, err := conn.Exec(context.Background(), `CREATE TABLE items (id int PRIMARY KEY, label text)`); err != nil {
		t.Fatal(err)
	}
	slot := fmt.Sprintf("tc_auth_%d", os.Getpid())
	dropSlotAtCleanup(t, url, slot)
	certFile, keyFile, pool := certFor(t, "nats.example.com")
	httpAddr, natsAddr := freeAddr(t), freeAddr(t)
	_, natsPort, _ := strings.Cut(natsAddr, ":")
	env := append(baseEnv(), "TABLECAST_DATABASE_URL="+url, "TABLECAST_SLOT="+slot, "TABLECAST_PUBLICATION=tc_auth",
		"TABLECAST_HTTP_ADDR="+httpAddr, "TABLECAST_NATS_LISTEN=0.0.0.0:"+natsPort, "TABLECAST_DATA_DIR="+t.TempDir(),
		"TABLECAST_NATS_USER=tablecast", "TABLECAST_NATS_PASSWORD=tablecast-secret",
		"TABLECAST_NATS_READ_USER=backend", "TABLECAST_NATS_READ_PASSWORD=backend-secret",
		"TABLECAST_NATS_TLS_CERT="+certFile, "TABLECAST_NATS_TLS_KEY="+keyFile)
	startProcess(t, env, "run")
	waitFor(t, time.Minute, "/healthz to report streaming", func() bool {
		code, body, err := httpGet("http://" + httpAddr + "/healthz")
		return err == nil && code == 200 && strings.Contains(body, `"streaming":true`)
	})

	natsURL := "tls://127.0.0.1:" + natsPort
	trust := nats.Secure(&tls.Config{RootCAs: pool, ServerName: "nats.example.com", MinVersion: tls.VersionTLS12})
	connectNATS := func(opts ...nats.Option) (*nats.Conn, error) {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		return stream.Connect(ctx, natsURL, "test", slog.New(slog.DiscardHandler), opts...)
	}
	for name, opts := range map[string][]nats.Option{
		"no credentials":  {trust},
		"wrong password":  {trust, nats.UserInfo("backend", "guess")},
		"no TLS":          {nats.UserInfo("backend", "backend-secret")},
		"untrusted certs": {nats.Secure(&tls.Config{MinVersion: tls.VersionTLS12}), nats.UserInfo("backend", "backend-secret")},
	} {
		if nc, err := connectNATS(opts...); err == nil {
			nc.Close()
			t.Errorf("%s: connected", name)
		} else if strings.Contains(err.Error(), "deadline exceeded") {
			t.Errorf("%s: not refused at once: %v", name, err)
		}
	}

	// tail, with tablecast's own variables.
	tail := exec.Command(binary(t), "tail", "--all", "-n", "1", "public.items")
	tail.Env = env
	stdout, err := tail.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	tail.Stderr = os.Stderr
	if err := tail.Start(); err != nil {
		t.Fatal(err)
	}

	// The backend: live and through a durable consumer, before any change.
	backend, err := connectNATS(trust, nats.UserInfo("backend", "backend-secret"))
	if err != nil {
		t.Fatalf("the read-only user: %v", err)
	}
	defer backend.Close()
	live, err := backend.SubscribeSync("tablecast." + db + ".public.items.>")
	if err != nil {
		t.Fatal(err)
	}
	js, _ := jetstream.New(backend)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cons, err := js.CreateOrUpdateConsumer(ctx, "TABLECAST", jetstream.ConsumerConfig{Durable: "billing",
		FilterSubject: "tablecast." + db + ".public.items.>", AckPolicy: jetstream.AckExplicitPolicy})
	if err != nil {
		t.Fatalf("the read-only user creates a consumer: %v", err)
	}
	ws := wsDial(t, "ws://"+httpAddr+"/ws")
	wsSend(t, ws, `{"type":"subscribe","id":"s","table":"public.items"}`)
	if f := wsRead(t, ws); f.Type != "subscribed" {
		t.Fatalf("subscribe answered %+v", f)
	}

	if _, err := conn.Exec(context.Background(), `INSERT INTO items VALUES (1, 'real')`); err != nil {
		t.Fatal(err)
	}
	line, err := bufio.NewReader(stdout).ReadString('\n')
	if err != nil || !strings.Contains(line, `"label":"real"`) {
		t.Fatalf("tail printed %q, %v", line, err)
	}
	if err := tail.Wait(); err != nil {
		t.Fatalf("tail: %v", err)
	}
	if m, err := live.NextMsg(20 * time.Second); err != nil || !strings.Contains(string(m.Data), `"label":"real"`) {
		t.Fatalf("live event for the read-only user: %v", err)
	}
	batch, err := cons.Fetch(1, jetstream.FetchMaxWait(20*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	for m := range batch.Messages() {
		if !strings.Contains(string(m.Data()), `"label":"real"`) {
			t.Fatalf("the consumer read %s", m.Data())
		}
		if err := m.Ack(); err != nil {
			t.Fatal(err)
		}
	}
	if f := wsRead(t, ws); f.Type != "event" || !strings.Contains(string(f.Event), `"real"`) {
		t.Fatalf("WebSocket: %+v", f)
	}

	// The read-only user forges a row change, then a real one follows: the
	// WebSocket client gets the real one next, and the stream holds one
	// event per real row only.
	forged := fmt.Sprintf(`{"id":"00000000FFFFFFFF-0001","op":"create","db":%q,"schema":"public","table":"items","key":{"id":666},"data":{"id":666,"label":"forged"}}`, db)
	_ = backend.Publish("tablecast."+db+".public.items.create", []byte(forged))
	pctx, pcancel := context.WithTimeout(ctx, 2*time.Second)
	_, err = js.Publish(pctx, "tablecast."+db+".public.items.create", []byte(forged))
	pcancel()
	if err == nil {
		t.Fatal("JetStream acknowledged a row change published by the read-only user")
	}
	if _, err := conn.Exec(context.Background(), `INSERT INTO items VALUES (2, 'real again')`); err != nil {
		t.Fatal(err)
	}
	f := wsRead(t, ws)
	var ev struct {
		Data map[string]any `json:"data"`
	}
	_ = json.Unmarshal(f.Event, &ev)
	if f.Type != "event" || ev.Data["id"] != float64(2) {
		t.Fatalf("after the forgery, the WebSocket client got %+v %s, want row 2", f, f.Event)
	}
	info, err := js.Stream(ctx, "TABLECAST")
	if err != nil {
		t.Fatal(err)
	}
	si, err := info.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if si.State.Msgs != 2 {
		t.Fatalf("the stream holds %d events, want the 2 real ones", si.State.Msgs)
	}
}

// TestStreamRetentionDefaults: the stream is bounded by default, in time
// and in size, and its size follows the store so that it always fits.
func TestStreamRetentionDefaults(t *testing.T) {
	for _, kv := range os.Environ() {
		if k, _, _ := strings.Cut(kv, "="); strings.HasPrefix(k, envPrefix+"_") {
			t.Setenv(k, "") // restored after the test
			os.Unsetenv(k)
		}
	}
	c, err := loadConfig()
	if err != nil {
		t.Fatal(err)
	}
	sc := c.streamConfig()
	if sc.MaxAge != 7*24*time.Hour || sc.MaxBytes != 6<<30 || c.NATSMaxStore != 8<<30 {
		t.Fatalf("defaults: max age %s, max bytes %d, store %d; want 168h, 6 GiB, 8 GiB", sc.MaxAge, sc.MaxBytes, c.NATSMaxStore)
	}
	t.Setenv("TABLECAST_NATS_MAX_STORE", "1073741824")
	if c, err = loadConfig(); err != nil || c.streamConfig().MaxBytes != 768<<20 {
		t.Fatalf("with a 1 GiB store: max bytes %d, %v; want 768 MiB", c.streamConfig().MaxBytes, err)
	}
	t.Setenv("TABLECAST_STREAM_MAX_BYTES", "104857600")
	if c, err = loadConfig(); err != nil || c.streamConfig().MaxBytes != 100<<20 {
		t.Fatalf("set by hand: max bytes %d, %v; want 100 MiB", c.streamConfig().MaxBytes, err)
	}
	t.Setenv("TABLECAST_STREAM_MAX_BYTES", "-1")
	t.Setenv("TABLECAST_NATS_URL", "nats://127.0.0.1:4222")
	if c, err = loadConfig(); err != nil || c.streamConfig().MaxBytes != -1 {
		t.Fatalf("unlimited on an external NATS: max bytes %d, %v", c.streamConfig().MaxBytes, err)
	}
}

// certFor is a certificate for name (and not for 127.0.0.1).
func certFor(t *testing.T, name string) (certFile, keyFile string, pool *x509.CertPool) {
	c := testcert.New(t, name)
	return c.CertFile, c.KeyFile, c.Pool
}
