package schema

import "testing"

func TestShapeOf(t *testing.T) {
	tbl := &Table{Schema: "public", Name: "orders", ReplicaIdentity: 'f', Columns: []Column{
		{Name: "id", TypeOID: 20, Key: true},
		{Name: "amount", TypeOID: 16500, ValueOID: 1700}, // a domain over numeric
	}}
	names := map[uint32]string{20: "int8", 16500: "public.money_amount"}
	s := ShapeOf("shop", tbl, func(oid uint32) string { return names[oid] })
	if s.ReplicaIdentity != "full" || s.Columns[0].Type != "int8" || !s.Columns[0].Key || s.Columns[1].ValueOID != 1700 || s.Columns[1].Type != "public.money_amount" {
		t.Fatalf("ShapeOf = %+v", s)
	}
	same := ShapeOf("shop", tbl, nil)
	same.Version, same.LSN = 7, "0/1"
	if !s.SameAs(same) {
		t.Error("shapes differing only in type names, version and LSN are not the same")
	}
	for name, change := range map[string]func(*Shape){
		"renamed column":   func(o *Shape) { o.Columns[1].Name = "total" },
		"retyped column":   func(o *Shape) { o.Columns[1].TypeOID = 1700 },
		"key changed":      func(o *Shape) { o.Columns[1].Key = true },
		"identity changed": func(o *Shape) { o.ReplicaIdentity = "default" },
		"column dropped":   func(o *Shape) { o.Columns = o.Columns[:1] },
	} {
		o := ShapeOf("shop", tbl, nil)
		o.Columns = append([]ShapeColumn(nil), o.Columns...)
		change(&o)
		if s.SameAs(o) {
			t.Errorf("%s: still the same shape", name)
		}
	}
}
