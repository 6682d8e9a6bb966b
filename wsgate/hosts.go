package wsgate

import (
	"net/http"
	"net/url"
	"strconv"
	"strings"

	"github.com/tablecast/tablecast/internal/hosts"
	"github.com/tablecast/tablecast/schema"
)

// DNS rebinding: a page on an attacker's domain whose name is made to
// resolve to the gateway's address (127.0.0.1, say) is, to the browser,
// same-origin with itself: its requests carry Host and Origin of the
// attacker's name. So the Host of every request is checked against the
// names the gateway serves (internal/hosts), and with anonymous access an
// Origin is never accepted for merely matching the Host.

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
	h := hosts.SplitHost(u.Host)
	return h != "" && g.hosts.Served(h)
}

// checkHead answers a request whose head is beyond the bounds of the
// first request of a connection (upgrade.go) as that one would be: net/http
// parses every later request of a kept-alive connection, with bounds of
// its own.
func (g *Gateway) checkHead(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if he := checkHead(r, g.cfg.MaxHeaderBytes); he != nil {
			w.Header().Set("Connection", "close")
			http.Error(w, strconv.Itoa(he.status)+" "+http.StatusText(he.status)+": "+he.msg, he.status)
			return
		}
		h.ServeHTTP(w, r)
	})
}

// checkHost wraps the gateway's HTTP handler: a request for a Host the
// gateway does not serve is answered 421 Misdirected Request.
func (g *Gateway) checkHost(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !g.hosts.Allowed(r.Host) {
			w.Header().Set("Connection", "close")
			http.Error(w, "421 Misdirected Request: host "+schema.QuoteName(r.Host)+" is not served here", http.StatusMisdirectedRequest)
			return
		}
		h.ServeHTTP(w, r)
	})
}
