package cdc

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/nats-io/nats.go/jetstream"
)

// A slot that was streamed before and is now missing was lost: dropped,
// invalidated by max_slot_wal_keep_size, or left behind by a failover (before
// PostgreSQL 17, slots are not copied to standbys; from 17 a slot created
// with failover = true and listed in synchronized_standby_slots is). The
// position record in the state bucket outlives the slot, so the reader knows
// the last position it confirmed, and which PostgreSQL (system identifier,
// timeline) it was confirmed on. Every change committed after that position
// and before the new slot's consistent point never reaches the stream: the
// reader says so, with both positions and the cause it can tell, in its log,
// in /healthz (slot_lost) and in tablecast_cdc_slots_lost_total, instead of
// starting over in silence.

// SlotLoss describes a slot that was lost and created again.
type SlotLoss struct {
	// Cause is what the reader can tell of how the slot was lost.
	Cause string `json:"cause"`
	// LastConfirmed is the last position confirmed on the old slot: every
	// change committed before it is in the stream.
	LastConfirmed string `json:"last_confirmed_lsn"`
	// NewSlotFrom is the new slot's consistent point: every change
	// committed after it is streamed. Changes committed between the two
	// (on the old primary, after LastConfirmed, or before NewSlotFrom) are
	// not in the stream.
	NewSlotFrom string `json:"new_slot_from_lsn"`
	// OldOrigin and Origin are "<system identifier>/<timeline>/<db>/<slot>"
	// of the old slot's last record and of the new slot.
	OldOrigin string    `json:"old_origin"`
	Origin    string    `json:"origin"`
	At        time.Time `json:"at"`
	// Snapshot says whether the new slot came with a snapshot of the
	// tables' current rows (TABLECAST_SNAPSHOT=initial), which brings
	// consumers' copies back to the database's rows, deletes aside.
	Snapshot bool `json:"snapshot"`
}

// lostSlotRecord reads the slot's position record before a missing slot is
// created: nil when there is none (the slot was never streamed into this
// NATS) or it cannot be read.
func (r *Reader) lostSlotRecord(ctx context.Context) *positionRecord {
	e, err := r.state.Get(ctx, positionKey(r.db, r.cfg.Slot))
	if err != nil {
		if !errors.Is(err, jetstream.ErrKeyNotFound) {
			r.log.Warn("cannot read the position record of the missing slot; a lost slot goes unreported", "err", err)
		}
		return nil
	}
	var rec positionRecord
	if err := json.Unmarshal(e.Value(), &rec); err != nil || rec.LSN == "" {
		return nil
	}
	return &rec
}

// reportSlotLoss says what was lost once the slot is created again at
// point.
func (r *Reader) reportSlotLoss(old *positionRecord, origin string, point pglogrepl.LSN) {
	loss := &SlotLoss{
		Cause:         slotLossCause(old.Origin, origin, r.cfg.Slot),
		LastConfirmed: old.LSN,
		NewSlotFrom:   point.String(),
		OldOrigin:     old.Origin,
		Origin:        origin,
		At:            time.Now().UTC(),
		Snapshot:      r.cfg.Snapshot == SnapshotInitial,
	}
	r.slotLoss.Store(loss)
	r.m.slotsLost.Inc()
	r.log.Error("the replication slot was lost and has been created again: changes committed after the last confirmed position and before the new slot's are not in the stream",
		"cause", loss.Cause, "last_confirmed_lsn", loss.LastConfirmed, "new_slot_from_lsn", loss.NewSlotFrom,
		"old_origin", loss.OldOrigin, "origin", loss.Origin, "snapshot_taken_again", loss.Snapshot)
}

// slotLossCause compares the origins "<sysid>/<timeline>/<db>/<slot>".
func slotLossCause(old, now, slot string) string {
	oldSys, oldTL, ok1 := splitOrigin(old)
	sys, tl, ok2 := splitOrigin(now)
	switch {
	case !ok1 || !ok2:
		return fmt.Sprintf("slot %s is missing", slot)
	case oldSys != sys:
		return fmt.Sprintf("slot %s is missing and this is another PostgreSQL cluster (system identifier %s, was %s): restored from a backup, or replaced", slot, sys, oldSys)
	case tl > oldTL:
		return fmt.Sprintf("PostgreSQL was promoted (timeline %d, was %d) and the new primary has no slot %s: before PostgreSQL 17 slots are not copied to standbys; from 17, create the slot with failover = true and list it in synchronized_standby_slots", tl, oldTL, slot)
	default:
		return fmt.Sprintf("slot %s was dropped, or invalidated by max_slot_wal_keep_size, on the same PostgreSQL (timeline %d)", slot, tl)
	}
}

func splitOrigin(origin string) (sysid string, timeline int, ok bool) {
	parts := strings.SplitN(origin, "/", 3)
	if len(parts) < 3 {
		return "", 0, false
	}
	tl, err := strconv.Atoi(parts[1])
	if err != nil {
		return "", 0, false
	}
	return parts[0], tl, true
}
