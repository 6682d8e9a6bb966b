package endpoint

import (
	"crypto/rand"
	"encoding/base64"
	"strings"
	"unicode/utf8"
)

// Webhook secrets, as Standard Webhooks writes them: "whsec_" and the
// base64 (standard, padded) of the key.
const (
	SecretPrefix = "whsec_"
	// MinSecretBytes and MaxSecretBytes bound a key (Standard Webhooks:
	// 24 to 64 bytes).
	MinSecretBytes = 24
	MaxSecretBytes = 64
	// generatedSecretBytes is the key length of a generated secret.
	generatedSecretBytes = 32
	// maskMark stands for the hidden part of a masked secret.
	maskMark = "…"
)

// GenerateSecret returns a new random webhook secret.
func GenerateSecret() string {
	key := make([]byte, generatedSecretBytes)
	_, _ = rand.Read(key) // never fails (crypto/rand)
	return SecretPrefix + base64.StdEncoding.EncodeToString(key)
}

// SecretKey returns the key of a secret (the bytes HMAC signs with), nil
// for a secret that is not whsec_ and base64.
func SecretKey(secret string) []byte {
	b64, ok := strings.CutPrefix(secret, SecretPrefix)
	if !ok {
		return nil
	}
	key, err := base64.StdEncoding.DecodeString(b64)
	if err != nil {
		return nil
	}
	return key
}

// MaskSecret hides a secret but for its prefix and last four characters:
// "whsec_…Zm9v". An operator can tell two secrets apart, no one can sign
// with it. "" stays "".
func MaskSecret(secret string) string {
	if secret == "" {
		return ""
	}
	tail := secret[max(len(secret)-4, len(SecretPrefix)):]
	return SecretPrefix + maskMark + tail
}

// isMasked reports whether s is a masked secret (MaskSecret's form).
func isMasked(s string) bool { return strings.HasPrefix(s, SecretPrefix+maskMark) }

// CredentialHeader reports whether a webhook header's value is a
// credential, masked as the secret is: Authorization (where the URL's
// check sends user:password), Proxy-Authorization, Cookie, and a name
// that says it holds one (token, secret, key, password, auth, session).
func CredentialHeader(name string) bool {
	lower := lowerASCII(name)
	switch lower {
	case "authorization", "proxy-authorization", "cookie":
		return true
	}
	for _, word := range []string{"token", "secret", "key", "password", "auth", "session"} {
		if strings.Contains(lower, word) {
			return true
		}
	}
	return false
}

// MaskHeader hides a credential header's value but for its last four
// characters when it is long enough for them to tell nothing: "…Zm9v",
// or "…" alone. "" stays "".
func MaskHeader(value string) string {
	if value == "" {
		return ""
	}
	if len(value) < 16 {
		return maskMark
	}
	tail := value[len(value)-4:]
	if !utf8.ValidString(tail) {
		return maskMark
	}
	return maskMark + tail
}

// isMaskedHeader reports whether a header value is in MaskHeader's form.
func isMaskedHeader(v string) bool { return strings.HasPrefix(v, maskMark) }
