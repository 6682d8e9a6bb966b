package stream

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nkeys"

	"github.com/tablecast/tablecast/internal/testcert"
)

// connectAs connects with opts, failing the test if that fails; asyncErrs
// receives the connection's asynchronous errors (permission violations).
func connectAs(t *testing.T, url string, opts ...nats.Option) (*nats.Conn, jetstream.JetStream, <-chan error) {
	t.Helper()
	errs := make(chan error, 100)
	opts = append(opts, nats.ErrorHandler(func(_ *nats.Conn, _ *nats.Subscription, err error) {
		select {
		case errs <- err:
		default:
		}
	}))
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	nc, err := Connect(ctx, url, "auth-test", quietLogger(), opts...)
	if err != nil {
		t.Fatalf("connect: %v", err)
	}
	t.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	return nc, js, errs
}

// refused checks that connecting with opts fails at once, with an error
// that says why, rather than retrying until the context ends.
func refused(t *testing.T, url, want string, opts ...nats.Option) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	start := time.Now()
	nc, err := Connect(ctx, url, "auth-test", quietLogger(), opts...)
	if err == nil {
		nc.Close()
		t.Fatalf("connected; want refused with %q", want)
	}
	if !strings.Contains(strings.ToLower(err.Error()), strings.ToLower(want)) || errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("refused with %v after %s; want at once, with %q", err, time.Since(start).Round(time.Millisecond), want)
	}
}

func clientOpts(t *testing.T, a ClientAuth) []nats.Option {
	t.Helper()
	opts, err := a.Options()
	if err != nil {
		t.Fatal(err)
	}
	return opts
}

func TestEmbeddedRefusesAnonymousOffLoopback(t *testing.T) {
	e, err := StartEmbedded(EmbeddedConfig{Listen: "0.0.0.0:-1", StoreDir: t.TempDir(), Logger: quietLogger()})
	if err == nil {
		e.Shutdown()
		t.Fatal("started on 0.0.0.0 without credentials")
	}
	if !strings.Contains(err.Error(), "not a loopback address and no credentials are configured") {
		t.Fatalf("error %q does not say why", err)
	}
	e, err = StartEmbedded(EmbeddedConfig{Listen: "0.0.0.0:-1", StoreDir: t.TempDir(), Logger: quietLogger(),
		Auth: EmbeddedAuth{User: "tc", Password: "secret"}})
	if err != nil {
		t.Fatalf("with credentials: %v", err)
	}
	e.Shutdown()
}

// TestEmbeddedAuthentication: with credentials configured, a client without
// them, or with wrong ones, is refused at once; the full user, the token
// and the full nkey may publish into the stream.
func TestEmbeddedAuthentication(t *testing.T) {
	full, fullSeed := newUserKey(t)
	e, err := StartEmbedded(EmbeddedConfig{Listen: "127.0.0.1:-1", StoreDir: t.TempDir(), Logger: quietLogger(),
		Auth: EmbeddedAuth{User: "tc", Password: "secret", Token: "a-token", NKeys: []string{full}}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(e.Shutdown)
	url := e.ClientURL()

	refused(t, url, "authorization violation")
	refused(t, url, "authorization violation", clientOpts(t, ClientAuth{User: "tc", Password: "wrong"})...)
	refused(t, url, "authorization violation", clientOpts(t, ClientAuth{Token: "wrong"})...)
	_, otherSeed := newUserKey(t)
	refused(t, url, "authorization violation", clientOpts(t, ClientAuth{NKeyFile: otherSeed})...)

	for i, a := range []ClientAuth{{User: "tc", Password: "secret"}, {Token: "a-token"}, {NKeyFile: fullSeed}} {
		_, js, _ := connectAs(t, url, clientOpts(t, a)...)
		ctx := testContext(t)
		if _, err := EnsureStream(ctx, js, StreamConfig{}); err != nil {
			t.Fatalf("%+v: %v", a, err)
		}
		if _, err := js.Publish(ctx, testSubject, []byte("x"), jetstream.WithMsgID(msgID(i+1))); err != nil {
			t.Fatalf("%+v: publish: %v", a, err)
		}
	}
}

// TestEmbeddedReadOnlyUser: the read-only user and nkey read events live
// and through JetStream consumers, and read the schema registry, but
// cannot store anything in the stream by any of the ways tried: publishing
// into it, having a consumer of another stream deliver into it, or
// changing the stream; nor can they listen on tablecast's own inboxes.
func TestEmbeddedReadOnlyUser(t *testing.T) {
	t.Parallel() // see parallelTests
	readKey, readSeed := newUserKey(t)
	url, js := startWithReadOnly(t, readKey)
	ctx := testContext(t)
	n := 0
	publish := func() {
		t.Helper()
		n++
		if _, err := js.Publish(ctx, testSubject, []byte("real"), jetstream.WithMsgID(msgID(n))); err != nil {
			t.Fatal(err)
		}
	}
	publish()

	for _, reader := range []ClientAuth{{User: "reader", Password: "read-secret"}, {NKeyFile: readSeed}} {
		rnc, rjs, asyncErrs := connectAs(t, url, clientOpts(t, reader)...)

		// Live events.
		sub, err := rnc.SubscribeSync("tablecast.>")
		if err != nil {
			t.Fatal(err)
		}
		if err := rnc.Flush(); err != nil {
			t.Fatal(err)
		}
		publish()
		if m, err := sub.NextMsg(5 * time.Second); err != nil || string(m.Data) != "real" {
			t.Fatalf("%+v: live event: %v", reader, err)
		}

		// A durable consumer, fetched and acknowledged.
		cons, err := rjs.CreateOrUpdateConsumer(ctx, DefaultStreamName, jetstream.ConsumerConfig{
			Durable: "billing-" + reader.User, AckPolicy: jetstream.AckExplicitPolicy, FilterSubject: "tablecast.>"})
		if err != nil {
			t.Fatalf("%+v: create consumer: %v", reader, err)
		}
		batch, err := cons.Fetch(n, jetstream.FetchMaxWait(5*time.Second))
		if err != nil {
			t.Fatal(err)
		}
		got := 0
		for m := range batch.Messages() {
			if err := m.Ack(); err != nil {
				t.Fatalf("ack: %v", err)
			}
			got++
		}
		if got != n {
			t.Fatalf("%+v: fetched %d events, want %d", reader, got, n)
		}
		// The schema registry, by key.
		kv, err := rjs.KeyValue(ctx, DefaultSchemaBucket)
		if err != nil {
			t.Fatalf("%+v: open schema registry: %v", reader, err)
		}
		if _, err := kv.Get(ctx, "shop.public.orders"); err != nil {
			t.Fatalf("%+v: read schema: %v", reader, err)
		}
		// The row state: one row by key, and a table's rows in a batch.
		rows, err := rjs.Stream(ctx, RowsStreamName(DefaultStreamName))
		if err != nil {
			t.Fatalf("%+v: row state's stream: %v", reader, err)
		}
		if m, err := rows.GetLastMsgForSubject(ctx, rowSubject+"2"); err != nil || string(m.Data) != `{"id":2}` {
			t.Fatalf("%+v: read a row by key: %v", reader, err)
		}
		if got := directBatch(t, rnc, RowsStreamName(DefaultStreamName), rowSubject+"*"); !slices.Equal(got, []string{`{"id":1}`, `{"id":2}`}) {
			t.Fatalf("%+v: a table's rows in a batch: %q", reader, got)
		}
		cctx, cancel := context.WithTimeout(ctx, time.Second) // a refused request gets no answer
		if _, err := rjs.CreateOrUpdateConsumer(cctx, RowsStreamName(DefaultStreamName), jetstream.ConsumerConfig{AckPolicy: jetstream.AckNonePolicy}); err == nil {
			t.Fatalf("%+v: created a consumer of the row state", reader)
		}
		cancel()
		// A claim (a large row), resolved whole; but no consumer of the
		// objects' bucket, which could deliver into the stream's subjects.
		if got, err := NewResolver(rjs).Fetch(ctx, readOnlyClaim); err != nil || !bytes.Equal(got, readOnlyObject) {
			t.Fatalf("%+v: resolve a claim: %d bytes, %v; want the %d stored", reader, len(got), err, len(readOnlyObject))
		}
		cctx, cancel = context.WithTimeout(ctx, time.Second)
		if _, err := rjs.CreateOrUpdateConsumer(cctx, "OBJ_"+DefaultPayloadBucket, jetstream.ConsumerConfig{AckPolicy: jetstream.AckNonePolicy}); err == nil {
			t.Fatalf("%+v: created a consumer of the claims' objects", reader)
		}
		cancel()

		// Forgeries: none may store anything.
		before := streamMsgs(t, js)
		_ = rnc.Publish("tablecast.shop.public.orders.create", []byte(`{"forged":true}`))
		pctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		if _, err := rjs.Publish(pctx, "tablecast.shop.public.orders.create", []byte(`{"forged":true}`)); err == nil {
			t.Fatalf("%+v: a JetStream publish into the stream was acknowledged", reader)
		}
		cancel()
		// A push consumer of the bucket delivering into the stream's subjects,
		// with the read user's own subscription there to make it deliver.
		push := `{"stream_name":"KV_TABLECAST_SCHEMAS","config":{"deliver_subject":"tablecast.shop.public.orders.create","deliver_policy":"all","ack_policy":"none"}}`
		if _, err := rnc.Request("$JS.API.CONSUMER.CREATE.KV_TABLECAST_SCHEMAS", []byte(push), time.Second); err == nil {
			t.Fatalf("%+v: created a consumer on the schema bucket", reader)
		}
		stm, err := rjs.Stream(ctx, DefaultStreamName)
		if err != nil {
			t.Fatal(err)
		}
		// Refused requests get no answer: give each a second.
		for what, try := range map[string]func(context.Context) error{
			"purged the stream":         func(ctx context.Context) error { return stm.Purge(ctx) },
			"deleted a message":         func(ctx context.Context) error { return stm.DeleteMsg(ctx, 1) },
			"deleted the stream":        func(ctx context.Context) error { return rjs.DeleteStream(ctx, DefaultStreamName) },
			"wrote the schema registry": func(ctx context.Context) error { _, err := kv.Put(ctx, "shop.public.orders", []byte(`{}`)); return err },
			"changed the stream": func(ctx context.Context) error {
				_, err := rjs.UpdateStream(ctx, jetstream.StreamConfig{Name: DefaultStreamName, Subjects: []string{"tablecast.>"}, MaxMsgs: 1})
				return err
			},
		} {
			tctx, cancel := context.WithTimeout(ctx, time.Second)
			err := try(tctx)
			cancel()
			if err == nil {
				t.Fatalf("%+v: %s", reader, what)
			}
		}
		if _, err := rnc.SubscribeSync(InboxPrefix + ".>"); err != nil {
			t.Fatal(err)
		}
		_ = rnc.Flush()
		time.Sleep(500 * time.Millisecond) // let a stored forgery and the server's answers arrive
		if after := streamMsgs(t, js); after != before {
			t.Fatalf("%+v: the stream went from %d to %d messages", reader, before, after)
		}
		violations := map[string]bool{}
	drain:
		for {
			select {
			case err := <-asyncErrs:
				violations[err.Error()] = true
			default:
				break drain
			}
		}
		var subViolation bool
		for v := range violations {
			subViolation = subViolation || strings.Contains(v, "Subscription to \""+InboxPrefix)
		}
		if !subViolation {
			t.Fatalf("%+v: subscribing to tablecast's inboxes was not refused (errors: %v)", reader, violations)
		}
	}
}

// startWithReadOnly starts an embedded server with tablecast's user "tc"
// and the read-only user "reader" (and readKeys), the event stream and the
// schema registry holding shop.public.orders; it returns the server's URL
// and tc's JetStream.
func startWithReadOnly(t *testing.T, readKeys ...string) (string, jetstream.JetStream) {
	t.Helper()
	e, err := StartEmbedded(EmbeddedConfig{Listen: "127.0.0.1:-1", StoreDir: t.TempDir(), Logger: quietLogger(),
		Auth: EmbeddedAuth{User: "tc", Password: "secret", ReadUser: "reader", ReadPassword: "read-secret", ReadNKeys: readKeys}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(e.Shutdown)
	_, js, _ := connectAs(t, e.ClientURL(), clientOpts(t, ClientAuth{User: "tc", Password: "secret", InboxPrefix: InboxPrefix})...)
	ctx := testContext(t)
	if _, err := EnsureStream(ctx, js, StreamConfig{}); err != nil {
		t.Fatal(err)
	}
	reg, err := OpenRegistry(ctx, js, "", 1)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := reg.kv.Put(ctx, "shop.public.orders", []byte(`{"columns":[]}`)); err != nil {
		t.Fatal(err)
	}
	// The row state's stream as package rowstate makes it, holding two rows.
	if _, err := js.CreateStream(ctx, jetstream.StreamConfig{Name: RowsStreamName(DefaultStreamName), Subjects: []string{rowsSubjects},
		MaxMsgsPerSubject: 1, AllowDirect: true}); err != nil {
		t.Fatal(err)
	}
	for _, row := range []string{"1", "2"} {
		if _, err := js.Publish(ctx, rowSubject+row, []byte(`{"id":`+row+`}`)); err != nil {
			t.Fatal(err)
		}
	}
	// A large row's event, stored as the reader stores it (readOnlyClaim).
	payloads, err := OpenPayloadStore(ctx, js, PayloadStoreConfig{MaxAge: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	if err := payloads.Put(ctx, readOnlyClaim.Object, readOnlyObject); err != nil {
		t.Fatal(err)
	}
	return e.ClientURL(), js
}

// readOnlyObject is the event of startWithReadOnly's claim: 5 MiB, which
// its reader reads in more than one batch of chunks.
var (
	readOnlyObject = bytes.Repeat([]byte("large row "), 512*1024)
	readOnlyClaim  = Claim{Bucket: DefaultPayloadBucket, Object: PayloadObjectName("shop", "00000000016B3748-0003"), Size: int64(len(readOnlyObject))}
)

// rowsSubjects and rowSubject are the row state's subjects (package
// rowstate) and the prefix of the test's rows in it.
const (
	rowsSubjects = "tablecast_rows.>"
	rowSubject   = "tablecast_rows.shop.public.orders."
)

// directBatch asks stream for the last message of each subject matching
// filter in one batch of direct gets, and returns their bodies in the order
// they came.
func directBatch(t *testing.T, nc *nats.Conn, stream, filter string) []string {
	t.Helper()
	inbox := nc.NewRespInbox()
	sub, err := nc.SubscribeSync(inbox)
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Unsubscribe()
	req := `{"multi_last":["` + filter + `"],"batch":100}`
	if err := nc.PublishRequest("$JS.API.DIRECT.GET."+stream, inbox, []byte(req)); err != nil {
		t.Fatal(err)
	}
	var got []string
	for {
		m, err := sub.NextMsg(5 * time.Second)
		if err != nil {
			t.Fatalf("batch of direct gets from %s: %v (after %q)", stream, err, got)
		}
		if len(m.Data) == 0 && m.Header.Get("Status") != "" {
			if st := m.Header.Get("Status"); st != "204" {
				t.Fatalf("batch of direct gets from %s: status %s %s", stream, st, m.Header.Get("Description"))
			}
			return got // end of the batch
		}
		got = append(got, string(m.Data))
	}
}

func streamMsgs(t *testing.T, js jetstream.JetStream) uint64 {
	t.Helper()
	s, err := js.Stream(testContext(t), DefaultStreamName)
	if err != nil {
		t.Fatal(err)
	}
	info, err := s.Info(testContext(t))
	if err != nil {
		t.Fatal(err)
	}
	return info.State.Msgs
}

// TestEmbeddedTLS: with a certificate, clients must use TLS; tablecast's
// own clients accept exactly that certificate, whatever names it carries.
// A client that does not trust it, or expects another, is refused at once.
func TestEmbeddedTLS(t *testing.T) {
	cert, key := selfSignedCert(t, "nats.example.com")
	e, err := StartEmbedded(EmbeddedConfig{Listen: "127.0.0.1:-1", StoreDir: t.TempDir(), Logger: quietLogger(),
		TLSCert: cert, TLSKey: key, Auth: EmbeddedAuth{User: "tc", Password: "secret"}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(e.Shutdown)
	url := e.ClientURL()
	if !strings.HasPrefix(url, "tls://") {
		t.Fatalf("ClientURL %q is not tls://", url)
	}
	_, js, _ := connectAs(t, url, clientOpts(t, ClientAuth{User: "tc", Password: "secret", PinnedCertFile: cert})...)
	if _, err := EnsureStream(testContext(t), js, StreamConfig{}); err != nil {
		t.Fatal(err)
	}
	refused(t, url, "certificate", clientOpts(t, ClientAuth{User: "tc", Password: "secret"})...)
	other, _ := selfSignedCert(t, "nats.example.com")
	refused(t, url, "a certificate other than the one configured", clientOpts(t, ClientAuth{User: "tc", Password: "secret", PinnedCertFile: other})...)
	refused(t, "nats://"+strings.TrimPrefix(url, "tls://"), "certificate")
}

func TestClientAuthOneWay(t *testing.T) {
	_, seed := newUserKey(t)
	if _, err := (ClientAuth{User: "u", Password: "p", NKeyFile: seed}).Options(); err == nil || !strings.Contains(err.Error(), "choose one") {
		t.Fatalf("two ways of signing in: %v", err)
	}
	if _, err := (ClientAuth{NKeyFile: filepath.Join(t.TempDir(), "missing")}).Options(); err == nil {
		t.Fatal("a missing seed file was accepted")
	}
	if _, err := (ClientAuth{CredsFile: seed}).Options(); err == nil || !strings.Contains(err.Error(), "no user JWT") {
		t.Fatalf("a seed file as credentials file: %v", err)
	}
	if pub, err := NKeyPublicKey(seed); err != nil || !strings.HasPrefix(pub, "U") {
		t.Fatalf("NKeyPublicKey = %q, %v", pub, err)
	}
}

func TestEmbeddedAuthBadConfig(t *testing.T) {
	for _, a := range []EmbeddedAuth{
		{User: "tc"},
		{ReadUser: "r"},
		{User: "x", Password: "1", ReadUser: "x", ReadPassword: "2"},
		{NKeys: []string{"not-a-key"}},
		{ReadNKeys: []string{"SUAM4"}},
	} {
		if e, err := StartEmbedded(EmbeddedConfig{Listen: "127.0.0.1:-1", StoreDir: t.TempDir(), Logger: quietLogger(), Auth: a}); err == nil {
			e.Shutdown()
			t.Errorf("StartEmbedded with %+v succeeded", a)
		}
	}
}

// newUserKey makes a user nkey and returns its public key and the path of
// a file holding its seed.
func newUserKey(t *testing.T) (pub, seedFile string) {
	t.Helper()
	kp, err := nkeys.CreateUser()
	if err != nil {
		t.Fatal(err)
	}
	pub, _ = kp.PublicKey()
	seed, _ := kp.Seed()
	seedFile = filepath.Join(t.TempDir(), "user.nk")
	if err := os.WriteFile(seedFile, seed, 0o600); err != nil {
		t.Fatal(err)
	}
	return pub, seedFile
}

// selfSignedCert is a certificate for name (not for 127.0.0.1).
func selfSignedCert(t *testing.T, name string) (certFile, keyFile string) {
	c := testcert.New(t, name)
	return c.CertFile, c.KeyFile
}

// TestReadOnlyCannotStoreThroughReplies: a read-only identity names any
// reply subject it likes on the requests it may send, and JetStream answers
// there (a copy of a stored event for a direct get, a JSON response for any
// other call, the messages of a consumer for a fetch). In the account of the
// stream and buckets, an answer sent to "tablecast.…", to the control
// subject or to a bucket's subjects would be stored as an event or a key.
// Every request a read-only identity may send, with each of those as its
// reply subject, and a push consumer delivering into them: nothing is
// stored anywhere, and reading still works.
func TestReadOnlyCannotStoreThroughReplies(t *testing.T) {
	url, js := startWithReadOnly(t)
	ctx := testContext(t)
	topics, err := js.CreateOrUpdateKeyValue(ctx, jetstream.KeyValueConfig{Bucket: DefaultTopicBucket})
	if err != nil {
		t.Fatal(err)
	}
	// Without a message id: a copy of it is not a duplicate the stream
	// would drop, whatever its duplicate window.
	if _, err := js.Publish(ctx, testSubject, []byte(`{"op":"create"}`)); err != nil {
		t.Fatal(err)
	}
	if _, err := js.CreateOrUpdateConsumer(ctx, DefaultStreamName, jetstream.ConsumerConfig{Durable: "billing", AckPolicy: jetstream.AckExplicitPolicy}); err != nil {
		t.Fatal(err)
	}
	counts := func() [4]uint64 {
		t.Helper()
		var c [4]uint64
		for i, name := range []string{DefaultStreamName, "KV_" + DefaultSchemaBucket, "KV_" + DefaultTopicBucket, RowsStreamName(DefaultStreamName)} {
			s, err := js.Stream(ctx, name)
			if err != nil {
				t.Fatal(err)
			}
			info, err := s.Info(ctx)
			if err != nil {
				t.Fatal(err)
			}
			c[i] = info.State.Msgs
		}
		return c
	}
	before := counts()

	rnc, rjs, _ := connectAs(t, url, clientOpts(t, ClientAuth{User: "reader", Password: "read-secret"})...)
	targets := []string{testSubject, "tablecast.shop.public.customers.delete", ControlSubject(""),
		"$KV." + DefaultSchemaBucket + ".shop.public.orders", "$KV." + DefaultTopicBucket + ".news", rowSubject + "3"}
	bodies := map[string]string{
		"$JS.API.STREAM.MSG.GET." + DefaultStreamName:                 `{"seq":1}`,
		"$JS.API.DIRECT.GET." + DefaultStreamName:                     `{"seq":1}`,
		"$JS.API.STREAM.MSG.GET." + RowsStreamName(DefaultStreamName): `{"seq":1}`,
		"$JS.API.DIRECT.GET." + RowsStreamName(DefaultStreamName):     `{"multi_last":["` + rowsSubjects + `"],"batch":10}`,
		"$JS.API.CONSUMER.MSG.NEXT." + DefaultStreamName + ".billing": `{"batch":1,"no_wait":true}`,
	}
	for subject := range readOnlyRequests(DefaultStreamName) {
		// Wildcards stand for a name: the durable consumer, a key.
		concrete := strings.ReplaceAll(subject, ">", "billing")
		if subject == "$JS.API.DIRECT.GET."+RowsStreamName(DefaultStreamName)+".>" {
			concrete = strings.ReplaceAll(subject, ">", rowSubject+"1")
		}
		if strings.HasPrefix(subject, "$JS.API.DIRECT.GET.KV_") {
			concrete = strings.ReplaceAll(subject, ">", "$KV."+strings.TrimPrefix(strings.TrimSuffix(subject, ".>"), "$JS.API.DIRECT.GET.KV_")+".shop.public.orders")
		}
		body := bodies[concrete]
		if body == "" {
			body = "{}"
		}
		for _, reply := range targets {
			if err := rnc.PublishRequest(concrete, reply, []byte(body)); err != nil {
				t.Fatalf("request %s: %v", concrete, err)
			}
		}
	}
	// A push consumer of the stream, delivering into another stream's
	// subjects (its own are refused by JetStream).
	for _, target := range targets[3:] {
		push := `{"stream_name":"` + DefaultStreamName + `","config":{"deliver_subject":"` + target + `","deliver_policy":"all","ack_policy":"none"}}`
		_, _ = rnc.Request("$JS.API.CONSUMER.CREATE."+DefaultStreamName, []byte(push), time.Second)
	}
	if err := rnc.Flush(); err != nil {
		t.Fatal(err)
	}
	time.Sleep(2 * time.Second) // let what would be stored arrive
	if after := counts(); after != before {
		t.Fatalf("messages in the stream, the schema bucket, the topic bucket and the row state went from %v to %v", before, after)
	}
	if _, err := topics.Get(ctx, "news"); !errors.Is(err, jetstream.ErrKeyNotFound) {
		t.Fatalf("topic news: %v, want no such key", err)
	}

	// What a read-only identity is for still works through the account's
	// imports: the events live and through a consumer, the registry by key.
	sub, err := rnc.SubscribeSync("tablecast.>")
	if err != nil {
		t.Fatal(err)
	}
	if err := rnc.Flush(); err != nil {
		t.Fatal(err)
	}
	if _, err := js.Publish(ctx, testSubject, []byte("live")); err != nil {
		t.Fatal(err)
	}
	if m, err := sub.NextMsg(5 * time.Second); err != nil || string(m.Data) != "live" {
		t.Fatalf("live event: %v", err)
	}
	cons, err := rjs.OrderedConsumer(ctx, DefaultStreamName, jetstream.OrderedConsumerConfig{})
	if err != nil {
		t.Fatalf("ordered consumer: %v", err)
	}
	m, err := cons.Next(jetstream.FetchMaxWait(5 * time.Second))
	if err != nil || string(m.Data()) != `{"op":"create"}` {
		t.Fatalf("first event through a consumer: %v", err)
	}
	kv, err := rjs.KeyValue(ctx, DefaultSchemaBucket)
	if err != nil {
		t.Fatal(err)
	}
	if e, err := kv.Get(ctx, "shop.public.orders"); err != nil || string(e.Value()) != `{"columns":[]}` {
		t.Fatalf("schema by key: %v", err)
	}
}
