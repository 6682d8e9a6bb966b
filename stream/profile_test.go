package stream

import (
	"bytes"
	"context"
	"fmt"
	"runtime/pprof"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
)

// TestInProcessConnLabels: the goroutines of an in-process connection to
// the embedded server carry the label of the side they serve. The server's
// (reading what the client sends, writing what it receives) carry
// ProfileNATSServer, the client's (nats.go's reader and flusher)
// ProfileNATSClient; started from the connecting goroutine, the server's
// took the client's label, and a CPU profile counted JetStream's parsing
// of the reader's messages as the client's.
func TestInProcessConnLabels(t *testing.T) {
	e := startTestServer(t, "")
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	nc, err := Connect(ctx, e.ClientURL(), "labels-test", quietLogger(), nats.InProcessServer(e))
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}

	// The goroutines are checked until all are as wanted, for a while: on
	// a loaded machine the connection's goroutines may not have started
	// when Connect returns.
	var problems []string
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		if problems = connLabelProblems(t); len(problems) == 0 || time.Now().After(deadline) {
			break
		}
	}
	for _, p := range problems {
		t.Error(p)
	}
}

// connLabelProblems lists what is wrong with the labels of the server's and
// the client's goroutines (TestInProcessConnLabels), nothing when all are
// as wanted.
func connLabelProblems(t *testing.T) []string {
	t.Helper()
	var problems []string
	// debug=1 groups goroutines by stack and prints each group's labels.
	var b bytes.Buffer
	if err := pprof.Lookup("goroutine").WriteTo(&b, 1); err != nil {
		t.Fatal(err)
	}
	label := func(frame string) []string {
		var labels []string
		for _, group := range strings.Split(b.String(), "\n\n") {
			if !strings.Contains(group, frame) {
				continue
			}
			l := "none"
			for _, line := range strings.Split(group, "\n") {
				if rest, ok := strings.CutPrefix(line, "# labels: "); ok {
					l = rest
				}
			}
			labels = append(labels, l)
		}
		return labels
	}
	// Every server goroutine serving a client carries the server's label
	// (those of socket connections start from its accept loop, labelled
	// since the server started).
	for _, frame := range []string{"server.(*client).readLoop", "server.(*client).writeLoop"} {
		got := label(frame)
		if len(got) == 0 {
			problems = append(problems, fmt.Sprintf("no goroutine in %s", frame))
		}
		for _, l := range got {
			if !strings.Contains(l, `"`+ProfileLabel+`":"`+ProfileNATSServer+`"`) {
				problems = append(problems, fmt.Sprintf("a goroutine in %s is labelled %s, want %s=%s", frame, l, ProfileLabel, ProfileNATSServer))
			}
		}
	}
	// The client's own carry the client's: at least this connection's
	// (another test's connection, opened without Connect, may be ending).
	for _, frame := range []string{"nats%2ego.(*Conn).readLoop", "nats%2ego.(*Conn).flusher"} {
		got := label(frame)
		if !slices.ContainsFunc(got, func(l string) bool {
			return strings.Contains(l, `"`+ProfileLabel+`":"`+ProfileNATSClient+`"`)
		}) {
			problems = append(problems, fmt.Sprintf("no goroutine in %s labelled %s=%s: %v", frame, ProfileLabel, ProfileNATSClient, got))
		}
	}
	return problems
}
