package main

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
)

// dataDirLockName is the file in TABLECAST_DATA_DIR that the process running
// the embedded NATS on it holds locked.
const dataDirLockName = "tablecast.lock"

// errDataDirHeld is what lockFile returns when another process holds the
// lock.
var errDataDirHeld = errors.New("held by another process")

// lockDataDir locks dir for this process's embedded NATS until the returned
// function is called, or the process ends, however it ends: the kernel
// drops the lock with the process, so a killed tablecast leaves nothing
// stale behind. Two embedded servers on one directory would each write
// the same JetStream files believing them their own (each ack'd write of
// one undone or torn by the other), so a second process is refused at
// once, naming the holder.
func lockDataDir(dir string) (unlock func(), err error) {
	if err := os.MkdirAll(dir, 0o750); err != nil {
		// A link to a volume not mounted yet reads "file exists" otherwise.
		if target, lerr := os.Readlink(dir); lerr == nil {
			return nil, fmt.Errorf("TABLECAST_DATA_DIR %s is a symbolic link to %s, which is not a directory (a volume not mounted?): %w", dir, target, err)
		}
		return nil, fmt.Errorf("TABLECAST_DATA_DIR %s: %w", dir, err)
	}
	path := filepath.Join(dir, dataDirLockName)
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o640)
	if err != nil {
		return nil, fmt.Errorf("TABLECAST_DATA_DIR %s: open its lock file: %w", dir, err)
	}
	if err := lockFile(f); err != nil {
		f.Close()
		if errors.Is(err, errDataDirHeld) {
			holder := "another process"
			if b, rerr := os.ReadFile(path); rerr == nil && len(strings.TrimSpace(string(b))) > 0 {
				holder = "another process (" + strings.TrimSpace(string(b)) + ")"
			}
			return nil, fmt.Errorf("TABLECAST_DATA_DIR %s is in use by %s running an embedded NATS: two servers on one JetStream store would corrupt it; stop the other, give each its own TABLECAST_DATA_DIR, or point this one at the other's NATS with TABLECAST_NATS_URL", dir, holder)
		}
		return nil, fmt.Errorf("TABLECAST_DATA_DIR %s: lock %s: %w", dir, path, err)
	}
	// Who holds it, for the message above; on a full disk this may not be
	// written, which loses only that.
	if err := f.Truncate(0); err == nil {
		_, _ = fmt.Fprintf(f, "pid %d\n", os.Getpid())
	}
	return func() { f.Close() }, nil
}
