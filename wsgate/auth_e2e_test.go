package wsgate

import (
	"context"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"
	jose "github.com/go-jose/go-jose/v4"
	"github.com/tablecast/tablecast/internal/auth"
	"github.com/tablecast/tablecast/internal/auth/authtest"
)

// The gateway with authentication on: each refusal path at the upgrade,
// the grants at subscribe, and the row policy on every path a row can take
// (live, resume, URL subscription).

var e2eSecret = []byte("0123456789abcdef0123456789abcdef-gateway")

// startAuthGateway starts a gateway that takes HS256 tokens signed with
// e2eSecret.
func startAuthGateway(t *testing.T, mods ...func(*Config)) *testEnv {
	t.Helper()
	authn, err := auth.New(auth.Config{JWTSecret: e2eSecret, Leeway: -1, Logger: testLogger()})
	if err != nil {
		t.Fatal(err)
	}
	return startGateway(t, func(c *Config) {
		c.Auth = authn
		for _, m := range mods {
			m(c)
		}
	})
}

// token signs claims: a subject, an expiry an hour away and the grants
// claim given.
func token(t *testing.T, grants map[string]any, with map[string]any) string {
	t.Helper()
	claims := map[string]any{"sub": "user-1", "exp": time.Now().Add(time.Hour).Unix(), auth.GrantsClaim: grants}
	for k, v := range with {
		claims[k] = v
	}
	return authtest.SignToken(t, jose.HS256, e2eSecret, "", claims)
}

// dialRefused opens path with hdr and expects a close with 4001 and reason.
func (e *testEnv) dialRefused(t *testing.T, path, reason string, hdr ...string) {
	t.Helper()
	c := e2eDial(t, e, path, hdr...)
	if got := c.expectClose(CloseUnauthorized); got != reason {
		t.Fatalf("closed with reason %q, want %q", got, reason)
	}
}

func TestAuthRefusals(t *testing.T) {
	t.Parallel()
	e := startAuthGateway(t)
	grants := map[string]any{"tables": map[string]any{"*": []string{"*"}}}
	other := authtest.SignToken(t, jose.HS256, []byte("another-secret-another-secret-xxx"), "", map[string]any{"sub": "x", "exp": time.Now().Add(time.Hour).Unix()})
	cases := []struct{ name, path, reason string }{
		{"no token", "/ws", auth.ReasonNoToken},
		{"malformed", "/ws?token=not.a.jwt", auth.ReasonMalformedToken},
		{"expired", "/ws?token=" + token(t, grants, map[string]any{"exp": time.Now().Add(-time.Minute).Unix()}), auth.ReasonTokenExpired},
		{"not yet valid", "/ws?token=" + token(t, grants, map[string]any{"nbf": time.Now().Add(time.Hour).Unix()}), auth.ReasonTokenNotYetValid},
		{"wrong signature", "/ws?token=" + other, auth.ReasonBadSignature},
		{"alg none", "/ws?token=" + authtest.UnsignedToken(`{"alg":"none","typ":"JWT"}`, map[string]any{"sub": "x"}, ""), auth.ReasonAlgorithm},
		{"url subscription without token", "/ws/tables/public.orders", auth.ReasonNoToken},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) { e.dialRefused(t, tc.path, tc.reason) })
	}
}

// TestAuthTransports: the token is taken from the query, a Bearer header,
// the cookie, or a Sec-WebSocket-Protocol value, answered with tablecast.v1.
func TestAuthTransports(t *testing.T) {
	t.Parallel()
	e := startAuthGateway(t)
	tok := token(t, map[string]any{"tables": map[string]any{"public.orders": []string{"*"}}}, nil)
	for name, dial := range map[string]func() *client{
		"query":  func() *client { return e2eDial(t, e, "/ws?token="+url.QueryEscape(tok)) },
		"bearer": func() *client { return e2eDial(t, e, "/ws", "Authorization", "Bearer "+tok) },
		"cookie": func() *client { return e2eDial(t, e, "/ws", "Cookie", TokenCookie+"="+tok) },
	} {
		c := dial()
		c.send(map[string]any{"type": "topics"})
		if f := c.expect("topics", ""); !slices.Equal(f.Tables, []string{"public.orders"}) {
			t.Fatalf("%s: topics %s", name, f.raw)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	ws, resp, err := websocket.Dial(ctx, "ws://"+e.addr+"/ws", &websocket.DialOptions{Subprotocols: []string{Subprotocol, SubprotocolTokenPrefix + tok}})
	if err != nil {
		t.Fatal(err)
	}
	defer ws.CloseNow()
	if got := resp.Header.Get("Sec-WebSocket-Protocol"); got != Subprotocol {
		t.Fatalf("answered subprotocol %q, want %q (never the token)", got, Subprotocol)
	}
	c := &client{t: t, ws: ws}
	c.send(map[string]any{"type": "ping"})
	c.expect("pong", "")
}

// TestAuthExpiryDuringConnection: at exp the connection closes with 4001
// "token expired".
func TestAuthExpiryDuringConnection(t *testing.T) {
	t.Parallel()
	e := startAuthGateway(t)
	exp := time.Now().Add(1500 * time.Millisecond).Truncate(time.Second).Add(time.Second)
	tok := token(t, map[string]any{"tables": map[string]any{"*": []string{"*"}}}, map[string]any{"exp": exp.Unix()})
	c := e.dial("/ws?token=" + tok)
	c.subscribe(map[string]any{"id": "s", "table": "public.orders"})
	if got := c.expectClose(CloseUnauthorized); got != CloseReasonTokenExpired {
		t.Fatalf("reason %q", got)
	}
	if late := time.Since(exp); late < 0 || late > 2*time.Second {
		t.Fatalf("closed %v after exp", late)
	}
}

// TestAuthGrants: tables, operations and topics not granted are refused,
// and a table not granted gets the same answer as one that does not exist.
func TestAuthGrants(t *testing.T) {
	t.Parallel()
	e := startAuthGateway(t)
	s := ordersShape()
	s.Table = "secret"
	e.putShape(s)
	e.publish("create", map[string]any{"id": 1}) // keep the stream's start fixed
	c := e.dial("/ws?token=" + token(t, map[string]any{
		"tables": map[string]any{"public.orders": []string{"create", "update"}},
		"topics": map[string]any{"subscribe": []string{"room.*"}, "publish": []string{"room.a"}, "create": []string{"room.*"}},
	}, nil))

	c.send(map[string]any{"type": "topics"})
	if f := c.expect("topics", ""); !slices.Equal(f.Tables, []string{"public.orders"}) {
		t.Fatalf("topics lists %v, want only the granted table", f.Tables)
	}
	c.send(map[string]any{"type": "subscribe", "id": "a", "table": "public.secret"})
	secret := c.expectError(CodeUnknownTable, "a")
	c.send(map[string]any{"type": "subscribe", "id": "b", "table": "public.nothing"})
	missing := c.expectError(CodeUnknownTable, "b")
	if strings.Replace(secret.Message, "secret", "X", 1) != strings.Replace(missing.Message, "nothing", "X", 1) {
		t.Fatalf("a table not granted is told apart from a missing one: %q vs %q", secret.Message, missing.Message)
	}
	c.send(map[string]any{"type": "subscribe", "id": "c", "table": "public.orders", "events": []string{"create", "delete"}})
	c.expectError(CodeNotAllowed, "c")
	// Without events: only the granted ones are delivered.
	c.subscribe(map[string]any{"id": "d", "table": "public.orders"})
	e.publish("delete", map[string]any{"id": 2})
	upd := e.publish("update", map[string]any{"id": 2})
	if f := c.expect("event", "d"); f.Seq != upd {
		t.Fatalf("got seq %d, want the update %d (deletes are not granted)", f.Seq, upd)
	}

	c.send(map[string]any{"type": "create-topic", "topic": "chat"})
	c.expectError(CodeNotAllowed, "")
	c.send(map[string]any{"type": "create-topic", "topic": "room.a"})
	c.expect("topics", "")
	c.send(map[string]any{"type": "destroy-topic", "topic": "room.a"})
	c.expectError(CodeNotAllowed, "")
	c.send(map[string]any{"type": "subscribe", "id": "t", "topic": "chat"})
	c.expectError(CodeNotAllowed, "t")
	c.subscribe(map[string]any{"id": "r", "topic": "room.a"})
	c.send(map[string]any{"type": "publish", "topic": "room.b", "data": 1})
	c.expectError(CodeNotAllowed, "")
	c.send(map[string]any{"type": "publish", "topic": "room.a", "data": 2})
	if f := c.expect("message", "r"); string(f.Data) != "2" {
		t.Fatalf("message %s", f.raw)
	}
}

// TestAuthRowPolicy: a row outside the policy is never delivered: live, on
// resume, through a URL subscription; a delete that does not carry the
// policy's column is withheld.
func TestAuthRowPolicy(t *testing.T) {
	t.Parallel()
	e := startAuthGateway(t)
	tok := token(t, map[string]any{
		"tables":   map[string]any{"public.orders": []string{"*"}},
		"policies": map[string]any{"public.orders": map[string]any{"tenant": map[string]any{"eq": map[string]any{"claim": "tenant"}}}},
	}, map[string]any{"tenant": "acme"})
	start := e.publish("create", map[string]any{"id": 1, "tenant": "acme"})

	live := e.dial("/ws?token=" + tok)
	live.subscribe(map[string]any{"id": "l", "table": "public.orders", "where": map[string]any{"id": map[string]any{"gte": 0}}})
	urlSub := e.dial("/ws/tables/public.orders?token=" + url.QueryEscape(tok))
	urlSub.expect("subscribed", URLSubscriptionID)

	var want []uint64
	for i, tenant := range []string{"acme", "other", "acme", "other", "acme"} {
		seq := e.publish("create", map[string]any{"id": 10 + i, "tenant": tenant})
		if tenant == "acme" {
			want = append(want, seq)
		}
	}
	e.publish("delete", nil, "key", `{"id":10}`) // key only: cannot be judged, withheld
	e.publish("delete", map[string]any{"id": 11, "tenant": "other"})
	del := e.publish("delete", map[string]any{"id": 12, "tenant": "acme"})
	want = append(want, del)
	marker := e.publish("create", map[string]any{"id": 99, "tenant": "acme"})
	want = append(want, marker)

	check := func(name string, c *client, id string) {
		t.Helper()
		var got []uint64
		for len(got) < len(want) {
			f := c.read(10 * time.Second)
			if f.Type != "event" {
				t.Fatalf("%s: unexpected %s", name, f.raw)
			}
			if tenant := f.event()["data"]; tenant != nil && tenant.(map[string]any)["tenant"] != "acme" {
				t.Fatalf("%s: row of another tenant delivered: %s", name, f.Event)
			}
			got = append(got, f.Seq)
		}
		if !slices.Equal(got, want) {
			t.Fatalf("%s: got seqs %v, want %v", name, got, want)
		}
	}
	check("live", live, "l")
	check("url", urlSub, URLSubscriptionID)
	resumed := e.dial("/ws?token=" + tok)
	resumed.subscribe(map[string]any{"id": "r", "table": "public.orders", "from": start})
	check("resume", resumed, "r")

	// A token without the claim the policy needs is refused, never widened.
	bare := e.dial("/ws", "Authorization", "Bearer "+token(t, map[string]any{
		"tables":   map[string]any{"public.orders": []string{"*"}},
		"policies": map[string]any{"public.orders": map[string]any{"tenant": map[string]any{"eq": map[string]any{"claim": "tenant"}}}},
	}, nil))
	bare.send(map[string]any{"type": "subscribe", "id": "x", "table": "public.orders"})
	bare.expectError(CodeNotAllowed, "x")
	_ = http.StatusOK
}

// TestLimits: each limit is answered with an error frame or a close with a
// reason, and the connection (or the gateway) goes on.
func TestLimits(t *testing.T) {
	t.Parallel()
	e := startAuthGateway(t, func(c *Config) {
		c.MessagesPerSecond = 20
		c.MaxConnsPerIdentity = 3
		c.MaxTopics = 2
		c.MaxSubscriptions = 5
	})
	all := map[string]any{"tables": map[string]any{"*": []string{"*"}},
		"topics": map[string]any{"subscribe": []string{"*"}, "publish": []string{"*"}, "create": []string{"*"}, "destroy": []string{"*"}}}

	t.Run("connections per identity", func(t *testing.T) {
		tok := token(t, all, map[string]any{"sub": "many"})
		var open []*client
		for range 3 {
			c := e2eDial(t, e, "/ws?token="+tok)
			c.send(map[string]any{"type": "ping"})
			c.expect("pong", "")
			open = append(open, c)
		}
		over := e2eDial(t, e, "/ws?token="+tok)
		if reason := over.expectClose(CloseTooManyConnections); !strings.Contains(reason, "too many connections") {
			t.Fatalf("reason %q", reason)
		}
		// The token's own limit is lower still.
		low := token(t, map[string]any{"tables": map[string]any{"*": []string{"*"}}, "limits": map[string]any{"connections": 1}}, map[string]any{"sub": "one"})
		first := e2eDial(t, e, "/ws?token="+low)
		first.send(map[string]any{"type": "ping"})
		first.expect("pong", "")
		e2eDial(t, e, "/ws?token="+low).expectClose(CloseTooManyConnections)
		// Closing one frees its place.
		_ = open[0].ws.Close(websocket.StatusNormalClosure, "")
		e.waitFor("the identity's count to drop", func() bool {
			e.gw.connMu.Lock()
			defer e.gw.connMu.Unlock()
			return e.gw.identConns[identityKey(t, e, tok)] == 2
		})
		again := e2eDial(t, e, "/ws?token="+tok)
		again.send(map[string]any{"type": "ping"})
		again.expect("pong", "")
	})

	t.Run("messages per second", func(t *testing.T) {
		c := e2eDial(t, e, "/ws?token="+token(t, all, map[string]any{"sub": "chatty"}))
		start := time.Now()
		for range 100 {
			c.send(map[string]any{"type": "ping"})
		}
		pongs, limited := 0, 0
		for pongs+limited < 100 {
			f := c.read(10 * time.Second)
			switch {
			case f.Type == "pong":
				pongs++
			case f.Type == "error" && f.Code == string(CodeRateLimited):
				limited++
			default:
				t.Fatalf("unexpected %s", f.raw)
			}
		}
		// The burst (40) is answered, plus what the bucket refilled (20 a
		// second) while the messages came in, however slow this machine is.
		refilled := int(20*time.Since(start).Seconds()) + 1
		if pongs < 40 || pongs > 40+refilled || limited != 100-pongs {
			t.Fatalf("%d answered and %d rate limited of 100 sent within %v, want 40 to %d answered and the rest limited", pongs, limited, time.Since(start), 40+refilled)
		}
		time.Sleep(200 * time.Millisecond) // the bucket refills: the connection goes on
		c.send(map[string]any{"type": "ping"})
		c.expect("pong", "")
	})

	t.Run("subscriptions and topics", func(t *testing.T) {
		c := e2eDial(t, e, "/ws?token="+token(t, all, map[string]any{"sub": "subs"}))
		for i := range 5 {
			c.subscribe(map[string]any{"id": "s" + strconv.Itoa(i), "table": "public.orders"})
		}
		c.send(map[string]any{"type": "subscribe", "id": "s5", "table": "public.orders"})
		c.expectError(CodeTooManySubscriptions, "s5")
		for _, name := range []string{"a", "b"} {
			c.send(map[string]any{"type": "create-topic", "topic": name})
			c.expect("topics", "")
		}
		c.send(map[string]any{"type": "create-topic", "topic": "c"})
		c.expectError(CodeTooManyTopics, "")
		c.send(map[string]any{"type": "destroy-topic", "topic": "a"})
		c.expect("topics", "")
		c.send(map[string]any{"type": "create-topic", "topic": "c"})
		c.expect("topics", "")
	})
}

// TestAuthAPIKey: a service's static key, stored hashed, maps to grants
// like a token's; a key not in the configuration is refused.
func TestAuthAPIKey(t *testing.T) {
	t.Parallel()
	key, err := auth.GenerateAPIKey()
	if err != nil {
		t.Fatal(err)
	}
	authn, err := auth.New(auth.Config{Logger: testLogger(), APIKeys: []auth.APIKey{{Name: "billing", Hash: auth.HashAPIKey(key),
		Claims: map[string]any{auth.GrantsClaim: map[string]any{"tables": map[string]any{"public.orders": []string{"update"}}}}}}})
	if err != nil {
		t.Fatal(err)
	}
	e := startGateway(t, func(c *Config) { c.Auth = authn })
	c := e.dial("/ws", "Authorization", "Bearer "+key)
	c.subscribe(map[string]any{"id": "b", "table": "public.orders"})
	e.publish("create", map[string]any{"id": 1})
	upd := e.publish("update", map[string]any{"id": 1})
	if f := c.expect("event", "b"); f.Seq != upd {
		t.Fatalf("got seq %d, want only the granted update %d", f.Seq, upd)
	}
	e.dialRefused(t, "/ws?token="+key+"x", auth.ReasonUnknownAPIKey)
}

// identityKey is the key under which the gateway counts the connections of
// the identity token authenticates as ("" for no token: anonymous).
func identityKey(t testing.TB, e *testEnv, token string) string {
	t.Helper()
	id, err := e.gw.cfg.Auth.Authenticate(auth.Credential{Token: token}, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	return id.Key()
}
