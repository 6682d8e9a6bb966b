package auth

import (
	"bytes"
	"crypto/sha256"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// DefaultLeeway is the clock skew allowed on exp, nbf and iat when
// Config.Leeway is zero: enough for servers kept in time by NTP and a
// client whose token was minted a moment ago, small enough that an expired
// token is not accepted for long.
const DefaultLeeway = 30 * time.Second

// maxLeeway bounds Config.Leeway: more than this is not clock skew.
const maxLeeway = 5 * time.Minute

// maxTokenLen bounds a token before any parsing: far above any real JWT
// (grants included), far below what would make parsing it costly.
const maxTokenLen = 16 << 10

// Config is how clients are authenticated. The zero value configures
// nothing: every client is anonymous (Authenticator.Enabled is false).
type Config struct {
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

// Authenticator verifies credentials: JWTs signed with the secret or a key
// of the keys file, API keys, and no credential for anonymous grants. It
// is the Verifier of every configured method. Safe for concurrent use.
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

// apiKeySet is an immutable set of API keys, by the SHA-256 of the key.
type apiKeySet map[[sha256.Size]byte]*Identity

// New checks the configuration and loads the keys files.
// Every problem is returned at once, each a *ConfigError naming the field.
func New(cfg Config) (*Authenticator, error) {
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

// Enabled reports whether any authentication method (or anonymous
// grants) is configured. When it is not, Authenticate returns
// AnonymousIdentity for every client. A nil Authenticator is not enabled.
func (a *Authenticator) Enabled() bool { return a != nil && a.enabled }

// Authenticate verifies a credential's token, a JWT or an API key
// (APIKeyPrefix), at time now and returns the identity. The error is
// always an *Error. When no method is configured (Enabled is false) every
// token, or none, is the anonymous identity. No token at all is the
// identity of the anonymous grants, when they are configured.
func (a *Authenticator) Authenticate(cred Credential, now time.Time) (*Identity, error) {
	token := cred.Token
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
