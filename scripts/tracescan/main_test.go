package main

import (
	"bytes"
	"os"
	"path/filepath"
	"runtime/trace"
	"strings"
	"testing"
	"time"
)

// parkedReader waits on ch: the goroutine the test looks for.
func parkedReader(ch chan struct{}, done chan struct{}) {
	<-ch
	close(done)
}

// TestScanFindsTheStop: a goroutine blocked 30 ms on a channel, traced, is
// reported as stopped that long, waiting on a channel receive, and a
// goroutine the match does not name is not.
func TestScanFindsTheStop(t *testing.T) {
	path := filepath.Join(t.TempDir(), "t.trace")
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	if err := trace.Start(f); err != nil {
		t.Fatal(err)
	}
	ch, done := make(chan struct{}), make(chan struct{})
	go parkedReader(ch, done)
	time.Sleep(30 * time.Millisecond)
	close(ch)
	<-done
	trace.Stop()
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}

	var out bytes.Buffer
	if err := scan(&out, path, "tracescan.parkedReader", 20*time.Millisecond); err != nil {
		t.Fatal(err)
	}
	got := out.String()
	var stops []string
	for _, line := range strings.Split(got, "\n") {
		if strings.Contains(line, " stopped ") {
			stops = append(stops, line)
		}
	}
	if len(stops) != 1 || !strings.Contains(stops[0], "chan receive") || !strings.Contains(stops[0], "tracescan.parkedReader") {
		t.Fatalf("want one stop of 20 ms or more, on a channel receive in tracescan.parkedReader; got:\n%s", got)
	}

	out.Reset()
	if err := scan(&out, path, "tracescan.noSuchFunction", 20*time.Millisecond); err != nil {
		t.Fatal(err)
	}
	if strings.Contains(out.String(), " stopped ") {
		t.Fatalf("a goroutine the match does not name was reported:\n%s", out.String())
	}
}

// TestScanRefusesWhatIsNotATrace: a file that is not a trace is an error
// naming it, not an empty report.
func TestScanRefusesWhatIsNotATrace(t *testing.T) {
	path := filepath.Join(t.TempDir(), "not.trace")
	if err := os.WriteFile(path, []byte("not a trace"), 0o644); err != nil {
		t.Fatal(err)
	}
	err := scan(&bytes.Buffer{}, path, "x", time.Millisecond)
	if err == nil || !strings.Contains(err.Error(), path) {
		t.Fatalf("scan of a file that is not a trace: %v, want an error naming it", err)
	}
	if err := scan(&bytes.Buffer{}, filepath.Join(t.TempDir(), "missing"), "x", time.Millisecond); err == nil {
		t.Fatal("scan of a missing file: no error")
	}
}
