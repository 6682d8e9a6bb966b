package hosts

import (
	"net"
	"testing"
)

func TestPolicy(t *testing.T) {
	t.Parallel()
	loop := &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 8080}
	wild := &net.TCPAddr{IP: net.IPv4zero, Port: 8080}
	lan := &net.TCPAddr{IP: net.IPv4(10, 1, 2, 3), Port: 8080}
	for _, tc := range []struct {
		allowed []string
		bound   net.Addr
		host    string
		want    bool
	}{
		{nil, loop, "localhost:8080", true},
		{nil, loop, "127.0.0.1:8080", true},
		{nil, loop, "127.0.0.2", true},
		{nil, loop, "[::1]:8080", true},
		{nil, loop, "::1", false}, // unbracketed IPv6 with a port is ambiguous
		{nil, loop, "10.1.2.3:8080", false},
		{nil, loop, "", false},
		{nil, loop, "evil.example:8080", false},
		{nil, loop, "localhost:80x", false},
		{nil, loop, "user@localhost", false},
		{nil, lan, "10.1.2.3:8080", true},
		{nil, lan, "localhost:8080", false},
		{nil, lan, "10.1.2.4:8080", false},
		{nil, wild, "10.9.9.9:8080", true},
		{nil, wild, "localhost", true},
		{nil, wild, "gw.example", false},
		{[]string{"GW.example."}, lan, "gw.EXAMPLE:443", true},
		{[]string{"*.example"}, lan, "a.b.example", true},
		{[]string{"*.example"}, lan, "example", false},
		{[]string{"*.example"}, lan, "badexample", false},
		{[]string{"*"}, lan, "anything.example", true},
		{[]string{"*"}, lan, "", false},
	} {
		p := NewPolicy(tc.allowed, tc.bound)
		if got := p.Allowed(tc.host); got != tc.want {
			t.Errorf("allowed %v bound to %v: Host %q allowed %v, want %v", tc.allowed, tc.bound, tc.host, got, tc.want)
		}
	}
	if NewPolicy(nil, loop).ReachableByName() || !NewPolicy(nil, lan).ReachableByName() || !NewPolicy(nil, wild).ReachableByName() {
		t.Error("ReachableByName wrong")
	}
}
