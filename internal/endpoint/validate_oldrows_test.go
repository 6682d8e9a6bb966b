package endpoint

import (
	"encoding/json"
	"errors"
	"strings"
	"testing"

	"github.com/tablecast/tablecast/internal/catalog"
	"github.com/tablecast/tablecast/schema"
)

type tableList []*catalog.Table

func (l tableList) Tables() []*catalog.Table { return l }

// TestRuleOnOldRows: a rule reading the old row (old conditions, changed
// columns outside the key) is refused on a table under the default replica
// identity, naming the ALTER TABLE that allows it, and accepted on one
// whose events the reader completes with old rows from the row state.
func TestRuleOnOldRows(t *testing.T) {
	table := func(oldRows bool) tableList {
		return tableList{catalog.NewTable("tablecast", schema.Shape{DB: "app", Schema: "public", Table: "orders", Version: 1,
			ReplicaIdentity: "default", OldRows: oldRows, Columns: []schema.ShapeColumn{
				{Name: "id", Type: "integer", TypeOID: 23, Key: true, Identity: true},
				{Name: "status", Type: "text", TypeOID: 25},
			}})}
	}
	rule := func() *Rule {
		return &Rule{Name: "paid", Table: "public.orders", Changed: []string{"status"},
			Old: json.RawMessage(`{"status":{"eq":"open"}}`), New: json.RawMessage(`{"status":{"eq":"paid"}}`)}
	}
	r := rule()
	r.ApplyDefaults()
	err := r.Validate(table(false))
	var ve *ValidationError
	if !errors.As(err, &ve) || !strings.Contains(err.Error(), `ALTER TABLE "public"."orders" REPLICA IDENTITY FULL`) {
		t.Fatalf("default replica identity without old rows: %v, want a refusal naming the ALTER TABLE", err)
	}
	r = rule()
	r.ApplyDefaults()
	if err := r.Validate(table(true)); err != nil {
		t.Fatalf("default replica identity with old rows: %v, want the rule accepted", err)
	}
}
