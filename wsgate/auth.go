// Authentication: who a client is (DESIGN.md, "Security"). What it may do
// is in grants.go.
//
// # Credentials
//
// A client presents one token (TokenFrom picks it from the upgrade
// request). A token that starts with APIKeyPrefix ("tck_") is a static API
// key; anything else is a JWT in compact form (three base64url parts; it
// cannot start with "tck_", since its first part encodes a JSON object and
// starts with "ey").
//
// JWTs are verified with github.com/go-jose/go-jose/v4. The algorithm is
// never taken from the token alone: HS256 is accepted only when
// AuthConfig.JWTSecret is set, and is verified with that secret only;
// RS256, ES256 and EdDSA only when the keys file holds a key of that type
// (RSA of 2048 bits or more, ECDSA on P-256, Ed25519), and are verified
// only with keys of that type. So "none", any other algorithm, and an
// HS256 token "signed" with a public key as the HMAC secret (the classic
// key confusion) are all refused. A token with a "kid" header is verified
// with the keys of that kid; a kid no key has is tried against the keys
// that have no kid (PEM keys, JWKs without kid), and is "unknown key" when
// there are none. A token without a kid is tried against every key of its
// algorithm's type.
//
// The claims checked: "exp" (optional; a token without it does not
// expire), "nbf" and "iat" (optional; not in the future), each with
// AuthConfig.Leeway of clock skew; "iss" and "aud" when AuthConfig.Issuer
// and Audience are set ("aud" may be a string or a list); "sub" names the
// identity. Then the grants claim (grants.go).
//
// The payload must not name a member twice, at any depth: encoding/json
// would keep the last copy and another parser the first, so a token with
// a repeated claim could mean different things to its issuer and to the
// gateway. A repeated claim is refused with "duplicate claim", a member
// repeated inside the grants claim with "malformed grants: …".
//
// # Identities
//
// An identity is what connection limits count and what an in-band
// refresh must keep (Identity.SameAs): a JWT's "sub", an API key's name,
// never one for the other (a token whose sub is "apikey:billing" is not
// the API key named billing). A token without "sub" (or with an empty
// one) is refused with "no subject" unless AuthConfig.AllowNoSubject is
// set; then each such token is an identity of its own, counted by the
// token's hash: clients holding different sub-less tokens never share a
// limit, and a sub-less token cannot be refreshed in band (there is no
// subject to keep: the client reconnects with the new token).
//
// API keys are stored hashed (AuthConfig.APIKeys, AuthConfig.APIKeysFile,
// HashAPIKey): the SHA-256 of the whole key, prefix included, as
// "sha256:<64 hex digits>":
//
//	printf %s "$KEY" | sha256sum
//
// GenerateAPIKey makes a new key. The keys file (ParseAPIKeys) is a JSON
// list of {"name", "hash", "claims"}; like a token, it must not repeat a
// member anywhere.
//
// A client that presents no credential at all gets AuthConfig's
// AnonymousGrants when they are set (ParseGrants), and is refused with
// "no token" when they are not. A client that presents a credential is
// judged on it, never downgraded to anonymous.
//
// # Keys files
//
// AuthConfig.JWTKeysFile is PEM (any number of "PUBLIC KEY", "RSA PUBLIC
// KEY" or "CERTIFICATE" blocks; a certificate is only a container for its
// key: its dates and issuer are not checked) or JSON: a JWK Set
// ({"keys": [...]}, as identity providers publish at their jwks_uri) or a
// single JWK. A private key in the file is an error. In a JWK Set, keys
// for encryption ("use": "enc"), of types or algorithms tablecast does not
// verify (RS512, PS256, P-384, …) or weak RSA keys are skipped with a
// warning in the log, as RFC 7517 §5 asks; a set with no usable key is an
// error. In a PEM file every block must be usable.
//
// Both files, the JWT keys file and the API keys file, are checked for
// changes at most once a second (keysCheckInterval), by the Authenticate
// call that comes due, and by the Gateway every second so that a removed
// API key's connections are closed even when nobody connects: a stat, and
// a reload when its modification time, size or identity (inode: an atomic
// rename, a Kubernetes ConfigMap update) changed. ReloadKeys reloads both
// at once (for SIGHUP). A reload that fails (a file half written, removed,
// malformed) keeps the keys loaded before and logs the reason once per
// change of the file. Each API keys reload that changes the keys bumps a
// generation the Gateway watches: it then closes the connections of keys
// that are gone (4001 "credentials revoked") and re-applies the claims of
// keys that changed.
//
// # Concurrency
//
// An Authenticator is safe for concurrent use. Authenticate takes no lock:
// the key sets are immutable values behind atomic pointers, replaced
// whole by a reload; reloads are serialized by a mutex that Authenticate
// never waits on (only the one call that wins the due check does the
// stat).

package wsgate

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"math"
	"net/http"
	"net/url"
	"os"
	"reflect"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"
	"unicode/utf8"

	jose "github.com/go-jose/go-jose/v4"
	"github.com/tablecast/tablecast/internal/jsonx"
)

// Credential transport (DESIGN.md, "WebSocket protocol — contract (v1)").
const (
	// TokenParam is the query parameter that may carry the token.
	TokenParam = "token"
	// TokenCookie is the cookie that may carry the token.
	TokenCookie = "tablecast_token"
	// Subprotocol is the WebSocket subprotocol of protocol v1. A browser,
	// which cannot set headers, sends its token as a second subprotocol:
	//
	//	new WebSocket(url, ["tablecast.v1", "token." + jwt])
	//
	// and the gateway answers "tablecast.v1" (never the token one). A
	// client that offers a subprotocol must offer "tablecast.v1": a browser
	// fails the handshake when the server selects none of those offered.
	Subprotocol = "tablecast.v1"
	// SubprotocolTokenPrefix starts the subprotocol that carries the token.
	// JWTs and API keys hold only characters a subprotocol may hold
	// (letters, digits, '-', '_', '.').
	SubprotocolTokenPrefix = "token."
	// APIKeyPrefix starts every API key; a token without it is a JWT.
	APIKeyPrefix = "tck_"
)

// DefaultLeeway is the clock skew allowed on exp, nbf and iat when
// AuthConfig.Leeway is zero: enough for servers kept in time by NTP and a
// client whose token was minted a moment ago, small enough that an expired
// token is not accepted for long.
const DefaultLeeway = 30 * time.Second

// maxLeeway bounds AuthConfig.Leeway: more than this is not clock skew.
const maxLeeway = 5 * time.Minute

// keysCheckInterval is how often the keys file is checked for changes: a
// rotated key is picked up within a second, at the cost of one stat a
// second while tokens arrive.
const keysCheckInterval = time.Second

// minSecretLen is the shortest HS256 secret: RFC 7518 §3.2 requires a key of
// at least the hash's size (256 bits), and go-jose refuses shorter ones.
const minSecretLen = 32

// minRSABits is the smallest RSA key accepted (NIST SP 800-57: 2048 bits
// until 2030).
const minRSABits = 2048

// maxTokenLen bounds a token before any parsing: far above any real JWT
// (grants included), far below what would make parsing it costly.
const maxTokenLen = 16 << 10

// Reasons of an AuthError, short enough for a close frame. A malformed
// grants claim has the reason "malformed grants: " and what is wrong.
const (
	ReasonNoToken          = "no token"
	ReasonMalformedToken   = "malformed token"
	ReasonTokenExpired     = CloseReasonTokenExpired // "token expired"
	ReasonTokenNotYetValid = "token not yet valid"
	ReasonBadSignature     = "bad signature"
	ReasonAlgorithm        = "algorithm not allowed"
	ReasonWrongAudience    = "wrong audience"
	ReasonWrongIssuer      = "wrong issuer"
	ReasonUnknownKey       = "unknown key"
	ReasonUnknownAPIKey    = "unknown API key"
	ReasonMalformedGrants  = "malformed grants"
	ReasonNoSubject        = "no subject"
	ReasonDuplicateClaim   = "duplicate claim"
	ReasonRevoked          = CloseReasonRevoked // "credentials revoked"
)

// maxReasonLen is the most a close frame's reason may hold (RFC 6455 §5.5:
// 125 bytes of payload, 2 of them the code).
const maxReasonLen = 123

// AuthError is why a credential was refused. Reason is fit for the reason
// of the 4001 close frame; Err, when set, is the detail, for the log (the
// client is not told more than Reason).
type AuthError struct {
	Reason string
	Err    error
}

func (e *AuthError) Error() string {
	if e.Err == nil {
		return e.Reason
	}
	return e.Reason + ": " + e.Err.Error()
}

func (e *AuthError) Unwrap() error { return e.Err }

func authErr(reason string, err error) *AuthError { return &AuthError{Reason: reason, Err: err} }

// Authentication methods, the Method of an Identity.
const (
	MethodAnonymous = "anonymous"
	MethodJWT       = "jwt"
	MethodAPIKey    = "apikey"
)

// Identity is an authenticated client. It is shared and read-only: neither
// it nor its Claims may be changed.
type Identity struct {
	// Subject is the token's "sub" ("" when it has none), "apikey:<name>"
	// for an API key, "" for the anonymous identity.
	Subject string
	// Method is MethodJWT, MethodAPIKey or MethodAnonymous.
	Method string
	// Expires is when the credential stops being valid: the token's "exp"
	// plus the leeway (the last instant Authenticate would still accept
	// it), zero for none (API keys, tokens without exp, anonymous). The
	// gateway closes the connection with 4001 "token expired" then.
	Expires time.Time
	// Grants says what the identity may do; never nil.
	Grants *Grants
	// Claims are the token's claims as encoding/json decodes them, numbers
	// as json.Number; an API key's configured Claims. Nil for anonymous.
	Claims map[string]any

	// key is what connection limits count and a refresh must keep:
	// "jwt:<sub>", "jwt-token:<hash of the token>" for a token without
	// sub, "apikey:<name>", "anonymous" for anonymous clients whose grants
	// set limits.connections, "" for those not counted.
	key string
	// exp is the token's "exp" claim (Expires without the leeway), zero
	// for none.
	exp time.Time
	// keySum is an API key's SHA-256, by which a reload of the keys file
	// tells whether the key a connection presented is still there.
	keySum [sha256.Size]byte
}

// SameAs reports whether id and o are the same identity: the same token
// subject, or the same API key name. A token without a subject is the same
// as no other token. A connection may refresh its credential only with one
// of the same identity.
func (id *Identity) SameAs(o *Identity) bool {
	return id.key != "" && id.key == o.key && !strings.HasPrefix(id.key, keyNoSubject) && id.Method != MethodAnonymous
}

// Prefixes of Identity.key.
const (
	keyJWT       = "jwt:"
	keyNoSubject = "jwt-token:"
	keyAPIKey    = "apikey:"
	keyAnonymous = "anonymous"
)

// anonymous is the one anonymous identity when no authentication is
// configured: it holds nothing per client.
var anonymous = &Identity{Method: MethodAnonymous, Grants: allGrants}

// AnonymousIdentity is the identity of every client when no authentication
// method is configured: everything allowed, no row policies, no limits of
// its own.
func AnonymousIdentity() *Identity { return anonymous }

// AuthConfig is how clients are authenticated. The zero value configures
// nothing: every client is anonymous (Authenticator.Enabled is false).
type AuthConfig struct {
	// JWTSecret is the HS256 shared secret, at least 32 bytes. Empty:
	// HS256 tokens are refused.
	JWTSecret []byte
	// JWTKeysFile is a PEM or JWKS file of the public keys that verify
	// RS256, ES256 and EdDSA tokens, reloaded when it changes (file
	// comment). Empty: those algorithms are refused.
	JWTKeysFile string
	// Audience, when set, must be in the token's "aud". Empty: not checked.
	Audience string
	// Issuer, when set, must be the token's "iss". Empty: not checked.
	Issuer string
	// Leeway is the clock skew allowed on exp, nbf and iat, at most 5m.
	// Zero: DefaultLeeway (30s); negative: none.
	Leeway time.Duration
	// AllowNoSubject accepts tokens without "sub", each counted as an
	// identity of its own (file comment). False: they are refused with
	// "no subject".
	AllowNoSubject bool
	// APIKeys are static keys of services, beside those of APIKeysFile.
	// Empty: none.
	APIKeys []APIKey
	// APIKeysFile is a JSON file of API keys (ParseAPIKeys), reloaded when
	// it changes (file comment). Empty: none.
	APIKeysFile string
	// AnonymousGrants are the grants of clients that present no
	// credential (ParseGrants). Nil: such clients are refused with
	// "no token" once any method is configured. Setting it turns
	// authentication on by itself: a gateway with only anonymous grants
	// serves those to everyone and refuses every credential.
	AnonymousGrants *Grants
	// Logger receives key reloads and skipped keys. Nil: slog.Default().
	Logger *slog.Logger
}

// ConfigError is a problem with one field of a configuration (AuthConfig):
// Field is the field's name, for the caller to name the setting it came
// from.
type ConfigError struct {
	Field string
	Err   error
}

func (e *ConfigError) Error() string { return e.Field + ": " + e.Err.Error() }

func (e *ConfigError) Unwrap() error { return e.Err }

// APIKey is one static key of a service, stored hashed.
type APIKey struct {
	// Name identifies the key: in logs, and as the identity connection
	// limits count (the Subject is "apikey:<name>"). Required, unique.
	Name string
	// Hash is HashAPIKey of the key: "sha256:<64 hex digits>". Required,
	// unique.
	Hash string
	// Claims give the key's grants, in the shape of a token's claims: the
	// grants claim "tablecast" (grants.go), and any claim its row policies
	// refer to. Nil: the key may read and publish nothing.
	Claims map[string]any
}

// HashAPIKey returns the form an API key is stored in, "sha256:<hex>".
func HashAPIKey(key string) string {
	sum := sha256.Sum256([]byte(key))
	return "sha256:" + hex.EncodeToString(sum[:])
}

// GenerateAPIKey returns a new random API key: APIKeyPrefix and 32 random
// bytes in base64url (256 bits: a key cannot be guessed, and its unsalted
// SHA-256 cannot be reversed).
func GenerateAPIKey() (string, error) {
	var b [32]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", fmt.Errorf("generate API key: %w", err)
	}
	return APIKeyPrefix + base64.RawURLEncoding.EncodeToString(b[:]), nil
}

// Authenticator verifies credentials. Safe for concurrent use.
type Authenticator struct {
	secret         []byte
	audience       string
	issuer         string
	leeway         time.Duration
	allowNoSubject bool
	staticKeys     []APIKey
	anon           *Identity // nil: no anonymous grants
	log            *slog.Logger
	enabled        bool

	keys       atomic.Pointer[keySet]    // never nil after New
	apiKeys    atomic.Pointer[apiKeySet] // never nil after New
	apiKeysGen atomic.Uint64             // bumped by each reload that changes apiKeys
	checkEvery time.Duration             // keysCheckInterval; tests set 0
	nextCheck  atomic.Int64              // UnixNano when the files are due

	reloadMu sync.Mutex // serializes reloads; guards the watches
	keysFile watch      // JWTKeysFile
	apiFile  watch      // APIKeysFile
}

// watch is a file reloaded when it changes.
type watch struct {
	path    string
	seen    os.FileInfo // the file as last read (loaded or refused)
	missing bool        // the last stat failed (logged once)
}

// apiKeySet is an immutable set of API keys, by the SHA-256 of the key.
type apiKeySet map[[sha256.Size]byte]*Identity

// NewAuthenticator checks the configuration and loads the keys files.
// Every problem is returned at once, each a *ConfigError naming the field.
func NewAuthenticator(cfg AuthConfig) (*Authenticator, error) {
	a := &Authenticator{
		secret:         bytes.Clone(cfg.JWTSecret),
		keysFile:       watch{path: cfg.JWTKeysFile},
		apiFile:        watch{path: cfg.APIKeysFile},
		audience:       cfg.Audience,
		issuer:         cfg.Issuer,
		leeway:         cfg.Leeway,
		allowNoSubject: cfg.AllowNoSubject,
		staticKeys:     slices.Clone(cfg.APIKeys),
		log:            cfg.Logger,
		checkEvery:     keysCheckInterval,
	}
	if a.log == nil {
		a.log = slog.Default()
	}
	var errs []error
	bad := func(field string, err error) { errs = append(errs, &ConfigError{Field: field, Err: err}) }
	if n := len(a.secret); n > 0 && n < minSecretLen {
		bad("JWTSecret", fmt.Errorf("%d bytes is too short: HS256 needs at least %d", n, minSecretLen))
	}
	switch {
	case a.leeway == 0:
		a.leeway = DefaultLeeway
	case a.leeway < 0:
		a.leeway = 0
	case a.leeway > maxLeeway:
		bad("Leeway", fmt.Errorf("%s is more than the %s allowed for clock skew", a.leeway, maxLeeway))
	}
	if (a.audience != "" || a.issuer != "") && len(a.secret) == 0 && a.keysFile.path == "" {
		field := "Audience"
		if a.audience == "" {
			field = "Issuer"
		}
		bad(field, errors.New("set, but neither a JWT secret nor a JWT keys file verifies tokens"))
	}
	ks := &keySet{}
	if a.keysFile.path != "" {
		fi, data, err := readKeysFile(a.keysFile.path)
		if err == nil {
			ks, err = parseKeys(data, a.log.With("file", a.keysFile.path))
		}
		if err != nil {
			bad("JWTKeysFile", err)
			ks = &keySet{}
		}
		a.keysFile.seen = fi
	}
	ks.setAlgs(len(a.secret) > 0)
	a.keys.Store(ks)
	var fileKeys []APIKey
	if a.apiFile.path != "" {
		fi, data, err := readKeysFile(a.apiFile.path)
		if err == nil {
			fileKeys, err = ParseAPIKeys(data)
		}
		if err != nil {
			bad("APIKeysFile", err)
		}
		a.apiFile.seen = fi
	}
	set, err := a.buildAPIKeys(fileKeys, nil)
	if err != nil {
		errs = append(errs, err)
		set = apiKeySet{}
	}
	a.apiKeys.Store(&set)
	if g := cfg.AnonymousGrants; g != nil {
		for _, p := range g.policies {
			if p.err != nil {
				bad("AnonymousGrants", fmt.Errorf("the row policy of %s refers to a claim, and anonymous clients have none", p.pat))
				break
			}
		}
		a.anon = &Identity{Method: MethodAnonymous, Grants: g}
		if g.Limits().Connections > 0 {
			a.anon.key = keyAnonymous
		}
	}
	a.nextCheck.Store(time.Now().Add(a.checkEvery).UnixNano())
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	a.enabled = len(a.secret) > 0 || a.keysFile.path != "" || len(a.staticKeys) > 0 || a.apiFile.path != "" || a.anon != nil
	return a, nil
}

// buildAPIKeys checks the static keys and those of the file and returns
// them as a set. An entry of old with the same key, name and claims is
// kept as it was, so that a reload tells changed keys by their identity
// pointer. Problems are *ConfigErrors of APIKeys or APIKeysFile.
func (a *Authenticator) buildAPIKeys(fileKeys []APIKey, old apiKeySet) (apiKeySet, error) {
	var errs []error
	names := map[string]bool{}
	set := make(apiKeySet, len(a.staticKeys)+len(fileKeys))
	add := func(field string, keys []APIKey) {
		for i, k := range keys {
			bad := func(format string, args ...any) {
				errs = append(errs, &ConfigError{Field: field, Err: fmt.Errorf("key %d (%q): %s", i+1, k.Name, fmt.Sprintf(format, args...))})
			}
			if k.Name == "" {
				bad("no name")
			} else if names[k.Name] {
				bad("the name is used twice")
			}
			names[k.Name] = true
			hexSum, ok := strings.CutPrefix(k.Hash, "sha256:")
			var sum [sha256.Size]byte
			if n, err := hex.Decode(sum[:], []byte(hexSum)); !ok || err != nil || n != sha256.Size || len(hexSum) != 2*sha256.Size {
				bad(`hash must be "sha256:" and 64 hex digits (HashAPIKey; printf %%s "$KEY" | sha256sum)`)
				continue
			}
			if _, dup := set[sum]; dup {
				bad("the same key as another")
				continue
			}
			claims, err := normalizeClaims(k.Claims)
			if err != nil {
				bad("claims: %v", err)
				continue
			}
			grants, err := GrantsFromClaims(claims)
			if err != nil {
				bad("%s: %v", ReasonMalformedGrants, err)
				continue
			}
			id := &Identity{Subject: keyAPIKey + k.Name, Method: MethodAPIKey, Grants: grants, Claims: claims,
				key: keyAPIKey + k.Name, keySum: sum}
			if prev := old[sum]; prev != nil && prev.key == id.key && reflect.DeepEqual(prev.Claims, id.Claims) {
				id = prev
			}
			set[sum] = id
		}
	}
	add("APIKeys", a.staticKeys)
	add("APIKeysFile", fileKeys)
	return set, errors.Join(errs...)
}

// ParseAPIKeys reads an API keys file: a JSON list of objects with the
// members "name", "hash" and "claims" (the APIKey fields; claims may be
// absent or null). A member given twice anywhere, or a member it does not
// know, is an error: a misspelt "claims" must not silently grant nothing,
// and a repeated one must not mean what one parser picks. Whether names
// and hashes are valid is checked by NewAuthenticator.
func ParseAPIKeys(data []byte) ([]APIKey, error) {
	v, err := decodeStrictJSON(data)
	if err != nil {
		return nil, fmt.Errorf("not a JSON list of {name, hash, claims}: %w", err)
	}
	list, ok := v.([]any)
	if !ok {
		return nil, errors.New("not a JSON list of {name, hash, claims}")
	}
	keys := make([]APIKey, 0, len(list))
	for i, e := range list {
		obj, ok := e.(map[string]any)
		if !ok {
			return nil, fmt.Errorf("key %d is not an object {name, hash, claims}", i+1)
		}
		var k APIKey
		for _, m := range slices.Sorted(maps.Keys(obj)) {
			var ok bool
			switch m {
			case "name":
				k.Name, ok = obj[m].(string)
			case "hash":
				k.Hash, ok = obj[m].(string)
			case "claims":
				k.Claims, ok = obj[m].(map[string]any)
				ok = ok || obj[m] == nil
			default:
				return nil, fmt.Errorf("key %d: unknown member %q (want name, hash and claims)", i+1, m)
			}
			if !ok {
				return nil, fmt.Errorf("key %d: %q has the wrong type (name and hash are strings, claims an object)", i+1, m)
			}
		}
		keys = append(keys, k)
	}
	return keys, nil
}

// ParseGrants reads a grants object, in the language of the grants claim
// (grants.go): {"tables": …, "topics": …, "policies": …, "limits": …}. A
// member given twice anywhere is an error, as in a token.
func ParseGrants(data []byte) (*Grants, error) {
	v, err := decodeStrictJSON(data)
	if err != nil {
		return nil, fmt.Errorf("grants are not valid JSON: %w", err)
	}
	if _, ok := v.(map[string]any); !ok {
		return nil, errors.New(`grants must be a JSON object like {"tables": {"public.prices": ["*"]}}`)
	}
	return GrantsFromClaims(map[string]any{GrantsClaim: v})
}

// decodeStrictJSON decodes one JSON value (numbers as json.Number),
// refusing an object that repeats a member name.
func decodeStrictJSON(data []byte) (any, error) {
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.UseNumber()
	v, err := decodeStrict(dec, 0)
	if err != nil {
		return nil, err
	}
	if _, err := dec.Token(); err != io.EOF {
		return nil, errors.New("data after the value")
	}
	return v, nil
}

// normalizeClaims gives configured claims the types a token's claims have
// (JSON objects as map[string]any, numbers as json.Number), whatever Go
// types the configuration used.
func normalizeClaims(claims map[string]any) (map[string]any, error) {
	if claims == nil {
		return map[string]any{}, nil
	}
	b, err := json.Marshal(claims)
	if err != nil {
		return nil, err
	}
	return decodeClaims(b)
}

// decodeClaims decodes a JSON object, numbers as json.Number so that no
// integer claim loses digits. A member repeated anywhere is an error
// (checkRepeated): an *AuthError "duplicate claim" at the top level and
// outside the grants claim, "malformed grants: …" inside it.
func decodeClaims(b []byte) (map[string]any, error) {
	if err := checkRepeated(b); err != nil {
		return nil, err
	}
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.UseNumber()
	var claims map[string]any
	if err := dec.Decode(&claims); err != nil {
		return nil, err
	}
	if claims == nil {
		return nil, errors.New("claims are not a JSON object")
	}
	if _, err := dec.Token(); err != io.EOF {
		return nil, errors.New("data after the claims object")
	}
	return claims, nil
}

// maxClaimsDepth bounds how deeply a token's claims may nest: far beyond
// any real token, and it bounds the recursion of the check for repeated
// names.
const maxClaimsDepth = 64

// checkRepeated refuses claims that name a member twice in any object, at
// any depth. It reads the bytes once, without decoding them (a token's
// claims are checked on every connection): names are compared as slices of
// the payload, decoded only when they hold escapes or non-ASCII. What is
// not valid JSON is left for the decoder to report.
func checkRepeated(payload []byte) error {
	d := repeatScan{b: payload, names: make([]repeatName, 0, 32)}
	i := jsonx.SkipSpace(payload, 0)
	if i >= len(payload) || payload[i] != '{' {
		return nil
	}
	_, err := d.value(i, 0)
	switch {
	case err == errRepeated && d.claim == nil:
		return authErr(ReasonDuplicateClaim, fmt.Errorf("claim %q is repeated", d.name))
	case err == errRepeated && jsonx.DecodeString(d.claim) == GrantsClaim:
		return authErr(cutUTF8(ReasonMalformedGrants+": "+repeatedMemberError(d.name).Error(), maxReasonLen), nil)
	case err == errRepeated:
		return authErr(ReasonDuplicateClaim, fmt.Errorf("claim %q: %w", jsonx.DecodeString(d.claim), repeatedMemberError(d.name)))
	case err == jsonx.ErrTooDeep:
		return fmt.Errorf("claims nested deeper than %d", maxClaimsDepth)
	}
	return nil // valid, or for the decoder to refuse
}

var errRepeated = errors.New("repeated member")

// repeatScan is checkRepeated's scanner.
type repeatScan struct {
	b     []byte
	names []repeatName  // the names of the objects open, outermost first
	claim []byte        // the top-level member being read; nil when a claim itself is repeated
	name  string        // the repeated name, once found
	skip  jsonx.Scanner // skips scalars
}

// repeatName is a member name as it is in the payload.
type repeatName struct {
	raw   []byte
	plain bool // no escapes, ASCII: its bytes are its value
}

func (n repeatName) equal(o repeatName) bool {
	if n.plain && o.plain {
		return bytes.Equal(n.raw, o.raw)
	}
	return jsonx.DecodeString(n.raw) == jsonx.DecodeString(o.raw)
}

// value reads the value at b[i] and returns the index after it:
// errRepeated when an object in it repeats a name, jsonx.ErrTooDeep, or jsonx.ErrSyntax.
func (d *repeatScan) value(i, depth int) (int, error) {
	b := d.b
	if i >= len(b) {
		return i, jsonx.ErrSyntax
	}
	if b[i] != '{' && b[i] != '[' {
		return d.skip.SkipValue(b, i)
	}
	if depth > maxClaimsDepth {
		return i, jsonx.ErrTooDeep
	}
	open, end := b[i], byte('}')
	if open == '[' {
		end = ']'
	}
	start := len(d.names)
	defer func() { d.names = d.names[:start] }()
	if i = jsonx.SkipSpace(b, i+1); i < len(b) && b[i] == end {
		return i + 1, nil
	}
	for {
		if open == '{' {
			if i >= len(b) || b[i] != '"' {
				return i, jsonx.ErrSyntax
			}
			after, plain, ok := jsonx.ScanString(b, i)
			if !ok {
				return i, jsonx.ErrSyntax
			}
			n := repeatName{raw: b[i+1 : after-1], plain: plain}
			for _, o := range d.names[start:] {
				if o.equal(n) {
					d.name = jsonx.DecodeString(n.raw)
					if depth == 0 {
						d.claim = nil // a claim itself is repeated
					}
					return i, errRepeated
				}
			}
			d.names = append(d.names, n)
			if depth == 0 {
				d.claim = n.raw
			}
			if i = jsonx.SkipSpace(b, after); i >= len(b) || b[i] != ':' {
				return i, jsonx.ErrSyntax
			}
			i = jsonx.SkipSpace(b, i+1)
		}
		var err error
		if i, err = d.value(i, depth+1); err != nil {
			return i, err
		}
		var more bool
		if i, more, err = jsonx.Next(b, i, end); err != nil || !more {
			return i, err
		}
	}
}

// Enabled reports whether any authentication method (or anonymous
// grants) is configured. When it is not, Authenticate returns
// AnonymousIdentity for every client. A nil Authenticator is not enabled.
func (a *Authenticator) Enabled() bool { return a != nil && a.enabled }

// Authenticate verifies a token, a JWT or an API key (APIKeyPrefix), at
// time now and returns the identity. The error is always an *AuthError.
// When no method is configured (Enabled is false) every token, or none,
// is the anonymous identity. No token at all is the identity of the
// anonymous grants, when they are configured.
func (a *Authenticator) Authenticate(token string, now time.Time) (*Identity, error) {
	if !a.Enabled() {
		return AnonymousIdentity(), nil
	}
	a.checkFilesIfDue()
	switch {
	case token == "" && a.anon != nil:
		return a.anon, nil
	case token == "":
		return nil, authErr(ReasonNoToken, nil)
	case len(token) > maxTokenLen:
		return nil, authErr(ReasonMalformedToken, fmt.Errorf("%d bytes, more than %d", len(token), maxTokenLen))
	case strings.HasPrefix(token, APIKeyPrefix):
		return a.apiKey(token)
	}
	return a.jwt(token, now)
}

func (a *Authenticator) apiKey(token string) (*Identity, error) {
	// A map lookup by the hash: its timing depends on the SHA-256 of the
	// presented key, which tells an attacker nothing about stored keys.
	id, ok := (*a.apiKeys.Load())[sha256.Sum256([]byte(token))]
	if !ok {
		return nil, authErr(ReasonUnknownAPIKey, nil)
	}
	return id, nil
}

// currentAPIKey returns the identity that the API key of id has in the
// keys loaded now: id itself when nothing changed, another identity of
// the same name when its claims changed, nil when the key is gone or now
// has another name (the connection must be closed).
func (a *Authenticator) currentAPIKey(id *Identity) *Identity {
	cur := (*a.apiKeys.Load())[id.keySum]
	if cur == nil || cur.key != id.key {
		return nil
	}
	return cur
}

// apiKeysGeneration counts the reloads that changed the API keys.
func (a *Authenticator) apiKeysGeneration() uint64 { return a.apiKeysGen.Load() }

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
		var ae *AuthError
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
		var ae *AuthError
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

// cutUTF8 cuts s to at most max bytes at a character boundary, ending in
// "..." when cut.
func cutUTF8(s string, max int) string {
	if len(s) <= max {
		return s
	}
	cut := max - 3
	for cut > 0 && !utf8.RuneStart(s[cut]) {
		cut--
	}
	return s[:cut] + "..."
}

// TokenFrom picks the credentials of an upgrade request, the first present
// of: the query parameter "token" (TokenParam), the header "Authorization:
// Bearer <token>" (the scheme in any case), the cookie "tablecast_token"
// (TokenCookie; cookie is the raw Cookie header), and a
// Sec-WebSocket-Protocol value "token.<token>" (SubprotocolTokenPrefix;
// protocols is the header's value, or its values joined with ", "). An
// empty value counts as absent.
//
// answerProto is the subprotocol the gateway must answer: Subprotocol
// ("tablecast.v1") when the client offered it, whatever carried the token,
// else "". The token subprotocol is never answered, so the token does not
// come back in the response.
func TokenFrom(query url.Values, authorization, cookie, protocols string) (token, answerProto string) {
	var protoToken string
	for p := range strings.SplitSeq(protocols, ",") {
		p = strings.TrimSpace(p)
		switch {
		case p == Subprotocol:
			answerProto = Subprotocol
		case protoToken == "" && strings.HasPrefix(p, SubprotocolTokenPrefix):
			protoToken = p[len(SubprotocolTokenPrefix):]
		}
	}
	if t := query.Get(TokenParam); t != "" {
		return t, answerProto
	}
	if scheme, t, ok := strings.Cut(strings.TrimSpace(authorization), " "); ok && strings.EqualFold(scheme, "Bearer") {
		if t = strings.TrimSpace(t); t != "" {
			return t, answerProto
		}
	}
	if cookie != "" {
		// Request.Cookie parses leniently: a malformed cookie of another
		// application on the same site does not hide ours.
		r := http.Request{Header: http.Header{"Cookie": {cookie}}}
		if c, err := r.Cookie(TokenCookie); err == nil && c.Value != "" {
			return c.Value, answerProto
		}
	}
	return protoToken, answerProto
}

// ReloadKeys reads the JWT keys file and the API keys file now, whether or
// not they changed. On error the keys loaded before stay in use; the error
// says which file failed and why.
func (a *Authenticator) ReloadKeys() error {
	if a == nil {
		return nil
	}
	a.reloadMu.Lock()
	defer a.reloadMu.Unlock()
	var errs []error
	if a.keysFile.path != "" {
		errs = append(errs, a.reloadJWTKeysLocked())
	}
	if a.apiFile.path != "" {
		errs = append(errs, a.reloadAPIKeysLocked())
	}
	return errors.Join(errs...)
}

// checkFilesIfDue checks the files for changes when that is due. One
// caller wins the due check; the others go on with the keys they have.
func (a *Authenticator) checkFilesIfDue() {
	if a.keysFile.path == "" && a.apiFile.path == "" {
		return
	}
	now := time.Now().UnixNano()
	next := a.nextCheck.Load()
	if now >= next && a.nextCheck.CompareAndSwap(next, now+int64(a.checkEvery)) {
		a.checkFiles()
	}
}

// checkFiles reloads each file that changed since it was last read.
func (a *Authenticator) checkFiles() {
	a.reloadMu.Lock()
	defer a.reloadMu.Unlock()
	if a.keysFile.changed(a.log, "JWT keys file") {
		_ = a.reloadJWTKeysLocked() // logged
	}
	if a.apiFile.changed(a.log, "API keys file") {
		_ = a.reloadAPIKeysLocked() // logged
	}
}

// changed stats the file and reports whether it differs from the one last
// read. A file that cannot be stat'ed is logged once and counts as
// unchanged: the keys loaded before stay.
func (w *watch) changed(log *slog.Logger, what string) bool {
	if w.path == "" {
		return false
	}
	fi, err := os.Stat(w.path)
	if err != nil {
		if !w.missing {
			log.Error(what+" unreadable; keeping the keys loaded before", "file", w.path, "err", err)
		}
		w.missing = true
		return false
	}
	w.missing = false
	old := w.seen
	return old == nil || !os.SameFile(old, fi) || !old.ModTime().Equal(fi.ModTime()) || old.Size() != fi.Size()
}

// read reads the file, remembering even a refused one, so that it is
// logged once, not every second; a change to it is tried again.
func (w *watch) read() ([]byte, error) {
	fi, data, err := readKeysFile(w.path)
	if fi != nil {
		w.seen = fi
	}
	return data, err
}

func (a *Authenticator) reloadJWTKeysLocked() error {
	path := a.keysFile.path
	data, err := a.keysFile.read()
	var ks *keySet
	if err == nil {
		ks, err = parseKeys(data, a.log.With("file", path))
	}
	if err != nil {
		a.log.Error("JWT keys file reload failed; keeping the keys loaded before", "file", path, "err", err)
		return fmt.Errorf("reload %s: %w", path, err)
	}
	ks.setAlgs(len(a.secret) > 0)
	a.keys.Store(ks)
	a.log.Info("JWT keys loaded", "file", path, "keys", len(ks.keys))
	return nil
}

// reloadAPIKeysLocked reads the API keys file and, when the keys changed,
// replaces them and bumps the generation the gateway watches.
func (a *Authenticator) reloadAPIKeysLocked() error {
	path := a.apiFile.path
	data, err := a.apiFile.read()
	var fileKeys []APIKey
	if err == nil {
		fileKeys, err = ParseAPIKeys(data)
	}
	old := *a.apiKeys.Load()
	var set apiKeySet
	if err == nil {
		set, err = a.buildAPIKeys(fileKeys, old)
	}
	if err != nil {
		a.log.Error("API keys file reload failed; keeping the keys loaded before", "file", path, "err", err)
		return fmt.Errorf("reload %s: %w", path, err)
	}
	same := len(set) == len(old)
	for sum, id := range set {
		same = same && old[sum] == id
	}
	a.apiKeys.Store(&set)
	if !same {
		a.apiKeysGen.Add(1)
	}
	a.log.Info("API keys loaded", "file", path, "keys", len(set), "changed", !same)
	return nil
}

// readKeysFile reads the file and the state it was read in (stat of the
// open file, so that the state is never newer than the content).
func readKeysFile(path string) (os.FileInfo, []byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, nil, err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, nil, err
	}
	const maxKeysFile = 1 << 20 // a JWKS of hundreds of keys is ~100 KB
	data, err := io.ReadAll(io.LimitReader(f, maxKeysFile+1))
	if err == nil && len(data) > maxKeysFile {
		err = fmt.Errorf("%s: larger than %d bytes", path, maxKeysFile)
	}
	if err != nil {
		return fi, nil, err
	}
	return fi, data, nil
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
