//go:build !linux

package wsgate

import (
	"errors"
	"syscall"
)

// Without epoll every connection is read by a goroutine of its own.
type nopoller struct{}

func newPoller(func(*conn)) (poller, error) { return nopoller{}, nil }

var errNoPoll = errors.New("no poller on this platform")

func (nopoller) add(*conn) error   { return errNoPoll }
func (nopoller) rearm(*conn) error { return nil }
func (nopoller) remove(*conn)      {}
func (nopoller) close()            {}

var errWouldBlock = syscall.EAGAIN

// writev writes the first buffer only; without writev the gateway still
// works, with more system calls.
func writev(fd int, iov [][]byte) (int, error) {
	return syscall.Write(fd, iov[0])
}
