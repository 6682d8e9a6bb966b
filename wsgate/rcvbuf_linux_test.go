package wsgate

import "syscall"

// setRcvBuf sets a socket's receive buffer (the kernel doubles it), which
// also stops its autotuning.
func setRcvBuf(fd uintptr, n int) {
	_ = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUF, n)
}
