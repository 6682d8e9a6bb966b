package webhook

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tablecast/tablecast/internal/endpoint"
)

// insertOrders inserts rows from..to, one transaction each.
func (e *env) insertOrders(from, to int) {
	e.t.Helper()
	for i := from; i <= to; i++ {
		e.exec(`INSERT INTO orders VALUES ($1, 'open', $2)`, i, i*10)
	}
}

// checkSigned fails unless every request of reqs is signed with ep's
// secret, with a webhook-timestamp within a minute of when it came.
func checkSigned(t *testing.T, ep *endpoint.Endpoint, reqs []delivery) {
	t.Helper()
	key := endpoint.SecretKey(ep.Webhook.Secret)
	for _, d := range reqs {
		ts, _ := strconv.ParseInt(d.Timestamp, 10, 64)
		if want := Sign(key, d.ID, ts, d.Body); d.Signature != want {
			t.Fatalf("request %s signed %q, want %q", d.ID, d.Signature, want)
		}
		if d.At.Unix()-ts > 60 || ts-d.At.Unix() > 60 {
			t.Fatalf("webhook-timestamp %d far from the request's time %s", ts, d.At)
		}
	}
}

func TestDeliversEveryEventInOrder(t *testing.T) {
	t.Parallel()
	e := newEnv(t, envOptions{})
	r := newReceiver(t)
	ep := e.endpoint("ordered", r.URL(), nil)
	e.waitConsumer(ep)
	const n = 200
	// Half in one transaction, half one by one.
	e.exec(`INSERT INTO orders SELECT g, 'open', g FROM generate_series(1, 100) g`)
	e.insertOrders(101, n)
	got := r.waitAccepted(t, n, 2*time.Minute)
	checkOrder(t, got, n)
	checkSigned(t, ep, r.requests())
	for _, d := range r.requests() {
		if ev := parseBody(t, d.Body); len(ev) != 1 || ev[0].ID != d.ID {
			t.Fatalf("webhook-id %s for the event %s", d.ID, d.Body)
		}
	}
	if v := e.metric(e.mgr.met.delivered, "ordered"); v != n {
		t.Errorf("delivered metric %v, want %d", v, n)
	}
}

func TestBatches(t *testing.T) {
	t.Parallel()
	e := newEnv(t, envOptions{})
	r := newReceiver(t)
	ep := e.endpoint("batched", r.URL(), func(w *endpoint.Webhook) { w.Batch = 10 })
	e.waitConsumer(ep)
	const n = 100
	e.exec(`INSERT INTO orders SELECT g, 'open', g FROM generate_series(1, 100) g`)
	got := r.waitAccepted(t, n, 2*time.Minute)
	checkOrder(t, got, n)
	for _, d := range r.requests() {
		evs := parseBody(t, d.Body)
		if len(evs) > 10 || d.Body[0] != '[' {
			t.Fatalf("batch of %d: %.80s", len(evs), d.Body)
		}
		want := evs[0].ID
		if len(evs) > 1 {
			want += "_" + evs[len(evs)-1].ID
		}
		if d.ID != want {
			t.Fatalf("batch webhook-id %q, want %q", d.ID, want)
		}
	}
}

func TestParallelByKeyKeepsEachRowInOrder(t *testing.T) {
	t.Parallel()
	e := newEnv(t, envOptions{})
	r := newReceiver(t)
	ep := e.endpoint("parallel", r.URL(), func(w *endpoint.Webhook) { w.ParallelByKey, w.Concurrency = true, 4 })
	e.waitConsumer(ep)
	// Slow answers, so that lanes overlap.
	r.setAnswer(func(d *delivery, n int) (int, map[string]string, time.Duration) {
		return 200, nil, 5 * time.Millisecond
	})
	const rows, updates = 8, 10
	e.exec(`INSERT INTO orders SELECT g, '0', g FROM generate_series(1, 8) g`)
	for u := 1; u <= updates; u++ {
		e.exec(`UPDATE orders SET status = $1`, strconv.Itoa(u))
	}
	got := r.waitAccepted(t, rows*(updates+1), 2*time.Minute)
	last := map[float64]int{}
	for _, ev := range got {
		id := ev.Data["id"].(float64)
		st, _ := strconv.Atoi(ev.Data["status"].(string))
		if st < last[id] {
			t.Fatalf("row %v: status %d after %d", id, st, last[id])
		}
		last[id] = st
	}
	for id := 1; id <= rows; id++ {
		if last[float64(id)] != updates {
			t.Fatalf("row %d ended at %d", id, last[float64(id)])
		}
	}
}

// TestReceiverDown: the receiver refuses connections for 30 s, then comes
// back: every event arrives, in order.
func TestReceiverDown(t *testing.T) {
	t.Parallel()
	e := newEnv(t, envOptions{})
	r := newReceiver(t)
	ep := e.endpoint("down", r.URL(), func(w *endpoint.Webhook) { w.Retry.Max = endpoint.Duration(2 * time.Second) })
	e.waitConsumer(ep)
	e.insertOrders(1, 5)
	r.waitAccepted(t, 5, time.Minute)
	r.down()
	downAt := time.Now()
	e.insertOrders(6, 30)
	waitFor(t, time.Minute, "failed attempts", func() bool { return e.metric(e.mgr.met.failed, "down") >= 3 })
	for time.Since(downAt) < 30*time.Second {
		time.Sleep(100 * time.Millisecond) // the outage itself
	}
	r.up(t)
	got := r.waitAccepted(t, 30, 2*time.Minute)
	checkOrder(t, got, 30)
}

// TestServerErrors: 500 answers are retried; the event is sent again
// before any later one.
func TestServerErrors(t *testing.T) {
	t.Parallel()
	e := newEnv(t, envOptions{})
	r := newReceiver(t)
	r.setAnswer(func(d *delivery, n int) (int, map[string]string, time.Duration) {
		if n <= 2 {
			return 500, nil, 0
		}
		return 200, nil, 0
	})
	ep := e.endpoint("errors", r.URL(), nil)
	e.waitConsumer(ep)
	e.insertOrders(1, 10)
	got := r.waitAccepted(t, 10, 2*time.Minute)
	checkOrder(t, got, 10)
	// Every request: three attempts of each event, one after another.
	reqs := r.requests()
	for i, d := range reqs {
		if d.ID != reqs[i/3*3].ID {
			t.Fatalf("request %d is of %s, amid the attempts of %s", i, d.ID, reqs[i/3*3].ID)
		}
	}
	if v := e.metric(e.mgr.met.failed, "errors"); v != 20 {
		t.Errorf("failed attempts %v, want 20", v)
	}
}

// TestOtherClientErrorsAreRetried: a 4xx other than 410 is a failure
// like a 5xx (a receiver misconfigured for a while loses nothing).
func TestOtherClientErrorsAreRetried(t *testing.T) {
	t.Parallel()
	e := newEnv(t, envOptions{})
	r := newReceiver(t)
	r.setAnswer(func(d *delivery, n int) (int, map[string]string, time.Duration) {
		if n == 1 {
			return 401, nil, 0
		}
		return 200, nil, 0
	})
	ep := e.endpoint("unauthorized", r.URL(), nil)
	e.waitConsumer(ep)
	e.insertOrders(1, 3)
	checkOrder(t, r.waitAccepted(t, 3, time.Minute), 3)
}

// TestRetryAfter: a 429 with Retry-After: 2 is tried again no sooner.
func TestRetryAfter(t *testing.T) {
	t.Parallel()
	e := newEnv(t, envOptions{})
	r := newReceiver(t)
	r.setAnswer(func(d *delivery, n int) (int, map[string]string, time.Duration) {
		if n == 1 {
			return 429, map[string]string{"Retry-After": "2"}, 0
		}
		return 200, nil, 0
	})
	ep := e.endpoint("limited", r.URL(), nil) // backoff 100ms..1s: shorter than asked
	e.waitConsumer(ep)
	e.insertOrders(1, 2)
	checkOrder(t, r.waitAccepted(t, 2, time.Minute), 2)
	reqs := r.requests()
	for i := 1; i < len(reqs); i++ {
		if reqs[i].ID == reqs[i-1].ID && reqs[i-1].Status == 429 {
			if gap := reqs[i].At.Sub(reqs[i-1].At); gap < 2*time.Second-50*time.Millisecond {
				t.Fatalf("retried %s after %s, though Retry-After asked 2s", reqs[i].ID, gap)
			}
		}
	}
}

// TestAbsurdRetryAfter: a receiver asking to be tried again in a year, in
// the year 9999 (a wait that saturates a Duration), or never readably,
// neither stalls the endpoint past its max_age nor makes it spin: a wait
// past max_age dead-letters the event at its first attempt, and one not
// understood is the backoff.
func TestAbsurdRetryAfter(t *testing.T) {
	t.Parallel()
	e := newEnv(t, envOptions{})
	r := newReceiver(t)
	asked := map[float64]string{1: "31536000", 2: "Fri, 31 Dec 9999 23:59:59 GMT", 3: "-5", 4: "soon"}
	r.setAnswer(func(d *delivery, n int) (int, map[string]string, time.Duration) {
		id := parseBody(t, d.Body)[0].Data["id"].(float64)
		if id <= 2 || id <= 4 && n == 1 {
			return 503, map[string]string{"Retry-After": asked[id]}, 0
		}
		return 200, nil, 0
	})
	ep := e.endpoint("absurd", r.URL(), nil) // max_age 10m
	e.waitConsumer(ep)
	e.insertOrders(1, 5)
	got := r.waitAccepted(t, 3, time.Minute)
	var ids []float64
	for _, ev := range got {
		ids = append(ids, ev.Data["id"].(float64))
	}
	if fmt.Sprint(ids) != "[3 4 5]" {
		t.Fatalf("accepted rows %v, want 3 4 5 (1 and 2 dead-lettered)", ids)
	}
	dls, err := e.mgr.DeadLetters().List(context.Background(), ep.ID, 0, 10)
	if err != nil || len(dls) != 2 || dls[0].Attempts != 1 || dls[1].Attempts != 1 {
		t.Fatalf("dead letters %+v, %v; want rows 1 and 2 after one attempt each", dls, err)
	}
	if n := len(r.requests()); n != 7 {
		t.Fatalf("%d requests, want 7: one for each of rows 1 and 2, two for 3 and 4, one for 5", n)
	}
}

// TestTimeout: a receiver slower than the endpoint's timeout gets the
// event again.
func TestTimeout(t *testing.T) {
	t.Parallel()
	e := newEnv(t, envOptions{})
	r := newReceiver(t)
	r.setAnswer(func(d *delivery, n int) (int, map[string]string, time.Duration) {
		if n == 1 {
			return 599, nil, 3 * time.Second // never answered in time
		}
		return 200, nil, 0
	})
	ep := e.endpoint("slow", r.URL(), func(w *endpoint.Webhook) { w.Timeout = endpoint.Duration(time.Second) })
	e.waitConsumer(ep)
	e.insertOrders(1, 3)
	checkOrder(t, r.waitAccepted(t, 3, time.Minute), 3)
	if v := e.metric(e.mgr.met.failed, "slow"); v < 3 {
		t.Errorf("failed attempts %v, want 3 timeouts", v)
	}
}

// TestGoneDisables: 410 disables the endpoint, which then sends nothing;
// resumed, it delivers from the event that got 410.
func TestGoneDisables(t *testing.T) {
	t.Parallel()
	e := newEnv(t, envOptions{})
	r := newReceiver(t)
	r.setAnswer(func(d *delivery, n int) (int, map[string]string, time.Duration) { return 410, nil, 0 })
	ep := e.endpoint("gone", r.URL(), nil)
	e.waitConsumer(ep)
	e.insertOrders(1, 3)
	ctx := context.Background()
	var cur *endpoint.Endpoint
	waitFor(t, time.Minute, "the endpoint to be disabled", func() bool {
		var err error
		cur, err = e.store.GetEndpoint(ctx, ep.ID)
		return err == nil && cur.State == endpoint.StateDisabled
	})
	if !strings.Contains(cur.DisabledReason, "410") {
		t.Errorf("disabled reason %q", cur.DisabledReason)
	}
	waitFor(t, 30*time.Second, "the worker to stop", func() bool { return e.mgr.Workers() == 0 })
	if n := len(r.requests()); n != 1 {
		t.Fatalf("%d requests, want the one answered 410", n)
	}
	r.setAnswer(nil)
	if _, err := e.store.SetEndpointState(ctx, ep.ID, 0, endpoint.StateActive, ""); err != nil {
		t.Fatal(err)
	}
	checkOrder(t, r.waitAccepted(t, 3, time.Minute), 3)
}

// TestDeadLetterAndReplay: events failing past the retry max_age are
// dead-lettered and delivery goes on; replayed, they arrive.
func TestDeadLetterAndReplay(t *testing.T) {
	t.Parallel()
	e := newEnv(t, envOptions{})
	r := newReceiver(t)
	failing := map[float64]bool{2: true, 3: true}
	r.setAnswer(func(d *delivery, n int) (int, map[string]string, time.Duration) {
		for _, ev := range parseBody(t, d.Body) {
			if failing[ev.Data["id"].(float64)] {
				return 503, nil, 0
			}
		}
		return 200, nil, 0
	})
	ep := e.endpoint("dead", r.URL(), func(w *endpoint.Webhook) {
		w.Retry = endpoint.Retry{Initial: endpoint.Duration(100 * time.Millisecond), Max: endpoint.Duration(200 * time.Millisecond), MaxAge: endpoint.Duration(time.Second)}
	})
	e.waitConsumer(ep)
	e.insertOrders(1, 5)
	got := r.waitAccepted(t, 3, time.Minute)
	var ids []float64
	for _, ev := range got {
		ids = append(ids, ev.Data["id"].(float64))
	}
	if len(ids) != 3 || ids[0] != 1 || ids[1] != 4 || ids[2] != 5 {
		t.Fatalf("accepted rows %v, want 1 4 5", ids)
	}
	ctx := context.Background()
	dls, err := e.mgr.DeadLetters().List(ctx, ep.ID, 0, 10)
	if err != nil {
		t.Fatal(err)
	}
	if len(dls) != 2 {
		t.Fatalf("%d dead letters, want 2", len(dls))
	}
	for i, dl := range dls {
		evs := parseBody(t, dl.Body)
		if evs[0].Data["id"].(float64) != float64(i+2) || dl.Attempts < 2 || !strings.Contains(dl.Reason, "503") || dl.EventID != evs[0].ID || dl.Endpoint != "dead" {
			t.Fatalf("dead letter %+v of %s", dl, dl.Body)
		}
	}
	if v := e.metric(e.mgr.met.deadLettered, "dead"); v != 2 {
		t.Errorf("dead-lettered metric %v", v)
	}
	clear(failing)
	if n, err := e.mgr.DeadLetters().Replay(ctx, ep.ID); err != nil || n != 2 {
		t.Fatalf("Replay = %d, %v", n, err)
	}
	got = r.waitAccepted(t, 5, time.Minute)
	if a, b := got[3].Data["id"].(float64), got[4].Data["id"].(float64); a+b != 5 {
		t.Fatalf("replayed rows %v and %v, want 2 and 3", a, b)
	}
	if dls, _ := e.mgr.DeadLetters().List(ctx, ep.ID, 0, 10); len(dls) != 0 {
		t.Fatalf("%d dead letters left after the replay", len(dls))
	}
}

// TestConcurrentReplays: calls replaying every dead letter of an endpoint
// at once (an operator's retried request, two operators) each succeed,
// together count each dead letter once, and each arrives once.
func TestConcurrentReplays(t *testing.T) {
	t.Parallel()
	e := newEnv(t, envOptions{})
	r, failing := newFailingReceiver(t)
	ep := e.endpoint("replays", r.URL(), func(w *endpoint.Webhook) {
		w.Retry = endpoint.Retry{Initial: endpoint.Duration(100 * time.Millisecond), Max: endpoint.Duration(200 * time.Millisecond), MaxAge: endpoint.Duration(time.Second)}
	})
	e.waitConsumer(ep)
	const rows = 8
	e.insertOrders(1, rows)
	ctx := context.Background()
	dl := e.mgr.DeadLetters()
	waitFor(t, time.Minute, "every row dead-lettered", func() bool {
		dls, err := dl.List(ctx, ep.ID, 0, 100)
		return err == nil && len(dls) == rows
	})
	failing.Store(false)
	var (
		wg    sync.WaitGroup
		total atomic.Int64
	)
	for range 4 {
		wg.Go(func() {
			n, err := dl.Replay(ctx, ep.ID)
			if err != nil {
				t.Errorf("Replay: %v", err)
			}
			total.Add(int64(n))
		})
	}
	wg.Wait()
	if n := total.Load(); n != rows {
		t.Errorf("the replays counted %d dead letters together, want %d", n, rows)
	}
	got := r.waitAccepted(t, rows, time.Minute)
	time.Sleep(time.Second) // room for a second delivery of any of them
	seen := map[float64]int{}
	for _, ev := range r.accepted(t) {
		seen[ev.Data["id"].(float64)]++
	}
	for id := 1; id <= rows; id++ {
		if seen[float64(id)] != 1 {
			t.Errorf("row %d arrived %d times (%d events accepted)", id, seen[float64(id)], len(got))
		}
	}
	if dls, _ := dl.List(ctx, ep.ID, 0, 100); len(dls) != 0 {
		t.Fatalf("%d dead letters left after the replays", len(dls))
	}
}

// TestRefusesPrivateAddresses: without an allowance, a webhook to a
// loopback address (by IP or by a name resolving to it) never connects.
func TestRefusesPrivateAddresses(t *testing.T) {
	t.Parallel()
	e := newEnv(t, envOptions{noAllow: true})
	r := newReceiver(t)
	_, port, _ := strings.Cut(r.addr, ":")
	ep := e.endpoint("private", r.URL(), nil)
	ep2 := e.endpoint("byname", "http://localhost:"+port+"/hook", nil)
	e.waitConsumer(ep)
	e.waitConsumer(ep2)
	e.insertOrders(1, 1)
	waitFor(t, time.Minute, "refused attempts", func() bool {
		return e.metric(e.mgr.met.failed, "private") >= 2 && e.metric(e.mgr.met.failed, "byname") >= 2
	})
	if n := len(r.requests()); n != 0 {
		t.Fatalf("the receiver got %d requests", n)
	}
	if !e.log.contains("destination address refused") {
		t.Error("no refusal logged")
	}
}

func TestAddressAllowed(t *testing.T) {
	for _, c := range []struct {
		addr string
		ok   bool
	}{
		{"8.8.8.8", true}, {"2606:4700::1111", true},
		{"127.0.0.1", false}, {"::1", false}, {"10.1.2.3", false}, {"172.16.0.1", false}, {"192.168.1.1", false},
		{"169.254.169.254", false}, {"fe80::1", false}, {"0.0.0.0", false}, {"::", false}, {"224.0.0.1", false},
		{"ff02::1", false}, {"fd00::1", false}, {"::ffff:127.0.0.1", false}, {"::ffff:10.0.0.1", false},
		{"100.64.0.1", false}, {"64:ff9b::a00:1", false}, {"255.255.255.255", false},
		// IPv4-compatible (::a.b.c.d) and Teredo addresses embed IPv4
		// ones: a host with a route for them reaches the IPv4 address.
		{"::169.254.169.254", false}, {"::127.0.0.1", false}, {"::10.0.0.1", false},
		{"2001:0:4136:e378:8000:63bf:3fff:fdd2", false}, {"2001:20::1", false}, {"3fff::1", false},
		{"2001:4860:4860::8888", true},
	} {
		ip := mustAddr(t, c.addr)
		if got := addressAllowed(ip, nil); got != c.ok {
			t.Errorf("addressAllowed(%s) = %v, want %v", c.addr, got, c.ok)
		}
	}
	if !addressAllowed(mustAddr(t, "10.1.2.3"), allowList(t, "10.0.0.0/8")) {
		t.Error("an allowed network refused")
	}
	if !addressAllowed(mustAddr(t, "::ffff:10.1.2.3"), allowList(t, "10.0.0.0/8")) {
		t.Error("an allowed network refused when IPv4-mapped")
	}
}

// TestDialerChecksResolvedAddress: the check runs on the address dialled,
// after resolution.
func TestDialerChecksResolvedAddress(t *testing.T) {
	r := newReceiver(t)
	_, port, _ := strings.Cut(r.addr, ":")
	client := newClient(nil)
	for _, u := range []string{"http://" + r.addr + "/", "http://localhost:" + port + "/"} {
		resp, err := client.Get(u)
		if err == nil {
			resp.Body.Close()
			t.Fatalf("GET %s: answered %d", u, resp.StatusCode)
		}
		if !errors.Is(err, ErrRefusedAddress) {
			t.Fatalf("GET %s: %v, want a refusal", u, err)
		}
	}
	resp, err := newClient(allowList(t, "127.0.0.0/8")).Get("http://" + r.addr + "/")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusNoContent || len(r.requests()) != 1 {
		t.Fatalf("allowed: %d, %d requests", resp.StatusCode, len(r.requests()))
	}
}

// TestSlowReceiverHoldsLittle: an endpoint may hold far more than two
// batches while its receiver keeps up (maxHeld), but one whose receiver is
// slower than the events come holds about a second of what the receiver
// accepts, however many events wait: every event still arrives, in order.
func TestSlowReceiverHoldsLittle(t *testing.T) {
	t.Parallel()
	e := newEnv(t, envOptions{})
	r := newReceiver(t)
	r.setAnswer(func(*delivery, int) (int, map[string]string, time.Duration) { return 200, nil, 20 * time.Millisecond })
	ep := e.endpoint("slow", r.URL(), func(w *endpoint.Webhook) { w.Batch = 10 })
	e.waitConsumer(ep)
	const n = 3000
	e.exec(`INSERT INTO orders SELECT g, 'open', g FROM generate_series(1, 3000) g`)
	stop := make(chan struct{})
	most := make(chan int)
	go func() {
		m := 0
		for {
			e.mgr.mu.Lock()
			w := e.mgr.workers[ep.ID]
			e.mgr.mu.Unlock()
			if w != nil {
				m = max(m, w.heldCount())
			}
			select {
			case <-stop:
				most <- m
				return
			case <-time.After(time.Millisecond):
			}
		}
	}()
	got := r.waitAccepted(t, n, 3*time.Minute)
	close(stop)
	checkOrder(t, got, n)
	e.mgr.mu.Lock()
	pull := e.mgr.workers[ep.ID].pull
	e.mgr.mu.Unlock()
	// The receiver takes at most 10 events per 20 ms, 500 a second: a
	// second of that, measured over short windows, and a pull beyond it
	// stay well under two seconds' worth (with no bound it holds nearly
	// all 3,000).
	if m := <-most; m > 1000 {
		t.Fatalf("the endpoint held up to %d events for a receiver slower than they came; want at most 1000", m)
	} else {
		t.Logf("held at most %d events (pulls of %d)", m, pull)
	}
}

// TestLongerThanAckWait: an answer that takes longer than the consumer's
// ack wait, and retries that go on for longer than it, keep the order:
// JetStream's redelivery of a message the endpoint still holds is never a
// second request beside the first, every event is accepted, and the first
// acceptances come in order. (A copy JetStream gives after the event was
// accepted, on a machine too busy to keep it in progress, may be sent
// again under the same webhook-id, as the contract allows.)
func TestLongerThanAckWait(t *testing.T) {
	t.Parallel()
	const ackWait = 500 * time.Millisecond
	e := newEnv(t, envOptions{ackWait: ackWait})
	r := newReceiver(t)
	var mu sync.Mutex
	var failUntil time.Time
	r.setAnswer(func(d *delivery, n int) (int, map[string]string, time.Duration) {
		mu.Lock()
		defer mu.Unlock()
		if time.Now().Before(failUntil) {
			return 500, nil, 0
		}
		if n == 1 && strings.Contains(string(d.Body), `"status":"slow"`) {
			return 200, nil, 3 * ackWait // slower than the ack wait, within the timeout
		}
		return 200, nil, 0
	})
	ep := e.endpoint("patient", r.URL(), func(w *endpoint.Webhook) {
		w.Timeout = endpoint.Duration(10 * time.Second)
		w.Retry.Max = endpoint.Duration(time.Minute)
	})
	e.waitConsumer(ep)
	// check asserts that requests never overlapped, and that the rows
	// 1..n were each accepted, first in order.
	check := func(n int) {
		t.Helper()
		reqs := r.requests()
		sort.Slice(reqs, func(i, j int) bool { return reqs[i].At.Before(reqs[j].At) })
		for i := 1; i < len(reqs); i++ {
			if reqs[i].At.Before(reqs[i-1].End) {
				t.Fatalf("request %d (%s) began at %s, before request %d (%s) was answered at %s",
					i, reqs[i].ID, reqs[i].At.Format("15:04:05.000"), i-1, reqs[i-1].ID, reqs[i-1].End.Format("15:04:05.000"))
			}
		}
		seen := map[string]bool{}
		var first []envelope
		for _, ev := range r.accepted(t) {
			if !seen[ev.ID] {
				seen[ev.ID] = true
				first = append(first, ev)
			}
		}
		checkOrder(t, first, n)
	}

	// Slow answers: each of three events takes three ack waits.
	for i := 1; i <= 3; i++ {
		e.exec(`INSERT INTO orders VALUES ($1, 'slow', $2)`, i, i*10)
	}
	r.waitAccepted(t, 3, time.Minute)
	time.Sleep(2 * ackWait) // a redelivery would come meanwhile
	check(3)

	// Failures for four ack waits: attempts only, one after another.
	mu.Lock()
	failUntil = time.Now().Add(4 * ackWait)
	mu.Unlock()
	e.insertOrders(4, 10)
	r.waitAccepted(t, 10, time.Minute)
	time.Sleep(2 * ackWait)
	failed := 0
	for _, d := range r.requests() {
		if d.Status/100 != 2 {
			failed++
		}
	}
	if failed == 0 {
		t.Fatal("no failed attempt: the failures did not happen")
	}
	check(10)
}

// TestEndpointHeadersSent: an endpoint's extra headers reach the receiver,
// those that replace a default (Content-Type, User-Agent) included; the
// signature's are tablecast's.
func TestEndpointHeadersSent(t *testing.T) {
	t.Parallel()
	e := newEnv(t, envOptions{})
	r := newReceiver(t)
	ep := e.endpoint("headers", r.URL(), func(w *endpoint.Webhook) {
		w.Headers = map[string]string{"Content-Type": "application/vnd.shop+json", "User-Agent": "shop-hooks/2", "X-Api-Key": "k1"}
	})
	e.waitConsumer(ep)
	e.insertOrders(1, 1)
	r.waitAccepted(t, 1, time.Minute)
	h := r.requests()[0].Header
	for k, want := range map[string]string{"Content-Type": "application/vnd.shop+json", "User-Agent": "shop-hooks/2", "X-Api-Key": "k1"} {
		if got := h.Get(k); got != want {
			t.Errorf("%s: %q, want %q", k, got, want)
		}
	}
	checkSigned(t, ep, r.requests())
}
