package server

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync/atomic"
	"time"
)

// How a request's body is delimited is where request smuggling hides: a
// proxy in front that reads the body by Content-Length and this server
// reading it by Transfer-Encoding disagree on where the next request
// starts. So the server reads bodies by Content-Length only.
//
// net/http has already settled the framing when a handler runs, and hides
// how: of a request with both Content-Length and "Transfer-Encoding:
// chunked" it drops the Content-Length; on HTTP/1.0 it drops
// Transfer-Encoding altogether; and it answers other codings itself, before
// any handler. So guard refuses every request with a Transfer-Encoding,
// closes every HTTP/1.0 connection after its answer, and Server.Listener
// turns net/http's own answers into problem documents.

// maxURIBytes bounds a request's target, path and query as sent. The
// longest a client needs is a list query filtering on a 100-character
// name of 4-byte characters, all percent-encoded: about 1,300 bytes.
const maxURIBytes = 4 << 10

var (
	errLengthRequired = &apiError{code: codeLengthRequired,
		detail: "send the request body with a Content-Length; Transfer-Encoding (chunked or any other coding) is not accepted"}
	errURITooLong  = &apiError{code: codeURITooLong, detail: fmt.Sprintf("the request target (path and query) is longer than %d bytes", maxURIBytes)}
	errNoResources = &apiError{code: codeNotFound, detail: "the request target * names no resource: this server has only the routes of its OpenAPI document"}
)

// guard refuses, before routing and without reading its body, a request
// that net/http refused (see Server.Listener), one with a
// Transfer-Encoding (411, RFC 9112 section 6.1: the connection closes after
// the answer, so that nothing after the request on it is taken for a
// request), one whose target is longer than maxURIBytes (414), and the
// target "*" (404; the mux would redirect it). It bounds the arrival of a
// body by bodyTimeout (0: no bound; see timedBody), and closes the
// connection after the answer on HTTP/1.0 and once the server drains.
func guard(logger *slog.Logger, bodyTimeout time.Duration, draining *atomic.Bool) middleware {
	return func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if !r.ProtoAtLeast(1, 1) || draining.Load() {
				// Draining, a client's next request then goes out on a new
				// connection, not on one the shutdown may close as idle.
				w.Header().Set("Connection", "close")
			}
			n := len(r.RequestURI) // as sent; empty only for requests made in-process
			if n == 0 {
				n = len(r.URL.RequestURI())
			}
			var refused error
			switch {
			case r.Method == refusalMethod:
				refused, _ = r.Context().Value(refusalKey{}).(error)
			case len(r.TransferEncoding) > 0:
				// Not even the few bytes net/http would read to reuse the
				// connection: it is closed once the answer is out.
				_ = http.NewResponseController(w).SetReadDeadline(time.Now())
				refused = errLengthRequired
			case n > maxURIBytes:
				refused = errURITooLong
			case r.RequestURI == "*":
				refused = errNoResources
			}
			if refused != nil {
				writeError(w, r, logger, refused)
				return
			}
			if bodyTimeout > 0 && r.Body != nil && r.Body != http.NoBody {
				r.Body = newTimedBody(w, r, bodyTimeout)
			}
			next.ServeHTTP(w, r)
		})
	}
}

// Listener returns ln, whose connections turn the answers net/http writes
// itself, before any handler runs, into problem documents served through
// the handler like any other answer, with a request id, a log line and a
// count in the metrics: 400 invalid_request for a request that is not
// HTTP/1.x (a bad request line, header or Host, another HTTP version), 431
// headers_too_large, 411 length_required for a Transfer-Encoding other
// than chunked (net/http's 501), and 417 expectation_failed for an Expect
// other than 100-continue. Serve the handler on it.
func (s *Server) Listener(ln net.Listener) net.Listener {
	return refusalListener{Listener: ln, s: s}
}

type refusalListener struct {
	net.Listener
	s *Server
}

func (l refusalListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	return &refusalConn{Conn: c, s: l.s}, nil
}

// refusalConn rewrites net/http's refusals as its server writes them.
type refusalConn struct {
	net.Conn
	s *Server
}

func (c *refusalConn) Write(b []byte) (int, error) {
	proto, refusal, ok := netHTTPRefusal(b)
	if !ok {
		return c.Conn.Write(b)
	}
	if _, err := c.Conn.Write(c.answer(proto, refusal)); err != nil {
		return 0, err
	}
	return len(b), nil
}

// CloseWrite lets net/http half-close the connection after its 431, as it
// does on a bare TCP connection, so that the client reads the answer
// before the connection is reset.
func (c *refusalConn) CloseWrite() error {
	if cw, ok := c.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return nil
}

// refusalMethod is the method of the request that stands for a refusal:
// none, which no request that net/http parsed has.
const refusalMethod = ""

type refusalKey struct{}

// answer returns the whole response to a refusal, as the handler writes
// it for a request that stands for the refusal: nothing is known of the
// request but that it was refused.
func (c *refusalConn) answer(proto string, refusal *apiError) []byte {
	r := (&http.Request{Method: refusalMethod, URL: &url.URL{}, Header: http.Header{},
		Proto: proto, ProtoMajor: 1, ProtoMinor: 1, RemoteAddr: c.RemoteAddr().String()}).
		WithContext(context.WithValue(context.Background(), refusalKey{}, error(refusal)))
	w := &bufferedResponse{header: http.Header{}}
	c.s.ServeHTTP(w, r)
	h := w.header
	h.Set("Date", time.Now().UTC().Format(http.TimeFormat))
	var b bytes.Buffer
	b.WriteString(proto + " " + strconv.Itoa(w.status) + " " + http.StatusText(w.status) + "\r\n")
	_ = h.Write(&b)
	b.WriteString("\r\n")
	b.Write(w.body.Bytes())
	return b.Bytes()
}

// bufferedResponse is a response written to memory.
type bufferedResponse struct {
	header http.Header
	status int
	body   bytes.Buffer
}

func (w *bufferedResponse) Header() http.Header { return w.header }

func (w *bufferedResponse) WriteHeader(status int) {
	if w.status == 0 {
		w.status = status
	}
}

func (w *bufferedResponse) Write(b []byte) (int, error) {
	w.WriteHeader(http.StatusOK)
	return w.body.Write(b)
}

// net/http's refusals, as its server (Go 1.27) writes them: in one write
// each, straight to the connection, an HTTP/1.1 status line followed by
// exactly these headers, then a text body; and the 417 it answers to an
// unknown Expect, a bare header block. The responses of the handlers
// always have a Date and an X-Request-Id, and a JSON body never holds a
// CRLF, so no write of theirs can look like either.
// TestNetHTTPRefusals fails when a Go release writes them otherwise.
const (
	refusalHeaders = "\r\nContent-Type: text/plain; charset=utf-8\r\nConnection: close\r\n\r\n"
	expectation    = " 417 Expectation Failed\r\n"
)

// netHTTPRefusal reports whether b is one of net/http's refusals, and
// returns its protocol ("HTTP/1.1") and the error to answer instead.
func netHTTPRefusal(b []byte) (proto string, refusal *apiError, ok bool) {
	if len(b) < len("HTTP/1.1 400") || !bytes.HasPrefix(b, []byte("HTTP/1.")) {
		return "", nil, false
	}
	proto, rest := string(b[:len("HTTP/1.1")]), b[len("HTTP/1.1"):]
	if bytes.HasPrefix(rest, []byte(expectation)) && bytes.HasSuffix(rest, []byte("\r\n\r\n")) {
		return proto, &apiError{code: codeExpectationFailed, detail: "the Expect header asks for something other than 100-continue, which is all this server supports"}, true
	}
	line, _, found := bytes.Cut(rest, []byte("\r\n"))
	if !found || !bytes.HasPrefix(rest[len(line):], []byte(refusalHeaders)) {
		return "", nil, false
	}
	// line is " 400 Bad Request", or " 400 Bad Request: missing required
	// Host header": net/http's own words, never the client's.
	status, reason, _ := strings.Cut(strings.TrimPrefix(string(line), " "), ": ")
	switch {
	case strings.HasPrefix(status, "431 "):
		return proto, &apiError{code: codeHeadersTooLarge, detail: "the request's header fields are larger than this server accepts"}, true
	case strings.HasPrefix(status, "501 "):
		return proto, errLengthRequired, true
	}
	detail := "the request is not valid HTTP/1.1 (its request line, a header field, or its framing)"
	if reason != "" {
		detail = "the request is not valid HTTP/1.1: " + strings.ToValidUTF8(reason, "\uFFFD")
	}
	return proto, &apiError{code: codeInvalidRequest, detail: detail}, true
}
