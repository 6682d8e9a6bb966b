package auth

import (
	"crypto/sha256"
	"strings"
	"time"
)

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

// Key is what connection limits count, and what a refreshed credential
// must keep: one string per identity (SameAs), "anonymous" for every
// anonymous client together when the anonymous grants set
// limits.connections, and "" for an identity that is not counted
// (anonymous clients without such a limit).
func (id *Identity) Key() string { return id.key }

// Exp is the token's "exp" claim (Expires without the leeway), zero for a
// credential that does not expire.
func (id *Identity) Exp() time.Time { return id.exp }

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
