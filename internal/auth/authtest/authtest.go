// Package authtest makes credentials for tests of package auth and of the
// servers that authenticate through it: signed and unsigned tokens, and a
// logger whose output a test can read.
package authtest

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"log/slog"
	"sync"
	"testing"

	jose "github.com/go-jose/go-jose/v4"
)

// SignToken signs claims as a compact JWT, with the header "kid" when kid
// is not empty. Claims of the one member "raw", a string, sign that string
// as the payload instead.
func SignToken(t testing.TB, alg jose.SignatureAlgorithm, key any, kid string, claims map[string]any) string {
	t.Helper()
	opts := (&jose.SignerOptions{}).WithType("JWT")
	if kid != "" {
		opts = opts.WithHeader("kid", kid)
	}
	signer, err := jose.NewSigner(jose.SigningKey{Algorithm: alg, Key: key}, opts)
	if err != nil {
		t.Fatalf("NewSigner(%s): %v", alg, err)
	}
	var payload []byte
	if raw, ok := claims["raw"].(string); ok && len(claims) == 1 {
		payload = []byte(raw)
	} else if payload, err = json.Marshal(claims); err != nil {
		t.Fatal(err)
	}
	jws, err := signer.Sign(payload)
	if err != nil {
		t.Fatalf("Sign: %v", err)
	}
	s, err := jws.CompactSerialize()
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// UnsignedToken builds a token with any header, unsigned (alg none) or
// with a made-up signature.
func UnsignedToken(header string, claims map[string]any, sig string) string {
	payload, _ := json.Marshal(claims)
	enc := base64.RawURLEncoding.EncodeToString
	return enc([]byte(header)) + "." + enc(payload) + "." + sig
}

// Buffer is a log's output, safe to write from any goroutine while a test
// reads it.
type Buffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *Buffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *Buffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// NewLogger returns a logger of every level whose text goes to the
// returned Buffer.
func NewLogger() (*slog.Logger, *Buffer) {
	var b Buffer
	return slog.New(slog.NewTextHandler(&b, &slog.HandlerOptions{Level: slog.LevelDebug})), &b
}
