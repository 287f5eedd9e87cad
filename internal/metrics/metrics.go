// Package metrics holds the service's Prometheus metrics: HTTP requests by
// route, the database connection pool, the Go runtime, the process and the
// build. Each Metrics has a registry of its own, so nothing is global and
// tests can build as many as they like.
package metrics

import (
	"log/slog"
	"net/http"
	"runtime"
	"strconv"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// namespace prefixes the service's own metric names.
const namespace = "usersvc"

// durationBuckets suit a service whose requests mostly take well under a
// millisecond and must not take longer than REQUEST_TIMEOUT (5s by default).
var durationBuckets = []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10}

// Metrics is the registry the service reports to and /metrics serves.
type Metrics struct {
	reg      *prometheus.Registry
	requests *prometheus.CounterVec
	duration *prometheus.HistogramVec
}

// New returns the metrics of one process of version: the HTTP request
// metrics, build_info, and the Go runtime and process collectors.
func New(version string) *Metrics {
	labels := []string{"method", "route", "code"}
	m := &Metrics{
		reg: prometheus.NewRegistry(),
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: namespace,
			Name:      "http_requests_total",
			Help:      "HTTP requests served, by method, route pattern and status code.",
		}, labels),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Namespace: namespace,
			Name:      "http_request_duration_seconds",
			Help:      "Time from the request's arrival to its handler's return, by method, route pattern and status code.",
			Buckets:   durationBuckets,
		}, labels),
	}
	buildInfo := prometheus.NewGauge(prometheus.GaugeOpts{
		Namespace:   namespace,
		Name:        "build_info",
		Help:        "Always 1; the labels say which build is running.",
		ConstLabels: prometheus.Labels{"version": version, "goversion": runtime.Version()},
	})
	buildInfo.Set(1)
	m.reg.MustRegister(
		m.requests,
		m.duration,
		buildInfo,
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
	)
	return m
}

// ObserveRequest counts one request and its duration. method and route
// must come from small fixed sets (see package server), for every distinct
// label value is a new time series.
func (m *Metrics) ObserveRequest(method, route string, status int, d time.Duration) {
	code := strconv.Itoa(status)
	m.requests.WithLabelValues(method, route, code).Inc()
	m.duration.WithLabelValues(method, route, code).Observe(d.Seconds())
}

// Handler serves the metrics in the format the scraper's Accept header
// prefers: OpenMetrics 1.0.0 (what Prometheus asks for first by default),
// the Prometheus protobuf format (asked for first with native histograms),
// else the Prometheus text format 0.0.4, which also answers a client that
// states no preference (curl, a browser). A collector that fails is logged
// to logger and left out of the answer rather than failing the whole scrape.
func (m *Metrics) Handler(logger *slog.Logger) http.Handler {
	return promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{
		ErrorLog:          slog.NewLogLogger(logger.Handler(), slog.LevelError),
		ErrorHandling:     promhttp.ContinueOnError,
		EnableOpenMetrics: true,
	})
}

// RegisterPool adds the statistics of a connection pool, read at each
// scrape. Returns an error if a pool is already registered.
func (m *Metrics) RegisterPool(pool poolStatter) error {
	return m.reg.Register(poolCollector{pool: pool})
}

// poolStatter is what the pool collector needs; *pgxpool.Pool is one.
type poolStatter interface {
	Stat() *pgxpool.Stat
}

var _ poolStatter = (*pgxpool.Pool)(nil)

// poolStat is one statistic of pgxpool.Stat, as a metric.
type poolStat struct {
	desc      *prometheus.Desc
	valueType prometheus.ValueType
	value     func(*pgxpool.Stat) float64
}

func poolGauge(name, help string, v func(*pgxpool.Stat) int32) poolStat {
	return poolStat{poolDesc(name, help), prometheus.GaugeValue, func(s *pgxpool.Stat) float64 { return float64(v(s)) }}
}

func poolCounter(name, help string, v func(*pgxpool.Stat) float64) poolStat {
	return poolStat{poolDesc(name, help), prometheus.CounterValue, v}
}

func poolDesc(name, help string) *prometheus.Desc {
	return prometheus.NewDesc(prometheus.BuildFQName(namespace, "db_pool", name), help, nil, nil)
}

// poolStats are the pool's statistics that /metrics reports.
var poolStats = []poolStat{
	poolGauge("acquired_connections", "Connections currently in use by a request.", (*pgxpool.Stat).AcquiredConns),
	poolGauge("idle_connections", "Connections open and idle in the pool.", (*pgxpool.Stat).IdleConns),
	poolGauge("constructing_connections", "Connections being opened.", (*pgxpool.Stat).ConstructingConns),
	poolGauge("total_connections", "Connections in the pool: acquired, idle and being opened.", (*pgxpool.Stat).TotalConns),
	poolGauge("max_connections", "The most connections the pool opens (DB_MAX_CONNS).", (*pgxpool.Stat).MaxConns),
	poolCounter("acquires_total", "Successful acquisitions of a connection from the pool.",
		func(s *pgxpool.Stat) float64 { return float64(s.AcquireCount()) }),
	poolCounter("acquire_duration_seconds_total", "Total time spent in successful acquisitions, waiting included.",
		func(s *pgxpool.Stat) float64 { return s.AcquireDuration().Seconds() }),
	poolCounter("empty_acquires_total", "Successful acquisitions that had to wait because no connection was idle.",
		func(s *pgxpool.Stat) float64 { return float64(s.EmptyAcquireCount()) }),
	poolCounter("empty_acquire_wait_seconds_total", "Total time acquisitions waited because no connection was idle.",
		func(s *pgxpool.Stat) float64 { return s.EmptyAcquireWaitTime().Seconds() }),
	poolCounter("canceled_acquires_total", "Acquisitions abandoned because the request's context ended (often REQUEST_TIMEOUT).",
		func(s *pgxpool.Stat) float64 { return float64(s.CanceledAcquireCount()) }),
	poolCounter("new_connections_total", "Connections opened.",
		func(s *pgxpool.Stat) float64 { return float64(s.NewConnsCount()) }),
	poolCounter("max_lifetime_destroys_total", "Connections closed for reaching their maximum lifetime.",
		func(s *pgxpool.Stat) float64 { return float64(s.MaxLifetimeDestroyCount()) }),
	poolCounter("max_idle_destroys_total", "Connections closed for being idle too long.",
		func(s *pgxpool.Stat) float64 { return float64(s.MaxIdleDestroyCount()) }),
}

// poolCollector reports a pool's statistics, one Stat() per scrape.
type poolCollector struct {
	pool poolStatter
}

func (c poolCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, ps := range poolStats {
		ch <- ps.desc
	}
}

func (c poolCollector) Collect(ch chan<- prometheus.Metric) {
	s := c.pool.Stat()
	for _, ps := range poolStats {
		ch <- prometheus.MustNewConstMetric(ps.desc, ps.valueType, ps.value(s))
	}
}
