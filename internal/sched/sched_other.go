//go:build !linux

package sched

import "log/slog"

// Batch does nothing where there is no SCHED_BATCH.
func Batch() (int, error) { return 0, nil }

// Policies reports nothing where there is no SCHED_BATCH.
func Policies(pid int) (map[int]int, error) { return nil, nil }

// UnderDefault reports nothing where there is no SCHED_BATCH.
func UnderDefault() (int, error) { return 0, nil }

// Filtered reports false where there is no SCHED_BATCH.
func Filtered() bool { return false }

// Apply does nothing where there is no SCHED_BATCH.
func Apply(log *slog.Logger) {}
