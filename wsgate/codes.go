package wsgate

import (
	"strconv"

	"github.com/tablecast/tablecast/internal/auth"
)

// This file is the one place where the gateway's codes are defined: the
// error codes sent in "error" frames, which leave the connection open, and
// the WebSocket close codes, which end it. Both are part of the WebSocket
// protocol contract (v1): clients switch on them, so a code's meaning never
// changes and a removed code is never reused.

// ErrorCode is the "code" of an error frame:
//
//	{"type":"error","id":"s1","code":"invalid_filter","message":"…"}
//
// An error frame answers one client message (its "id" is that message's id
// when it had one) or reports a problem with one subscription; the
// connection stays open. The "message" is for people and may change; the
// code is for programs and does not.
type ErrorCode string

const (
	// CodeInvalidMessage: the frame is not a JSON object, or a field has the
	// wrong JSON type ("field \"events\" must be an array of strings"), or a
	// required field of a message that is not about a subscription is
	// missing or malformed (a topic name of create-topic, destroy-topic,
	// publish).
	CodeInvalidMessage ErrorCode = "invalid_message"

	// CodeUnknownType: the "type" is a string but not a message type this
	// protocol version knows. The frame is otherwise ignored.
	CodeUnknownType ErrorCode = "unknown_type"

	// CodeInvalidSubscription: a subscribe, select or unsubscribe message is
	// well typed but wrong: no id or a bad id, neither or both of table and
	// topic, a malformed table or topic name, an unknown event kind. Also
	// used for a URL subscription's path and reserved parameters.
	CodeInvalidSubscription ErrorCode = "invalid_subscription"

	// CodeUnknownTable: the table is well formed but the gateway does not
	// stream it (no such table, or it is not in the publication).
	CodeUnknownTable ErrorCode = "unknown_table"

	// CodeAmbiguousTable: the table is named "schema.table" and more than
	// one database the client may read streams a table of that name. The
	// message names each as "db.schema.table"; subscribe with one of them.
	CodeAmbiguousTable ErrorCode = "ambiguous_table"

	// CodeUnknownRule: subscribe names a rule that does not exist.
	CodeUnknownRule ErrorCode = "unknown_rule"

	// CodeUnknownTopic: the custom topic does not exist (subscribe,
	// publish, destroy-topic), or it was destroyed while subscribed (the
	// error is followed by unsubscribed).
	CodeUnknownTopic ErrorCode = "unknown_topic"

	// CodeTopicExists: create-topic of a topic that exists.
	CodeTopicExists ErrorCode = "topic_exists"

	// CodeInvalidFilter: the "where" object (or a URL subscription's filter
	// parameters) cannot be compiled: unknown column or operator, a value
	// that does not parse as the column's type, a malformed in-list.
	CodeInvalidFilter ErrorCode = "invalid_filter"

	// CodeInvalidSelect: a "select" list (subscribe or select message) names
	// a column the table does not have, or an empty column name.
	CodeInvalidSelect ErrorCode = "invalid_select"

	// CodeNotAllowed: the client's credentials do not grant what it asked for
	// (reading a table or topic, publishing, creating a topic). Reserved for
	// the auth layer. Also sent, with the subscription's id and followed by
	// unsubscribed, when a refreshed token or a changed API key no longer
	// grants an open subscription.
	CodeNotAllowed ErrorCode = "not_allowed"

	// CodeRefreshFailed: a refresh message's token was refused (expired,
	// bad signature, another subject, …: the message says why). The
	// connection keeps the credential it had, until that one expires.
	CodeRefreshFailed ErrorCode = "refresh_failed"

	// CodeTooManySubscriptions: the connection already holds the most
	// subscriptions the gateway allows; unsubscribe first.
	CodeTooManySubscriptions ErrorCode = "too_many_subscriptions"

	// CodeTooManyTopics: create-topic when the gateway holds the most
	// custom topics it allows.
	CodeTooManyTopics ErrorCode = "too_many_topics"

	// CodeHistoryUnavailable: the subscription asked to resume "from" a
	// sequence that is no longer in the stream (removed by its retention
	// limits); or, after subscribed, the stream discarded events of the
	// subscription before they were sent (during its resume, or behind a
	// gateway that fell behind the stream), and "unsubscribed" follows. The
	// client must reload its state and subscribe without "from".
	CodeHistoryUnavailable ErrorCode = "history_unavailable"

	// CodeNoKey: a subscription with "snapshot" to a table without a key
	// (no primary key nor replica identity index): its rows cannot be
	// told apart, so there is no view to keep.
	CodeNoKey ErrorCode = "no_key"

	// CodeSnapshotUnavailable: a subscription with "snapshot" when the
	// gateway cannot read the table's rows (row state off, not built
	// yet, or the table was truncated while its rows were sent; then
	// "unsubscribed" follows). Subscribe again later.
	CodeSnapshotUnavailable ErrorCode = "snapshot_unavailable"

	// CodeBatchUnavailable: a subscription with "batch": "transaction"
	// when the readers publish no transaction markers (the gateway is
	// configured so), without which the end of a transaction cannot be
	// told. Subscribe without "batch".
	CodeBatchUnavailable ErrorCode = "batch_unavailable"

	// CodeMessageTooLarge: a client message (a publish payload, typically)
	// is larger than the gateway accepts. A frame larger than the read
	// limit closes the connection with CloseMessageTooBig instead.
	CodeMessageTooLarge ErrorCode = "message_too_large"

	// CodeRateLimited: the client sends messages faster than it is allowed
	// to; the message was dropped.
	CodeRateLimited ErrorCode = "rate_limited"

	// CodeFilterFailed: a subscription's filter could not be evaluated on an
	// event (a value that does not convert to the column's type, say). The
	// event is not delivered to that subscription; the error frame carries
	// the subscription's id and the subscription stays.
	CodeFilterFailed ErrorCode = "filter_failed"

	// CodeInternal: the gateway failed (NATS unavailable, a bug). Retrying
	// later may succeed.
	CodeInternal ErrorCode = "internal"
)

// CloseCode is the status code of a WebSocket close frame sent by the
// gateway. Every close also carries a reason text (CloseCode.Reason gives
// the default one).
//
// Ranges:
//
//   - 1000–2999 are the codes of RFC 6455 §7.4.1, used with their standard
//     meaning.
//   - 4000–4999 are tablecast's own: the last three digits are the HTTP
//     status code of the same meaning (4001 ≈ 401, 4003 ≈ 403, 4008 ≈ 408,
//     4029 ≈ 429, 4400 ≈ 400, 4410 ≈ 410; 4400 because 4000 is the whole
//     range's start).
//
// Whether reconnecting can help differs by code, not by range; see
// CloseCode.Reconnect.
type CloseCode int

const (
	// CloseNormal (1000): the connection finished normally (the client
	// asked to close). Do not reconnect unless the application wants to.
	CloseNormal CloseCode = 1000

	// CloseGoingAway (1001): the gateway is shutting down or restarting.
	// Reconnect (with a short random delay) and resume with "from".
	CloseGoingAway CloseCode = 1001

	// CloseProtocolError (1002): the client broke the WebSocket protocol
	// itself. A client bug: do not reconnect in a loop.
	CloseProtocolError CloseCode = 1002

	// CloseUnsupportedData (1003): the client sent a binary frame; the
	// protocol is JSON text only. A client bug: do not reconnect in a loop.
	CloseUnsupportedData CloseCode = 1003

	// CloseInvalidPayload (1007): a text message (or a close frame's
	// reason) is not valid UTF-8. A client bug: do not reconnect in a loop.
	CloseInvalidPayload CloseCode = 1007

	// CloseMessageTooBig (1009): a client frame exceeded the read limit.
	// Do not resend the same frame.
	CloseMessageTooBig CloseCode = 1009

	// CloseUnauthorized (4001): the credentials are missing, invalid, the
	// token expired while connected (reason CloseReasonTokenExpired), or
	// the API key was removed or replaced while connected (reason
	// CloseReasonRevoked). Reconnect only with new credentials.
	CloseUnauthorized CloseCode = 4001

	// CloseForbiddenOrigin (4003): the browser's Origin is not allowed.
	// Do not reconnect: it will be refused again.
	CloseForbiddenOrigin CloseCode = 4003

	// CloseSlowConsumer (4008): the client did not read fast enough and its
	// send queue overflowed. Reconnect and resume each subscription "from"
	// the last sequence received; nothing is lost.
	CloseSlowConsumer CloseCode = 4008

	// CloseTooManyConnections (4029): the gateway, or this client's
	// credentials, hold the most connections allowed. Reconnect later, with
	// back-off.
	CloseTooManyConnections CloseCode = 4029

	// CloseBadRequest (4400): the connection request itself is wrong, such
	// as a malformed URL subscription (/ws/tables/…?…). The reason says
	// what; do not reconnect with the same URL.
	CloseBadRequest CloseCode = 4400

	// CloseEndpointGone (4410): the WebSocket endpoint the connection
	// follows (/ws/endpoints/<name>) was paused, disabled or deleted, or
	// is no longer a WebSocket endpoint; the reason says which. Do not
	// reconnect until the endpoint is active again: it is refused with
	// 4400 meanwhile.
	CloseEndpointGone CloseCode = 4410
)

// CloseReasonTokenExpired is the reason of the CloseUnauthorized close sent
// at the moment the client's token expires, so a client can tell it from a
// refused token: it should fetch a fresh token and reconnect.
const CloseReasonTokenExpired = auth.ReasonTokenExpired

// CloseReasonRevoked is the reason of the CloseUnauthorized close sent to
// the connections of an API key that the keys file no longer holds.
const CloseReasonRevoked = auth.ReasonRevoked

// Reason returns the default reason text of a close code, for close frames
// that have nothing more specific to say. It is short: a close frame's
// reason may hold at most 123 bytes.
func (c CloseCode) Reason() string {
	switch c {
	case CloseNormal:
		return "normal closure"
	case CloseGoingAway:
		return "server shutting down"
	case CloseProtocolError:
		return "protocol error"
	case CloseUnsupportedData:
		return "binary frames are not supported"
	case CloseInvalidPayload:
		return "invalid UTF-8"
	case CloseMessageTooBig:
		return "message too big"
	case CloseUnauthorized:
		return "unauthorized"
	case CloseForbiddenOrigin:
		return "origin not allowed"
	case CloseSlowConsumer:
		return "slow consumer"
	case CloseTooManyConnections:
		return "too many connections"
	case CloseBadRequest:
		return "bad request"
	case CloseEndpointGone:
		return "endpoint gone"
	}
	return "closed"
}

// Reconnect reports whether a client that reconnects unchanged (same URL,
// same credentials, after a delay) can expect to succeed: true for
// CloseGoingAway, CloseSlowConsumer and CloseTooManyConnections. For
// CloseUnauthorized it is false: the client needs new credentials first.
func (c CloseCode) Reconnect() bool {
	switch c {
	case CloseGoingAway, CloseSlowConsumer, CloseTooManyConnections:
		return true
	}
	return false
}

// String returns the code for logs and metrics labels.
func (c ErrorCode) String() string { return string(c) }

// String returns the number and default reason, for logs: "4008 slow consumer".
func (c CloseCode) String() string { return strconv.Itoa(int(c)) + " " + c.Reason() }
