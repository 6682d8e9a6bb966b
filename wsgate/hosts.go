package wsgate

import (
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"strings"

	"github.com/tablecast/tablecast/schema"
)

// DNS rebinding: a page on an attacker's domain whose name is made to
// resolve to the gateway's address (127.0.0.1, say) is, to the browser,
// same-origin with itself: its requests carry Host and Origin of the
// attacker's name. So the Host of every request is checked against the
// names the gateway serves (hostPolicy), and with anonymous access an Origin
// is never accepted for merely matching the Host.

// hostPolicy decides which Host headers the gateway answers. Ports are not
// compared: a rebinding page uses the gateway's own port anyway.
type hostPolicy struct {
	any      bool                // "*" configured: every host
	names    map[string]bool     // configured names and IP literals, lower case
	suffixes []string            // ".example.com" of a configured "*.example.com"
	ips      map[netip.Addr]bool // the bound IP
	loopback bool                // "localhost" and loopback IPs
	anyIP    bool                // bound to every address: every IP literal
}

// newHostPolicy builds the policy from AllowedHosts and the address the
// gateway listens on.
func newHostPolicy(allowed []string, bound net.Addr) *hostPolicy {
	p := &hostPolicy{names: map[string]bool{}, ips: map[netip.Addr]bool{}}
	for _, h := range allowed {
		h = normalizeHost(h)
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

// normalizeHost lower-cases a host name and drops a trailing dot and the
// brackets of an IPv6 literal.
func normalizeHost(h string) string {
	h = strings.ToLower(strings.TrimSpace(h))
	h = strings.TrimSuffix(h, ".")
	if strings.HasPrefix(h, "[") && strings.HasSuffix(h, "]") {
		h = h[1 : len(h)-1]
	}
	return h
}

// splitHost returns the host of a Host header ("name", "name:port",
// "[v6]:port"), normalized; "" when malformed.
func splitHost(hostport string) string {
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
	h = normalizeHost(h)
	if h == "" || strings.ContainsAny(h, "/\\@?#% \t") {
		return ""
	}
	return h
}

// allowed reports whether the gateway serves a request with this Host.
func (p *hostPolicy) allowed(hostport string) bool {
	h := splitHost(hostport)
	return h != "" && (p.any || p.served(h))
}

// served reports whether host (normalized, no port) is one of the names
// the gateway serves by name or address, "*" aside.
func (p *hostPolicy) served(host string) bool {
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

// originAllowed applies AllowedOrigins to a browser's Origin header. With
// none configured, only the gateway's own origin is allowed: an Origin whose
// host and port are the request's Host. With anonymous access that is not
// enough (whoever controls a name controls both headers): the Origin's host
// must also be one the gateway serves by name or address, not merely
// through AllowedHosts "*".
func (g *Gateway) originAllowed(origin, host string) bool {
	if origin == "" {
		return true // not a browser: nothing to check
	}
	for _, o := range g.cfg.AllowedOrigins {
		if o == "*" || strings.EqualFold(o, origin) {
			return true
		}
	}
	if len(g.cfg.AllowedOrigins) > 0 {
		return false
	}
	u, err := url.Parse(origin)
	if err != nil || u.Host == "" || (u.Scheme != "http" && u.Scheme != "https") || !strings.EqualFold(u.Host, host) {
		return false
	}
	if g.cfg.Auth.Enabled() {
		return true
	}
	h := splitHost(u.Host)
	return h != "" && g.hosts.served(h)
}

// checkHost wraps the gateway's HTTP handler: a request for a Host the
// gateway does not serve is answered 421 Misdirected Request.
func (g *Gateway) checkHost(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !g.hosts.allowed(r.Host) {
			w.Header().Set("Connection", "close")
			http.Error(w, "421 Misdirected Request: host "+schema.QuoteName(r.Host)+" is not served here", http.StatusMisdirectedRequest)
			return
		}
		h.ServeHTTP(w, r)
	})
}
