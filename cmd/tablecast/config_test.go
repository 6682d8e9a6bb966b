package main

import (
	"os"
	"strconv"
	"strings"
	"testing"
)

// TestLoadConfigNamesEveryProblem checks that each bad value is refused
// with its variable and a reason in the user's words, never silently
// replaced by a default and never in envconfig's terms.
func TestLoadConfigNamesEveryProblem(t *testing.T) {
	for _, kv := range os.Environ() {
		if k, _, _ := strings.Cut(kv, "="); strings.HasPrefix(k, envPrefix+"_") {
			t.Setenv(k, "") // restored after the test
			os.Unsetenv(k)
		}
	}
	tests := []struct {
		env  map[string]string
		want []string // every one must appear
	}{
		{map[string]string{"TABLECAST_MAX_IN_FLIGHT": "100000"}, []string{"TABLECAST_MAX_IN_FLIGHT 100000: must be between 1 and 65536"}},
		{map[string]string{"TABLECAST_MAX_IN_FLIGHT": "0"}, []string{"TABLECAST_MAX_IN_FLIGHT 0: must be between 1 and 65536"}},
		{map[string]string{"TABLECAST_MAX_IN_FLIGHT": "-5"}, []string{"TABLECAST_MAX_IN_FLIGHT -5: must be between 1 and 65536"}},
		{map[string]string{"TABLECAST_MAX_IN_FLIGHT": "lots"}, []string{`TABLECAST_MAX_IN_FLIGHT "lots": not a whole number`}},
		{map[string]string{"TABLECAST_STREAM_MAX_BYTES": "99999999999999999999"}, []string{`TABLECAST_STREAM_MAX_BYTES "99999999999999999999": out of range`}},
		{map[string]string{"TABLECAST_STALL_AFTER": "10"}, []string{`TABLECAST_STALL_AFTER "10": not a duration: write a number with a unit`}},
		{map[string]string{"TABLECAST_PPROF": "yes please"}, []string{`TABLECAST_PPROF "yes please": want true or false`}},
		// Every syntax problem at once, not only the first.
		{map[string]string{"TABLECAST_STALL_AFTER": "soon", "TABLECAST_WS_READ_TIMEOUT": "1 minute", "TABLECAST_STREAM_REPLICAS": "three"},
			[]string{"TABLECAST_STALL_AFTER", "TABLECAST_WS_READ_TIMEOUT", "TABLECAST_STREAM_REPLICAS"}},
		// A value that does not parse hides none of the other checks.
		{map[string]string{"TABLECAST_STALL_AFTER": "10", "TABLECAST_LEADER_LEASE": "500ms", "TABLECAST_NATS_URL": "foo://x", "TABLECAST_MAX_IN_FLIGHT": "-1"},
			[]string{`TABLECAST_STALL_AFTER "10": not a duration`, "TABLECAST_LEADER_LEASE 500ms: must be at least 1s", `TABLECAST_NATS_URL: server 1 "foo://x"`,
				"TABLECAST_MAX_IN_FLIGHT -1: must be between 1 and 65536"}},
		{map[string]string{"TABLECAST_STALL_AFTER": "0s"}, []string{"TABLECAST_STALL_AFTER 0s: must be positive"}},
		{map[string]string{"TABLECAST_STALL_LAG_BYTES": "-1"}, []string{"TABLECAST_STALL_LAG_BYTES -1: must be positive"}},
		{map[string]string{"TABLECAST_HEARTBEAT_INTERVAL": "-10s"}, []string{"TABLECAST_HEARTBEAT_INTERVAL -10s: must be positive, or 0"}},
		{map[string]string{"TABLECAST_LEADER_LEASE": "500ms"}, []string{"TABLECAST_LEADER_LEASE 500ms: must be at least 1s"}},
		{map[string]string{"TABLECAST_LEADER_LEASE": "briefly"}, []string{`TABLECAST_LEADER_LEASE "briefly": not a duration`}},
		{map[string]string{"TABLECAST_STREAM_MAX_AGE": "-1h"}, []string{"TABLECAST_STREAM_MAX_AGE -1h0m0s: must be positive"}},
		{map[string]string{"TABLECAST_STREAM_MAX_BYTES": "0"}, []string{"TABLECAST_STREAM_MAX_BYTES 0: must be positive"}},
		{map[string]string{"TABLECAST_STREAM_REPLICAS": "7"}, []string{"TABLECAST_STREAM_REPLICAS 7: must be between 1 and 5"}},
		{map[string]string{"TABLECAST_DUPLICATE_WINDOW": "10ms"}, []string{"TABLECAST_DUPLICATE_WINDOW 10ms: must be at least 100ms"}},
		{map[string]string{"TABLECAST_DUPLICATE_WINDOW": "2h", "TABLECAST_STREAM_MAX_AGE": "1h"}, []string{"must not exceed TABLECAST_STREAM_MAX_AGE"}},
		{map[string]string{"TABLECAST_DATABASE_URL": "postgre://app:s3cret@db.example/shop"}, []string{`TABLECAST_DATABASE_URL: scheme "postgre" is not postgres:// or postgresql://`}},
		{map[string]string{"TABLECAST_DATABASE_URL": "postgres://app:s3cret@db.example:99999/shop"}, []string{"TABLECAST_DATABASE_URL: not a PostgreSQL connection string", "invalid port"}},
		{map[string]string{"TABLECAST_ADMIN_ADDR": "8091"}, []string{`TABLECAST_ADMIN_ADDR "8091": want host:port (127.0.0.1:8091), or off`}},
		{map[string]string{"TABLECAST_ADMIN_ADDR": "127.0.0.1:8080"}, []string{"TABLECAST_ADMIN_ADDR 127.0.0.1:8080 is TABLECAST_HTTP_ADDR too"}},
		{map[string]string{"TABLECAST_ADMIN_URL": "ftp://admin.example.com"}, []string{`TABLECAST_ADMIN_URL "ftp://admin.example.com": want http://host:port or https://host:port`}},
		{map[string]string{"TABLECAST_DATABASE_URL": "host=db password=s3cret port=five"}, []string{"TABLECAST_DATABASE_URL: not a PostgreSQL connection string"}},
		{map[string]string{"TABLECAST_WEBHOOK_ALLOW_NETS": "10.0.0.0/8,intranet"}, []string{`TABLECAST_WEBHOOK_ALLOW_NETS "intranet": want a network such as 10.0.0.0/8`}},
		{map[string]string{"TABLECAST_WEBHOOK_ALLOW_NETS": "10.0.0.0/33"}, []string{`TABLECAST_WEBHOOK_ALLOW_NETS "10.0.0.0/33"`}},
		{map[string]string{"TABLECAST_ROW_STATE_TABLES": "public.orders,a.b.c.d"}, []string{"TABLECAST_ROW_STATE_TABLES"}},
		{map[string]string{"TABLECAST_ROW_STATE": "sometimes"}, []string{"TABLECAST_ROW_STATE"}},
		{map[string]string{"TABLECAST_OLD_ROWS_TABLES": "public.docs"}, []string{"TABLECAST_OLD_ROWS_TABLES: old rows are read from the row state: set TABLECAST_ROW_STATE=true"}},
		{map[string]string{"TABLECAST_ROW_STATE": "true", "TABLECAST_ROW_STATE_TABLES": "public.orders,app.*", "TABLECAST_OLD_ROWS_TABLES": "public.orders,app.items,public.*,*"},
			[]string{`TABLECAST_OLD_ROWS_TABLES: "public.*": its rows are not kept in the row state (TABLECAST_ROW_STATE_TABLES "public.orders,app.*")`,
				`TABLECAST_OLD_ROWS_TABLES: "*": its rows are not kept`}},
		{map[string]string{"TABLECAST_ROW_STATE": "true", "TABLECAST_OLD_ROWS_TABLES": "a.b.c"}, []string{"TABLECAST_OLD_ROWS_TABLES"}},
		{map[string]string{"TABLECAST_OLD_ROWS_CACHE_BYTES": "0"}, []string{"TABLECAST_OLD_ROWS_CACHE_BYTES 0: must be positive"}},
		{map[string]string{"TABLECAST_TX_MARKERS": "sometimes"}, []string{"TABLECAST_TX_MARKERS"}},
		{map[string]string{"TABLECAST_SCHED_BATCH": "maybe"}, []string{`TABLECAST_SCHED_BATCH "maybe": want true or false`}},
		{map[string]string{"TABLECAST_WS_BATCH_EVENTS": "0", "TABLECAST_WS_BATCH_BYTES": "-1"}, []string{"TABLECAST_WS_BATCH_EVENTS 0: must be positive", "TABLECAST_WS_BATCH_BYTES -1: must be positive"}},
		// The reader's own settings, with the rest, each named once.
		{map[string]string{"TABLECAST_SLOT": "Bad-Slot", "TABLECAST_SNAPSHOT": "sometimes", "TABLECAST_TABLES": "public.", "TABLECAST_STALL_AFTER": "0s"},
			[]string{`TABLECAST_SLOT: "Bad-Slot": a slot name is 1-63 characters`, `TABLECAST_SNAPSHOT: "sometimes": want initial or never`,
				`TABLECAST_TABLES: table "public.": want schema.table`, "TABLECAST_STALL_AFTER 0s"}},
		{map[string]string{"TABLECAST_TABLES": "*,public.orders", "TABLECAST_PUBLICATION": strings.Repeat("p", 64)},
			[]string{`TABLECAST_TABLES: "*" cannot be combined`, "TABLECAST_PUBLICATION: \"ppp"}},
		{map[string]string{"TABLECAST_NATS_URL": `"nats://app:s3cret@nats.example:4222"`}, []string{`TABLECAST_NATS_URL: server 1 "…@nats.example:4222\"": want nats://host:port`}},
		{map[string]string{"TABLECAST_NATS_URL": "nats://a.example:4222, http://b.example:80"}, []string{`TABLECAST_NATS_URL: server 2 "http://b.example:80"`}},
		// Servers the client could never dial, which it would retry as if down.
		{map[string]string{"TABLECAST_NATS_URL": "nats://127.0.0.1:99999,nats://:::,-1,nats://a..b:4222,nats://h:0"},
			[]string{`server 1 "nats://127.0.0.1:99999": want nats://host:port`, `server 2 "nats://:::"`, `server 3 "-1"`, `server 4 "nats://a..b:4222"`, `server 5 "nats://h:0"`}},
		{map[string]string{"TABLECAST_NATS_LISTEN": "127.0.0.1:8080"}, []string{"TABLECAST_NATS_LISTEN 127.0.0.1:8080 and TABLECAST_HTTP_ADDR 127.0.0.1:8080 take the same port"}},
		{map[string]string{"TABLECAST_NATS_LISTEN": "0.0.0.0:8091", "TABLECAST_NATS_TOKEN": "t"}, []string{"TABLECAST_NATS_LISTEN 0.0.0.0:8091 and TABLECAST_ADMIN_ADDR 127.0.0.1:8091 take the same port"}},
		{map[string]string{"TABLECAST_STREAM": "A.B"}, []string{`TABLECAST_STREAM "A.B": want a JetStream stream name`}},
		{map[string]string{"TABLECAST_STREAM": ""}, []string{`TABLECAST_STREAM "": want a JetStream stream name`}},
		{map[string]string{"TABLECAST_STREAM": "x%zz"}, []string{`TABLECAST_STREAM "x%zz": want a JetStream stream name of letters, digits, '_' and '-'`}},
	}
	for _, tt := range tests {
		var name []string
		for k, v := range tt.env {
			name = append(name, k+"="+v)
		}
		t.Run(strings.Join(name, ","), func(t *testing.T) {
			for k, v := range tt.env {
				t.Setenv(k, v)
			}
			_, err := loadConfig()
			if err == nil {
				t.Fatalf("accepted; want an error containing %q", tt.want)
			}
			msg := err.Error()
			for _, w := range tt.want {
				if !strings.Contains(msg, w) {
					t.Errorf("error %q does not contain %q", msg, w)
				}
			}
			for _, bad := range []string{"envconfig", "s3cret", "time.Duration", "converting"} {
				if strings.Contains(msg, bad) {
					t.Errorf("error %q shows %q", msg, bad)
				}
			}
			if n := strings.Count(msg, "TABLECAST_LEADER_LEASE"); n > 1 {
				t.Errorf("error %q names TABLECAST_LEADER_LEASE %d times", msg, n)
			}
		})
	}

	t.Run("defaults are valid", func(t *testing.T) {
		if _, err := loadConfig(); err != nil {
			t.Fatalf("the defaults are refused: %v", err)
		}
	})
	t.Run("NATS URLs as the client reads them", func(t *testing.T) {
		t.Setenv("TABLECAST_NATS_URL", "nats://app:pw@a.example:4222, tls://b.example,c.example:4222,ws://d.example:8080,nats://[::1]:4222,nats://[fe80::1%25eth0]:4222,nats-1,tls://nats_2.example.com.:4443")
		if _, err := loadConfig(); err != nil {
			t.Fatal(err)
		}
	})
	t.Run("good values are kept", func(t *testing.T) {
		t.Setenv("TABLECAST_MAX_IN_FLIGHT", "65536")
		t.Setenv("TABLECAST_DATABASE_URL", "postgresql://app@db.example/shop?sslmode=disable")
		t.Setenv("TABLECAST_HEARTBEAT_INTERVAL", "0")
		t.Setenv("TABLECAST_ADMIN_ADDR", "off")
		c, err := loadConfig()
		if err != nil {
			t.Fatal(err)
		}
		if c.MaxInFlight != 65536 || c.Heartbeat != 0 || c.adminEnabled() {
			t.Fatalf("got MaxInFlight %d, Heartbeat %s, admin API on %v", c.MaxInFlight, c.Heartbeat, c.adminEnabled())
		}
	})
	t.Run("old rows within the row state", func(t *testing.T) {
		t.Setenv("TABLECAST_ROW_STATE", "true")
		t.Setenv("TABLECAST_ROW_STATE_TABLES", "public.*,app.orders")
		t.Setenv("TABLECAST_OLD_ROWS_TABLES", "public.docs,public.*,app.orders")
		c, err := loadConfig()
		if err != nil {
			t.Fatal(err)
		}
		if cc := c.cdcConfig(); len(cc.OldRows) != 3 || cc.OldRowsCacheBytes != 64<<20 {
			t.Fatalf("got old rows %q, cache %d bytes", cc.OldRows, cc.OldRowsCacheBytes)
		}
	})
}

// TestSmallStoreDefaultStreamSize: a store under 256 MiB with the stream's
// size left unset starts: the stream gets what the store has beyond the
// buckets' 64 MiB. Three quarters of 150 MB did not fit beside them, and
// the start failed on a variable nobody had set.
func TestSmallStoreDefaultStreamSize(t *testing.T) {
	for _, kv := range os.Environ() {
		if k, _, _ := strings.Cut(kv, "="); strings.HasPrefix(k, envPrefix+"_") {
			t.Setenv(k, "")
			os.Unsetenv(k)
		}
	}
	for store, want := range map[int64]int64{
		150_000_000: 150_000_000 - storeReserve,
		minMaxStore: minMaxStore - storeReserve,
		1 << 30:     3 << 28,
		8 << 30:     6 << 30,
	} {
		t.Setenv("TABLECAST_NATS_MAX_STORE", strconv.FormatInt(store, 10))
		c, err := loadConfig()
		if err != nil {
			t.Errorf("store %d: %v", store, err)
			continue
		}
		if c.StreamMaxBytes != want {
			t.Errorf("store %d: stream size %d, want %d", store, c.StreamMaxBytes, want)
		}
	}
}
