//go:build linux

package wsgate

import (
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"syscall"

	"golang.org/x/sys/unix"
)

// epoller watches idle connections with one epoll set, so that an idle
// connection costs no goroutine and no read buffer: when input arrives the
// gateway starts a goroutine to read it (Gateway.dispatchRead). Each
// registration is one-shot: it is re-armed after the input was read, so
// that one connection is never read by two goroutines.
type epoller struct {
	epfd   int
	cb     func(*conn)
	closed atomic.Bool

	mu    sync.Mutex
	conns map[int32]*conn
}

func newPoller(cb func(*conn)) (poller, error) {
	epfd, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
	if err != nil {
		return nil, fmt.Errorf("epoll_create1: %w", err)
	}
	p := &epoller{epfd: epfd, cb: cb, conns: map[int32]*conn{}}
	go p.loop()
	return p, nil
}

var errNoPoll = errors.New("connection has no file descriptor to poll")

const pollEvents = unix.EPOLLIN | unix.EPOLLRDHUP | unix.EPOLLONESHOT

func (p *epoller) add(c *conn) error {
	sc, ok := c.nc.(syscall.Conn)
	if !ok {
		return errNoPoll
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return err
	}
	fd := -1
	if err := rc.Control(func(f uintptr) { fd = int(f) }); err != nil || fd < 0 {
		return errNoPoll
	}
	p.mu.Lock()
	c.fd = fd
	p.conns[int32(fd)] = c
	p.mu.Unlock()
	ev := unix.EpollEvent{Events: pollEvents, Fd: int32(fd)}
	if err := unix.EpollCtl(p.epfd, unix.EPOLL_CTL_ADD, fd, &ev); err != nil {
		p.mu.Lock()
		delete(p.conns, int32(fd))
		c.fd = -1
		p.mu.Unlock()
		return fmt.Errorf("epoll_ctl add: %w", err)
	}
	return nil
}

func (p *epoller) rearm(c *conn) error {
	p.mu.Lock()
	fd := c.fd
	registered := fd >= 0 && p.conns[int32(fd)] == c
	p.mu.Unlock()
	if !registered {
		return nil // removed meanwhile: the connection is closing
	}
	ev := unix.EpollEvent{Events: pollEvents, Fd: int32(fd)}
	if err := unix.EpollCtl(p.epfd, unix.EPOLL_CTL_MOD, fd, &ev); err != nil {
		return fmt.Errorf("epoll_ctl mod: %w", err)
	}
	return nil
}

// remove unregisters c. The socket may be closed already and its
// descriptor number reused by a new connection: the map tells whose the
// number is now, and the EPOLL_CTL_DEL is made under the same lock, so that
// it can never remove the new connection's registration (add registers a
// number only after taking it in the map).
func (p *epoller) remove(c *conn) {
	p.mu.Lock()
	defer p.mu.Unlock()
	fd := c.fd
	if fd < 0 || p.conns[int32(fd)] != c {
		return
	}
	delete(p.conns, int32(fd))
	c.fd = -1
	_ = unix.EpollCtl(p.epfd, unix.EPOLL_CTL_DEL, fd, nil)
}

func (p *epoller) loop() {
	events := make([]unix.EpollEvent, 512)
	for !p.closed.Load() {
		// A timeout, so that close is noticed: closing an epoll descriptor
		// does not wake a thread waiting on it.
		n, err := unix.EpollWait(p.epfd, events, 500)
		if err != nil {
			if errors.Is(err, unix.EINTR) {
				continue
			}
			return
		}
		for i := 0; i < n; i++ {
			p.mu.Lock()
			c := p.conns[events[i].Fd]
			p.mu.Unlock()
			if c != nil {
				p.cb(c)
			}
		}
	}
	_ = unix.Close(p.epfd)
}

func (p *epoller) close() { p.closed.Store(true) }

var errWouldBlock = unix.EAGAIN

func writev(fd int, iov [][]byte) (int, error) {
	for {
		n, err := unix.Writev(fd, iov)
		if err == unix.EINTR {
			continue
		}
		return n, err
	}
}
