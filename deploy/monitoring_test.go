package deploy

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"os"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/prometheus/common/model"
	"github.com/prometheus/prometheus/model/labels"
	"github.com/prometheus/prometheus/model/rulefmt"
	"github.com/prometheus/prometheus/promql/parser"
)

// scrape is what a /metrics answer holds: each series name with the
// label names it carries.
type scrape map[string]map[string]bool

func parseScrape(body string) scrape {
	s := scrape{}
	sc := bufio.NewScanner(strings.NewReader(body))
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		l := sc.Text()
		if l == "" || strings.HasPrefix(l, "#") {
			continue
		}
		name, rest, _ := strings.Cut(l, "{")
		if i := strings.IndexByte(name, ' '); i >= 0 {
			name, rest = name[:i], ""
		}
		if s[name] == nil {
			s[name] = map[string]bool{}
		}
		for _, m := range regexp.MustCompile(`([a-zA-Z_][a-zA-Z0-9_]*)="`).FindAllStringSubmatch(rest, -1) {
			s[name][m[1]] = true
		}
	}
	return s
}

// scrapeRun scrapes /metrics of a real `tablecast run` once it has
// published an event, dead-lettered one too large for
// TABLECAST_MAX_EVENT_BYTES and answered a WebSocket client an error, so
// that the metrics with labels (which appear once counted) are there too.
func scrapeRun(t *testing.T) scrape {
	t.Helper()
	bin := tablecastBinary(t)
	c := pgRequire(t)
	_, url := c.CreateDatabase(t)
	c.Exec(t, url, `CREATE TABLE items (id int PRIMARY KEY, body text)`)
	slot := "tc_metrics_" + strconv.Itoa(os.Getpid())
	dropSlotAtCleanup(t, url, slot)
	addr := freeAddr(t)
	env := append(systemEnv(), "TABLECAST_DATABASE_URL="+url, "TABLECAST_SLOT="+slot, "TABLECAST_HTTP_ADDR="+addr,
		"TABLECAST_NATS_LISTEN="+freeAddr(t), "TABLECAST_DATA_DIR="+t.TempDir(), "TABLECAST_MAX_EVENT_BYTES=65536")
	start(t, env, bin, "run")
	waitFor(t, 2*time.Minute, "tablecast run to be ready", func() bool {
		code, _, err := httpGet("http://" + addr + "/readyz")
		return err == nil && code == 200
	})
	c.Exec(t, url, `INSERT INTO items VALUES (1, 'small'), (2, repeat('x', 100000))`)

	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	ws, _, err := websocket.Dial(ctx, "ws://"+addr+"/ws", nil)
	if err != nil {
		t.Fatal(err)
	}
	defer ws.CloseNow()
	if err := ws.Write(ctx, websocket.MessageText, []byte(`{"type":"subscribe","id":"x","table":"public.no_such_table"}`)); err != nil {
		t.Fatal(err)
	}
	if _, b, err := ws.Read(ctx); err != nil || !bytes.Contains(b, []byte(`"error"`)) {
		t.Fatalf("subscribing to a missing table answered %s, %v", b, err)
	}

	var s scrape
	waitFor(t, time.Minute, "the events and the error frame in /metrics", func() bool {
		_, body, err := httpGet("http://" + addr + "/metrics")
		s = parseScrape(body)
		return err == nil && s["tablecast_cdc_oversize_events_total"] != nil && s["tablecast_gateway_error_frames_total"] != nil
	})
	return s
}

// promParser parses PromQL as Prometheus does.
var promParser = parser.NewParser(parser.Options{})

// selectors returns the metric names an expression reads, with the label
// names each of its selectors matches on.
func selectors(t *testing.T, where, expr string) map[string][]string {
	t.Helper()
	e, err := promParser.ParseExpr(expr)
	if err != nil {
		t.Errorf("%s: %q is not PromQL: %v", where, expr, err)
		return nil
	}
	out := map[string][]string{}
	parser.Inspect(e, func(n parser.Node, _ []parser.Node) error {
		vs, ok := n.(*parser.VectorSelector)
		if !ok {
			return nil
		}
		name := vs.Name
		var matched []string
		for _, m := range vs.LabelMatchers {
			switch {
			case m.Name == labels.MetricName && m.Type == labels.MatchEqual:
				name = m.Value
			case m.Name != labels.MetricName:
				matched = append(matched, m.Name)
			}
		}
		if name == "" {
			t.Errorf("%s: %q selects series without naming a metric", where, expr)
			return nil
		}
		out[name] = append(out[name], matched...)
		return nil
	})
	return out
}

// checkMetrics fails t for every metric expr reads that the scrape lacks,
// and every label it matches on that the metric does not carry (instance
// and job are Prometheus's own).
func checkMetrics(t *testing.T, s scrape, where, expr string) {
	t.Helper()
	for name, matched := range selectors(t, where, expr) {
		have, ok := s[name]
		if !ok {
			t.Errorf("%s reads %s, which /metrics of tablecast run does not expose", where, name)
			continue
		}
		for _, l := range matched {
			if l != "instance" && l != "job" && !have[l] {
				t.Errorf("%s matches %s on label %s, which it does not carry", where, name, l)
			}
		}
	}
}

// TestMonitoring checks deploy/prometheus/alerts.yaml with Prometheus's own
// rule parser (PromQL, durations, templates of the annotations, unknown
// fields refused) and deploy/grafana/tablecast.json against the shape of a
// Grafana dashboard, and requires every metric either reads, and every
// label it matches on, in a real scrape of `tablecast run`.
func TestMonitoring(t *testing.T) {
	s := scrapeRun(t)

	t.Run("alerts", func(t *testing.T) {
		groups, errs := rulefmt.ParseFile("prometheus/alerts.yaml", false, model.UTF8Validation, promParser, slog.New(slog.DiscardHandler))
		for _, err := range errs {
			t.Error(err)
		}
		if groups == nil {
			t.FailNow()
		}
		alerts := map[string]bool{}
		for _, g := range groups.Groups {
			for _, r := range g.Rules {
				if r.Alert == "" {
					t.Errorf("group %s has a recording rule %s; alerts only here", g.Name, r.Record)
					continue
				}
				alerts[r.Alert] = true
				if sev := r.Labels["severity"]; sev != "critical" && sev != "warning" {
					t.Errorf("%s: severity %q, want critical or warning", r.Alert, sev)
				}
				if r.Annotations["summary"] == "" || r.Annotations["description"] == "" {
					t.Errorf("%s: want a summary and a description", r.Alert)
				}
				checkMetrics(t, s, "alert "+r.Alert, r.Expr)
			}
		}
		// What an operator must act on, each with its alert.
		for _, want := range []string{"TablecastReaderNotStreaming", "TablecastSlotLagGrowing", "TablecastSlotWALNearLimit",
			"TablecastJetStreamNotStoring", "TablecastDataDiskLow", "TablecastDeadLetters"} {
			if !alerts[want] {
				t.Errorf("no alert %s", want)
			}
		}
	})

	t.Run("dashboard", func(t *testing.T) {
		b, err := os.ReadFile("grafana/tablecast.json")
		if err != nil {
			t.Fatal(err)
		}
		var d dashboard
		dec := json.NewDecoder(bytes.NewReader(b))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&d); err != nil {
			t.Fatalf("grafana/tablecast.json is not a dashboard of the shape Grafana exports: %v", err)
		}
		checkDashboard(t, d, s)
	})
}

// dashboard is the part of Grafana's dashboard JSON model this file uses.
// Decoding refuses other members, so a misspelt one is caught.
type dashboard struct {
	Title         string   `json:"title"`
	UID           string   `json:"uid"`
	Description   string   `json:"description"`
	Tags          []string `json:"tags"`
	Timezone      string   `json:"timezone"`
	Editable      bool     `json:"editable"`
	GraphTooltip  int      `json:"graphTooltip"`
	SchemaVersion int      `json:"schemaVersion"`
	Version       int      `json:"version"`
	Refresh       string   `json:"refresh"`
	Time          struct{ From, To string }
	Annotations   json.RawMessage `json:"annotations"`
	Templating    struct {
		List []struct {
			Name       string          `json:"name"`
			Type       string          `json:"type"`
			Label      string          `json:"label"`
			Query      json.RawMessage `json:"query"`
			Definition string          `json:"definition"`
			Datasource *datasourceRef  `json:"datasource"`
			Refresh    int             `json:"refresh"`
			IncludeAll bool            `json:"includeAll"`
			Multi      bool            `json:"multi"`
			AllValue   string          `json:"allValue"`
			Current    json.RawMessage `json:"current"`
			Hide       int             `json:"hide"`
		} `json:"list"`
	} `json:"templating"`
	Panels []panel `json:"panels"`
}

type datasourceRef struct {
	Type string `json:"type"`
	UID  string `json:"uid"`
}

type panel struct {
	ID          int            `json:"id"`
	Type        string         `json:"type"`
	Title       string         `json:"title"`
	Description string         `json:"description"`
	Collapsed   bool           `json:"collapsed"`
	Datasource  *datasourceRef `json:"datasource"`
	GridPos     struct{ H, W, X, Y int }
	FieldConfig json.RawMessage `json:"fieldConfig"`
	Options     json.RawMessage `json:"options"`
	Panels      []panel         `json:"panels"`
	Targets     []struct {
		RefID        string         `json:"refId"`
		Expr         string         `json:"expr"`
		LegendFormat string         `json:"legendFormat"`
		Datasource   *datasourceRef `json:"datasource"`
	} `json:"targets"`
}

// grafanaVariables stands in for Grafana's variables, so that an
// expression can be parsed as Prometheus will receive it.
var grafanaVariables = strings.NewReplacer("$__rate_interval", "5m", "$__interval", "1m", "$instance", ".*")

func checkDashboard(t *testing.T, d dashboard, s scrape) {
	if d.Title == "" || d.UID == "" || d.SchemaVersion < 36 {
		t.Errorf("title %q, uid %q, schemaVersion %d: want a title, a uid and a current schema (36 or later)", d.Title, d.UID, d.SchemaVersion)
	}
	vars := map[string]bool{}
	for _, v := range d.Templating.List {
		vars[v.Name] = true
		if v.Type == "query" {
			var q struct{ Query string }
			if err := json.Unmarshal(v.Query, &q); err != nil {
				t.Errorf("variable %s: query %s: %v", v.Name, v.Query, err)
			}
			m := regexp.MustCompile(`^label_values\((.+), *([a-z_]+)\)$`).FindStringSubmatch(q.Query)
			if m == nil {
				t.Errorf("variable %s: query %q, want label_values(metric, label)", v.Name, q.Query)
			} else {
				checkMetrics(t, s, "variable "+v.Name, m[1])
			}
		}
	}
	if !vars["datasource"] {
		t.Error("no datasource variable: the dashboard would be tied to one Prometheus")
	}
	ids := map[int]bool{}
	var occupied [][4]int
	for _, p := range d.Panels {
		if ids[p.ID] {
			t.Errorf("panel id %d twice", p.ID)
		}
		ids[p.ID] = true
		g := p.GridPos
		if g.W <= 0 || g.H <= 0 || g.X < 0 || g.X+g.W > 24 {
			t.Errorf("panel %q: gridPos %+v outside Grafana's 24 columns", p.Title, g)
		}
		for _, o := range occupied {
			if g.X < o[0]+o[2] && o[0] < g.X+g.W && g.Y < o[1]+o[3] && o[1] < g.Y+g.H {
				t.Errorf("panel %q overlaps another at %+v", p.Title, g)
			}
		}
		occupied = append(occupied, [4]int{g.X, g.Y, g.W, g.H})
		if p.Type == "row" {
			continue
		}
		if !slices.Contains([]string{"timeseries", "stat", "gauge", "bargauge", "table"}, p.Type) {
			t.Errorf("panel %q: type %q", p.Title, p.Type)
		}
		if p.Datasource == nil || p.Datasource.Type != "prometheus" || p.Datasource.UID != "${datasource}" {
			t.Errorf("panel %q: datasource %+v, want the ${datasource} variable", p.Title, p.Datasource)
		}
		if len(p.Targets) == 0 {
			t.Errorf("panel %q has no query", p.Title)
		}
		refs := map[string]bool{}
		for _, q := range p.Targets {
			if q.RefID == "" || refs[q.RefID] {
				t.Errorf("panel %q: refId %q empty or repeated", p.Title, q.RefID)
			}
			refs[q.RefID] = true
			for _, v := range regexp.MustCompile(`\$\{?([a-z_]+)`).FindAllStringSubmatch(q.Expr, -1) {
				if !vars[v[1]] && !strings.HasPrefix(v[1], "__") {
					t.Errorf("panel %q uses $%s, which the dashboard does not define", p.Title, v[1])
				}
			}
			checkMetrics(t, s, fmt.Sprintf("panel %q", p.Title), grafanaVariables.Replace(q.Expr))
		}
	}
}
