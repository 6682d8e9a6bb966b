package wsgate

import (
	"bytes"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"testing"
)

// TestClientServed: /tablecast.js and /tablecast.d.ts are the files of
// clients/js byte for byte, with their content types, importable from
// other origins, revalidated with an ETag, and HEAD has no body.
func TestClientServed(t *testing.T) {
	srv := httptest.NewServer(ClientHandler())
	defer srv.Close()
	for _, tt := range []struct{ path, file, contentType string }{
		{"/tablecast.js", "../clients/js/tablecast.js", "text/javascript; charset=utf-8"},
		{"/tablecast.d.ts", "../clients/js/tablecast.d.ts", "application/typescript; charset=utf-8"},
	} {
		t.Run(tt.path, func(t *testing.T) {
			want, err := os.ReadFile(tt.file)
			if err != nil {
				t.Fatal(err)
			}
			resp, err := http.Get(srv.URL + tt.path)
			if err != nil {
				t.Fatal(err)
			}
			body, err := io.ReadAll(resp.Body)
			resp.Body.Close()
			if err != nil {
				t.Fatal(err)
			}
			if resp.StatusCode != http.StatusOK || !bytes.Equal(body, want) {
				t.Fatalf("GET %s: %d, %d bytes; want 200 and the %d bytes of %s", tt.path, resp.StatusCode, len(body), len(want), tt.file)
			}
			for name, value := range map[string]string{
				"Content-Type":                 tt.contentType,
				"Cache-Control":                "public, no-cache",
				"X-Content-Type-Options":       "nosniff",
				"Access-Control-Allow-Origin":  "*",
				"Cross-Origin-Resource-Policy": "cross-origin",
			} {
				if got := resp.Header.Get(name); got != value {
					t.Errorf("%s: %q, want %q", name, got, value)
				}
			}
			etag := resp.Header.Get("ETag")
			if etag == "" {
				t.Fatal("no ETag")
			}

			req, _ := http.NewRequest(http.MethodGet, srv.URL+tt.path, nil)
			req.Header.Set("If-None-Match", etag)
			resp, err = http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			if resp.StatusCode != http.StatusNotModified {
				t.Errorf("GET with If-None-Match %s: %d, want 304", etag, resp.StatusCode)
			}

			resp, err = http.Head(srv.URL + tt.path)
			if err != nil {
				t.Fatal(err)
			}
			body, _ = io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != http.StatusOK || len(body) != 0 || resp.ContentLength != int64(len(want)) {
				t.Errorf("HEAD: %d, %d bytes of body, Content-Length %d; want 200, none, %d", resp.StatusCode, len(body), resp.ContentLength, len(want))
			}

			resp, err = http.Post(srv.URL+tt.path, "text/plain", nil)
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			if resp.StatusCode != http.StatusMethodNotAllowed || resp.Header.Get("Allow") != "GET, HEAD" {
				t.Errorf("POST: %d, Allow %q; want 405 and GET, HEAD", resp.StatusCode, resp.Header.Get("Allow"))
			}
		})
	}
	if clientModule.etag == clientTypes.etag {
		t.Error("the module and its types have the same ETag")
	}
}
