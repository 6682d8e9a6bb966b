//go:build !linux

package wsgate

import "errors"

// Without epoll every connection is read by a goroutine of its own.
type nopoller struct{}

func newPoller(func(*conn)) (poller, error) { return nopoller{}, nil }

var errNoPoll = errors.New("no poller on this platform")

func (nopoller) add(*conn) error   { return errNoPoll }
func (nopoller) rearm(*conn) error { return nil }
func (nopoller) remove(*conn)      {}
func (nopoller) close()            {}
