package query

import (
	"slices"
	"strconv"
	"strings"
	"unicode/utf8"

	"github.com/tablecast/tablecast/internal/jsonx"
	"github.com/tablecast/tablecast/schema"
)

// The URL form of a where: each query parameter names a column, each of
// its values is operator.value:
//
//	status=eq.paid&total=gte.10&deleted_at=is.null&id=in.(1,2,3)
//
// The operators are those of a where object (eq neq lt lte gt gte in nin
// is). An in or nin list is parenthesized and comma separated; an item in
// double quotes may hold commas ("c,d"), and inside quotes a backslash
// takes the next character as is (\" \\). A column given twice ANDs both
// conditions (total=gte.10&total=lt.100); one operator twice on one column
// is an error. Values stay strings, as a where object may write them;
// Compile converts them by the column's type. A column named "or" is a
// column here: URLs cannot express "or" groups.

// ParseURLWhere reads the filter parameters of a URL, parameter name →
// values (the URL's other parameters taken out), into a Where whose terms
// are the columns in name order; nil when there are none. A malformed
// parameter is a *FilterError that names it.
func ParseURLWhere(params map[string][]string) (*Where, error) {
	if len(params) == 0 {
		return nil, nil
	}
	cols := make([]string, 0, len(params))
	for name := range params {
		cols = append(cols, name)
	}
	slices.Sort(cols)
	w := &Where{Terms: make([]Term, 0, len(cols))}
	for _, col := range cols {
		if col == "" {
			return nil, filterErrorf("filter parameter without a column name")
		}
		t := Term{Column: col}
		if !utf8.ValidString(col) {
			// As the JSON form spells it: each invalid byte is U+FFFD.
			enc := jsonx.AppendString(nil, col)
			t.Column = jsonx.DecodeString(enc[1 : len(enc)-1])
		}
		for _, v := range params[col] {
			op, value, msg := parseURLCondition(col, v)
			if msg != "" {
				return nil, &FilterError{Message: msg}
			}
			if slices.ContainsFunc(t.Ops, func(o Operator) bool { return o.Name == op }) {
				return nil, &FilterError{Message: "column " + schema.QuoteName(col) + " has two " + strconv.Quote(op) + " conditions"}
			}
			var operand []byte
			if op == "in" || op == "nin" {
				items, msg := parseInList(value)
				if msg != "" {
					return nil, &FilterError{Message: "filter " + schema.QuoteName(col+"="+v) + ": " + msg}
				}
				operand = append(operand, '[')
				for i, s := range items {
					if i > 0 {
						operand = append(operand, ',')
					}
					operand = jsonx.AppendString(operand, s)
				}
				operand = append(operand, ']')
			} else {
				operand = jsonx.AppendString(nil, value)
			}
			t.Ops = append(t.Ops, Operator{Name: op, Value: operand})
		}
		w.Terms = append(w.Terms, t)
	}
	return w, nil
}

// parseURLCondition splits one filter parameter value, operator.value; msg
// says what is wrong with it.
func parseURLCondition(col, v string) (op, value, msg string) {
	f := "filter " + schema.QuoteName(col+"="+v)
	op, value, ok := strings.Cut(v, ".")
	if !IsOperator(op) {
		if !ok {
			example := v
			if example == "" {
				example = "value"
			}
			return "", "", f + ": want operator.value, e.g. " + schema.QuoteName(col+"=eq."+example)
		}
		return "", "", f + ": unknown operator " + schema.QuoteName(op) + " (want " + operatorList + ")"
	}
	if !ok {
		return "", "", f + ": no value after the operator (want " + op + ".value)"
	}
	return op, value, ""
}

// parseInList reads an in-list, "(a,b,\"c,d\")", into its items. A list
// needs at least one item, as in a where object; "(,)" has two empty ones.
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
