package auth

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"maps"
	"reflect"
	"slices"
	"strings"
	"time"
)

// APIKeyPrefix starts every API key; a token without it is a JWT.
const APIKeyPrefix = "tck_"

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
// and hashes are valid is checked by New.
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

func (a *Authenticator) apiKey(token string) (*Identity, error) {
	// A map lookup by the hash: its timing depends on the SHA-256 of the
	// presented key, which tells an attacker nothing about stored keys.
	id, ok := (*a.apiKeys.Load())[sha256.Sum256([]byte(token))]
	if !ok {
		return nil, authErr(ReasonUnknownAPIKey, nil)
	}
	return id, nil
}

// Current returns the identity that the API key of id has in the keys
// loaded now: id itself when nothing changed, another identity of the same
// name when its claims changed, nil when the key is gone or now has
// another name (a connection of it must be closed). It is meant for
// identities of MethodAPIKey; any other is returned as it is.
func (a *Authenticator) Current(id *Identity) *Identity {
	if id.Method != MethodAPIKey {
		return id
	}
	cur := (*a.apiKeys.Load())[id.keySum]
	if cur == nil || cur.key != id.key {
		return nil
	}
	return cur
}

// WatchAPIKeys checks the API keys file every second (keysCheckInterval)
// until ctx ends, and calls changed, from its own goroutine, each time a
// reload (by this check, an Authenticate call or ReloadKeys) changed the
// keys: the caller then checks the identities it holds with Current, so
// that a removed key's connections close even when nobody connects. It
// returns at once when no API keys file is configured.
func (a *Authenticator) WatchAPIKeys(ctx context.Context, changed func()) {
	if !a.Enabled() || a.apiFile.path == "" {
		return
	}
	seen := a.apiKeysGen.Load()
	t := time.NewTicker(keysCheckInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		a.checkFiles()
		if gen := a.apiKeysGen.Load(); gen != seen {
			seen = gen
			changed()
		}
	}
}
