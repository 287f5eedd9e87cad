package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"time"

	"usersvc/internal/config"
)

// healthcheck asks the server that this environment configures, on this
// host, for GET /healthz. It is the container's HEALTHCHECK: the image has
// no shell and no curl. Returns nil only for a 200.
func healthcheck(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("healthcheck", flag.ContinueOnError)
	fs.SetOutput(stderr)
	timeout := fs.Duration("timeout", 3*time.Second, "give up after this `duration`")
	fs.Usage = func() {
		fmt.Fprint(stderr, "usage: usersvc healthcheck [-timeout 3s]\n\nGETs /healthz of the server on this host at HTTP_ADDR's port; exit status 0 when it answers 200, else 1.\n")
		fs.PrintDefaults()
	}
	if err := parseFlags(fs, args); err != nil {
		return helpIsNoError(err)
	}
	if fs.NArg() > 0 {
		return usageErrorf("healthcheck: unexpected arguments %q", fs.Args())
	}
	cfg, err := config.Load()
	if err != nil {
		return err
	}
	addr, err := localAddr(cfg.HTTPAddr)
	if err != nil {
		return err
	}
	url := "http://" + addr + "/healthz"
	ctx, cancel := context.WithTimeout(ctx, *timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return fmt.Errorf("healthcheck: %w", err)
	}
	// The server is local: never ask a proxy from the environment.
	client := &http.Client{Transport: &http.Transport{Proxy: nil}}
	res, err := client.Do(req)
	if errors.Is(err, context.DeadlineExceeded) {
		return fmt.Errorf("healthcheck: GET %s: no answer within %s", url, *timeout)
	}
	if err != nil {
		return fmt.Errorf("healthcheck: %w", err)
	}
	_, _ = io.Copy(io.Discard, io.LimitReader(res.Body, 1<<16))
	res.Body.Close()
	if res.StatusCode != http.StatusOK {
		return fmt.Errorf("healthcheck: GET %s: %s", url, res.Status)
	}
	fmt.Fprintf(stdout, "healthy: GET %s: %s\n", url, res.Status)
	return nil
}

// localAddr returns where to reach, from this host, a server listening on
// listenAddr: the loopback address when it listens on every address.
func localAddr(listenAddr string) (string, error) {
	host, port, err := net.SplitHostPort(listenAddr)
	if err != nil {
		return "", fmt.Errorf("HTTP_ADDR: %q is not host:port: %w", listenAddr, err)
	}
	if ip := net.ParseIP(host); host == "" || (ip != nil && ip.IsUnspecified()) {
		host = "127.0.0.1"
	}
	return net.JoinHostPort(host, port), nil
}
