package stream

import (
	"fmt"
	"strings"
	"time"

	"github.com/nats-io/nats-server/v2/server"
)

// Storage defaults of the embedded server.
const (
	// DefaultMaxStore is the embedded JetStream's store size when none is
	// configured: a fixed 8 GiB, the same on every start. Three quarters of
	// it is the default size of the event stream (see StreamBytesFor);
	// the rest is for the key-value buckets, consumers' state, blocks not
	// yet reclaimed and any stream a backend service creates.
	DefaultMaxStore int64 = 8 << 30
	// DefaultMinFree is the free space below which the embedded server is
	// unhealthy, and above which a JetStream stopped by a full disk is
	// restarted. The event stream writes 8 MiB blocks and compacts one by
	// writing its replacement beside it, and JetStream writes every
	// stream's index and state files when it stops: 256 MiB leaves room for
	// all of that many times over, and at 1,000 events/s of ~400 bytes
	// (0.4 MB/s) it is ten minutes of warning before the disk is full (a
	// few seconds at the reader's peak of ~80,000/s: alert on the free-space
	// metric, and size MaxStore to fit the disk, to be safe).
	DefaultMinFree int64 = 256 << 20
	// defaultCheckInterval: statfs and a look at JetStream's state cost
	// microseconds; a second keeps /healthz current and restarts a stopped
	// JetStream within about a second of space coming back.
	defaultCheckInterval = time.Second
	// restartBackoffMax bounds the wait between attempts to restart a
	// JetStream that keeps failing: long enough not to thrash a disk that is
	// still full, short enough to resume soon after it is not.
	restartBackoffMax = 30 * time.Second
	// overcommitWarnEvery repeats the warning that the disk cannot hold the
	// whole store, so that it is not lost in a long log.
	overcommitWarnEvery = time.Hour
)

// JetStream states in StorageStatus.JetStream.
const (
	JetStreamOK = "ok"
	// JetStreamStorageFull: JetStream stopped storing because its disk
	// filled; the server is restarted once there is space again.
	JetStreamStorageFull = "storage full"
	// JetStreamStoreFull: the store reached MaxStore; it stores again once
	// retention has made room.
	JetStreamStoreFull = "store full"
	// JetStreamUnavailable: JetStream is disabled or cannot write, for a
	// reason other than space; the server is restarted with backoff.
	JetStreamUnavailable = "unavailable"
)

// StorageStatus is the embedded server's storage as last checked.
type StorageStatus struct {
	// Healthy is false while JetStream cannot store or free space is below
	// the minimum; Reasons say why.
	Healthy bool     `json:"healthy"`
	Reasons []string `json:"reasons,omitempty"`
	// JetStream is one of the JetStream* states.
	JetStream string `json:"jetstream"`
	// FreeBytes is the space free for the server on the store directory's
	// file system; -1 where the platform does not say.
	FreeBytes    int64 `json:"free_bytes"`
	MinFreeBytes int64 `json:"min_free_bytes"`
	// StoreUsedBytes and StoreMaxBytes are what JetStream's store holds and
	// may hold (MaxStore).
	StoreUsedBytes int64 `json:"store_used_bytes"`
	StoreMaxBytes  int64 `json:"store_max_bytes"`
	// Restarts counts the times the server was restarted because JetStream
	// had stopped storing.
	Restarts uint64 `json:"restarts"`
}

// Status returns the state of the server's storage, as checked at most
// CheckInterval ago. It is cheap: call it from /healthz and metrics.
func (e *Embedded) Status() StorageStatus {
	e.statusMu.Lock()
	defer e.statusMu.Unlock()
	st := e.status
	st.Reasons = append([]string(nil), st.Reasons...)
	return st
}

// storageMonitor watches the embedded server's disk and JetStream, and
// restarts the server when JetStream has stopped storing and space is back.
//
// nats-server does not recover from a full disk by itself. When a write
// fails with ENOSPC, the stream keeps the error and drops every later
// message without answering the publisher, until JetStream is restarted; on
// some paths it disables JetStream altogether. Either way the monitor sees
// it (the server's health check names the stream's write error; JetStream
// reports itself disabled), waits until more than MinFree is free, and
// starts the server again on the same port and store: the streams are
// recovered from disk (a record torn by the failed write is dropped; it was
// never acknowledged), and clients reconnect by themselves.
//
// The whole server, not JetStream alone (which nats-server can restart in
// place), so that no publisher's messages straddle the restart. A publisher
// with messages in flight while JetStream drops them would, with JetStream
// restarted under its connection, have its next messages stored after a
// gap: out of order, and the dropped ones stored later still. Restarting
// the server ends every connection with the messages it had in flight
// (the Publisher fails and starts again from its confirmed position), and
// the new server enables JetStream before it accepts a client.
//
// Only its goroutine touches its fields.
type storageMonitor struct {
	e *Embedded

	restarts      uint64
	backoff       time.Duration
	nextRestart   time.Time
	problem       string // the last JetStream problem logged, "" when none
	lowSpace      bool   // free space below the minimum, logged
	overcommitted bool   // the disk cannot hold the whole store, logged
	warnedAt      time.Time
}

func (m *storageMonitor) run() {
	defer close(m.e.done)
	t := time.NewTicker(m.e.cfg.CheckInterval)
	defer t.Stop()
	for {
		select {
		case <-m.e.stop:
			return
		case <-t.C:
			m.check(time.Now())
		}
	}
}

// check looks at the disk and JetStream once, restarts the server if that
// is due, and publishes the status.
func (m *storageMonitor) check(now time.Time) {
	e := m.e
	free := freeSpace(e.cfg.StoreDir)
	st := StorageStatus{JetStream: JetStreamOK, FreeBytes: free, MinFreeBytes: e.cfg.MinFree, StoreMaxBytes: e.cfg.MaxStore}
	if info, err := e.Server().Jsz(nil); err == nil && !info.Disabled {
		st.StoreUsedBytes = int64(info.Store)
		st.StoreMaxBytes = info.Config.MaxStore
	}
	spaceBack := free < 0 || free > e.cfg.MinFree

	problem := m.jetStreamProblem()
	// A problem must be there on two checks in a row: a write error stays
	// until JetStream restarts, while a JetStream caught between two states
	// (disabled by someone who is about to enable it again) is not one.
	confirmed := problem != "" && m.problem != ""
	if confirmed && spaceBack && !now.Before(m.nextRestart) {
		m.restart(problem)
		problem = m.jetStreamProblem()
		if problem == "" {
			m.backoff = 0
		} else {
			m.backoff = min(max(2*m.backoff, e.cfg.CheckInterval), restartBackoffMax)
			m.nextRestart = time.Now().Add(m.backoff)
		}
	}
	switch {
	case problem == "":
		if m.problem != "" {
			e.log.Info("JetStream is storing again", "restarts", m.restarts)
		}
	case isOutOfSpace(problem) || !spaceBack:
		st.JetStream = JetStreamStorageFull
		st.Reasons = append(st.Reasons, fmt.Sprintf("JetStream storage full: %s; the embedded NATS restarts by itself once more than %s is free (%s now)",
			problem, FormatBytes(e.cfg.MinFree), FormatBytes(max(free, 0))))
	default:
		st.JetStream = JetStreamUnavailable
		st.Reasons = append(st.Reasons, "JetStream unavailable: "+problem+"; restarting the server with backoff")
	}
	if problem != m.problem && problem != "" {
		e.log.Error("JetStream cannot store", "reason", problem, "free_bytes", free, "min_free_bytes", e.cfg.MinFree)
	}
	m.problem = problem

	if problem == "" && st.StoreMaxBytes > 0 && st.StoreUsedBytes >= st.StoreMaxBytes {
		st.JetStream = JetStreamStoreFull
		st.Reasons = append(st.Reasons, fmt.Sprintf("JetStream store full: %s used of its %s limit; streams without room to drop old messages refuse new ones",
			FormatBytes(st.StoreUsedBytes), FormatBytes(st.StoreMaxBytes)))
	}

	low := free >= 0 && free < e.cfg.MinFree
	if low {
		st.Reasons = append(st.Reasons, fmt.Sprintf("data directory %s has %s free, below the minimum of %s: JetStream stops storing when its disk is full",
			e.cfg.StoreDir, FormatBytes(free), FormatBytes(e.cfg.MinFree)))
	}
	switch {
	case low && !m.lowSpace:
		e.log.Error("the embedded NATS's disk is almost full", "data_dir", e.cfg.StoreDir, "free_bytes", free, "min_free_bytes", e.cfg.MinFree)
	case !low && m.lowSpace:
		e.log.Info("the embedded NATS's disk has space again", "data_dir", e.cfg.StoreDir, "free_bytes", free)
	}
	m.lowSpace = low

	// The disk fills before the store does: retention, which works on the
	// store's limits, cannot prevent it.
	over := free >= 0 && st.StoreMaxBytes-st.StoreUsedBytes > free
	if over && (!m.overcommitted || now.Sub(m.warnedAt) >= overcommitWarnEvery) {
		e.log.Warn("the embedded NATS's disk has less free space than its JetStream store may still grow: the disk can fill before the stream's retention drops old events; give it more disk or a smaller store",
			"data_dir", e.cfg.StoreDir, "free_bytes", free, "store_used_bytes", st.StoreUsedBytes, "store_max_bytes", st.StoreMaxBytes)
		m.warnedAt = now
	}
	m.overcommitted = over

	st.Restarts = m.restarts
	st.Healthy = len(st.Reasons) == 0
	e.statusMu.Lock()
	e.status = st
	e.statusMu.Unlock()
}

// jetStreamProblem returns why JetStream cannot store, or "": JetStream
// disabled, or a stream that keeps a write error. The server's health check
// reports other things too, such as a stream directory whose stream is not
// registered yet (or any more) while a stream is created or deleted; those
// pass by themselves and must not restart anything.
func (m *storageMonitor) jetStreamProblem() string {
	srv := m.e.Server()
	if !srv.Running() {
		return "the server is not running"
	}
	if !srv.JetStreamEnabled() {
		return "JetStream is disabled"
	}
	h := srv.Healthz(&server.HealthzOptions{Details: true})
	if h == nil {
		return ""
	}
	var msgs []string
	for _, he := range h.Errors {
		if he.Type == server.HealthzErrorStream && strings.Contains(he.Error, "write error") {
			msgs = append(msgs, he.Error)
		}
	}
	return strings.Join(msgs, "; ")
}

// restart shuts the server down and starts a new one with the same
// options; if that fails, the next check tries again.
func (m *storageMonitor) restart(problem string) {
	e := m.e
	m.restarts++
	e.log.Warn("restarting the embedded NATS server: JetStream cannot store", "reason", problem, "restart", m.restarts)
	old := e.Server()
	old.Shutdown()
	old.WaitForShutdown()
	srv, err := e.startServer()
	if err != nil {
		e.log.Error("start the embedded NATS server again", "err", err)
		return
	}
	e.srvMu.Lock()
	e.srv = srv
	e.srvMu.Unlock()
}

func isOutOfSpace(problem string) bool {
	return strings.Contains(problem, "no space left") || strings.Contains(problem, "out of resources")
}

// FormatBytes writes n in binary units for people: "1.5 MiB", "512 B".
func FormatBytes(n int64) string {
	const unit = 1024
	if n < unit && n > -unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := int64(unit), 0
	for m := n / unit; m >= unit || m <= -unit; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(n)/float64(div), "KMGTPE"[exp])
}
