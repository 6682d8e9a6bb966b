package rowstate

import "github.com/prometheus/client_golang/prometheus"

// metrics are the maintainer's series, prefixed tablecast_rowstate_.
type metrics struct {
	applied  prometheus.Gauge
	events   prometheus.Counter
	rows     prometheus.Counter
	restarts prometheus.Counter
	// lookups counts the rows read back from the rows stream: one a
	// request ("one"), or read ahead for a batch ("ahead", prefetch.go).
	lookups                  *prometheus.CounterVec
	lookupsOne, lookupsAhead prometheus.Counter
}

func newMetrics(reg prometheus.Registerer) *metrics {
	m := &metrics{
		applied: prometheus.NewGauge(prometheus.GaugeOpts{Name: "tablecast_rowstate_applied_seq",
			Help: "Event stream sequence up to which the row state of the database is applied."}),
		events: prometheus.NewCounter(prometheus.CounterOpts{Name: "tablecast_rowstate_events_total",
			Help: "Events applied to the row state."}),
		rows: prometheus.NewCounter(prometheus.CounterOpts{Name: "tablecast_rowstate_rows_written_total",
			Help: "Row versions and tombstones written to the rows stream."}),
		restarts: prometheus.NewCounter(prometheus.CounterOpts{Name: "tablecast_rowstate_restarts_total",
			Help: "Times the maintainer started again from its last position after a failure."}),
		lookups: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "tablecast_rowstate_lookups_total",
			Help: "Rows read back from the rows stream, by how: one a request (one), or read ahead for a batch of changes under deferrable keys (ahead)."}, []string{"how"}),
	}
	m.lookupsOne, m.lookupsAhead = m.lookups.WithLabelValues("one"), m.lookups.WithLabelValues("ahead")
	if reg != nil {
		reg.MustRegister(m.applied, m.events, m.rows, m.restarts, m.lookups)
	}
	return m
}
