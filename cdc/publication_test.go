package cdc

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"
)

// TestPublicationColumnListAndRowFilter: a publication's column list keeps
// a column (a password hash) out of every event, snapshot included, and
// its row filter keeps rows out; REPLICA IDENTITY USING INDEX makes the
// index's columns the key. (PostgreSQL 15 lets a filtered table take updates
// only when the filter uses replica-identity columns: tenant is in the key.)
func TestPublicationColumnListAndRowFilter(t *testing.T) {
	t.Parallel() // see parallelTests
	db := newTestDB(t,
		`CREATE TABLE users (id int, email text NOT NULL, password_hash text, tenant int NOT NULL, PRIMARY KEY (tenant, id))`,
		`INSERT INTO users VALUES (1, 'a@x', 'secret-1', 1), (2, 'b@x', 'secret-2', 2)`,
		`CREATE TABLE accounts (id int NOT NULL, code text NOT NULL, note text)`,
		`CREATE UNIQUE INDEX accounts_code ON accounts (code)`,
		`ALTER TABLE accounts REPLICA IDENTITY USING INDEX accounts_code`,
		`CREATE PUBLICATION tc_pub FOR TABLE users (id, email, tenant) WHERE (tenant = 1), accounts`)
	n := startNATS(t)
	r := startReader(t, db.config(), n)

	db.exec(t, `INSERT INTO users VALUES (3, 'c@x', 'secret-3', 1), (4, 'd@x', 'secret-4', 2)`)
	db.exec(t, `UPDATE users SET email = 'a2@x' WHERE id = 1`)
	db.exec(t, `INSERT INTO accounts VALUES (10, 'acc-10', 'n')`)
	db.exec(t, `UPDATE accounts SET note = 'changed' WHERE code = 'acc-10'`)
	db.exec(t, `DELETE FROM accounts WHERE code = 'acc-10'`)

	n.readAll(t, 6, 20*time.Second)
	time.Sleep(300 * time.Millisecond)
	evs := n.fetch(t)
	var users []string
	for _, e := range evs {
		if strings.Contains(string(e.Raw), "secret") || strings.Contains(string(e.Raw), "password_hash") {
			t.Fatalf("event %s carries a column outside the publication's column list", e.Raw)
		}
		if e.Table == "users" {
			if e.Data["tenant"] != float64(1) {
				t.Fatalf("event %s is outside the publication's row filter", e.Raw)
			}
			users = append(users, fmt.Sprintf("%s:%v", e.Op, e.Key["id"]))
		}
	}
	if strings.Join(users, " ") != "read:1 create:3 update:1" {
		t.Fatalf("users events %v, want read:1 create:3 update:1 (the snapshot too keeps to the row filter)", users)
	}
	var accounts []event
	for _, e := range evs {
		if e.Table == "accounts" {
			accounts = append(accounts, e)
		}
	}
	if len(accounts) != 3 {
		t.Fatalf("%d accounts events, want 3", len(accounts))
	}
	for _, e := range accounts {
		assertJSON(t, "accounts "+e.Op+" key", e.Key, `{"code":"acc-10"}`)
	}
	assertJSON(t, "accounts delete old", accounts[2].Old, `{"code":"acc-10"}`)

	// An on-demand snapshot keeps to the same column list and row filter.
	if _, err := RequestSnapshot(context.Background(), n.NC, testPrefix, db.slot, "public.users"); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 30*time.Second, "the on-demand snapshot", func() bool { return r.log.contains("on-demand snapshot done") })
	waitFor(t, 10*time.Second, "2 read events", func() bool { return len(n.fetch(t)) >= len(evs)+2 })
	var reads []string
	for _, e := range n.fetch(t)[len(evs):] {
		if strings.Contains(string(e.Raw), "secret") || e.Data["tenant"] != float64(1) {
			t.Fatalf("on-demand snapshot event %s leaves the publication's column list or row filter", e.Raw)
		}
		reads = append(reads, fmt.Sprintf("%s:%v", e.Op, e.Key["id"]))
	}
	if strings.Join(reads, " ") != "read:1 read:3" {
		t.Fatalf("on-demand snapshot sent %v, want read:1 read:3", reads)
	}
}
