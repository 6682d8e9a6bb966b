package cdc

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"
)

// TestQuotedTableNames: TABLECAST_TABLES and on-demand snapshots take
// names with spaces and dots when quoted.
func TestQuotedTableNames(t *testing.T) {
	db := newTestDB(t, `CREATE SCHEMA "My Schema"`,
		`CREATE TABLE "My Schema"."ordérs.v2" (id int PRIMARY KEY, "Total Amount" numeric)`,
		`INSERT INTO "My Schema"."ordérs.v2" VALUES (1, 9.5)`,
		`CREATE TABLE other (id int PRIMARY KEY)`)
	cfg := db.config()
	cfg.Tables = []string{`"My Schema"."ordérs.v2"`}
	n := startNATS(t)
	startReader(t, cfg, n)
	db.exec(t, `INSERT INTO other VALUES (1)`) // not in the publication
	db.exec(t, `INSERT INTO "My Schema"."ordérs.v2" VALUES (2, 1)`)
	if _, err := RequestSnapshot(context.Background(), n.NC, testPrefix, cfg.Slot, `"My Schema"."ordérs.v2"`); err != nil {
		t.Fatal(err)
	}
	evs := n.readAll(t, 4, 30*time.Second) // initial read of 1, create 2, on-demand reads of 1 and 2
	var got []string
	for _, e := range evs {
		if e.Schema != "My Schema" || e.Table != "ordérs.v2" {
			t.Fatalf("event for %s.%s: only the quoted table is published", e.Schema, e.Table)
		}
		got = append(got, fmt.Sprintf("%s:%v", e.Op, e.Key["id"]))
	}
	if strings.Join(got, " ") != "read:1 create:2 read:1 read:2" {
		t.Fatalf("events %v, want read:1 create:2 read:1 read:2", got)
	}
	if evs[1].Subject != "tc."+db.name+".My%20Schema.ordérs%2Ev2.create" {
		t.Errorf("subject %s", evs[1].Subject)
	}
}
