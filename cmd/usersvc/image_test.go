//go:build (image || compose) && linux

// The test in this file builds the container image from the unchanged
// Dockerfile with podman (make image) and runs it against a throwaway
// PostgreSQL on loopback: its configuration, its files, and what an
// operator does with it. It needs podman, runc and busybox-static, so it is
// not part of make test: make test-image installs them when they are
// missing and runs it.

package main

import (
	"archive/tar"
	"bytes"
	"cmp"
	"context"
	"crypto/x509"
	"debug/elf"
	"encoding/json/v2"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"maps"
	"net/http"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/pressly/goose/v3/lock"

	"usersvc/internal/pgtest"
)

const (
	// testImage is the tag the test builds, through make image.
	testImage = "localhost/usersvc:image-test"
	// maxImageSize bounds the image: a static binary (with the OTLP trace
	// exporters, about a third of it), a CA bundle and two
	// one-line files.
	maxImageSize = 30_000_000
	// pullTimeout bounds the attempt to pull a base image: where no
	// registry answers, the test makes a stand-in instead.
	pullTimeout = 2 * time.Minute
	// standInLabel marks a base image that this test made, with what from.
	standInLabel = "usersvc.image-test.stand-in"
)

// podmanGlobal are the flags of every podman command: runc, since crun
// fails on these machines' v1 cgroups, and cgroupfs, since no systemd runs
// to manage cgroups. They work wherever podman and runc are installed.
var podmanGlobal = []string{"--runtime", "runc", "--cgroup-manager", "cgroupfs"}

// runFlags are the flags of every container the test runs: the host's
// network, where the throwaway PostgreSQL listens on loopback, and limits
// that the machine lets runc set (raising nofile or nproc is refused).
var runFlags = []string{"--network", "host", "--ulimit", "nofile=1024:1024", "--ulimit", "nproc=1024:1024"}

// podmanRun is what one podman command did.
type podmanRun struct {
	args           []string
	stdout, stderr string
	status         int
}

func (r podmanRun) String() string {
	var stderr strings.Builder
	for line := range strings.Lines(r.stderr) {
		if !strings.Contains(line, noSystemd) {
			stderr.WriteString(line)
		}
	}
	return fmt.Sprintf("$ podman %s  # exit status %d\n%s%s", strings.Join(r.args, " "), r.status, r.stdout, stderr.String())
}

// noSystemd is in the errors podman prints, and goes on, when it cannot
// schedule a container's HEALTHCHECK with a systemd timer, as where no
// systemd runs; the test runs the check itself (podman healthcheck run).
const noSystemd = "unable to get systemd connection"

// podmanIn runs podman with args and stdin, and kills it after timeout
// (exit status -1). Only a podman that cannot be started fails the test;
// the exit status is the caller's to judge.
func podmanIn(t *testing.T, timeout time.Duration, stdin io.Reader, args ...string) podmanRun {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, "podman", append(slices.Clone(podmanGlobal), args...)...)
	cmd.WaitDelay = 5 * time.Second
	var stdout, stderr bytes.Buffer
	cmd.Stdin, cmd.Stdout, cmd.Stderr = stdin, &stdout, &stderr
	err := cmd.Run()
	r := podmanRun{args: args, stdout: stdout.String(), stderr: stderr.String()}
	switch exitErr, isExit := errors.AsType[*exec.ExitError](err); {
	case err == nil:
	case ctx.Err() != nil:
		r.status = -1
		r.stderr += fmt.Sprintf("podman: killed after %v\n", timeout)
	case isExit:
		r.status = exitErr.ExitCode()
	default:
		t.Fatalf("%v: %v", r, err)
	}
	return r
}

// podman runs podman with args, allowing it two minutes.
func podman(t *testing.T, args ...string) podmanRun {
	t.Helper()
	return podmanIn(t, 2*time.Minute, nil, args...)
}

// mustPodman is podman for commands that must succeed; returns stdout.
func mustPodman(t *testing.T, args ...string) string {
	t.Helper()
	r := podman(t, args...)
	if r.status != 0 {
		t.Fatalf("%v", r)
	}
	return r.stdout
}

// TestImage builds the image and checks it as docs/operations.md (Container)
// and docs/development.md (The image test) describe it.
func TestImage(t *testing.T) {
	for _, tool := range []string{"podman", "runc"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Fatalf("%s not found: run make test-image, which installs podman, runc and busybox-static "+
				"(Debian: apt-get install --no-install-recommends podman runc busybox-static)", tool)
		}
	}
	t.Log(strings.TrimSpace(mustPodman(t, "--version")))
	for _, ref := range baseImages(t) {
		ensureImage(t, ref, makeGoStandIn)
	}
	buildImage(t, testImage, testVersion)

	t.Run("config", testImageConfig)
	t.Run("contents", testImageContents)

	pg := startPostgres(t, newPGDir(t), pgtest.FreePort(t))
	databaseURL := pg.URL("postgres")
	t.Run("migrate", func(t *testing.T) { testImageMigrate(t, databaseURL) })
	t.Run("serve", func(t *testing.T) { testImageServe(t, databaseURL) })
	t.Run("any uid", func(t *testing.T) { testImageAnyUID(t, databaseURL) })
}

// baseImages returns the images that the Dockerfile's FROM lines name,
// without scratch and the Dockerfile's own stages.
func baseImages(t *testing.T) []string {
	t.Helper()
	dockerfile, err := os.ReadFile("../../Dockerfile")
	if err != nil {
		t.Fatal(err)
	}
	from := regexp.MustCompile(`(?im)^FROM\s+(?:--\S+\s+)*(\S+)(?:\s+AS\s+(\S+))?\s*$`)
	var images, stages []string
	for _, m := range from.FindAllStringSubmatch(string(dockerfile), -1) {
		if m[1] != "scratch" && !slices.Contains(stages, m[1]) {
			images = append(images, m[1])
		}
		if m[2] != "" {
			stages = append(stages, m[2])
		}
	}
	if len(images) == 0 {
		t.Fatal("Dockerfile: no FROM line names a base image")
	}
	return images
}

// qualified returns ref with the registry and path that Docker gives a
// short name: golang:1.27.3 is docker.io/library/golang:1.27.3.
func qualified(ref string) string {
	first, _, hasSlash := strings.Cut(ref, "/")
	if hasSlash && (strings.ContainsAny(first, ".:") || first == "localhost") {
		return ref
	}
	if !hasSlash {
		ref = "library/" + ref
	}
	return "docker.io/" + ref
}

// ensureImage makes sure that the image ref is in podman's storage: pulled
// from its registry when one answers within pullTimeout, else the copy
// already there, else the stand-in that standIn makes under ref's full
// name. The log says which.
func ensureImage(t *testing.T, ref string, standIn func(t *testing.T, ref, name string)) {
	t.Helper()
	name := qualified(ref)
	pull := podmanIn(t, pullTimeout, nil, "pull", "--quiet", name)
	if pull.status == 0 {
		t.Logf("image %s: pulled from its registry (%s)", ref, name)
		return
	}
	why := lastLine(pull.stderr)
	if podman(t, "image", "exists", name).status == 0 {
		from := mustPodman(t, "image", "inspect", "--format", `{{index .Labels "`+standInLabel+`"}}`, name)
		if from = strings.TrimSpace(from); from != "" {
			t.Logf("image %s: cannot be pulled (%s); using the stand-in made earlier from %s", ref, why, from)
		} else {
			t.Logf("image %s: cannot be pulled (%s); using the copy in local storage", ref, why)
		}
		return
	}
	t.Logf("image %s: cannot be pulled (%s); making a local stand-in", ref, why)
	standIn(t, ref, name)
}

// makeGoStandIn imports, under name, a stand-in for Go's official image
// ref (golang:VERSION-bookworm): the Go release of the same version from
// GOROOT (the golang.org/toolchain module that the go command downloads
// when go.mod asks for a newer Go), a static busybox for the RUN steps'
// shell and tools, and this machine's Debian CA bundle, which the final
// stage copies, with the official image's environment. The real image
// builds the same binary: same compiler, same sources, CGO_ENABLED=0.
func makeGoStandIn(t *testing.T, ref, name string) {
	t.Helper()
	version, ok := strings.CutPrefix(ref, "golang:")
	if ok {
		version, _, _ = strings.Cut(version, "-")
	}
	if !ok || version == "" {
		t.Fatalf("base image %s cannot be pulled, and the test can only stand in for golang:VERSION", ref)
	}
	out, err := exec.Command("go", "env", "GOROOT").Output()
	if err != nil {
		t.Fatalf("go env GOROOT: %v", err)
	}
	goroot := strings.TrimSpace(string(out))
	versionFile, err := os.ReadFile(filepath.Join(goroot, "VERSION"))
	if err != nil {
		t.Fatal(err)
	}
	if have, _, _ := strings.Cut(string(versionFile), "\n"); have != "go"+version {
		t.Fatalf("the Dockerfile builds with Go %s, but GOROOT %s holds %s: the stand-in must be the same release", version, goroot, have)
	}
	busybox := staticBusybox(t)
	caBundle, err := os.ReadFile("/etc/ssl/certs/ca-certificates.crt")
	if err != nil {
		t.Fatalf("the stand-in needs the CA bundle that the final stage copies: %v (Debian: apt-get install ca-certificates)", err)
	}

	importStandIn(t, ref, name, fmt.Sprintf("go%s from %s, busybox-static, the CA bundle of %s", version, goroot, hostOS()),
		func(w io.Writer) error { return writeStandIn(w, goroot, busybox, caBundle) },
		"ENV PATH=/go/bin:/usr/local/go/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
		"ENV GOLANG_VERSION="+version,
		"ENV GOTOOLCHAIN=local",
		"ENV GOPATH=/go",
		"WORKDIR /go")
}

// importStandIn imports the root filesystem that write writes as the
// image name, a stand-in for ref, with the Dockerfile instructions changes
// and a label that says what it was made from.
func importStandIn(t *testing.T, ref, name, from string, write func(io.Writer) error, changes ...string) {
	t.Helper()
	args := []string{"import"}
	for _, c := range append(changes, fmt.Sprintf("LABEL %s=%q", standInLabel, from)) {
		args = append(args, "--change", c)
	}
	pr, pw := io.Pipe()
	go func() { pw.CloseWithError(write(pw)) }()
	start := time.Now()
	r := podmanIn(t, 5*time.Minute, pr, append(args, "-", name)...)
	pr.CloseWithError(io.ErrClosedPipe) // unblocks the writer if podman stopped reading
	if r.status != 0 {
		t.Fatalf("%v", r)
	}
	size := strings.TrimSpace(mustPodman(t, "image", "inspect", "--format", "{{.Size}}", name))
	t.Logf("image %s: stand-in %s (%s bytes) imported in %v from %s", ref, name, size, time.Since(start).Round(time.Second), from)
}

// staticBusybox returns the path of a statically linked busybox: the
// stand-in has no C library for a dynamic one.
func staticBusybox(t *testing.T) string {
	t.Helper()
	const install = "Debian: apt-get install busybox-static; make test-image installs it"
	bin, err := exec.LookPath("busybox")
	if err != nil {
		t.Fatalf("busybox not found: %s", install)
	}
	f, err := elf.Open(bin)
	if err != nil {
		t.Fatalf("busybox: %v", err)
	}
	defer f.Close()
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			t.Fatalf("%s is dynamically linked: %s", bin, install)
		}
	}
	return bin
}

// hostOS returns this machine's PRETTY_NAME, for the stand-in's label.
func hostOS() string {
	data, _ := os.ReadFile("/etc/os-release")
	for line := range strings.Lines(string(data)) {
		if v, ok := strings.CutPrefix(strings.TrimSpace(line), "PRETTY_NAME="); ok {
			return strings.Trim(v, `"`)
		}
	}
	return "this machine"
}

// writeStandIn writes the stand-in's root filesystem to w as a tar
// archive: GOROOT as /usr/local/go, busybox as /bin/busybox with a link for
// each of its commands, the CA bundle, root's passwd and group entries, and
// the directories Go's official image has.
func writeStandIn(w io.Writer, goroot, busybox string, caBundle []byte) error {
	root := newRootFS(w)
	for _, d := range []struct {
		name string
		mode int64
	}{{"bin", 0o755}, {"etc", 0o755}, {"etc/ssl", 0o755}, {"etc/ssl/certs", 0o755}, {"root", 0o700},
		{"tmp", 0o1777}, {"usr", 0o755}, {"usr/local", 0o755}, {"go", 0o1777}, {"go/bin", 0o1777}, {"go/src", 0o1777}} {
		root.dir(d.name, d.mode, 0)
	}
	root.file("etc/passwd", 0o644, []byte("root:x:0:0:root:/root:/bin/sh\n"))
	root.file("etc/group", 0o644, []byte("root:x:0:\n"))
	root.file("etc/ssl/certs/ca-certificates.crt", 0o644, caBundle)
	root.busybox(busybox)
	root.copyTree(goroot, "usr/local/go", nil)
	return root.close()
}

// rootFS writes a container's root filesystem as a tar archive, owned by
// root unless said otherwise. The first error stops it; close returns it.
type rootFS struct {
	tw  *tar.Writer
	now time.Time
	err error
}

func newRootFS(w io.Writer) *rootFS { return &rootFS{tw: tar.NewWriter(w), now: time.Now()} }

func (r *rootFS) header(h *tar.Header) bool {
	if r.err == nil {
		h.ModTime = r.now
		r.err = r.tw.WriteHeader(h)
	}
	return r.err == nil
}

// dir adds the directory name, owned by uid and its group.
func (r *rootFS) dir(name string, mode int64, uid int) {
	r.header(&tar.Header{Typeflag: tar.TypeDir, Name: name + "/", Mode: mode, Uid: uid, Gid: uid})
}

func (r *rootFS) file(name string, mode int64, data []byte) {
	if r.header(&tar.Header{Typeflag: tar.TypeReg, Name: name, Mode: mode, Size: int64(len(data))}) {
		_, r.err = r.tw.Write(data)
	}
}

// busybox adds the static busybox at bin as /bin/busybox, with a link in
// /bin for each of its commands.
func (r *rootFS) busybox(bin string) {
	data, err := os.ReadFile(bin)
	if err != nil {
		r.err = cmp.Or(r.err, err)
		return
	}
	r.file("bin/busybox", 0o755, data)
	list, err := exec.Command(bin, "--list").Output()
	if err != nil {
		r.err = cmp.Or(r.err, fmt.Errorf("busybox --list: %w", err))
		return
	}
	for _, cmd := range strings.Fields(string(list)) {
		if cmd != "busybox" {
			r.header(&tar.Header{Typeflag: tar.TypeSymlink, Name: "bin/" + cmd, Linkname: "busybox", Mode: 0o777})
		}
	}
}

// copyTree adds this machine's src, a file or a directory with all it
// holds, as dst, owner-writable, leaving out what skip reports.
func (r *rootFS) copyTree(src, dst string, skip func(path string) bool) {
	err := filepath.WalkDir(src, func(p string, d fs.DirEntry, err error) error {
		if err != nil || r.err != nil {
			return cmp.Or(err, r.err)
		}
		if skip != nil && skip(p) {
			if d.IsDir() {
				return filepath.SkipDir
			}
			return nil
		}
		info, err := d.Info()
		if err != nil {
			return err
		}
		var link string
		if d.Type()&fs.ModeSymlink != 0 {
			if link, err = os.Readlink(p); err != nil {
				return err
			}
		}
		h, err := tar.FileInfoHeader(info, link)
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(src, p)
		if err != nil {
			return err
		}
		h.Name = path.Join(dst, filepath.ToSlash(rel))
		if d.IsDir() {
			h.Name += "/"
		}
		h.Uid, h.Gid, h.Uname, h.Gname = 0, 0, "root", "root"
		h.Mode |= 0o200 // the module cache's copy of Go is read-only; the official image's is not
		if !r.header(h) || !d.Type().IsRegular() {
			return r.err
		}
		f, err := os.Open(p)
		if err != nil {
			return err
		}
		defer f.Close()
		_, err = io.Copy(r.tw, f)
		return err
	})
	r.err = cmp.Or(r.err, err)
}

func (r *rootFS) close() error {
	if r.err != nil {
		return r.err
	}
	return r.tw.Close()
}

// buildImage builds image at version with make image, as an operator would, with
// podman and the flags these machines need, and the base images prepared
// above (--pull=never). The build's go build reuses this machine's Go
// build cache: it is keyed by content, so it changes the time the build
// takes and not what it makes.
func buildImage(t *testing.T, image, version string) {
	t.Helper()
	out, err := exec.Command("go", "env", "GOCACHE").Output()
	if err != nil {
		t.Fatalf("go env GOCACHE: %v", err)
	}
	cache := strings.TrimSpace(string(out))
	start := time.Now()
	cmd := exec.Command("make", "--no-print-directory", "image",
		"ENGINE=podman "+strings.Join(podmanGlobal, " "),
		"IMAGE="+image,
		"VERSION="+version,
		"IMAGE_FLAGS=--pull=never --volume "+cache+":/root/.cache/go-build")
	cmd.Dir = "../.."
	log, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("%s: %v\n%s", cmd, err, log)
	}
	t.Logf("built %s in %v; the build's last lines:\n%s", image, time.Since(start).Round(time.Second), lastLines(string(log), 12))
}

// lastLines returns the last n lines of s.
func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	return strings.Join(lines[max(0, len(lines)-n):], "\n")
}

// lastLine returns the last line of s that is not empty.
func lastLine(s string) string { return lastLines(s, 1) }

// imageInfo is what the test reads of podman image inspect.
type imageInfo struct {
	Size   int64
	Config struct {
		User         string
		Entrypoint   []string
		Cmd          []string
		Env          []string
		ExposedPorts map[string]struct{}
		Labels       map[string]string
	}
	Healthcheck *struct {
		Test                           []string
		Interval, Timeout, StartPeriod int64 // nanoseconds
		Retries                        int
	}
}

// testImageConfig checks the image's configuration: user, entrypoint and
// command, port, health check, version label, environment and size.
func testImageConfig(t *testing.T) {
	var infos []imageInfo
	if err := json.Unmarshal([]byte(mustPodman(t, "image", "inspect", testImage)), &infos); err != nil || len(infos) != 1 {
		t.Fatalf("podman image inspect %s: %v, %d images", testImage, err, len(infos))
	}
	info := infos[0]
	c := info.Config
	t.Logf("user %s, entrypoint %q, cmd %q, exposed %v, env %q, labels %v, size %d bytes (%.1f MB)",
		c.User, c.Entrypoint, c.Cmd, slices.Sorted(maps.Keys(c.ExposedPorts)), c.Env, c.Labels, info.Size, float64(info.Size)/1e6)
	if c.User != "65532:65532" {
		t.Errorf("user = %q, want 65532:65532", c.User)
	}
	if !slices.Equal(c.Entrypoint, []string{"/usersvc"}) {
		t.Errorf("entrypoint = %q, want [/usersvc]", c.Entrypoint)
	}
	if !slices.Equal(c.Cmd, []string{"serve"}) {
		t.Errorf("cmd = %q, want [serve]", c.Cmd)
	}
	if ports := slices.Sorted(maps.Keys(c.ExposedPorts)); !slices.Equal(ports, []string{"8080/tcp"}) {
		t.Errorf("exposed ports = %q, want [8080/tcp]", ports)
	}
	if !slices.Contains(c.Env, "HTTP_ADDR=:8080") {
		t.Errorf("env = %q, want HTTP_ADDR=:8080 among it", c.Env)
	}
	if v := c.Labels["org.opencontainers.image.version"]; v != testVersion {
		t.Errorf("label org.opencontainers.image.version = %q, want %q (make image VERSION=%s)", v, testVersion, testVersion)
	}
	if hc := info.Healthcheck; hc == nil {
		t.Error("no HEALTHCHECK in the image's config: was it built in the OCI format, without --format docker?")
	} else {
		t.Logf("healthcheck %q every %v, timeout %v, start period %v, retries %d",
			hc.Test, time.Duration(hc.Interval), time.Duration(hc.Timeout), time.Duration(hc.StartPeriod), hc.Retries)
		if !slices.Equal(hc.Test, []string{"CMD", "/usersvc", "healthcheck"}) {
			t.Errorf("healthcheck = %q, want [CMD /usersvc healthcheck]", hc.Test)
		}
	}
	if info.Size <= 0 || info.Size >= maxImageSize {
		t.Errorf("image size = %d bytes, want under %d", info.Size, maxImageSize)
	}
}

// testImageContents exports the filesystem of a container of the image
// and checks that it holds the binary, the CA bundle and the passwd and
// group entries, and nothing else: no shell, no package manager.
func testImageContents(t *testing.T) {
	name := containerName()
	mustPodman(t, "create", "--name", name, testImage)
	t.Cleanup(func() { podman(t, "rm", "--force", name) })
	export := podman(t, "export", name)
	if export.status != 0 {
		t.Fatalf("%v", export)
	}
	want := map[string]string{ // path: type and mode
		"etc/":                              "dir",
		"etc/ssl/":                          "dir",
		"etc/ssl/certs/":                    "dir",
		"etc/ssl/certs/ca-certificates.crt": "file",
		"etc/passwd":                        "file",
		"etc/group":                         "file",
		"usersvc":                           "file",
	}
	files := map[string][]byte{}
	var listing strings.Builder
	tr := tar.NewReader(strings.NewReader(export.stdout))
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatalf("podman export: %v", err)
		}
		fmt.Fprintf(&listing, "%v %d/%d %9d %s\n", h.FileInfo().Mode(), h.Uid, h.Gid, h.Size, h.Name)
		name := strings.TrimPrefix(h.Name, "./")
		kind, ok := want[name]
		switch {
		case !ok:
			t.Errorf("the image holds %s, which it should not", h.Name)
		case kind == "dir" && h.Typeflag != tar.TypeDir, kind == "file" && h.Typeflag != tar.TypeReg:
			t.Errorf("%s: tar type %q, want a %s", h.Name, h.Typeflag, kind)
		case kind == "file":
			data, err := io.ReadAll(tr)
			if err != nil {
				t.Fatal(err)
			}
			files[name] = data
			if h.Uid != 0 || h.FileInfo().Mode()&0o022 != 0 {
				t.Errorf("%s: owner %d, mode %v; want root's and not writable by others", h.Name, h.Uid, h.FileInfo().Mode())
			}
		}
	}
	t.Logf("podman export of a container of %s:\n%s", testImage, listing.String())
	for name := range want {
		if _, ok := files[name]; !ok && want[name] == "file" {
			t.Errorf("the image lacks %s", name)
		}
	}
	if got, want := string(files["etc/passwd"]), "nonroot:x:65532:65532:nonroot:/nonexistent:/sbin/nologin\n"; got != want {
		t.Errorf("/etc/passwd = %q, want %q", got, want)
	}
	if got, want := string(files["etc/group"]), "nonroot:x:65532:\n"; got != want {
		t.Errorf("/etc/group = %q, want %q", got, want)
	}
	if bundle := files["etc/ssl/certs/ca-certificates.crt"]; !x509.NewCertPool().AppendCertsFromPEM(bundle) {
		t.Errorf("/etc/ssl/certs/ca-certificates.crt (%d bytes) holds no certificate", len(bundle))
	}
}

var containerCount atomic.Int64

// containerName returns a name for a container of this test run.
func containerName() string {
	return fmt.Sprintf("usersvc-image-test-%d-%d", os.Getpid(), containerCount.Add(1))
}

// container is a container of the image that runs in the background.
type container struct {
	name string
	addr string // HTTP_ADDR
}

// startContainer runs the image in the background with runFlags, flags and
// args, DATABASE_URL set to databaseURL and HTTP_ADDR to a free port on
// loopback. It is removed when the test ends.
func startContainer(t *testing.T, databaseURL string, flags []string, args ...string) *container {
	t.Helper()
	c := &container{name: containerName(), addr: pgtest.FreeAddr(t)}
	run := append([]string{"run", "--detach", "--name", c.name}, runFlags...)
	run = append(run, flags...)
	run = append(run, "--env", "DATABASE_URL="+databaseURL, "--env", "HTTP_ADDR="+c.addr, testImage)
	r := podman(t, append(run, args...)...)
	t.Cleanup(func() { podman(t, "rm", "--force", "--time", "0", c.name) })
	if r.status != 0 {
		t.Fatalf("%v", r)
	}
	return c
}

// inspect returns the container's value of a podman inspect template.
func (c *container) inspect(t *testing.T, format string) string {
	t.Helper()
	return strings.TrimSpace(mustPodman(t, "inspect", "--format", format, c.name))
}

// logs returns the container's output so far.
func (c *container) logs(t *testing.T) string {
	t.Helper()
	r := podman(t, "logs", c.name)
	return r.stdout + r.stderr
}

// health runs the image's HEALTHCHECK once and returns podman
// healthcheck run's exit status and output, and the check's own output.
func (c *container) health(t *testing.T) (status int, out, check string) {
	t.Helper()
	r := podman(t, "healthcheck", "run", c.name)
	var health struct{ Log []struct{ Output string } }
	if err := json.Unmarshal([]byte(c.inspect(t, "{{json .State.Health}}")), &health); err != nil {
		t.Fatalf("podman inspect %s: .State.Health: %v", c.name, err)
	}
	if n := len(health.Log); n > 0 {
		check = health.Log[n-1].Output
	}
	return r.status, strings.TrimSpace(r.stdout), check
}

// uid returns the real uid of the container's main process, as the host
// sees it.
func (c *container) uid(t *testing.T) string {
	t.Helper()
	pid := c.inspect(t, "{{.State.Pid}}")
	status, err := os.ReadFile("/proc/" + pid + "/status")
	if err != nil {
		t.Fatal(err)
	}
	for line := range strings.Lines(string(status)) {
		if fields := strings.Fields(line); len(fields) > 1 && fields[0] == "Uid:" {
			return fields[1]
		}
	}
	t.Fatalf("no Uid line in /proc/%s/status", pid)
	return ""
}

// runOnce runs the image in the foreground with runFlags and args and
// DATABASE_URL set, and returns its output and exit status.
func runOnce(t *testing.T, databaseURL string, args ...string) (string, int) {
	t.Helper()
	run := append([]string{"run", "--rm"}, runFlags...)
	run = append(run, "--env", "DATABASE_URL="+databaseURL, testImage)
	r := podman(t, append(run, args...)...)
	t.Logf("%v", r)
	return r.stdout + r.stderr, r.status
}

// testImageMigrate runs the image's one-shot commands, and migrate up
// while another instance holds the migration lock: the container is up,
// nothing listens, and the image's health check says unhealthy.
func testImageMigrate(t *testing.T, databaseURL string) {
	for _, step := range []struct {
		args   []string
		status int
		want   string
	}{
		{[]string{"version"}, 0, "usersvc " + testVersion + "\n"},
		{[]string{"migrate", "status"}, 0, "pending"},
		{[]string{"migrate", "sideways"}, 2, "unknown command"},
	} {
		if out, status := runOnce(t, databaseURL, step.args...); status != step.status || !strings.Contains(out, step.want) {
			t.Errorf("usersvc %s: exit status %d, output %q; want %d and %q", strings.Join(step.args, " "), status, out, step.status, step.want)
		}
	}

	// Another migrating instance's lock: goose's own lock id.
	release := holdTx(t, databaseURL, func(ctx context.Context, tx pgx.Tx) error {
		_, err := tx.Exec(ctx, "SELECT pg_advisory_lock($1)", lock.DefaultLockID)
		return err
	})
	c := startContainer(t, databaseURL, nil, "migrate", "up")
	status, out, check := c.health(t)
	t.Logf("$ podman healthcheck run  # migrate up waiting for the lock; exit status %d, %q; the check said %q", status, out, check)
	if status != 1 || out != "unhealthy" || !strings.Contains(check, "connection refused") {
		t.Errorf("podman healthcheck run while nothing listens: exit status %d, %q, check %q; want 1, unhealthy, connection refused", status, out, check)
	}
	if running := c.inspect(t, "{{.State.Running}}"); running != "true" {
		t.Fatalf("migrate up no longer runs while another instance holds the lock; log:\n%s", c.logs(t))
	}
	release()
	exit := strings.TrimSpace(mustPodman(t, "wait", c.name))
	logs := c.logs(t)
	t.Logf("$ podman wait  # migrate up, once the lock is free\n%s\n%s", exit, logs)
	if exit != "0" || !strings.Contains(logs, "applied 00001_create_users.sql") {
		t.Errorf("migrate up: exit status %s, output %q; want 0 and applied 00001_create_users.sql", exit, logs)
	}

	if out, status := runOnce(t, databaseURL, "migrate", "version"); status != 0 || !strings.Contains(out, "schema version 3 (latest embedded: 3)") {
		t.Errorf("usersvc migrate version: exit status %d, output %q; want 0 and schema version 3 (latest embedded: 3)", status, out)
	}
}

// serveChecks starts the image's default command, serve, with flags, and
// checks that it becomes healthy, runs as uid, and serves; returns the
// container.
func serveChecks(t *testing.T, databaseURL, uid string, flags ...string) *container {
	t.Helper()
	c := startContainer(t, databaseURL, flags)
	base := "http://" + c.addr
	waitFor(t, base+"/readyz", 30*time.Second, nil)
	status, out, check := c.health(t)
	t.Logf("$ podman healthcheck run  # serving; exit status %d, %q; the check said %q", status, out, check)
	if status != 0 || !strings.Contains(check, "healthy: GET http://"+c.addr+"/healthz: 200 OK") {
		t.Errorf("podman healthcheck run while serving: exit status %d, %q, check %q; want 0 and 200 OK", status, out, check)
	}
	if got := c.uid(t); got != uid {
		t.Errorf("serve runs as uid %s, want %s", got, uid)
	} else {
		t.Logf("serve runs as uid %s", got)
	}
	return c
}

// post sends POST /users with a name and returns the status and body.
func post(t *testing.T, base, name string) (int, string) {
	t.Helper()
	res, err := http.Post(base+"/users", "application/json", strings.NewReader(`{"name":`+strconv.Quote(name)+`}`))
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	body, _ := io.ReadAll(res.Body)
	t.Logf("POST /users %q: %d %s", name, res.StatusCode, bytes.TrimSpace(body))
	return res.StatusCode, string(body)
}

// stopChecks stops the container with podman stop, which sends SIGTERM
// and would SIGKILL only after far longer than shutdownTimeout, and checks
// that serve exited 0 within shutdownTimeout, its log ending with the
// shutdown lines.
func stopChecks(t *testing.T, c *container, shutdownTimeout time.Duration) {
	t.Helper()
	start := time.Now()
	mustPodman(t, "stop", "--time", strconv.Itoa(int(3*shutdownTimeout/time.Second)), c.name)
	took := time.Since(start)
	exit := c.inspect(t, "{{.State.ExitCode}}")
	logs := c.logs(t)
	t.Logf("$ podman stop  # %v; exit code %s; log:\n%s", took.Round(time.Millisecond), exit, logs)
	if exit != "0" || took > shutdownTimeout {
		t.Errorf("podman stop: exit code %s after %v; want 0 within SHUTDOWN_TIMEOUT (%v)", exit, took, shutdownTimeout)
	}
	var msgs []string
	for _, rec := range logRecords(t, logs) {
		msgs = append(msgs, fmt.Sprint(rec["msg"]))
	}
	if len(msgs) < 2 || !slices.Equal(msgs[len(msgs)-2:], []string{"shutting down", "stopped"}) {
		t.Errorf("serve's log ends with %q, want [shutting down stopped]", msgs)
	}
	if rec := findRecord(logRecords(t, logs), "msg", "listening"); rec == nil || rec["version"] != testVersion {
		t.Errorf("serve's start-up line %v lacks version %s", rec, testVersion)
	}
}

// testImageServe runs serve as the image is meant to run, on a read-only
// root filesystem with nothing writable, as its own user, and stops it.
func testImageServe(t *testing.T, databaseURL string) {
	const shutdownTimeout = 10 * time.Second
	c := serveChecks(t, databaseURL, "65532", "--read-only", "--read-only-tmpfs=false",
		"--env", "SHUTDOWN_TIMEOUT="+shutdownTimeout.String())
	base := "http://" + c.addr
	if status, body := post(t, base, "from the image"); status != http.StatusCreated {
		t.Errorf("POST /users: status = %d, want 201; body %s", status, body)
	}
	if status, body := post(t, base, "from the image"); status != http.StatusBadRequest {
		t.Errorf("POST /users with a name taken: status = %d, want 400; body %s", status, body)
	}
	res, err := http.Get(base + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	metrics, _ := io.ReadAll(res.Body)
	res.Body.Close()
	if want := `version="` + testVersion + `"} 1`; !bytes.Contains(metrics, []byte(want)) {
		t.Errorf("GET /metrics lacks build_info with %s", want)
	}
	stopChecks(t, c, shutdownTimeout)
}

// testImageAnyUID runs serve as a uid that the image does not know, with
// no group, as OpenShift runs containers.
func testImageAnyUID(t *testing.T, databaseURL string) {
	const shutdownTimeout = 15 * time.Second // the default
	c := serveChecks(t, databaseURL, "12345", "--read-only", "--read-only-tmpfs=false", "--user", "12345")
	if status, body := post(t, "http://"+c.addr, "from uid 12345"); status != http.StatusCreated {
		t.Errorf("POST /users: status = %d, want 201; body %s", status, body)
	}
	stopChecks(t, c, shutdownTimeout)
}
