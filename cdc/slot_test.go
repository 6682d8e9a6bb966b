package cdc

import (
	"context"
	"errors"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pglogrepl"
)

// holdSlot starts replication from db's slot on a connection of its own,
// as a reader would, and returns the pid of the walsender holding it.
func holdSlot(t *testing.T, db *testDB) int {
	t.Helper()
	holder, err := connectReplication(context.Background(), db.url)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = holder.Close(context.Background()) })
	if err := pglogrepl.StartReplication(context.Background(), holder, db.slot, 0, pglogrepl.StartReplicationOptions{
		PluginArgs: []string{"proto_version '1'", "publication_names 'tc_pub'"},
	}); err != nil {
		t.Fatalf("hold slot: %v", err)
	}
	var pid int
	waitFor(t, 10*time.Second, "the slot to be active", func() bool {
		s, err := SlotStatus(context.Background(), db.config())
		if err != nil {
			t.Fatal(err)
		}
		pid = s.PID
		return s.Active
	})
	return pid
}

func TestSlotStatus(t *testing.T) {
	db := newTestDB(t, `CREATE TABLE items (id int PRIMARY KEY)`, `CREATE PUBLICATION tc_pub FOR TABLE items`)
	ctx := context.Background()
	if _, err := SlotStatus(ctx, db.config()); !errors.Is(err, ErrNoSlot) {
		t.Fatalf("missing slot: got %v, want ErrNoSlot", err)
	}
	createSlot(t, db)
	db.exec(t, `INSERT INTO items SELECT generate_series(1, 1000)`)
	s, err := SlotStatus(ctx, db.config())
	if err != nil {
		t.Fatal(err)
	}
	if s.Name != db.slot || s.Type != "logical" || s.Plugin != "pgoutput" || s.Database != db.name || s.Active || s.PID != 0 {
		t.Errorf("slot %+v", s)
	}
	if s.RestartLSN == "" || s.ConfirmedFlushLSN == "" || s.WALStatus != "reserved" || s.SafeWALSize != nil || s.KeepLimit != -1 {
		t.Errorf("slot %+v", s)
	}
	if s.LagBytes <= 0 || s.RetainedBytes < s.LagBytes {
		t.Errorf("lag %d, retained %d after writing 1000 rows: want lag > 0 and retained >= lag", s.LagBytes, s.RetainedBytes)
	}

	pid := holdSlot(t, db)
	if s, _ = SlotStatus(ctx, db.config()); !s.Active || s.PID != pid {
		t.Errorf("held slot: active %t pid %d, want true %d", s.Active, s.PID, pid)
	}
}

func TestSlotDrop(t *testing.T) {
	db := newTestDB(t, `CREATE TABLE items (id int PRIMARY KEY)`, `CREATE PUBLICATION tc_pub FOR TABLE items`)
	ctx := context.Background()
	if _, err := DropSlot(ctx, db.config(), false); !errors.Is(err, ErrNoSlot) {
		t.Fatalf("missing slot: got %v, want ErrNoSlot", err)
	}

	t.Run("inactive", func(t *testing.T) {
		createSlot(t, db)
		d, err := DropSlot(ctx, db.config(), false)
		if err != nil {
			t.Fatal(err)
		}
		if d.Slot.Name != db.slot || len(d.Terminated) != 0 {
			t.Errorf("dropped %+v", d)
		}
		if _, err := SlotStatus(ctx, db.config()); !errors.Is(err, ErrNoSlot) {
			t.Errorf("slot still there: %v", err)
		}
	})

	t.Run("active", func(t *testing.T) {
		createSlot(t, db)
		pid := holdSlot(t, db)
		_, err := DropSlot(ctx, db.config(), false)
		var active *SlotActiveError
		if !errors.As(err, &active) || active.PID != pid || !strings.Contains(err.Error(), "held by pid") {
			t.Fatalf("got %v, want a SlotActiveError naming pid %d", err, pid)
		}
		if _, err := SlotStatus(ctx, db.config()); err != nil {
			t.Fatalf("slot gone after a refused drop: %v", err)
		}

		d, err := DropSlot(ctx, db.config(), true)
		if err != nil {
			t.Fatalf("forced drop: %v", err)
		}
		if !slices.Contains(d.Terminated, pid) {
			t.Errorf("terminated %v, want %d among them", d.Terminated, pid)
		}
		if _, err := SlotStatus(ctx, db.config()); !errors.Is(err, ErrNoSlot) {
			t.Errorf("slot still there: %v", err)
		}
	})

	t.Run("other database", func(t *testing.T) {
		other := newTestDB(t)
		other.slot = db.slot
		createSlot(t, other)
		_, err := DropSlot(ctx, db.config(), true)
		if err == nil || !strings.Contains(err.Error(), "belongs to database "+`"`+other.name+`"`) {
			t.Fatalf("got %v, want a refusal naming database %s", err, other.name)
		}
		if _, err := SlotStatus(ctx, other.config()); err != nil {
			t.Fatalf("the other database's slot is gone: %v", err)
		}
	})
}
