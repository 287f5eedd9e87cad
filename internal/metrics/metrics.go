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

// Handler serves the metrics in the Prometheus text format (or in what the
// scraper negotiates). A collector that fails is logged to logger and left
// out of the answer rather than failing the whole scrape.
func (m *Metrics) Handler(logger *slog.Logger) http.Handler {
	return promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{
		ErrorLog:      slog.NewLogLogger(logger.Handler(), slog.LevelError),
		ErrorHandling: promhttp.ContinueOnError,
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

func poolDesc(name, help string) *prometheus.Desc {
	return prometheus.NewDesc(prometheus.BuildFQName(namespace, "db_pool", name), help, nil, nil)
}

// The pool's statistics, as pgxpool.Stat names them.
var (
	poolAcquiredDesc     = poolDesc("acquired_connections", "Connections currently in use by a request.")
	poolIdleDesc         = poolDesc("idle_connections", "Connections open and idle in the pool.")
	poolConstructingDesc = poolDesc("constructing_connections", "Connections being opened.")
	poolTotalDesc        = poolDesc("total_connections", "Connections in the pool: acquired, idle and being opened.")
	poolMaxDesc          = poolDesc("max_connections", "The most connections the pool opens (DB_MAX_CONNS).")
	poolAcquiresDesc     = poolDesc("acquires_total", "Successful acquisitions of a connection from the pool.")
	poolAcquireDurDesc   = poolDesc("acquire_duration_seconds_total", "Total time spent in successful acquisitions, waiting included.")
	poolEmptyDesc        = poolDesc("empty_acquires_total", "Successful acquisitions that had to wait because no connection was idle.")
	poolEmptyWaitDesc    = poolDesc("empty_acquire_wait_seconds_total", "Total time acquisitions waited because no connection was idle.")
	poolCanceledDesc     = poolDesc("canceled_acquires_total", "Acquisitions abandoned because the request's context ended (often REQUEST_TIMEOUT).")
	poolNewConnsDesc     = poolDesc("new_connections_total", "Connections opened.")
	poolLifetimeDesc     = poolDesc("max_lifetime_destroys_total", "Connections closed for reaching their maximum lifetime.")
	poolIdleDestroysDesc = poolDesc("max_idle_destroys_total", "Connections closed for being idle too long.")
)

// poolCollector reports a pool's statistics, one Stat() per scrape.
type poolCollector struct {
	pool poolStatter
}

func (c poolCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{
		poolAcquiredDesc, poolIdleDesc, poolConstructingDesc, poolTotalDesc, poolMaxDesc,
		poolAcquiresDesc, poolAcquireDurDesc, poolEmptyDesc, poolEmptyWaitDesc, poolCanceledDesc,
		poolNewConnsDesc, poolLifetimeDesc, poolIdleDestroysDesc,
	} {
		ch <- d
	}
}

func (c poolCollector) Collect(ch chan<- prometheus.Metric) {
	s := c.pool.Stat()
	gauge := func(d *prometheus.Desc, v int32) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, float64(v))
	}
	counter := func(d *prometheus.Desc, v float64) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, v)
	}
	gauge(poolAcquiredDesc, s.AcquiredConns())
	gauge(poolIdleDesc, s.IdleConns())
	gauge(poolConstructingDesc, s.ConstructingConns())
	gauge(poolTotalDesc, s.TotalConns())
	gauge(poolMaxDesc, s.MaxConns())
	counter(poolAcquiresDesc, float64(s.AcquireCount()))
	counter(poolAcquireDurDesc, s.AcquireDuration().Seconds())
	counter(poolEmptyDesc, float64(s.EmptyAcquireCount()))
	counter(poolEmptyWaitDesc, s.EmptyAcquireWaitTime().Seconds())
	counter(poolCanceledDesc, float64(s.CanceledAcquireCount()))
	counter(poolNewConnsDesc, float64(s.NewConnsCount()))
	counter(poolLifetimeDesc, float64(s.MaxLifetimeDestroyCount()))
	counter(poolIdleDestroysDesc, float64(s.MaxIdleDestroyCount()))
}
