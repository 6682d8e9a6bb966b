package rowstate

import (
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/tablecast/tablecast/schema"
)

// Config is what a Maintainer needs. The zero value of each optional field
// means the default written beside it.
type Config struct {
	// DB is the database whose events the maintainer applies (required):
	// one maintainer per database, beside the reader that streams it.
	DB string
	// Prefix is the events' subject prefix. Default "tablecast".
	Prefix string
	// Events is the event stream. Default "TABLECAST".
	Events string
	// Tables whose rows are kept: "*" for every table, or "schema.table"
	// and "schema.*" patterns. Default ["*"]. ["-"] keeps none.
	Tables []string
	// Active, when set, is asked before each batch: the maintainer applies
	// events only while it returns true (the reader beside it streams,
	// holding the slot), so that a standby process does not write too.
	// Default: always.
	Active func() bool
	// BatchEvents and BatchWait bound a batch: up to BatchEvents events,
	// taken as long as more arrive within BatchWait. Defaults 1024 and 2ms.
	BatchEvents int
	BatchWait   time.Duration
	// RetryMin and RetryMax bound the backoff after a failure. Defaults
	// 500ms and 30s.
	RetryMin, RetryMax time.Duration
	// Storage and Replicas of the rows stream. Defaults file and 1.
	Streams StreamsConfig

	Logger     *slog.Logger
	Registerer prometheus.Registerer
}

func (c Config) withDefaults() (Config, error) {
	if c.Prefix == "" {
		c.Prefix = "tablecast"
	}
	if c.Events == "" {
		c.Events = "TABLECAST"
	}
	if len(c.Tables) == 0 {
		c.Tables = []string{"*"}
	}
	if c.BatchEvents <= 0 {
		c.BatchEvents = 1024
	}
	if c.BatchWait <= 0 {
		c.BatchWait = 2 * time.Millisecond
	}
	if c.RetryMin <= 0 {
		c.RetryMin = 500 * time.Millisecond
	}
	if c.RetryMax <= 0 {
		c.RetryMax = 30 * time.Second
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	c.Streams.Events, c.Streams.Prefix = c.Events, c.Prefix
	var errs []error
	if c.DB == "" {
		errs = append(errs, errors.New("row state: no database"))
	}
	if _, err := ParsePatterns(c.Tables); err != nil {
		errs = append(errs, fmt.Errorf("tables: %w", err))
	}
	return c, errors.Join(errs...)
}

// Patterns are table patterns: "*", "schema.*" or "schema.table" (names
// as schema.ParseTableName reads them). "-" alone matches nothing.
type Patterns struct {
	all     bool
	schemas map[string]bool
	tables  map[[2]string]bool
}

// ParsePatterns parses a list of table patterns.
func ParsePatterns(list []string) (Patterns, error) {
	p := Patterns{schemas: map[string]bool{}, tables: map[[2]string]bool{}}
	for _, s := range list {
		switch s {
		case "":
			continue
		case "*":
			p.all = true
			continue
		case "-":
			if len(list) > 1 {
				return p, errors.New(`"-" (none) cannot be combined with table names`)
			}
			continue
		}
		sch, tbl, err := schema.ParseTableName(s)
		if err != nil {
			return p, fmt.Errorf("%q: %w (want schema.table, schema.* or *)", s, err)
		}
		if tbl == "*" {
			p.schemas[sch] = true
		} else {
			p.tables[[2]string{sch, tbl}] = true
		}
	}
	return p, nil
}

// Match reports whether the table matches a pattern.
func (p Patterns) Match(schemaName, table string) bool {
	return p.all || p.schemas[schemaName] || p.tables[[2]string{schemaName, table}]
}

// Covers reports whether every table pattern (as ParsePatterns reads it)
// matches lies within p: "*" within "*" only, "schema.*" within "*" or
// itself, "schema.table" within any pattern that matches it. "-" and ""
// match no table and lie within any.
func (p Patterns) Covers(pattern string) bool {
	switch pattern {
	case "", "-":
		return true
	case "*":
		return p.all
	}
	sch, tbl, err := schema.ParseTableName(pattern)
	if err != nil {
		return false
	}
	if tbl == "*" {
		return p.all || p.schemas[sch]
	}
	return p.Match(sch, tbl)
}
