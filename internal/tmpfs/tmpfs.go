//go:build linux

// Package tmpfs gives tests a small file system of their own that they can
// fill: a tmpfs mounted on a temporary directory, so that a full disk is a
// real ENOSPC from the kernel and nothing else on the machine notices.
//
// Mounting needs root. Without it a test skips with the reason, except when
// CI=true, where it fails: CI runs as root, and a skipped full-disk test
// there would hide a broken guarantee.
package tmpfs

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"golang.org/x/sys/unix"
)

// Mount mounts a tmpfs of size bytes on a new temporary directory and
// returns the directory; it is unmounted when the test ends.
func Mount(t testing.TB, size int64) string {
	t.Helper()
	if os.Geteuid() != 0 {
		if os.Getenv("CI") == "true" {
			t.Fatal("mounting a tmpfs for a full-disk test needs root, and CI runs as root")
		}
		t.Skip("mounting a tmpfs for a full-disk test needs root")
	}
	dir := t.TempDir()
	if out, err := exec.Command("mount", "-t", "tmpfs", "-o", fmt.Sprintf("size=%d,mode=0777", size), "tmpfs", dir).CombinedOutput(); err != nil {
		t.Fatalf("mount tmpfs on %s: %v: %s", dir, err, out)
	}
	t.Cleanup(func() {
		// Lazily: a process the test started may still hold files there.
		if out, err := exec.Command("umount", "-l", dir).CombinedOutput(); err != nil {
			t.Errorf("unmount tmpfs %s: %v: %s", dir, err, out)
		}
	})
	return dir
}

// Free returns the bytes still free on the file system holding dir.
func Free(t testing.TB, dir string) int64 {
	t.Helper()
	var st unix.Statfs_t
	if err := unix.Statfs(dir, &st); err != nil {
		t.Fatalf("statfs %s: %v", dir, err)
	}
	return int64(st.Bavail) * int64(st.Bsize)
}

// Fill writes a filler file into dir that leaves about leave bytes free
// (never less: a tmpfs rounds to pages), and returns its path; removing
// it frees the space again.
func Fill(t testing.TB, dir string, leave int64) string {
	t.Helper()
	path := filepath.Join(dir, fmt.Sprintf("filler-%d", leave))
	f, err := os.OpenFile(path, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if n := Free(t, dir) - leave; n > 0 {
		if err := unix.Fallocate(int(f.Fd()), 0, 0, n); err != nil {
			t.Fatalf("fill %s with %d bytes: %v", dir, n, err)
		}
	}
	return path
}
