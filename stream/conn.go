package stream

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"runtime/pprof"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
)

// Reconnect pacing. Half a second plus up to half a second of jitter brings a
// reader back within about a second of NATS returning, while the jitter keeps
// many processes from reconnecting in lock step after a server restart.
const (
	reconnectWait      = 500 * time.Millisecond
	reconnectJitter    = 500 * time.Millisecond
	reconnectJitterTLS = time.Second
)

// Connect dials the NATS server(s) at url (a comma-separated list is allowed)
// as the client called name, and returns once connected.
//
// The connection reconnects forever, with a jittered wait between attempts,
// and keeps no reconnect buffer: a publish while disconnected fails at once
// instead of being buffered and perhaps sent after messages published later
// (see [Publisher]). Every change of state (disconnected with its error,
// reconnected with the server's URL, closed) and every asynchronous error
// is logged to log (default: slog.Default()).
//
// The first dial is retried until ctx is done; then Connect returns an error
// that wraps ctx.Err() and names the last dial error. A refusal that
// retrying cannot change (credentials refused, a server certificate that is
// not trusted) ends the first dial at once with that error. opts come last,
// such as credentials and TLS from [ClientAuth.Options].
func Connect(ctx context.Context, url, name string, log *slog.Logger, opts ...nats.Option) (*nats.Conn, error) {
	if log == nil {
		log = slog.Default()
	}
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("connect to NATS at %s: %w", redactURLs(url), err)
	}
	log = log.With(slog.String("component", "nats"))

	var (
		mu      sync.Mutex
		lastErr error
		refused = make(chan error, 1) // the first permanent refusal
	)
	var (
		nc  *nats.Conn
		err error
	)
	// The connection's goroutines (its reader, its flusher, reconnects)
	// start here and keep the label in CPU profiles (see ProfileLabel).
	pprof.Do(context.Background(), pprof.Labels(ProfileLabel, ProfileNATSClient), func(context.Context) {
		nc, err = nats.Connect(url, append([]nats.Option{
			nats.Name(name),
			nats.MaxReconnects(-1),
			nats.ReconnectWait(reconnectWait),
			nats.ReconnectJitter(reconnectJitter, reconnectJitterTLS),
			nats.ReconnectBufSize(-1),
			nats.RetryOnFailedConnect(true),
			nats.ConnectHandler(func(nc *nats.Conn) {
				log.Info("connected to NATS", slog.String("url", redactURLs(nc.ConnectedUrl())))
			}),
			nats.DisconnectErrHandler(func(_ *nats.Conn, err error) {
				if err != nil {
					log.Warn("disconnected from NATS", slog.Any("error", err))
				} else {
					log.Info("disconnected from NATS")
				}
			}),
			nats.ReconnectHandler(func(nc *nats.Conn) {
				log.Info("reconnected to NATS", slog.String("url", redactURLs(nc.ConnectedUrl())))
			}),
			nats.ReconnectErrHandler(func(_ *nats.Conn, err error) {
				mu.Lock()
				lastErr = err
				mu.Unlock()
				if permanentRefusal(err) {
					log.Warn("NATS refused the connection", slog.Any("error", err))
					select {
					case refused <- err:
					default:
					}
					return
				}
				log.Debug("NATS connection attempt failed", slog.Any("error", err))
			}),
			nats.ClosedHandler(func(*nats.Conn) {
				log.Info("NATS connection closed")
			}),
			// Asynchronous errors (a slow consumer, a permission violation, a
			// failed write) would otherwise be printed to stderr by nats.go.
			nats.ErrorHandler(func(_ *nats.Conn, sub *nats.Subscription, err error) {
				if sub != nil {
					log.Warn("NATS asynchronous error", slog.Any("error", err), slog.String("subscription", sub.Subject))
					return
				}
				log.Warn("NATS asynchronous error", slog.Any("error", err))
			}),
		}, opts...)...)
	})
	if err != nil {
		return nil, fmt.Errorf("connect to NATS at %s: %w", redactURLs(url), err)
	}

	wctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	go func() {
		select {
		case err := <-refused:
			cancel(err)
		case <-wctx.Done():
		}
	}()
	if err := WaitConnected(wctx, nc); err != nil {
		nc.Close()
		if cause := context.Cause(wctx); ctx.Err() == nil && cause != nil && !errors.Is(cause, context.Canceled) {
			return nil, fmt.Errorf("connect to NATS at %s: %w", redactURLs(url), cause)
		}
		mu.Lock()
		last := lastErr
		mu.Unlock()
		if last == nil || !errors.Is(err, ctx.Err()) {
			return nil, fmt.Errorf("connect to NATS at %s: %w", redactURLs(url), err)
		}
		return nil, fmt.Errorf("connect to NATS at %s: %w (last attempt: %v)", redactURLs(url), err, last)
	}
	return nc, nil
}

// permanentRefusal reports whether err is a refusal that the same attempt
// would meet again: credentials refused, or a server certificate that is
// not trusted.
func permanentRefusal(err error) bool {
	var (
		verify   *tls.CertificateVerificationError
		unknown  x509.UnknownAuthorityError
		hostname x509.HostnameError
		invalid  x509.CertificateInvalidError
	)
	return errors.Is(err, nats.ErrAuthorization) || errors.Is(err, nats.ErrAuthExpired) ||
		errors.Is(err, nats.ErrAuthRevoked) || errors.Is(err, nats.ErrAccountAuthExpired) ||
		errors.Is(err, errPinMismatch) || errors.As(err, &verify) || errors.As(err, &unknown) ||
		errors.As(err, &hostname) || errors.As(err, &invalid)
}

// WaitConnected returns once nc is connected, or with ctx.Err() when ctx
// ends first, or nats.ErrConnectionClosed if nc is closed. After a
// Publisher fails, the CDC reader waits here before it starts again.
func WaitConnected(ctx context.Context, nc *nats.Conn) error {
	if nc.IsConnected() {
		return nil
	}
	// Register before checking again, so that a change in between is not
	// missed.
	ch := nc.StatusChanged(nats.CONNECTED, nats.CLOSED)
	defer nc.RemoveStatusListener(ch)
	for !nc.IsConnected() {
		if nc.IsClosed() {
			return nats.ErrConnectionClosed
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	return nil
}

// redactURLs replaces the password of every URL in a comma-separated list, so
// URLs can be logged and put into errors.
func redactURLs(list string) string {
	if !strings.Contains(list, "@") {
		return list
	}
	parts := strings.Split(list, ",")
	for i, p := range parts {
		u, err := url.Parse(strings.TrimSpace(p))
		if err != nil || u.User == nil {
			continue
		}
		parts[i] = u.Redacted()
		if _, hasPass := u.User.Password(); !hasPass {
			// A lone user part is often a token: hide it too.
			u.User = url.User("xxxxx")
			parts[i] = u.String()
		}
	}
	return strings.Join(parts, ",")
}
