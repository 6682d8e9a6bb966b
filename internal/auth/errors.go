package auth

import "unicode/utf8"

// Reasons of an Error, short enough for a WebSocket close frame. A malformed
// grants claim has the reason "malformed grants: " and what is wrong.
const (
	ReasonNoToken          = "no token"
	ReasonMalformedToken   = "malformed token"
	ReasonTokenExpired     = "token expired"
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
	ReasonRevoked          = "credentials revoked"
)

// maxReasonLen is the most a close frame's reason may hold (RFC 6455 §5.5:
// 125 bytes of payload, 2 of them the code).
const maxReasonLen = 123

// Error is why a credential was refused. Reason is fit for the reason
// of the 4001 close frame; Err, when set, is the detail, for the log (the
// client is not told more than Reason).
type Error struct {
	Reason string
	Err    error
}

func (e *Error) Error() string {
	if e.Err == nil {
		return e.Reason
	}
	return e.Reason + ": " + e.Err.Error()
}

func (e *Error) Unwrap() error { return e.Err }

func authErr(reason string, err error) *Error { return &Error{Reason: reason, Err: err} }

// ConfigError is a problem with one field of a configuration (Config):
// Field is the field's name, for the caller to name the setting it came
// from.
type ConfigError struct {
	Field string
	Err   error
}

func (e *ConfigError) Error() string { return e.Field + ": " + e.Err.Error() }

func (e *ConfigError) Unwrap() error { return e.Err }

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
