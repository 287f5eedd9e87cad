package server

import (
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"
)

// TestNetHTTPRefusals sends each request of framingCases that net/http
// refuses itself to a bare net/http server, and checks that netHTTPRefusal
// recognises its answer: it fails on the Go release that writes them
// otherwise, which would else pass through as text/plain.
func TestNetHTTPRefusals(t *testing.T) {
	t.Parallel()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{MaxHeaderBytes: 4 << 10, Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {})}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	refusals := 0
	for _, tt := range framingCases {
		code, _, _ := strings.Cut(tt.want[0], " ")
		want := map[string]string{"invalid_request": codeInvalidRequest, "headers_too_large": codeHeadersTooLarge, "expectation_failed": codeExpectationFailed}[strings.TrimPrefix(tt.want[0], code+" ")]
		if want == "" {
			continue
		}
		refusals++
		c, err := net.Dial("tcp", ln.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		_ = c.SetDeadline(time.Now().Add(5 * time.Second))
		if _, err := io.WriteString(c, tt.raw); err != nil {
			t.Fatal(err)
		}
		answer, _ := io.ReadAll(c) // net/http closes the connection after a refusal
		c.Close()
		if _, refusal, ok := netHTTPRefusal(answer); !ok || refusal.code != want {
			t.Errorf("%s: net/http answered %q, which netHTTPRefusal does not take for %s", tt.name, answer, want)
		}
	}
	if refusals < 5 {
		t.Fatalf("only %d of framingCases are net/http's refusals; this test checks nothing", refusals)
	}
}
