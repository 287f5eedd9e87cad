package metrics

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"mime"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"

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

// Accept headers that Prometheus sends, as its scrape.acceptHeader builds
// them from its scrape_protocols setting.
const (
	// Prometheus 3, default scrape_protocols.
	acceptPrometheus3 = "application/openmetrics-text;version=1.0.0;escaping=allow-utf-8;q=0.6," +
		"application/openmetrics-text;version=0.0.1;q=0.5," +
		"text/plain;version=1.0.0;escaping=allow-utf-8;q=0.4," +
		"text/plain;version=0.0.4;q=0.3,*/*;q=0.2"
	// Prometheus 2.49 to 2.55, default scrape_protocols.
	acceptPrometheus2 = "application/openmetrics-text;version=1.0.0;q=0.5," +
		"application/openmetrics-text;version=0.0.1;q=0.4," +
		"text/plain;version=0.0.4;q=0.3,*/*;q=0.2"
	// Prometheus 3 with scrape_protocols: [PrometheusText0.0.4].
	acceptPrometheusText = "text/plain;version=0.0.4;q=0.6,*/*;q=0.5"
	// Prometheus 3 with native histograms on (scrape_native_histograms).
	acceptPrometheusProto = "application/vnd.google.protobuf;proto=io.prometheus.client.MetricFamily;encoding=delimited;q=0.6," +
		"application/openmetrics-text;version=1.0.0;escaping=allow-utf-8;q=0.5," +
		"application/openmetrics-text;version=0.0.1;q=0.4," +
		"text/plain;version=1.0.0;escaping=allow-utf-8;q=0.3," +
		"text/plain;version=0.0.4;q=0.2,*/*;q=0.1"
)

// TestHandlerNegotiates scrapes with the Accept headers of Prometheus,
// curl and a browser, and checks both the Content-Type and that the body
// is in that format.
func TestHandlerNegotiates(t *testing.T) {
	m := New("v1.2.3")
	m.ObserveRequest("GET", "/users/{id}", 200, 3*time.Millisecond)
	h := m.Handler(slog.New(slog.DiscardHandler))
	const (
		openMetrics = "application/openmetrics-text"
		text        = "text/plain"
		proto       = "application/vnd.google.protobuf"
	)
	for _, tt := range []struct {
		client, accept     string
		mediaType, version string
	}{
		{"Prometheus 3", acceptPrometheus3, openMetrics, "1.0.0"},
		{"Prometheus 2", acceptPrometheus2, openMetrics, "1.0.0"},
		{"Prometheus, text only", acceptPrometheusText, text, "0.0.4"},
		{"Prometheus, native histograms", acceptPrometheusProto, proto, ""},
		{"curl", "*/*", text, "0.0.4"},
		{"no Accept", "", text, "0.0.4"},
		{"a browser", "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8", text, "0.0.4"},
	} {
		t.Run(tt.client, func(t *testing.T) {
			req := httptest.NewRequest(http.MethodGet, "/metrics", nil)
			if tt.accept != "" {
				req.Header.Set("Accept", tt.accept)
			}
			rec := httptest.NewRecorder()
			h.ServeHTTP(rec, req)
			ct := rec.Header().Get("Content-Type")
			mediaType, params, err := mime.ParseMediaType(ct)
			if err != nil || mediaType != tt.mediaType || params["version"] != tt.version {
				t.Fatalf("Accept %q: Content-Type = %q, want %s version %q", tt.accept, ct, tt.mediaType, tt.version)
			}
			if vary := rec.Header().Values("Vary"); !strings.Contains(strings.Join(vary, ","), "Accept") {
				t.Errorf("Vary = %q, want Accept among them, for caches", vary)
			}
			body := rec.Body.String()
			const series = `usersvc_http_requests_total{code="200",method="GET",route="/users/{id}"}`
			switch mediaType {
			case openMetrics:
				// OpenMetrics names a counter's family without _total,
				// writes values as floats and ends with # EOF; the text
				// format does none of these.
				for _, want := range []string{"# TYPE usersvc_http_requests counter\n", series + " 1.0\n"} {
					if !strings.Contains(body, want) {
						t.Errorf("OpenMetrics body lacks %q", want)
					}
				}
				if !strings.HasSuffix(body, "\n# EOF\n") {
					t.Errorf("OpenMetrics body does not end with # EOF: ...%q", body[max(0, len(body)-80):])
				}
			default:
				if strings.Contains(body, "# EOF") {
					t.Error("a body that is not OpenMetrics has an # EOF line")
				}
				if !strings.HasPrefix(mediaType, "text/") && strings.Contains(body, series) {
					t.Error("the protobuf body reads as text")
				}
				if got := decodedCounter(t, rec.Body, expfmt.ResponseFormat(rec.Header()), "usersvc_http_requests_total"); got != 1 {
					t.Errorf("decoded usersvc_http_requests_total = %v, want 1", got)
				}
			}
		})
	}
}

// decodedCounter decodes body, in the text or protobuf format, and returns
// the value of the one sample of the counter family name.
func decodedCounter(t *testing.T, body io.Reader, format expfmt.Format, name string) float64 {
	t.Helper()
	dec := expfmt.NewDecoder(body, format)
	for {
		var f dto.MetricFamily
		err := dec.Decode(&f)
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatalf("decode %s: %v", format, err)
		}
		if f.GetName() == name && len(f.GetMetric()) == 1 {
			return f.GetMetric()[0].GetCounter().GetValue()
		}
	}
	t.Fatalf("no single-sample counter %s in the %s body", name, format)
	return 0
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
