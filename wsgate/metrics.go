package wsgate

import (
	"errors"
	"syscall"

	"github.com/prometheus/client_golang/prometheus"
)

// metrics are the gateway's Prometheus metrics.
type metrics struct {
	connections   prometheus.Gauge
	subscriptions prometheus.Gauge
	feeds         prometheus.Gauge
	framesSent    prometheus.Counter
	bytesSent     prometheus.Counter
	slowCloses    prometheus.Counter
	events        prometheus.Counter
	errorFrames   *prometheus.CounterVec
	fanout        prometheus.Histogram
	eventAge      prometheus.Histogram
	claims        *prometheus.CounterVec
	refused       *prometheus.CounterVec

	replaysRunning prometheus.Gauge
	replaysWaiting prometheus.Gauge
	replayed       prometheus.Counter
	historyLost    prometheus.Counter
}

func newMetrics(reg prometheus.Registerer) *metrics {
	m := &metrics{
		connections: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "tablecast_gateway_connections", Help: "Open WebSocket connections.",
		}),
		subscriptions: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "tablecast_gateway_subscriptions", Help: "Subscriptions of all connections.",
		}),
		feeds: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "tablecast_gateway_feeds", Help: "Tables and topics followed in NATS (one consumer each, shared by all their subscribers).",
		}),
		framesSent: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "tablecast_gateway_frames_sent_total", Help: "WebSocket frames written to clients.",
		}),
		bytesSent: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "tablecast_gateway_bytes_sent_total", Help: "Bytes written to WebSocket clients.",
		}),
		slowCloses: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "tablecast_gateway_slow_consumer_closes_total", Help: "Connections closed with 4008 because their send queue overflowed.",
		}),
		events: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "tablecast_gateway_events_received_total", Help: "Events and topic messages received from NATS for fan-out.",
		}),
		errorFrames: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "tablecast_gateway_error_frames_total", Help: "Error frames sent, by code.",
		}, []string{"code"}),
		fanout: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "tablecast_gateway_fanout_seconds",
			Help:    "Time from an event's arrival from NATS to its frames queued for every matching subscriber.",
			Buckets: prometheus.ExponentialBuckets(0.00001, 4, 10),
		}),
		eventAge: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "tablecast_gateway_event_age_seconds",
			Help: "Age of each message a live feed receives from NATS (events, topic messages, transaction markers): from JetStream storing it (its stored timestamp) to its arrival. " +
				"How far the gateway's consumers run behind the stream; on another machine than the stream's leader it includes the difference of their clocks.",
			Buckets: prometheus.ExponentialBuckets(0.00005, 2, 16), // 50µs .. 1.6s
		}),
		claims: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "tablecast_gateway_claims_total",
			Help: "Claims of events too large for one NATS message, by result: resolved (the object read), gone (expired: the event sent as received), failed (unreadable in time, or malformed: sent as received).",
		}, []string{"result"}),
		refused: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "tablecast_gateway_refused_total",
			Help: "Connections refused before a request was served, by reason: address (too many unauthenticated from one address), handshakes (too many being opened).",
		}, []string{"reason"}),
		replaysRunning: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "tablecast_gateway_replays_running", Help: "Resumes (subscriptions with from) reading history now.",
		}),
		replaysWaiting: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "tablecast_gateway_replays_waiting", Help: "Resumes waiting for their turn to read history.",
		}),
		replayed: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "tablecast_gateway_replayed_messages_total", Help: "Messages of history read for resumes.",
		}),
		historyLost: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "tablecast_gateway_history_discarded_total", Help: "Resumes and feeds that found messages discarded by the stream before they were sent (their subscriptions got history_unavailable).",
		}),
	}
	if reg != nil {
		reg.MustRegister(m.connections, m.subscriptions, m.feeds, m.framesSent, m.bytesSent,
			m.slowCloses, m.events, m.errorFrames, m.fanout, m.eventAge, m.claims, m.refused,
			m.replaysRunning, m.replaysWaiting, m.replayed, m.historyLost)
	}
	return m
}

// isTemporaryAccept reports an accept error worth retrying: the process or
// system is out of file descriptors, or the peer gave up before accept.
func isTemporaryAccept(err error) bool {
	return errors.Is(err, syscall.EMFILE) || errors.Is(err, syscall.ENFILE) ||
		errors.Is(err, syscall.ECONNABORTED) || errors.Is(err, syscall.ENOBUFS)
}
