package server

import (
	"bytes"
	"context"
	"crypto/rand"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"usersvc/internal/metrics"
)

// How a request's body is delimited is where request smuggling hides: a
// proxy in front that reads the body by Content-Length and this server
// reading it by Transfer-Encoding disagree on where the next request
// starts. So the server reads bodies by Content-Length only.
//
// net/http has already settled the framing when a handler runs, and hides
// how: of a request with both Content-Length and "Transfer-Encoding:
// chunked" it drops the Content-Length, so that the handler sees what any
// chunked request looks like; on HTTP/1.0 it drops Transfer-Encoding
// altogether; and it answers other codings itself, before any handler. So
// checkFraming refuses every request with a Transfer-Encoding, closes every
// HTTP/1.0 connection after its answer, and Server.Listener turns
// net/http's own answers into problem documents.

var errLengthRequired = &apiError{code: codeLengthRequired,
	detail: "send the request body with a Content-Length; Transfer-Encoding (chunked or any other coding) is not accepted"}

// checkFraming answers 411 length_required to a request with a
// Transfer-Encoding, whether or not it has a Content-Length too, before it
// is routed and without reading its body, and closes the connection after
// the answer (RFC 9112, section 6.1), so that nothing after the request on
// that connection is taken for a request. Every answer to an HTTP/1.0
// request closes its connection too: net/http ignores Transfer-Encoding
// there, as RFC 9112 says, which also wants such a connection closed.
func checkFraming(logger *slog.Logger) middleware {
	return func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if !r.ProtoAtLeast(1, 1) {
				w.Header().Set("Connection", "close")
			}
			if len(r.TransferEncoding) > 0 {
				w.Header().Set("Connection", "close")
				// Not even the few bytes net/http would read to reuse the
				// connection: it is closed once the answer is out.
				_ = http.NewResponseController(w).SetReadDeadline(time.Now())
				writeError(w, r, logger, errLengthRequired)
				return
			}
			next.ServeHTTP(w, r)
		})
	}
}

// Listener returns ln, whose connections turn the answers net/http writes
// itself, before any handler runs, into problem documents like the
// handlers' own, each with a request id, a log line and a count in the
// metrics: 400 invalid_request for a request that is not HTTP/1.x (a bad
// request line, header or Host, another HTTP version), 431
// headers_too_large, 411 length_required for a Transfer-Encoding other
// than chunked (net/http's 501), and 417 expectation_failed for an Expect
// other than 100-continue. Serve the handler on it.
func (s *Server) Listener(ln net.Listener) net.Listener {
	return refusalListener{Listener: ln, logger: s.logger, metrics: s.metrics}
}

type refusalListener struct {
	net.Listener
	logger  *slog.Logger
	metrics *metrics.Metrics
}

func (l refusalListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	return &refusalConn{Conn: c, l: l}, nil
}

// refusalConn rewrites net/http's refusals as its server writes them.
type refusalConn struct {
	net.Conn
	l refusalListener
}

func (c *refusalConn) Write(b []byte) (int, error) {
	proto, code, detail, ok := netHTTPRefusal(b)
	if !ok {
		return c.Conn.Write(b)
	}
	answer, err := c.refusal(proto, code, detail)
	if err != nil {
		c.l.logger.LogAttrs(context.Background(), slog.LevelError, "encode refusal", slog.Any("err", err))
		return c.Conn.Write(b) // net/http's text, then
	}
	if _, err := c.Conn.Write(answer); err != nil {
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

// net/http's refusals, as its server (Go 1.27) writes them: in one write
// each, straight to the connection, an HTTP/1.1 status line followed by
// exactly these headers, then a text body; and the 417 it answers to an
// unknown Expect, a bare header block. The responses of the handlers
// always have a Date and an X-Request-Id, and a JSON body never holds a
// CRLF, so no write of theirs can look like either.
const (
	refusalHeaders = "\r\nContent-Type: text/plain; charset=utf-8\r\nConnection: close\r\n\r\n"
	expectation    = " 417 Expectation Failed\r\n"
)

// netHTTPRefusal reports whether b is one of net/http's refusals, and
// returns its protocol ("HTTP/1.1") and the problem code and detail to
// answer instead.
func netHTTPRefusal(b []byte) (proto, code, detail string, ok bool) {
	if len(b) < len("HTTP/1.1 400") || !bytes.HasPrefix(b, []byte("HTTP/1.")) {
		return "", "", "", false
	}
	proto, rest := string(b[:len("HTTP/1.1")]), b[len("HTTP/1.1"):]
	if bytes.HasPrefix(rest, []byte(expectation)) && bytes.HasSuffix(rest, []byte("\r\n\r\n")) {
		return proto, codeExpectationFailed, "the Expect header asks for something other than 100-continue, which is all this server supports", true
	}
	line, _, found := bytes.Cut(rest, []byte("\r\n"))
	if !found || !bytes.HasPrefix(rest[len(line):], []byte(refusalHeaders)) {
		return "", "", "", false
	}
	// line is " 400 Bad Request", or " 400 Bad Request: missing required
	// Host header": net/http's own words, never the client's.
	status, reason, _ := strings.Cut(strings.TrimPrefix(string(line), " "), ": ")
	switch {
	case strings.HasPrefix(status, "431 "):
		return proto, codeHeadersTooLarge, "the request's header fields are larger than this server accepts", true
	case strings.HasPrefix(status, "501 "):
		return proto, codeLengthRequired, errLengthRequired.detail, true
	}
	detail = "the request is not valid HTTP/1.1 (its request line, a header field, or its framing)"
	if reason != "" {
		detail = "the request is not valid HTTP/1.1: " + strings.ToValidUTF8(reason, "\uFFFD")
	}
	return proto, codeInvalidRequest, detail, true
}

// refusal returns the whole response for a refusal, logs it and counts it.
// Nothing is known of the request but that it was refused: it has neither
// method nor path, and no handler took any time.
func (c *refusalConn) refusal(proto, code, detail string) ([]byte, error) {
	id := rand.Text()
	ctx := context.WithValue(context.Background(), requestStateKey{}, &requestState{id: id})
	p := problemFor((&http.Request{URL: &url.URL{}}).WithContext(ctx), &apiError{code: code, detail: detail})
	body, err := marshal(p)
	if err != nil {
		return nil, err
	}
	b := make([]byte, 0, 512+len(body))
	b = append(b, proto...)
	b = append(b, ' ')
	b = strconv.AppendInt(b, int64(p.Status), 10)
	b = append(b, ' ')
	b = append(b, http.StatusText(p.Status)...)
	b = append(b, "\r\nCache-Control: no-store\r\nConnection: close\r\nContent-Length: "...)
	b = strconv.AppendInt(b, int64(len(body)), 10)
	b = append(b, "\r\nContent-Type: "+problemContentType+"\r\nDate: "...)
	b = time.Now().UTC().AppendFormat(b, http.TimeFormat)
	b = append(b, "\r\nX-Content-Type-Options: nosniff\r\n"+requestIDHeader+": "...)
	b = append(b, id...)
	b = append(b, "\r\n\r\n"...)
	b = append(b, body...)

	if c.l.metrics != nil {
		c.l.metrics.ObserveRequest(methodLabel(""), unmatchedRoute, p.Status, 0)
	}
	c.l.logger.LogAttrs(ctx, slog.LevelInfo, "request refused",
		slog.Int("status", p.Status),
		slog.String("detail", p.Detail),
		slog.String("remote_addr", c.RemoteAddr().String()))
	return b, nil
}
