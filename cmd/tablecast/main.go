// Command tablecast streams PostgreSQL row changes to NATS JetStream.
//
// It is thin on purpose: it reads the configuration, builds the parts from
// the packages, runs them and stops them on SIGINT or SIGTERM. SIGHUP
// makes a running gateway reload its keys files; it never stops tablecast.
package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"reflect"
	"runtime/debug"
	"strings"
	"syscall"

	"github.com/tablecast/tablecast/cdc"
)

// version is set at build time with -ldflags "-X main.version=…".
var version = "dev"

// defaultGCPercent replaces Go's GOGC=100 when GOGC is not set. Most of
// the allocation of a running tablecast is its embedded JetStream's, per
// message stored; halving the GC cycles took the reader from 0.67 to 0.77
// of pg_recvlogical's rate on scripts/bench-cdc.sh, for about a third more
// peak memory (see defaultReaderMemoryLimit).
const defaultGCPercent = 200

// defaultReaderMemoryLimit is the soft memory limit (runtime/debug's
// SetMemoryLimit, GOMEMLIMIT) of `tablecast cdc` when GOMEMLIMIT is not set.
// The reader's live heap is tens of megabytes, mostly its embedded
// JetStream's (the duplicate window's ids, the write cache of the block
// being written); at GOGC=200 the heap grows to three times that between
// collections. Near the limit the collector runs sooner instead, which
// keeps the process under 150 MiB resident through a transaction of a
// million rows and a sustained load, for about a tenth more CPU at full
// rate (scripts/bench-cdc.sh). `run` and `gateway` keep GOGC alone: a
// gateway's heap grows with its connections, past any limit fixed here.
const defaultReaderMemoryLimit = 112 << 20

// defaultRowStateMemoryLimit replaces defaultReaderMemoryLimit when the
// reader keeps the row state (TABLECAST_ROW_STATE=true). The state adds a
// second stream's write cache, the blocks of events the maintainer reads,
// and the rows stream's index of one subject per row, which took the live
// heap to about 80 MB: under 112 MiB the collector then ran back to back,
// and the process spent 97 CPU-seconds per million changes instead of 54
// at this limit (scripts/bench-cdc.sh 300000, workload many), for a peak of
// about 195 MiB resident instead of 135.
const defaultRowStateMemoryLimit = 176 << 20

// hangups receives SIGHUP. A running gateway reloads its keys files on it
// (runServer); for every other command it is ignored rather than ending
// the process, as it would by default.
var hangups = make(chan os.Signal, 1)

func main() {
	if os.Getenv("GOGC") == "" {
		debug.SetGCPercent(defaultGCPercent)
	}
	signal.Notify(hangups, syscall.SIGHUP)
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := dispatch(ctx, os.Args[1:])
	if err != nil && ctx.Err() != nil && errors.Is(err, context.Canceled) && len(os.Args) > 1 && stopsOnSignal(os.Args[1]) {
		// SIGINT or SIGTERM during start-up (waiting for NATS, say) is a
		// stop asked for, as it is once running: not a failure to report.
		err = nil
	}
	stop()
	if err != nil {
		fmt.Fprintln(os.Stderr, "tablecast: "+describe(err))
		var ue usageError
		if errors.As(err, &ue) {
			os.Exit(2)
		}
		os.Exit(1)
	}
}

// stopsOnSignal reports whether command runs until SIGINT or SIGTERM, which
// then end it cleanly.
func stopsOnSignal(command string) bool {
	switch command {
	case "run", "cdc", "gateway", "tail":
		return true
	}
	return false
}

// describe is err's message, with every cdc.ConfigError in it naming its
// environment variable where it names a Config field: library packages
// speak of Config fields, users of environment variables.
func describe(err error) string {
	msg := err.Error()
	var walk func(error)
	walk = func(e error) {
		if ce, ok := e.(*cdc.ConfigError); ok && ce.Field() != "" {
			if v := variableOf(ce.Field()); v != "" {
				msg = strings.Replace(msg, ce.Error(), v+": "+ce.Problem(), 1)
			}
			return
		}
		switch u := e.(type) {
		case interface{ Unwrap() []error }:
			for _, e := range u.Unwrap() {
				walk(e)
			}
		case interface{ Unwrap() error }:
			if e := u.Unwrap(); e != nil {
				walk(e)
			}
		}
	}
	walk(err)
	return msg
}

// variableOf names the environment variable of the Config field with the
// given name (cdc.Config's fields carry the same names as the ones they
// come from), or "" when there is none.
func variableOf(field string) string {
	f, ok := reflect.TypeFor[Config]().FieldByName(field)
	if !ok || f.Tag.Get("envconfig") == "" {
		return ""
	}
	return envPrefix + "_" + f.Tag.Get("envconfig")
}

type usageError struct{ msg string }

func (e usageError) Error() string { return e.msg }

func dispatch(ctx context.Context, args []string) error {
	if len(args) == 0 {
		printHelp(os.Stdout)
		return nil
	}
	switch args[0] {
	case "help", "-h", "--help":
		printHelp(os.Stdout)
		return nil
	case "version", "--version":
		printVersion()
		return nil
	case "run", "cdc":
		if len(args) > 1 {
			return usageError{fmt.Sprintf("%s takes no arguments (configure it with TABLECAST_ variables; see tablecast help)", args[0])}
		}
		cfg, err := loadConfig()
		if err != nil {
			return err
		}
		if args[0] == "cdc" && os.Getenv("GOMEMLIMIT") == "" {
			limit := int64(defaultReaderMemoryLimit)
			if cfg.RowState {
				limit = defaultRowStateMemoryLimit
			}
			if len(cfg.OldRows) > 0 {
				// The versions kept for old rows come on top, at most
				// the cache's size.
				limit += int64(cfg.OldRowsCacheBytes)
			}
			debug.SetMemoryLimit(limit)
		}
		return runServer(ctx, cfg, true, args[0] == "run")
	case "gateway":
		if len(args) > 1 {
			return usageError{"gateway takes no arguments (configure it with TABLECAST_ variables; see tablecast help)"}
		}
		cfg, err := loadConfig()
		if err != nil {
			return err
		}
		return runServer(ctx, cfg, false, true)
	case "tail":
		cfg, err := loadConfig()
		if err != nil {
			return err
		}
		return tail(ctx, cfg, args[1:], os.Stdout)
	case "doctor":
		if len(args) > 1 {
			return usageError{"doctor takes no arguments (it checks what TABLECAST_DATABASE_URL, TABLECAST_PUBLICATION, TABLECAST_TABLES and TABLECAST_SLOT name)"}
		}
		cfg, err := loadConfig()
		if err != nil {
			return err
		}
		return doctor(ctx, cfg, os.Stdout)
	case "snapshot":
		cfg, err := loadConfig()
		if err != nil {
			return err
		}
		return snapshotCmd(ctx, cfg, args[1:], os.Stdout)
	case "healthcheck":
		cfg, err := loadConfig()
		if err != nil {
			return err
		}
		return healthcheck(ctx, cfg, args[1:], os.Stdout)
	case "endpoints", "filters", "rules":
		cfg, err := loadConfig()
		if err != nil {
			return err
		}
		return manage(ctx, cfg, args[0], args[1:], os.Stdin, os.Stdout)
	case "slot":
		cmd, err := parseSlotArgs(args[1:])
		if err != nil {
			return err
		}
		cfg, err := loadConfig()
		if err != nil {
			return err
		}
		return cmd.run(ctx, cfg, os.Stdout)
	default:
		return usageError{fmt.Sprintf("unknown command %q (try tablecast help)", args[0])}
	}
}

func printVersion() {
	fmt.Printf("tablecast %s", version)
	if bi, ok := debug.ReadBuildInfo(); ok {
		fmt.Printf(" (%s", bi.GoVersion)
		for _, s := range bi.Settings {
			if s.Key == "vcs.revision" {
				fmt.Printf(", %s", s.Value)
			}
		}
		fmt.Print(")")
	}
	fmt.Println()
}
