package schema

import (
	"reflect"
	"testing"
)

func TestOpSet(t *testing.T) {
	if got := AllOps.Names(); !reflect.DeepEqual(got, []string{OpCreate, OpUpdate, OpDelete, OpTruncate, OpRead}) {
		t.Fatalf("AllOps = %v", got)
	}
	s := OpBit(OpDelete) | OpBit(OpRead)
	if !s.Has(OpDelete) || s.Has(OpCreate) || s.Has("bogus") || OpSet(0).Names() != nil {
		t.Fatal("OpSet")
	}
}

func TestOpsOf(t *testing.T) {
	cases := []struct {
		names []string
		want  OpSet
	}{
		{nil, AllOps},
		{[]string{}, 0},
		{[]string{OpUpdate, OpTruncate, OpUpdate}, BitUpdate | BitTruncate},
		{[]string{"insert"}, 0},
	}
	for _, tc := range cases {
		if got := OpsOf(tc.names); got != tc.want {
			t.Errorf("OpsOf(%q) = %05b, want %05b", tc.names, got, tc.want)
		}
	}
}
