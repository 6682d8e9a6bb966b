package webhook

import (
	"context"
	"sort"
	"strings"
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
		w.Retry = endpoint.Retry{Initial: endpoint.Duration(100 * time.Millisecond), Max: endpoint.Duration(200 * time.Millisecond), MaxAge: endpoint.Duration(1500 * time.Millisecond)}
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
