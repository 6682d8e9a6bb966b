package stream

// ProfileLabel is the pprof label tablecast's parts put on their goroutines,
// so that a CPU profile of one process (TABLECAST_PPROF) splits its time
// among them: `go tool pprof -tags profile` lists the share of each value.
// Goroutines inherit the label of the goroutine that starts them, so the
// embedded server's goroutines all carry ProfileNATSServer (those serving
// an in-process connection too: Embedded.InProcessConn) and a connection's
// reader and flusher carry ProfileNATSClient; a subscription's
// goroutine carries the label of whoever subscribed. Time spent in the
// garbage collector's workers carries none.
const ProfileLabel = "tablecast"

// Values of ProfileLabel.
const (
	// ProfileNATSServer: the embedded NATS server, JetStream included.
	ProfileNATSServer = "nats-server"
	// ProfileNATSClient: the NATS connections' own goroutines.
	ProfileNATSClient = "nats-client"
)
