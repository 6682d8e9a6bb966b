//go:build linux || darwin || freebsd

package stream

import "golang.org/x/sys/unix"

// freeSpace returns the bytes an unprivileged process may still write to the
// file system holding dir, or -1 if that cannot be read.
func freeSpace(dir string) int64 {
	var st unix.Statfs_t
	if err := unix.Statfs(dir, &st); err != nil {
		return -1
	}
	return int64(st.Bavail) * int64(st.Bsize) //nolint:unconvert // the field types differ by platform
}
