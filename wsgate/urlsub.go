package wsgate

import (
	"encoding/json"
	"net/url"
	"slices"
	"strconv"
	"strings"

	"github.com/tablecast/tablecast/internal/jsonx"
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
//   - token=…: credentials, read by the auth layer and ignored here.
//   - every other parameter is a filter on the column it names, written
//     operator.value: status=eq.paid, total=gte.10, deleted_at=is.null,
//     id=in.(1,2,3). Operators are those of the JSON protocol's "where":
//     eq neq lt lte gt gte in nin is. An in or nin list is parenthesized and
//     comma separated; an item in double quotes may hold commas ("c,d"),
//     and inside quotes a backslash takes the next character as is (\" \\).
//     A column given twice ANDs both conditions (total=gte.10&total=lt.100);
//     one operator twice on one column is an error.
//
// Values stay strings, as in the JSON protocol's "where"; the filter
// compiler converts them by the column's type. A column named "or" is a
// column here (its condition is an object, not an array of groups); URLs
// cannot express "or" groups. A column whose name is a reserved parameter
// (events, select, from, token) cannot be filtered in the URL; subscribe
// with a message for that.
//
// The subscription made from a URL has the id URLSubscriptionID.

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
	// Where is the filter as a JSON "where" object, the same shape the
	// JSON protocol takes, columns in name order; nil when the URL has no
	// filter parameter.
	Where json.RawMessage
}

// filterOps are the operators of a filter condition.
var filterOps = []string{"eq", "neq", "lt", "lte", "gt", "gte", "in", "nin", "is"}

// Query parameters with a meaning of their own; all others are filters.
const (
	paramEvents = "events"
	paramSelect = "select"
	paramFrom   = "from"
	paramToken  = "token"
)

// ParseURLSubscription reads a URL subscription. path is the request's
// escaped path (r.URL.EscapedPath()), URLSubscriptionPrefix followed by the
// percent-encoded "[db.]schema.table" as one segment; query is the parsed query
// (r.URL.Query()). A bad path or reserved parameter is
// CodeInvalidSubscription, a bad select CodeInvalidSelect, a bad filter
// parameter CodeInvalidFilter; the gateway closes such a connection with
// CloseBadRequest and the error's message as reason.
func ParseURLSubscription(path string, query url.Values) (URLSubscription, *ProtocolError) {
	var sub URLSubscription
	fail := func(code ErrorCode, msg string) (URLSubscription, *ProtocolError) {
		return URLSubscription{}, &ProtocolError{Code: code, ID: URLSubscriptionID, Message: msg}
	}

	seg, ok := strings.CutPrefix(path, URLSubscriptionPrefix)
	if !ok || seg == "" || strings.Contains(seg, "/") {
		return fail(CodeInvalidSubscription, "path "+quoteShort(path)+": want "+URLSubscriptionPrefix+"schema.table")
	}
	table, err := url.PathUnescape(seg)
	if err != nil {
		return fail(CodeInvalidSubscription, "path "+quoteShort(path)+": bad percent-encoding")
	}
	if msg := checkTableName(table); msg != "" {
		return fail(CodeInvalidSubscription, msg)
	}
	sub.Table = table

	single := func(name string) (string, bool, *ProtocolError) {
		vs, ok := query[name]
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
			return fail(CodeInvalidSubscription, "parameter \"from\" must be a non-negative integer, not "+quoteShort(v))
		}
		sub.From = &n
	}

	var cols []string
	for name := range query {
		switch name {
		case paramEvents, paramSelect, paramFrom, paramToken:
		default:
			cols = append(cols, name)
		}
	}
	if len(cols) == 0 {
		return sub, nil
	}
	slices.Sort(cols)
	where := []byte{'{'}
	for i, col := range cols {
		if col == "" {
			return fail(CodeInvalidFilter, "filter parameter without a column name")
		}
		if i > 0 {
			where = append(where, ',')
		}
		where = jsonx.AppendString(where, col)
		where = append(where, ':', '{')
		var seen []string
		for j, v := range query[col] {
			op, value, msg := parseURLCondition(col, v)
			if msg != "" {
				return fail(CodeInvalidFilter, msg)
			}
			if containsString(seen, op) {
				return fail(CodeInvalidFilter, "column "+quoteShort(col)+" has two "+strconv.Quote(op)+" conditions")
			}
			seen = append(seen, op)
			if j > 0 {
				where = append(where, ',')
			}
			where = jsonx.AppendString(where, op)
			where = append(where, ':')
			if op == "in" || op == "nin" {
				items, msg := parseInList(value)
				if msg != "" {
					return fail(CodeInvalidFilter, "filter "+quoteShort(col+"="+v)+": "+msg)
				}
				where = appendStringArray(where, items)
			} else {
				where = jsonx.AppendString(where, value)
			}
		}
		where = append(where, '}')
	}
	sub.Where = append(where, '}')
	return sub, nil
}

// parseURLCondition splits one filter parameter value, operator.value.
func parseURLCondition(col, v string) (op, value, msg string) {
	f := "filter " + quoteShort(col+"="+v)
	op, value, ok := strings.Cut(v, ".")
	if !slices.Contains(filterOps, op) {
		if !ok {
			example := v
			if example == "" {
				example = "value"
			}
			return "", "", f + ": want operator.value, e.g. " + quoteShort(col+"=eq."+example)
		}
		return "", "", f + ": unknown operator " + quoteShort(op) +
			" (want eq, neq, lt, lte, gt, gte, in, nin or is)"
	}
	if !ok {
		return "", "", f + ": no value after the operator (want " + op + ".value)"
	}
	return op, value, ""
}

// parseInList reads an in-list, "(a,b,\"c,d\")", into its items. A list
// needs at least one item, as in the JSON protocol; "(,)" has two empty ones.
func parseInList(v string) (items []string, msg string) {
	if len(v) < 2 || v[0] != '(' || v[len(v)-1] != ')' {
		return nil, "want a list in parentheses, e.g. in.(1,2,3)"
	}
	rest := v[1 : len(v)-1]
	if rest == "" {
		return nil, "the list is empty (want at least one item)"
	}
	for {
		var item string
		if rest != "" && rest[0] == '"' {
			var b strings.Builder
			i := 1
			for ; i < len(rest) && rest[i] != '"'; i++ {
				if rest[i] == '\\' && i+1 < len(rest) {
					i++
				}
				b.WriteByte(rest[i])
			}
			if i >= len(rest) {
				return nil, "unterminated quote in the list"
			}
			item, rest = b.String(), rest[i+1:]
			if rest != "" && rest[0] != ',' {
				return nil, "want ',' after a quoted item"
			}
		} else {
			end := strings.IndexByte(rest, ',')
			if end < 0 {
				end = len(rest)
			}
			item, rest = rest[:end], rest[end:]
			if strings.Contains(item, `"`) {
				return nil, `a quote inside an unquoted item (quote the whole item: "a,b")`
			}
		}
		items = append(items, item)
		if rest == "" {
			return items, ""
		}
		rest = rest[1:] // the comma
	}
}
