package wsgate

import (
	"net/http"
	"net/url"
	"strings"
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
)

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
