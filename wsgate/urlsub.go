package wsgate

import (
	"net/url"
	"strconv"
	"strings"

	"github.com/tablecast/tablecast/internal/query"
	"github.com/tablecast/tablecast/schema"
)

// URL subscriptions serve clients that connect and send nothing (a curl, an
// embedded device, a quick look from a browser console):
//
//	GET /ws/tables/public.orders?events=create,update&select=id,status&status=eq.paid&total=gte.10&from=1234
//
// The path names the table, "schema.table" or "db.schema.table" as a
// subscribe message does; the query holds the same choices as a subscribe
// message:
//
//   - events=create,update: event kinds, comma separated (absent or empty:
//     all kinds).
//   - select=id,status: the columns to send (absent: all; given empty: all).
//   - from=1234: resume after this stream sequence.
//   - batch=transaction: each transaction's events in one transaction
//     frame, as "batch" in a subscribe message.
//   - token=…: credentials, read by the auth layer and ignored here.
//   - every other parameter is a filter on the column it names, written
//     operator.value: status=eq.paid, total=gte.10, deleted_at=is.null,
//     id=in.(1,2,3): the URL form of a where (query.ParseURLWhere), with
//     the operators of the JSON protocol's "where".
//
// A column whose name is a reserved parameter (events, select, from,
// snapshot, batch, token)
// cannot be filtered in the URL; subscribe with a message for that.
//
// The subscription made from a URL has the id URLSubscriptionID.

// EndpointPrefix is the path under which a URL names a managed WebSocket
// endpoint: /ws/endpoints/<name> subscribes to the events of its filters
// and rules (conn.subscribeEndpoint).
const EndpointPrefix = "/ws/endpoints/"

// URLSubscriptionPrefix is the path under which a URL names its table.
const URLSubscriptionPrefix = "/ws/tables/"

// URLSubscriptionID is the subscription id of a URL subscription, used in its
// event frames.
const URLSubscriptionID = "url"

// URLSubscription is the subscription a URL asks for.
type URLSubscription struct {
	// Table is "schema.table" or "db.schema.table" (split it with
	// SplitQualifiedName).
	Table string
	// Events are the event kinds wanted, without duplicates; nil means all.
	Events []string
	// Select lists the columns wanted; nil when the parameter is absent,
	// empty (non-nil) when it is given empty. Both mean all columns.
	Select []string
	// From is the stream sequence to resume after; nil means live only.
	From *uint64
	// Snapshot: the rows that match now first (snapshot=true).
	Snapshot bool
	// Batch is BatchTransaction for batch=transaction, else "".
	Batch string
	// Where is the filter, the same where the JSON protocol's "where"
	// gives, its columns in name order; nil when the URL has no filter
	// parameter.
	Where *query.Where
}

// Query parameters with a meaning of their own; all others are filters.
const (
	paramEvents   = "events"
	paramSelect   = "select"
	paramFrom     = "from"
	paramSnapshot = "snapshot"
	paramBatch    = "batch"
	paramToken    = "token"
)

// ParseURLSubscription reads a URL subscription. path is the request's
// escaped path (r.URL.EscapedPath()), URLSubscriptionPrefix followed by the
// percent-encoded "[db.]schema.table" as one segment; params is the parsed
// query (r.URL.Query()). A bad path or reserved parameter is
// CodeInvalidSubscription, a bad select CodeInvalidSelect, a bad filter
// parameter CodeInvalidFilter; the gateway closes such a connection with
// CloseBadRequest and the error's message as reason.
func ParseURLSubscription(path string, params url.Values) (URLSubscription, *ProtocolError) {
	var sub URLSubscription
	fail := func(code ErrorCode, msg string) (URLSubscription, *ProtocolError) {
		return URLSubscription{}, &ProtocolError{Code: code, ID: URLSubscriptionID, Message: msg}
	}

	seg, ok := strings.CutPrefix(path, URLSubscriptionPrefix)
	if !ok || seg == "" || strings.Contains(seg, "/") {
		return fail(CodeInvalidSubscription, "path "+schema.QuoteName(path)+": want "+URLSubscriptionPrefix+"schema.table")
	}
	table, err := url.PathUnescape(seg)
	if err != nil {
		return fail(CodeInvalidSubscription, "path "+schema.QuoteName(path)+": bad percent-encoding")
	}
	if msg := checkTableName(table); msg != "" {
		return fail(CodeInvalidSubscription, msg)
	}
	sub.Table = table

	single := func(name string) (string, bool, *ProtocolError) {
		vs, ok := params[name]
		if !ok {
			return "", false, nil
		}
		if len(vs) > 1 {
			return "", false, &ProtocolError{Code: CodeInvalidSubscription, ID: URLSubscriptionID,
				Message: "parameter " + strconv.Quote(name) + " is given more than once"}
		}
		return vs[0], true, nil
	}

	if v, ok, perr := single(paramEvents); perr != nil {
		return URLSubscription{}, perr
	} else if ok && v != "" {
		var msg string
		if sub.Events, msg = checkEvents(strings.Split(v, ",")); msg != "" {
			return fail(CodeInvalidSubscription, msg)
		}
	}

	if v, ok, perr := single(paramSelect); perr != nil {
		return URLSubscription{}, perr
	} else if ok {
		sub.Select = []string{}
		if v != "" {
			sub.Select = strings.Split(v, ",")
		}
		if msg := checkColumns(`parameter "select"`, sub.Select); msg != "" {
			return fail(CodeInvalidSelect, msg)
		}
	}

	if v, ok, perr := single(paramFrom); perr != nil {
		return URLSubscription{}, perr
	} else if ok {
		n, err := strconv.ParseUint(v, 10, 64)
		if err != nil {
			return fail(CodeInvalidSubscription, "parameter \"from\" must be a non-negative integer, not "+schema.QuoteName(v))
		}
		sub.From = &n
	}

	if v, ok, perr := single(paramSnapshot); perr != nil {
		return URLSubscription{}, perr
	} else if ok {
		switch v {
		case "true":
			sub.Snapshot = true
		case "false":
		default:
			return fail(CodeInvalidSubscription, "parameter \"snapshot\" must be true or false, not "+schema.QuoteName(v))
		}
		if sub.Snapshot && sub.From != nil {
			return fail(CodeInvalidSubscription, "parameters \"snapshot\" and \"from\" cannot be combined: snapshot starts a view, from resumes one")
		}
	}

	if v, ok, perr := single(paramBatch); perr != nil {
		return URLSubscription{}, perr
	} else if ok {
		if v != BatchTransaction {
			return fail(CodeInvalidSubscription, "parameter \"batch\" must be "+BatchTransaction+", not "+schema.QuoteName(v))
		}
		sub.Batch = v
	}

	var filters map[string][]string
	for name, vs := range params {
		switch name {
		case paramEvents, paramSelect, paramFrom, paramSnapshot, paramBatch, paramToken:
		default:
			if filters == nil {
				filters = map[string][]string{}
			}
			filters[name] = vs
		}
	}
	w, err := query.ParseURLWhere(filters)
	if err != nil {
		return fail(CodeInvalidFilter, err.Error())
	}
	sub.Where = w
	return sub, nil
}
