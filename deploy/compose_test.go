package deploy

import (
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/compose-spec/compose-go/v2/dotenv"
	"github.com/compose-spec/compose-go/v2/loader"
	"github.com/compose-spec/compose-go/v2/types"
	"github.com/jackc/pgx/v5"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// envExample is deploy/env.example, the values compose interpolates.
func envExample(t testing.TB) map[string]string {
	t.Helper()
	env, err := dotenv.Read("env.example")
	if err != nil {
		t.Fatalf("read env.example: %v", err)
	}
	return env
}

// loadCompose loads deploy/compose.yaml with compose's own loader,
// validating it against the compose specification, with env as the
// variables it interpolates.
func loadCompose(t testing.TB, env map[string]string) *types.Project {
	t.Helper()
	p, err := composeProject(env)
	if err != nil {
		t.Fatalf("load compose.yaml: %v", err)
	}
	return p
}

func composeProject(env map[string]string) (*types.Project, error) {
	dir, err := filepath.Abs(".")
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	return loader.LoadWithContext(ctx, types.ConfigDetails{
		WorkingDir:  dir,
		ConfigFiles: []types.ConfigFile{{Filename: filepath.Join(dir, "compose.yaml")}},
		Environment: env,
	})
}

// serviceEnv is a service's environment after interpolation.
func serviceEnv(s types.ServiceConfig) map[string]string {
	out := map[string]string{}
	for k, v := range s.Environment {
		if v != nil {
			out[k] = *v
		}
	}
	return out
}

// tablecastServices are the services that run the image deploy/Dockerfile
// builds, by name.
func tablecastServices(p *types.Project) map[string]types.ServiceConfig {
	out := map[string]types.ServiceConfig{}
	for name, s := range p.Services {
		if s.Build != nil && s.Build.Dockerfile == "deploy/Dockerfile" {
			out[name] = s
		}
	}
	return out
}

// mountSource is the file on this machine that a service mounts at target.
func mountSource(t testing.TB, s types.ServiceConfig, target string) string {
	t.Helper()
	for _, v := range s.Volumes {
		if v.Target == target {
			if v.Type != types.VolumeTypeBind {
				t.Fatalf("%s mounts %s from a %s, not a file of this repository", s.Name, target, v.Type)
			}
			return v.Source
		}
	}
	t.Fatalf("%s mounts nothing at %s", s.Name, target)
	return ""
}

// natsConfigFile is the configuration file a NATS service runs with: the
// file mounted where its --config argument points.
func natsConfigFile(t testing.TB, s types.ServiceConfig) string {
	t.Helper()
	i := slices.Index(s.Command, "--config")
	if i < 0 || i+1 >= len(s.Command) {
		t.Fatalf("%s runs %v, without --config", s.Name, s.Command)
	}
	return mountSource(t, s, s.Command[i+1])
}

// natsServices are the NATS nodes: the services that run a nats image.
func natsServices(p *types.Project) []types.ServiceConfig {
	var out []types.ServiceConfig
	for _, name := range slices.Sorted(mapKeys(p.Services)) {
		if s := p.Services[name]; strings.HasPrefix(s.Image, "nats:") {
			out = append(out, s)
		}
	}
	return out
}

// TestComposeFile validates deploy/compose.yaml with compose's loader and
// checks what a production setup needs: PostgreSQL with wal_level=logical,
// three NATS nodes from one configuration file, one reader, two gateways
// with authentication and the public host name allowed, stream replicas 3
// everywhere, the tablecast containers locked down, a TLS proxy in front of
// exactly the gateways, every secret required, and only real tablecast
// variables.
func TestComposeFile(t *testing.T) {
	if _, err := composeProject(map[string]string{}); err == nil || !strings.Contains(err.Error(), "deploy/.env") {
		t.Errorf("compose.yaml loads without its secrets (err %v); it must name what to set", err)
	}
	p := loadCompose(t, envExample(t))

	pg, ok := p.Services["postgres"]
	if !ok || !slices.Contains(pg.Command, "wal_level=logical") {
		t.Errorf("postgres runs %v, without wal_level=logical", pg.Command)
	}
	init := mountSource(t, pg, "/docker-entrypoint-initdb.d/10-tablecast.sh")
	if _, err := os.Stat(init); err != nil {
		t.Errorf("postgres's init script: %v", err)
	}

	nodes := natsServices(p)
	if len(nodes) != 3 {
		t.Fatalf("%d NATS services, want a cluster of 3", len(nodes))
	}
	for _, n := range nodes {
		if natsConfigFile(t, n) != natsConfigFile(t, nodes[0]) {
			t.Errorf("%s runs another configuration file than %s", n.Name, nodes[0].Name)
		}
		opts := loadNATSConfig(t, natsConfigFile(t, n), serviceEnv(n))
		if opts.ServerName != n.Name {
			t.Errorf("service %s runs a node named %q", n.Name, opts.ServerName)
		}
		var routed []string
		for _, r := range opts.Routes {
			routed = append(routed, r.Hostname())
		}
		slices.Sort(routed)
		if want := []string{nodes[0].Name, nodes[1].Name, nodes[2].Name}; !slices.Equal(routed, want) {
			t.Errorf("%s routes to %v, want %v", n.Name, routed, want)
		}
		if n.HealthCheck == nil || len(n.HealthCheck.Test) == 0 {
			t.Errorf("%s has no healthcheck; tablecast waits for it", n.Name)
		}
	}

	tc := tablecastServices(p)
	var readers, gateways []string
	for name, s := range tc {
		env := serviceEnv(s)
		checkVariables(t, "compose.yaml service "+name, slices.Collect(mapKeys(env)))
		if !s.ReadOnly || !slices.Contains(s.CapDrop, "ALL") || !slices.Contains(s.SecurityOpt, "no-new-privileges:true") {
			t.Errorf("%s: want read_only, cap_drop ALL and no-new-privileges", name)
		}
		if env["TABLECAST_STREAM_REPLICAS"] != "3" {
			t.Errorf("%s: TABLECAST_STREAM_REPLICAS %q, want 3", name, env["TABLECAST_STREAM_REPLICAS"])
		}
		for _, u := range strings.Split(env["TABLECAST_NATS_URL"], ",") {
			if h, port, _ := net.SplitHostPort(strings.TrimPrefix(u, "nats://")); !slices.ContainsFunc(nodes, func(n types.ServiceConfig) bool { return n.Name == h }) || port != "4222" {
				t.Errorf("%s: TABLECAST_NATS_URL names %s, not a NATS service's client port", name, u)
			}
		}
		if env["TABLECAST_NATS_USER"] == "" || env["TABLECAST_NATS_PASSWORD"] == "" {
			t.Errorf("%s signs in to NATS without credentials", name)
		}
		for _, k := range []string{"TABLECAST_STREAM", "TABLECAST_SUBJECT_PREFIX", "TABLECAST_STREAM_MAX_BYTES", "TABLECAST_STREAM_MAX_AGE", "TABLECAST_DUPLICATE_WINDOW", "TABLECAST_STREAM_REPLICAS"} {
			if cdc := serviceEnv(p.Services["cdc"]); env[k] != cdc[k] {
				t.Errorf("%s has %s=%q and cdc %q: every process provisions the stream, and they must agree", name, k, env[k], cdc[k])
			}
		}
		switch {
		case slices.Equal(s.Command, []string{"cdc"}):
			readers = append(readers, name)
			if s.Deploy != nil && s.Deploy.Replicas != nil && *s.Deploy.Replicas != 1 {
				t.Errorf("%s runs %d replicas; one reader per slot", name, *s.Deploy.Replicas)
			}
			if env["TABLECAST_DATABASE_URL"] == "" {
				t.Errorf("%s has no TABLECAST_DATABASE_URL", name)
			}
		case slices.Equal(s.Command, []string{"gateway"}):
			gateways = append(gateways, name)
			if env["TABLECAST_JWT_SECRET"] == "" && env["TABLECAST_JWT_KEYS"] == "" && env["TABLECAST_API_KEYS_FILE"] == "" {
				t.Errorf("%s has no authentication", name)
			}
			if env["TABLECAST_ALLOW_ANONYMOUS"] == "true" {
				t.Errorf("%s lets anyone in", name)
			}
			if !slices.Contains(strings.Split(env["TABLECAST_ALLOWED_HOSTS"], ","), *p.Services["proxy"].Environment["PUBLIC_HOST"]) {
				t.Errorf("%s: TABLECAST_ALLOWED_HOSTS %q lacks the proxy's PUBLIC_HOST: every request would be answered 421", name, env["TABLECAST_ALLOWED_HOSTS"])
			}
		default:
			t.Errorf("%s runs %v", name, s.Command)
		}
	}
	if len(readers) != 1 || len(gateways) != 2 {
		t.Errorf("readers %v and gateways %v; want one reader and two gateways", readers, gateways)
	}

	proxy := p.Services["proxy"]
	if !slices.ContainsFunc(proxy.Ports, func(pc types.ServicePortConfig) bool { return pc.Target == 443 && pc.Published == "443" }) {
		t.Errorf("the proxy publishes %v, not 443", proxy.Ports)
	}
	caddyfile, err := os.ReadFile(mountSource(t, proxy, "/etc/caddy/Caddyfile"))
	if err != nil {
		t.Fatal(err)
	}
	var want []string
	for _, g := range gateways {
		_, port, _ := net.SplitHostPort(serviceEnv(tc[g])["TABLECAST_HTTP_ADDR"])
		want = append(want, g+":"+port)
	}
	slices.Sort(want)
	if got := caddyUpstreams(string(caddyfile)); !slices.Equal(got, want) {
		t.Errorf("the Caddyfile proxies to %v; the gateways listen at %v", got, want)
	}
}

// caddyUpstreams are the addresses of the Caddyfile's reverse_proxy.
func caddyUpstreams(caddyfile string) []string {
	for _, l := range strings.Split(caddyfile, "\n") {
		f := strings.Fields(l)
		if len(f) > 1 && f[0] == "reverse_proxy" {
			ups := slices.DeleteFunc(f[1:], func(s string) bool { return s == "{" })
			slices.Sort(ups)
			return ups
		}
	}
	return nil
}

// hs256 signs claims with secret: a client token, made by hand so that
// the gateway's own library is what verifies it.
func hs256(secret string, claims map[string]any) string {
	enc := base64.RawURLEncoding.EncodeToString
	payload, _ := json.Marshal(claims)
	signing := enc([]byte(`{"alg":"HS256","typ":"JWT"}`)) + "." + enc(payload)
	mac := hmac.New(sha256.New, []byte(secret))
	mac.Write([]byte(signing))
	return signing + "." + enc(mac.Sum(nil))
}

// TestComposeStackRuns runs what deploy/compose.yaml describes, with its
// own files and settings, on this machine: PostgreSQL set up by the
// compose file's init script, three nats-server nodes from
// deploy/nats/nats.conf with each node's environment, `tablecast cdc` and
// two `tablecast gateway` with the environment compose gives them, and
// Caddy with deploy/caddy/Caddyfile terminating TLS in front of the
// gateways. Only addresses change (service names and fixed ports become
// loopback and free ports). Then: the stream has 3 replicas, `tablecast
// doctor` passes with the reader's settings, a row inserted in PostgreSQL
// reaches a WebSocket client through the proxy with a token signed with
// the compose file's secret, and each gateway directly, and the backend
// user reads it from a durable consumer and cannot store into the stream.
func TestComposeStackRuns(t *testing.T) {
	bin := tablecastBinary(t)
	caddy, err := exec.LookPath("caddy")
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatal("caddy is not installed: make test installs it (scripts/deploy-tools.sh install)")
		}
		t.Skip("caddy is not installed (scripts/deploy-tools.sh install): the proxy of compose.yaml cannot be run")
	}
	c := pgRequire(t)
	env := envExample(t)
	env["PUBLIC_HOST"] = "tablecast.localhost" // a name, not localhost, which gateways on loopback answer anyway
	p := loadCompose(t, env)
	tc := tablecastServices(p)

	// PostgreSQL as the postgres image's entrypoint leaves it, then the
	// compose file's init script.
	pg := p.Services["postgres"]
	pgEnv := serviceEnv(pg)
	user, db := pgEnv["POSTGRES_USER"], pgEnv["POSTGRES_DB"]
	admin := c.URL("postgres")
	c.Exec(t, admin, fmt.Sprintf(`CREATE ROLE %q SUPERUSER LOGIN`, user))
	c.Exec(t, admin, fmt.Sprintf(`CREATE DATABASE %q OWNER %q`, db, user))
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		conn, err := pgx.Connect(ctx, admin)
		if err != nil {
			return
		}
		defer conn.Close(ctx)
		for _, sql := range []string{fmt.Sprintf(`DROP DATABASE IF EXISTS %q WITH (FORCE)`, db), `DROP ROLE IF EXISTS tablecast`, `DROP ROLE IF EXISTS app_owner`, fmt.Sprintf(`DROP ROLE IF EXISTS %q`, user)} {
			if _, err := conn.Exec(ctx, sql); err != nil {
				t.Logf("%s: %v", sql, err)
			}
		}
	})
	dbURL := strings.Replace(c.URL(db), "postgres@", user+"@", 1)
	initEnv := append(systemEnv(), "PATH="+c.BinDir+":"+os.Getenv("PATH"), "PGHOST=127.0.0.1", fmt.Sprintf("PGPORT=%d", c.Port))
	for k, v := range pgEnv {
		if k == "DEMO_SQL" {
			v = mountSource(t, pg, v)
		}
		initEnv = append(initEnv, k+"="+v)
	}
	if code, out := run(t, time.Minute, initEnv, "bash", mountSource(t, pg, "/docker-entrypoint-initdb.d/10-tablecast.sh")); code != 0 {
		t.Fatalf("postgres/10-tablecast.sh: exit %d\n%s", code, out)
	}

	// NATS, from its configuration file.
	var nodes []*natsNode
	for _, s := range natsServices(p) {
		nodes = append(nodes, &natsNode{service: s.Name, env: serviceEnv(s)})
	}
	startNATSCluster(t, natsConfigFile(t, p.Services[nodes[0].service]), nodes)

	// tablecast, with its compose environment on this machine's addresses.
	var pairs []string
	for _, n := range nodes {
		pairs = append(pairs, n.service+":4222", n.client)
	}
	pairs = append(pairs, "postgres:5432", fmt.Sprintf("127.0.0.1:%d", c.Port))
	localize := strings.NewReplacer(pairs...)
	httpAddr := map[string]string{}
	envOf := func(name string) []string {
		out := systemEnv()
		for k, v := range serviceEnv(tc[name]) {
			v = localize.Replace(v)
			if k == "TABLECAST_HTTP_ADDR" {
				host, _, _ := net.SplitHostPort(v)
				v = net.JoinHostPort(host, freePort(t))
				httpAddr[name] = v
			}
			out = append(out, k+"="+v)
		}
		return out
	}
	cdcEnv := envOf("cdc")
	dropSlotAtCleanup(t, c.URL(db), "tablecast")
	start(t, cdcEnv, bin, tc["cdc"].Command...)
	waitFor(t, 2*time.Minute, "tablecast cdc to be ready (tablecast healthcheck --ready)", func() bool {
		code, _ := run(t, time.Minute, cdcEnv, bin, "healthcheck", "--ready")
		return code == 0
	})
	if code, out := run(t, time.Minute, cdcEnv, bin, "doctor"); code != 0 {
		t.Errorf("tablecast doctor with the reader's settings: exit %d\n%s", code, out)
	}
	var gwPorts []string
	for _, g := range []string{"gateway-1", "gateway-2"} {
		genv := envOf(g)
		start(t, genv, bin, tc[g].Command...)
		waitFor(t, time.Minute, g+" to be ready", func() bool {
			code, _ := run(t, time.Minute, genv, bin, "healthcheck", "--ready")
			return code == 0
		})
		_, port, _ := net.SplitHostPort(httpAddr[g])
		gwPorts = append(gwPorts, port)
	}

	// The stream, replicated on the three nodes.
	nc, err := nats.Connect(nodes[0].client, nats.UserInfo(serviceEnv(tc["cdc"])["TABLECAST_NATS_USER"], serviceEnv(tc["cdc"])["TABLECAST_NATS_PASSWORD"]))
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	js, _ := jetstream.New(nc)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	str, err := js.Stream(ctx, "TABLECAST")
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, time.Minute, "the stream's three replicas to be current", func() bool {
		info, err := str.Info(ctx)
		if err != nil || info.Cluster == nil || len(info.Cluster.Replicas) != 2 {
			return false
		}
		for _, r := range info.Cluster.Replicas {
			if !r.Current {
				return false
			}
		}
		return info.Config.Replicas == 3
	})

	// Caddy, from the Caddyfile, in front of the two gateways.
	proxy := p.Services["proxy"]
	caddyfile, err := os.ReadFile(mountSource(t, proxy, "/etc/caddy/Caddyfile"))
	if err != nil {
		t.Fatal(err)
	}
	local := strings.NewReplacer("gateway-1:8080", "localhost:"+gwPorts[0], "gateway-2:8080", "localhost:"+gwPorts[1]).Replace(string(caddyfile))
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "Caddyfile"), []byte(local), 0o600); err != nil {
		t.Fatal(err)
	}
	httpsPort := freePort(t)
	caddyEnv := append(systemEnv(), "HOME="+dir, "XDG_DATA_HOME="+dir, "XDG_CONFIG_HOME="+dir, "HTTPS_PORT="+httpsPort, "HTTP_PORT="+freePort(t))
	for k, v := range serviceEnv(proxy) {
		caddyEnv = append(caddyEnv, k+"="+v)
	}
	start(t, caddyEnv, caddy, "run", "--config", filepath.Join(dir, "Caddyfile"), "--adapter", "caddyfile")
	public := env["PUBLIC_HOST"]
	var client *http.Client
	waitFor(t, time.Minute, "Caddy's certificate for "+public, func() bool {
		root, err := os.ReadFile(filepath.Join(dir, "caddy", "pki", "authorities", "local", "root.crt"))
		if err != nil {
			return false
		}
		pool := x509.NewCertPool()
		pool.AppendCertsFromPEM(root)
		client = &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{
			TLSClientConfig: &tls.Config{RootCAs: pool, ServerName: public},
			DialContext: func(ctx context.Context, network, _ string) (net.Conn, error) {
				return (&net.Dialer{}).DialContext(ctx, network, "127.0.0.1:"+httpsPort)
			},
		}}
		resp, err := client.Get("https://" + public + "/readyz")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == 200
	})

	secret := serviceEnv(tc["gateway-1"])["TABLECAST_JWT_SECRET"]
	token := hs256(secret, map[string]any{"sub": "deploy-test", "exp": time.Now().Add(time.Hour).Unix(),
		"tablecast": map[string]any{"tables": map[string]any{"public.orders": []string{"*"}}}})
	subscribe := func(url string, hc *http.Client) *websocket.Conn {
		ws, _, err := websocket.Dial(ctx, url+"/ws?token="+token, &websocket.DialOptions{HTTPClient: hc})
		if err != nil {
			t.Fatalf("dial %s: %v", url, err)
		}
		t.Cleanup(func() { _ = ws.CloseNow() })
		if err := ws.Write(ctx, websocket.MessageText, []byte(`{"type":"subscribe","id":"o","table":"public.orders"}`)); err != nil {
			t.Fatal(err)
		}
		if f := readFrame(t, ctx, ws); f["type"] != "subscribed" {
			t.Fatalf("subscribe through %s answered %v", url, f)
		}
		return ws
	}
	clients := map[string]*websocket.Conn{"the proxy": subscribe("wss://"+public, client)}
	for i, port := range gwPorts {
		clients[fmt.Sprintf("gateway-%d", i+1)] = subscribe("ws://127.0.0.1:"+port, http.DefaultClient)
	}
	app, err := pgx.Connect(ctx, dbURL)
	if err != nil {
		t.Fatal(err)
	}
	defer app.Close(context.Background())
	if _, err := app.Exec(ctx, `INSERT INTO orders (status, total) VALUES ('paid', 19.90)`); err != nil {
		t.Fatal(err)
	}
	for via, ws := range clients {
		f := readFrame(t, ctx, ws)
		ev, _ := f["event"].(map[string]any)
		if f["type"] != "event" || ev["op"] != "create" || ev["table"] != "orders" {
			t.Errorf("through %s the insert arrived as %v", via, f)
		}
	}

	checkBackendReadOnly(t, nodes[1].client, "backend", serviceEnv(p.Services[nodes[0].service])["NATS_BACKEND_PASSWORD"], "TABLECAST", "tablecast."+db+".public.orders.>")
}

func readFrame(t *testing.T, ctx context.Context, ws *websocket.Conn) map[string]any {
	t.Helper()
	rctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	_, b, err := ws.Read(rctx)
	if err != nil {
		t.Fatalf("read: %v", err)
	}
	var f map[string]any
	if err := json.Unmarshal(b, &f); err != nil {
		t.Fatalf("frame %s: %v", b, err)
	}
	return f
}
