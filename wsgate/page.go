package wsgate

import (
	"bytes"
	"crypto/sha256"
	_ "embed"
	"encoding/base64"
	"net/http"
	"strings"
	"time"
)

// pageHTML is the operator's console: one self-contained file, inline CSS
// and JavaScript, no external resources, no build step.
//
//go:embed page/index.html
var pageHTML []byte

// pageCSP is the page's Content-Security-Policy: nothing may load but the
// page's own inline <script> and <style> elements, allowed by their SHA-256
// hashes (so an injected script or style would not run), and the page may
// only connect to its own origin and WebSockets.
var pageCSP = buildPageCSP(pageHTML)

// pageETag lets a browser revalidate the page cheaply under no-cache.
var pageETag = func() string {
	sum := sha256.Sum256(pageHTML)
	return `"` + base64.RawURLEncoding.EncodeToString(sum[:12]) + `"`
}()

// PageHandler serves the operator's console at "/" (GET and HEAD only; 404 for any other path
// it is mounted on by mistake is the mux's business). Content-Type text/html; charset=utf-8,
// Cache-Control: no-cache, and a Content-Security-Policy that allows only the page's own inline
// script/style and connect-src 'self' ws: wss:.
//
// The console polls the gateway's status (StatusPath) every two seconds and
// shows the tables the caller may read with their event rates, the
// replication slot of their readers (lag and retained WAL as a chart), the
// gateway's clients and subscriptions, and the managed endpoints when the
// status has them. Below, a live view: it lists the tables the client may
// read (a "topics" message), subscribes to one (the first, the one clicked,
// or the page's ?table= parameter) with an optional where filter and
// select, and shows its events live, newest first; it reconnects with
// backoff and resumes with "from" so no event is lost. A ?token= parameter
// of the page is passed on to /ws and, as a bearer token, to the status.
func PageHandler() http.Handler {
	return http.HandlerFunc(servePage)
}

func servePage(w http.ResponseWriter, r *http.Request) {
	h := w.Header()
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		h.Set("Allow", "GET, HEAD")
		http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
		return
	}
	h.Set("Content-Type", "text/html; charset=utf-8")
	h.Set("Cache-Control", "no-cache")
	h.Set("Content-Security-Policy", pageCSP)
	h.Set("X-Content-Type-Options", "nosniff")
	// The page's URL may carry a token; never send it on as a Referer.
	h.Set("Referrer-Policy", "no-referrer")
	h.Set("ETag", pageETag)
	// ServeContent answers HEAD without a body, If-None-Match with 304,
	// and sets Content-Length.
	http.ServeContent(w, r, "index.html", time.Time{}, bytes.NewReader(pageHTML))
}

// buildPageCSP returns the Content-Security-Policy of a page whose only
// scripts and styles are the inline <script> and <style> elements in html.
func buildPageCSP(html []byte) string {
	hashes := func(tag string) string {
		var b strings.Builder
		for _, body := range inlineElements(string(html), tag) {
			// A browser hashes the text as parsed, line ends normalized to \n.
			body = strings.ReplaceAll(strings.ReplaceAll(body, "\r\n", "\n"), "\r", "\n")
			sum := sha256.Sum256([]byte(body))
			b.WriteString(" 'sha256-" + base64.StdEncoding.EncodeToString(sum[:]) + "'")
		}
		if b.Len() == 0 {
			return " 'none'"
		}
		return b.String()
	}
	return "default-src 'none'" +
		"; script-src" + hashes("script") +
		"; style-src" + hashes("style") +
		"; connect-src 'self' ws: wss:" +
		"; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
}

// inlineElements returns the text of every <tag …>…</tag> element in html,
// exactly as written, which is what a browser hashes for CSP. It is meant
// for the embedded page, which it trusts to be well formed, not for HTML at
// large.
func inlineElements(html, tag string) []string {
	var out []string
	open, end := "<"+tag, "</"+tag+">"
	for {
		i := strings.Index(html, open)
		if i < 0 {
			return out
		}
		html = html[i+len(open):]
		if html == "" || !strings.ContainsRune(" \t\n>", rune(html[0])) {
			continue // a longer tag name, such as <scripts
		}
		gt := strings.IndexByte(html, '>')
		j := strings.Index(html, end)
		if gt < 0 || j < gt {
			panic("wsgate: embedded page: unterminated <" + tag + "> element")
		}
		out = append(out, html[gt+1:j])
		html = html[j+len(end):]
	}
}
