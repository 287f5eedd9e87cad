package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

	"usersvc/internal/pglocal"
)

// harness is what every mode of bench runs against: wrk, a throwaway
// PostgreSQL over TCP with seeded users, and the service built as `make
// build` builds it, serving on loopback.
type harness struct {
	binDir   string            // PostgreSQL's binaries
	wrk      string            // the wrk binary
	tmp      string            // scratch directory: scripts, binary, log
	scripts  map[string]string // the scripts' paths by name
	machine  machine
	pg       *postgres
	settings [][2]string // PostgreSQL's, for the report
	svc      *service
}

// harnessOptions are the settings that startHarness needs.
type harnessOptions struct {
	seed       int      // users in the table
	serviceBin string   // a prebuilt service binary instead of building one
	wrk        string   // the wrk binary's name or path
	env        []string // extra KEY=VALUE settings for the service
}

// addFlags registers the flags that set ho, but for seed, whose default
// and meaning differ by mode; what names the mode's work for the help.
func (ho *harnessOptions) addFlags(fs *flag.FlagSet, what string) {
	fs.StringVar(&ho.serviceBin, "service-bin", "", what+" this usersvc binary instead of building one")
	fs.StringVar(&ho.wrk, "wrk", "wrk", "the wrk `binary`; installed with apt-get when missing and running as root")
	fs.Func("env", "`KEY=VALUE` for the service's environment, e.g. DB_MAX_CONNS=8 (repeatable)", func(s string) error {
		if k, _, ok := strings.Cut(s, "="); !ok || k == "" {
			return errors.New("want KEY=VALUE")
		}
		ho.env = append(ho.env, s)
		return nil
	})
}

// startHarness finds (or installs) the tools, builds the service, starts
// PostgreSQL, seeds ho.seed users and starts the service. On error,
// whatever it started is stopped and removed; otherwise the caller must
// call stop.
func startHarness(ctx context.Context, ho harnessOptions, stderr io.Writer, logf func(string, ...any)) (_ *harness, err error) {
	h := &harness{}
	defer func() {
		if err != nil {
			err = errors.Join(err, h.stop())
		}
	}()
	// Tools first: better to fail before a minute of seeding.
	if h.binDir, err = pglocal.FindBinDir(); err != nil {
		return nil, err
	}
	if h.wrk, err = findWrk(ctx, ho.wrk, stderr); err != nil {
		return nil, err
	}
	if h.tmp, err = os.MkdirTemp("", "usersvc-bench-"); err != nil {
		return nil, err
	}
	if h.scripts, err = writeScripts(h.tmp); err != nil {
		return nil, err
	}
	bin := ho.serviceBin
	if bin == "" {
		logf("building the service")
		if bin, err = buildService(ctx, h.tmp, stderr); err != nil {
			return nil, err
		}
	}
	h.machine = describeMachine(ctx, h.binDir, h.wrk, bin)

	logf("starting PostgreSQL")
	if h.pg, err = startPostgres(ctx); err != nil {
		return nil, err
	}
	logf("seeding %d users", ho.seed)
	if err := h.pg.prepareDatabase(ctx, ho.seed); err != nil {
		return nil, err
	}
	if h.settings, err = h.pg.settings(ctx); err != nil {
		return nil, err
	}
	h.svc, err = startService(ctx, bin, h.pg.srv.URL(database), filepath.Join(h.tmp, "service.log"), ho.env)
	return h, err
}

// stop stops the service and PostgreSQL and removes the scratch
// directory. Returns an error, with the end of the service's log, when the
// service did not stop cleanly.
func (h *harness) stop() error {
	var err error
	if h.svc != nil {
		if serr := h.svc.stop(); serr != nil {
			err = fmt.Errorf("%w; its log ends:\n%s", serr, h.svc.logTail())
		}
	}
	if h.pg != nil {
		err = errors.Join(err, h.pg.stop())
	}
	if h.tmp != "" {
		err = errors.Join(err, os.RemoveAll(h.tmp))
	}
	return err
}
