package wsgate

import (
	"crypto/sha256"
	"encoding/base64"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

func TestPageServed(t *testing.T) {
	srv := httptest.NewServer(PageHandler())
	defer srv.Close()

	resp, err := http.Get(srv.URL + "/?table=public.orders")
	if err != nil {
		t.Fatal(err)
	}
	body, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("status %d, want 200", resp.StatusCode)
	}
	for name, want := range map[string]string{
		"Content-Type":           "text/html; charset=utf-8",
		"Cache-Control":          "no-cache",
		"X-Content-Type-Options": "nosniff",
		"Referrer-Policy":        "no-referrer",
	} {
		if got := resp.Header.Get(name); got != want {
			t.Errorf("%s: %q, want %q", name, got, want)
		}
	}
	csp := resp.Header.Get("Content-Security-Policy")
	for _, want := range []string{
		"default-src 'none'",
		"connect-src 'self' ws: wss:",
		"script-src 'sha256-",
		"style-src 'sha256-",
	} {
		if !strings.Contains(csp, want) {
			t.Errorf("Content-Security-Policy %q lacks %q", csp, want)
		}
	}
	if strings.Contains(csp, "unsafe") {
		t.Errorf("Content-Security-Policy %q allows unsafe sources", csp)
	}

	page := string(body)
	for _, want := range []string{
		`type: "subscribe"`, // subscribes…
		`type: "topics"`,    // …to a table from the list,
		"m.from = lastSeq",  // resumes after a reconnect,
		`"/ws"`,             // on the gateway's endpoint,
		`get("token")`,      // passing the page's token on,
		`"/api/status"`,     // shows the gateway's status,
		"m.snapshot = true", // and a table's current rows.
	} {
		if !strings.Contains(page, want) {
			t.Errorf("page lacks %q", want)
		}
	}
	// One small file, served on every load without a build step.
	if len(body) >= 32<<10 {
		t.Errorf("page is %d bytes, want < 32 KiB", len(body))
	}
}

// TestPageCSPHashes checks that the policy allows exactly the page's own
// inline script and style, so that the page works under it: a browser
// hashes an inline element's text as written.
func TestPageCSPHashes(t *testing.T) {
	hash := func(s string) string {
		sum := sha256.Sum256([]byte(s))
		return "'sha256-" + base64.StdEncoding.EncodeToString(sum[:]) + "'"
	}
	page := string(pageHTML)
	for _, tag := range []string{"script", "style"} {
		open, end := "<"+tag+">", "</"+tag+">"
		if n := strings.Count(page, "<"+tag); n != 1 {
			t.Fatalf("page has %d <%s> elements, want 1", n, tag)
		}
		i, j := strings.Index(page, open), strings.Index(page, end)
		if i < 0 || j < i {
			t.Fatalf("no %s…%s in the page", open, end)
		}
		want := tag + "-src " + hash(page[i+len(open):j]) + ";"
		if !strings.Contains(pageCSP, want) {
			t.Errorf("Content-Security-Policy %q lacks %q", pageCSP, want)
		}
	}
}

// TestPageSelfContained checks the page's constraints: nothing loaded from
// elsewhere, no inline handlers (which the policy would block), and no
// event content written as HTML.
func TestPageSelfContained(t *testing.T) {
	page := string(pageHTML)
	for _, bad := range []string{"http://", "https://", " src=", " href=", "@import", " onclick=", " onload=",
		"innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval("} {
		if strings.Contains(page, bad) {
			t.Errorf("page contains %q", bad)
		}
	}
}

func TestPageMethods(t *testing.T) {
	h := PageHandler()

	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest(http.MethodHead, "/", nil))
	if rec.Code != http.StatusOK || rec.Body.Len() != 0 {
		t.Errorf("HEAD: status %d with %d body bytes, want 200 and none", rec.Code, rec.Body.Len())
	}
	if got := rec.Header().Get("Content-Type"); got != "text/html; charset=utf-8" {
		t.Errorf("HEAD: Content-Type %q", got)
	}

	for _, m := range []string{http.MethodPost, http.MethodPut, http.MethodDelete, http.MethodPatch, http.MethodOptions} {
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, httptest.NewRequest(m, "/", strings.NewReader("x")))
		if rec.Code != http.StatusMethodNotAllowed {
			t.Errorf("%s: status %d, want 405", m, rec.Code)
		}
		if got := rec.Header().Get("Allow"); got != "GET, HEAD" {
			t.Errorf("%s: Allow %q, want \"GET, HEAD\"", m, got)
		}
	}

	// Revalidation under no-cache: the ETag answers 304.
	rec = httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/", nil))
	etag := rec.Header().Get("ETag")
	if etag == "" {
		t.Fatal("no ETag")
	}
	req := httptest.NewRequest(http.MethodGet, "/", nil)
	req.Header.Set("If-None-Match", etag)
	rec = httptest.NewRecorder()
	h.ServeHTTP(rec, req)
	if rec.Code != http.StatusNotModified {
		t.Errorf("If-None-Match: status %d, want 304", rec.Code)
	}
}

func TestInlineElements(t *testing.T) {
	html := `<scripts>x</scripts><script>a</script><script type="module">b</script><style>c</style>`
	got := inlineElements(html, "script")
	if len(got) != 2 || got[0] != "a" || got[1] != "b" {
		t.Errorf("scripts %q, want [a b]", got)
	}
	lf, crlf := buildPageCSP([]byte("<script>\na\n</script>")), buildPageCSP([]byte("<script>\r\na\r\n</script>"))
	if lf != crlf {
		t.Errorf("CRLF line ends change the hash: %q and %q", lf, crlf)
	}
	if got := buildPageCSP([]byte("<p>no script</p>")); !strings.Contains(got, "script-src 'none';") {
		t.Errorf("page without scripts: %q", got)
	}
}
