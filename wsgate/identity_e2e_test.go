package wsgate

import (
	"context"
	"encoding/json"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"
	jose "github.com/go-jose/go-jose/v4"
	"github.com/tablecast/tablecast/internal/auth"
	"github.com/tablecast/tablecast/internal/auth/authtest"
	"github.com/tablecast/tablecast/schema"
)

// Identity end to end: tokens without a subject, identities that must not
// share a limit, repeated claims, the refresh message, API keys reloaded
// while their clients are connected, and anonymous grants beside
// credentials.

// startIdentityGateway starts a gateway whose authenticator is cfg with
// the e2e secret.
func startIdentityGateway(t *testing.T, cfg auth.Config, mods ...func(*Config)) *testEnv {
	t.Helper()
	if cfg.JWTSecret == nil {
		cfg.JWTSecret = e2eSecret
	}
	cfg.Leeway = -1
	if cfg.Logger == nil {
		cfg.Logger = testLogger()
	}
	authn, err := auth.New(cfg)
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

// open dials path and checks that the connection is open and answered.
func (e *testEnv) open(t testing.TB, path string, hdr ...string) *client {
	t.Helper()
	c := e2eDial(t, e, path, hdr...)
	c.send(map[string]any{"type": "ping"})
	c.expect("pong", "")
	return c
}

// TestAuthIdentityEdges: a token without a subject is refused unless
// allowed; allowed, each such token has a limit of its own, so one client
// cannot lock the others out; a token whose subject spells an API key's
// identity does not share the key's limit; a token that repeats a claim is
// refused rather than read as its last copy.
func TestAuthIdentityEdges(t *testing.T) {
	t.Parallel()
	all := map[string]any{"tables": map[string]any{"*": []string{"*"}}}
	noSub := func(jti string) string {
		return authtest.SignToken(t, jose.HS256, e2eSecret, "", map[string]any{"jti": jti, "exp": time.Now().Add(time.Hour).Unix(), auth.GrantsClaim: all})
	}

	t.Run("no subject refused by default", func(t *testing.T) {
		e := startAuthGateway(t)
		if got := e2eDial(t, e, "/ws?token="+noSub("a")).expectClose(CloseUnauthorized); got != auth.ReasonNoSubject {
			t.Fatalf("reason %q, want %q", got, auth.ReasonNoSubject)
		}
	})

	t.Run("each token without a subject has its own limit", func(t *testing.T) {
		e := startIdentityGateway(t, auth.Config{AllowNoSubject: true}, func(c *Config) { c.MaxConnsPerIdentity = 2 })
		a, b := noSub("a"), noSub("b")
		e.open(t, "/ws?token="+a)
		e.open(t, "/ws?token="+a)
		if got := e2eDial(t, e, "/ws?token="+a).expectClose(CloseTooManyConnections); !strings.Contains(got, "this token") {
			t.Fatalf("reason %q", got)
		}
		// Another client, another token: not locked out by the first.
		e.open(t, "/ws?token="+b)
		e.open(t, "/ws?token="+b)
	})

	t.Run("a subject is not an API key", func(t *testing.T) {
		key, err := auth.GenerateAPIKey()
		if err != nil {
			t.Fatal(err)
		}
		e := startIdentityGateway(t, auth.Config{APIKeys: []auth.APIKey{{Name: "billing", Hash: auth.HashAPIKey(key),
			Claims: map[string]any{auth.GrantsClaim: all}}}}, func(c *Config) { c.MaxConnsPerIdentity = 1 })
		impostor := token(t, all, map[string]any{"sub": "apikey:billing"})
		e.open(t, "/ws?token="+impostor)
		e2eDial(t, e, "/ws?token="+impostor).expectClose(CloseTooManyConnections)
		// The service's own key still connects.
		e.open(t, "/ws", "Authorization", "Bearer "+key)
	})

	t.Run("a repeated claim is refused", func(t *testing.T) {
		e := startAuthGateway(t)
		s := ordersShape()
		s.Table = "secret"
		e.putShape(s)
		exp := time.Now().Add(time.Hour).Unix()
		for payload, reason := range map[string]string{
			fmt.Sprintf(`{"sub":"u","exp":%d,"tablecast":{"tables":{"public.orders":["*"]}},"tablecast":{"tables":{"*":["*"]}}}`, exp):       auth.ReasonDuplicateClaim,
			fmt.Sprintf(`{"sub":"u","exp":%d,"tablecast":{"tables":{"public.secret":[],"public.secret":["*"],"public.orders":["*"]}}}`, exp): auth.ReasonMalformedGrants + `: member "public.secret" is repeated`,
		} {
			tok := authtest.SignToken(t, jose.HS256, e2eSecret, "", map[string]any{"raw": payload})
			if got := e2eDial(t, e, "/ws?token="+tok).expectClose(CloseUnauthorized); got != reason {
				t.Fatalf("reason %q, want %q", got, reason)
			}
		}
	})
}

// TestRefresh: a refresh with a token of the same subject re-applies its
// grants to every open subscription (those no longer granted end with
// not_allowed and unsubscribed; a changed row policy holds from the next
// event) and is answered with refreshed and the new exp; a bad token, or
// one of another subject, is refresh_failed and changes nothing.
func TestRefresh(t *testing.T) {
	t.Parallel()
	e := startAuthGateway(t)
	s := ordersShape()
	s.Table = "secret"
	e.putShape(s)
	policy := map[string]any{"public.orders": map[string]any{"tenant": map[string]any{"eq": map[string]any{"claim": "tenant"}}}}
	first := token(t, map[string]any{
		"tables":   map[string]any{"public.orders": []string{"*"}, "public.secret": []string{"*"}},
		"topics":   map[string]any{"subscribe": []string{"chat"}, "create": []string{"chat"}, "publish": []string{"chat"}},
		"policies": policy,
	}, map[string]any{"tenant": "acme"})
	c := e.dial("/ws?token=" + first)
	c.send(map[string]any{"type": "create-topic", "topic": "chat"})
	c.expect("topics", "")
	c.subscribe(map[string]any{"id": "all", "table": "public.orders"})
	c.subscribe(map[string]any{"id": "secret", "table": "public.secret"})
	c.subscribe(map[string]any{"id": "chat", "topic": "chat"})
	c.subscribe(map[string]any{"id": "creates", "table": "public.orders", "events": []string{schema.OpCreate}})
	if f := e.publishAndNext(c, "acme", "globex"); f.ID != "all" || e2eTenant(f) != "acme" {
		t.Fatalf("before the refresh: %s", f.raw)
	}
	c.read(10 * time.Second) // the same event for "creates"
	// A third row, which both receive: the feed has then handled the globex
	// row before it under the first token's policy. (A refresh applies from
	// the next event the feed handles, which could otherwise be that row.)
	e.publish(schema.OpCreate, map[string]any{"id": 102, "tenant": "acme"})
	for _, id := range []string{"all", "creates"} {
		if f := c.read(10 * time.Second); f.ID != id || e2eTenant(f) != "acme" {
			t.Fatalf("the third row before the refresh: %s, want it for %s", f.raw, id)
		}
	}

	exp := time.Now().Add(2 * time.Hour).Unix()
	second := token(t, map[string]any{
		"tables":   map[string]any{"public.orders": []string{"create", "update"}},
		"topics":   map[string]any{"publish": []string{"chat"}},
		"policies": policy,
	}, map[string]any{"tenant": "globex", "exp": exp})
	c.send(map[string]any{"type": "refresh", "token": second})
	for _, id := range []string{"all", "secret", "chat"} {
		if f := c.expectError(CodeNotAllowed, id); !strings.Contains(f.Message, id) {
			t.Errorf("not_allowed %q does not name the subscription", f.Message)
		}
		c.expect("unsubscribed", id)
	}
	if f := c.expect("refreshed", ""); !strings.Contains(f.raw, fmt.Sprintf(`"exp":%d`, exp)) {
		t.Fatalf("refreshed %s, want exp %d", f.raw, exp)
	}
	// The policy now follows the new token's tenant, from the next event.
	if f := e.publishAndNext(c, "acme", "globex"); f.ID != "creates" || e2eTenant(f) != "globex" {
		t.Fatalf("after the refresh: %s, want the globex row for creates", f.raw)
	}
	c.send(map[string]any{"type": "publish", "topic": "chat", "data": 1}) // still granted; no longer subscribed
	c.send(map[string]any{"type": "topics"})
	if f := c.expect("topics", ""); !slices.Equal(f.Tables, []string{"public.orders"}) {
		t.Fatalf("topics after the refresh: %s", f.raw)
	}
	c.send(map[string]any{"type": "subscribe", "id": "again", "table": "public.secret"})
	c.expectError(CodeUnknownTable, "again")

	// Refused refreshes change nothing.
	refused := map[string]string{
		"expired":       token(t, nil, map[string]any{"tenant": "acme", "exp": time.Now().Add(-time.Minute).Unix()}),
		"other subject": token(t, map[string]any{"tables": map[string]any{"*": []string{"*"}}}, map[string]any{"sub": "user-2", "tenant": "acme"}),
		"bad signature": authtest.SignToken(t, jose.HS256, []byte("another-secret-another-secret-xxx"), "", map[string]any{"sub": "user-1", "tenant": "acme"}),
		"garbage":       "not.a.token",
		"repeated claim": authtest.SignToken(t, jose.HS256, e2eSecret, "", map[string]any{"raw": fmt.Sprintf(
			`{"sub":"user-1","exp":%d,"tenant":"acme","tenant":"globex","tablecast":{"tables":{"*":["*"]}}}`, exp)}),
		"API key": "tck_unknown",
	}
	for name, tok := range refused {
		c.send(map[string]any{"type": "refresh", "token": tok})
		if f := c.expectError(CodeRefreshFailed, ""); f.Message == "" {
			t.Fatalf("%s: refresh_failed without a reason", name)
		}
	}
	if f := e.publishAndNext(c, "acme", "globex"); f.ID != "creates" || e2eTenant(f) != "globex" {
		t.Fatalf("after refused refreshes: %s, want the identity of the last good token", f.raw)
	}

	// Back to acme: a refresh is not limited to narrowing.
	c.send(map[string]any{"type": "refresh", "token": first})
	c.expect("refreshed", "")
	if f := e.publishAndNext(c, "globex", "acme"); f.ID != "creates" || e2eTenant(f) != "acme" {
		t.Fatalf("after refreshing back: %s", f.raw)
	}
	if got := c.sync(); len(got) != 0 {
		t.Fatalf("unexpected frames: %v", e2eRaws(got))
	}
}

// publishAndNext publishes a create of each tenant in order and returns the
// next frame c receives.
func (e *testEnv) publishAndNext(c *client, tenants ...string) frame {
	e.t.Helper()
	for i, tenant := range tenants {
		e.publish(schema.OpCreate, map[string]any{"id": 100 + i, "tenant": tenant})
	}
	return c.read(10 * time.Second)
}

func e2eTenant(f frame) any {
	data, _ := f.event()["data"].(map[string]any)
	return data["tenant"]
}

// TestRefreshExpiry: a refreshed connection outlives its first token's
// exp, and closes at the new token's.
func TestRefreshExpiry(t *testing.T) {
	t.Parallel()
	e := startAuthGateway(t)
	grants := map[string]any{"tables": map[string]any{"*": []string{"*"}}}
	exp1 := time.Now().Add(2 * time.Second)
	c := e.dial("/ws?token=" + token(t, grants, map[string]any{"exp": exp1.Unix()}))
	c.send(map[string]any{"type": "refresh", "token": token(t, grants, nil)})
	c.expect("refreshed", "")
	// Proving that the close does not come at the old exp takes waiting
	// past it.
	time.Sleep(time.Until(time.Unix(exp1.Unix(), 0)) + time.Second)
	if got := c.sync(); len(got) != 0 {
		t.Fatalf("frames %v", e2eRaws(got))
	}

	exp3 := time.Now().Add(2 * time.Second).Truncate(time.Second)
	c.send(map[string]any{"type": "refresh", "token": token(t, grants, map[string]any{"exp": exp3.Unix()})})
	c.expect("refreshed", "")
	if got := c.expectClose(CloseUnauthorized); got != CloseReasonTokenExpired {
		t.Fatalf("reason %q", got)
	}
	if early := time.Until(exp3); early > 0 {
		t.Fatalf("closed %v before the new exp", early)
	}
}

// TestRefreshEndsResumingSubscription: a subscription still sending its
// history when a refresh ends it sends nothing after its unsubscribed.
func TestRefreshEndsResumingSubscription(t *testing.T) {
	t.Parallel()
	e := startAuthGateway(t)
	notes := strings.Repeat("n", 2000)
	from := e.publish(schema.OpCreate, map[string]any{"id": 0, "notes": notes}) - 1
	for i := 1; i < 500; i++ {
		e.publish(schema.OpCreate, map[string]any{"id": i, "notes": notes})
	}
	c := e2eRawDial(t, e.addr, "/ws?token="+token(t, map[string]any{"tables": map[string]any{"public.orders": []string{"*"}}}, nil), "")
	msg := func(v any) []byte {
		b, err := json.Marshal(v)
		if err != nil {
			t.Fatal(err)
		}
		return e2eMasked(0x80|opText, b)
	}
	// Both messages in one write: the gateway reads them together and
	// handles the refresh right after the subscribe, while the history is
	// still to be read from the stream.
	c.write(append(msg(map[string]any{"type": "subscribe", "id": "r", "table": "public.orders", "from": from}),
		msg(map[string]any{"type": "refresh", "token": token(t, map[string]any{"tables": map[string]any{"public.other": []string{"*"}}}, nil)})...))
	if f := c.readText(10 * time.Second); f.Type != "subscribed" {
		t.Fatalf("got %s, want subscribed", f.raw)
	}
	history := 0
	for ended := false; !ended; {
		f := c.readText(10 * time.Second)
		switch {
		case f.Type == "event" && f.ID == "r":
			history++
		case f.Type == "error" && f.Code == string(CodeNotAllowed) && f.ID == "r":
			if f := c.readText(10 * time.Second); f.Type != "unsubscribed" || f.ID != "r" {
				t.Fatalf("got %s, want unsubscribed", f.raw)
			}
			ended = true
		default:
			t.Fatalf("unexpected %.200s", f.raw)
		}
	}
	if f := c.readText(10 * time.Second); f.Type != "refreshed" {
		t.Fatalf("got %.200s, want refreshed", f.raw)
	}
	// The history is read from a consumer of its own (starting after
	// from), deleted when the resume stops: wait for that, then everything
	// it queued has been queued before the pong.
	ctx := testCtx(t)
	st, err := e.nats.JS.Stream(ctx, "TABLECAST")
	if err != nil {
		t.Fatal(err)
	}
	e.waitFor("the resume's consumer deleted", func() bool {
		list := st.ListConsumers(ctx)
		for info := range list.Info() {
			if info.Config.OptStartSeq == from+1 {
				return false
			}
		}
		return list.Err() == nil
	})
	c.write(msg(map[string]any{"type": "ping"}))
	after := 0
	for f := c.readText(10 * time.Second); f.Type != "pong"; f = c.readText(10 * time.Second) {
		after++
	}
	if after > 0 {
		t.Fatalf("%d frames after unsubscribed (%d history events before it)", after, history)
	}
}

// TestAPIKeysReload: the API keys file is re-read while clients are
// connected: a removed (or replaced) key's connections close with 4001
// "credentials revoked", a key whose claims changed has them re-applied to
// its subscriptions, others are untouched, a new key connects, and a
// broken file keeps the keys and says why in the log.
func TestAPIKeysReload(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	path := filepath.Join(dir, "keys.json")
	write := func(entries ...string) {
		t.Helper()
		tmp := filepath.Join(dir, "keys.tmp")
		if err := os.WriteFile(tmp, []byte("["+strings.Join(entries, ",")+"]"), 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(tmp, path); err != nil {
			t.Fatal(err)
		}
	}
	entry := func(name, key, claims string) string {
		return `{"name":"` + name + `","hash":"` + auth.HashAPIKey(key) + `","claims":` + claims + `}`
	}
	everything := `{"tablecast":{"tables":{"public.orders":["*"]},"topics":{"subscribe":["chat"],"create":["chat"]}}}`
	acmeOnly := `{"tenant":"acme","tablecast":{"tables":{"public.orders":["*"]},"policies":{"public.orders":{"tenant":{"eq":{"claim":"tenant"}}}}}}`
	keyA, keyB, keyC, keyD := "tck_a-service", "tck_b-service", "tck_c-service", "tck_d-service"
	write(entry("a", keyA, everything), entry("b", keyB, everything), entry("c", keyC, everything))
	log, logs := authtest.NewLogger()
	e := startIdentityGateway(t, auth.Config{APIKeysFile: path, Logger: log})
	bearer := func(key string) []string { return []string{"Authorization", "Bearer " + key} }

	a := e.dial("/ws", bearer(keyA)...)
	a.subscribe(map[string]any{"id": "o", "table": "public.orders"})
	b := e.dial("/ws", bearer(keyB)...)
	b.send(map[string]any{"type": "create-topic", "topic": "chat"})
	b.expect("topics", "")
	b.subscribe(map[string]any{"id": "q", "topic": "chat"})
	b.subscribe(map[string]any{"id": "o", "table": "public.orders"})
	c := e.dial("/ws", bearer(keyC)...)
	c.subscribe(map[string]any{"id": "o", "table": "public.orders"})

	write(entry("b", keyB, acmeOnly), entry("c", keyC, everything), entry("d", keyD, everything))
	if got := a.expectClose(CloseUnauthorized); got != CloseReasonRevoked {
		t.Fatalf("removed key closed with %q", got)
	}
	b.expectError(CodeNotAllowed, "q")
	b.expect("unsubscribed", "q")
	if f := e.publishAndNext(b, "globex", "acme"); f.ID != "o" || e2eTenant(f) != "acme" {
		t.Fatalf("changed key: %s, want the row its new policy allows", f.raw)
	}
	if f := c.read(10 * time.Second); f.ID != "o" || e2eTenant(f) != "globex" {
		t.Fatalf("unchanged key: %s", f.raw)
	}
	c.read(10 * time.Second)
	if got := c.sync(); len(got) != 0 {
		t.Fatalf("unchanged key got %v", e2eRaws(got))
	}
	e.open(t, "/ws", bearer(keyD)...)
	e.dialRefused(t, "/ws?token="+keyA, auth.ReasonUnknownAPIKey)

	// A broken file keeps every key, and the log says why.
	write(entry("b", keyB, acmeOnly), `{"name":"c","hash":"`+auth.HashAPIKey(keyC)+`","claims":{},"claims":{}}`)
	e.waitFor("the broken file logged", func() bool { return strings.Contains(logs.String(), "API keys file reload failed") })
	if !strings.Contains(logs.String(), `\"claims\" is repeated`) {
		t.Fatalf("log does not say what is wrong:\n%s", logs)
	}
	e.open(t, "/ws", bearer(keyD)...)
	e2eExpectPong(c)

	// The key of a name replaced by another key: its connections close.
	write(entry("b", "tck_b-rotated", acmeOnly), entry("c", keyC, everything))
	if got := b.expectClose(CloseUnauthorized); got != CloseReasonRevoked {
		t.Fatalf("replaced key closed with %q", got)
	}
	e2eExpectPong(c)
}

// TestAnonymousGrants: with anonymous grants, a client without credentials
// reads the public table beside private ones, sees nothing else, and is
// not counted per identity unless the grants cap it; a client with a bad
// credential is still refused.
func TestAnonymousGrants(t *testing.T) {
	t.Parallel()
	public, err := auth.ParseGrants([]byte(`{"tables":{"public.prices":["*"]}}`))
	if err != nil {
		t.Fatal(err)
	}
	e := startIdentityGateway(t, auth.Config{AnonymousGrants: public}, func(c *Config) { c.MaxConnsPerIdentity = 1 })
	prices := ordersShape()
	prices.Table = "prices"
	e.putShape(prices)

	anon := e.dial("/ws")
	anon.send(map[string]any{"type": "topics"})
	if f := anon.expect("topics", ""); !slices.Equal(f.Tables, []string{"public.prices"}) || len(f.Topics) != 0 {
		t.Fatalf("anonymous topics %s", f.raw)
	}
	anon.send(map[string]any{"type": "subscribe", "id": "o", "table": "public.orders"})
	anon.expectError(CodeUnknownTable, "o")
	anon.subscribe(map[string]any{"id": "p", "table": "public.prices"})
	urlSub := e.dial("/ws/tables/public.prices")
	urlSub.expect("subscribed", URLSubscriptionID)
	e.publish(schema.OpCreate, map[string]any{"id": 1})
	seq := e.publishTo("prices", schema.OpCreate, map[string]any{"id": 2})
	for _, c := range []*client{anon, urlSub} {
		if f := c.read(10 * time.Second); f.Type != "event" || f.Seq != seq {
			t.Fatalf("anonymous client got %s, want the price at seq %d", f.raw, seq)
		}
	}
	if got := e2eDial(t, e, "/ws/tables/public.orders").expectClose(CloseBadRequest); !strings.Contains(got, "not streamed") {
		t.Fatalf("private table by URL: %q", got)
	}
	anon.send(map[string]any{"type": "refresh", "token": token(t, map[string]any{"tables": map[string]any{"*": []string{"*"}}}, nil)})
	anon.expectError(CodeRefreshFailed, "")

	// Credentials are judged, never downgraded.
	e.dialRefused(t, "/ws?token=garbage", auth.ReasonMalformedToken)
	e.dialRefused(t, "/ws/tables/public.prices?token=garbage", auth.ReasonMalformedToken)
	e.dialRefused(t, "/ws?token="+token(t, nil, map[string]any{"exp": time.Now().Add(-time.Minute).Unix()}), auth.ReasonTokenExpired)
	private := e.dial("/ws?token=" + token(t, map[string]any{"tables": map[string]any{"*": []string{"*"}}}, nil))
	private.subscribe(map[string]any{"id": "o", "table": "public.orders"})

	// Not one identity: more anonymous clients than the per-identity limit.
	for range 3 {
		e.open(t, "/ws")
	}

	t.Run("capped", func(t *testing.T) {
		capped, err := auth.ParseGrants([]byte(`{"tables":{"public.orders":["*"]},"limits":{"connections":2}}`))
		if err != nil {
			t.Fatal(err)
		}
		e := startIdentityGateway(t, auth.Config{AnonymousGrants: capped}, func(c *Config) { c.MaxConnsPerIdentity = 1 })
		first := e.open(t, "/ws")
		e.open(t, "/ws")
		if got := e2eDial(t, e, "/ws").expectClose(CloseTooManyConnections); got != "too many connections without credentials" {
			t.Fatalf("reason %q", got)
		}
		e.open(t, "/ws?token="+url.QueryEscape(token(t, nil, nil)))
		_ = first.ws.Close(websocket.StatusNormalClosure, "")
		e.waitFor("an anonymous place freed", func() bool {
			e.gw.connMu.Lock()
			defer e.gw.connMu.Unlock()
			return e.gw.identConns[identityKey(t, e, "")] == 1
		})
		e.open(t, "/ws")
	})

	t.Run("without credentials and without anonymous grants", func(t *testing.T) {
		e := startAuthGateway(t)
		e.dialRefused(t, "/ws", auth.ReasonNoToken)
	})
	_ = context.Background
}

// TestRefreshColumnGrants: a refreshed credential's column grant applies to
// open subscriptions: one whose select or where names a column no longer
// granted ends, the others are projected to the new grant from the next
// event, and a wider grant widens them again.
func TestRefreshColumnGrants(t *testing.T) {
	t.Parallel()
	e := startAuthGateway(t)
	grant := func(cols ...string) map[string]any {
		return map[string]any{"tables": map[string]any{"public.orders": []string{"*"}}, "columns": map[string]any{"public.orders": cols}}
	}
	c := e.dial("/ws?token=" + token(t, grant("id", "tenant", "status", "notes"), nil))
	c.subscribe(map[string]any{"id": "all", "table": "public.orders"})
	c.subscribe(map[string]any{"id": "sel", "table": "public.orders", "select": []string{"id", "status"}})
	c.subscribe(map[string]any{"id": "where", "table": "public.orders", "where": map[string]any{"notes": map[string]any{"is": "null"}}})
	e.publish(schema.OpCreate, map[string]any{"id": 1, "tenant": "acme", "status": "open", "notes": nil})
	for range 3 {
		f := c.read(10 * time.Second)
		if f.Type != "event" {
			t.Fatalf("before the refresh: %s", f.raw)
		}
		if data, _ := f.event()["data"].(map[string]any); f.ID == "all" && (data["status"] == nil || data["tenant"] == nil) {
			t.Fatalf("before the refresh, all granted columns: %s", f.raw)
		}
	}

	c.send(map[string]any{"type": "refresh", "token": token(t, grant("id", "tenant"), nil)})
	for _, id := range []string{"sel", "where"} {
		if f := c.expectError(CodeNotAllowed, id); !strings.Contains(f.Message, "no longer granted") {
			t.Errorf("%s ended with %q", id, f.Message)
		}
		c.expect("unsubscribed", id)
	}
	c.expect("refreshed", "")
	e.publish(schema.OpCreate, map[string]any{"id": 2, "tenant": "acme", "status": "paid"})
	f := c.read(10 * time.Second)
	data, _ := f.event()["data"].(map[string]any)
	if f.ID != "all" || data["tenant"] != "acme" || data["status"] != nil || len(data) != 2 {
		t.Fatalf("after narrowing, the event still shows more than id and tenant: %s", f.raw)
	}

	c.send(map[string]any{"type": "refresh", "token": token(t, grant("*"), nil)})
	c.expect("refreshed", "")
	e.publish(schema.OpCreate, map[string]any{"id": 3, "tenant": "acme", "status": "paid"})
	f = c.read(10 * time.Second)
	if data, _ := f.event()["data"].(map[string]any); f.ID != "all" || data["status"] != "paid" {
		t.Fatalf("after widening again: %s", f.raw)
	}
	if got := c.sync(); len(got) != 0 {
		t.Fatalf("unexpected frames: %v", e2eRaws(got))
	}
}
