package webhook

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"syscall"
	"time"
)

// ErrRefusedAddress is wrapped by the error of a request whose destination
// resolved to an address webhooks may not reach (see Config.AllowNets).
var ErrRefusedAddress = errors.New("destination address refused")

// blocked are the ranges a webhook is refused, on top of what netip's
// predicates say (loopback, private, link-local, multicast, unspecified).
var blocked = []netip.Prefix{
	netip.MustParsePrefix("0.0.0.0/8"),      // "this network"
	netip.MustParsePrefix("100.64.0.0/10"),  // shared address space (carrier NAT)
	netip.MustParsePrefix("192.0.0.0/24"),   // IETF protocol assignments
	netip.MustParsePrefix("198.18.0.0/15"),  // benchmarking
	netip.MustParsePrefix("240.0.0.0/4"),    // reserved, and broadcast
	netip.MustParsePrefix("64:ff9b::/96"),   // NAT64: may embed any IPv4 address
	netip.MustParsePrefix("64:ff9b:1::/48"), // local-use NAT64
	netip.MustParsePrefix("2002::/16"),      // 6to4: may embed any IPv4 address
	netip.MustParsePrefix("::/96"),          // IPv4-compatible (deprecated): ::a.b.c.d embeds any IPv4 address
	netip.MustParsePrefix("2001::/23"),      // IETF protocol assignments: Teredo (2001::/32, embeds IPv4 addresses), ORCHID, …
	netip.MustParsePrefix("3fff::/20"),      // documentation
	netip.MustParsePrefix("fec0::/10"),      // site-local (deprecated)
	netip.MustParsePrefix("100::/64"),       // discard-only
	netip.MustParsePrefix("2001:db8::/32"),  // documentation
	netip.MustParsePrefix("::ffff:0:0/96"),  // IPv4-mapped (checked unmapped too)
	netip.MustParsePrefix("::/128"),         // unspecified
	netip.MustParsePrefix("::1/128"),        // loopback
	netip.MustParsePrefix("fe80::/10"),      // link-local
	netip.MustParsePrefix("ff00::/8"),       // multicast
	netip.MustParsePrefix("fc00::/7"),       // unique local
	netip.MustParsePrefix("169.254.0.0/16"), // link-local (cloud metadata)
	netip.MustParsePrefix("224.0.0.0/4"),    // multicast
	netip.MustParsePrefix("127.0.0.0/8"),    // loopback
	netip.MustParsePrefix("10.0.0.0/8"),     // private
	netip.MustParsePrefix("172.16.0.0/12"),  // private
	netip.MustParsePrefix("192.168.0.0/16"), // private
	netip.MustParsePrefix("255.255.255.255/32"),
}

// addressAllowed reports whether a webhook may connect to ip: a public
// address, or one inside allow.
func addressAllowed(ip netip.Addr, allow []netip.Prefix) bool {
	for _, p := range allow {
		if p.Contains(ip) || p.Contains(ip.Unmap()) {
			return true
		}
	}
	u := ip.Unmap()
	if !u.IsValid() || u.IsLoopback() || u.IsPrivate() || u.IsLinkLocalUnicast() || u.IsLinkLocalMulticast() ||
		u.IsInterfaceLocalMulticast() || u.IsMulticast() || u.IsUnspecified() {
		return false
	}
	for _, p := range blocked {
		if p.Contains(ip) || p.Contains(u) {
			return false
		}
	}
	return true
}

// maxAnswerHead bounds the head (status line and headers) of a
// receiver's answer: a webhook answer needs a status and perhaps a
// Retry-After, and net/http's default (10 MiB) would let every lane of a
// hostile receiver hold that much. Beyond it the attempt fails. It bounds
// HTTP/2 answers too: net/http's HTTP/2 client takes
// MaxResponseHeaderBytes (plus 32 bytes for each of ten fields) as its
// SETTINGS_MAX_HEADER_LIST_SIZE, stops decoding beyond it, and closes a
// connection whose header block goes far beyond.
const maxAnswerHead = 64 << 10

// newTransport returns the HTTP transport of webhook requests. Its dialer
// checks each address it is about to connect to, after DNS resolution
// (there is no lookup before it to fool: a name that resolves to a public
// address once and a private one the next time, or to both at once, never
// gets a connection to the private one). It uses no proxy, whatever
// HTTP_PROXY and HTTPS_PROXY say: through a proxy the address checked
// would be the proxy's, and the proxy would reach the destination
// unchecked. resolver is the DNS resolver (nil: the system's; tests give
// their own). Receivers' certificates are verified against the system's
// roots (tests trust their own by setting TLSClientConfig before the first
// request), and HTTP/2 is used when a receiver offers it over TLS: one
// connection then carries every lane's requests to it.
func newTransport(allow []netip.Prefix, resolver *net.Resolver) *http.Transport {
	d := &net.Dialer{
		Timeout:   10 * time.Second,
		KeepAlive: 30 * time.Second,
		Resolver:  resolver,
		Control: func(network, address string, _ syscall.RawConn) error {
			ap, err := netip.ParseAddrPort(address)
			if err != nil {
				return fmt.Errorf("%w: %s is not an IP address and port", ErrRefusedAddress, address)
			}
			if !addressAllowed(ap.Addr(), allow) {
				return fmt.Errorf("%w: %s is a loopback, private, link-local, multicast or reserved address (allow it with the webhook allowed networks)", ErrRefusedAddress, ap.Addr())
			}
			return nil
		},
	}
	return &http.Transport{
		Proxy: nil,
		DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			return d.DialContext(ctx, network, addr)
		},
		ForceAttemptHTTP2:      true,
		MaxIdleConns:           1024,
		MaxIdleConnsPerHost:    128,
		IdleConnTimeout:        90 * time.Second,
		TLSHandshakeTimeout:    10 * time.Second,
		ExpectContinueTimeout:  time.Second,
		ResponseHeaderTimeout:  0, // the request's timeout bounds it
		MaxResponseHeaderBytes: maxAnswerHead,
		// An HTTP/2 connection gone silent (forgotten by a load balancer
		// or a NAT on the way, the receiver itself well) is closed once it
		// does not answer a ping: net/http keeps using one whose requests
		// timed out while it has room for streams (hundreds of attempts,
		// hours of backoff), and every endpoint to that receiver shares it,
		// so their events were dead-lettered without a request reaching
		// the receiver. A receiver slow to answer a request still answers
		// pings: its connection stays.
		HTTP2: &http.HTTP2Config{SendPingTimeout: h2PingAfter, PingTimeout: h2PingTimeout},
	}
}

// h2PingAfter is how long an HTTP/2 connection to a receiver may go with
// nothing read before it is pinged; h2PingTimeout, how long the ping's
// answer is waited for before the connection is closed (and the next
// attempt dials a new one).
const (
	h2PingAfter   = 10 * time.Second
	h2PingTimeout = 10 * time.Second
)
