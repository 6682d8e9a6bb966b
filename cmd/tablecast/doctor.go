package main

import (
	"context"
	"fmt"
	"io"

	"github.com/tablecast/tablecast/cdc"
)

// doctor prints what cdc.Doctor finds, one finding a line, each one that
// is not ok followed by its fix, then a count. It fails (exit 1) when a
// finding fails; warnings alone do not.
func doctor(ctx context.Context, cfg Config, out io.Writer) error {
	findings, err := cdc.Doctor(ctx, cfg.cdcConfig())
	printFindings(out, findings)
	if err != nil {
		return fmt.Errorf("doctor: %w", err)
	}
	counts := map[string]int{}
	for _, f := range findings {
		counts[f.Status]++
	}
	fmt.Fprintf(out, "\n%d ok, %d warn, %d fail\n", counts[cdc.StatusOK], counts[cdc.StatusWarn], counts[cdc.StatusFail])
	if n := counts[cdc.StatusFail]; n > 0 {
		return fmt.Errorf("doctor: %d of %d checks failed; each is followed by its fix", n, len(findings))
	}
	return nil
}

// printFindings writes
//
//	ok    wal_level              logical
//	warn  table public.events    all columns, all rows, no key: …
//	      fix: ALTER TABLE "public"."events" REPLICA IDENTITY FULL; …
func printFindings(out io.Writer, findings []cdc.Finding) {
	width := 0
	for _, f := range findings {
		width = max(width, len(f.Check))
	}
	for _, f := range findings {
		fmt.Fprintf(out, "%-4s  %-*s  %s\n", f.Status, width, f.Check, f.Detail)
		if f.Status != cdc.StatusOK && f.Fix != "" {
			fmt.Fprintf(out, "      fix: %s\n", f.Fix)
		}
	}
}
