package cdc

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/tablecast/tablecast/schema"
	"github.com/tablecast/tablecast/stream"
)

// Reader streams one publication of one database into JetStream.
type Reader struct {
	cfg    Config
	nc     *nats.Conn
	js     jetstream.JetStream
	prefix string
	log    *slog.Logger
	m      *metrics

	db       string           // current_database(), learnt in preflight
	registry *stream.Registry // schema registry, opened in Run
	snaps    *snapshots       // on-demand snapshots (ondemand.go)

	registered chan struct{} // closed once the published tables are registered

	// state shared with Health and the watchdog
	streaming   atomic.Bool
	ackedLSN    atomic.Uint64
	healthMu    sync.Mutex
	health      Health
	streamSince time.Time
}

// New validates cfg and returns a reader that publishes with nc / js under
// subject prefix. reg, if not nil, receives the reader's metrics.
func New(cfg Config, nc *nats.Conn, js jetstream.JetStream, prefix string, log *slog.Logger, reg prometheus.Registerer) (*Reader, error) {
	cfg, err := cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	if err := stream.ValidatePrefix(prefix); err != nil {
		return nil, err
	}
	if log == nil {
		log = slog.Default()
	}
	r := &Reader{cfg: cfg, nc: nc, js: js, prefix: prefix, log: log.With("component", "cdc", "slot", cfg.Slot), m: newMetrics(reg), snaps: newSnapshots(),
		registered: make(chan struct{})}
	r.health = Health{Healthy: true}
	r.streamSince = time.Now()
	return r, nil
}

// Run checks the database, creates the publication and the slot when
// missing, then streams until ctx ends, reconnecting with backoff when
// PostgreSQL or NATS goes away. It returns a ConfigError at once for a
// problem that retrying cannot fix, and nil when ctx ends.
func (r *Reader) Run(ctx context.Context) error {
	src, err := preflight(ctx, r.cfg, r.log)
	if err != nil {
		if ctx.Err() != nil {
			return nil
		}
		return err
	}
	r.db = src.database
	reg, err := stream.OpenRegistry(ctx, r.js, r.cfg.SchemaBucket, 1)
	if err != nil {
		if ctx.Err() != nil {
			return nil
		}
		return err
	}
	r.registry = reg
	if err := r.prepareSlot(ctx, src.slotExists); err != nil {
		if ctx.Err() != nil {
			return nil
		}
		return err
	}
	if err := r.registerNewTables(ctx); err != nil {
		if ctx.Err() != nil {
			return nil
		}
		// Not fatal: the shapes arrive with the first change of each table.
		r.log.Warn("cannot register the published tables ahead of their first change", "err", err)
	}
	close(r.registered)
	r.log.Info("reader ready", "database", r.db, "publication", r.cfg.Publication)

	wctx, stopWatch := context.WithCancel(ctx)
	defer stopWatch()
	go r.watch(wctx)
	go r.snapshotWorker(wctx)
	if r.cfg.HeartbeatInterval > 0 {
		go r.heartbeat(wctx)
	}

	backoff := r.cfg.RetryMin
	for {
		progressed, err := r.session(ctx)
		r.setStreaming(false)
		if ctx.Err() != nil {
			r.log.Info("reader stopped")
			return nil
		}
		if progressed {
			backoff = r.cfg.RetryMin
		}
		var inUse *slotInUseError
		switch {
		case errors.As(err, &inUse):
			r.log.Warn("replication slot is in use by another process; retrying", "pid", inUse.pid, "retry_in", backoff)
		case IsConfigError(err):
			return err
		default:
			r.log.Warn("replication session ended; reconnecting", "err", err, "retry_in", backoff)
		}
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(backoff):
		}
		backoff = min(backoff*2, r.cfg.RetryMax)
		if !r.nc.IsConnected() {
			// Replaying into a NATS that is not there only fails again;
			// the client reconnects by itself, so wait for it.
			r.log.Warn("waiting for NATS before streaming again")
			if err := stream.WaitConnected(ctx, r.nc); err != nil {
				if ctx.Err() != nil {
					return nil
				}
				return fmt.Errorf("wait for NATS: %w", err)
			}
			r.log.Info("NATS is back")
			backoff = r.cfg.RetryMin
		}
	}
}

// Registered is closed once Run has written the shape of every published
// table to the schema registry (or tried: a table it could not register
// is registered with its first change), before the first change is
// streamed. A gateway waits for it to know every table a client may ask for.
func (r *Reader) Registered() <-chan struct{} { return r.registered }

// setStreaming records whether a session is streaming, and since when it
// is not, for health.
func (r *Reader) setStreaming(on bool) {
	r.streaming.Store(on)
	r.healthMu.Lock()
	switch {
	case on:
		r.streamSince = time.Time{}
		r.m.streaming.Set(1)
	case r.streamSince.IsZero():
		r.streamSince = time.Now()
		r.m.streaming.Set(0)
	}
	r.healthMu.Unlock()
}

type slotInUseError struct {
	slot string
	pid  string
}

func (e *slotInUseError) Error() string {
	return fmt.Sprintf("replication slot %q is in use by process %s", e.slot, e.pid)
}

// session runs one replication connection from the slot's confirmed
// position until an error. progressed says whether it confirmed anything,
// which resets the backoff.
func (r *Reader) session(ctx context.Context) (progressed bool, err error) {
	r.m.sessions.Inc()
	conn, err := connectReplication(ctx, r.cfg.DatabaseURL)
	if err != nil {
		return false, err
	}
	defer conn.Close(context.Background())

	start, err := slotPosition(ctx, conn, r.cfg.Slot)
	if err != nil {
		return false, err
	}
	pubArg := strings.ReplaceAll(`"`+strings.ReplaceAll(r.cfg.Publication, `"`, `""`)+`"`, `'`, `''`)
	err = pglogrepl.StartReplication(ctx, conn, r.cfg.Slot, pglogrepl.LSN(start), pglogrepl.StartReplicationOptions{
		// messages: logical decoding messages, for the transactional
		// outbox (custom topics) and the heartbeat.
		PluginArgs: []string{"proto_version '1'", "publication_names '" + pubArg + "'", "messages 'true'"},
	})
	if err != nil {
		var pgErr *pgconn.PgError
		if errors.As(err, &pgErr) && pgErr.Code == "55006" { // object_in_use
			return false, &slotInUseError{slot: r.cfg.Slot, pid: strings.TrimPrefix(pgErr.Message, fmt.Sprintf("replication slot \"%s\" is active for PID ", r.cfg.Slot))}
		}
		return false, fmt.Errorf("start replication from %s: %w", pglogrepl.LSN(start), err)
	}

	pub, err := stream.NewPublisher(r.nc, r.js, r.cfg.MaxInFlight, r.log, stream.WithStream(r.cfg.Stream))
	if err != nil {
		return false, fmt.Errorf("start publisher: %w", err)
	}
	defer pub.Close()

	r.log.Info("streaming", "from", pglogrepl.LSN(start).String())
	r.setStreaming(true)
	r.ackedLSN.Store(start)
	r.m.ackedLSN.Set(float64(start))

	s := &session{
		r:         r,
		conn:      conn,
		pub:       pub,
		relations: map[uint32]*relation{},
		typeNames: map[uint32]string{},
		windows:   map[string]*window{},
		confirmed: start,
	}
	defer s.types.close()
	err = s.loop(ctx)
	return s.confirmed > start, err
}

// slotPosition reads the slot's confirmed_flush_lsn: the one position from
// which replaying loses nothing and repeats the least. It also tells
// whether another process holds the slot.
func slotPosition(ctx context.Context, conn *pgconn.PgConn, slot string) (uint64, error) {
	res, err := conn.Exec(ctx, fmt.Sprintf(
		"SELECT confirmed_flush_lsn, coalesce(active_pid::text, '') FROM pg_replication_slots WHERE slot_name = '%s'", slot)).ReadAll()
	if err != nil {
		return 0, fmt.Errorf("read position of slot %s: %w", slot, err)
	}
	if len(res) == 0 || len(res[0].Rows) == 0 {
		return 0, configErrorf("replication slot %q does not exist (dropped while running?)", slot)
	}
	row := res[0].Rows[0]
	if pid := string(row[1]); pid != "" {
		return 0, &slotInUseError{slot: slot, pid: pid}
	}
	lsn, err := pglogrepl.ParseLSN(string(row[0]))
	if err != nil {
		return 0, fmt.Errorf("parse confirmed_flush_lsn of slot %s: %w", slot, err)
	}
	return uint64(lsn), nil
}

// relation is a table as last described by a Relation message, with its
// subjects formatted once.
type relation struct {
	table    *schema.Table
	subjects map[string]string // op → subject
}

// session is the state of one replication connection. Only its goroutine
// touches it.
type session struct {
	r         *Reader
	conn      *pgconn.PgConn
	pub       *stream.Publisher
	relations map[uint32]*relation
	typeNames map[uint32]string  // user types, from pgoutput's Type messages
	windows   map[string]*window // open on-demand snapshot chunks, by watermark id
	// published chunks awaiting acknowledgement
	pendingChunks []pendingChunk
	types         sessionTypes // JSON rules of user-defined column types (types.go)

	txn      schema.Txn
	inTxn    bool
	ordinal  uint32
	lastSeq  uint64 // publisher sequence of the last event published
	commits  commitTracker
	walEnd   uint64 // latest server WAL end seen
	row      rowMessage
	buf, ids []byte

	confirmed  uint64 // highest LSN safe to confirm
	sent       uint64 // last LSN sent in a status update
	lastStatus time.Time
}

const (
	// statusMinInterval spaces status updates that only report progress:
	// often enough that a restart replays little, rare enough to cost
	// nothing.
	statusMinInterval = time.Second
	// readTick bounds how long a read blocks, so that progress is noticed
	// and reported while the server is silent.
	readTick = 200 * time.Millisecond
)

func (s *session) loop(ctx context.Context) error {
	netConn := s.conn.Conn()
	for {
		if err := ctx.Err(); err != nil {
			return err
		}
		now := time.Now()
		if err := s.pub.Err(); err != nil {
			return fmt.Errorf("publish to JetStream: %w", err)
		}
		s.advance(now)
		if (s.confirmed != s.sent && now.Sub(s.lastStatus) >= statusMinInterval) || now.Sub(s.lastStatus) >= s.r.cfg.StatusInterval {
			if err := s.sendStatus(now); err != nil {
				return err
			}
		}
		if err := netConn.SetReadDeadline(now.Add(readTick)); err != nil {
			return fmt.Errorf("set read deadline: %w", err)
		}
		msg, err := s.conn.ReceiveMessage(context.Background())
		if err != nil {
			if pgconn.Timeout(err) {
				continue
			}
			return fmt.Errorf("receive replication message: %w", err)
		}
		switch msg := msg.(type) {
		case *pgproto3.CopyData:
			if err := s.handleCopyData(ctx, msg.Data, now); err != nil {
				return err
			}
		case *pgproto3.ErrorResponse:
			return fmt.Errorf("replication stream: %w", pgconn.ErrorResponseToPgError(msg))
		case *pgproto3.CopyDone:
			return errors.New("replication stream ended by the server")
		default:
			// NoticeResponse and the like: nothing to do.
		}
	}
}

func (s *session) handleCopyData(ctx context.Context, data []byte, now time.Time) error {
	if len(data) == 0 {
		return nil
	}
	switch data[0] {
	case pglogrepl.PrimaryKeepaliveMessageByteID:
		ka, err := pglogrepl.ParsePrimaryKeepaliveMessage(data[1:])
		if err != nil {
			return fmt.Errorf("parse keepalive: %w", err)
		}
		s.walEnd = max(s.walEnd, uint64(ka.ServerWALEnd))
		s.advance(now)
		if ka.ReplyRequested {
			return s.sendStatus(now)
		}
	case pglogrepl.XLogDataByteID:
		if len(data) < 25 {
			return fmt.Errorf("XLogData of %d bytes", len(data))
		}
		s.walEnd = max(s.walEnd, binary.BigEndian.Uint64(data[9:17]))
		return s.handleWAL(ctx, data[25:], now)
	}
	return nil
}

// handleWAL handles one pgoutput message.
func (s *session) handleWAL(ctx context.Context, wal []byte, now time.Time) error {
	if len(wal) == 0 {
		return nil
	}
	switch wal[0] {
	case 'I', 'U', 'D':
		return s.handleRow(ctx, wal)
	case 'B':
		var b pglogrepl.BeginMessage
		if err := b.Decode(wal[1:]); err != nil {
			return fmt.Errorf("decode begin: %w", err)
		}
		s.txn.Reset(uint64(b.FinalLSN), b.Xid, b.CommitTime)
		s.inTxn, s.ordinal = true, 0
	case 'C':
		var c pglogrepl.CommitMessage
		if err := c.Decode(wal[1:]); err != nil {
			return fmt.Errorf("decode commit: %w", err)
		}
		s.inTxn = false
		s.commits.add(s.lastSeq, uint64(c.TransactionEndLSN), now)
	case 'R':
		var rm pglogrepl.RelationMessage
		if err := rm.Decode(wal[1:]); err != nil {
			return fmt.Errorf("decode relation: %w", err)
		}
		rel, err := s.newRelation(ctx, &rm)
		if err != nil {
			return err
		}
		s.relations[rm.RelationID] = rel
		if err := s.recordShape(ctx, rel.table); err != nil {
			return err
		}
	case 'T':
		var tm pglogrepl.TruncateMessage
		if err := tm.Decode(wal[1:]); err != nil {
			return fmt.Errorf("decode truncate: %w", err)
		}
		for _, id := range tm.RelationIDs {
			rel, ok := s.relations[id]
			if !ok {
				return fmt.Errorf("truncate of relation %d that was never described", id)
			}
			s.ordinal++
			if err := s.publish(ctx, rel, &schema.Change{Op: schema.OpTruncate, Ordinal: s.ordinal}); err != nil {
				return err
			}
		}
	case 'Y':
		var tm pglogrepl.TypeMessage
		if err := tm.Decode(wal[1:]); err != nil {
			return fmt.Errorf("decode type: %w", err)
		}
		s.typeNames[tm.DataType] = tm.Namespace + "." + tm.Name
	case 'M':
		var m pglogrepl.LogicalDecodingMessage
		if err := m.Decode(wal[1:]); err != nil {
			return fmt.Errorf("decode logical decoding message: %w", err)
		}
		return s.handleMessage(ctx, &m, now)
	default:
		// Origin messages carry nothing to publish.
	}
	return nil
}

// topicMessagePrefix marks a logical decoding message as one for a custom
// topic: pg_logical_emit_message(true, 'tablecast:<topic>', '<json>').
const topicMessagePrefix = "tablecast:"

// handleMessage publishes a transactional logical decoding message whose
// prefix names a custom topic on that topic's subject, in its place among
// the transaction's changes: PostgreSQL sends it only if the transaction
// commits, which makes a transactional outbox without an outbox table.
// Heartbeats measure the lag from their emission to their arrival.
func (s *session) handleMessage(ctx context.Context, m *pglogrepl.LogicalDecodingMessage, now time.Time) error {
	if m.Prefix == heartbeatPrefix {
		if sent, err := time.Parse(time.RFC3339Nano, string(m.Content)); err == nil {
			s.r.m.heartbeatLag.Set(now.Sub(sent).Seconds())
		}
		return nil
	}
	if m.Prefix == snapshotRequestPrefix || m.Prefix == watermarkPrefix {
		return s.onDemandMessage(ctx, m.Prefix, m.Content, uint64(m.LSN))
	}
	topic, ok := strings.CutPrefix(m.Prefix, topicMessagePrefix)
	if !ok {
		return nil // some other tool's message
	}
	if !m.Transactional || !s.inTxn {
		s.r.log.Warn("ignoring a non-transactional message for a custom topic: only pg_logical_emit_message(true, …) is published, at commit",
			"topic", topic, "lsn", m.LSN.String())
		return nil
	}
	if topic == "" {
		s.r.log.Warn("ignoring a message with an empty topic name", "lsn", m.LSN.String())
		return nil
	}
	s.ordinal++
	s.buf = s.buf[:0]
	if json.Valid(m.Content) {
		s.buf = append(s.buf, m.Content...)
	} else {
		// Not JSON: carried as a JSON string rather than lost.
		s.buf = schema.AppendStringBytes(s.buf, m.Content)
	}
	s.ids = s.txn.AppendID(s.ids[:0], s.ordinal)
	seq, err := s.pub.Publish(ctx, stream.TopicSubject(s.r.prefix, topic), string(s.ids), s.buf)
	if err != nil {
		return fmt.Errorf("publish message for topic %s: %w", topic, err)
	}
	s.lastSeq = seq
	s.r.m.messages.Inc()
	return nil
}

func (s *session) newRelation(ctx context.Context, rm *pglogrepl.RelationMessage) (*relation, error) {
	t := &schema.Table{
		RelationID:      rm.RelationID,
		Schema:          rm.Namespace,
		Name:            rm.RelationName,
		ReplicaIdentity: rm.ReplicaIdentity,
		Columns:         make([]schema.Column, len(rm.Columns)),
	}
	for i, c := range rm.Columns {
		t.Columns[i] = schema.Column{Name: c.Name, TypeOID: c.DataType, TypeMod: c.TypeModifier, Key: c.Flags&1 != 0}
	}
	if err := s.resolveColumnTypes(ctx, t); err != nil {
		return nil, err
	}
	rel := &relation{table: t, subjects: map[string]string{}}
	for _, op := range []string{schema.OpCreate, schema.OpUpdate, schema.OpDelete, schema.OpTruncate, schema.OpRead} {
		rel.subjects[op] = stream.ChangeSubject(s.r.prefix, s.r.db, t.Schema, t.Name, op)
	}
	return rel, nil
}

func (s *session) handleRow(ctx context.Context, wal []byte) error {
	if err := s.row.decode(wal); err != nil {
		return err
	}
	rel, ok := s.relations[s.row.relationID]
	if !ok {
		return fmt.Errorf("change to relation %d that was never described", s.row.relationID)
	}
	c := schema.Change{New: s.row.new, Old: s.row.old, OldKeyOnly: s.row.oldKeyOnly}
	switch s.row.kind {
	case 'I':
		c.Op = schema.OpCreate
	case 'U':
		c.Op = schema.OpUpdate
	case 'D':
		c.Op = schema.OpDelete
	}
	s.ordinal++
	c.Ordinal = s.ordinal
	if len(s.windows) > 0 {
		s.noteChange(rel, c.Old)
		s.noteChange(rel, c.New)
	}
	return s.publish(ctx, rel, &c)
}

func (s *session) publish(ctx context.Context, rel *relation, c *schema.Change) error {
	if !s.inTxn {
		return errors.New("row change outside a transaction")
	}
	s.buf = schema.AppendEvent(s.buf[:0], s.r.db, rel.table, &s.txn, c)
	s.ids = s.txn.AppendID(s.ids[:0], c.Ordinal)
	seq, err := s.pub.Publish(ctx, rel.subjects[c.Op], string(s.ids), s.buf)
	if err != nil {
		return fmt.Errorf("publish %s %s: %w", c.Op, rel.table.QualifiedName(), err)
	}
	s.lastSeq = seq
	s.r.m.published[c.Op].Inc()
	return nil
}

// advance moves the confirmable position forward: to the end of every
// transaction JetStream has fully acknowledged and, when nothing is in
// flight, to the server's WAL end, so that an idle slot (or one whose busy
// tables are not published) does not hold WAL forever.
func (s *session) advance(now time.Time) {
	acked := s.pub.Acked()
	limit := s.confirmLimit()
	if lsn := s.commits.advance(acked, now, s.observe); lsn > s.confirmed {
		s.confirmed = max(s.confirmed, min(lsn, limit))
	}
	if !s.inTxn && s.commits.empty() && acked == s.lastSeq && s.walEnd > s.confirmed {
		s.confirmed = max(s.confirmed, min(s.walEnd, limit))
	}
	if len(s.pendingChunks) > 0 {
		s.releaseChunks(acked)
	}
	if s.r.ackedLSN.Load() != s.confirmed {
		s.r.ackedLSN.Store(s.confirmed)
		s.r.m.ackedLSN.Set(float64(s.confirmed))
	}
}

func (s *session) observe(d time.Duration) { s.r.m.publishLatency.Observe(d.Seconds()) }

func (s *session) sendStatus(now time.Time) error {
	lsn := pglogrepl.LSN(s.confirmed)
	err := pglogrepl.SendStandbyStatusUpdate(context.Background(), s.conn, pglogrepl.StandbyStatusUpdate{
		WALWritePosition: lsn, WALFlushPosition: lsn, WALApplyPosition: lsn, ClientTime: now,
	})
	if err != nil {
		return fmt.Errorf("confirm LSN %s: %w", lsn, err)
	}
	s.sent, s.lastStatus = s.confirmed, now
	return nil
}
