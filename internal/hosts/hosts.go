// Package hosts decides which Host headers a server answers, against DNS
// rebinding: a page on an attacker's domain whose name is made to resolve
// to a server's address (127.0.0.1, say) is, to the browser, same-origin
// with itself, and its requests carry Host (and Origin) of the attacker's
// name. So every request's Host is checked against the names the server
// serves (Policy); the WebSocket gateway and the admin API both do, on
// every path. Ports are not compared: a rebinding page uses the server's
// own port anyway.
//
// A Policy is immutable once built: safe for concurrent use.
package hosts

import (
	"net"
	"net/netip"
	"strings"
)

// Policy is the Host headers a server answers.
type Policy struct {
	any      bool                // "*" configured: every host
	names    map[string]bool     // configured names and IP literals, lower case
	suffixes []string            // ".example.com" of a configured "*.example.com"
	ips      map[netip.Addr]bool // the bound IP
	loopback bool                // "localhost" and loopback IPs
	anyIP    bool                // bound to every address: every IP literal
}

// NewPolicy builds the policy of a server listening on bound (nil: not
// yet known) that also serves the names allowed: host names, IP literals,
// "*.example.com" (the subdomains of example.com) or "*" (every host).
// Always served: "localhost" and loopback IPs when bound to loopback or to
// every address, the bound IP, and any IP literal when bound to every
// address (a name can be made to point anywhere; an address cannot).
func NewPolicy(allowed []string, bound net.Addr) *Policy {
	p := &Policy{names: map[string]bool{}, ips: map[netip.Addr]bool{}}
	for _, h := range allowed {
		h = normalize(h)
		switch {
		case h == "*":
			p.any = true
		case strings.HasPrefix(h, "*."):
			p.suffixes = append(p.suffixes, h[1:])
		case h != "":
			if ip, err := netip.ParseAddr(h); err == nil {
				p.ips[ip.Unmap()] = true
			} else {
				p.names[h] = true
			}
		}
	}
	if ta, ok := bound.(*net.TCPAddr); ok {
		ip, _ := netip.AddrFromSlice(ta.IP)
		ip = ip.Unmap()
		switch {
		case !ip.IsValid() || ip.IsUnspecified():
			p.loopback, p.anyIP = true, true
		case ip.IsLoopback():
			p.loopback = true
			p.ips[ip] = true
		default:
			p.ips[ip] = true
		}
	}
	return p
}

// ReachableByName reports whether the server listens beyond loopback,
// where clients usually come by a name: without names allowed, they are
// all refused.
func (p *Policy) ReachableByName() bool { return p.anyIP || !p.loopback }

// normalize lower-cases a host name and drops a trailing dot and the
// brackets of an IPv6 literal.
func normalize(h string) string {
	h = strings.ToLower(strings.TrimSpace(h))
	h = strings.TrimSuffix(h, ".")
	if strings.HasPrefix(h, "[") && strings.HasSuffix(h, "]") {
		h = h[1 : len(h)-1]
	}
	return h
}

// SplitHost returns the host of a Host header ("name", "name:port",
// "[v6]:port"), normalized; "" when malformed.
func SplitHost(hostport string) string {
	h := hostport
	if i := strings.LastIndexByte(h, ':'); i >= 0 && !strings.HasSuffix(h, "]") {
		if strings.Count(h, ":") > 1 && !strings.HasPrefix(h, "[") {
			return "" // a bare IPv6 literal must be bracketed
		}
		port := h[i+1:]
		for _, c := range port {
			if c < '0' || c > '9' {
				return ""
			}
		}
		h = h[:i]
	}
	h = normalize(h)
	if h == "" || strings.ContainsAny(h, "/\\@?#% \t") {
		return ""
	}
	return h
}

// Allowed reports whether the server answers a request with this Host
// header.
func (p *Policy) Allowed(hostport string) bool {
	h := SplitHost(hostport)
	return h != "" && (p.any || p.Served(h))
}

// Served reports whether host (normalized, no port: SplitHost) is one of
// the names the server serves by name or address, "*" aside.
func (p *Policy) Served(host string) bool {
	if ip, err := netip.ParseAddr(host); err == nil {
		ip = ip.Unmap()
		return p.ips[ip] || p.anyIP || p.loopback && ip.IsLoopback()
	}
	if p.names[host] || p.loopback && host == "localhost" {
		return true
	}
	for _, s := range p.suffixes {
		if strings.HasSuffix(host, s) {
			return true
		}
	}
	return false
}
