package auth

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"slices"
	"strings"
	"time"

	"github.com/go-jose/go-jose/v4"
)

// minSecretLen is the shortest HS256 secret: RFC 7518 §3.2 requires a key of
// at least the hash's size (256 bits), and go-jose refuses shorter ones.
const minSecretLen = 32

// minRSABits is the smallest RSA key accepted (NIST SP 800-57: 2048 bits
// until 2030).
const minRSABits = 2048

func (a *Authenticator) jwt(token string, now time.Time) (*Identity, error) {
	ks := a.keys.Load()
	if len(ks.algs) == 0 {
		return nil, authErr(ReasonAlgorithm, errors.New("no JWT verification is configured"))
	}
	jws, err := jose.ParseSignedCompact(token, ks.algs)
	if err != nil {
		var alg *jose.ErrUnexpectedSignatureAlgorithm
		if errors.As(err, &alg) {
			return nil, authErr(ReasonAlgorithm, fmt.Errorf("%q", alg.Got))
		}
		return nil, authErr(ReasonMalformedToken, err)
	}
	if len(jws.Signatures) != 1 {
		return nil, authErr(ReasonMalformedToken, errors.New("not one signature"))
	}
	hdr := jws.Signatures[0].Header
	alg := jose.SignatureAlgorithm(hdr.Algorithm)

	var payload []byte
	if alg == jose.HS256 {
		// The secret only: never a key of the keys file, whatever the kid.
		payload, err = jws.Verify(a.secret)
	} else {
		payload, err = ks.verify(jws, alg, hdr.KeyID)
	}
	if err != nil {
		var ae *Error
		switch {
		case errors.As(err, &ae):
			return nil, ae
		case errors.Is(err, jose.ErrCryptoFailure):
			return nil, authErr(ReasonBadSignature, nil)
		}
		return nil, authErr(ReasonMalformedToken, err)
	}

	claims, err := decodeClaims(payload)
	if err != nil {
		var ae *Error
		if errors.As(err, &ae) {
			return nil, ae
		}
		return nil, authErr(ReasonMalformedToken, fmt.Errorf("claims: %w", err))
	}
	id := &Identity{Method: MethodJWT, Claims: claims}
	if err := a.checkClaims(id, now); err != nil {
		return nil, err
	}
	if id.Subject != "" {
		id.key = keyJWT + id.Subject
	} else {
		// Each token without a subject is an identity of its own.
		sum := sha256.Sum256([]byte(token))
		id.key = keyNoSubject + hex.EncodeToString(sum[:16])
	}
	if id.Grants, err = GrantsFromClaims(claims); err != nil {
		return nil, authErr(cutUTF8(ReasonMalformedGrants+": "+err.Error(), maxReasonLen), nil)
	}
	return id, nil
}

// checkClaims checks the registered claims and sets Subject and Expires.
func (a *Authenticator) checkClaims(id *Identity, now time.Time) error {
	c := id.Claims
	exp, err := numericDate(c, "exp")
	if err != nil {
		return authErr(ReasonMalformedToken, err)
	}
	if !exp.IsZero() {
		id.exp = exp
		id.Expires = exp.Add(a.leeway)
		if !now.Before(id.Expires) {
			return authErr(ReasonTokenExpired, fmt.Errorf("expired at %s", exp.UTC().Format(time.RFC3339)))
		}
	}
	for _, name := range []string{"nbf", "iat"} {
		t, err := numericDate(c, name)
		if err != nil {
			return authErr(ReasonMalformedToken, err)
		}
		if !t.IsZero() && now.Add(a.leeway).Before(t) {
			return authErr(ReasonTokenNotYetValid, fmt.Errorf("%s is %s", name, t.UTC().Format(time.RFC3339)))
		}
	}
	sub, ok := c["sub"].(string)
	if _, has := c["sub"]; has && !ok {
		return authErr(ReasonMalformedToken, errors.New(`"sub" is not a string`))
	}
	if sub == "" && !a.allowNoSubject {
		return authErr(ReasonNoSubject, nil)
	}
	id.Subject = sub
	iss, ok := c["iss"].(string)
	if _, has := c["iss"]; has && !ok {
		return authErr(ReasonMalformedToken, errors.New(`"iss" is not a string`))
	}
	if a.issuer != "" && iss != a.issuer {
		return authErr(ReasonWrongIssuer, nil)
	}
	var aud []string
	switch v := c["aud"].(type) {
	case nil:
	case string:
		aud = []string{v}
	case []any:
		for _, e := range v {
			s, ok := e.(string)
			if !ok {
				return authErr(ReasonMalformedToken, errors.New(`"aud" is not a string or a list of strings`))
			}
			aud = append(aud, s)
		}
	default:
		return authErr(ReasonMalformedToken, errors.New(`"aud" is not a string or a list of strings`))
	}
	if a.audience != "" && !slices.Contains(aud, a.audience) {
		return authErr(ReasonWrongAudience, nil)
	}
	return nil
}

// numericDate reads a NumericDate claim (seconds since the epoch, maybe
// with a fraction); zero time when absent.
func numericDate(claims map[string]any, name string) (time.Time, error) {
	v, ok := claims[name]
	if !ok {
		return time.Time{}, nil
	}
	n, ok := v.(json.Number)
	if !ok {
		return time.Time{}, fmt.Errorf("%q is not a number", name)
	}
	f, err := n.Float64()
	// Beyond ±2^40 seconds (±34,000 years) is not a date, and would
	// overflow time arithmetic.
	if err != nil || math.IsNaN(f) || math.Abs(f) > 1<<40 {
		return time.Time{}, fmt.Errorf("%q is not a date", name)
	}
	sec, frac := math.Modf(f)
	return time.Unix(int64(sec), int64(frac*1e9)), nil
}

// keySet is an immutable set of verification keys.
type keySet struct {
	keys []authKey
	kids map[string]bool
	algs []jose.SignatureAlgorithm // accepted "alg" values: HS256 with the secret, and those of keys
}

// authKey is one public key and the algorithm it verifies.
type authKey struct {
	kid string
	alg jose.SignatureAlgorithm // RS256, ES256 or EdDSA
	key any                     // *rsa.PublicKey, *ecdsa.PublicKey, ed25519.PublicKey
}

func (ks *keySet) setAlgs(hs256 bool) {
	ks.algs = nil
	if hs256 {
		ks.algs = append(ks.algs, jose.HS256)
	}
	for _, alg := range []jose.SignatureAlgorithm{jose.RS256, jose.ES256, jose.EdDSA} {
		for _, k := range ks.keys {
			if k.alg == alg {
				ks.algs = append(ks.algs, alg)
				break
			}
		}
	}
}

// verify checks an asymmetric signature with the keys that fit the token's
// alg and kid (file comment), returning the payload.
func (ks *keySet) verify(jws *jose.JSONWebSignature, alg jose.SignatureAlgorithm, kid string) ([]byte, error) {
	knownKid := kid != "" && ks.kids[kid]
	tried := 0
	var err error
	for i := range ks.keys {
		k := &ks.keys[i]
		if k.alg != alg || knownKid && k.kid != kid || !knownKid && kid != "" && k.kid != "" {
			continue
		}
		tried++
		var payload []byte
		if payload, err = jws.Verify(k.key); err == nil {
			return payload, nil
		}
	}
	switch {
	case tried > 0:
		return nil, err
	case knownKid:
		return nil, authErr(ReasonAlgorithm, fmt.Errorf("key %q does not verify %s", kid, alg))
	}
	return nil, authErr(ReasonUnknownKey, fmt.Errorf("kid %q", kid))
}

// parseKeys reads a keys file: JSON (a JWK Set or one JWK) or PEM.
func parseKeys(data []byte, log *slog.Logger) (*keySet, error) {
	data = bytes.TrimSpace(data)
	var keys []authKey
	var err error
	switch {
	case len(data) == 0:
		return nil, errors.New("the file is empty")
	case data[0] == '{':
		keys, err = parseJWKS(data, log)
	case bytes.Contains(data, []byte("-----BEGIN ")):
		keys, err = parsePEMKeys(data)
	default:
		return nil, errors.New("neither PEM nor JWKS JSON")
	}
	if err != nil {
		return nil, err
	}
	ks := &keySet{keys: keys, kids: map[string]bool{}}
	for _, k := range keys {
		if k.kid != "" {
			ks.kids[k.kid] = true
		}
	}
	return ks, nil
}

func parsePEMKeys(data []byte) ([]authKey, error) {
	var keys []authKey
	for n := 1; ; n++ {
		var block *pem.Block
		block, data = pem.Decode(data)
		if block == nil {
			break
		}
		var pub any
		var err error
		switch block.Type {
		case "PUBLIC KEY":
			pub, err = x509.ParsePKIXPublicKey(block.Bytes)
		case "RSA PUBLIC KEY":
			pub, err = x509.ParsePKCS1PublicKey(block.Bytes)
		case "CERTIFICATE":
			var cert *x509.Certificate
			if cert, err = x509.ParseCertificate(block.Bytes); err == nil {
				pub = cert.PublicKey
			}
		default:
			if strings.Contains(block.Type, "PRIVATE") {
				return nil, fmt.Errorf("PEM block %d is a private key: give only public keys (openssl pkey -pubout)", n)
			}
			return nil, fmt.Errorf("PEM block %d is %q: want PUBLIC KEY or CERTIFICATE", n, block.Type)
		}
		if err != nil {
			return nil, fmt.Errorf("PEM block %d (%s): %w", n, block.Type, err)
		}
		k, err := newAuthKey(pub)
		if err != nil {
			return nil, fmt.Errorf("PEM block %d: %w", n, err)
		}
		keys = append(keys, k)
	}
	if len(keys) == 0 {
		return nil, errors.New("no PEM block")
	}
	return keys, nil
}

func parseJWKS(data []byte, log *slog.Logger) ([]authKey, error) {
	var set struct {
		Keys []json.RawMessage `json:"keys"`
		Kty  string            `json:"kty"`
	}
	if err := json.Unmarshal(data, &set); err != nil {
		return nil, fmt.Errorf("JWKS: %w", err)
	}
	switch {
	case set.Kty != "" && set.Keys == nil:
		set.Keys = []json.RawMessage{data} // a single JWK
	case set.Keys == nil:
		return nil, errors.New(`JWKS: no "keys" member`)
	}
	var keys []authKey
	for i, raw := range set.Keys {
		var jwk jose.JSONWebKey
		if err := jwk.UnmarshalJSON(raw); err != nil {
			if errors.Is(err, jose.ErrUnsupportedKeyType) {
				log.Warn("JWT keys file: key skipped: unsupported key type", "key", i+1)
				continue
			}
			return nil, fmt.Errorf("JWKS key %d: %w", i+1, err)
		}
		if _, ok := jwk.Key.([]byte); ok {
			return nil, fmt.Errorf("JWKS key %d (kid %q) is a symmetric key: HS256 takes its secret from the JWT secret setting only", i+1, jwk.KeyID)
		}
		if !jwk.IsPublic() {
			return nil, fmt.Errorf("JWKS key %d (kid %q) is a private key: give only public keys", i+1, jwk.KeyID)
		}
		if jwk.Use != "" && jwk.Use != "sig" {
			log.Warn("JWT keys file: key skipped: not a signature key", "key", i+1, "kid", jwk.KeyID, "use", jwk.Use)
			continue
		}
		k, err := newAuthKey(jwk.Key)
		if err != nil {
			log.Warn("JWT keys file: key skipped", "key", i+1, "kid", jwk.KeyID, "err", err)
			continue
		}
		if jwk.Algorithm != "" && jwk.Algorithm != string(k.alg) {
			log.Warn("JWT keys file: key skipped: algorithm not supported", "key", i+1, "kid", jwk.KeyID, "alg", jwk.Algorithm)
			continue
		}
		k.kid = jwk.KeyID
		keys = append(keys, k)
	}
	if len(keys) == 0 {
		return nil, errors.New("JWKS: no usable key (want RSA of 2048 bits or more for RS256, EC P-256 for ES256, Ed25519 for EdDSA)")
	}
	return keys, nil
}

// newAuthKey checks a public key and gives it the one algorithm it verifies.
func newAuthKey(pub any) (authKey, error) {
	switch k := pub.(type) {
	case *rsa.PublicKey:
		if bits := k.N.BitLen(); bits < minRSABits {
			return authKey{}, fmt.Errorf("RSA key of %d bits: at least %d needed", bits, minRSABits)
		}
		return authKey{alg: jose.RS256, key: k}, nil
	case *ecdsa.PublicKey:
		if k.Curve != elliptic.P256() {
			return authKey{}, fmt.Errorf("ECDSA key on %s: ES256 needs P-256", k.Curve.Params().Name)
		}
		return authKey{alg: jose.ES256, key: k}, nil
	case ed25519.PublicKey:
		return authKey{alg: jose.EdDSA, key: k}, nil
	}
	return authKey{}, fmt.Errorf("unsupported key type %T (want RSA, ECDSA P-256 or Ed25519)", pub)
}
