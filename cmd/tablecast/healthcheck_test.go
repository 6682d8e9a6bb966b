package main

import (
	"net"
	"strings"
	"testing"
	"time"
)

// TestHealthcheckCommand runs `tablecast healthcheck`, the probe of a
// container image without a shell, against a real `tablecast gateway`
// listening on every address as it does in a container: exit 0 while
// /healthz (or /readyz) answers 200, exit 1 with the reasons once NATS is
// gone, exit 1 when nothing listens, and over TLS with the gateway's own
// certificate, whose names do not include the loopback address it dials.
func TestHealthcheckCommand(t *testing.T) {
	n := startNATS(t)
	_, port, _ := net.SplitHostPort(freeAddr(t))
	env := []string{"TABLECAST_NATS_URL=" + n.URL(), "TABLECAST_HTTP_ADDR=0.0.0.0:" + port, "TABLECAST_ALLOW_ANONYMOUS=true"}
	startProcess(t, append(baseEnv(), env...), "gateway")

	waitFor(t, time.Minute, "healthcheck to pass", func() bool {
		code, _, _ := runBinary(t, time.Minute, env, "healthcheck")
		return code == 0
	})
	code, out, errOut := runBinary(t, time.Minute, env, "healthcheck", "--ready")
	if code != 0 || !strings.Contains(out, `"ready":true`) {
		t.Fatalf("healthcheck --ready: exit %d, %q, %q", code, out, errOut)
	}

	n.Stop()
	waitFor(t, time.Minute, "healthcheck to fail without NATS", func() bool {
		code, out, errOut = runBinary(t, time.Minute, env, "healthcheck")
		return code == 1
	})
	if !strings.Contains(out, "not connected to NATS") || !strings.Contains(errOut, "503") {
		t.Errorf("unhealthy healthcheck printed %q, %q; want the reason and the status", out, errOut)
	}
	n.Restart()

	free := freeAddr(t)
	code, _, errOut = runBinary(t, time.Minute, []string{"TABLECAST_HTTP_ADDR=" + free}, "healthcheck", "--timeout", "2s")
	if code != 1 || !strings.Contains(errOut, free) {
		t.Errorf("healthcheck with nothing listening: exit %d, %q; want 1 naming %s", code, errOut, free)
	}
	if code, _, errOut := runBinary(t, time.Minute, nil, "healthcheck", "extra"); code != 2 || !strings.Contains(errOut, "usage") {
		t.Errorf("healthcheck extra: exit %d, %q; want 2 with the usage", code, errOut)
	}

	certFile, keyFile, _ := selfSigned(t)
	tlsEnv := []string{"TABLECAST_NATS_URL=" + n.URL(), "TABLECAST_HTTP_ADDR=" + freeAddr(t),
		"TABLECAST_TLS_CERT=" + certFile, "TABLECAST_TLS_KEY=" + keyFile}
	startProcess(t, append(baseEnv(), tlsEnv...), "gateway")
	waitFor(t, time.Minute, "healthcheck over TLS to pass", func() bool {
		code, _, _ := runBinary(t, time.Minute, tlsEnv, "healthcheck", "--ready")
		return code == 0
	})
	other, _, _ := selfSigned(t)
	wrong := append(tlsEnv[:2:2], "TABLECAST_TLS_CERT="+other, "TABLECAST_TLS_KEY="+keyFile)
	if code, _, errOut := runBinary(t, time.Minute, wrong, "healthcheck"); code != 1 || !strings.Contains(errOut, "certificate") {
		t.Errorf("healthcheck trusting another certificate: exit %d, %q; want 1 naming the certificate", code, errOut)
	}
}
