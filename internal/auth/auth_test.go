package auth

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"errors"
	"math/big"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"
	"unicode/utf8"

	jose "github.com/go-jose/go-jose/v4"
	"github.com/tablecast/tablecast/internal/auth/authtest"
	"github.com/tablecast/tablecast/schema"
)

// Keys are generated once per test binary: RSA generation takes a while.
type authTestKeys struct {
	rsa, rsa2, rsaOther *rsa.PrivateKey
	ec, ecOther         *ecdsa.PrivateKey
	ed, edOther         ed25519.PrivateKey
}

var authKeys = sync.OnceValue(func() *authTestKeys {
	must := func(err error) {
		if err != nil {
			panic(err)
		}
	}
	var k authTestKeys
	var err error
	k.rsa, err = rsa.GenerateKey(rand.Reader, 2048)
	must(err)
	k.rsa2, err = rsa.GenerateKey(rand.Reader, 2048)
	must(err)
	k.rsaOther, err = rsa.GenerateKey(rand.Reader, 2048)
	must(err)
	k.ec, err = ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	must(err)
	k.ecOther, err = ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	must(err)
	_, k.ed, err = ed25519.GenerateKey(rand.Reader)
	must(err)
	_, k.edOther, err = ed25519.GenerateKey(rand.Reader)
	must(err)
	return &k
})

var authTestSecret = []byte("0123456789abcdef0123456789abcdef-test-secret")

const (
	authTestAudience = "tablecast-test"
	authTestIssuer   = "https://issuer.test"
)

// authNow is the fixed "now" of the tests: tokens carry whole seconds.
var authNow = time.Unix(1_800_000_000, 0)

// baseClaims are the claims of a valid token; with adds or removes (nil
// value) members.
func baseClaims(with map[string]any) map[string]any {
	c := map[string]any{
		"sub": "user-1",
		"aud": authTestAudience,
		"iss": authTestIssuer,
		"iat": authNow.Add(-time.Minute).Unix(),
		"exp": authNow.Add(time.Hour).Unix(),
		GrantsClaim: map[string]any{
			"tables": map[string]any{"public.orders": []string{"*"}},
		},
	}
	for k, v := range with {
		if v == nil {
			delete(c, k)
		} else {
			c[k] = v
		}
	}
	return c
}

func pemPublic(t testing.TB, pub any) []byte {
	t.Helper()
	der, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der})
}

type jwkSpec struct {
	kid string
	key any
	alg string
	use string
}

func jwksJSON(t testing.TB, specs ...jwkSpec) []byte {
	t.Helper()
	var set jose.JSONWebKeySet
	for _, s := range specs {
		set.Keys = append(set.Keys, jose.JSONWebKey{Key: s.key, KeyID: s.kid, Algorithm: s.alg, Use: s.use})
	}
	b, err := json.Marshal(set)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func writeAuthFile(t testing.TB, dir, name string, data []byte) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, data, 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// logBuffer is a concurrency-safe log sink for asserting what was logged.
// fullAuthConfig configures every method: the secret, a JWKS of one key of
// each type, the audience, the issuer and one API key.
func fullAuthConfig(t testing.TB) (Config, string) {
	t.Helper()
	k := authKeys()
	file := writeAuthFile(t, t.TempDir(), "keys.json", jwksJSON(t,
		jwkSpec{kid: "rsa1", key: &k.rsa.PublicKey, alg: "RS256", use: "sig"},
		jwkSpec{kid: "rsa2", key: &k.rsa2.PublicKey},
		jwkSpec{kid: "ec1", key: &k.ec.PublicKey},
		jwkSpec{kid: "ed1", key: k.ed.Public()},
	))
	apiKey := "tck_test-service-key-0123456789"
	log, _ := authtest.NewLogger()
	return Config{
		JWTSecret:   authTestSecret,
		JWTKeysFile: file,
		Audience:    authTestAudience,
		Issuer:      authTestIssuer,
		APIKeys: []APIKey{{
			Name: "billing",
			Hash: HashAPIKey(apiKey),
			Claims: map[string]any{
				"tenant":    "acme",
				GrantsClaim: map[string]any{"tables": map[string][]string{"public.*": {"read"}}},
			},
		}},
		Logger: log,
	}, apiKey
}

func mustAuthenticator(t testing.TB, cfg Config) *Authenticator {
	t.Helper()
	a, err := New(cfg)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	return a
}

func wantReason(t *testing.T, id *Identity, err error, reason string) {
	t.Helper()
	if err == nil {
		t.Fatalf("accepted as %q, want refusal %q", id.Subject, reason)
	}
	var ae *Error
	if !errors.As(err, &ae) {
		t.Fatalf("error %T %v, want *Error", err, err)
	}
	if ae.Reason != reason && !(strings.HasSuffix(reason, "*") && strings.HasPrefix(ae.Reason, strings.TrimSuffix(reason, "*"))) {
		t.Fatalf("reason %q (%v), want %q", ae.Reason, err, reason)
	}
	if len(ae.Reason) > maxReasonLen || !utf8.ValidString(ae.Reason) {
		t.Fatalf("reason %q does not fit a close frame", ae.Reason)
	}
}

func TestAuthenticateRefusals(t *testing.T) {
	k := authKeys()
	cfg, _ := fullAuthConfig(t)
	full := mustAuthenticator(t, cfg)

	hsOnly := mustAuthenticator(t, Config{JWTSecret: authTestSecret})
	keysOnly := mustAuthenticator(t, Config{JWTKeysFile: cfg.JWTKeysFile, Logger: cfg.Logger})
	apiOnly := mustAuthenticator(t, Config{APIKeys: cfg.APIKeys})

	rsaPEM := pemPublic(t, &k.rsa.PublicKey)
	hs := func(c map[string]any) string { return authtest.SignToken(t, jose.HS256, authTestSecret, "", c) }
	good := hs(baseClaims(nil))
	parts := strings.Split(good, ".")

	cases := []struct {
		name   string
		a      *Authenticator
		token  string
		reason string
	}{
		{"no token", full, "", ReasonNoToken},
		{"garbage", full, "not a token", ReasonMalformedToken},
		{"two parts", full, parts[0] + "." + parts[1], ReasonMalformedToken},
		{"bad base64", full, parts[0] + ".!!!." + parts[2], ReasonMalformedToken},
		{"header not JSON", full, base64.RawURLEncoding.EncodeToString([]byte("{alg")) + "." + parts[1] + "." + parts[2], ReasonMalformedToken},
		{"too long", full, strings.Repeat("a", maxTokenLen+1), ReasonMalformedToken},
		{"payload not an object", full, hs(map[string]any{"raw": `[1,2]`}), ReasonMalformedToken},
		{"payload null", full, hs(map[string]any{"raw": `null`}), ReasonMalformedToken},
		{"payload trailing data", full, hs(map[string]any{"raw": `{"sub":"x"} {}`}), ReasonMalformedToken},
		{"exp not a number", full, hs(baseClaims(map[string]any{"exp": "tomorrow"})), ReasonMalformedToken},
		{"exp absurd", full, hs(baseClaims(map[string]any{"exp": 1e300})), ReasonMalformedToken},
		{"sub not a string", full, hs(baseClaims(map[string]any{"sub": 42})), ReasonMalformedToken},
		{"aud not strings", full, hs(baseClaims(map[string]any{"aud": []any{1}})), ReasonMalformedToken},

		{"expired", full, hs(baseClaims(map[string]any{"exp": authNow.Add(-time.Hour).Unix()})), ReasonTokenExpired},
		{"expired past the leeway", full, hs(baseClaims(map[string]any{"exp": authNow.Add(-DefaultLeeway).Unix()})), ReasonTokenExpired},
		{"not yet valid", full, hs(baseClaims(map[string]any{"nbf": authNow.Add(time.Hour).Unix()})), ReasonTokenNotYetValid},
		{"issued in the future", full, hs(baseClaims(map[string]any{"iat": authNow.Add(time.Hour).Unix()})), ReasonTokenNotYetValid},

		{"HS256 wrong secret", full, authtest.SignToken(t, jose.HS256, []byte("another secret of at least 32 bytes!"), "", baseClaims(nil)), ReasonBadSignature},
		{"HS256 tampered payload", full, parts[0] + "." + base64.RawURLEncoding.EncodeToString([]byte(`{"sub":"admin"}`)) + "." + parts[2], ReasonBadSignature},
		{"RS256 wrong key, right kid", full, authtest.SignToken(t, jose.RS256, k.rsaOther, "rsa1", baseClaims(nil)), ReasonBadSignature},
		{"RS256 wrong key, no kid", full, authtest.SignToken(t, jose.RS256, k.rsaOther, "", baseClaims(nil)), ReasonBadSignature},
		{"ES256 wrong key", full, authtest.SignToken(t, jose.ES256, k.ecOther, "ec1", baseClaims(nil)), ReasonBadSignature},
		{"EdDSA wrong key", full, authtest.SignToken(t, jose.EdDSA, k.edOther, "ed1", baseClaims(nil)), ReasonBadSignature},

		{"alg none", full, authtest.UnsignedToken(`{"alg":"none","typ":"JWT"}`, baseClaims(nil), ""), ReasonAlgorithm},
		{"alg None", full, authtest.UnsignedToken(`{"alg":"None"}`, baseClaims(nil), ""), ReasonAlgorithm},
		{"alg missing", full, authtest.UnsignedToken(`{"typ":"JWT"}`, baseClaims(nil), "c2ln"), ReasonAlgorithm},
		{"HS512", full, authtest.SignToken(t, jose.HS512, append(authTestSecret, authTestSecret...), "", baseClaims(nil)), ReasonAlgorithm},
		{"RS512", full, authtest.SignToken(t, jose.RS512, k.rsa, "rsa1", baseClaims(nil)), ReasonAlgorithm},
		{"PS256", full, authtest.SignToken(t, jose.PS256, k.rsa, "rsa1", baseClaims(nil)), ReasonAlgorithm},
		// The key confusion attack: the RSA public key's PEM as an HMAC secret.
		{"HS256 with public key PEM, secret configured", full, authtest.SignToken(t, jose.HS256, rsaPEM, "rsa1", baseClaims(nil)), ReasonBadSignature},
		{"HS256 with public key PEM, keys only", keysOnly, authtest.SignToken(t, jose.HS256, rsaPEM, "rsa1", baseClaims(nil)), ReasonAlgorithm},
		{"HS256 with public key PEM, no kid, keys only", keysOnly, authtest.SignToken(t, jose.HS256, rsaPEM, "", baseClaims(nil)), ReasonAlgorithm},
		{"RS256 when only HS256", hsOnly, authtest.SignToken(t, jose.RS256, k.rsa, "rsa1", baseClaims(nil)), ReasonAlgorithm},
		{"EdDSA when only HS256", hsOnly, authtest.SignToken(t, jose.EdDSA, k.ed, "", baseClaims(nil)), ReasonAlgorithm},
		{"JWT when only API keys", apiOnly, good, ReasonAlgorithm},
		{"ES256 with an RSA key's kid", full, authtest.SignToken(t, jose.ES256, k.ec, "rsa1", baseClaims(nil)), ReasonAlgorithm},

		{"wrong audience", full, hs(baseClaims(map[string]any{"aud": "someone-else"})), ReasonWrongAudience},
		{"wrong audience list", full, hs(baseClaims(map[string]any{"aud": []string{"a", "b"}})), ReasonWrongAudience},
		{"no audience", full, hs(baseClaims(map[string]any{"aud": nil})), ReasonWrongAudience},
		{"wrong issuer", full, hs(baseClaims(map[string]any{"iss": "https://evil.test"})), ReasonWrongIssuer},
		{"no issuer", full, hs(baseClaims(map[string]any{"iss": nil})), ReasonWrongIssuer},

		{"unknown kid", full, authtest.SignToken(t, jose.RS256, k.rsa, "nope", baseClaims(nil)), ReasonUnknownKey},
		{"unknown API key", full, "tck_not-a-key", ReasonUnknownAPIKey},
		{"API key when none configured", hsOnly, "tck_not-a-key", ReasonUnknownAPIKey},

		{"malformed grants", full, hs(baseClaims(map[string]any{GrantsClaim: map[string]any{"tables": map[string]any{"public.orders": []string{"insert"}}}})), ReasonMalformedGrants + ": *"},
		{"grants not an object", full, hs(baseClaims(map[string]any{GrantsClaim: "all"})), ReasonMalformedGrants + ": *"},
		{"misspelt policies", full, hs(baseClaims(map[string]any{GrantsClaim: map[string]any{"policy": map[string]any{}}})), ReasonMalformedGrants + ": *"},
		{"long malformed grants", full, hs(baseClaims(map[string]any{GrantsClaim: map[string]any{"tables": map[string]any{strings.Repeat("é", 200) + ".*x": []string{}}}})), ReasonMalformedGrants + ": *"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			id, err := tc.a.Authenticate(Credential{Token: tc.token}, authNow)
			wantReason(t, id, err, tc.reason)
		})
	}
}

func TestAuthenticateAccepts(t *testing.T) {
	k := authKeys()
	cfg, apiKey := fullAuthConfig(t)
	a := mustAuthenticator(t, cfg)
	exp := authNow.Add(time.Hour)

	cases := []struct {
		name    string
		token   string
		subject string
		method  string
		expires time.Time
	}{
		{"HS256", authtest.SignToken(t, jose.HS256, authTestSecret, "", baseClaims(nil)), "user-1", MethodJWT, exp.Add(DefaultLeeway)},
		{"HS256 with a kid", authtest.SignToken(t, jose.HS256, authTestSecret, "rsa1", baseClaims(nil)), "user-1", MethodJWT, exp.Add(DefaultLeeway)},
		{"RS256 by kid", authtest.SignToken(t, jose.RS256, k.rsa, "rsa1", baseClaims(nil)), "user-1", MethodJWT, exp.Add(DefaultLeeway)},
		{"RS256 second key by kid", authtest.SignToken(t, jose.RS256, k.rsa2, "rsa2", baseClaims(nil)), "user-1", MethodJWT, exp.Add(DefaultLeeway)},
		{"RS256 without kid", authtest.SignToken(t, jose.RS256, k.rsa2, "", baseClaims(nil)), "user-1", MethodJWT, exp.Add(DefaultLeeway)},
		{"ES256", authtest.SignToken(t, jose.ES256, k.ec, "ec1", baseClaims(nil)), "user-1", MethodJWT, exp.Add(DefaultLeeway)},
		{"EdDSA", authtest.SignToken(t, jose.EdDSA, k.ed, "ed1", baseClaims(nil)), "user-1", MethodJWT, exp.Add(DefaultLeeway)},
		{"EdDSA without kid", authtest.SignToken(t, jose.EdDSA, k.ed, "", baseClaims(nil)), "user-1", MethodJWT, exp.Add(DefaultLeeway)},
		{"audience in a list", authtest.SignToken(t, jose.HS256, authTestSecret, "", baseClaims(map[string]any{"aud": []string{"x", authTestAudience}})), "user-1", MethodJWT, exp.Add(DefaultLeeway)},
		{"expired within the leeway", authtest.SignToken(t, jose.HS256, authTestSecret, "", baseClaims(map[string]any{"exp": authNow.Add(-10 * time.Second).Unix()})), "user-1", MethodJWT, authNow.Add(20 * time.Second)},
		{"nbf within the leeway", authtest.SignToken(t, jose.HS256, authTestSecret, "", baseClaims(map[string]any{"nbf": authNow.Add(10 * time.Second).Unix()})), "user-1", MethodJWT, exp.Add(DefaultLeeway)},
		{"fractional exp", authtest.SignToken(t, jose.HS256, authTestSecret, "", baseClaims(map[string]any{"exp": float64(exp.Unix()) + 0.5})), "user-1", MethodJWT, exp.Add(DefaultLeeway + 500*time.Millisecond)},
		{"no exp", authtest.SignToken(t, jose.HS256, authTestSecret, "", baseClaims(map[string]any{"exp": nil})), "user-1", MethodJWT, time.Time{}},
		{"API key", apiKey, "apikey:billing", MethodAPIKey, time.Time{}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			id, err := a.Authenticate(Credential{Token: tc.token}, authNow)
			if err != nil {
				t.Fatalf("refused: %v", err)
			}
			if id.Subject != tc.subject || id.Method != tc.method || !id.Expires.Equal(tc.expires) {
				t.Fatalf("identity %q %s expires %v, want %q %s %v", id.Subject, id.Method, id.Expires, tc.subject, tc.method, tc.expires)
			}
			if id.Grants == nil || id.Claims == nil {
				t.Fatal("no grants or claims")
			}
		})
	}

	t.Run("grants and claims", func(t *testing.T) {
		tok := authtest.SignToken(t, jose.ES256, k.ec, "ec1", baseClaims(map[string]any{
			"tenant":    int64(9007199254740993), // 2^53+1: no float rounding
			GrantsClaim: map[string]any{"tables": map[string]any{"public.orders": []string{"update"}}, "policies": map[string]any{"public.orders": map[string]any{"tenant_id": map[string]any{"eq": map[string]any{"claim": "tenant"}}}}},
		}))
		id, err := a.Authenticate(Credential{Token: tok}, authNow)
		if err != nil {
			t.Fatal(err)
		}
		if !id.Grants.CanRead("public", "orders", schema.OpUpdate) || id.Grants.CanRead("public", "orders", schema.OpDelete) {
			t.Fatalf("ops %v", id.Grants.OpsFor("public", "orders").Names())
		}
		p, err := id.Grants.Policy("public", "orders")
		if err != nil || p.String() != `{"tenant_id":{"eq":9007199254740993}}` {
			t.Fatalf("policy %s, %v", p, err)
		}
		if id.Claims["tenant"] != json.Number("9007199254740993") {
			t.Fatalf("claim tenant %#v", id.Claims["tenant"])
		}
	})

	t.Run("API key grants", func(t *testing.T) {
		id, err := a.Authenticate(Credential{Token: apiKey}, authNow)
		if err != nil {
			t.Fatal(err)
		}
		if !id.Grants.CanRead("public", "x", schema.OpRead) || id.Grants.CanRead("public", "x", schema.OpCreate) || id.Grants.CanRead("other", "x", schema.OpRead) {
			t.Fatal("API key grants wrong")
		}
		if id.Claims["tenant"] != "acme" {
			t.Fatalf("claims %v", id.Claims)
		}
	})

	t.Run("no grants claim allows nothing", func(t *testing.T) {
		id, err := a.Authenticate(Credential{Token: authtest.SignToken(t, jose.HS256, authTestSecret, "", baseClaims(map[string]any{GrantsClaim: nil}))}, authNow)
		if err != nil {
			t.Fatal(err)
		}
		if id.Grants.OpsFor("public", "orders") != 0 || id.Grants.CanSubscribeTopic("chat") {
			t.Fatal("a token without grants may do something")
		}
	})
}

func TestAuthenticateLeeway(t *testing.T) {
	exp := authNow.Add(-10 * time.Second)
	tok := authtest.SignToken(t, jose.HS256, authTestSecret, "", baseClaims(map[string]any{"exp": exp.Unix(), "aud": nil, "iss": nil}))
	for _, tc := range []struct {
		leeway time.Duration
		ok     bool
	}{{0, true}, {-1, false}, {5 * time.Second, false}, {11 * time.Second, true}} {
		a := mustAuthenticator(t, Config{JWTSecret: authTestSecret, Leeway: tc.leeway})
		id, err := a.Authenticate(Credential{Token: tok}, authNow)
		if (err == nil) != tc.ok {
			t.Errorf("leeway %v: err %v, want ok %v", tc.leeway, err, tc.ok)
		}
		if err == nil && !id.Expires.After(authNow) {
			t.Errorf("leeway %v: accepted with Expires %v not after now", tc.leeway, id.Expires)
		}
	}
}

func TestAuthenticateDisabled(t *testing.T) {
	var nilAuth *Authenticator
	empty := mustAuthenticator(t, Config{})
	for _, a := range []*Authenticator{nilAuth, empty} {
		if a.Enabled() {
			t.Fatal("enabled without a method")
		}
		for _, tok := range []string{"", "garbage", "tck_x"} {
			id, err := a.Authenticate(Credential{Token: tok}, authNow)
			if err != nil || id != AnonymousIdentity() {
				t.Fatalf("Authenticate(%q) = %v, %v; want the anonymous identity", tok, id, err)
			}
		}
	}
	for _, cfg := range []Config{
		{JWTSecret: authTestSecret},
		{APIKeys: []APIKey{{Name: "x", Hash: HashAPIKey("tck_x")}}},
	} {
		if !mustAuthenticator(t, cfg).Enabled() {
			t.Fatalf("%+v not enabled", cfg)
		}
	}
}

func TestAuthenticatePEM(t *testing.T) {
	k := authKeys()
	dir := t.TempDir()

	// A self-signed certificate for the EC key: only a container.
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "issuer"},
		NotBefore: time.Unix(0, 0), NotAfter: time.Unix(1, 0)} // long expired: dates are not checked
	certDER, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &k.ec.PublicKey, k.ec)
	if err != nil {
		t.Fatal(err)
	}
	var file []byte
	file = append(file, "# keys of the issuer\n"...)
	file = append(file, pem.EncodeToMemory(&pem.Block{Type: "RSA PUBLIC KEY", Bytes: x509.MarshalPKCS1PublicKey(&k.rsa.PublicKey)})...)
	file = append(file, pemPublic(t, &k.rsa2.PublicKey)...)
	file = append(file, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: certDER})...)
	file = append(file, pemPublic(t, k.ed.Public())...)
	a := mustAuthenticator(t, Config{JWTKeysFile: writeAuthFile(t, dir, "keys.pem", file)})

	for _, tc := range []struct {
		name   string
		token  string
		reason string
	}{
		{"RS256 PKCS#1", authtest.SignToken(t, jose.RS256, k.rsa, "", baseClaims(nil)), ""},
		{"RS256 PKIX", authtest.SignToken(t, jose.RS256, k.rsa2, "", baseClaims(nil)), ""},
		// PEM keys have no kid: a token's kid no key has is tried on them.
		{"RS256 with a kid", authtest.SignToken(t, jose.RS256, k.rsa2, "some-kid", baseClaims(nil)), ""},
		{"ES256 from a certificate", authtest.SignToken(t, jose.ES256, k.ec, "", baseClaims(nil)), ""},
		{"EdDSA", authtest.SignToken(t, jose.EdDSA, k.ed, "", baseClaims(nil)), ""},
		{"RS256 unknown key", authtest.SignToken(t, jose.RS256, k.rsaOther, "", baseClaims(nil)), ReasonBadSignature},
		{"HS256 with the PEM as secret", authtest.SignToken(t, jose.HS256, file, "", baseClaims(nil)), ReasonAlgorithm},
	} {
		t.Run(tc.name, func(t *testing.T) {
			id, err := a.Authenticate(Credential{Token: tc.token}, authNow)
			if tc.reason == "" {
				if err != nil {
					t.Fatal(err)
				}
				return
			}
			wantReason(t, id, err, tc.reason)
		})
	}
}

func TestAuthenticateJWKSSkipsUnusableKeys(t *testing.T) {
	k := authKeys()
	p384, err := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	log, logs := authtest.NewLogger()
	file := writeAuthFile(t, t.TempDir(), "jwks.json", jwksJSON(t,
		jwkSpec{kid: "enc", key: &k.rsaOther.PublicKey, use: "enc"},
		jwkSpec{kid: "p384", key: &p384.PublicKey},
		jwkSpec{kid: "rs512", key: &k.rsa2.PublicKey, alg: "RS512"},
		jwkSpec{kid: "ok", key: &k.rsa.PublicKey},
	))
	a := mustAuthenticator(t, Config{JWTKeysFile: file, Logger: log})
	if n := len(a.keys.Load().keys); n != 1 {
		t.Fatalf("%d keys loaded, want 1", n)
	}
	for _, kid := range []string{"enc", "p384", "rs512"} {
		if !strings.Contains(logs.String(), "kid="+kid) {
			t.Errorf("skipping key %s not logged:\n%s", kid, logs)
		}
	}
	if _, err := a.Authenticate(Credential{Token: authtest.SignToken(t, jose.RS256, k.rsa, "ok", baseClaims(nil))}, authNow); err != nil {
		t.Fatal(err)
	}
	id, err := a.Authenticate(Credential{Token: authtest.SignToken(t, jose.RS256, k.rsa2, "rs512", baseClaims(nil))}, authNow)
	wantReason(t, id, err, ReasonUnknownKey) // skipped: as if absent

	// A single JWK, not in a set.
	single, _ := json.Marshal(jose.JSONWebKey{Key: k.ed.Public(), KeyID: "solo"})
	a = mustAuthenticator(t, Config{JWTKeysFile: writeAuthFile(t, t.TempDir(), "jwk.json", single)})
	if _, err := a.Authenticate(Credential{Token: authtest.SignToken(t, jose.EdDSA, k.ed, "solo", baseClaims(nil))}, authNow); err != nil {
		t.Fatal(err)
	}
}

func TestNewAuthenticatorErrors(t *testing.T) {
	k := authKeys()
	dir := t.TempDir()
	weak, err := rsa.GenerateKey(rand.Reader, 1024)
	if err != nil {
		t.Fatal(err)
	}
	p384, err := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	privDER, _ := x509.MarshalPKCS8PrivateKey(k.ec)
	file := func(name string, data []byte) string { return writeAuthFile(t, dir, name, data) }
	privJWK, _ := json.Marshal(jose.JSONWebKeySet{Keys: []jose.JSONWebKey{{Key: k.ec, KeyID: "p"}}})
	octJWK, _ := json.Marshal(jose.JSONWebKeySet{Keys: []jose.JSONWebKey{{Key: []byte("0123456789abcdef0123456789abcdef"), KeyID: "o"}}})
	onlyEnc := jwksJSON(t, jwkSpec{kid: "e", key: &k.rsa.PublicKey, use: "enc"})

	cases := []struct {
		name string
		cfg  Config
		want []string // every one must be in the error
	}{
		{"short secret", Config{JWTSecret: []byte("short")}, []string{"JWTSecret", "32"}},
		{"missing keys file", Config{JWTKeysFile: filepath.Join(dir, "nope.pem")}, []string{"JWTKeysFile", "nope.pem"}},
		{"empty keys file", Config{JWTKeysFile: file("empty", nil)}, []string{"JWTKeysFile", "empty"}},
		{"garbage keys file", Config{JWTKeysFile: file("garbage", []byte("hello"))}, []string{"JWTKeysFile", "neither PEM nor JWKS"}},
		{"bad JSON", Config{JWTKeysFile: file("bad.json", []byte("{keys"))}, []string{"JWTKeysFile", "JWKS"}},
		{"JSON without keys", Config{JWTKeysFile: file("nokeys.json", []byte(`{"x":1}`))}, []string{"JWTKeysFile", `"keys"`}},
		{"private PEM", Config{JWTKeysFile: file("priv.pem", pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: privDER}))}, []string{"JWTKeysFile", "private key"}},
		{"private JWK", Config{JWTKeysFile: file("priv.json", privJWK)}, []string{"JWTKeysFile", "private key"}},
		{"symmetric JWK", Config{JWTKeysFile: file("oct.json", octJWK)}, []string{"JWTKeysFile", "symmetric"}},
		{"JWKS without a usable key", Config{JWTKeysFile: file("enc.json", onlyEnc)}, []string{"JWTKeysFile", "no usable key"}},
		{"weak RSA PEM", Config{JWTKeysFile: file("weak.pem", pemPublic(t, &weak.PublicKey))}, []string{"JWTKeysFile", "1024 bits"}},
		{"P-384 PEM", Config{JWTKeysFile: file("p384.pem", pemPublic(t, &p384.PublicKey))}, []string{"JWTKeysFile", "P-384"}},
		{"other PEM block", Config{JWTKeysFile: file("csr.pem", pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: []byte{1}}))}, []string{"JWTKeysFile", "CERTIFICATE REQUEST"}},
		{"leeway", Config{JWTSecret: authTestSecret, Leeway: time.Hour}, []string{"Leeway"}},
		{"audience without a method", Config{Audience: "x"}, []string{"Audience"}},
		{"API key hash", Config{APIKeys: []APIKey{{Name: "a", Hash: "md5:abc"}}}, []string{"APIKeys", `"a"`, "sha256"}},
		{"API key hash short", Config{APIKeys: []APIKey{{Name: "a", Hash: "sha256:abcd"}}}, []string{"APIKeys", "64 hex"}},
		{"API key no name", Config{APIKeys: []APIKey{{Hash: HashAPIKey("tck_a")}}}, []string{"APIKeys", "no name"}},
		{"API key names twice", Config{APIKeys: []APIKey{{Name: "a", Hash: HashAPIKey("tck_a")}, {Name: "a", Hash: HashAPIKey("tck_b")}}}, []string{"APIKeys", "twice"}},
		{"API key twice", Config{APIKeys: []APIKey{{Name: "a", Hash: HashAPIKey("tck_a")}, {Name: "b", Hash: HashAPIKey("tck_a")}}}, []string{"APIKeys", `"b"`, "same key"}},
		{"API key grants", Config{APIKeys: []APIKey{{Name: "a", Hash: HashAPIKey("tck_a"), Claims: map[string]any{GrantsClaim: map[string]any{"tables": "all"}}}}}, []string{"APIKeys", ReasonMalformedGrants}},
		{"every problem at once", Config{JWTSecret: []byte("short"), Leeway: time.Hour}, []string{"JWTSecret", "Leeway"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			log, _ := authtest.NewLogger()
			tc.cfg.Logger = log
			_, err := New(tc.cfg)
			if err == nil {
				t.Fatal("accepted")
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not say %q", err, w)
				}
			}
			// Each problem is a *ConfigError naming the field, for the
			// caller to name its own setting.
			errs := []error{err}
			if j, ok := err.(interface{ Unwrap() []error }); ok {
				errs = j.Unwrap()
			}
			for _, e := range errs {
				var ce *ConfigError
				if !errors.As(e, &ce) || !strings.HasPrefix(e.Error(), ce.Field+": ") || strings.Contains(e.Error(), "TABLECAST_") {
					t.Errorf("problem %q is not a *ConfigError naming its field alone", e)
				}
			}
		})
	}
}

func TestAuthenticateKeysReload(t *testing.T) {
	k := authKeys()
	dir := t.TempDir()
	path := filepath.Join(dir, "keys.json")
	write := func(data []byte) {
		t.Helper()
		// Through a temporary file and a rename, as a careful deployer
		// does; the check sees a new inode.
		tmp := writeAuthFile(t, dir, "keys.tmp", data)
		if err := os.Rename(tmp, path); err != nil {
			t.Fatal(err)
		}
	}
	write(jwksJSON(t, jwkSpec{kid: "old", key: &k.rsa.PublicKey}))
	log, logs := authtest.NewLogger()
	a := mustAuthenticator(t, Config{JWTKeysFile: path, Logger: log})
	a.checkEvery = 0
	a.nextCheck.Store(0)

	oldTok := authtest.SignToken(t, jose.RS256, k.rsa, "old", baseClaims(nil))
	newTok := authtest.SignToken(t, jose.ES256, k.ec, "new", baseClaims(nil))
	check := func(tok, reason string) {
		t.Helper()
		id, err := a.Authenticate(Credential{Token: tok}, authNow)
		if reason == "" {
			if err != nil {
				t.Fatalf("refused: %v", err)
			}
			return
		}
		if err == nil {
			t.Fatalf("accepted %q, want %q", id.Subject, reason)
		}
		if ae := (*Error)(nil); !errors.As(err, &ae) || ae.Reason != reason {
			t.Fatalf("error %v, want %q", err, reason)
		}
	}
	check(oldTok, "")
	check(newTok, ReasonAlgorithm) // no EC key yet

	// A new key is added: accepted after the reload.
	write(jwksJSON(t, jwkSpec{kid: "old", key: &k.rsa.PublicKey}, jwkSpec{kid: "new", key: &k.ec.PublicKey}))
	check(newTok, "")
	check(oldTok, "")

	// A broken file keeps the keys, and is logged once.
	write([]byte(`{"keys": [`))
	for range 3 {
		check(newTok, "")
		check(oldTok, "")
	}
	if n := strings.Count(logs.String(), "reload failed"); n != 1 {
		t.Fatalf("failed reload logged %d times, want once:\n%s", n, logs)
	}

	// The old key is removed.
	write(jwksJSON(t, jwkSpec{kid: "new", key: &k.ec.PublicKey}))
	check(newTok, "")
	check(oldTok, ReasonAlgorithm)

	// A change in place, same size, same modification time: only the
	// forced reload sees it.
	same := jwksJSON(t, jwkSpec{kid: "new", key: &k.ecOther.PublicKey})
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if len(same) != int(fi.Size()) {
		t.Fatalf("test keys differ in size: %d, %d", len(same), fi.Size())
	}
	if err := os.WriteFile(path, same, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Chtimes(path, fi.ModTime(), fi.ModTime()); err != nil {
		t.Fatal(err)
	}
	check(newTok, "")
	if err := a.ReloadKeys(); err != nil {
		t.Fatal(err)
	}
	check(newTok, ReasonBadSignature)

	// Removed: the keys stay, logged once.
	if err := os.Remove(path); err != nil {
		t.Fatal(err)
	}
	otherTok := authtest.SignToken(t, jose.ES256, k.ecOther, "new", baseClaims(nil))
	for range 3 {
		check(otherTok, "")
	}
	if n := strings.Count(logs.String(), "unreadable"); n != 1 {
		t.Fatalf("missing file logged %d times, want once:\n%s", n, logs)
	}
	if err := a.ReloadKeys(); err == nil {
		t.Fatal("ReloadKeys of a removed file succeeded")
	}
	check(otherTok, "")

	// Back again: checked and loaded.
	write(jwksJSON(t, jwkSpec{kid: "old", key: &k.rsa.PublicKey}))
	check(oldTok, "")
}

func TestAuthenticateKeysCheckInterval(t *testing.T) {
	k := authKeys()
	path := writeAuthFile(t, t.TempDir(), "keys.pem", pemPublic(t, &k.rsa.PublicKey))
	log, _ := authtest.NewLogger()
	before := time.Now()
	a := mustAuthenticator(t, Config{JWTKeysFile: path, Logger: log})
	if next := time.Unix(0, a.nextCheck.Load()); next.Before(before.Add(keysCheckInterval)) || next.After(time.Now().Add(keysCheckInterval)) {
		t.Fatalf("first check at %v, want %v after New", next, keysCheckInterval)
	}
	if err := os.WriteFile(path, pemPublic(t, k.ed.Public()), 0o600); err != nil {
		t.Fatal(err)
	}
	tok := authtest.SignToken(t, jose.EdDSA, k.ed, "", baseClaims(nil))
	// Not due yet: the old keys.
	a.nextCheck.Store(time.Now().Add(time.Hour).UnixNano())
	if _, err := a.Authenticate(Credential{Token: tok}, authNow); err == nil {
		t.Fatal("file checked before it was due")
	}
	// Due: checked by the next call.
	a.nextCheck.Store(time.Now().Add(-time.Millisecond).UnixNano())
	if _, err := a.Authenticate(Credential{Token: tok}, authNow); err != nil {
		t.Fatalf("not reloaded when due: %v", err)
	}
	if next := time.Unix(0, a.nextCheck.Load()); time.Until(next) < keysCheckInterval/2 {
		t.Fatalf("next check at %v, want about %v from now", next, keysCheckInterval)
	}
}

// TestAuthenticateConcurrentReload runs verifications while the keys file
// is rewritten (run with -race).
func TestAuthenticateConcurrentReload(t *testing.T) {
	k := authKeys()
	dir := t.TempDir()
	path := writeAuthFile(t, dir, "keys.json", jwksJSON(t, jwkSpec{kid: "a", key: k.ed.Public()}))
	log, _ := authtest.NewLogger()
	a := mustAuthenticator(t, Config{JWTKeysFile: path, JWTSecret: authTestSecret, Logger: log})
	a.checkEvery = 0
	a.nextCheck.Store(0)
	edTok := authtest.SignToken(t, jose.EdDSA, k.ed, "a", baseClaims(nil))
	hsTok := authtest.SignToken(t, jose.HS256, authTestSecret, "", baseClaims(nil))

	var wg sync.WaitGroup
	stop := make(chan struct{})
	errs := make(chan error, 8)
	for range 4 {
		wg.Go(func() {
			for {
				select {
				case <-stop:
					return
				default:
				}
				for _, tok := range []string{edTok, hsTok} {
					if _, err := a.Authenticate(Credential{Token: tok}, authNow); err != nil {
						errs <- err
						return
					}
				}
			}
		})
	}
	for i := range 50 {
		// Same keys, each write a new file (rename), sometimes broken.
		data := jwksJSON(t, jwkSpec{kid: "a", key: k.ed.Public()})
		if i%5 == 4 {
			data = data[:len(data)/2]
		}
		tmp := writeAuthFile(t, dir, "keys.tmp", data)
		if err := os.Rename(tmp, path); err != nil {
			t.Fatal(err)
		}
		if i%10 == 0 {
			_ = a.ReloadKeys()
		}
	}
	close(stop)
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
}

func TestAuthAPIKeyHelpers(t *testing.T) {
	key, err := GenerateAPIKey()
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(key, APIKeyPrefix) || len(key) != len(APIKeyPrefix)+43 {
		t.Fatalf("key %q", key)
	}
	other, _ := GenerateAPIKey()
	if other == key {
		t.Fatal("two keys alike")
	}
	// The documented shell recipe: printf %s "$KEY" | sha256sum.
	if got, want := HashAPIKey("tck_abc"), "sha256:c537139c917239b6e6dedbc1280691f379f6e1659a3779be2228759f25087e5d"; got != want {
		t.Fatalf("HashAPIKey = %q, want %q", got, want)
	}
	h := crypto.SHA256.New()
	h.Write([]byte(key))
	a := mustAuthenticator(t, Config{APIKeys: []APIKey{{Name: "svc", Hash: "sha256:" + strings.ToUpper(hexString(h.Sum(nil)))}}})
	id, err := a.Authenticate(Credential{Token: key}, authNow)
	if err != nil || id.Subject != "apikey:svc" || !id.Expires.IsZero() {
		t.Fatalf("Authenticate = %+v, %v", id, err)
	}
	// No grants configured: nothing allowed.
	if id.Grants.OpsFor("public", "orders") != 0 || id.Grants.CanPublish("chat") {
		t.Fatal("an API key without claims may do something")
	}
}

func hexString(b []byte) string {
	const digits = "0123456789abcdef"
	out := make([]byte, 0, 2*len(b))
	for _, c := range b {
		out = append(out, digits[c>>4], digits[c&15])
	}
	return string(out)
}

// FuzzAuthenticate feeds arbitrary tokens: never a panic, and every
// refusal is an *Error with a known reason that fits a close frame.
func FuzzAuthenticate(f *testing.F) {
	k := authKeys()
	cfg, apiKey := fullAuthConfig(f)
	a := mustAuthenticator(f, cfg)
	f.Add(authtest.SignToken(f, jose.HS256, authTestSecret, "", baseClaims(nil)))
	f.Add(authtest.SignToken(f, jose.ES256, k.ec, "ec1", baseClaims(nil)))
	f.Add(authtest.UnsignedToken(`{"alg":"none"}`, baseClaims(nil), ""))
	f.Add(apiKey)
	f.Add("tck_")
	f.Add("a.b.c")
	known := []string{ReasonNoToken, ReasonMalformedToken, ReasonTokenExpired, ReasonTokenNotYetValid, ReasonBadSignature,
		ReasonAlgorithm, ReasonWrongAudience, ReasonWrongIssuer, ReasonUnknownKey, ReasonUnknownAPIKey}
	f.Fuzz(func(t *testing.T, token string) {
		id, err := a.Authenticate(Credential{Token: token}, authNow)
		if err == nil {
			if id.Grants == nil {
				t.Fatal("identity without grants")
			}
			return
		}
		var ae *Error
		if !errors.As(err, &ae) {
			t.Fatalf("error %T", err)
		}
		if !slices.Contains(known, ae.Reason) && !strings.HasPrefix(ae.Reason, ReasonMalformedGrants+": ") {
			t.Fatalf("unknown reason %q", ae.Reason)
		}
		if len(ae.Reason) > maxReasonLen || !utf8.ValidString(ae.Reason) {
			t.Fatalf("reason %q does not fit a close frame", ae.Reason)
		}
	})
}
