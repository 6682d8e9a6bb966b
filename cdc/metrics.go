package cdc

import (
	"github.com/prometheus/client_golang/prometheus"
	"github.com/tablecast/tablecast/schema"
)

// metrics are the reader's Prometheus series, all prefixed tablecast_cdc_.
type metrics struct {
	published      map[string]prometheus.Counter // by op
	publishLatency prometheus.Histogram
	commitReceipt  prometheus.Histogram
	ackedLSN       prometheus.Gauge
	lagBytes       prometheus.Gauge
	streaming      prometheus.Gauge
	sessions       prometheus.Counter
	messages       prometheus.Counter
	markers        prometheus.Counter
	skipped        prometheus.Counter
	slotsLost      prometheus.Counter
	heartbeatLag   prometheus.Gauge
	retainedWAL    prometheus.Gauge
	safeWALSize    prometheus.Gauge
	walStatus      *prometheus.GaugeVec
	oversize       *prometheus.CounterVec
	leader         prometheus.Gauge
	takeovers      prometheus.Counter
	fenced         prometheus.Counter

	// Old rows (oldrows.go).
	oldRowsCache       prometheus.Counter
	oldRowsLookups     prometheus.Counter
	oldRowsBatches     prometheus.Counter
	oldRowsStale       prometheus.Counter
	oldRowsUnknown     prometheus.Counter
	oldRowsWaits       *prometheus.CounterVec
	oldRowsWaitSeconds *prometheus.CounterVec
	oldRowsCacheBytes  prometheus.Gauge
}

func newMetrics(reg prometheus.Registerer) *metrics {
	published := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "tablecast_cdc_events_published_total",
		Help: "Row-change events published to JetStream, by operation.",
	}, []string{"op"})
	m := &metrics{
		published: map[string]prometheus.Counter{},
		publishLatency: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "tablecast_cdc_publish_latency_seconds",
			Help:    "Time from a transaction's commit message to JetStream's acknowledgement of all its events.",
			Buckets: prometheus.ExponentialBuckets(0.0005, 2, 16), // 0.5ms .. 16s
		}),
		commitReceipt: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "tablecast_cdc_commit_receipt_seconds",
			Help:    "Time from a transaction's commit, by PostgreSQL's clock, to the reader's receipt of its commit message, for transactions with events published: how late the walsender delivers. A difference between the two hosts' clocks adds to it (0 when PostgreSQL's is ahead).",
			Buckets: prometheus.ExponentialBuckets(0.0005, 2, 16), // 0.5ms .. 16s
		}),
		ackedLSN: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "tablecast_cdc_acked_lsn",
			Help: "Highest commit LSN up to which JetStream has acknowledged every event (as a number).",
		}),
		lagBytes: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "tablecast_cdc_replication_lag_bytes",
			Help: "Bytes of WAL between PostgreSQL's current position and the slot's confirmed position.",
		}),
		streaming: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "tablecast_cdc_streaming",
			Help: "1 while a replication session is streaming, else 0.",
		}),
		sessions: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "tablecast_cdc_sessions_total",
			Help: "Replication sessions started (1 plus the number of reconnects).",
		}),
		messages: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "tablecast_cdc_topic_messages_published_total",
			Help: "Logical decoding messages (pg_logical_emit_message(true, 'tablecast:<topic>', …)) published on custom topics.",
		}),
		markers: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "tablecast_cdc_transaction_markers_published_total",
			Help: "Transaction markers published (TxMarkers).",
		}),
		skipped: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "tablecast_cdc_events_skipped_total",
			Help: "Events a replay after a restart reached again and did not publish, because the stream already held them.",
		}),
		slotsLost: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "tablecast_cdc_slots_lost_total",
			Help: "Times the reader found its slot missing after streaming from it, and created it again: the changes between the two slots are not in the stream.",
		}),
		heartbeatLag: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "tablecast_cdc_heartbeat_lag_seconds",
			Help: "Time from the last heartbeat's emission in PostgreSQL to its arrival in the reader: end-to-end replication lag.",
		}),
		retainedWAL: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "tablecast_cdc_slot_retained_wal_bytes",
			Help: "WAL PostgreSQL keeps for the slot (current position minus the slot's restart_lsn).",
		}),
		safeWALSize: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "tablecast_cdc_slot_safe_wal_size_bytes",
			Help: "WAL that can still be written before the slot is invalidated (pg_replication_slots.safe_wal_size); -1 when unlimited.",
		}),
		leader: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "tablecast_cdc_leader",
			Help: "1 while this reader holds its slot's lease (the leader), 0 while it stands by.",
		}),
		takeovers: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "tablecast_cdc_takeovers_total",
			Help: "Times this reader took its slot's lease over from another holder that had not given it up (a reader that died or paused).",
		}),
		fenced: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "tablecast_cdc_fenced_total",
			Help: "Times JetStream refused this reader's events because another reader had taken the slot over and fenced it out.",
		}),
		walStatus: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "tablecast_cdc_slot_wal_status",
			Help: "1 for the slot's current wal_status (reserved, extended, unreserved, lost).",
		}, []string{"status"}),
		oversize: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "tablecast_cdc_oversize_events_total",
			Help: "Events too large for one NATS message, by what became of them: claim (stored as an object, claimed in the stream), truncated (larger than the reader's limit: published without rows, dead-lettered), topic_dead_letter (a custom topic message, dead-lettered).",
		}, []string{"outcome"}),
		oldRowsCache: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "tablecast_cdc_old_rows_cache_hits_total",
			Help: "Previous versions of rows (old rows) the reader found among the versions it published and keeps until the row state applies them.",
		}),
		oldRowsLookups: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "tablecast_cdc_old_rows_lookups_total",
			Help: "Previous versions of rows (old rows) the reader read from the row state.",
		}),
		oldRowsBatches: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "tablecast_cdc_old_rows_batch_reads_total",
			Help: "Reads of the row state that fetched the previous versions of a batch of changes at once (a multi-last direct get each).",
		}),
		oldRowsStale: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "tablecast_cdc_old_rows_stale_reads_total",
			Help: "Reads of the row state read again because the replica that answered was behind the state the reader needed (replicated streams).",
		}),
		oldRowsUnknown: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "tablecast_cdc_old_rows_unknown_total",
			Help: "Updates and deletes of tables with old rows published as PostgreSQL sent them: the row's previous version was not known.",
		}),
		oldRowsWaits: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "tablecast_cdc_old_rows_waits_total",
			Help: "Times the reader waited for the row state to apply what it published: for a lookup (the state behind the events of the row) or for room in its cache of versions (cache).",
		}, []string{"for"}),
		oldRowsWaitSeconds: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "tablecast_cdc_old_rows_wait_seconds_total",
			Help: "Time the reader spent waiting for the row state (see tablecast_cdc_old_rows_waits_total).",
		}, []string{"for"}),
		oldRowsCacheBytes: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "tablecast_cdc_old_rows_cache_bytes",
			Help: "Bytes of the versions of rows the reader keeps until the row state has applied them (at most the configured size of the cache).",
		}),
	}
	for _, op := range schema.AllOps.Names() {
		m.published[op] = published.WithLabelValues(op)
	}
	if reg != nil {
		reg.MustRegister(published, m.publishLatency, m.commitReceipt, m.ackedLSN, m.lagBytes, m.streaming, m.sessions,
			m.messages, m.markers, m.skipped, m.slotsLost, m.heartbeatLag, m.retainedWAL, m.safeWALSize, m.walStatus, m.oversize,
			m.leader, m.takeovers, m.fenced, m.oldRowsCache, m.oldRowsLookups, m.oldRowsBatches, m.oldRowsStale, m.oldRowsUnknown, m.oldRowsWaits,
			m.oldRowsWaitSeconds, m.oldRowsCacheBytes)
	}
	return m
}
