package wsgate

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"strconv"
	"strings"
	"unicode"
	"unicode/utf8"

	"github.com/tablecast/tablecast/internal/jsonx"
	"github.com/tablecast/tablecast/schema"
)

// This file holds the pure logic of the WebSocket protocol (v1): decoding and
// validating client messages, and encoding server frames. It does no I/O and
// knows nothing of tables' columns: whether a table exists, a column in
// "select" or "where" is real, or the client may read a table is decided by
// the caller after decoding.
//
// Decoding rules, the same for every message type:
//
//   - A frame is one JSON object. Anything else (invalid JSON, an array,
//     trailing data after the object) is CodeInvalidMessage.
//   - Unknown fields are ignored, so that a client written for a later
//     protocol version still works with this gateway for what both know.
//   - A field given twice at the top level is CodeInvalidMessage: JSON
//     parsers disagree on which one wins, and a message must mean one thing.
//   - A field whose value is null is treated as absent, except "data" of
//     publish, which is carried as given (null is a valid payload).
//   - Types are strict: a string field must be a JSON string, a list field
//     an array of strings (no null elements), "from" an integer written
//     without fraction or exponent. A wrong type is CodeInvalidMessage and
//     the message names the field.
//   - A string field (an id, a name, a list's item, a string in "where")
//     escaping a lone UTF-16 surrogate (\ud800) is CodeInvalidMessage: it is
//     not a character, and decoded it would be U+FFFD, not what the gateway
//     echoes back or what the client meant to compare.

// MessageType is the "type" of a client message.
type MessageType string

// The client message types of protocol v1.
const (
	TypeSubscribe    MessageType = "subscribe"
	TypeSelect       MessageType = "select"
	TypeUnsubscribe  MessageType = "unsubscribe"
	TypeTopics       MessageType = "topics"
	TypeCreateTopic  MessageType = "create-topic"
	TypeDestroyTopic MessageType = "destroy-topic"
	TypePublish      MessageType = "publish"
	TypePing         MessageType = "ping"
	TypeRefresh      MessageType = "refresh"
)

// MaxIDLen is the longest subscription id, in characters. Ids are echoed in
// every event frame, so they are kept short. (Table and topic names are
// bounded by schema.MaxIdentLen and schema.MaxTopicLen.)
const MaxIDLen = 64

// ClientMessage is a decoded and validated client message. Only the fields
// of its Type are set; the comment on each field says which types use it.
type ClientMessage struct {
	Type MessageType

	// ID is the subscription id (subscribe, select, unsubscribe): 1 to
	// MaxIDLen printable characters, chosen by the client; empty in a
	// subscribe without one, whose id the gateway assigns.
	ID string

	// Table is the table of a subscribe message, "schema.table" or
	// "db.schema.table" as the client wrote it (split it with
	// SplitQualifiedName). Empty for a topic subscription.
	Table string

	// Topic is the custom topic of subscribe, create-topic, destroy-topic
	// and publish. Empty for a table subscription.
	Topic string

	// Rule is the rule of a rule subscription: the events of its table it
	// fires on. Empty for a table or topic subscription.
	Rule string

	// Events are the event kinds a table subscription wants, without
	// duplicates, in the client's order; nil means all of them.
	Events []string

	// Where is the filter of a table subscription, a JSON object as the
	// client sent it; nil means no filter. The filter compiler validates
	// what is inside.
	Where json.RawMessage

	// Select lists the columns a table subscription wants (nil: all).
	// SelectGiven reports whether "select" was in the message at all, so
	// that an empty list (Select non-nil, len 0) is told from none.
	Select      []string
	SelectGiven bool

	// From is the stream sequence a subscription resumes after: the last
	// seq the client received. Nil means start with live events.
	From *uint64

	// Snapshot asks for the rows that match now (rows frames), then
	// synced with the sequence they are as of, then the events after it.
	// It cannot be combined with From.
	Snapshot bool

	// Batch is BatchTransaction when a table subscription wants the events
	// of each transaction together in transaction frames; "" for one event
	// frame per event.
	Batch string

	// Fields are the columns of a select message; never nil after a
	// successful decode. An empty list restores all columns.
	Fields []string

	// Data is the payload of a publish message, any JSON value (null
	// included), as the client sent it.
	Data json.RawMessage

	// Token is the new credential of a refresh message: a JWT or an API
	// key, never empty after a successful decode.
	Token string
}

// BatchTransaction is the one value of a subscription's "batch": the events
// of each transaction in one transaction frame (batch.go).
const BatchTransaction = "transaction"

// MaxRuleNameLen is the longest rule name.
const MaxRuleNameLen = 100

// ProtocolError is a client message the gateway refuses. It is answered with
// an error frame (see AppendFrame); the connection stays open.
type ProtocolError struct {
	Code ErrorCode
	// ID is the id of the refused message when it had a readable one,
	// so the client can match the error to its request; else empty.
	ID string
	// Message says what is wrong, for people.
	Message string
}

func (e *ProtocolError) Error() string { return string(e.Code) + ": " + e.Message }

// AppendFrame appends the error frame that reports e.
func (e *ProtocolError) AppendFrame(dst []byte) []byte {
	return AppendError(dst, e.ID, e.Code, e.Message)
}

// DecodeClientMessage decodes and validates one client frame. It returns the
// message, or a ProtocolError carrying the code to send back (never both).
// The returned message does not alias frame: the caller may reuse it.
func DecodeClientMessage(frame []byte) (ClientMessage, *ProtocolError) {
	fields, perr := readObject(frame)
	if perr != nil {
		return ClientMessage{}, perr
	}
	d := decoder{fields: fields}
	// The id, when readable, goes into every error, whatever the type.
	if raw, ok := fields.get("id"); ok {
		var id string
		if isString(raw) && !loneSurrogate(raw) && json.Unmarshal(raw, &id) == nil && validID(id) {
			d.errID = id
		}
	}

	raw, ok := fields.get("type")
	if !ok {
		return ClientMessage{}, d.fail(CodeInvalidMessage, `field "type" is required`)
	}
	var typ string
	if !isString(raw) || json.Unmarshal(raw, &typ) != nil {
		return ClientMessage{}, d.fail(CodeInvalidMessage, `field "type" must be a string`)
	}
	m := ClientMessage{Type: MessageType(typ)}
	switch m.Type {
	case TypeSubscribe:
		perr = d.subscribe(&m)
	case TypeSelect:
		perr = d.selectMsg(&m)
	case TypeUnsubscribe:
		m.ID, perr = d.id()
	case TypeCreateTopic, TypeDestroyTopic:
		m.Topic, perr = d.topicField()
	case TypePublish:
		perr = d.publish(&m)
	case TypeRefresh:
		m.Token, perr = d.token()
	case TypeTopics, TypePing:
	default:
		return ClientMessage{}, d.fail(CodeUnknownType, "unknown message type "+schema.QuoteName(typ))
	}
	if perr != nil {
		return ClientMessage{}, perr
	}
	return m, nil
}

// rawField is one top-level field of a client message.
type rawField struct {
	name  string
	value json.RawMessage
}

// rawFields are a message's top-level fields in frame order. Messages have a
// handful of fields, so a linear search beats a map.
type rawFields []rawField

// get returns the value of the named field; a null value counts as absent.
func (f rawFields) get(name string) (json.RawMessage, bool) {
	v, ok := f.getRaw(name)
	if !ok || string(v) == "null" {
		return nil, false
	}
	return v, true
}

// getRaw returns the value of the named field, null included.
func (f rawFields) getRaw(name string) (json.RawMessage, bool) {
	for _, fd := range f {
		if fd.name == name {
			return fd.value, true
		}
	}
	return nil, false
}

// readObject splits a frame that must be one JSON object into its fields.
func readObject(frame []byte) (rawFields, *ProtocolError) {
	if !json.Valid(frame) {
		var v json.RawMessage
		err := json.Unmarshal(frame, &v)
		msg := "message is not valid JSON"
		var se *json.SyntaxError
		if errors.As(err, &se) {
			msg += ": " + se.Error()
		}
		return nil, &ProtocolError{Code: CodeInvalidMessage, Message: msg}
	}
	notObject := &ProtocolError{Code: CodeInvalidMessage, Message: "message must be a JSON object"}
	dec := json.NewDecoder(bytes.NewReader(frame))
	tok, err := dec.Token()
	if err != nil || tok != json.Delim('{') {
		return nil, notObject
	}
	var fields rawFields
	for dec.More() {
		tok, err := dec.Token()
		if err != nil {
			return nil, notObject
		}
		name, _ := tok.(string)
		var value json.RawMessage
		if err := dec.Decode(&value); err != nil {
			return nil, notObject
		}
		if _, dup := fields.getRaw(name); dup {
			return nil, &ProtocolError{Code: CodeInvalidMessage,
				Message: "field " + schema.QuoteName(name) + " is given twice"}
		}
		fields = append(fields, rawField{name: name, value: bytes.TrimSpace(value)})
	}
	if tok, err := dec.Token(); err != nil || tok != json.Delim('}') {
		return nil, notObject
	}
	if _, err := dec.Token(); err != io.EOF {
		return nil, notObject
	}
	return fields, nil
}

// decoder reads the fields of one message.
type decoder struct {
	fields rawFields
	errID  string
}

func (d *decoder) fail(code ErrorCode, msg string) *ProtocolError {
	return &ProtocolError{Code: code, ID: d.errID, Message: msg}
}

func isString(raw json.RawMessage) bool { return len(raw) > 0 && raw[0] == '"' }

// str reads an optional string field.
func (d *decoder) str(name string) (s string, ok bool, perr *ProtocolError) {
	raw, ok := d.fields.get(name)
	if !ok {
		return "", false, nil
	}
	if !isString(raw) || json.Unmarshal(raw, &s) != nil {
		return "", false, d.fail(CodeInvalidMessage, "field "+strconv.Quote(name)+" must be a string")
	}
	if loneSurrogate(raw) {
		return "", false, d.fail(CodeInvalidMessage, "field "+strconv.Quote(name)+" "+loneSurrogateMsg)
	}
	return s, true, nil
}

// loneSurrogateMsg says what is wrong with a string loneSurrogate finds.
const loneSurrogateMsg = `holds a lone UTF-16 surrogate escape (such as \ud800), which is not a character`

// loneSurrogate reports whether raw, a JSON string as the client wrote it
// (or a value holding strings: escapes occur only in them), escapes a
// UTF-16 surrogate that is not half of a pair. Decoding turns it
// into U+FFFD without a word, so that an id or a name the gateway echoes
// (subscribed, topics) would not be the one the client sent, and the
// client could not tell its answers.
func loneSurrogate(raw []byte) bool {
	for i := 0; i < len(raw); i++ {
		if raw[i] != '\\' {
			continue
		}
		i++ // raw is valid JSON: an escape is whole
		if raw[i] != 'u' {
			continue
		}
		r, _ := strconv.ParseUint(string(raw[i+1:i+5]), 16, 32)
		i += 4
		switch {
		case r >= 0xDC00 && r <= 0xDFFF:
			return true // a low half first
		case r >= 0xD800 && r <= 0xDBFF:
			if i+6 >= len(raw) || raw[i+1] != '\\' || raw[i+2] != 'u' {
				return true
			}
			lo, _ := strconv.ParseUint(string(raw[i+3:i+7]), 16, 32)
			if lo < 0xDC00 || lo > 0xDFFF {
				return true
			}
			i += 6
		}
	}
	return false
}

// strList reads an optional array-of-strings field. A given empty array
// yields a non-nil empty slice.
func (d *decoder) strList(name string) (list []string, ok bool, perr *ProtocolError) {
	raw, ok := d.fields.get(name)
	if !ok {
		return nil, false, nil
	}
	bad := d.fail(CodeInvalidMessage, "field "+strconv.Quote(name)+" must be an array of strings")
	var items []json.RawMessage
	if raw[0] != '[' || json.Unmarshal(raw, &items) != nil {
		return nil, false, bad
	}
	list = make([]string, 0, len(items))
	for _, it := range items {
		var s string
		if !isString(it) || json.Unmarshal(it, &s) != nil {
			return nil, false, bad
		}
		if loneSurrogate(it) {
			return nil, false, d.fail(CodeInvalidMessage, "field "+strconv.Quote(name)+" "+loneSurrogateMsg)
		}
		list = append(list, s)
	}
	return list, true, nil
}

// id reads the required subscription id.
func (d *decoder) id() (string, *ProtocolError) {
	id, ok, perr := d.str("id")
	if perr != nil {
		return "", perr
	}
	if !ok {
		return "", d.fail(CodeInvalidSubscription, `field "id" is required`)
	}
	if !validID(id) {
		return "", d.fail(CodeInvalidSubscription,
			"id "+schema.QuoteName(id)+" must be 1 to "+strconv.Itoa(MaxIDLen)+" printable characters")
	}
	return id, nil
}

// validID reports whether id is 1 to MaxIDLen printable characters (the
// space is printable; tabs, newlines and other controls are not).
func validID(id string) bool {
	if id == "" || !utf8.ValidString(id) || utf8.RuneCountInString(id) > MaxIDLen {
		return false
	}
	for _, r := range id {
		if !unicode.IsPrint(r) {
			return false
		}
	}
	return true
}

func (d *decoder) subscribe(m *ClientMessage) *ProtocolError {
	var perr *ProtocolError
	// Without an id the gateway assigns one, told in subscribed.
	if _, ok := d.fields.get("id"); ok {
		if m.ID, perr = d.id(); perr != nil {
			return perr
		}
	}
	table, hasTable, perr := d.str("table")
	if perr != nil {
		return perr
	}
	topic, hasTopic, perr := d.str("topic")
	if perr != nil {
		return perr
	}
	rule, hasRule, perr := d.str("rule")
	if perr != nil {
		return perr
	}
	switch {
	case hasTable && hasTopic:
		return d.fail(CodeInvalidSubscription, `subscribe takes "table" or "topic", not both`)
	case hasRule && (hasTable || hasTopic):
		return d.fail(CodeInvalidSubscription, `subscribe takes "rule" alone, without "table" or "topic"`)
	case !hasTable && !hasTopic && !hasRule:
		return d.fail(CodeInvalidSubscription, `subscribe needs "table", "topic" or "rule"`)
	}

	events, hasEvents, perr := d.strList("events")
	if perr != nil {
		return perr
	}
	where, hasWhere := d.fields.get("where")
	if hasWhere && where[0] != '{' {
		return d.fail(CodeInvalidMessage, `field "where" must be an object`)
	}
	if hasWhere && loneSurrogate(where) {
		// Decoded, it would compare U+FFFD, which a row may hold.
		return d.fail(CodeInvalidMessage, `field "where" `+loneSurrogateMsg)
	}
	sel, hasSelect, perr := d.strList("select")
	if perr != nil {
		return perr
	}
	if m.From, perr = d.from(); perr != nil {
		return perr
	}
	if raw, ok := d.fields.get("snapshot"); ok {
		switch string(raw) {
		case "true":
			m.Snapshot = true
		case "false":
		default:
			return d.fail(CodeInvalidMessage, `field "snapshot" must be true or false`)
		}
	}
	if raw, ok := d.fields.get("batch"); ok {
		if string(raw) != `"`+BatchTransaction+`"` {
			return d.fail(CodeInvalidMessage, `field "batch" must be "`+BatchTransaction+`"`)
		}
		m.Batch = BatchTransaction
	}
	if m.Batch != "" && (hasTopic || hasRule) {
		return d.fail(CodeInvalidSubscription, `"batch" applies to table subscriptions only`)
	}
	if m.Snapshot && m.From != nil {
		return d.fail(CodeInvalidSubscription, `"snapshot" starts a view and "from" resumes one: send one of them`)
	}
	if m.Snapshot && (hasTopic || hasRule) {
		return d.fail(CodeInvalidSubscription, `"snapshot" applies to table subscriptions only`)
	}

	if hasRule {
		if rule == "" || len(rule) > MaxRuleNameLen || strings.ContainsFunc(rule, func(r rune) bool {
			return !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '.' || r == '_' || r == '-')
		}) {
			return d.fail(CodeInvalidSubscription, "a rule name is 1 to 100 characters of A-Z a-z 0-9 . _ -")
		}
		if hasEvents || hasWhere {
			return d.fail(CodeInvalidSubscription, `"events" and "where" do not apply to a rule subscription: the rule says which events`)
		}
		if hasSelect {
			if msg := checkColumns(`field "select"`, sel); msg != "" {
				return d.fail(CodeInvalidSelect, msg)
			}
			m.Select, m.SelectGiven = sel, true
		}
		m.Rule = rule
		return nil
	}

	if hasTopic {
		if msg := schema.TopicNameProblem(topic); msg != "" {
			return d.fail(CodeInvalidSubscription, msg)
		}
		if hasEvents || hasWhere || hasSelect {
			return d.fail(CodeInvalidSubscription,
				`"events", "where" and "select" apply to table subscriptions only`)
		}
		m.Topic = topic
		return nil
	}

	if msg := checkTableName(table); msg != "" {
		return d.fail(CodeInvalidSubscription, msg)
	}
	m.Table = table
	if m.Events, perr = d.events(events); perr != nil {
		return perr
	}
	if hasWhere {
		m.Where = bytes.Clone(where)
	}
	if hasSelect {
		if msg := checkColumns(`field "select"`, sel); msg != "" {
			return d.fail(CodeInvalidSelect, msg)
		}
		m.Select, m.SelectGiven = sel, true
	}
	return nil
}

// events validates a list of event kinds, dropping duplicates; an empty list
// becomes nil (all kinds).
func (d *decoder) events(list []string) ([]string, *ProtocolError) {
	out, msg := checkEvents(list)
	if msg != "" {
		return nil, d.fail(CodeInvalidSubscription, msg)
	}
	return out, nil
}

// checkEvents returns a list of event kinds without its duplicates, nil for
// an empty list, or what is wrong with it.
func checkEvents(list []string) (events []string, msg string) {
	for _, e := range list {
		if schema.OpBit(e) == 0 {
			return nil, "unknown event " + schema.QuoteName(e) + " (want create, update, delete, truncate or read)"
		}
		if !containsString(events, e) {
			events = append(events, e)
		}
	}
	return events, ""
}

func containsString(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

// checkColumns returns what is wrong with a list of column names, or "";
// what names the list in the message. Whether the columns exist is for the
// caller to check.
func checkColumns(what string, cols []string) string {
	for _, c := range cols {
		if c == "" {
			return what + " holds an empty column name"
		}
	}
	return ""
}

// from reads the optional resume sequence.
func (d *decoder) from() (*uint64, *ProtocolError) {
	raw, ok := d.fields.get("from")
	if !ok {
		return nil, nil
	}
	// Digits only: JSON has already refused leading zeros, and this refuses
	// signs, fractions and exponents (1e3 and 1.0 are not sequences).
	for _, c := range raw {
		if c < '0' || c > '9' {
			return nil, d.fail(CodeInvalidMessage, `field "from" must be a non-negative integer`)
		}
	}
	n, err := strconv.ParseUint(string(raw), 10, 64)
	if err != nil {
		return nil, d.fail(CodeInvalidMessage, `field "from" must be a non-negative integer below 2^64`)
	}
	return &n, nil
}

func (d *decoder) selectMsg(m *ClientMessage) *ProtocolError {
	var perr *ProtocolError
	if m.ID, perr = d.id(); perr != nil {
		return perr
	}
	fields, ok, perr := d.strList("fields")
	if perr != nil {
		return perr
	}
	if !ok {
		return d.fail(CodeInvalidSelect, `select needs "fields" (an empty list restores all columns)`)
	}
	if msg := checkColumns(`field "fields"`, fields); msg != "" {
		return d.fail(CodeInvalidSelect, msg)
	}
	m.Fields = fields
	return nil
}

// topicField reads the required topic of create-topic, destroy-topic and
// publish. A bad name there is CodeInvalidMessage (there is no subscription
// to speak of).
func (d *decoder) topicField() (string, *ProtocolError) {
	topic, ok, perr := d.str("topic")
	if perr != nil {
		return "", perr
	}
	if !ok {
		return "", d.fail(CodeInvalidMessage, `field "topic" is required`)
	}
	if msg := schema.TopicNameProblem(topic); msg != "" {
		return "", d.fail(CodeInvalidMessage, msg)
	}
	return topic, nil
}

func (d *decoder) publish(m *ClientMessage) *ProtocolError {
	var perr *ProtocolError
	if m.Topic, perr = d.topicField(); perr != nil {
		return perr
	}
	data, ok := d.fields.getRaw("data")
	if !ok {
		return d.fail(CodeInvalidMessage, `field "data" is required`)
	}
	m.Data = bytes.Clone(data)
	return nil
}

// token reads the required credential of a refresh message.
func (d *decoder) token() (string, *ProtocolError) {
	tok, ok, perr := d.str("token")
	switch {
	case perr != nil:
		return "", perr
	case !ok || tok == "":
		return "", d.fail(CodeInvalidMessage, `refresh needs "token", the new credential`)
	}
	return tok, nil
}

// SplitTableName splits a table name already accepted by the decoder (or by
// ParseURLSubscription) into schema and table: "schema.table", each part
// as written or SQL-style double-quoted when it holds a dot or white space
// (schema.ParseTableName, shared with the reader's TABLECAST_TABLES).
func SplitTableName(name string) (schemaName, table string) {
	schemaName, table, _ = schema.ParseTableName(name)
	return schemaName, table
}

// SplitQualifiedName splits a table name already accepted by the decoder
// (or by ParseURLSubscription) into database, schema and table:
// "db.schema.table", or "schema.table" with db "" (which names the table in
// whichever database streams it), each part as SplitTableName reads it
// (schema.ParseQualifiedName).
func SplitQualifiedName(name string) (db, schemaName, table string) {
	db, schemaName, table, _ = schema.ParseQualifiedName(name)
	return db, schemaName, table
}

// checkTableName returns what is wrong with a "schema.table" or
// "db.schema.table" name, or "". Whether the table exists is for the
// caller.
func checkTableName(name string) string {
	q := "table " + schema.QuoteName(name)
	if !utf8.ValidString(name) {
		return q + " is not valid UTF-8"
	}
	if strings.IndexFunc(name, unicode.IsControl) >= 0 {
		return q + " holds a control character"
	}
	db, schemaName, table, err := schema.ParseQualifiedName(name)
	switch {
	case err != nil:
		return q + ": want schema.table or database.schema.table (double-quote a part that holds a dot)"
	case len(db) > schema.MaxIdentLen || len(schemaName) > schema.MaxIdentLen || len(table) > schema.MaxIdentLen:
		return q + ": a name is longer than 63 bytes"
	}
	return ""
}

// Server → client frames. Each Append function appends one frame to dst and
// returns the extended slice, allocating only when dst lacks capacity, so a
// connection's writer can reuse one buffer. Strings are escaped as JSON
// (invalid UTF-8 becomes \ufffd); byte arguments named event or data must
// already be JSON and are embedded as they are (empty becomes null).

// AppendEventFrame appends a row change frame:
//
//	{"type":"event","id":"s1","seq":1235,"event":{…}}
//
// subID is the subscription's id, seq the event's stream sequence (the
// value a client resumes "from"), event the (projected) envelope.
func AppendEventFrame(dst []byte, subID string, seq uint64, event []byte) []byte {
	dst = append(dst, `{"type":"event","id":`...)
	dst = jsonx.AppendString(dst, subID)
	dst = append(dst, `,"seq":`...)
	dst = strconv.AppendUint(dst, seq, 10)
	dst = append(dst, `,"event":`...)
	dst = appendRawJSON(dst, event)
	return append(dst, '}')
}

// AppendMessageFrame appends a custom topic message frame:
//
//	{"type":"message","id":"s2","topic":"chat","seq":88,"data":{…}}
func AppendMessageFrame(dst []byte, subID, topic string, seq uint64, data []byte) []byte {
	dst = append(dst, `{"type":"message","id":`...)
	dst = jsonx.AppendString(dst, subID)
	dst = append(dst, `,"topic":`...)
	dst = jsonx.AppendString(dst, topic)
	dst = append(dst, `,"seq":`...)
	dst = strconv.AppendUint(dst, seq, 10)
	dst = append(dst, `,"data":`...)
	dst = appendRawJSON(dst, data)
	return append(dst, '}')
}

// AppendSubscribed appends the answer to a subscribe message:
//
//	{"type":"subscribed","id":"s1","seq":1234}
//
// seq is the stream sequence from which delivery is guaranteed: every
// matching event with a greater sequence will be sent.
func AppendSubscribed(dst []byte, id string, seq uint64) []byte {
	dst = append(dst, `{"type":"subscribed","id":`...)
	dst = jsonx.AppendString(dst, id)
	dst = append(dst, `,"seq":`...)
	dst = strconv.AppendUint(dst, seq, 10)
	return append(dst, '}')
}

// AppendSynced appends the end of a snapshot: the rows sent are the
// table's as of seq, and events after it follow. With more (batched views
// only), the rows end inside a transaction, whose rest comes first, in
// transaction frames, the last of them without "more".
//
//	{"type":"synced","id":"v1","seq":N}
//	{"type":"synced","id":"v1","seq":N,"more":true}
func AppendSynced(dst []byte, id string, seq uint64, more bool) []byte {
	dst = append(dst, `{"type":"synced","id":`...)
	dst = jsonx.AppendString(dst, id)
	dst = append(dst, `,"seq":`...)
	dst = strconv.AppendUint(dst, seq, 10)
	if more {
		dst = append(dst, `,"more":true`...)
	}
	return append(dst, '}')
}

// AppendUnsubscribed appends the answer to an unsubscribe message:
//
//	{"type":"unsubscribed","id":"s1"}
func AppendUnsubscribed(dst []byte, id string) []byte {
	dst = append(dst, `{"type":"unsubscribed","id":`...)
	dst = jsonx.AppendString(dst, id)
	return append(dst, '}')
}

// AppendTopics appends the answer to a topics message, the tables and
// topics the client may subscribe to (empty lists are written as []):
//
//	{"type":"topics","tables":["public.orders"],"topics":["chat"]}
func AppendTopics(dst []byte, tables, topics []string) []byte {
	dst = append(dst, `{"type":"topics","tables":`...)
	dst = appendStringArray(dst, tables)
	dst = append(dst, `,"topics":`...)
	dst = appendStringArray(dst, topics)
	return append(dst, '}')
}

// AppendRefreshed appends the answer to a refresh message: the new
// credential is in force, and exp (unix seconds) is when it expires; exp
// is left out when zero (a credential that does not expire):
//
//	{"type":"refreshed","exp":1798000000}
func AppendRefreshed(dst []byte, exp int64) []byte {
	dst = append(dst, `{"type":"refreshed"`...)
	if exp != 0 {
		dst = append(dst, `,"exp":`...)
		dst = strconv.AppendInt(dst, exp, 10)
	}
	return append(dst, '}')
}

// AppendPong appends the answer to a ping message: {"type":"pong"}.
func AppendPong(dst []byte) []byte {
	return append(dst, `{"type":"pong"}`...)
}

// AppendError appends an error frame; id is left out when empty:
//
//	{"type":"error","id":"s1","code":"invalid_filter","message":"…"}
func AppendError(dst []byte, id string, code ErrorCode, message string) []byte {
	dst = append(dst, `{"type":"error",`...)
	if id != "" {
		dst = append(dst, `"id":`...)
		dst = jsonx.AppendString(dst, id)
		dst = append(dst, ',')
	}
	dst = append(dst, `"code":`...)
	dst = jsonx.AppendString(dst, string(code))
	dst = append(dst, `,"message":`...)
	dst = jsonx.AppendString(dst, message)
	return append(dst, '}')
}

func appendRawJSON(dst, raw []byte) []byte {
	if len(raw) == 0 {
		return append(dst, "null"...)
	}
	return append(dst, raw...)
}

func appendStringArray(dst []byte, list []string) []byte {
	dst = append(dst, '[')
	for i, s := range list {
		if i > 0 {
			dst = append(dst, ',')
		}
		dst = jsonx.AppendString(dst, s)
	}
	return append(dst, ']')
}

// Compile-time check that ProtocolError is an error.
var _ error = (*ProtocolError)(nil)

// String returns the message type for logs and metrics labels.
func (t MessageType) String() string { return string(t) }
