package auth

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"time"
)

// keysCheckInterval is how often the keys file is checked for changes: a
// rotated key is picked up within a second, at the cost of one stat a
// second while tokens arrive.
const keysCheckInterval = time.Second

// watch is a file reloaded when it changes.
type watch struct {
	path    string
	seen    os.FileInfo // the file as last read (loaded or refused)
	missing bool        // the last stat failed (logged once)
}

// ReloadKeys reads the JWT keys file and the API keys file now, whether or
// not they changed. On error the keys loaded before stay in use; the error
// says which file failed and why.
func (a *Authenticator) ReloadKeys() error {
	if a == nil {
		return nil
	}
	a.reloadMu.Lock()
	defer a.reloadMu.Unlock()
	var errs []error
	if a.keysFile.path != "" {
		errs = append(errs, a.reloadJWTKeysLocked())
	}
	if a.apiFile.path != "" {
		errs = append(errs, a.reloadAPIKeysLocked())
	}
	return errors.Join(errs...)
}

// checkFilesIfDue checks the files for changes when that is due. One
// caller wins the due check; the others go on with the keys they have.
func (a *Authenticator) checkFilesIfDue() {
	if a.keysFile.path == "" && a.apiFile.path == "" {
		return
	}
	now := time.Now().UnixNano()
	next := a.nextCheck.Load()
	if now >= next && a.nextCheck.CompareAndSwap(next, now+int64(a.checkEvery)) {
		a.checkFiles()
	}
}

// checkFiles reloads each file that changed since it was last read.
func (a *Authenticator) checkFiles() {
	a.reloadMu.Lock()
	defer a.reloadMu.Unlock()
	if a.keysFile.changed(a.log, "JWT keys file") {
		_ = a.reloadJWTKeysLocked() // logged
	}
	if a.apiFile.changed(a.log, "API keys file") {
		_ = a.reloadAPIKeysLocked() // logged
	}
}

// changed stats the file and reports whether it differs from the one last
// read. A file that cannot be stat'ed is logged once and counts as
// unchanged: the keys loaded before stay.
func (w *watch) changed(log *slog.Logger, what string) bool {
	if w.path == "" {
		return false
	}
	fi, err := os.Stat(w.path)
	if err != nil {
		if !w.missing {
			log.Error(what+" unreadable; keeping the keys loaded before", "file", w.path, "err", err)
		}
		w.missing = true
		return false
	}
	w.missing = false
	old := w.seen
	return old == nil || !os.SameFile(old, fi) || !old.ModTime().Equal(fi.ModTime()) || old.Size() != fi.Size()
}

// read reads the file, remembering even a refused one, so that it is
// logged once, not every second; a change to it is tried again.
func (w *watch) read() ([]byte, error) {
	fi, data, err := readKeysFile(w.path)
	if fi != nil {
		w.seen = fi
	}
	return data, err
}

func (a *Authenticator) reloadJWTKeysLocked() error {
	path := a.keysFile.path
	data, err := a.keysFile.read()
	var ks *keySet
	if err == nil {
		ks, err = parseKeys(data, a.log.With("file", path))
	}
	if err != nil {
		a.log.Error("JWT keys file reload failed; keeping the keys loaded before", "file", path, "err", err)
		return fmt.Errorf("reload %s: %w", path, err)
	}
	ks.setAlgs(len(a.secret) > 0)
	a.keys.Store(ks)
	a.log.Info("JWT keys loaded", "file", path, "keys", len(ks.keys))
	return nil
}

// reloadAPIKeysLocked reads the API keys file and, when the keys changed,
// replaces them and bumps the generation the gateway watches.
func (a *Authenticator) reloadAPIKeysLocked() error {
	path := a.apiFile.path
	data, err := a.apiFile.read()
	var fileKeys []APIKey
	if err == nil {
		fileKeys, err = ParseAPIKeys(data)
	}
	old := *a.apiKeys.Load()
	var set apiKeySet
	if err == nil {
		set, err = a.buildAPIKeys(fileKeys, old)
	}
	if err != nil {
		a.log.Error("API keys file reload failed; keeping the keys loaded before", "file", path, "err", err)
		return fmt.Errorf("reload %s: %w", path, err)
	}
	same := len(set) == len(old)
	for sum, id := range set {
		same = same && old[sum] == id
	}
	a.apiKeys.Store(&set)
	if !same {
		a.apiKeysGen.Add(1)
	}
	a.log.Info("API keys loaded", "file", path, "keys", len(set), "changed", !same)
	return nil
}

// readKeysFile reads the file and the state it was read in (stat of the
// open file, so that the state is never newer than the content).
func readKeysFile(path string) (os.FileInfo, []byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, nil, err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, nil, err
	}
	const maxKeysFile = 1 << 20 // a JWKS of hundreds of keys is ~100 KB
	data, err := io.ReadAll(io.LimitReader(f, maxKeysFile+1))
	if err == nil && len(data) > maxKeysFile {
		err = fmt.Errorf("%s: larger than %d bytes", path, maxKeysFile)
	}
	if err != nil {
		return fi, nil, err
	}
	return fi, data, nil
}
