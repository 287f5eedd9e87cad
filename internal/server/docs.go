package server

import (
	"bytes"
	"compress/gzip"
	"embed"
	"encoding/binary"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net/http"
	"path"
	"strconv"
	"strings"
)

// The reference page GET /docs serves: docs.html, which loads Swagger UI
// (docs/swagger-ui, the npm package swagger-ui-dist at the version
// tools/swagger-ui pins; make swagger-ui refreshes it) and our own
// docs/init.js and docs/page.css. Everything is in the binary: the page
// needs no network but the service.
var (
	//go:embed docs.html
	docsPage []byte
	//go:embed docs
	docsFiles embed.FS
)

// docsCSP is the Content-Security-Policy of every /docs response. Scripts,
// styles, the favicon and every request (the document, "Try it out") come
// from the service only; nothing may frame the page, in which tokens are
// typed. img-src allows data: for the icons swagger-ui.css embeds as data:
// URLs. TestDocsPage runs the page under this policy in a browser and fails
// on any violation.
const docsCSP = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; " +
	"connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"

// docsContentTypes are the Content-Types of the files under docs/, by
// extension; a file without one (LICENSE, NOTICE) is text. A table of our
// own rather than mime.TypeByExtension, which reads the machine's
// mime.types.
var docsContentTypes = map[string]string{
	".js":   "text/javascript; charset=utf-8",
	".css":  "text/css; charset=utf-8",
	".png":  "image/png",
	".json": "application/json",
	"":      "text/plain; charset=utf-8",
	".txt":  "text/plain; charset=utf-8",
}

// handleRoot serves GET /: 302 to the reference page. Only / itself: other
// paths still get the mux's 404 and 405.
func handleRoot() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		// Relative, like the page's own links, so that it holds behind a
		// proxy that adds a path prefix.
		w.Header().Set("Location", "docs")
		w.WriteHeader(http.StatusFound)
	})
}

// handleDocs serves GET /docs: the API reference page, built in the
// browser from /openapi.yaml.
func handleDocs() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Security-Policy", docsCSP)
		writeBytes(w, "text/html; charset=utf-8", docsPage)
	})
}

// writeBytes answers 200 with body, of type contentType, and its length.
func writeBytes(w http.ResponseWriter, contentType string, body []byte) {
	h := w.Header()
	h.Set("Content-Type", contentType)
	h.Set("Content-Length", strconv.Itoa(len(body)))
	_, _ = w.Write(body)
}

// docsFile is a file under docs/ as it is served.
type docsFile struct {
	contentType string
	body        []byte
	// gzipped: body is gzip-compressed, and size the length of what it
	// decompresses to.
	gzipped bool
	size    int
}

// handleDocsFile serves GET /docs/{file...}: the scripts, styles and other
// files of the reference page. A file stored gzipped is sent as it is to a
// client that accepts gzip (every browser does), and decompressed for
// another. 404 for a file the page does not have; 500 if the files cannot
// be read from the binary.
func handleDocsFile(logger *slog.Logger) http.Handler {
	files, err := readDocsFiles()
	return handle(logger, 0, func(w http.ResponseWriter, r *http.Request) error {
		if err != nil {
			return err
		}
		f, ok := files[r.PathValue("file")]
		if !ok {
			return &apiError{code: codeNotFound, detail: "the reference page has no such file"}
		}
		h := w.Header()
		h.Set("Content-Security-Policy", docsCSP)
		if !f.gzipped {
			writeBytes(w, f.contentType, f.body)
			return nil
		}
		h.Add("Vary", "Accept-Encoding")
		if acceptsGzip(r.Header) {
			h.Set("Content-Encoding", "gzip")
			writeBytes(w, f.contentType, f.body)
			return nil
		}
		h.Set("Content-Type", f.contentType)
		h.Set("Content-Length", strconv.Itoa(f.size))
		if r.Method == http.MethodHead {
			return nil
		}
		zr, err := gzip.NewReader(bytes.NewReader(f.body))
		if err == nil {
			_, err = io.Copy(w, zr)
		}
		if err != nil {
			// The status line is sent; the short body tells the client.
			logger.ErrorContext(r.Context(), "serve docs file", slog.String("path", r.URL.Path), slog.Any("err", err))
		}
		return nil
	})
}

// readDocsFiles returns the files under docs/ by the path they are served
// at: docs/swagger-ui/swagger-ui.css.gz is swagger-ui/swagger-ui.css.
// Returns an error if the embedded files cannot be read, or one stored
// gzipped is not a gzip stream.
func readDocsFiles() (map[string]docsFile, error) {
	files := map[string]docsFile{}
	err := fs.WalkDir(docsFiles, "docs", func(name string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		body, err := docsFiles.ReadFile(name)
		if err != nil {
			return err
		}
		served := strings.TrimPrefix(name, "docs/")
		f := docsFile{body: body}
		if base, ok := strings.CutSuffix(served, ".gz"); ok {
			if len(body) < 18 || body[0] != 0x1f || body[1] != 0x8b {
				return fmt.Errorf("%s is not gzip", name)
			}
			served, f.gzipped = base, true
			// RFC 1952: a gzip stream ends with the input's size mod 2^32.
			f.size = int(binary.LittleEndian.Uint32(body[len(body)-4:]))
		}
		ct, ok := docsContentTypes[path.Ext(served)]
		if !ok {
			return fmt.Errorf("%s: no Content-Type for its extension", name)
		}
		f.contentType = ct
		files[served] = f
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("read the reference page's files: %w", err)
	}
	return files, nil
}

// acceptsGzip reports whether a request with header h accepts the gzip
// content coding (RFC 9110 12.5.3): gzip (or its alias x-gzip) listed with
// a q above 0, or, when neither is listed, * with a q above 0.
func acceptsGzip(h http.Header) bool {
	gzipQ, anyQ := -1.0, -1.0
	for _, value := range h.Values("Accept-Encoding") {
		for item := range strings.SplitSeq(value, ",") {
			coding, params, _ := strings.Cut(item, ";")
			q := 1.0
			for param := range strings.SplitSeq(params, ";") {
				name, v, _ := strings.Cut(strings.TrimSpace(param), "=")
				if strings.EqualFold(name, "q") {
					if parsed, err := strconv.ParseFloat(v, 64); err == nil {
						q = parsed
					} else {
						q = 0 // a q we cannot read does not say yes
					}
				}
			}
			switch coding = strings.TrimSpace(coding); {
			case strings.EqualFold(coding, "gzip"), strings.EqualFold(coding, "x-gzip"):
				gzipQ = max(gzipQ, q)
			case coding == "*":
				anyQ = max(anyQ, q)
			}
		}
	}
	if gzipQ >= 0 {
		return gzipQ > 0
	}
	return anyQ > 0
}
