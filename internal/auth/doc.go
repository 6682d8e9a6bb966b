// Package auth says who a client is and what it may do (DESIGN.md,
// "Security"): it verifies credentials (JWTs signed with HS256, RS256,
// ES256 or EdDSA, with key files that reload; API keys, with a keys file
// that reloads; anonymous grants for clients without one) into an
// Identity, and reads the grants of an identity (grants.go): the tables,
// operations, columns and topics it may use, the row policies pinned to
// its tables, with claim references resolved, and its limits. It does no
// network I/O; the gateway, and any other way in, authenticate through the
// Verifier interface.
//
// Library errors name Config fields (ConfigError), never the environment
// variables a program reads them from: that mapping is the program's.
//
// # Credentials
//
// A client presents one token, in a Credential (the gateway picks it from
// the upgrade request). A token that starts with APIKeyPrefix ("tck_") is a static API
// key; anything else is a JWT in compact form (three base64url parts; it
// cannot start with "tck_", since its first part encodes a JSON object and
// starts with "ey").
//
// JWTs are verified with github.com/go-jose/go-jose/v4. The algorithm is
// never taken from the token alone: HS256 is accepted only when
// Config.JWTSecret is set, and is verified with that secret only;
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
// Config.Leeway of clock skew; "iss" and "aud" when Config.Issuer
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
// one) is refused with "no subject" unless Config.AllowNoSubject is
// set; then each such token is an identity of its own, counted by the
// token's hash: clients holding different sub-less tokens never share a
// limit, and a sub-less token cannot be refreshed in band (there is no
// subject to keep: the client reconnects with the new token).
//
// API keys are stored hashed (Config.APIKeys, Config.APIKeysFile,
// HashAPIKey): the SHA-256 of the whole key, prefix included, as
// "sha256:<64 hex digits>":
//
//	printf %s "$KEY" | sha256sum
//
// GenerateAPIKey makes a new key. The keys file (ParseAPIKeys) is a JSON
// list of {"name", "hash", "claims"}; like a token, it must not repeat a
// member anywhere.
//
// A client that presents no credential at all gets Config's
// AnonymousGrants when they are set (ParseGrants), and is refused with
// "no token" when they are not. A client that presents a credential is
// judged on it, never downgraded to anonymous.
//
// # Keys files
//
// Config.JWTKeysFile is PEM (any number of "PUBLIC KEY", "RSA PUBLIC
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
// call that comes due, and by WatchAPIKeys every second so that a removed
// API key's connections are closed even when nobody connects: a stat, and
// a reload when its modification time, size or identity (inode: an atomic
// rename, a Kubernetes ConfigMap update) changed. ReloadKeys reloads both
// at once (for SIGHUP). A reload that fails (a file half written, removed,
// malformed) keeps the keys loaded before and logs the reason once per
// change of the file. Each API keys reload that changes the keys bumps a
// generation WatchAPIKeys watches: its caller (the gateway) then checks
// its identities with Current, closes the connections of keys that are
// gone (4001 "credentials revoked") and re-applies the claims of keys that
// changed.
//
// # Concurrency
//
// An Authenticator is safe for concurrent use, and so are Identities and
// Grants, which are immutable. Authenticate takes no lock:
// the key sets are immutable values behind atomic pointers, replaced
// whole by a reload; reloads are serialized by a mutex that Authenticate
// never waits on (only the one call that wins the due check does the
// stat).
//
// # Usage
//
//	a, err := auth.New(auth.Config{JWTSecret: secret, APIKeysFile: path})
//	id, err := a.Authenticate(auth.Credential{Token: tok}, time.Now())
//	if id.Grants.TableOps(db, "public", "orders").Has(schema.OpUpdate) { … }
//	go a.WatchAPIKeys(ctx, recheck) // identities of removed keys: a.Current(id) == nil
package auth
