package deploy

import (
	"context"
	"fmt"
	"net"
	"net/url"
	"slices"
	"sort"
	"strconv"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/tablecast/tablecast/stream"
)

// natsNode is one node of the cluster, as compose runs it: its service
// name, the environment its configuration file reads, and where it
// listens here.
type natsNode struct {
	service string
	env     map[string]string
	client  string // host:port of its client listener here
	route   string // host:port of its route listener here
	srv     *server.Server
}

// loadNATSConfig reads the configuration file with nats-server's own
// parser, its variables taken from env as the server takes them from its
// environment.
func loadNATSConfig(t *testing.T, file string, env map[string]string) *server.Options {
	t.Helper()
	for k, v := range env {
		t.Setenv(k, v)
	}
	opts, err := server.ProcessConfigFile(file)
	if err != nil {
		t.Fatalf("nats-server reading %s: %v", file, err)
	}
	return opts
}

// startNATSCluster starts one in-process nats-server per node from the
// same configuration file, each with its node's environment. Only where
// the nodes listen and store changes for this machine (loopback and free
// ports instead of compose's service names and fixed ports, a temporary
// store): accounts, users, permissions, JetStream limits and the routes'
// credentials are the file's. It returns once the nodes form one cluster
// with a JetStream meta leader.
func startNATSCluster(t *testing.T, file string, nodes []*natsNode) {
	t.Helper()
	// A free port found here can be taken by another process (the other
	// test packages run alongside) before the node listens on it; such a
	// node never becomes ready. The cluster is then started again on new
	// ports.
	for attempt := 1; ; attempt++ {
		err := startNATSNodes(t, file, nodes)
		if err == nil {
			break
		}
		for _, n := range nodes {
			if n.srv != nil {
				n.srv.Shutdown()
				n.srv.WaitForShutdown()
				n.srv = nil
			}
		}
		if attempt == 3 {
			t.Fatal(err)
		}
		t.Logf("starting the NATS cluster again on other ports: %v", err)
	}
	waitFor(t, time.Minute, "the NATS nodes to route to each other and elect a JetStream meta leader", func() bool {
		leader := false
		for _, n := range nodes {
			if n.srv.NumRoutes() < len(nodes)-1 || !n.srv.JetStreamEnabled() {
				return false
			}
			leader = leader || n.srv.JetStreamIsLeader()
		}
		return leader
	})
}

// startNATSNodes starts the nodes on free ports (see startNATSCluster).
func startNATSNodes(t *testing.T, file string, nodes []*natsNode) error {
	t.Helper()
	for _, n := range nodes {
		n.client, n.route = freeAddr(t), freeAddr(t)
	}
	routeOf := map[string]string{}
	for _, n := range nodes {
		routeOf[n.service] = n.route
	}
	for _, n := range nodes {
		opts := loadNATSConfig(t, file, n.env)
		var routes []*url.URL
		for _, r := range opts.Routes {
			host, port, _ := net.SplitHostPort(r.Host)
			local, ok := routeOf[host]
			if !ok || port != strconv.Itoa(opts.Cluster.Port) {
				t.Fatalf("%s: route %s is not a node's route port (%v, cluster port %d)", n.service, r.Redacted(), slices.Sorted(mapKeys(routeOf)), opts.Cluster.Port)
			}
			u := *r
			u.Host = local
			routes = append(routes, &u)
		}
		opts.Routes = routes
		opts.Host, opts.Port = splitPort(t, n.client)
		opts.Cluster.Host, opts.Cluster.Port = splitPort(t, n.route)
		opts.HTTPHost, opts.HTTPPort = "127.0.0.1", -1
		opts.StoreDir = t.TempDir()
		opts.NoSigs, opts.NoLog = true, true
		srv, err := server.NewServer(opts)
		if err != nil {
			t.Fatalf("%s: %v", n.service, err)
		}
		srv.Start()
		n.srv = srv
		t.Cleanup(func() { srv.Shutdown(); srv.WaitForShutdown() })
		if !srv.ReadyForConnections(15 * time.Second) {
			return fmt.Errorf("%s: not ready for connections on %s (route %s)", n.service, n.client, n.route)
		}
	}
	return nil
}

func splitPort(t testing.TB, addr string) (string, int) {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		t.Fatal(err)
	}
	p, _ := strconv.Atoi(port)
	return host, p
}

func mapKeys[K comparable, V any](m map[K]V) func(func(K) bool) {
	return func(yield func(K) bool) {
		for k := range m {
			if !yield(k) {
				return
			}
		}
	}
}

// natsUser finds a user of the configuration.
func natsUser(opts *server.Options, name string) *server.User {
	for _, u := range opts.Users {
		if u.Username == name {
			return u
		}
	}
	return nil
}

// TestNATSConfigReadOnlyUser: the backend user of deploy/nats/nats.conf
// has exactly the permissions tablecast gives the read-only user of its
// embedded NATS (stream.ReadOnlyPermissions), for the stream and prefix
// compose configures, and sits, like it, in an account of its own
// (stream.ReadersAccount) that imports from tablecast's exactly what those
// permissions allow: in tablecast's account, JetStream's answers to the
// reply subjects it names would be stored.
func TestNATSConfigReadOnlyUser(t *testing.T) {
	project := loadCompose(t, envExample(t))
	node := project.Services["nats-1"]
	opts := loadNATSConfig(t, natsConfigFile(t, node), serviceEnv(node))
	cdc := serviceEnv(project.Services["cdc"])
	streamName, prefix := orDefault(cdc["TABLECAST_STREAM"], stream.DefaultStreamName), orDefault(cdc["TABLECAST_SUBJECT_PREFIX"], stream.DefaultPrefix)
	backend, own := natsUser(opts, "backend"), natsUser(opts, cdc["TABLECAST_NATS_USER"])
	if backend == nil || own == nil {
		t.Fatalf("nats.conf lacks the user backend or %q (TABLECAST_NATS_USER of cdc)", cdc["TABLECAST_NATS_USER"])
	}
	if own.Permissions != nil {
		t.Errorf("tablecast's user %s has restricted permissions %+v; it needs every permission in its account", own.Username, own.Permissions)
	}
	if own.Account == nil || backend.Account == nil || own.Account.Name == backend.Account.Name {
		t.Fatalf("tablecast's user and backend are in the same account: backend's requests could store into the stream through their reply subjects")
	}
	if own.Password != serviceEnv(node)["NATS_TABLECAST_PASSWORD"] || cdc["TABLECAST_NATS_PASSWORD"] != own.Password {
		t.Errorf("tablecast's password in nats.conf is not the TABLECAST_NATS_PASSWORD compose gives tablecast")
	}
	want := stream.ReadOnlyPermissions(streamName, prefix)
	same := func(what string, got, want *server.SubjectPermission) {
		if got == nil || want == nil {
			if got != want {
				t.Errorf("%s permissions of backend: %+v, want %+v", what, got, want)
			}
			return
		}
		g, w := slices.Sorted(slices.Values(got.Allow)), slices.Sorted(slices.Values(want.Allow))
		if !slices.Equal(g, w) || len(got.Deny) != len(want.Deny) {
			t.Errorf("%s permissions of backend in nats.conf:\n  %v\nwant those of tablecast's read-only user:\n  %v", what, g, w)
		}
	}
	if backend.Permissions == nil {
		t.Fatal("backend has every permission")
	}
	same("publish", backend.Permissions.Publish, want.Publish)
	same("subscribe", backend.Permissions.Subscribe, want.Subscribe)
	for _, subject := range want.Publish.Allow {
		if !own.Account.IsExportService(subject) {
			t.Errorf("account %s does not export %s to backend's account", own.Account.Name, subject)
		}
	}
	if n := backend.Account.NumServiceImports(); n != len(want.Publish.Allow) {
		t.Errorf("backend's account %s imports %d services, want the %d requests backend may send", backend.Account.Name, n, len(want.Publish.Allow))
	}
	if opts.JetStreamMaxStore <= 0 {
		t.Error("nats.conf sets no max_file_store: JetStream would take three quarters of the free disk at each start")
	}
	if max, _ := strconv.ParseInt(cdc["TABLECAST_STREAM_MAX_BYTES"], 10, 64); max <= 0 || max > opts.JetStreamMaxStore {
		t.Errorf("TABLECAST_STREAM_MAX_BYTES %s does not fit in each node's max_file_store %d", cdc["TABLECAST_STREAM_MAX_BYTES"], opts.JetStreamMaxStore)
	}
	if opts.JetStreamLimits.DefaultMaxConsumers != -1 {
		t.Errorf("nats.conf sets default_max_consumers %d, want -1: nats-server's default allows 1,000 consumers a stream, one a webhook endpoint", opts.JetStreamLimits.DefaultMaxConsumers)
	}
	if opts.Cluster.Username == "" || opts.Cluster.Password == "" {
		t.Error("the cluster port takes routes without credentials")
	}
}

func orDefault(v, def string) string {
	if v == "" {
		return def
	}
	return v
}

// checkBackendReadOnly signs in to the cluster as the backend user: it
// reads the stream through a durable consumer and cannot store anything
// into it, nor delete it.
func checkBackendReadOnly(t *testing.T, url, user, password, streamName, subject string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	nc, err := nats.Connect(url, nats.UserInfo(user, password))
	if err != nil {
		t.Fatalf("backend connects: %v", err)
	}
	defer nc.Close()
	js, _ := jetstream.New(nc)
	cons, err := js.CreateOrUpdateConsumer(ctx, streamName, jetstream.ConsumerConfig{Durable: "deploy-test", FilterSubject: subject, AckPolicy: jetstream.AckExplicitPolicy})
	if err != nil {
		t.Fatalf("backend creates a durable consumer: %v", err)
	}
	batch, err := cons.Fetch(1, jetstream.FetchMaxWait(10*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	got := 0
	for m := range batch.Messages() {
		got++
		if err := m.Ack(); err != nil {
			t.Errorf("backend acks: %v", err)
		}
	}
	if got != 1 {
		t.Errorf("backend fetched %d events, want 1", got)
	}
	pctx, pcancel := context.WithTimeout(ctx, 5*time.Second)
	defer pcancel()
	if _, err := js.Publish(pctx, subject[:len(subject)-1]+"create", []byte(`{"forged":true}`)); err == nil {
		t.Error("backend stored a message into the stream")
	}
	// JetStream answers on the reply subject a request names: in
	// tablecast's account, an answer sent to an event subject would be
	// stored (stream.TestReadOnlyCannotStoreThroughReplies).
	str, err := js.Stream(ctx, streamName)
	if err != nil {
		t.Fatal(err)
	}
	before, err := str.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, req := range []string{"$JS.API.STREAM.MSG.GET." + streamName, "$JS.API.DIRECT.GET." + streamName, "$JS.API.STREAM.INFO." + streamName} {
		if err := nc.PublishRequest(req, subject[:len(subject)-1]+"create", []byte(`{"seq":1}`)); err != nil {
			t.Fatal(err)
		}
	}
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	time.Sleep(2 * time.Second)
	after, err := str.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if after.State.LastSeq != before.State.LastSeq {
		t.Errorf("backend's requests stored %d messages into the stream through their reply subject", after.State.LastSeq-before.State.LastSeq)
	}
	dctx, dcancel := context.WithTimeout(ctx, 5*time.Second)
	defer dcancel()
	if err := js.DeleteStream(dctx, streamName); err == nil {
		t.Error("backend deleted the stream")
	}
}

// envList is env as KEY=value lines, sorted.
func envList(env map[string]string) []string {
	var out []string
	for k, v := range env {
		out = append(out, k+"="+v)
	}
	sort.Strings(out)
	return out
}
