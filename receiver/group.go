package receiver

import (
	"context"
	"errors"
	"fmt"
)

// Bounds of a group (Run): the batches handled before one commit.
const (
	maxGroup      = 64
	maxGroupBytes = 32 << 20
)

var (
	// errFlush: the batch needs the store as it is, but its device has batches staged
	// in the caller's group; the caller commits the group and handles the batch again.
	errFlush = errors.New("commit the group first")
	// errStaged: the device has batches staged in another caller's group, not
	// committed yet; the caller retries later. It is not a refusal.
	errStaged = errors.New("device has batches in a group not committed yet")
)

// group collects the batches that handle decided to store, so that they are stored
// with one commit (GroupStore.AppendGroup). Only the goroutine that made it uses it.
// Until commit returns, no receipt of the group may go out: the heads of its devices
// are ahead of the store.
type group struct {
	entries []Entry
	devs    []*device // each device with staged entries, once
	unheld  []unheld  // batches taken out of a hold to be staged
	bytes   int
	// closed asks for a commit before the next batch (a staged batch rotates its
	// device's key, which the next batch may be signed with).
	closed bool
}

// unheld is a held batch staged in a group: it goes back to the hold if the commit
// fails.
type unheld struct {
	d  *device
	hb heldBatch
}

// stage adds e, the batch after d's head. The caller holds d.mu.
func (g *group) stage(d *device, e Entry) {
	if d.group == nil {
		d.group = g
		g.devs = append(g.devs, d)
	}
	g.entries = append(g.entries, e)
	for _, ev := range e.Batch.Events {
		g.bytes += len(ev)
	}
}

// full reports whether the group should be committed before another batch is added.
func (g *group) full() bool {
	return g.closed || len(g.entries) >= maxGroup || g.bytes >= maxGroupBytes
}

// commit stores the group's entries (one AppendGroup, or Append for each if the store
// has no AppendGroup) and then lets go of its devices. If storing fails, each device's
// head is reread from the store at its next batch and the batches taken from a hold go
// back into it; the caller passes on none of the group's receipts and handles its
// batches again.
func (r *Receiver) commit(ctx context.Context, g *group) error {
	var err error
	if len(g.entries) > 0 {
		if gs, ok := r.store.(GroupStore); ok {
			err = gs.AppendGroup(ctx, g.entries)
		} else {
			for _, e := range g.entries {
				if err = r.store.Append(ctx, e); err != nil {
					break
				}
			}
		}
		if err != nil {
			err = fmt.Errorf("store group of %d batches: %w", len(g.entries), err)
		}
	}
	for _, d := range g.devs {
		d.mu.Lock()
		d.group = nil
		if err != nil {
			d.loaded = false
		}
		d.mu.Unlock()
	}
	if err != nil {
		for _, u := range g.unheld {
			u.d.mu.Lock()
			if _, ok := u.d.held[u.hb.header.Seq]; !ok && len(u.d.held) < r.cfg.MaxHeld {
				u.d.held[u.hb.header.Seq] = u.hb
				u.d.heldBytes += len(u.hb.raw)
			}
			u.d.mu.Unlock()
		}
		return err
	}
	for _, e := range g.entries {
		r.stats.batches.Add(1)
		r.stats.events.Add(uint64(len(e.Batch.Events)))
		r.followRotation(ctx, e.Site, e.Device, e.Batch, e.Header)
	}
	return nil
}
