package main

import (
	"fmt"
	"io"
	"strings"
	"time"
)

// soakCommand returns the command line that repeats a soak.
func soakCommand(args []string) string {
	quoted := []string{"bin/bench", "soak"}
	for _, a := range args {
		quoted = append(quoted, shellQuote(a))
	}
	return strings.Join(quoted, " ")
}

// writeSoakReport prints the soak as markdown.
func writeSoakReport(w io.Writer, res *soakResults) error {
	o, m, r := res.opts, res.machine, res.wrk
	var b strings.Builder
	p := func(format string, a ...any) { fmt.Fprintf(&b, format+"\n", a...) }

	verdict := "**passed**"
	if why := res.failures(); len(why) > 0 {
		verdict = "**failed**: " + strings.Join(why, ", ")
	}
	p("### Soak of %s", m.date)
	p("")
	p("Command: `%s` (what `make soak` runs). Verdict: %s.", soakCommand(o.args), verdict)
	p("")
	busy := fmt.Sprintf("| CPU busy during the load | %.2f of %s cores: the service %.2f, wrk %.2f, the rest (PostgreSQL and anything else running) %.2f |",
		cores(r.cpu.machine, r), m.cores, cores(r.cpu.service, r), cores(r.cpu.client, r), cores(r.cpu.rest(), r))
	m.writeTable(p, res.startLoad, res.endLoad, busy, false)
	settings, env := describeSettings(res.settings, o.env)
	p("Load: wrk, %d threads, %d connections, for %v, running `cmd/bench/scripts/soak.lua` (a mix of every request kind, below) against %d seeded users.",
		o.threads, o.connections, o.duration, o.seed)
	p("Service: the default settings (JSON access log at info, to a file) and a bearer token (AUTH_TOKENS), extra environment: %s.", env)
	p("PostgreSQL, over TCP on 127.0.0.1: %s.", strings.Join(settings, ", "))
	p("")

	p("| | |")
	p("|---|---|")
	p("| requests | %d in %.1f s: **%.0f req/s** |", r.Requests, float64(r.DurationUS)/1e6, r.reqPerSec())
	p("| latency | p50 %s, p90 %s, **p99 %s**, p99.9 %s, max %s |", fmtUS(r.P50US), fmtUS(r.P90US), fmtUS(r.P99US), fmtUS(r.P999US), fmtUS(r.MaxUS))
	p("| errors | **%d** |", res.errs.total())
	p("| service CPU | %.1f µs per request |", perOp(r.cpu.service, r.Requests))
	p("")

	e := res.errs
	p("Errors by kind (any fails the soak):")
	p("")
	p("| kind | count |")
	p("|---|---|")
	p("| connect errors | %d |", e.connect)
	p("| read errors | %d |", e.read)
	p("| write errors | %d |", e.write)
	p("| timeouts (no answer within wrk's 10 s) | %d |", e.timeouts)
	p("| answers other than the request's expected one | %d |", e.unexpected)
	p("| answers the script did not check | %d |", e.uncounted)
	p("| service log lines at warn or error | %d |", e.logLines)
	p("")
	if res.logTail != "" {
		p("The last of the service's warn and error lines:")
		p("")
		p("```")
		p("%s", strings.TrimRight(res.logTail, "\n"))
		p("```")
		p("")
	}

	p("Answers by request kind (the kind travels in the request's `X-Request-ID`, which the service echoes; the script checks each answer's status, and the problem's `code` for the 4xx):")
	p("")
	p("| kind | answers | expected | as expected | other answers |")
	p("|---|---|---|---|---|")
	for _, k := range res.answers.byKind() {
		want, other := "–", "none"
		if k.expect != 0 {
			want = fmt.Sprint(k.expect)
		}
		if len(k.wrongs) > 0 {
			other = strings.Join(k.wrongs, ", ")
		}
		p("| %s | %d | %s | %d | %s |", k.kind, k.total, want, k.right, other)
	}
	p("")

	p("Samples every %v (t from the start of the load; \"before\" and \"after\" are the idle service on either side; * marks the samples judged, after the %v warm-up). "+
		"req/s and 5xx are from the service's own `usersvc_http_requests_total`, since the sample before; "+
		"pool is `usersvc_db_pool_total_connections`, sessions are PostgreSQL's sessions named usersvc (`pg_stat_activity`):", o.interval, o.warmup)
	p("")
	p("| t | req/s | 5xx | RSS | Go heap in use | goroutines | open fds | pool | sessions | users |")
	p("|---|---|---|---|---|---|---|---|---|---|")
	for i, s := range res.samples {
		t := fmt.Sprintf("%.0f s", s.at.Round(time.Second).Seconds())
		if s.phase != "load" {
			t = s.phase
		} else if s.at >= o.warmup {
			t += " *"
		}
		rate, errs := "–", "–"
		if i > 0 {
			rate = fmt.Sprintf("%.0f", perSecond(res.samples[i-1], s))
			errs = fmt.Sprintf("%.0f", s.serverErrors-res.samples[i-1].serverErrors)
		}
		p("| %s | %s | %s | %s | %s | %.0f | %.0f | %.0f | %d | %d |",
			t, rate, errs, fmtMiB(s.rss), fmtMiB(int64(s.heap)), s.goroutines, s.fds, s.poolConns, s.sessions, s.users)
	}
	p("")

	p("Flat? The largest value of the last %d judged sample(s) against the largest of the first %d, after the warm-up "+
		"(maxima on both sides, since one sample catches the service at one point of its GC cycle or with some requests in flight, while a leak raises them all):",
		res.rss.window, res.rss.window)
	p("")
	p("| measure | first window | last window | allowed | flat? |")
	p("|---|---|---|---|---|")
	yes := func(ok bool) string {
		if ok {
			return "yes"
		}
		return "**no**"
	}
	p("| RSS | %s | %s | %s (+%.0f %%, at least +%s) | %s |", fmtMiB(int64(res.rss.first)), fmtMiB(int64(res.rss.last)),
		fmtMiB(int64(res.rss.allowed)), rssAllowanceFraction*100, fmtMiB(rssAllowanceMin), yes(res.rss.flat))
	p("| goroutines | %.0f | %.0f | %.0f (+%.0f: the connections, plus 10) | %s |", res.goroutines.first, res.goroutines.last, res.goroutines.allowed,
		res.goroutines.allowed-res.goroutines.first, yes(res.goroutines.flat))
	p("| goroutines when idle again: before the load, and after it once wrk's connections are closed | %.0f | %.0f | %.0f (+%d) | %s |",
		res.idle.first, res.idle.last, res.idle.allowed, idleGoroutineAllowance, yes(res.idle.flat))
	p("")
	if n := requestsBetweenWindows(res); n > 0 {
		p("Between the two windows the service answered %.0f requests: a steady leak of more than %.0f bytes per request, "+
			"or of one goroutine per %.0f requests, would have failed this soak; and the idle count after the load catches a leak of %d goroutines in all.",
			n, (res.rss.allowed-res.rss.first)/n, n/(res.goroutines.allowed-res.goroutines.first), idleGoroutineAllowance+1)
		p("")
	}
	_, err := io.WriteString(w, b.String())
	return err
}

// cores returns d of CPU time over the run's duration: the cores it kept
// busy on average.
func cores(d time.Duration, r wrkResult) float64 {
	if r.DurationUS <= 0 {
		return 0
	}
	return d.Seconds() / (float64(r.DurationUS) / 1e6)
}

// requestsBetweenWindows returns the requests the service counted from the
// last sample of the first window to the first sample of the last: a steady
// leak grew by at least that many requests' worth between the windows'
// maxima.
func requestsBetweenWindows(res *soakResults) float64 {
	js, n := res.judged(), res.rss.window
	if n == 0 || len(js) < 2*n {
		return 0
	}
	return js[len(js)-n].requests - js[n-1].requests
}
