package config

import "time"

// What the configuration implies beyond its variables, computed here alone:
// the docs quote these.

// ReadHeaderTimeout bounds the arrival of a request's headers.
const ReadHeaderTimeout = 5 * time.Second

// WriteMargin is the time an answer has to be written once it is ready:
// the largest, a page of 1,000 users, is about 150 KB.
const WriteMargin = 5 * time.Second

// GCPercent is serve's GOGC unless the environment sets one: the heap holds
// little but each request's short-lived garbage, which Go's default of 100
// collects too often (docs/benchmarks.md, "Speed tricks, measured").
const GCPercent = 200

// ReadTimeout is the HTTP server's ReadTimeout, counted from a request's
// first byte: ReadHeaderTimeout + BODY_TIMEOUT (15 s by default), the whole
// request as read.
func (c Config) ReadTimeout() time.Duration { return ReadHeaderTimeout + c.BodyTimeout }

// WriteTimeout is the HTTP server's WriteTimeout, counted from the end of a
// request's headers: BODY_TIMEOUT + REQUEST_TIMEOUT + WriteMargin (20 s by
// default), so that it never cuts off an answer the service may still give.
func (c Config) WriteTimeout() time.Duration {
	return c.BodyTimeout + c.RequestTimeout + WriteMargin
}

// DefaultMaxConns is the pool size for DB_MAX_CONNS=0 and no pool_max_conns
// in the URL, on procs cores: two connections per core, at least 16,
// because a write holds its connection until its commit is flushed and
// commits that wait together share a flush (docs/benchmarks.md, "Data on a
// disk and the pool size").
func DefaultMaxConns(procs int) int32 {
	return int32(max(16, 2*procs))
}
