package auth

import (
	"encoding/base64"
	"strings"
	"testing"

	jose "github.com/go-jose/go-jose/v4"
	"github.com/tablecast/tablecast/internal/auth/authtest"
)

// benchAuthTokens returns an Authenticator configured for every method and
// one realistic token per method: registered claims, a tenant claim, and
// grants with table patterns, topics and a row policy.
func benchAuthTokens(b *testing.B) (*Authenticator, []struct{ name, token string }) {
	k := authKeys()
	cfg, apiKey := fullAuthConfig(b)
	a := mustAuthenticator(b, cfg)
	claims := baseClaims(map[string]any{
		"tenant": "acme",
		GrantsClaim: map[string]any{
			"tables":   map[string]any{"public.orders": []string{"create", "update", "delete"}, "public.*": []string{"read"}},
			"topics":   map[string]any{"subscribe": []string{"chat", "room.*"}, "publish": []string{"chat"}},
			"policies": map[string]any{"public.*": map[string]any{"tenant_id": map[string]any{"eq": map[string]any{"claim": "tenant"}}}},
			"limits":   map[string]any{"connections": 5},
		},
	})
	return a, []struct{ name, token string }{
		{"HS256", authtest.SignToken(b, jose.HS256, authTestSecret, "", claims)},
		{"RS256", authtest.SignToken(b, jose.RS256, k.rsa, "rsa1", claims)},
		{"ES256", authtest.SignToken(b, jose.ES256, k.ec, "ec1", claims)},
		{"EdDSA", authtest.SignToken(b, jose.EdDSA, k.ed, "ed1", claims)},
		{"APIKey", apiKey},
	}
}

// BenchmarkAuthenticate measures one verification on one goroutine: its
// verifies/s is what one core sustains (1e9 / ns/op), the number to set
// against a reconnect storm (10,000 clients at once need 10,000 / (that ×
// cores) seconds of CPU).
func BenchmarkAuthenticate(b *testing.B) {
	a, tokens := benchAuthTokens(b)
	for _, tc := range tokens {
		b.Run(tc.name, func(b *testing.B) {
			if _, err := a.Authenticate(Credential{Token: tc.token}, authNow); err != nil {
				b.Fatal(err)
			}
			b.ReportAllocs()
			for b.Loop() {
				if _, err := a.Authenticate(Credential{Token: tc.token}, authNow); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "verifies/s")
		})
	}
}

// BenchmarkAuthenticateParallel measures verifications on every core
// (GOMAXPROCS goroutines): verifies/s is the whole machine's rate.
func BenchmarkAuthenticateParallel(b *testing.B) {
	a, tokens := benchAuthTokens(b)
	for _, tc := range tokens {
		b.Run(tc.name, func(b *testing.B) {
			b.ReportAllocs()
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					if _, err := a.Authenticate(Credential{Token: tc.token}, authNow); err != nil {
						b.Error(err)
						return
					}
				}
			})
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "verifies/s")
		})
	}
}

// BenchmarkCheckRepeated measures the check for repeated member names on
// the claims of the realistic token of benchAuthTokens, the part of
// Authenticate it adds.
func BenchmarkCheckRepeated(b *testing.B) {
	_, tokens := benchAuthTokens(b)
	parts := strings.Split(tokens[0].token, ".")
	payload, err := base64.RawURLEncoding.DecodeString(parts[1])
	if err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	for b.Loop() {
		if err := checkRepeated(payload); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkDecodeClaims measures decoding a token's claims, the check for
// repeated names included.
func BenchmarkDecodeClaims(b *testing.B) {
	_, tokens := benchAuthTokens(b)
	parts := strings.Split(tokens[0].token, ".")
	payload, err := base64.RawURLEncoding.DecodeString(parts[1])
	if err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	for b.Loop() {
		if _, err := decodeClaims(payload); err != nil {
			b.Fatal(err)
		}
	}
}
