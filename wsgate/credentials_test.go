package wsgate

import (
	"net/url"
	"testing"
)

func TestTokenFrom(t *testing.T) {
	q := func(s string) url.Values {
		v, err := url.ParseQuery(s)
		if err != nil {
			t.Fatal(err)
		}
		return v
	}
	const jwt = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ4In0.sig-_x"
	cases := []struct {
		name                 string
		query                url.Values
		auth, cookie, protos string
		wantToken, wantProto string
	}{
		{"nothing", nil, "", "", "", "", ""},
		{"query", q("token=" + jwt + "&events=create"), "", "", "", jwt, ""},
		{"query empty", q("token="), "", "", "", "", ""},
		{"bearer", nil, "Bearer " + jwt, "", "", jwt, ""},
		{"bearer any case, spaces", nil, "  bearer   " + jwt + " ", "", "", jwt, ""},
		{"basic is not bearer", nil, "Basic dXNlcjpwYXNz", "", "", "", ""},
		{"bearer empty", nil, "Bearer ", "", "", "", ""},
		{"cookie", nil, "", "theme=dark; tablecast_token=" + jwt + "; other=1", "", jwt, ""},
		{"cookie among malformed ones", nil, "", `bad cookie"; tablecast_token=` + jwt, "", jwt, ""},
		{"other cookies only", nil, "", "session=abc", "", "", ""},
		{"subprotocol", nil, "", "", "tablecast.v1, token." + jwt, jwt, Subprotocol},
		{"subprotocol, token first", nil, "", "", "token." + jwt + ",tablecast.v1", jwt, Subprotocol},
		{"subprotocol without tablecast.v1", nil, "", "", "token." + jwt, jwt, ""},
		{"subprotocol tablecast.v1 only", nil, "", "", "tablecast.v1", "", Subprotocol},
		{"subprotocol first token wins", nil, "", "", "tablecast.v1, token.first, token.second", "first", Subprotocol},
		{"subprotocol empty token", nil, "", "", "tablecast.v1, token.", "", Subprotocol},
		{"other subprotocols", nil, "", "", "mqtt, tablecast.v2", "", ""},
		{"api key in a subprotocol", nil, "", "", "tablecast.v1, token.tck_abc-DEF_1", "tck_abc-DEF_1", Subprotocol},
		{"query before bearer", q("token=fromquery"), "Bearer frombearer", "tablecast_token=fromcookie", "tablecast.v1, token.fromproto", "fromquery", Subprotocol},
		{"bearer before cookie", nil, "Bearer frombearer", "tablecast_token=fromcookie", "tablecast.v1, token.fromproto", "frombearer", Subprotocol},
		{"cookie before subprotocol", nil, "", "tablecast_token=fromcookie", "tablecast.v1, token.fromproto", "fromcookie", Subprotocol},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			tok, proto := TokenFrom(tc.query, tc.auth, tc.cookie, tc.protos)
			if tok != tc.wantToken || proto != tc.wantProto {
				t.Fatalf("TokenFrom = %q, %q; want %q, %q", tok, proto, tc.wantToken, tc.wantProto)
			}
		})
	}
}

// FuzzTokenFrom: never a panic, and the answered subprotocol is only ever
// tablecast.v1.
func FuzzTokenFrom(f *testing.F) {
	f.Add("token=x", "Bearer y", "tablecast_token=z", "tablecast.v1, token.w")
	f.Add("", "", `a="b; tablecast_token`, "token.")
	f.Fuzz(func(t *testing.T, query, auth, cookie, protos string) {
		q, _ := url.ParseQuery(query)
		_, proto := TokenFrom(q, auth, cookie, protos)
		if proto != "" && proto != Subprotocol {
			t.Fatalf("answered %q", proto)
		}
	})
}
