package stream

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"maps"
	"os"
	"slices"

	"github.com/nats-io/jwt/v2"
	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nkeys"
)

// InboxPrefix is the prefix of the reply subjects of tablecast's own
// connections to the embedded server, instead of nats.go's "_INBOX".
// Read-only users may subscribe to "_INBOX.>" (their replies arrive there)
// but not to this prefix, so they can neither watch tablecast's requests
// and acknowledgements nor learn where to send it forged ones.
const InboxPrefix = "_TABLECAST_INBOX"

// EmbeddedAuth is who may connect to the embedded server. Anyone who gives
// User and Password, Token, or signs with one of NKeys may do anything; the
// read-only identities may only read (see ReadOnlyPermissions). The zero
// value lets anyone in.
type EmbeddedAuth struct {
	// User and Password: a user with every permission. Default (empty): none.
	User, Password string
	// Token: clients presenting it have every permission. Default (empty):
	// none.
	Token string
	// NKeys are public user nkeys ("U…") with every permission. Default:
	// none.
	NKeys []string
	// ReadUser and ReadPassword: a user that may only read. Default
	// (empty): none.
	ReadUser, ReadPassword string
	// ReadNKeys are public user nkeys that may only read. Default: none.
	ReadNKeys []string
	// Stream and Prefix are what read-only users read: the stream and the
	// subjects "<Prefix>.>". Defaults (empty): DefaultStreamName and
	// DefaultPrefix.
	Stream, Prefix string
}

// enabled reports whether any credentials are configured.
func (a EmbeddedAuth) enabled() bool {
	return a.User != "" || a.Token != "" || len(a.NKeys) > 0 || a.ReadUser != "" || len(a.ReadNKeys) > 0
}

// serverUsers returns the server's users and nkey users.
func (a EmbeddedAuth) serverUsers() ([]*server.User, []*server.NkeyUser, error) {
	var (
		users []*server.User
		keys  []*server.NkeyUser
		errs  []error
	)
	if (a.User == "") != (a.Password == "") {
		errs = append(errs, errors.New("a user needs a password, and a password a user"))
	}
	if (a.ReadUser == "") != (a.ReadPassword == "") {
		errs = append(errs, errors.New("the read-only user needs a password, and its password a user"))
	}
	if a.User != "" && a.User == a.ReadUser {
		errs = append(errs, fmt.Errorf("user %q is given both every permission and read-only ones", a.User))
	}
	if a.User != "" {
		users = append(users, &server.User{Username: a.User, Password: a.Password})
	}
	read := ReadOnlyPermissions(a.Stream, a.Prefix)
	// Read-only identities sit in an account of their own (wired to
	// tablecast's by readersAccount when the server starts): see ReadersAccount.
	readers := server.NewAccount(ReadersAccount)
	if a.ReadUser != "" {
		users = append(users, &server.User{Username: a.ReadUser, Password: a.ReadPassword, Permissions: read, Account: readers})
	}
	seen := map[string]bool{}
	for _, k := range a.NKeys {
		if !nkeys.IsValidPublicUserKey(k) {
			errs = append(errs, fmt.Errorf("nkey %q is not a public user key (U…)", k))
			continue
		}
		seen[k] = true
		keys = append(keys, &server.NkeyUser{Nkey: k})
	}
	for _, k := range a.ReadNKeys {
		switch {
		case !nkeys.IsValidPublicUserKey(k):
			errs = append(errs, fmt.Errorf("read-only nkey %q is not a public user key (U…)", k))
		case seen[k]:
			errs = append(errs, fmt.Errorf("nkey %s is given both every permission and read-only ones", k))
		default:
			keys = append(keys, &server.NkeyUser{Nkey: k, Permissions: read, Account: readers})
		}
	}
	return users, keys, errors.Join(errs...)
}

// ReadersAccount is the NATS account of read-only identities on the
// embedded server. tablecast's own identities stay in the server's global
// account, where the stream and buckets are; the readers' account imports
// from it the events ("<prefix>.>") and the JetStream requests of
// ReadOnlyPermissions, and nothing else.
//
// An account of their own, not only permissions, because NATS checks what a
// client publishes but not the reply subject it names: JetStream answers
// every request on its reply subject, and in the account of the stream an
// answer sent to "<prefix>.…" would be stored as an event (a copy of an
// earlier event from a direct get, an API response from any other call).
// Through an import, replies travel on subjects the server makes up and
// routes back to the readers' account, where no stream captures anything.
const ReadersAccount = "TABLECAST_READERS"

// readOnlyRequests are the JetStream subjects a read-only identity may
// publish to, with whether JetStream answers each request with more than
// one message (a fetch of a consumer, a batch of direct gets).
func readOnlyRequests(stream string) map[string]bool {
	reqs := map[string]bool{
		"$JS.API.INFO":                                     false,
		"$JS.API.STREAM.NAMES":                             false,
		"$JS.API.STREAM.INFO." + stream:                    false,
		"$JS.API.STREAM.MSG.GET." + stream:                 false,
		"$JS.API.DIRECT.GET." + stream:                     true,
		"$JS.API.DIRECT.GET." + stream + ".>":              false,
		"$JS.API.CONSUMER.CREATE." + stream:                false,
		"$JS.API.CONSUMER.CREATE." + stream + ".>":         false,
		"$JS.API.CONSUMER.DURABLE.CREATE." + stream + ".>": false,
		"$JS.API.CONSUMER.INFO." + stream + ".>":           false,
		"$JS.API.CONSUMER.NAMES." + stream:                 false,
		"$JS.API.CONSUMER.LIST." + stream:                  false,
		"$JS.API.CONSUMER.MSG.NEXT." + stream + ".>":       true,
		"$JS.ACK." + stream + ".>":                         false,
		"$JS.FC." + stream + ".>":                          false,
	}
	// The row state, read by key or in batches (a table's current rows):
	// direct gets only. A consumer of it could be told to deliver into
	// "<prefix>.>" (see ReadOnlyPermissions).
	rows := RowsStreamName(stream)
	reqs["$JS.API.STREAM.INFO."+rows] = false
	reqs["$JS.API.STREAM.MSG.GET."+rows] = false
	reqs["$JS.API.DIRECT.GET."+rows] = true
	reqs["$JS.API.DIRECT.GET."+rows+".>"] = false
	for _, bucket := range []string{DefaultSchemaBucket, DefaultTopicBucket} {
		kv := "KV_" + bucket
		reqs["$JS.API.STREAM.INFO."+kv] = false
		reqs["$JS.API.STREAM.MSG.GET."+kv] = false
		reqs["$JS.API.DIRECT.GET."+kv+".>"] = false
	}
	// The objects of claims (large rows): an object's description by
	// its subject, and its chunks in batches (package claim reads them
	// so). Direct gets only, as for the row state.
	obj := "OBJ_" + DefaultPayloadBucket
	reqs["$JS.API.STREAM.INFO."+obj] = false
	reqs["$JS.API.STREAM.MSG.GET."+obj] = false
	reqs["$JS.API.DIRECT.GET."+obj] = true
	reqs["$JS.API.DIRECT.GET."+obj+".>"] = false
	return reqs
}

// ReadOnlyPermissions are the permissions of a backend service that reads
// the events of stream (default DefaultStreamName) under prefix (default
// DefaultPrefix) and must not be able to change anything:
//
//   - subscribe to "<prefix>.>" (live events) and "_INBOX.>" (replies);
//   - JetStream: account info, the stream's info and messages, consumers on
//     the stream (create, durable or not; info; list; fetch; ack and flow
//     control), the row state's info and messages (direct gets, one row or
//     a batch), reading the schema registry and topic buckets by key, and
//     reading the objects of claims (DefaultPayloadBucket) by direct gets.
//
// Nothing else may be published: not into "<prefix>.>", not to the
// stream's or the buckets' management (update, purge, delete, message
// delete, snapshot), not to consumers' deletion, not to another client's
// inbox. Consumers are allowed on the event stream only: JetStream refuses
// a consumer that delivers into its own stream's subjects, but a consumer of
// another stream (a bucket) could be told to deliver into "<prefix>.>",
// where the event stream would store what it delivers.
//
// Permissions alone do not keep such a service from storing into the
// stream (see ReadersAccount): they must be given in an account that
// imports these subjects, as the embedded server does and
// deploy/nats/nats.conf shows.
func ReadOnlyPermissions(stream, prefix string) *server.Permissions {
	if stream == "" {
		stream = DefaultStreamName
	}
	if prefix == "" {
		prefix = DefaultPrefix
	}
	pub := slices.Sorted(maps.Keys(readOnlyRequests(stream)))
	return &server.Permissions{
		Publish:   &server.SubjectPermission{Allow: pub},
		Subscribe: &server.SubjectPermission{Allow: []string{prefix + ".>", "_INBOX.>"}},
	}
}

// wireReaders gives the readers' account of srv, if its options have one,
// what it imports from the global account: the events of prefix live and
// the JetStream requests of ReadOnlyPermissions for stream. It runs before
// the server accepts clients.
func wireReaders(srv *server.Server, stream, prefix string) error {
	readers, err := srv.LookupAccount(ReadersAccount)
	if err != nil {
		return nil // no read-only identity
	}
	if stream == "" {
		stream = DefaultStreamName
	}
	if prefix == "" {
		prefix = DefaultPrefix
	}
	own := srv.GlobalAccount()
	only := []*server.Account{readers}
	if err := own.AddStreamExport(prefix+".>", only); err != nil {
		return fmt.Errorf("export the events to the read-only account: %w", err)
	}
	if err := readers.AddStreamImport(own, prefix+".>", ""); err != nil {
		return fmt.Errorf("import the events into the read-only account: %w", err)
	}
	for subject, streamed := range readOnlyRequests(stream) {
		resp := server.Singleton
		if streamed {
			resp = server.Streamed
		}
		if err := own.AddServiceExportWithResponse(subject, resp, only); err != nil {
			return fmt.Errorf("export %s to the read-only account: %w", subject, err)
		}
		if err := readers.AddServiceImport(own, subject, subject); err != nil {
			return fmt.Errorf("import %s into the read-only account: %w", subject, err)
		}
	}
	return nil
}

// readersAccount gives the read-only identities of opts (those in the
// account named ReadersAccount) a new account of that name, as a server
// needs one of its own at each start.
func readersAccount(opts *server.Options) {
	var acc *server.Account
	get := func() *server.Account {
		if acc == nil {
			acc = server.NewAccount(ReadersAccount)
			opts.Accounts = append(opts.Accounts, acc)
		}
		return acc
	}
	opts.Accounts = nil
	for _, u := range opts.Users {
		if u.Account != nil && u.Account.Name == ReadersAccount {
			u.Account = get()
		}
	}
	for _, u := range opts.Nkeys {
		if u.Account != nil && u.Account.Name == ReadersAccount {
			u.Account = get()
		}
	}
}

// ClientAuth is how one of tablecast's clients proves who it is to NATS and
// checks the server. Set at most one way of proving: User and Password,
// Token, NKeyFile or CredsFile.
type ClientAuth struct {
	// User and Password, sent to the server.
	User, Password string
	// Token, sent to the server.
	Token string
	// NKeyFile is a file holding a user nkey seed ("SU…"); the client signs
	// the server's challenge with it.
	NKeyFile string
	// CredsFile is a NATS credentials file (a user JWT and its seed), for
	// servers in operator mode.
	CredsFile string
	// CAFile holds PEM certificates of the authorities that sign the
	// server's certificate, for TLS to a server whose certificate the
	// system does not trust.
	CAFile string
	// PinnedCertFile holds the PEM certificate (the first in the file is
	// used) that the server must present, whatever names it carries: how
	// tablecast's own clients reach the embedded server over loopback, where
	// the certificate's names would not match. Default (empty): the
	// certificate is checked against the system's authorities (or CAFile)
	// and the server's name.
	PinnedCertFile string
	// InboxPrefix replaces "_INBOX" in reply subjects. Default (empty):
	// nats.go's.
	InboxPrefix string
}

// Options returns the nats.go options for a, reading its files.
func (a ClientAuth) Options() ([]nats.Option, error) {
	var opts []nats.Option
	n := 0
	if a.User != "" || a.Password != "" {
		n++
		opts = append(opts, nats.UserInfo(a.User, a.Password))
	}
	if a.Token != "" {
		n++
		opts = append(opts, nats.Token(a.Token))
	}
	if a.NKeyFile != "" {
		n++
		o, err := nats.NkeyOptionFromSeed(a.NKeyFile)
		if err != nil {
			return nil, fmt.Errorf("read nkey seed %s: %w", a.NKeyFile, err)
		}
		opts = append(opts, o)
	}
	if a.CredsFile != "" {
		n++
		// nats.go reads the file at each connection attempt and would
		// retry a broken one forever: read it once here.
		b, err := os.ReadFile(a.CredsFile)
		if err != nil {
			return nil, fmt.Errorf("read credentials: %w", err)
		}
		token, err := nkeys.ParseDecoratedJWT(b)
		if err == nil {
			_, err = jwt.DecodeUserClaims(token)
		}
		if err != nil {
			return nil, fmt.Errorf("credentials file %s: no user JWT: %w", a.CredsFile, err)
		}
		kp, err := nkeys.ParseDecoratedUserNKey(b)
		if err != nil {
			return nil, fmt.Errorf("credentials file %s: no user seed: %w", a.CredsFile, err)
		}
		kp.Wipe()
		opts = append(opts, nats.UserCredentials(a.CredsFile))
	}
	if n > 1 {
		return nil, errors.New("more than one way of authenticating (user and password, token, nkey, credentials file): choose one")
	}
	if a.CAFile != "" {
		if _, err := os.Stat(a.CAFile); err != nil {
			return nil, fmt.Errorf("read CA certificates: %w", err)
		}
		opts = append(opts, nats.RootCAs(a.CAFile))
	}
	if a.PinnedCertFile != "" {
		cfg, err := pinnedTLS(a.PinnedCertFile)
		if err != nil {
			return nil, err
		}
		opts = append(opts, nats.Secure(cfg))
	}
	if a.InboxPrefix != "" {
		opts = append(opts, nats.CustomInboxPrefix(a.InboxPrefix))
	}
	return opts, nil
}

// errPinMismatch: the server's certificate is not the pinned one.
var errPinMismatch = errors.New("the NATS server presented a certificate other than the one configured")

// pinnedTLS returns a TLS configuration that accepts exactly the
// certificate in file, and no other, whatever the names in it.
func pinnedTLS(file string) (*tls.Config, error) {
	pemBytes, err := os.ReadFile(file)
	if err != nil {
		return nil, fmt.Errorf("read server certificate: %w", err)
	}
	leaf, err := firstCertificate(pemBytes)
	if err != nil {
		return nil, fmt.Errorf("server certificate %s: %w", file, err)
	}
	return &tls.Config{
		MinVersion: tls.VersionTLS12,
		// The name check is replaced by the comparison below, which is
		// stricter: only this certificate is accepted.
		InsecureSkipVerify: true, //nolint:gosec // pinned in VerifyConnection
		VerifyConnection: func(cs tls.ConnectionState) error {
			if len(cs.PeerCertificates) == 0 || !bytes.Equal(cs.PeerCertificates[0].Raw, leaf.Raw) {
				return errPinMismatch
			}
			return nil
		},
	}, nil
}

// firstCertificate parses the first CERTIFICATE block of PEM data.
func firstCertificate(data []byte) (*x509.Certificate, error) {
	for {
		var block *pem.Block
		block, data = pem.Decode(data)
		if block == nil {
			return nil, errors.New("no PEM CERTIFICATE block")
		}
		if block.Type == "CERTIFICATE" {
			return x509.ParseCertificate(block.Bytes)
		}
	}
}

// NKeyPublicKey returns the public key of the user nkey seed in file, as
// nats.go reads it (a bare seed, or one in a decorated block).
func NKeyPublicKey(file string) (string, error) {
	b, err := os.ReadFile(file)
	if err != nil {
		return "", fmt.Errorf("read nkey seed: %w", err)
	}
	kp, err := nkeys.ParseDecoratedNKey(b)
	if err != nil {
		return "", fmt.Errorf("nkey seed %s: %w", file, err)
	}
	defer kp.Wipe()
	pub, err := kp.PublicKey()
	if err != nil {
		return "", fmt.Errorf("nkey seed %s: %w", file, err)
	}
	if !nkeys.IsValidPublicUserKey(pub) {
		return "", fmt.Errorf("nkey seed %s: not a user seed (SU…)", file)
	}
	return pub, nil
}
