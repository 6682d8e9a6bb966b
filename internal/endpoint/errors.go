package endpoint

import (
	"errors"
	"fmt"
	"strings"
)

// Errors the store returns, for callers to act on (errors.Is).
var (
	// ErrNotFound: no endpoint with that id (or name), no filter or rule
	// with that name.
	ErrNotFound = errors.New("not found")
	// ErrConflict: the revision named is not the current one (someone
	// changed it meanwhile), or a concurrent change got in the way.
	ErrConflict = errors.New("changed meanwhile")
	// ErrNameTaken: another endpoint (filter, rule) has that name.
	ErrNameTaken = errors.New("name taken")
	// ErrGapKnown: a retention gap at the endpoint's start was not
	// recorded, since the endpoint has retention gaps already (another
	// process found the same one first).
	ErrGapKnown = errors.New("retention gaps recorded already")
)

// FieldError is one problem with one field of an endpoint, filter or
// rule. Field is the member's path in the JSON ("webhook.timeout",
// "filters[2]", "webhook.headers.Host").
type FieldError struct {
	Field   string `json:"field"`
	Problem string `json:"problem"`
}

// ValidationError is every problem found with an endpoint, filter or rule
// at once. Nothing was written.
type ValidationError struct {
	Fields []FieldError
}

func (e *ValidationError) Error() string {
	var b strings.Builder
	b.WriteString("invalid: ")
	for i, f := range e.Fields {
		if i > 0 {
			b.WriteString("; ")
		}
		if f.Field != "" {
			b.WriteString(f.Field)
			b.WriteString(": ")
		}
		b.WriteString(f.Problem)
	}
	return b.String()
}

// LinkedError is the refusal to delete a filter or rule that endpoints are
// still linked to (without force): it names them. errors.Is(err,
// ErrConflict) holds.
type LinkedError struct {
	Kind      string   // "filter" or "rule"
	Name      string   // the filter's or rule's name
	Endpoints []string // the names of the endpoints linked to it, sorted
	IDs       []string // their ids, in the same order
}

func (e *LinkedError) Error() string {
	return fmt.Sprintf("%s %q is linked to endpoint(s) %s: unlink it first, or delete with force", e.Kind, e.Name, strings.Join(e.Endpoints, ", "))
}

func (e *LinkedError) Is(target error) bool { return target == ErrConflict }

// fieldErrors gathers problems in the order they are found.
type fieldErrors []FieldError

func (f *fieldErrors) add(field, format string, args ...any) {
	*f = append(*f, FieldError{Field: field, Problem: fmt.Sprintf(format, args...)})
}

func (f fieldErrors) err() error {
	if len(f) == 0 {
		return nil
	}
	return &ValidationError{Fields: f}
}

// Fields returns the field errors of err, nil when it is not a
// *ValidationError.
func Fields(err error) []FieldError {
	var ve *ValidationError
	if errors.As(err, &ve) {
		return ve.Fields
	}
	return nil
}
