package main

import (
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"usersvc/internal/pgtest"
)

// TestServeWithTokensFile runs serve as main does with AUTH_TOKENS_FILE
// holding two tokens, as during a rotation: the API needs one of them, the
// probes and the metrics do not, and no token reaches the log.
func TestServeWithTokensFile(t *testing.T) {
	const (
		oldToken = "0ld-7f3c9a1e5b2d4f6a8c0e1d3b5a7f9c2e"
		newToken = "n3w-QmVhcmVyIHRva2VuIGZvciB1c2Vyc3Zj"
		wrong    = "0ld-7f3c9a1e5b2d4f6a8c0e1d3b5a7f9c2f"
	)
	file := filepath.Join(t.TempDir(), "tokens")
	if err := os.WriteFile(file, []byte("# the old one goes after the clients moved\n"+oldToken+"\n"+newToken+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	s := startServe(t, map[string]string{"DATABASE_URL": pgtest.NewURL(t), "AUTH_TOKENS_FILE": file})
	waitFor(t, s.base+"/readyz", 10*time.Second, s.done)

	send := func(method, path, authorization, body string) *http.Response {
		t.Helper()
		req, err := http.NewRequest(method, s.base+path, strings.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		req.Header.Set("Content-Type", "application/json")
		if authorization != "" {
			req.Header.Set("Authorization", authorization)
		}
		res, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		io.Copy(io.Discard, res.Body)
		res.Body.Close()
		return res
	}
	for _, tt := range []struct {
		method, path, authorization, body string
		status                            int
		challenge                         string
	}{
		{"POST", "/users", "", `{"name":"nobody"}`, 401, `Bearer realm="usersvc"`},
		{"POST", "/users", "Bearer " + wrong, `{"name":"nobody"}`, 401, `Bearer realm="usersvc", error="invalid_token"`},
		{"GET", "/users", "Basic " + oldToken, "", 401, `Bearer realm="usersvc"`},
		{"POST", "/users", "Bearer " + oldToken, `{"name":"with the old token"}`, 201, ""},
		{"POST", "/users", "Bearer " + newToken, `{"name":"with the new token"}`, 201, ""},
		{"GET", "/users?name=nobody", "Bearer " + newToken, "", 200, ""},
		{"GET", "/healthz", "", "", 200, ""},
		{"GET", "/readyz", "", "", 200, ""},
		{"GET", "/metrics", "", "", 200, ""},
		{"GET", "/openapi.yaml", "", "", 200, ""},
	} {
		res := send(tt.method, tt.path, tt.authorization, tt.body)
		if res.StatusCode != tt.status || res.Header.Get("WWW-Authenticate") != tt.challenge {
			t.Errorf("%s %s with Authorization %.10q: %d, WWW-Authenticate %q; want %d, %q",
				tt.method, tt.path, tt.authorization, res.StatusCode, res.Header.Get("WWW-Authenticate"), tt.status, tt.challenge)
		}
		if tt.status == 401 && (res.Header.Get("X-Content-Type-Options") != "nosniff" || res.Header.Get("Cache-Control") != "no-store") {
			t.Errorf("%s %s: 401 without nosniff and no-store: %v", tt.method, tt.path, res.Header)
		}
	}
	if err := s.stop(t, 15*time.Second); err != nil {
		t.Errorf("serve after cancel = %v, want nil", err)
	}

	log := s.logs.String()
	for _, token := range []string{oldToken, newToken, wrong} {
		if strings.Contains(log, token) {
			t.Errorf("the log shows a token:\n%s", log)
		}
	}
	logs := logRecords(t, log)
	if start := findRecord(logs, "msg", "listening"); start == nil || start["auth_tokens"] != float64(2) {
		t.Errorf("start-up line = %v, want auth_tokens 2", start)
	}
	if warning := findRecord(logs, "msg", authOffWarning); warning != nil {
		t.Errorf("with tokens configured, the log warns %v", warning)
	}
	refused := 0
	for _, rec := range logs {
		if rec["msg"] == "request" && rec["status"] == float64(401) {
			refused++
		}
	}
	if refused != 3 {
		t.Errorf("the access log has %d lines with status 401, want 3:\n%s", refused, log)
	}
}

// TestServeMetricsAddr runs serve with METRICS_ADDR and tokens: /metrics
// moves to its own listener, where it needs no token, and is gone from the
// API's, where it is a path like any unknown one: protected.
func TestServeMetricsAddr(t *testing.T) {
	metricsAddr := pgtest.FreeAddr(t)
	s := startServe(t, map[string]string{
		"DATABASE_URL": pgtest.NewURL(t),
		"METRICS_ADDR": metricsAddr,
		"AUTH_TOKENS":  "metrics-test-0123456789abcdef",
	})
	if status, _ := s.request(t, "GET", "/metrics", ""); status != http.StatusUnauthorized {
		t.Errorf("GET /metrics without a token on HTTP_ADDR with METRICS_ADDR set: status = %d, want 401", status)
	}
	if status, _ := s.request(t, "GET", "/users", ""); status != http.StatusUnauthorized {
		t.Errorf("GET /users without a token: status = %d, want 401", status)
	}
	checkMetrics(t, "http://"+metricsAddr)
	res, err := http.Get("http://" + metricsAddr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(res.Body)
	res.Body.Close()
	for _, want := range []string{
		`usersvc_http_requests_total{code="401",method="GET",route="unmatched"} 1`,
		`usersvc_http_requests_total{code="401",method="GET",route="/users"} 1`,
	} {
		if !strings.Contains(string(body), want+"\n") {
			t.Errorf("GET /metrics on METRICS_ADDR lacks %s, the API listener's requests", want)
		}
	}
	if status, _ := s.request(t, "GET", "/healthz", ""); status != http.StatusOK {
		t.Errorf("GET /healthz: status = %d, want 200", status)
	}
	if err := s.stop(t, 15*time.Second); err != nil {
		t.Errorf("serve after cancel = %v, want nil", err)
	}
	if _, err := http.Get("http://" + metricsAddr + "/metrics"); err == nil {
		t.Error("METRICS_ADDR still answers after serve returned")
	}
	if rec := findRecord(logRecords(t, s.logs.String()), "msg", "metrics listening"); rec == nil || rec["addr"] != metricsAddr {
		t.Errorf("log line metrics listening = %v, want addr %s", rec, metricsAddr)
	} else {
		checkLogFieldsDocumented(t, rec)
	}
}
