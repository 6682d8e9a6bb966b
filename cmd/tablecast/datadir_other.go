//go:build !linux && !darwin && !freebsd

package main

import "os"

// lockFile does nothing on this platform: the data directory is not
// locked, and running one process per directory is the operator's care.
func lockFile(*os.File) error { return nil }
