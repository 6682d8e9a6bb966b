package wsgate

// poller tells the gateway when an idle connection has input (see
// netpoll_linux.go). add fails for a connection it cannot watch (TLS, or a
// platform without epoll): such a connection is read by a goroutine of its
// own instead.
type poller interface {
	add(c *conn) error
	rearm(c *conn) error
	remove(c *conn)
	close()
}
