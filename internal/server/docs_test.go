package server

import (
	"bytes"
	"compress/gzip"
	"io"
	"net/http"
	"net/url"
	"path"
	"regexp"
	"strconv"
	"strings"
	"testing"
)

// TestDocs serves the reference page and every file it loads, on a server
// with tokens configured, to a client without one: they are open. The
// browser's view of them is TestDocsPage's (make test-docs).
func TestDocs(t *testing.T) {
	t.Parallel()
	srv, _ := newAuthServer(t)
	// on returns the server, for the test t.
	on := func(t *testing.T) *testServer {
		c := *srv
		c.t = t
		return &c
	}

	t.Run("/ redirects to the page", func(t *testing.T) {
		t.Parallel()
		s := on(t)
		c := *s
		c.client = &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
		r := c.get("/")
		if r.status != http.StatusFound || r.header.Get("Location") != "docs" || len(r.body) != 0 {
			t.Errorf("GET / = %d, Location %q, %d bytes; want 302 to docs, no body", r.status, r.header.Get("Location"), len(r.body))
		}
		// Only / itself: other paths keep their 404 (behind the token, as
		// every path that matches no route).
		wantProblem(t, "GET /nope", s.as("Bearer "+tokenOld).unchecked("GET", "/nope"), http.StatusNotFound, codeNotFound)
	})

	t.Run("page", func(t *testing.T) {
		t.Parallel()
		s := on(t)
		r := s.get("/docs")
		if r.status != http.StatusOK || r.header.Get("Content-Type") != "text/html; charset=utf-8" || !bytes.Equal(r.body, docsPage) {
			t.Errorf("GET /docs = %d, %s, %d bytes; want 200, text/html, docs.html", r.status, r.header.Get("Content-Type"), len(r.body))
		}
		if got := r.header.Get("Content-Security-Policy"); got != docsCSP {
			t.Errorf("GET /docs: Content-Security-Policy = %q, want %q", got, docsCSP)
		}
		wantProblem(t, "POST /docs", s.do("POST", "/docs", "", nil), http.StatusMethodNotAllowed, codeMethodNotAllowed)

		// Everything the page links to is on the service, and served.
		page, err := url.Parse(s.url + "/docs")
		if err != nil {
			t.Fatal(err)
		}
		links := regexp.MustCompile(`(?:src|href)="([^"]*)"`).FindAllStringSubmatch(string(docsPage), -1)
		if len(links) < 5 {
			t.Fatalf("docs.html links to %d files, want its scripts, styles, icon and the document", len(links))
		}
		for _, link := range links {
			u, err := page.Parse(link[1])
			if err != nil || u.Host != page.Host || !strings.HasPrefix(link[1], "docs/") && link[1] != "openapi.yaml" {
				t.Errorf("docs.html links to %q, want a path relative to the page, on the service", link[1])
				continue
			}
			if _, r, err := s.send("GET", u.Path, "", nil); err != nil || r.status != http.StatusOK {
				t.Errorf("GET %s, which docs.html links to: %d, %v; want 200", u.Path, r.status, err)
			}
		}
	})

	files, err := readDocsFiles()
	if err != nil {
		t.Fatal(err)
	}
	t.Run("files", func(t *testing.T) {
		t.Parallel()
		s := on(t)
		embedded := 0
		for name, f := range files {
			embedded += len(f.body)
			whole := f.body
			if f.gzipped {
				whole = gunzip(t, name, f.body)
				if len(whole) != f.size {
					t.Errorf("%s: %d bytes, its gzip trailer says %d", name, len(whole), f.size)
				}
			}
			for _, tt := range []struct {
				acceptEncoding string
				gzipped        bool // the answer is gzipped
			}{
				{"gzip, deflate, br, zstd", f.gzipped}, // Chromium's
				{"identity", false},
				{"gzip;q=0, *", false},
			} {
				c := *s
				c.header = http.Header{"Accept-Encoding": {tt.acceptEncoding}}
				target := "/docs/" + name
				_, r, err := c.send("GET", target, "", nil)
				if err != nil {
					t.Fatal(err)
				}
				what := "GET " + target + " with Accept-Encoding " + tt.acceptEncoding
				if r.status != http.StatusOK {
					t.Errorf("%s: status = %d, want 200", what, r.status)
					continue
				}
				want, ct := whole, docsContentTypes[path.Ext(name)]
				if tt.gzipped {
					want = f.body
				}
				if got := r.header.Get("Content-Type"); got != ct {
					t.Errorf("%s: Content-Type = %q, want %q", what, got, ct)
				}
				if got := r.header.Get("Content-Encoding"); got != map[bool]string{true: "gzip"}[tt.gzipped] {
					t.Errorf("%s: Content-Encoding = %q", what, got)
				}
				if !bytes.Equal(r.body, want) || r.header.Get("Content-Length") != strconv.Itoa(len(want)) {
					t.Errorf("%s: %d bytes, Content-Length %s; want the %d bytes of %s", what, len(r.body), r.header.Get("Content-Length"), len(want), name)
				}
				if f.gzipped && r.header.Get("Vary") != "Accept-Encoding" {
					t.Errorf("%s: Vary = %q, want Accept-Encoding", what, r.header.Get("Vary"))
				}
				if r.header.Get("X-Content-Type-Options") != "nosniff" || r.header.Get("Cache-Control") != "no-store" || r.header.Get("Content-Security-Policy") != docsCSP {
					t.Errorf("%s: headers %v, want nosniff, no-store and the page's policy", what, r.header)
				}
			}
		}
		// The uncompressed bundle and source maps would be 5 MB more.
		if embedded > 600_000 {
			t.Errorf("the page's files take %d bytes of the binary, want at most 600 kB", embedded)
		}
	})

	t.Run("HEAD of a gzipped file, uncompressed", func(t *testing.T) {
		t.Parallel()
		s := on(t)
		const name = "swagger-ui/swagger-ui-bundle.js"
		c := *s
		c.header = http.Header{"Accept-Encoding": {"identity"}}
		_, r, err := c.send("HEAD", "/docs/"+name, "", nil)
		if err != nil {
			t.Fatal(err)
		}
		if want := strconv.Itoa(files[name].size); r.status != http.StatusOK || r.header.Get("Content-Length") != want || len(r.body) != 0 {
			t.Errorf("HEAD /docs/%s = %d, Content-Length %s, %d bytes; want 200, %s, none", name, r.status, r.header.Get("Content-Length"), len(r.body), want)
		}
	})

	t.Run("unknown files", func(t *testing.T) {
		t.Parallel()
		s := on(t)
		for _, target := range []string{"/docs/nope.js", "/docs/swagger-ui/", "/docs/swagger-ui/swagger-ui.css.gz", "/docs/swagger-ui/swagger-ui-bundle.js.map"} {
			wantProblem(t, "GET "+target, s.unchecked("GET", target), http.StatusNotFound, codeNotFound)
		}
		r := s.unchecked("POST", "/docs/init.js")
		wantProblem(t, "POST /docs/init.js", r, http.StatusMethodNotAllowed, codeMethodNotAllowed)
		if r.header.Get("Allow") != "GET, HEAD" {
			t.Errorf("POST /docs/init.js: Allow = %q, want GET, HEAD", r.header.Get("Allow"))
		}
	})
}

// TestDocsCSPIsStrict pins what the page's policy must never allow: inline
// or evaluated code, or another origin. TestDocsPage shows that the page
// works under it.
func TestDocsCSPIsStrict(t *testing.T) {
	t.Parallel()
	directives := map[string]string{}
	for d := range strings.SplitSeq(docsCSP, ";") {
		name, value, _ := strings.Cut(strings.TrimSpace(d), " ")
		directives[name] = value
	}
	for name, want := range map[string]string{
		"default-src":     "'none'",
		"script-src":      "'self'",
		"style-src":       "'self'",
		"connect-src":     "'self'",
		"img-src":         "'self' data:",
		"frame-ancestors": "'none'",
		"base-uri":        "'none'",
		"form-action":     "'none'",
	} {
		if got := directives[name]; got != want {
			t.Errorf("Content-Security-Policy %s %q, want %q", name, got, want)
		}
	}
	for _, loose := range []string{"unsafe", "*", "http:", "https:", "blob:"} {
		if strings.Contains(docsCSP, loose) {
			t.Errorf("Content-Security-Policy %q allows %s", docsCSP, loose)
		}
	}
}

func TestAcceptsGzip(t *testing.T) {
	t.Parallel()
	for _, tt := range []struct {
		header []string
		want   bool
	}{
		{nil, false},
		{[]string{""}, false},
		{[]string{"gzip"}, true},
		{[]string{"gzip, deflate, br, zstd"}, true},
		{[]string{"br", "GZIP"}, true},
		{[]string{"x-gzip"}, true},
		{[]string{"gzip;q=0.5"}, true},
		{[]string{"gzip; q=0"}, false},
		{[]string{"gzip;q=0.000"}, false},
		{[]string{"gzip;q=nope"}, false},
		{[]string{"identity"}, false},
		{[]string{"br, deflate"}, false},
		{[]string{"*"}, true},
		{[]string{"*;q=0"}, false},
		{[]string{"gzip;q=0, *"}, false},
		{[]string{"*;q=0, gzip"}, true},
		{[]string{"gzips"}, false},
	} {
		if got := acceptsGzip(http.Header{"Accept-Encoding": tt.header}); got != tt.want {
			t.Errorf("acceptsGzip(Accept-Encoding: %q) = %v, want %v", tt.header, got, tt.want)
		}
	}
}

// unchecked sends a request to a path openapi.yaml does not describe, and
// checks that the answer is a problem document.
func (s *testServer) unchecked(method, target string) response {
	s.t.Helper()
	_, r, err := s.send(method, target, "", nil)
	if err != nil {
		s.t.Fatal(err)
	}
	s.checkProblem(method, target, r)
	return r
}

// gunzip returns the decompressed b, the stored file name.
func gunzip(t *testing.T, name string, b []byte) []byte {
	t.Helper()
	zr, err := gzip.NewReader(bytes.NewReader(b))
	if err != nil {
		t.Fatalf("%s: %v", name, err)
	}
	out, err := io.ReadAll(zr)
	if err != nil {
		t.Fatalf("%s: %v", name, err)
	}
	return out
}
