// tracescan reads a Go execution trace (from /debug/pprof/trace, with
// TABLECAST_PPROF=true) and shows when the goroutines whose stack names
// -match stopped running, and for how long: waiting (on the network, a
// lock, a channel, a system call) and then runnable, waiting for a core.
// Every stop of -min or longer is printed with the stack it stopped in,
// then the totals by reason. It tells a reader that was not reading (its
// own work, a lock, the scheduler) from one whose data came late.
//
//	cd scripts/tracescan && go run . -match 'cdc.(*session).loop' -min 5ms trace.out
//
// It is a module of its own, so that its trace parser
// (golang.org/x/exp/trace) is not a dependency of tablecast.
package main

import (
	"flag"
	"fmt"
	"io"
	"os"
	"sort"
	"strings"
	"time"

	"golang.org/x/exp/trace"
)

// goroutine is what is known of one goroutine so far.
type goroutine struct {
	match    bool       // its stack named -match once
	off      trace.Time // when it last stopped running (0: running, or unknown)
	runnable trace.Time // when it became runnable since (0: not yet)
	reason   string     // why it stopped: the state it went to and the reason
	stack    string     // where it stopped
}

func main() {
	match := flag.String("match", "cdc.(*session).loop", "a function the goroutines' stacks hold")
	min := flag.Duration("min", 5*time.Millisecond, "print every stop at least this long")
	flag.Parse()
	if flag.NArg() != 1 {
		fmt.Fprintln(os.Stderr, "usage: tracescan [-match func] [-min duration] trace-file")
		os.Exit(2)
	}
	if err := scan(os.Stdout, flag.Arg(0), *match, *min); err != nil {
		fmt.Fprintln(os.Stderr, "tracescan:", err)
		os.Exit(1)
	}
}

// scan writes to w what main prints.
func scan(w io.Writer, path, match string, min time.Duration) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	r, err := trace.NewReader(f)
	if err != nil {
		return fmt.Errorf("read trace %s: %w", path, err)
	}
	gs := map[trace.GoID]*goroutine{}
	total := map[string]time.Duration{}
	count := map[string]int{}
	var start, end trace.Time
	var marking trace.Time
	var markTotal time.Duration
	marks := 0
	for {
		ev, err := r.ReadEvent()
		if err == io.EOF {
			break
		}
		if err != nil {
			return fmt.Errorf("read trace %s: %w", path, err)
		}
		if start == 0 {
			start = ev.Time()
		}
		end = ev.Time()
		switch ev.Kind() {
		case trace.EventRangeBegin:
			if strings.HasPrefix(ev.Range().Name, "GC concurrent mark") {
				marking = ev.Time()
			}
		case trace.EventRangeEnd:
			if strings.HasPrefix(ev.Range().Name, "GC concurrent mark") && marking != 0 {
				markTotal += ev.Time().Sub(marking)
				marks++
				marking = 0
			}
		case trace.EventStateTransition:
			st := ev.StateTransition()
			if st.Resource.Kind != trace.ResourceGoroutine {
				continue
			}
			id := st.Resource.Goroutine()
			from, to := st.Goroutine()
			g := gs[id]
			if g == nil {
				g = &goroutine{}
				gs[id] = g
			}
			if !g.match && strings.Contains(frames(st.Stack, 64), match) {
				g.match = true
			}
			switch {
			case to == trace.GoRunning:
				if g.match && g.off != 0 {
					stopped := ev.Time().Sub(g.off)
					var queued time.Duration
					if g.runnable != 0 {
						queued = ev.Time().Sub(g.runnable)
					}
					total[g.reason] += stopped - queued
					count[g.reason]++
					total["runnable, waiting for a core"] += queued
					if stopped >= min || queued >= min/4 {
						fmt.Fprintf(w, "%10.3f ms  g%-6d stopped %8.3f ms (runnable %7.3f ms)  %-22s %s\n",
							float64(g.off.Sub(start))/1e6, id, float64(stopped)/1e6, float64(queued)/1e6, g.reason, g.stack)
					}
				}
				g.off, g.runnable = 0, 0
			case from == trace.GoRunning:
				g.off, g.runnable = ev.Time(), 0
				g.reason = to.String()
				if st.Reason != "" {
					g.reason += ": " + st.Reason
				}
				g.stack = frames(st.Stack, 6)
				if to == trace.GoRunnable {
					g.runnable = ev.Time()
				}
			case to == trace.GoRunnable:
				g.runnable = ev.Time()
			}
		}
	}
	fmt.Fprintf(w, "\n%.3f s of trace; time stopped, by reason, of the goroutines naming %s:\n", float64(end.Sub(start))/1e9, match)
	reasons := make([]string, 0, len(total))
	for k := range total {
		reasons = append(reasons, k)
	}
	sort.Slice(reasons, func(i, j int) bool { return total[reasons[i]] > total[reasons[j]] })
	for _, k := range reasons {
		fmt.Fprintf(w, "  %-32s %10.1f ms", k, float64(total[k])/1e6)
		if n := count[k]; n > 0 {
			fmt.Fprintf(w, " in %d stops", n)
		}
		fmt.Fprintln(w)
	}
	fmt.Fprintf(w, "the collector marked %d times, %.1f ms in all\n", marks, float64(markTotal)/1e6)
	return nil
}

// frames names the first n functions of s, innermost first.
func frames(s trace.Stack, n int) string {
	var names []string
	for f := range s.Frames() {
		names = append(names, f.Func)
		if len(names) == n {
			break
		}
	}
	return strings.Join(names, " < ")
}
