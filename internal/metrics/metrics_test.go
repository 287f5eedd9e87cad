package metrics

import (
	"context"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"usersvc/internal/pgtest"
)

func TestMain(m *testing.M) { pgtest.Main(m) }

// TestPoolMetrics reads the statistics of a real pool that has been used.
func TestPoolMetrics(t *testing.T) {
	pool := pgtest.NewPool(t) // at most 4 connections
	m := New("v1.2.3")
	if err := m.RegisterPool(pool); err != nil {
		t.Fatal(err)
	}
	if err := m.RegisterPool(pool); err == nil {
		t.Error("RegisterPool twice = nil, want an error")
	}
	conn, err := pool.Acquire(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Release()

	want := `
# HELP usersvc_db_pool_acquired_connections Connections currently in use by a request.
# TYPE usersvc_db_pool_acquired_connections gauge
usersvc_db_pool_acquired_connections 1
# HELP usersvc_db_pool_max_connections The most connections the pool opens (DB_MAX_CONNS).
# TYPE usersvc_db_pool_max_connections gauge
usersvc_db_pool_max_connections 4
`
	if err := testutil.GatherAndCompare(m.reg, strings.NewReader(want),
		"usersvc_db_pool_acquired_connections", "usersvc_db_pool_max_connections"); err != nil {
		t.Error(err)
	}
	// NewPool pinged once and this test acquired once.
	if n := value(t, m, "usersvc_db_pool_acquires_total"); n < 2 {
		t.Errorf("usersvc_db_pool_acquires_total = %v, want at least 2", n)
	}
	if n := value(t, m, "usersvc_db_pool_new_connections_total"); n < 1 {
		t.Errorf("usersvc_db_pool_new_connections_total = %v, want at least 1", n)
	}
	problems, err := testutil.GatherAndLint(m.reg)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range problems {
		t.Errorf("promlint: %s: %s", p.Metric, p.Text)
	}
}

func TestObserveRequestAndHandler(t *testing.T) {
	m := New("v1.2.3")
	m.ObserveRequest("GET", "/users/{id}", 200, 3*time.Millisecond)
	m.ObserveRequest("GET", "/users/{id}", 200, 7*time.Millisecond)
	m.ObserveRequest("GET", "/users/{id}", 404, time.Millisecond)
	if got := testutil.ToFloat64(m.requests.WithLabelValues("GET", "/users/{id}", "200")); got != 2 {
		t.Errorf("requests{GET,/users/{id},200} = %v, want 2", got)
	}
	if got := testutil.CollectAndCount(m.duration); got != 2 {
		t.Errorf("duration series = %d, want 2", got)
	}

	rec := httptest.NewRecorder()
	m.Handler(slog.New(slog.DiscardHandler)).ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/metrics", nil))
	body := rec.Body.String()
	for _, want := range []string{
		`usersvc_build_info{goversion="go`,
		`usersvc_http_request_duration_seconds_sum{code="200",method="GET",route="/users/{id}"} 0.01`,
		"go_gc_duration_seconds",
		"process_cpu_seconds_total",
	} {
		if !strings.Contains(body, want) {
			t.Errorf("/metrics lacks %s", want)
		}
	}
}

// value returns the value of the one sample of the metric family name.
func value(t *testing.T, m *Metrics, name string) float64 {
	t.Helper()
	families, err := m.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range families {
		if f.GetName() == name && len(f.GetMetric()) == 1 {
			sample := f.GetMetric()[0]
			if c := sample.GetCounter(); c != nil {
				return c.GetValue()
			}
			return sample.GetGauge().GetValue()
		}
	}
	t.Fatalf("no single-sample metric %s", name)
	return 0
}
