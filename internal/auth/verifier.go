package auth

import "time"

// Credential is what a client presents to say who it is. The gateway takes
// it from the WebSocket upgrade request; another way in (an admin API, a
// webhook's caller) takes it from its own requests.
type Credential struct {
	// Token is a JWT in compact form, or an API key (APIKeyPrefix); empty
	// when the client presents none.
	Token string
}

// Verifier tells who a client is from its credential at time now. Its
// error, when it refuses the credential, is an *Error whose Reason may be
// shown to the client. Implementations are safe for concurrent use.
//
// Authenticator is the Verifier of the configured JWTs, API keys and
// anonymous grants; another method (client certificates, a call to an
// outside service) is another Verifier of the same Identity.
type Verifier interface {
	Authenticate(cred Credential, now time.Time) (*Identity, error)
}

var _ Verifier = (*Authenticator)(nil)
