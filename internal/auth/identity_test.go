package auth

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	jose "github.com/go-jose/go-jose/v4"
	"github.com/tablecast/tablecast/internal/auth/authtest"
	"github.com/tablecast/tablecast/schema"
)

// Identity edges: duplicate members in a token, tokens without a subject,
// the namespaces of identities, the API keys file and its reload, and
// anonymous grants.

// rawToken signs payload as it is (duplicates and all) with the test
// secret.
func rawToken(t testing.TB, payload string) string {
	t.Helper()
	return authtest.SignToken(t, jose.HS256, authTestSecret, "", map[string]any{"raw": payload})
}

func TestAuthenticateDuplicateMembers(t *testing.T) {
	a := mustAuthenticator(t, Config{JWTSecret: authTestSecret})
	exp := `"exp":1800003600`
	cases := []struct {
		name, payload, reason string
	}{
		{"grants claim twice", `{"sub":"u",` + exp + `,"tablecast":{"tables":{"public.secret":[]}},"tablecast":{"tables":{"*":["*"]}}}`, ReasonDuplicateClaim},
		{"grants claim twice, one spelt with an escape", `{"sub":"u",` + exp + `,"tablecast":{},"tablecas\u0074":{"tables":{"*":["*"]}}}`, ReasonDuplicateClaim},
		{"sub twice", `{"sub":"u",` + exp + `,"sub":"admin"}`, ReasonDuplicateClaim},
		{"exp twice", `{"sub":"u",` + exp + `,"exp":99999999999}`, ReasonDuplicateClaim},
		{"member repeated in another claim", `{"sub":"u",` + exp + `,"org":{"id":1,"id":2}}`, ReasonDuplicateClaim},
		{"tables twice in the grants", `{"sub":"u",` + exp + `,"tablecast":{"tables":{},"tables":{"*":["*"]}}}`, ReasonMalformedGrants + ": *"},
		{"a pattern twice in tables", `{"sub":"u",` + exp + `,"tablecast":{"tables":{"public.orders":[],"public.orders":["*"]}}}`, ReasonMalformedGrants + ": *"},
		{"a column twice in a policy", `{"sub":"u",` + exp + `,"tablecast":{"policies":{"public.orders":{"tenant":{"eq":"a"},"tenant":{"neq":"a"}}}}}`, ReasonMalformedGrants + ": *"},
		{"an operator twice in a policy", `{"sub":"u",` + exp + `,"tablecast":{"policies":{"public.orders":{"tenant":{"eq":"a","eq":"b"}}}}}`, ReasonMalformedGrants + ": *"},
		{"a policy twice inside an or group", `{"sub":"u",` + exp + `,"tablecast":{"policies":{"public.orders":{"or":[{"a":{"eq":1}},{"b":{"eq":1},"\u0062":{"eq":2}}]}}}}`, ReasonMalformedGrants + ": *"},
		{"repeated among many members", `{"sub":"u",` + exp + `,"x":{` + manyMembers(40) + `,"m7":0}}`, ReasonDuplicateClaim},
		{"repeated in an array of objects", `{"sub":"u",` + exp + `,"x":[1,[{"a":1}],{"a":1,"b":{"c":[{"d":1,"d":2}]}}]}`, ReasonDuplicateClaim},
		{"nested too deeply", `{"sub":"u",` + exp + `,"x":` + strings.Repeat("[", 100) + strings.Repeat("]", 100) + `}`, ReasonMalformedToken},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			id, err := a.Authenticate(Credential{Token: rawToken(t, tc.payload)}, authNow)
			wantReason(t, id, err, tc.reason)
		})
	}
	// The same name in different objects is no repetition.
	id, err := a.Authenticate(Credential{Token: rawToken(t, `{"sub":"u",`+exp+`,"a":{"x":1},"b":{"x":2,"y":[{"x":3},{"x":4}]},"c":{`+manyMembers(40)+`},"tablecast":{"tables":{"public.x":["read"]},"policies":{"public.x":{"x":{"eq":1}}}}}`)}, authNow)
	if err != nil {
		t.Fatalf("refused: %v", err)
	}
	if id.Grants.OpsFor("public", "x") != schema.OpBit(schema.OpRead) {
		t.Fatalf("grants %v", id.Grants.OpsFor("public", "x").Names())
	}
}

// manyMembers returns n members "m0":0,"m1":1,… of an object.
func manyMembers(n int) string {
	var b strings.Builder
	for i := range n {
		if i > 0 {
			b.WriteByte(',')
		}
		fmt.Fprintf(&b, `"m%d":%d`, i, i)
	}
	return b.String()
}

func TestAuthenticateNoSubject(t *testing.T) {
	strict := mustAuthenticator(t, Config{JWTSecret: authTestSecret})
	lax := mustAuthenticator(t, Config{JWTSecret: authTestSecret, AllowNoSubject: true})
	hs := func(c map[string]any) string { return authtest.SignToken(t, jose.HS256, authTestSecret, "", c) }
	noSub := hs(baseClaims(map[string]any{"sub": nil}))
	emptySub := hs(baseClaims(map[string]any{"sub": ""}))
	other := hs(baseClaims(map[string]any{"sub": nil, "jti": "another token"}))

	for _, tok := range []string{noSub, emptySub} {
		id, err := strict.Authenticate(Credential{Token: tok}, authNow)
		wantReason(t, id, err, ReasonNoSubject)
	}
	a, err := lax.Authenticate(Credential{Token: noSub}, authNow)
	if err != nil {
		t.Fatal(err)
	}
	again, err := lax.Authenticate(Credential{Token: noSub}, authNow)
	if err != nil {
		t.Fatal(err)
	}
	b, err := lax.Authenticate(Credential{Token: other}, authNow)
	if err != nil {
		t.Fatal(err)
	}
	if a.key == "" || a.key != again.key || a.key == b.key {
		t.Fatalf("keys %q, %q, %q: want each sub-less token its own, stable identity", a.key, again.key, b.key)
	}
	if a.SameAs(again) || a.SameAs(b) {
		t.Fatal("a token without a subject counts as the same identity as another: a refresh could change who the client is")
	}
	if _, err := lax.Authenticate(Credential{Token: emptySub}, authNow); err != nil {
		t.Fatalf("empty sub refused though allowed: %v", err)
	}
}

func TestIdentitySameAs(t *testing.T) {
	cfg, apiKey := fullAuthConfig(t)
	a := mustAuthenticator(t, cfg)
	hs := func(c map[string]any) *Identity {
		t.Helper()
		id, err := a.Authenticate(Credential{Token: authtest.SignToken(t, jose.HS256, authTestSecret, "", baseClaims(c))}, authNow)
		if err != nil {
			t.Fatal(err)
		}
		return id
	}
	key, err := a.Authenticate(Credential{Token: apiKey}, authNow)
	if err != nil {
		t.Fatal(err)
	}
	user1, user1Again, user2 := hs(nil), hs(map[string]any{"tenant": "other"}), hs(map[string]any{"sub": "user-2"})
	impostor := hs(map[string]any{"sub": "apikey:billing"})
	if !user1.SameAs(user1Again) || user1.SameAs(user2) {
		t.Fatal("tokens of one subject must be the same identity, of two subjects not")
	}
	if impostor.Subject != key.Subject {
		t.Fatalf("test assumes the API key's subject is %q", impostor.Subject)
	}
	if impostor.SameAs(key) || key.SameAs(impostor) || impostor.key == key.key {
		t.Fatal(`a token whose sub is "apikey:billing" counts as the API key billing`)
	}
	if !key.SameAs(key) {
		t.Fatal("an API key is not the same identity as itself")
	}
	anon := AnonymousIdentity()
	if anon.SameAs(anon) {
		t.Fatal("the anonymous identity counts as an identity a credential could refresh")
	}
}

func TestParseAPIKeys(t *testing.T) {
	h := HashAPIKey("tck_a")
	good := `[{"name":"a","hash":"` + h + `","claims":{"tenant":"acme","tablecast":{"tables":{"*":["read"]}}}},{"name":"b","hash":"` + HashAPIKey("tck_b") + `","claims":null},{"name":"c","hash":"` + HashAPIKey("tck_c") + `"}]`
	keys, err := ParseAPIKeys([]byte(good))
	if err != nil {
		t.Fatal(err)
	}
	if len(keys) != 3 || keys[0].Name != "a" || keys[0].Hash != h || keys[0].Claims["tenant"] != "acme" || keys[1].Claims != nil || keys[2].Name != "c" {
		t.Fatalf("keys %+v", keys)
	}
	for _, tc := range []struct{ name, data, want string }{
		{"not JSON", `[{`, "not a JSON list"},
		{"not a list", `{"name":"a"}`, "not a JSON list"},
		{"not an object", `["a"]`, "key 1 is not an object"},
		{"claims twice", `[{"name":"a","hash":"` + h + `","claims":{},"claims":{"tablecast":{"tables":{"*":["*"]}}}}]`, `"claims" is repeated`},
		{"grants claim twice", `[{"name":"a","hash":"` + h + `","claims":{"tablecast":{},"tablecast":{"tables":{"*":["*"]}}}}]`, `"tablecast" is repeated`},
		{"member repeated deep", `[{"name":"a","hash":"` + h + `","claims":{"tablecast":{"tables":{"a.b":[],"a.b":["*"]}}}}]`, `"a.b" is repeated`},
		{"misspelt claims", `[{"name":"a","hash":"` + h + `","claim":{}}]`, `unknown member "claim"`},
		{"name not a string", `[{"name":1,"hash":"` + h + `"}]`, `"name" has the wrong type`},
		{"claims not an object", `[{"name":"a","hash":"` + h + `","claims":[]}]`, `"claims" has the wrong type`},
		{"trailing data", `[] []`, "data after"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := ParseAPIKeys([]byte(tc.data))
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %v, want one saying %q", err, tc.want)
			}
		})
	}
}

func TestParseGrants(t *testing.T) {
	g, err := ParseGrants([]byte(`{"tables":{"public.prices":["*"]},"topics":{"subscribe":["prices"]},"limits":{"connections":1000}}`))
	if err != nil {
		t.Fatal(err)
	}
	if g.OpsFor("public", "prices") != schema.AllOps || g.OpsFor("public", "orders") != 0 || !g.CanSubscribeTopic("prices") || g.CanPublish("prices") || g.Limits().Connections != 1000 {
		t.Fatal("grants read wrong")
	}
	for _, tc := range []struct{ name, data, want string }{
		{"not JSON", `{"tables":`, "not valid JSON"},
		{"not an object", `["*"]`, "must be a JSON object"},
		{"member twice", `{"tables":{},"tables":{"*":["*"]}}`, `"tables" is repeated`},
		{"malformed", `{"tables":{"public.prices":["select"]}}`, "unknown operation"},
		{"unknown member", `{"table":{}}`, `unknown member "table"`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := ParseGrants([]byte(tc.data))
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %v, want one saying %q", err, tc.want)
			}
		})
	}
}

func TestAuthenticateAnonymousGrants(t *testing.T) {
	public, err := ParseGrants([]byte(`{"tables":{"public.prices":["*"]}}`))
	if err != nil {
		t.Fatal(err)
	}
	a := mustAuthenticator(t, Config{JWTSecret: authTestSecret, AnonymousGrants: public})
	id, err := a.Authenticate(Credential{Token: ""}, authNow)
	if err != nil {
		t.Fatalf("no credential refused: %v", err)
	}
	if id.Method != MethodAnonymous || id.Grants.OpsFor("public", "prices") != schema.AllOps || id.Grants.OpsFor("public", "orders") != 0 || id.key != "" {
		t.Fatalf("anonymous identity %+v", id)
	}
	// A credential that is presented is judged, never downgraded.
	for tok, reason := range map[string]string{"garbage": ReasonMalformedToken, "tck_nope": ReasonUnknownAPIKey,
		authtest.SignToken(t, jose.HS256, authTestSecret, "", baseClaims(map[string]any{"exp": authNow.Add(-time.Hour).Unix()})): ReasonTokenExpired} {
		id, err := a.Authenticate(Credential{Token: tok}, authNow)
		wantReason(t, id, err, reason)
	}

	// Only anonymous grants: authentication is on, every credential is refused.
	only := mustAuthenticator(t, Config{AnonymousGrants: public})
	if !only.Enabled() {
		t.Fatal("anonymous grants alone do not turn authentication on")
	}
	if id, err := only.Authenticate(Credential{Token: ""}, authNow); err != nil || id.Grants != public {
		t.Fatalf("anonymous: %v, %v", id, err)
	}
	id, err = only.Authenticate(Credential{Token: authtest.SignToken(t, jose.HS256, authTestSecret, "", baseClaims(nil))}, authNow)
	wantReason(t, id, err, ReasonAlgorithm)

	// limits.connections makes the anonymous clients one counted group.
	capped, err := ParseGrants([]byte(`{"tables":{"public.prices":["*"]},"limits":{"connections":500}}`))
	if err != nil {
		t.Fatal(err)
	}
	if id, err := mustAuthenticator(t, Config{AnonymousGrants: capped}).Authenticate(Credential{Token: ""}, authNow); err != nil || id.key != keyAnonymous {
		t.Fatalf("capped anonymous identity %+v, %v", id, err)
	}

	// A row policy cannot refer to a claim: anonymous clients have none.
	withClaim, err := ParseGrants([]byte(`{"tables":{"public.prices":["*"]},"policies":{"public.prices":{"tenant":{"eq":{"claim":"tenant"}}}}}`))
	if err != nil {
		t.Fatal(err)
	}
	_, err = New(Config{AnonymousGrants: withClaim})
	var ce *ConfigError
	if !errors.As(err, &ce) || ce.Field != "AnonymousGrants" || !strings.Contains(err.Error(), "claim") {
		t.Fatalf("error %v, want a ConfigError of AnonymousGrants about the claim", err)
	}
}

// TestAuthenticateAPIKeysFileReload: the keys file is reloaded when it
// changes; a removed key is refused; an unchanged key keeps its identity
// and a changed one gets a new one; a broken file keeps the keys and is
// logged; the generation moves only when the keys change.
func TestAuthenticateAPIKeysFileReload(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "keys.json")
	write := func(data string) {
		t.Helper()
		tmp := writeAuthFile(t, dir, "keys.tmp", []byte(data))
		if err := os.Rename(tmp, path); err != nil {
			t.Fatal(err)
		}
	}
	entry := func(name, key, grants string) string {
		return `{"name":"` + name + `","hash":"` + HashAPIKey(key) + `","claims":{"tablecast":` + grants + `}}`
	}
	readAll := `{"tables":{"*":["read"]}}`
	write(`[` + entry("a", "tck_a", readAll) + `,` + entry("b", "tck_b", readAll) + `]`)
	log, logs := authtest.NewLogger()
	a := mustAuthenticator(t, Config{APIKeysFile: path, Logger: log})
	a.checkEvery = 0
	a.nextCheck.Store(0)
	auth := func(key string) *Identity {
		t.Helper()
		id, err := a.Authenticate(Credential{Token: key}, authNow)
		if err != nil {
			return nil
		}
		return id
	}
	ka, kb := auth("tck_a"), auth("tck_b")
	if ka == nil || kb == nil || ka.Subject != "apikey:a" {
		t.Fatal("keys of the file refused")
	}
	gen := a.apiKeysGen.Load()

	// Rewritten unchanged: the same identities, no new generation.
	write(`[` + entry("b", "tck_b", readAll) + `,` + entry("a", "tck_a", readAll) + `]`)
	if auth("tck_a") != ka || a.apiKeysGen.Load() != gen {
		t.Fatal("an unchanged key got a new identity, or the generation moved")
	}
	if a.Current(ka) != ka {
		t.Fatal("Current of an unchanged key")
	}

	// a removed, b's grants changed, c added, a's key reused under the name d.
	write(`[` + entry("b", "tck_b", `{"tables":{"public.x":["read"]}}`) + `,` + entry("c", "tck_c", readAll) + `]`)
	if auth("tck_a") != nil || auth("tck_c") == nil {
		t.Fatal("removed key accepted, or added key refused")
	}
	nb := auth("tck_b")
	if nb == nil || nb == kb || nb.Grants.OpsFor("public", "y") != 0 || !nb.SameAs(kb) {
		t.Fatal("changed key: want a new identity of the same name, with the new grants")
	}
	if a.Current(ka) != nil || a.Current(kb) != nb || a.apiKeysGen.Load() == gen {
		t.Fatal("Current or generation after a change")
	}
	write(`[` + entry("d", "tck_a", readAll) + `]`)
	a.checkFiles() // as the gateway does every second
	if a.Current(ka) != nil || auth("tck_a").Subject != "apikey:d" {
		t.Fatal("a key renamed is still the connection's identity")
	}

	// A broken file keeps the keys, logged once; so does a repeated member.
	gen = a.apiKeysGen.Load()
	for _, broken := range []string{`[{"name":`, `[` + entry("d", "tck_a", `{"tables":{},"tables":{"*":["*"]}}`) + `]`} {
		write(broken)
		for range 3 {
			if auth("tck_a") == nil {
				t.Fatal("a broken file dropped the keys")
			}
		}
	}
	if n := strings.Count(logs.String(), "API keys file reload failed"); n != 2 || a.apiKeysGen.Load() != gen {
		t.Fatalf("two broken files logged %d times (want 2), generation %d → %d:\n%s", n, gen, a.apiKeysGen.Load(), logs)
	}
	if !strings.Contains(logs.String(), `repeated`) {
		t.Fatalf("the log does not say why:\n%s", logs)
	}

	// ReloadKeys reads it at once, even unchanged on disk.
	write(`[` + entry("e", "tck_e", readAll) + `]`)
	a.nextCheck.Store(time.Now().Add(time.Hour).UnixNano()) // not due: only the forced reload sees it
	if auth("tck_e") != nil {
		t.Fatal("reloaded before due")
	}
	if err := a.ReloadKeys(); err != nil {
		t.Fatal(err)
	}
	if auth("tck_e") == nil || auth("tck_a") != nil {
		t.Fatal("ReloadKeys did not load the file")
	}

	// A static key and a file key of one name.
	_, err := New(Config{APIKeysFile: path, APIKeys: []APIKey{{Name: "e", Hash: HashAPIKey("tck_x")}}})
	var ce *ConfigError
	if !errors.As(err, &ce) || ce.Field != "APIKeysFile" || !strings.Contains(err.Error(), "twice") {
		t.Fatalf("error %v, want the name used twice", err)
	}
}

// FuzzCheckRepeated: the byte-level check for repeated member names agrees
// with decodeStrict, which decodes every token, on every valid JSON
// object. Other JSON (an array, a scalar) is not a claims set: the check
// leaves it to the decoder, which refuses it whatever its members.
func FuzzCheckRepeated(f *testing.F) {
	for _, s := range []string{
		`{"a":1,"a":2}`, `{"a":{"b":1,"b":2}}`, `{"a":[{"b":1},{"b":1,"\u0062":2}]}`, `{"tablecast":{"tables":{},"tables":{}}}`,
		`{"a":"\"a\"","b":["a","a"]}`, `{}`, `{"é":1,"\u00e9":2}`, `{"x":[[[{"y":{"z":1,"z":1}}]]]}`, `{"` + manyMembers(20) + `,"m3":1}`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		if !json.Valid(b) || !bytes.HasPrefix(bytes.TrimLeft(b, " \t\r\n"), []byte("{")) {
			return
		}
		err := checkRepeated(b)
		var ae *Error
		if err != nil && !errors.As(err, &ae) {
			return // nested too deeply
		}
		_, strictErr := decodeStrictJSON(b)
		var rep repeatedMemberError
		repeated := errors.As(strictErr, &rep)
		if (ae != nil) != repeated {
			t.Fatalf("checkRepeated: %v; decodeStrict: %v", err, strictErr)
		}
	})
}

// TestWatchAPIKeys: the watch reloads a changed API keys file by itself,
// with nobody authenticating, and says so; without a file it has nothing
// to watch and returns.
func TestWatchAPIKeys(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan struct{})
	go func() {
		mustAuthenticator(t, Config{JWTSecret: authTestSecret}).WatchAPIKeys(ctx, func() { t.Error("changed without a keys file") })
		close(done)
	}()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("WatchAPIKeys without a keys file did not return")
	}

	dir := t.TempDir()
	path := filepath.Join(dir, "keys.json")
	write := func(name string) {
		t.Helper()
		tmp := writeAuthFile(t, dir, "keys.tmp", []byte(`[{"name":"`+name+`","hash":"`+HashAPIKey("tck_a")+`"}]`))
		if err := os.Rename(tmp, path); err != nil {
			t.Fatal(err)
		}
	}
	write("a")
	log, _ := authtest.NewLogger()
	a := mustAuthenticator(t, Config{APIKeysFile: path, Logger: log})
	id, err := a.Authenticate(Credential{Token: "tck_a"}, authNow)
	if err != nil {
		t.Fatal(err)
	}
	changed := make(chan struct{}, 8)
	stopped := make(chan struct{})
	go func() {
		a.WatchAPIKeys(ctx, func() { changed <- struct{}{} })
		close(stopped)
	}()
	write("renamed")
	select {
	case <-changed:
	case <-time.After(20 * time.Second):
		t.Fatal("a changed keys file was not reported")
	}
	if a.Current(id) != nil {
		t.Fatal("the identity of a renamed key is still current")
	}
	cancel()
	select {
	case <-stopped:
	case <-time.After(10 * time.Second):
		t.Fatal("WatchAPIKeys did not return when its context ended")
	}
}
