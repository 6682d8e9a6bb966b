package wsgate

import (
	"bytes"
	"crypto/sha256"
	"encoding/base64"
	"net/http"
	"strings"
	"time"

	jsclient "github.com/tablecast/tablecast/clients/js"
)

// clientFile is one file of the JavaScript client as served.
type clientFile struct {
	name, contentType, etag string
	body                    []byte
}

func newClientFile(name, contentType string, body []byte) clientFile {
	sum := sha256.Sum256(body)
	return clientFile{name, contentType, `"` + base64.RawURLEncoding.EncodeToString(sum[:12]) + `"`, body}
}

var (
	clientModule = newClientFile("tablecast.js", "text/javascript; charset=utf-8", jsclient.Module)
	clientTypes  = newClientFile("tablecast.d.ts", "application/typescript; charset=utf-8", jsclient.Types)
)

// ClientHandler serves the JavaScript client (clients/js) at /tablecast.js
// and its types at /tablecast.d.ts, GET and HEAD, the same bytes as the
// files in the repository. Pages of any origin may import it (it is public
// code and is fetched without credentials), and it is revalidated on every
// use (Cache-Control: no-cache, with an ETag), so that a page always runs the
// client of the gateway it talks to.
func ClientHandler() http.Handler {
	return http.HandlerFunc(serveClient)
}

func serveClient(w http.ResponseWriter, r *http.Request) {
	f := clientModule
	if strings.HasSuffix(r.URL.Path, ".d.ts") {
		f = clientTypes
	}
	h := w.Header()
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		h.Set("Allow", "GET, HEAD")
		http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
		return
	}
	h.Set("Content-Type", f.contentType)
	h.Set("Cache-Control", "public, no-cache")
	h.Set("ETag", f.etag)
	h.Set("X-Content-Type-Options", "nosniff")
	// A module script from another origin is fetched with CORS.
	h.Set("Access-Control-Allow-Origin", "*")
	h.Set("Cross-Origin-Resource-Policy", "cross-origin")
	http.ServeContent(w, r, f.name, time.Time{}, bytes.NewReader(f.body))
}
