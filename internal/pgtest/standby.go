package pgtest

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strconv"
)

// StartStandby makes a streaming physical standby of c (pg_basebackup -R)
// in a directory of its own, on a free port, and starts it. Promote makes it
// a primary, as a failover does. Close it when done (it has its own
// watchdog).
func (c *Cluster) StartStandby(ctx context.Context) (*Cluster, error) {
	s := &Cluster{BinDir: c.BinDir, env: c.env, cred: c.cred}
	var err error
	if s.Dir, err = os.MkdirTemp("", "tablecast-pgtest-standby-"); err != nil {
		return nil, fmt.Errorf("pgtest: %w", err)
	}
	if s.cred != nil {
		if err := os.Chown(s.Dir, int(s.cred.Uid), int(s.cred.Gid)); err != nil {
			s.Close()
			return nil, fmt.Errorf("pgtest: %w", err)
		}
	}
	if err := s.startWatchdog(); err != nil {
		s.Close()
		return nil, err
	}
	if out, err := s.run(ctx, "pg_basebackup", "-D", s.dataDir(), "-h", "127.0.0.1", "-p", strconv.Itoa(c.Port),
		"-U", "postgres", "-R", "-X", "stream", "-c", "fast", "--no-sync"); err != nil {
		s.Close()
		return nil, fmt.Errorf("pgtest: pg_basebackup of the primary on port %d: %w\n%s", c.Port, err, out)
	}
	for range startAttempts {
		if s.Port, err = freePort(); err != nil {
			break
		}
		if err = s.writeConfig(); err != nil {
			break
		}
		s.mu.Lock()
		err = s.start(ctx)
		s.mu.Unlock()
		if !errors.Is(err, errPortTaken) {
			break
		}
	}
	if err != nil {
		s.Close()
		return nil, err
	}
	return s, nil
}

// Promote makes a standby a primary (pg_ctl promote), on a new timeline,
// and returns once it accepts writes.
func (c *Cluster) Promote(ctx context.Context) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if out, err := c.run(ctx, "pg_ctl", "-D", c.dataDir(), "-w", "-t", strconv.Itoa(int(pgctlWait.Seconds())), "promote"); err != nil {
		return fmt.Errorf("pgtest: promote: %w\n%s", err, out)
	}
	return nil
}
