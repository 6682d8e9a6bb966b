package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"strings"

	"github.com/tablecast/tablecast/admin"
)

// manageUsage is the help of the endpoints, filters and rules commands.
const manageUsage = `Usage (every command calls the admin API at --admin-url, TABLECAST_ADMIN_URL or
http://TABLECAST_ADMIN_ADDR, sending TABLECAST_ADMIN_TOKEN; it prints the API's JSON answer):
  tablecast endpoints list [--type T] [--state S] [--name-prefix P] [--filter F] [--rule R]
                           [--order-by created|name] [--order asc|desc] [--limit N] [--cursor C | --offset N]
  tablecast endpoints get ID
  tablecast endpoints create JSON|@FILE|-
  tablecast endpoints update ID JSON|@FILE|- [--revision N]     (a JSON merge patch)
  tablecast endpoints delete ID [ID...]
  tablecast endpoints pause|resume ID
  tablecast endpoints filters|rules ID                           (what the endpoint links)
  tablecast filters|rules list [--name-prefix P] [--order-by created|name] [--order asc|desc] [--limit N] [--cursor C | --offset N]
  tablecast filters|rules get|create|update|delete ...          (as for endpoints, by NAME; delete --force unlinks first)
  tablecast filters|rules link|unlink NAME ENDPOINT_ID [ENDPOINT_ID...]
  tablecast filters|rules endpoints NAME                         (the endpoints it feeds)
`

// manage runs `tablecast endpoints|filters|rules …`.
func manage(ctx context.Context, cfg Config, what string, args []string, stdin io.Reader, stdout io.Writer) error {
	adminURL, args, err := cutFlag(args, "--admin-url")
	if err != nil {
		return err
	}
	if len(args) == 0 || args[0] == "help" || args[0] == "-h" || args[0] == "--help" {
		fmt.Fprint(stdout, manageUsage)
		if len(args) == 0 {
			return usageError{what + ": name a command (list, get, create, update, delete, …)"}
		}
		return nil
	}
	c, err := cfg.adminClient(adminURL)
	if err != nil {
		return err
	}
	m := &manager{c: c, what: what, stdin: stdin, out: stdout}
	verb, rest := args[0], args[1:]
	if what == "endpoints" {
		return m.endpoints(ctx, verb, rest)
	}
	return m.named(ctx, verb, rest)
}

type manager struct {
	c     *admin.Client
	what  string // endpoints, filters or rules
	stdin io.Reader
	out   io.Writer
}

func (m *manager) usage(format string, a ...any) error {
	return usageError{fmt.Sprintf("%s %s", m.what, fmt.Sprintf(format, a...))}
}

// call sends a request and prints its answer.
func (m *manager) call(ctx context.Context, method, path string, q url.Values, body any, ifMatch uint64) error {
	resp, err := m.c.Do(ctx, method, path, q, body, ifMatch)
	if err != nil {
		return err
	}
	if len(resp.Body) == 0 {
		if resp.Status == http.StatusNoContent {
			fmt.Fprintln(m.out, `{"ok": true}`)
		}
		return nil
	}
	var buf bytes.Buffer
	if json.Indent(&buf, resp.Body, "", "  ") != nil {
		_, err = m.out.Write(resp.Body)
		return err
	}
	buf.WriteByte('\n')
	_, err = m.out.Write(buf.Bytes())
	return err
}

func (m *manager) endpoints(ctx context.Context, verb string, args []string) error {
	base := "/v1/endpoints"
	switch verb {
	case "list":
		q, err := listQuery(args)
		if err != nil {
			return m.usage("list: %v", err)
		}
		return m.call(ctx, "GET", base, q, nil, 0)
	case "get", "pause", "resume", "filters", "rules":
		if len(args) != 1 {
			return m.usage("%s takes one endpoint id", verb)
		}
		path := base + "/" + url.PathEscape(args[0])
		if verb == "get" {
			return m.call(ctx, "GET", path, nil, nil, 0)
		}
		if verb == "filters" || verb == "rules" {
			return m.call(ctx, "GET", path+"/"+verb, nil, nil, 0)
		}
		return m.call(ctx, "POST", path+"/"+verb, nil, nil, 0)
	case "delete":
		if len(args) == 0 {
			return m.usage("delete takes one or more endpoint ids")
		}
		if len(args) == 1 {
			return m.call(ctx, "DELETE", base+"/"+url.PathEscape(args[0]), nil, nil, 0)
		}
		return m.call(ctx, "POST", base+"/delete", nil, map[string]any{"ids": args}, 0)
	case "create", "update":
		return m.write(ctx, verb, base, args)
	}
	return m.usage("%q: want list, get, create, update, delete, pause, resume, filters or rules", verb)
}

func (m *manager) named(ctx context.Context, verb string, args []string) error {
	base := "/v1/" + m.what
	switch verb {
	case "list":
		q, err := listQuery(args)
		if err != nil {
			return m.usage("list: %v", err)
		}
		return m.call(ctx, "GET", base, q, nil, 0)
	case "get", "endpoints":
		if len(args) != 1 {
			return m.usage("%s takes one name", verb)
		}
		path := base + "/" + url.PathEscape(args[0])
		if verb == "endpoints" {
			path += "/endpoints"
		}
		return m.call(ctx, "GET", path, nil, nil, 0)
	case "delete":
		force := false
		var names []string
		for _, a := range args {
			if a == "--force" {
				force = true
			} else {
				names = append(names, a)
			}
		}
		if len(names) != 1 {
			return m.usage("delete takes one name (and --force to unlink it from its endpoints first)")
		}
		var q url.Values
		if force {
			q = url.Values{"force": {"true"}}
		}
		return m.call(ctx, "DELETE", base+"/"+url.PathEscape(names[0]), q, nil, 0)
	case "link", "unlink":
		if len(args) < 2 {
			return m.usage("%s takes a name and one or more endpoint ids", verb)
		}
		method := "PUT"
		if verb == "unlink" {
			method = "DELETE"
		}
		for _, id := range args[1:] {
			if err := m.call(ctx, method, "/v1/endpoints/"+url.PathEscape(id)+"/"+m.what+"/"+url.PathEscape(args[0]), nil, nil, 0); err != nil {
				return fmt.Errorf("%s %s %s: %w", verb, args[0], id, err)
			}
		}
		return nil
	case "create", "update":
		return m.write(ctx, verb, base, args)
	}
	return m.usage("%q: want list, get, create, update, delete, link, unlink or endpoints", verb)
}

// write creates (POST) or updates (PATCH, a JSON merge patch; with
// --revision N only if the item is still at revision N) from JSON given
// inline, as @FILE, or - for standard input.
func (m *manager) write(ctx context.Context, verb, base string, args []string) error {
	rev, args, err := cutFlag(args, "--revision")
	if err != nil {
		return err
	}
	var ifMatch uint64
	if rev != "" {
		if ifMatch, err = strconv.ParseUint(rev, 10, 64); err != nil || ifMatch == 0 {
			return m.usage("--revision %q: want a revision number (the revision member of get)", rev)
		}
	}
	want := 1
	if verb == "update" {
		want = 2
	}
	if len(args) != want {
		if verb == "update" {
			return m.usage("update takes an id or name and the JSON merge patch (JSON, @FILE or - for standard input)")
		}
		return m.usage("create takes the JSON (JSON, @FILE or - for standard input)")
	}
	src := args[len(args)-1]
	var body []byte
	switch {
	case src == "-":
		body, err = io.ReadAll(m.stdin)
	case strings.HasPrefix(src, "@"):
		body, err = os.ReadFile(src[1:])
	default:
		body = []byte(src)
	}
	if err != nil {
		return fmt.Errorf("read the JSON: %w", err)
	}
	if !json.Valid(body) {
		return m.usage("%s: %q is not JSON", verb, shorten(string(body)))
	}
	if verb == "create" {
		if ifMatch != 0 {
			return m.usage("create takes no --revision")
		}
		return m.call(ctx, "POST", base, nil, body, 0)
	}
	return m.call(ctx, "PATCH", base+"/"+url.PathEscape(args[0]), nil, body, ifMatch)
}

// listQuery turns --name-prefix P … into the query name_prefix=P ….
func listQuery(args []string) (url.Values, error) {
	q := url.Values{}
	for i := 0; i < len(args); i++ {
		k, ok := strings.CutPrefix(args[i], "--")
		if !ok || k == "" {
			return nil, fmt.Errorf("unexpected %q (options are --name value)", args[i])
		}
		v, inline := "", false
		if k, v, inline = strings.Cut(k, "="); !inline {
			if i+1 >= len(args) {
				return nil, fmt.Errorf("--%s needs a value", k)
			}
			i++
			v = args[i]
		}
		q.Add(strings.ReplaceAll(k, "-", "_"), v)
	}
	return q, nil
}

// cutFlag removes "--name value" (or --name=value) from args.
func cutFlag(args []string, name string) (string, []string, error) {
	out := make([]string, 0, len(args))
	val := ""
	for i := 0; i < len(args); i++ {
		switch {
		case args[i] == name:
			if i+1 >= len(args) {
				return "", nil, usageError{name + " needs a value"}
			}
			i++
			val = args[i]
		case strings.HasPrefix(args[i], name+"="):
			val = strings.TrimPrefix(args[i], name+"=")
		default:
			out = append(out, args[i])
		}
	}
	return val, out, nil
}

func shorten(s string) string {
	if len(s) > 60 {
		return s[:60] + "…"
	}
	return s
}
