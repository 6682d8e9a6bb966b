package main

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strings"
	"time"
)

// healthcheckTimeout bounds one check: a container runtime runs it every
// few seconds and kills what outlives its own timeout, so the command
// answers first.
const healthcheckTimeout = 5 * time.Second

// healthcheck asks the running tablecast on TABLECAST_HTTP_ADDR for
// /healthz (or /readyz with --ready) and returns nil when it answers 200.
// It exists for container images without a shell or curl (a static image's
// HEALTHCHECK runs the binary itself). A TLS listener (TABLECAST_TLS_CERT)
// is checked over TLS, trusting exactly that certificate, whatever names
// it carries.
func healthcheck(ctx context.Context, cfg Config, args []string, out io.Writer) error {
	fs := flag.NewFlagSet("healthcheck", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	ready := fs.Bool("ready", false, "check /readyz instead of /healthz")
	timeout := fs.Duration("timeout", healthcheckTimeout, "how long to wait for the answer")
	if err := fs.Parse(args); err != nil || fs.NArg() > 0 {
		if err == nil {
			err = fmt.Errorf("unexpected argument %q", fs.Arg(0))
		}
		return usageError{"healthcheck: " + err.Error() + " (usage: tablecast healthcheck [--ready] [--timeout 5s])"}
	}
	path := "/healthz"
	if *ready {
		path = "/readyz"
	}
	client := &http.Client{Timeout: *timeout}
	scheme := "http"
	if cfg.TLSCert != "" {
		tc, err := pinnedServerTLS(cfg.TLSCert)
		if err != nil {
			return fmt.Errorf("TABLECAST_TLS_CERT: %w", err)
		}
		client.Transport = &http.Transport{TLSClientConfig: tc}
		scheme = "https"
	}
	url := scheme + "://" + localAddr(cfg.HTTPAddr) + path
	ctx, cancel := context.WithTimeout(ctx, *timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return fmt.Errorf("healthcheck %s: %w", url, err)
	}
	resp, err := client.Do(req)
	if err != nil {
		return fmt.Errorf("healthcheck %s: %w", url, err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	fmt.Fprintln(out, strings.TrimSpace(string(body)))
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("healthcheck %s: %s", url, resp.Status)
	}
	return nil
}

// localAddr is the address this machine reaches a listener on addr
// (host:port) at: the listening host, or loopback for "every address".
// The gateway answers a loopback Host when it listens on loopback, and any
// IP when it listens on every address.
func localAddr(addr string) string {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return addr
	}
	if ip := net.ParseIP(host); host == "" || ip != nil && ip.IsUnspecified() {
		host = "127.0.0.1"
		if ip != nil && ip.To4() == nil {
			host = "::1"
		}
	}
	return net.JoinHostPort(host, port)
}

// pinnedServerTLS accepts exactly the first certificate of certFile: the
// one this process's sibling serves, reached on an address its names need
// not cover.
func pinnedServerTLS(certFile string) (*tls.Config, error) {
	data, err := os.ReadFile(certFile)
	if err != nil {
		return nil, err
	}
	block, _ := pem.Decode(data)
	if block == nil || block.Type != "CERTIFICATE" {
		return nil, fmt.Errorf("%s holds no PEM certificate", certFile)
	}
	want := block.Bytes
	return &tls.Config{
		MinVersion:         tls.VersionTLS12,
		InsecureSkipVerify: true, // replaced by the comparison below
		VerifyPeerCertificate: func(raw [][]byte, _ [][]*x509.Certificate) error {
			if len(raw) == 0 || !bytes.Equal(raw[0], want) {
				return errors.New("the server presented a certificate other than TABLECAST_TLS_CERT's")
			}
			return nil
		},
	}, nil
}
