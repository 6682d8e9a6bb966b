package query

import "strings"

// op is a compiled operator.
type op uint8

const (
	opEq op = iota
	opNeq
	opLt
	opLte
	opGt
	opGte
	opIn
	opNin
	opIsNull
	opNotNull
	opIsTrue
	opIsFalse
	opIs // "is", before Compile reads its operand
)

// operators is the where language's one table of operators, in the order
// messages list them. "is" compiles to opIsNull … opIsFalse by its operand.
var operators = [...]struct {
	name string
	op   op
}{
	{"eq", opEq}, {"neq", opNeq}, {"lt", opLt}, {"lte", opLte}, {"gt", opGt}, {"gte", opGte},
	{"in", opIn}, {"nin", opNin}, {"is", opIs},
}

// operatorOf returns the operator named name.
func operatorOf(name string) (op, bool) {
	for _, o := range operators {
		if o.name == name {
			return o.op, true
		}
	}
	return 0, false
}

// IsOperator reports whether name is an operator of the where language.
func IsOperator(name string) bool {
	_, ok := operatorOf(name)
	return ok
}

// operatorList names the operators for messages: "eq, neq, …, nin or is".
var operatorList = func() string {
	names := make([]string, len(operators))
	for i, o := range operators {
		names[i] = o.name
	}
	return strings.Join(names[:len(names)-1], ", ") + " or " + names[len(names)-1]
}()
