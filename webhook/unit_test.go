package webhook

import (
	"net/netip"
	"testing"
	"time"

	"github.com/tablecast/tablecast/internal/endpoint"
)

func mustAddr(t *testing.T, s string) netip.Addr {
	t.Helper()
	a, err := netip.ParseAddr(s)
	if err != nil {
		t.Fatal(err)
	}
	return a
}

func allowList(t *testing.T, s ...string) []netip.Prefix {
	var out []netip.Prefix
	for _, p := range s {
		out = append(out, netip.MustParsePrefix(p))
	}
	return out
}

// TestSignKnownVector checks Sign against the Standard Webhooks
// specification's example.
func TestSignKnownVector(t *testing.T) {
	key := endpoint.SecretKey("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")
	got := Sign(key, "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, []byte(`{"test": 2432232314}`))
	if want := "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="; got != want {
		t.Fatalf("Sign = %s, want %s", got, want)
	}
}

func TestParseRetryAfter(t *testing.T) {
	now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	for v, want := range map[string]time.Duration{
		"2": 2 * time.Second, "": 0, "-1": 0, "soon": 0,
		"Thu, 01 Jan 2026 00:00:30 GMT": 30 * time.Second,
		"Wed, 31 Dec 2025 23:00:00 GMT": 0,
		// Absurd values: a year, beyond int64, a date centuries away (whose
		// distance saturates a Duration), a negative one, garbage.
		"31536000":                      maxRetryAfter,
		"99999999999999999999999":       maxRetryAfter,
		"-99999999999999999999999":      0,
		"Fri, 31 Dec 9999 23:59:59 GMT": maxRetryAfter,
		"Sat, 01 Jan 0000 00:00:00 GMT": 0,
		"0":                             0, "1.5": 0, "0x10": 0, "2 ": 2 * time.Second,
	} {
		if got := parseRetryAfter(v, now); got != want {
			t.Errorf("parseRetryAfter(%q) = %s, want %s", v, got, want)
		}
	}
}

func TestBackoff(t *testing.T) {
	r := endpoint.Retry{Initial: endpoint.Duration(time.Second), Max: endpoint.Duration(8 * time.Second)}
	for attempt, base := range map[int]time.Duration{1: time.Second, 2: 2 * time.Second, 4: 8 * time.Second, 30: 8 * time.Second} {
		for range 50 {
			if d := backoff(attempt, r); d < base/2 || d > base {
				t.Fatalf("backoff(%d) = %s, want %s to %s", attempt, d, base/2, base)
			}
		}
	}
}

func TestParseSubject(t *testing.T) {
	db, sch, tbl, op, ok := parseSubject("tc", "tc.shop.public.or%2Eders.update")
	if !ok || db != "shop" || sch != "public" || tbl != "or.ders" || op != "update" {
		t.Fatalf("parseSubject = %q %q %q %q %v", db, sch, tbl, op, ok)
	}
	if _, _, _, _, ok := parseSubject("tc", "tc.topic.x"); ok {
		t.Fatal("a topic subject parsed as a change")
	}
}
