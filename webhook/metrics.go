package webhook

import "github.com/prometheus/client_golang/prometheus"

// metrics are the webhook deliveries' Prometheus metrics, by endpoint name.
type metrics struct {
	delivered    *prometheus.CounterVec
	failed       *prometheus.CounterVec
	deadLettered *prometheus.CounterVec
	lag          *prometheus.GaugeVec
	latency      *prometheus.HistogramVec
	gaps         *prometheus.CounterVec
	gapMessages  *prometheus.CounterVec
	retention    *prometheus.GaugeVec
	// leftovers is by kind, not endpoint: the endpoints are gone.
	leftovers *prometheus.CounterVec
}

func newMetrics(reg prometheus.Registerer) *metrics {
	m := &metrics{
		delivered: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "tablecast_webhook_delivered_total", Help: "Events a webhook endpoint accepted (answered 2xx).",
		}, []string{"endpoint"}),
		failed: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "tablecast_webhook_failed_attempts_total", Help: "Requests to a webhook endpoint that failed (timeout, connection error, refused address, or an answer other than 2xx).",
		}, []string{"endpoint"}),
		deadLettered: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "tablecast_webhook_dead_lettered_total", Help: "Events given up after the endpoint's retry max_age and kept in the dead-letter stream.",
		}, []string{"endpoint"}),
		lag: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "tablecast_webhook_consumer_lag", Help: "Messages of the event stream the endpoint's consumer has yet to read (as of its latest read).",
		}, []string{"endpoint"}),
		latency: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "tablecast_webhook_delivery_seconds",
			Help:    "Time from an event's arrival in the stream to the endpoint accepting it.",
			Buckets: prometheus.ExponentialBuckets(0.001, 4, 10),
		}, []string{"endpoint"}),
		gaps: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "tablecast_webhook_retention_gaps_total", Help: "Times the event stream's limits discarded messages before a webhook endpoint read them, when some of them may have been its events.",
		}, []string{"endpoint"}),
		gapMessages: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "tablecast_webhook_retention_gap_messages_total", Help: "Stream messages in those gaps: an upper bound of the endpoint's events lost (other tables' messages in the range are counted too).",
		}, []string{"endpoint"}),
		retention: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "tablecast_webhook_retention_used_ratio", Help: "How much of the event stream's retention a webhook endpoint's unread events take: what the stream stored from its oldest unread event on, as a fraction of the limit it is closest to (max age, bytes, messages), estimated from the stream's state. At 1 the stream discards them. 0 with nothing unread.",
		}, []string{"endpoint"}),
		leftovers: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "tablecast_webhook_leftovers_removed_total", Help: "What was removed of webhook endpoints deleted while no process delivering webhooks ran, by kind: consumer (of the event or the dead-letter stream), dead_letter, replay (queued).",
		}, []string{"kind"}),
	}
	if reg != nil {
		reg.MustRegister(m.delivered, m.failed, m.deadLettered, m.lag, m.latency, m.gaps, m.gapMessages, m.retention, m.leftovers)
	}
	return m
}

// forget drops the series of an endpoint that is gone.
func (m *metrics) forget(name string) {
	m.delivered.DeleteLabelValues(name)
	m.failed.DeleteLabelValues(name)
	m.deadLettered.DeleteLabelValues(name)
	m.lag.DeleteLabelValues(name)
	m.latency.DeleteLabelValues(name)
	m.gaps.DeleteLabelValues(name)
	m.gapMessages.DeleteLabelValues(name)
	m.retention.DeleteLabelValues(name)
}
