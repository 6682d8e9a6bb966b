package stream

import (
	"errors"
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/tablecast/tablecast/schema"
)

func TestAppendToken(t *testing.T) {
	tests := []struct {
		name, want string
	}{
		{"orders", "orders"},
		{"Orders", "Orders"},
		{"MixedCase_Table1", "MixedCase_Table1"},
		{"order.items", "order%2Eitems"},
		{"order items", "order%20items"},
		{"a*b", "a%2Ab"},
		{"a>b", "a%3Eb"},
		{"*", "%2A"},
		{">", "%3E"},
		{"100%", "100%25"},
		{"%2E", "%252E"},
		{"tab\there", "tab%09here"},
		{"cr\rlf\n", "cr%0Dlf%0A"},
		{"nul\x00", "nul%00"},
		{"del\x7f", "del%7F"},
		{"bell\x07", "bell%07"},
		{"café", "café"},
		{"заказы", "заказы"},
		{"表", "表"},
		{"emoji😀", "emoji😀"},
		{"bad\xffutf8", "bad%FFutf8"},
		{"\xe2\x82", "%E2%82"}, // truncated 3-byte sequence
		{"\uFFFD", "\uFFFD"},   // a real replacement character is valid UTF-8
		{"$dollar-sign_ok", "$dollar-sign_ok"},
		{"", "%"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := string(AppendToken(nil, tt.name))
			if got != tt.want {
				t.Fatalf("AppendToken(%q) = %q, want %q", tt.name, got, tt.want)
			}
			if tok := Token(tt.name); tok != tt.want {
				t.Fatalf("Token(%q) = %q, want %q", tt.name, tok, tt.want)
			}
			back, err := DecodeToken(got)
			if err != nil {
				t.Fatalf("DecodeToken(%q): %v", got, err)
			}
			if back != tt.name {
				t.Fatalf("DecodeToken(%q) = %q, want %q", got, back, tt.name)
			}
		})
	}
}

func TestDecodeToken(t *testing.T) {
	tests := []struct {
		tok, want string
		wantErr   bool
	}{
		{tok: "orders", want: "orders"},
		{tok: "a%2eb", want: "a.b"}, // lower-case hex accepted
		{tok: "a%2Eb", want: "a.b"},
		{tok: "%", want: ""},
		{tok: "%25", want: "%"},
		{tok: "", wantErr: true},
		{tok: "a%", wantErr: true},
		{tok: "a%2", wantErr: true},
		{tok: "a%2G", wantErr: true},
		{tok: "%%", wantErr: true},
		{tok: "a.b", wantErr: true},
		{tok: "*", wantErr: true},
		{tok: ">", wantErr: true},
		{tok: "a b", wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.tok, func(t *testing.T) {
			got, err := DecodeToken(tt.tok)
			if tt.wantErr {
				if err == nil {
					t.Fatalf("DecodeToken(%q) = %q, want an error", tt.tok, got)
				}
				if !errors.Is(err, ErrMalformedToken) {
					t.Fatalf("DecodeToken(%q) error %v does not wrap ErrMalformedToken", tt.tok, err)
				}
				return
			}
			if err != nil || got != tt.want {
				t.Fatalf("DecodeToken(%q) = %q, %v; want %q", tt.tok, got, err, tt.want)
			}
		})
	}
}

func TestSubjects(t *testing.T) {
	tests := []struct {
		name string
		got  string
		want string
	}{
		{"change", ChangeSubject("tablecast", "shop", "public", "orders", schema.OpUpdate), "tablecast.shop.public.orders.update"},
		{"change multi-token prefix", ChangeSubject("acme.cdc", "shop", "public", "orders", schema.OpCreate), "acme.cdc.shop.public.orders.create"},
		{"change encoded", ChangeSubject("tablecast", "my db", "Sales.EU", "order*items>", schema.OpDelete), "tablecast.my%20db.Sales%2EEU.order%2Aitems%3E.delete"},
		{"change unicode", ChangeSubject("tablecast", "магазин", "public", "заказы", schema.OpRead), "tablecast.магазин.public.заказы.read"},
		{"table", TableSubjects("tablecast", "shop", "public", "orders"), "tablecast.shop.public.orders.>"},
		{"table any db", TableSubjects("tablecast", "", "public", "orders"), "tablecast.*.public.orders.>"},
		{"table encoded", TableSubjects("tablecast", "shop", "a.b", "100%"), "tablecast.shop.a%2Eb.100%25.>"},
		{"topic", TopicSubject("tablecast", "chat"), "tablecast.topic.chat"},
		{"topic encoded", TopicSubject("tablecast", "chat.room 1"), "tablecast.topic.chat%2Eroom%201"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if tt.got != tt.want {
				t.Fatalf("got %q, want %q", tt.got, tt.want)
			}
		})
	}
}

func TestAppendChangeSubjectAllocs(t *testing.T) {
	buf := make([]byte, 0, 256)
	allocs := testing.AllocsPerRun(1000, func() {
		buf = AppendChangeSubject(buf[:0], "tablecast", "shop", "Sales.EU", "order items", schema.OpUpdate)
	})
	if allocs != 0 {
		t.Fatalf("AppendChangeSubject allocates %.1f times per call with room in dst, want 0", allocs)
	}
	if got, want := string(buf), "tablecast.shop.Sales%2EEU.order%20items.update"; got != want {
		t.Fatalf("got %q, want %q", got, want)
	}
}

func TestValidatePrefix(t *testing.T) {
	tests := []struct {
		prefix  string
		wantErr string // substring; "" means valid
	}{
		{"tablecast", ""},
		{"acme.cdc", ""},
		{"a-b_c.D1", ""},
		{"", "empty"},
		{".tablecast", "token 1 is empty"},
		{"tablecast.", "token 2 is empty"},
		{"a..b", "token 2 is empty"},
		{"a.*", "wildcard"},
		{"a.>", "wildcard"},
		{"table*cast", "wildcard"},
		{"table cast", "white space"},
		{"table\tcast", "white space"},
		{"a.b\n", "white space"},
		{"$JS", "reserved"},
		{"bad\xff", "UTF-8"},
	}
	for _, tt := range tests {
		t.Run(tt.prefix, func(t *testing.T) {
			err := ValidatePrefix(tt.prefix)
			if tt.wantErr == "" {
				if err != nil {
					t.Fatalf("ValidatePrefix(%q) = %v, want nil", tt.prefix, err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) || !errors.Is(err, ErrInvalidPrefix) {
				t.Fatalf("ValidatePrefix(%q) = %v, want an ErrInvalidPrefix mentioning %q", tt.prefix, err, tt.wantErr)
			}
		})
	}
}

// FuzzToken checks that DecodeToken inverts AppendToken and that an encoded
// token is always one valid, wildcard-free NATS token.
func FuzzToken(f *testing.F) {
	for _, s := range []string{"", "orders", "a.b", "a b", "*", ">", "%", "%25", "café", "\xff", "\x00", "a\r\n\tb", "%"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, name string) {
		tok := string(AppendToken(nil, name))
		if tok == "" {
			t.Fatalf("AppendToken(%q) is empty", name)
		}
		if !utf8.ValidString(tok) {
			t.Fatalf("AppendToken(%q) = %q is not valid UTF-8", name, tok)
		}
		for i := 0; i < len(tok); i++ {
			if c := tok[i]; c <= ' ' || c == 0x7f || c == '.' || c == '*' || c == '>' {
				t.Fatalf("AppendToken(%q) = %q holds reserved byte %q", name, tok, c)
			}
		}
		back, err := DecodeToken(tok)
		if err != nil {
			t.Fatalf("DecodeToken(AppendToken(%q) = %q): %v", name, tok, err)
		}
		if back != name {
			t.Fatalf("DecodeToken(AppendToken(%q)) = %q", name, back)
		}
		// Decoding arbitrary input must not panic, and what decodes must
		// re-encode to a token that decodes the same.
		if dec, err := DecodeToken(name); err == nil {
			if again, err := DecodeToken(string(AppendToken(nil, dec))); err != nil || again != dec {
				t.Fatalf("DecodeToken(%q) = %q does not survive a round trip: %q, %v", name, dec, again, err)
			}
		}
	})
}

// TestTransactionSubject: the marker subject has three tokens after the
// prefix, and its last is one no name encodes to.
func TestTransactionSubject(t *testing.T) {
	if got := TransactionSubject("tablecast", "my.db"); got != "tablecast.my%2Edb.%tx" {
		t.Errorf("TransactionSubject = %s", got)
	}
	if _, err := DecodeToken(transactionToken); err == nil {
		t.Errorf("%s decodes as a name: a schema, table or topic could have its subject", transactionToken)
	}
	for _, name := range []string{"%tx", "tx", "%", "%%tx"} {
		if Token(name) == transactionToken {
			t.Errorf("the name %q encodes to the marker's token", name)
		}
	}
}
