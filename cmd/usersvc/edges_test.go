package main

import (
	"bufio"
	"encoding/json/v2"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"usersvc/internal/config"
	"usersvc/internal/pgtest"
)

// later is part of a raw request, sent after a delay.
type later struct {
	after time.Duration // from the first byte
	data  string
}

// rawAnswer is the answer a raw connection got.
type rawAnswer struct {
	status int
	header http.Header
	body   []byte
	took   time.Duration // from the first byte sent
	close  bool          // the answer said Connection: close
	closed bool          // and the server then closed the connection
}

// problemCode returns the code of a problem answer.
func (a rawAnswer) problemCode(t *testing.T) string {
	t.Helper()
	var p struct {
		Code   string `json:"code"`
		Status int    `json:"status"`
	}
	if err := json.Unmarshal(a.body, &p); err != nil || p.Status != a.status || a.header.Get("Content-Type") != "application/problem+json" {
		t.Fatalf("answer %d %s %q is not a problem document of its status: %v", a.status, a.header.Get("Content-Type"), a.body, err)
	}
	return p.Code
}

// sendRaw writes first to a new connection to addr at once and each of
// rest when its time comes, as a client that frames and paces its request
// as it likes, and returns the first answer. It fails the test when none
// comes within 30 s.
func sendRaw(t *testing.T, addr, first string, rest ...later) rawAnswer {
	t.Helper()
	conn, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	start := time.Now()
	if _, err := conn.Write([]byte(first)); err != nil {
		t.Fatal(err)
	}
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() {
		for _, part := range rest {
			select {
			case <-time.After(time.Until(start.Add(part.after))):
			case <-stop:
				return
			}
			if _, err := conn.Write([]byte(part.data)); err != nil {
				return // the server answered and closed already
			}
		}
	})
	defer wg.Wait()
	defer close(stop)

	conn.SetReadDeadline(start.Add(30 * time.Second))
	br := bufio.NewReader(conn)
	res, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatalf("%.100q…: no answer after %v: %v", first, time.Since(start), err)
	}
	body, err := io.ReadAll(res.Body)
	if err != nil {
		t.Fatalf("%.100q…: read the answer: %v", first, err)
	}
	a := rawAnswer{status: res.StatusCode, header: res.Header, body: body, took: time.Since(start), close: res.Close}
	if a.close {
		conn.SetReadDeadline(time.Now().Add(2 * time.Second))
		_, err = br.Peek(1)
		a.closed = errors.Is(err, io.EOF) || errors.Is(err, syscall.ECONNRESET)
	}
	return a
}

// postHead is the head of a POST /users of a body of n bytes.
func postHead(n int) string {
	return fmt.Sprintf("POST /users HTTP/1.1\r\nHost: usersvc\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n", n)
}

// TestRequestSmuggling sends, through the whole program, the request that
// smuggled another past a proxy that frames by Content-Length: the first
// is refused, the connection closed, and the second never runs.
func TestRequestSmuggling(t *testing.T) {
	databaseURL := pgtest.NewURL(t)
	s := startServe(t, map[string]string{"DATABASE_URL": databaseURL})
	addr := strings.TrimPrefix(s.base, "http://")

	smuggled := postHead(len(nameBody("smuggled"))) + nameBody("smuggled")
	hidden := "0\r\n\r\n" + smuggled
	for _, te := range []string{"Transfer-Encoding: chunked", "Transfer-Encoding:\r\n chunked", "Transfer-Encoding: gzip, chunked"} {
		head := strings.Replace(postHead(len(hidden)), "\r\n\r\n", "\r\n"+te+"\r\n\r\n", 1)
		a := sendRaw(t, addr, head+hidden)
		if a.status != http.StatusLengthRequired || a.problemCode(t) != "length_required" || a.header.Get("X-Request-Id") == "" {
			t.Errorf("%q with Content-Length: %d %s, want 411 length_required with a request id", te, a.status, a.body)
		}
		if !a.close || !a.closed {
			t.Errorf("%q with Content-Length: Connection: close %v, closed %v; want the connection closed after the answer", te, a.close, a.closed)
		}
	}
	if _, ok := usersByName(t, databaseURL)["smuggled"]; ok {
		t.Fatal("the smuggled request ran: a user is named smuggled")
	}
	if status, _ := s.request(t, "POST", "/users", nameBody("not smuggled")); status != http.StatusCreated {
		t.Errorf("POST /users after the refusals: %d, want 201", status)
	}
}

// TestSlowClient sends bodies slowly over real connections, with
// BODY_TIMEOUT 600ms and REQUEST_TIMEOUT 200ms: the database's time starts
// once the body is in, and a body later than BODY_TIMEOUT is the client's
// fault (408), in the answer, the log and the metrics, never the
// database's.
func TestSlowClient(t *testing.T) {
	const bodyTimeout, requestTimeout = 600 * time.Millisecond, 200 * time.Millisecond
	databaseURL := pgtest.NewURL(t)
	s := startServe(t, map[string]string{
		"DATABASE_URL":    databaseURL,
		"BODY_TIMEOUT":    bodyTimeout.String(),
		"REQUEST_TIMEOUT": requestTimeout.String(),
	})
	addr := strings.TrimPrefix(s.base, "http://")
	// The body's second half comes at 350 ms: after REQUEST_TIMEOUT, well
	// within BODY_TIMEOUT.
	slowly := func(name string) rawAnswer {
		body := nameBody(name)
		return sendRaw(t, addr, postHead(len(body))+body[:5], later{350 * time.Millisecond, body[5:]})
	}

	t.Run("body after REQUEST_TIMEOUT", func(t *testing.T) {
		if a := slowly("slow but in time"); a.status != http.StatusCreated {
			t.Errorf("POST /users, body complete at 350ms: %d %s, want 201", a.status, a.body)
		}
	})

	t.Run("body never complete", func(t *testing.T) {
		body := nameBody("never")
		a := sendRaw(t, addr, postHead(len(body))+body[:5])
		if a.status != http.StatusRequestTimeout || a.problemCode(t) != "request_timeout" {
			t.Fatalf("POST /users, body incomplete: %d %s, want 408 request_timeout", a.status, a.body)
		}
		if a.took < bodyTimeout || a.took > bodyTimeout+time.Second {
			t.Errorf("POST /users, body incomplete: 408 after %v, want at BODY_TIMEOUT (%v)", a.took, bodyTimeout)
		}
		if !a.close || !a.closed {
			t.Errorf("POST /users, body incomplete: Connection: close %v, closed %v; want the connection closed after the 408", a.close, a.closed)
		}
		// The log blames the client, the metrics count a 408.
		id := a.header.Get("X-Request-Id")
		var lines []map[string]any
		for _, rec := range logRecords(t, s.logs.String()) {
			if rec["request_id"] == id {
				lines = append(lines, rec)
			}
		}
		slow := findRecord(lines, "msg", "slow client")
		if slow == nil || slow["status"] != float64(408) || !strings.Contains(fmt.Sprint(slow["err"]), fmt.Sprintf("5 of %d body bytes", len(body))) {
			t.Errorf("log lines of the 408 = %v, want a slow client line with status 408 and the bytes received", lines)
		} else {
			checkLogFieldsDocumented(t, slow)
		}
		if failed := findRecord(lines, "msg", "request failed"); failed != nil || strings.Contains(fmt.Sprint(lines), "database") {
			t.Errorf("log lines of the 408 = %v, want none about the database", lines)
		}
		if access := findRecord(lines, "msg", "request"); access == nil || access["status"] != float64(408) {
			t.Errorf("access line of the 408 = %v, want status 408", access)
		}
		res, err := http.Get(s.base + "/metrics")
		if err != nil {
			t.Fatal(err)
		}
		metrics, err := io.ReadAll(res.Body)
		res.Body.Close()
		if err != nil {
			t.Fatal(err)
		}
		if want := `usersvc_http_requests_total{code="408",method="POST",route="/users"} 1`; !strings.Contains(string(metrics), want) {
			t.Errorf("GET /metrics lacks %s", want)
		}
	})

	t.Run("body in time, then the database hangs", func(t *testing.T) {
		holdRows(t, databaseURL, []string{"held"}, nil)
		a := slowly("held")
		if a.status != http.StatusServiceUnavailable || a.problemCode(t) != "unavailable" {
			t.Fatalf("POST /users against a held row: %d %s, want 503 unavailable", a.status, a.body)
		}
		if lo, hi := 350*time.Millisecond+requestTimeout, 350*time.Millisecond+requestTimeout+time.Second; a.took < lo || a.took > hi {
			t.Errorf("POST /users against a held row: 503 after %v, want REQUEST_TIMEOUT (%v) after the body", a.took, requestTimeout)
		}
	})
}

// TestSlowBodyStillAnswered sends a body that completes just within a long
// BODY_TIMEOUT: the answer comes, although the time since the headers is
// longer than REQUEST_TIMEOUT plus the whole margin for writing it.
func TestSlowBodyStillAnswered(t *testing.T) {
	const bodyTimeout, requestTimeout = 6 * time.Second, 300 * time.Millisecond
	s := startServe(t, map[string]string{
		"DATABASE_URL":    pgtest.NewURL(t),
		"BODY_TIMEOUT":    bodyTimeout.String(),
		"REQUEST_TIMEOUT": requestTimeout.String(),
	})
	body := nameBody("just in time")
	complete := bodyTimeout - 300*time.Millisecond
	if complete <= requestTimeout+config.WriteMargin {
		t.Fatalf("the body completes at %v, within REQUEST_TIMEOUT + config.WriteMargin (%v): it would prove nothing", complete, requestTimeout+config.WriteMargin)
	}
	a := sendRaw(t, strings.TrimPrefix(s.base, "http://"), postHead(len(body))+body[:5], later{complete, body[5:]})
	if a.status != http.StatusCreated {
		t.Errorf("POST /users, body complete at %v: %d %s, want 201", complete, a.status, a.body)
	}
}
