package webhook

import (
	"context"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tablecast/tablecast/internal/endpoint"
	"github.com/tablecast/tablecast/internal/testcert"
)

// The tests here deliver to receivers over TLS, which offer HTTP/2.

// TestTLSUntrustedCertificate: a receiver whose certificate the system's
// roots do not trust (a self-signed one) gets no event: every attempt
// fails on the handshake, with a reason saying the certificate is not
// trusted, and the endpoint goes on by its retry policy (here: dead
// letters after max_age), not disabled.
func TestTLSUntrustedCertificate(t *testing.T) {
	t.Parallel()
	e := newEnv(t, envOptions{}) // the system's roots
	r := newTLSReceiver(t, testcert.New(t, "127.0.0.1"))
	ep := e.endpoint("untrusted", r.URL(), func(w *endpoint.Webhook) {
		// max_age runs from the first attempt, whose handshake took 2.6 s
		// once in CI: 5 s leaves room for several attempts.
		w.Retry = endpoint.Retry{Initial: endpoint.Duration(100 * time.Millisecond), Max: endpoint.Duration(200 * time.Millisecond), MaxAge: endpoint.Duration(5 * time.Second)}
	})
	e.waitConsumer(ep)
	e.insertOrders(1, 2)
	ctx := context.Background()
	var dls []DeadLetter
	waitFor(t, time.Minute, "both events dead-lettered", func() bool {
		var err error
		dls, err = e.mgr.DeadLetters().List(ctx, ep.ID, 0, 10)
		return err == nil && len(dls) >= 2
	})
	attempts := 0
	for _, dl := range dls {
		attempts += dl.Attempts
		if dl.Attempts < 2 || !strings.Contains(dl.Reason, "TLS certificate is not trusted") || !strings.Contains(dl.Reason, "unknown authority") {
			t.Errorf("dead letter of %s after %d attempts: reason %q; want several attempts, and the certificate said untrusted", dl.EventID, dl.Attempts, dl.Reason)
		}
	}
	if n := len(r.requests()); n != 0 {
		t.Fatalf("the receiver got %d requests through a certificate not trusted", n)
	}
	// Each attempt reached the receiver, and was refused at the handshake.
	if c := r.conns.Load(); c < int64(attempts) {
		t.Errorf("%d connections for %d attempts", c, attempts)
	}
	if v := e.metric(e.mgr.met.delivered, "untrusted"); v != 0 {
		t.Errorf("delivered metric %v", v)
	}
	if v := e.metric(e.mgr.met.failed, "untrusted"); v < float64(attempts) {
		t.Errorf("failed metric %v, want at least the %d attempts", v, attempts)
	}
	if !e.log.contains("TLS certificate is not trusted") {
		t.Error("the failure's reason is not logged")
	}
	got, err := e.store.GetEndpoint(ctx, ep.ID)
	if err != nil {
		t.Fatal(err)
	}
	if got.State != endpoint.StateActive {
		t.Errorf("endpoint %s (%s), want it active: a certificate not trusted is a failed attempt like any", got.State, got.DisabledReason)
	}
}

// TestTLSCertificateExpiredOrMisnamed: a receiver whose certificate is
// signed by a trusted authority but has expired, or names another host,
// gets no request; its events are dead-lettered after their retries with a
// reason that says the certificate is not trusted, and why.
func TestTLSCertificateExpiredOrMisnamed(t *testing.T) {
	t.Parallel()
	for _, c := range []struct {
		name string
		cert func(t *testing.T) testcert.Cert
		why  string // in the reason, from x509
	}{
		{"expired", func(t *testing.T) testcert.Cert {
			return testcert.NewValid(t, time.Now().Add(-48*time.Hour), time.Now().Add(-24*time.Hour), "127.0.0.1")
		}, "expired"},
		{"misnamed", func(t *testing.T) testcert.Cert { return testcert.New(t, "127.0.0.2", "receiver.invalid") }, "not 127.0.0.1"},
	} {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			cert := c.cert(t)
			e := newEnv(t, envOptions{roots: cert.Pool})
			r := newTLSReceiver(t, cert)
			ep := e.endpoint(c.name, r.URL(), func(w *endpoint.Webhook) {
				w.Retry = endpoint.Retry{Initial: endpoint.Duration(100 * time.Millisecond), Max: endpoint.Duration(200 * time.Millisecond), MaxAge: endpoint.Duration(time.Second)}
			})
			e.waitConsumer(ep)
			e.insertOrders(1, 1)
			var dls []DeadLetter
			waitFor(t, time.Minute, "the event dead-lettered", func() bool {
				var err error
				dls, err = e.mgr.DeadLetters().List(context.Background(), ep.ID, 0, 10)
				return err == nil && len(dls) == 1
			})
			if reason := dls[0].Reason; !strings.Contains(reason, "TLS certificate is not trusted") || !strings.Contains(reason, c.why) {
				t.Errorf("dead letter's reason %q; want the certificate said not trusted, and %q", reason, c.why)
			}
			if n := len(r.requests()); n != 0 {
				t.Fatalf("the receiver got %d requests through a certificate refused", n)
			}
		})
	}
}

// TestTLSHTTP2Delivery: receivers over TLS with a trusted certificate get
// their events over HTTP/2, in order, signed, one at a time and in
// batches.
func TestTLSHTTP2Delivery(t *testing.T) {
	t.Parallel()
	cert := testcert.New(t, "127.0.0.1")
	e := newEnv(t, envOptions{roots: cert.Pool})
	single, batched := newTLSReceiver(t, cert), newTLSReceiver(t, cert)
	one := e.endpoint("single", single.URL(), nil)
	many := e.endpoint("batched", batched.URL(), func(w *endpoint.Webhook) { w.Batch = 5 })
	e.waitConsumer(one)
	e.waitConsumer(many)
	const n = 30
	e.exec(`INSERT INTO orders SELECT g, 'open', g FROM generate_series(1, 20) g`)
	e.insertOrders(21, n)
	checkOrder(t, single.waitAccepted(t, n, time.Minute), n)
	checkOrder(t, batched.waitAccepted(t, n, time.Minute), n)
	checkSigned(t, one, single.requests())
	checkSigned(t, many, batched.requests())
	largest := 0
	for name, r := range map[string]*receiver{"single": single, "batched": batched} {
		for _, d := range r.requests() {
			if d.ProtoMajor != 2 {
				t.Fatalf("%s: request %s over HTTP/%d, want HTTP/2", name, d.ID, d.ProtoMajor)
			}
			evs := parseBody(t, d.Body)
			if name == "batched" {
				if d.Body[0] != '[' || len(evs) > 5 {
					t.Fatalf("batch of %d: %.80s", len(evs), d.Body)
				}
				largest = max(largest, len(evs))
			} else if d.Body[0] == '[' {
				t.Fatalf("a batch to an endpoint without batches: %.80s", d.Body)
			}
		}
	}
	if largest < 2 {
		t.Errorf("no batch held more than one event (%d inserted in one transaction)", 20)
	}
}

// TestTLSHTTP2OneConnection: under HTTP/2 the requests of every lane to a
// receiver go over one connection, at once: one TLS handshake for all the
// events, however many lanes.
func TestTLSHTTP2OneConnection(t *testing.T) {
	t.Parallel()
	cert := testcert.New(t, "127.0.0.1")
	e := newEnv(t, envOptions{roots: cert.Pool})
	r := newTLSReceiver(t, cert)
	// Slow answers, so that lanes overlap.
	r.setAnswer(func(*delivery, int) (int, map[string]string, time.Duration) { return 200, nil, 5 * time.Millisecond })
	ep := e.endpoint("multiplexed", r.URL(), func(w *endpoint.Webhook) { w.ParallelByKey, w.Concurrency = true, 4 })
	e.waitConsumer(ep)
	// One event first: lanes starting at once before any connection
	// exists each dial one (net/http keeps one of them for HTTP/2 and
	// closes the others); after it, every request finds the connection.
	e.insertOrders(1, 1)
	r.waitCount(t, 1, time.Minute)
	const n = 300
	e.exec(`INSERT INTO orders SELECT g, 'open', g FROM generate_series(2, $1) g`, n)
	r.waitCount(t, n, 2*time.Minute)
	reqs := r.requests()
	for _, d := range reqs {
		if d.ProtoMajor != 2 {
			t.Fatalf("request %s over HTTP/%d, want HTTP/2", d.ID, d.ProtoMajor)
		}
	}
	// Requests that overlapped went over that one connection at once.
	sort.Slice(reqs, func(i, j int) bool { return reqs[i].At.Before(reqs[j].At) })
	overlaps := 0
	for i := 1; i < len(reqs); i++ {
		if reqs[i].At.Before(reqs[i-1].End) {
			overlaps++
		}
	}
	if overlaps == 0 {
		t.Error("no two requests overlapped: the lanes were not tested at once")
	}
	if c := r.conns.Load(); c != 1 {
		t.Fatalf("%d requests (%d overlapping) over %d connections, want 1", len(reqs), overlaps, c)
	}
	t.Logf("%d requests, %d overlapping another, over %d connection", len(reqs), overlaps, r.conns.Load())
}

// HTTP/2 frame types and flags the hostile receivers below read and write
// (RFC 9113, section 6).
const (
	h2Headers  = 0x1
	h2Settings = 0x4
	h2GoAway   = 0x7
	h2Ack      = 0x1
	h2Preface  = "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
)

// readH2Frame reads one HTTP/2 frame.
func readH2Frame(r io.Reader) (typ, flags byte, stream uint32, payload []byte, err error) {
	var h [9]byte
	if _, err = io.ReadFull(r, h[:]); err != nil {
		return
	}
	payload = make([]byte, int(h[0])<<16|int(h[1])<<8|int(h[2]))
	_, err = io.ReadFull(r, payload)
	return h[3], h[4], binary.BigEndian.Uint32(h[5:]) & 0x7fffffff, payload, err
}

// writeH2Frame writes one HTTP/2 frame.
func writeH2Frame(w io.Writer, typ, flags byte, stream uint32, payload []byte) error {
	h := []byte{byte(len(payload) >> 16), byte(len(payload) >> 8), byte(len(payload)), typ, flags, 0, 0, 0, 0}
	binary.BigEndian.PutUint32(h[5:], stream)
	_, err := w.Write(append(h, payload...))
	return err
}

// rawH2 serves TLS with cert on loopback, offering HTTP/2 alone, and plays
// a receiver by hand: on each connection, after the client's preface,
// start runs, then onRequest at each request's HEADERS frame; the
// connection stays open until the client closes it. It counts the
// requests.
func rawH2(t *testing.T, cert testcert.Cert, start func(c net.Conn), onRequest func(c net.Conn, stream uint32)) (addr string, requests *atomic.Int64) {
	t.Helper()
	kp, err := tls.LoadX509KeyPair(cert.CertFile, cert.KeyFile)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := tls.Listen("tcp", "127.0.0.1:0", &tls.Config{Certificates: []tls.Certificate{kp}, NextProtos: []string{"h2"}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	requests = new(atomic.Int64)
	var mu sync.Mutex
	var open []net.Conn
	t.Cleanup(func() {
		mu.Lock()
		defer mu.Unlock()
		for _, c := range open {
			c.Close()
		}
	})
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			open = append(open, c)
			mu.Unlock()
			go func() {
				defer c.Close()
				preface := make([]byte, len(h2Preface))
				if _, err := io.ReadFull(c, preface); err != nil || string(preface) != h2Preface {
					return
				}
				start(c)
				for {
					typ, _, stream, _, err := readH2Frame(c)
					if err != nil {
						return
					}
					if typ == h2Headers {
						requests.Add(1)
						onRequest(c, stream)
					}
				}
			}()
		}
	}()
	return ln.Addr().String(), requests
}

// h2Receiver is a hostile receiver's address, and its count of the
// requests it got over HTTP/2.
type h2Receiver struct {
	addr     string
	requests *atomic.Int64
}

// hostileH2 starts the hostile HTTP/2 receivers, by name, with cert.
func hostileH2(t *testing.T, cert testcert.Cert) map[string]h2Receiver {
	t.Helper()
	out := map[string]h2Receiver{}
	handler := func(name string, h func(w http.ResponseWriter, r *http.Request)) {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		requests := new(atomic.Int64)
		srv := &http.Server{ErrorLog: log.New(io.Discard, "", 0), Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if r.ProtoMajor == 2 {
				requests.Add(1)
			}
			h(w, r)
		})}
		go func() { _ = srv.ServeTLS(ln, cert.CertFile, cert.KeyFile) }()
		t.Cleanup(func() { srv.Close() })
		out[name] = h2Receiver{ln.Addr().String(), requests}
	}
	raw := func(name string, start func(c net.Conn), onRequest func(c net.Conn, stream uint32)) {
		addr, requests := rawH2(t, cert, start, onRequest)
		out[name] = h2Receiver{addr, requests}
	}
	handler("headers then a stalled body", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Length", "10")
		w.WriteHeader(200)
		w.(http.Flusher).Flush()
		<-r.Context().Done()
	})
	// 1 MiB of headers, sixteen times the bound: net/http's server sends
	// them whatever the client's SETTINGS_MAX_HEADER_LIST_SIZE says.
	handler("a huge header block", func(w http.ResponseWriter, r *http.Request) {
		for i := range 8 << 10 {
			w.Header().Set(fmt.Sprintf("X-Pad-%d", i), strings.Repeat("p", 110))
		}
		w.WriteHeader(200)
	})
	// The handshake, then not a frame: no SETTINGS, no answer.
	raw("no SETTINGS", func(net.Conn) {}, func(net.Conn, uint32) {})
	settings := func(c net.Conn) {
		_ = writeH2Frame(c, h2Settings, 0, 0, nil)
		_ = writeH2Frame(c, h2Settings, h2Ack, 0, nil)
	}
	goAway := func(last uint32) func(c net.Conn, stream uint32) {
		return func(c net.Conn, stream uint32) {
			p := make([]byte, 8) // last stream, then NO_ERROR
			binary.BigEndian.PutUint32(p, min(last, stream))
			_ = writeH2Frame(c, h2GoAway, 0, 0, p)
		}
	}
	// GOAWAY naming the request as one it will process, which it never
	// answers.
	raw("GOAWAY, the request kept unanswered", settings, goAway(1<<31-1))
	// GOAWAY saying the request was not processed: net/http sends it
	// again on a new connection, to the same.
	raw("GOAWAY, the request refused", settings, goAway(0))
	return out
}

// TestHTTP2HostileAnswersBounded: a receiver over HTTP/2 that sends its
// headers and then no body, a header block far beyond the 64 KiB bound,
// never its SETTINGS, or GOAWAY while a request waits, makes the attempt
// fail, within the timeout.
func TestHTTP2HostileAnswersBounded(t *testing.T) {
	cert := testcert.New(t, "127.0.0.1")
	client := newClient(allowList(t, "127.0.0.0/8"))
	trustRoots(client, cert.Pool)
	for name, h := range hostileH2(t, cert) {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			const timeout = 2 * time.Second
			start := time.Now()
			status, _, err := postTo(client, "https://"+h.addr+"/hook", timeout)
			took := time.Since(start)
			if err == nil {
				t.Errorf("answered %d and no error; want a failed attempt", status)
			}
			if took > timeout+5*time.Second {
				t.Errorf("the attempt took %s with a timeout of %s", took, timeout)
			}
			if h.requests.Load() == 0 {
				t.Error("no request reached it over HTTP/2")
			}
			// The header block is refused as it comes, not timed out.
			if name == "a huge header block" && errors.Is(err, context.DeadlineExceeded) {
				t.Errorf("%v; want it refused for its size", err)
			}
			t.Logf("%s, %v", took.Round(time.Millisecond), err)
		})
	}
}

// TestHTTP2HostileReceiversRetried: the same receivers as endpoints: each
// attempt is a failed one, counted, and retried, the lane held no longer
// than the timeout by any.
func TestHTTP2HostileReceiversRetried(t *testing.T) {
	t.Parallel()
	cert := testcert.New(t, "127.0.0.1")
	e := newEnv(t, envOptions{roots: cert.Pool})
	hostile := hostileH2(t, cert)
	names := map[string]string{}
	i := 0
	for name, h := range hostile {
		i++
		id := fmt.Sprintf("hostile%d", i)
		names[id] = name
		ep := e.endpoint(id, "https://"+h.addr+"/hook", func(w *endpoint.Webhook) {
			w.Timeout = endpoint.Duration(time.Second)
			w.Retry = endpoint.Retry{Initial: endpoint.Duration(100 * time.Millisecond), Max: endpoint.Duration(200 * time.Millisecond), MaxAge: endpoint.Duration(10 * time.Minute)}
		})
		e.waitConsumer(ep)
	}
	e.insertOrders(1, 1)
	// Three attempts each: with a lane held beyond the 1 s timeout, the
	// next would not come. (A receiver refusing the request by GOAWAY gets
	// it more than once an attempt: net/http sends it again itself.)
	const attempts = 3
	start := time.Now()
	waitFor(t, time.Minute, fmt.Sprintf("%d failed attempts to each receiver", attempts), func() bool {
		for id := range names {
			if e.metric(e.mgr.met.failed, id) < attempts {
				return false
			}
		}
		return true
	})
	took := time.Since(start)
	for id, name := range names {
		if n := hostile[name].requests.Load(); n < attempts {
			t.Errorf("%s: %d requests reached it for %v failed attempts", name, n, e.metric(e.mgr.met.failed, id))
		}
		if v := e.metric(e.mgr.met.delivered, id); v != 0 {
			t.Errorf("%s: %v delivered", name, v)
		}
	}
	// Each attempt at most the 1 s timeout and a backoff of at most
	// 200 ms, with room for a loaded machine: a lane held until something
	// else (keep-alives, idle timeouts: 30 s and more) ended it would not
	// be.
	if limit := attempts * (time.Second + 200*time.Millisecond + 3*time.Second); took > limit {
		t.Errorf("%d attempts each took %s, more than %s", attempts, took, limit)
	}
	if !e.log.contains("webhook delivery failed; retrying") {
		t.Error("no failed attempt logged")
	}
}
