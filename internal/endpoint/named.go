package endpoint

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// Filters and rules: kept by name (the name is the key, and never
// changes), with the same operations. namedItem is what the shared code
// needs of each.
type namedItem interface {
	itemName() string
	setTimes(created, updated time.Time)
	times() (created, updated time.Time)
	setRevision(uint64)
	prepare(errs *fieldErrors, tables Tables) // defaults, then validation
}

func (f *Filter) itemName() string                    { return f.Name }
func (f *Filter) setTimes(created, updated time.Time) { f.CreatedAt, f.UpdatedAt = created, updated }
func (f *Filter) times() (time.Time, time.Time)       { return f.CreatedAt, f.UpdatedAt }
func (f *Filter) setRevision(r uint64)                { f.Revision = r }
func (f *Filter) prepare(errs *fieldErrors, tables Tables) {
	f.ApplyDefaults()
	f.validate(errs, tables)
}

func (r *Rule) itemName() string                    { return r.Name }
func (r *Rule) setTimes(created, updated time.Time) { r.CreatedAt, r.UpdatedAt = created, updated }
func (r *Rule) times() (time.Time, time.Time)       { return r.CreatedAt, r.UpdatedAt }
func (r *Rule) setRevision(rev uint64)              { r.Revision = rev }
func (r *Rule) prepare(errs *fieldErrors, tables Tables) {
	r.ApplyDefaults()
	r.validate(errs, tables)
}

// kindOf names a bucket's items in messages.
func (c *cache) kind() string {
	if c.what == "filters" {
		return "filter"
	}
	return "rule"
}

func (s *Store) getNamed(ctx context.Context, c *cache, name string) (namedItem, error) {
	if !nameOK(name) {
		return nil, fmt.Errorf("%s %q: %w", c.kind(), short(name), ErrNotFound)
	}
	e, err := c.kv.Get(ctx, nameKey(name))
	switch {
	case errors.Is(err, jetstream.ErrKeyNotFound):
		return nil, fmt.Errorf("%s %q: %w", c.kind(), name, ErrNotFound)
	case err != nil:
		return nil, fmt.Errorf("read %s %q: %w", c.kind(), name, err)
	}
	v, err := c.decode(e.Value(), e.Revision())
	if err != nil {
		return nil, fmt.Errorf("read %s %q: stored value: %w", c.kind(), name, err)
	}
	return v.(namedItem), nil
}

func (s *Store) createNamed(ctx context.Context, c *cache, it namedItem) error {
	var errs fieldErrors
	now := s.cfg.Now().UTC()
	it.setTimes(now, now)
	it.setRevision(0)
	it.prepare(&errs, s.cfg.Tables)
	if err := errs.err(); err != nil {
		return err
	}
	data, err := json.Marshal(it)
	if err != nil {
		return fmt.Errorf("encode %s: %w", c.kind(), err)
	}
	wctx, cancel := writeCtx(ctx)
	rev, err := c.kv.Create(wctx, nameKey(it.itemName()), data)
	cancel()
	switch {
	case isConflict(err):
		return fmt.Errorf("%s name %q: %w", c.kind(), it.itemName(), ErrNameTaken)
	case err != nil:
		return fmt.Errorf("create %s %q: %w", c.kind(), it.itemName(), err)
	}
	it.setRevision(rev)
	c.waitApplied(ctx, rev)
	return nil
}

// updateNamed stores next in place of the item of its name, if its
// revision is expected (0: whatever it is, retrying when a change gets in
// between the read and the write).
func (s *Store) updateNamed(ctx context.Context, c *cache, next namedItem, expected uint64) error {
	name := next.itemName()
	for attempt := 0; ; attempt++ {
		cur, err := s.getNamed(ctx, c, name)
		if err != nil {
			return err
		}
		rev := revisionOf(cur)
		if expected != 0 && rev != expected {
			return fmt.Errorf("%s %q is at revision %d, not %d: %w", c.kind(), name, rev, expected, ErrConflict)
		}
		created, updated := cur.times()
		now := s.cfg.Now().UTC()
		if !now.After(updated) {
			now = updated.Add(time.Microsecond)
		}
		next.setTimes(created, now)
		next.setRevision(0)
		var errs fieldErrors
		next.prepare(&errs, s.cfg.Tables)
		if err := errs.err(); err != nil {
			return err
		}
		data, err := json.Marshal(next)
		if err != nil {
			return fmt.Errorf("encode %s: %w", c.kind(), err)
		}
		wctx, cancel := writeCtx(ctx)
		newRev, err := c.kv.Update(wctx, nameKey(name), data, rev)
		cancel()
		if err != nil {
			if !isConflict(err) {
				return fmt.Errorf("update %s %q: %w", c.kind(), name, err)
			}
			if expected != 0 || attempt >= maxRetries {
				return fmt.Errorf("%s %q changed meanwhile: %w", c.kind(), name, ErrConflict)
			}
			continue
		}
		next.setRevision(newRev)
		c.waitApplied(ctx, newRev)
		return nil
	}
}

func revisionOf(it namedItem) uint64 {
	switch v := it.(type) {
	case *Filter:
		return v.Revision
	case *Rule:
		return v.Revision
	}
	return 0
}

// deleteNamed deletes a filter or rule that no endpoint links, or with
// force, unlinks it from every endpoint first. See the package doc
// ("Links") for why a link made at the same time cannot be left pointing
// at nothing.
func (s *Store) deleteNamed(ctx context.Context, c *cache, name string, expected uint64, force bool, linked func(*Endpoint) bool, unlink func(context.Context, string) error) error {
	for attempt := 0; ; attempt++ {
		cur, err := s.getNamed(ctx, c, name)
		if err != nil {
			return err
		}
		rev := revisionOf(cur)
		if expected != 0 && rev != expected {
			return fmt.Errorf("%s %q is at revision %d, not %d: %w", c.kind(), name, rev, expected, ErrConflict)
		}
		eps, err := s.scanLinked(ctx, linked)
		if err != nil {
			return err
		}
		if len(eps) > 0 && !force {
			le := &LinkedError{Kind: c.kind(), Name: name}
			for _, e := range eps {
				le.Endpoints = append(le.Endpoints, e.Name)
				le.IDs = append(le.IDs, e.ID)
			}
			return le
		}
		for _, e := range eps {
			if err := unlink(ctx, e.ID); err != nil && !errors.Is(err, ErrNotFound) {
				return fmt.Errorf("unlink %s %q from endpoint %s: %w", c.kind(), name, e.ID, err)
			}
		}
		wctx, cancel := writeCtx(ctx)
		err = c.purge(wctx, nameKey(name), rev)
		cancel()
		if err != nil {
			if !isConflict(err) {
				return fmt.Errorf("delete %s %q: %w", c.kind(), name, err)
			}
			// Changed since it was read: an endpoint was linked to it
			// meanwhile, or it was updated. Look again.
			if expected != 0 || attempt >= maxRetries {
				return fmt.Errorf("%s %q changed meanwhile: %w", c.kind(), name, ErrConflict)
			}
			continue
		}
		c.sync(ctx)
		return nil
	}
}

// CreateFilter validates f, with defaults applied, and stores it: the
// filter as stored. A name taken is ErrNameTaken; every problem with its
// values is a *ValidationError. Nothing is written unless all is well.
func (s *Store) CreateFilter(ctx context.Context, in *Filter) (*Filter, error) {
	f := in.Clone()
	if err := s.createNamed(ctx, s.filters, f); err != nil {
		return nil, err
	}
	return f, nil
}

// GetFilter returns the filter with the name, or ErrNotFound.
func (s *Store) GetFilter(ctx context.Context, name string) (*Filter, error) {
	it, err := s.getNamed(ctx, s.filters, name)
	if err != nil {
		return nil, err
	}
	return it.(*Filter), nil
}

// UpdateFilter replaces the filter named in.Name with in (its creation
// time kept): ErrNotFound when there is none, ErrConflict when expected
// (not 0) is not its revision.
func (s *Store) UpdateFilter(ctx context.Context, in *Filter, expected uint64) (*Filter, error) {
	f := in.Clone()
	if err := s.updateNamed(ctx, s.filters, f, expected); err != nil {
		return nil, err
	}
	return f, nil
}

// DeleteFilter deletes a filter. While endpoints are linked to it, it is
// refused with a *LinkedError naming them, unless force, which unlinks it
// from them first.
func (s *Store) DeleteFilter(ctx context.Context, name string, expected uint64, force bool) error {
	return s.deleteNamed(ctx, s.filters, name, expected, force,
		func(e *Endpoint) bool { return e.HasFilter(name) },
		func(ctx context.Context, id string) error { _, err := s.UnlinkFilter(ctx, id, name, 0); return err })
}

// CreateRule validates r and stores it, as CreateFilter does.
func (s *Store) CreateRule(ctx context.Context, in *Rule) (*Rule, error) {
	r := in.Clone()
	if err := s.createNamed(ctx, s.rules, r); err != nil {
		return nil, err
	}
	return r, nil
}

// GetRule returns the rule with the name, or ErrNotFound.
func (s *Store) GetRule(ctx context.Context, name string) (*Rule, error) {
	it, err := s.getNamed(ctx, s.rules, name)
	if err != nil {
		return nil, err
	}
	return it.(*Rule), nil
}

// UpdateRule replaces the rule named in.Name, as UpdateFilter does.
func (s *Store) UpdateRule(ctx context.Context, in *Rule, expected uint64) (*Rule, error) {
	r := in.Clone()
	if err := s.updateNamed(ctx, s.rules, r, expected); err != nil {
		return nil, err
	}
	return r, nil
}

// DeleteRule deletes a rule, as DeleteFilter does.
func (s *Store) DeleteRule(ctx context.Context, name string, expected uint64, force bool) error {
	return s.deleteNamed(ctx, s.rules, name, expected, force,
		func(e *Endpoint) bool { return e.HasRule(name) },
		func(ctx context.Context, id string) error { _, err := s.UnlinkRule(ctx, id, name, 0); return err })
}
