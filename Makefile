# usersvc: `make run` serves the API on :8080, `make test` runs every test.
# Both work on a fresh machine with Go and the PostgreSQL server binaries.

# go.mod asks for Go 1.27.3: let the go command fetch that toolchain through
# the module proxy when the installed one is older.
export GOTOOLCHAIN := auto

VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo devel)
LDFLAGS := -s -w -X main.version=$(VERSION)
TOOL    := go tool -modfile=tools/go.mod
BIN     := bin/usersvc
LINT    := tools/lint/node_modules
OPENAPI := internal/server/openapi.yaml

.PHONY: run build test test-pgbouncer install-pgbouncer test-ha install-pg-auto-failover test-partition install-iptables test-image test-compose test-tracing install-podman test-docs docs-screenshot install-chromium swagger-ui swagger-ui-check fuzz check lint lint-openapi install-yamllint fmt vet generate sqlc-diff client-diff tidy clean image docker compose-up compose-down bench benchstat bench-go soak bench-deps install-wrk

## run: serve on :8080 against DATABASE_URL, or against a private PostgreSQL under .data/
run: build
ifdef DATABASE_URL
	AUTO_MIGRATE=true ./$(BIN) serve
else
	go build -o bin/devdb ./cmd/devdb
	AUTO_MIGRATE=true ./bin/devdb -dir .data -- ./$(BIN) serve
endif

## build: the static binary, as the Dockerfile builds it
build:
	CGO_ENABLED=0 go build -trimpath -ldflags '$(LDFLAGS)' -o $(BIN) ./cmd/usersvc

## test: every test, with the race detector, against a real PostgreSQL
## (TEST_DATABASE_URL, else a throwaway server the tests start themselves)
test:
	go test -race -count=1 ./...

## test-pgbouncer: three replicas of usersvc behind PgBouncer in transaction
## mode (cmd/usersvc/pgbouncer_test.go, build tag pgbouncer); installs
## Debian's pgbouncer first when it is missing (apt-get as root, else says how)
test-pgbouncer:
	@command -v pgbouncer >/dev/null || [ -x /usr/sbin/pgbouncer ] || $(MAKE) --no-print-directory install-pgbouncer
	go test -race -count=1 -tags pgbouncer -run '^TestPgBouncer$$' -v ./cmd/usersvc

install-pgbouncer:
	@if [ "$$(id -u)" -ne 0 ]; then \
		echo "make test-pgbouncer needs pgbouncer: sudo apt-get install pgbouncer" >&2; exit 1; \
	fi
	apt-get update -q
	DEBIAN_FRONTEND=noninteractive apt-get install -y -q pgbouncer

## test-ha: usersvc against a pg_auto_failover formation (a monitor and two
## nodes with synchronous replication, each node in a network namespace of
## its own) whose primary is killed, fenced read-only, switched over and cut
## off from the network under load (cmd/usersvc/ha_test.go, build tag ha; as
## root); installs Debian's postgresql-15-auto-failover and iptables first
## when they are missing (apt-get as root, else says how)
test-ha:
	@command -v pg_autoctl >/dev/null || $(MAKE) --no-print-directory install-pg-auto-failover
	@command -v iptables >/dev/null || [ -x /usr/sbin/iptables ] || $(MAKE) --no-print-directory install-iptables
	go test -race -count=1 -timeout 30m -tags ha -run '^TestHighAvailability$$' -v ./cmd/usersvc

install-pg-auto-failover:
	@if [ "$$(id -u)" -ne 0 ]; then \
		echo "make test-ha needs pg_auto_failover: sudo apt-get install postgresql-15-auto-failover" >&2; exit 1; \
	fi
	apt-get update -q
	DEBIAN_FRONTEND=noninteractive apt-get install -y -q postgresql-15-auto-failover

## test-partition: usersvc against a PostgreSQL in its own network namespace
## whose link is cut with iptables under load (cmd/usersvc/partition_test.go,
## build tag partition; about 10 minutes, as root); installs Debian's
## iptables first when it is missing (apt-get as root, else says how)
test-partition:
	@command -v iptables >/dev/null || [ -x /usr/sbin/iptables ] || $(MAKE) --no-print-directory install-iptables
	go test -race -count=1 -timeout 30m -tags partition -run '^TestPartition$$' -v ./cmd/usersvc

install-iptables:
	@if [ "$$(id -u)" -ne 0 ]; then \
		echo "make test-partition and make test-ha need root and iptables: sudo apt-get install iptables" >&2; exit 1; \
	fi
	apt-get update -q
	DEBIAN_FRONTEND=noninteractive apt-get install -y -q iptables

## test-image: builds the image with make image and podman from the
## unchanged Dockerfile, then checks its config and files and runs it
## against a throwaway PostgreSQL (cmd/usersvc/image_test.go, build tag
## image). Where Go's base image cannot be pulled, it builds from a local
## stand-in made of this Go release and busybox-static. Installs podman, runc
## and busybox-static first when missing (apt-get as root, else says how)
test-image:
	@command -v podman >/dev/null && command -v runc >/dev/null && command -v busybox >/dev/null || $(MAKE) --no-print-directory install-podman
	go test -race -count=1 -timeout 30m -tags image -run '^TestImage$$' -v ./cmd/usersvc

## test-compose: compose.yaml, unchanged, brought up by Docker Compose
## (pinned in tools/compose/go.mod) on the Docker API of a podman system service:
## health, the order of start, the API, the volume across down and up, a
## PostgreSQL restart, down --volumes (cmd/usersvc/compose_test.go, build
## tag compose). Stands in for postgres's image, as test-image does for
## Go's, where no registry answers. Installs podman and its network tools
## first when missing
test-compose: bin/docker-compose
	@command -v podman >/dev/null && command -v runc >/dev/null && command -v busybox >/dev/null && [ -x /usr/lib/podman/netavark ] || $(MAKE) --no-print-directory install-podman
	COMPOSE=$(CURDIR)/bin/docker-compose go test -count=1 -timeout 30m -tags compose -run '^TestCompose$$' -v ./cmd/usersvc

## test-tracing: requests of serve followed into Jaeger (built from
## tools/jaeger/go.mod) on loopback: the trace of a traceparent, its SQL
## spans, what no span carries, the log lines, a 400, the flush on SIGTERM,
## and Jaeger going away (cmd/usersvc/tracing_test.go, build tag tracing)
test-tracing: bin/jaeger
	JAEGER=$(CURDIR)/bin/jaeger go test -count=1 -timeout 10m -tags tracing -run '^TestTracing$$' -v ./cmd/usersvc

# The pinned Docker Compose and Jaeger, each built from a module of its own;
# rebuilt when it changes.
bin/docker-compose: tools/compose/go.mod tools/compose/go.sum
	go build -modfile=tools/compose/go.mod -o $@ \
		-ldflags "-X github.com/docker/compose/v2/internal.Version=$$(cd tools/compose && go list -m -f '{{.Version}}' github.com/docker/compose/v2)" \
		github.com/docker/compose/v2/cmd
bin/jaeger: tools/jaeger/go.mod tools/jaeger/go.sum
	go build -modfile=tools/jaeger/go.mod -o $@ github.com/jaegertracing/jaeger/cmd/jaeger

# Without the recommended packages, which serve rootless podman
# (slirp4netns, uidmap, fuse-overlayfs) and systemd user sessions. runc is
# named so that apt does not choose crun, which fails on these machines;
# netavark and aardvark-dns resolve service names on a compose network.
install-podman:
	@if [ "$$(id -u)" -ne 0 ]; then \
		echo "make test-image and test-compose need podman, runc, busybox-static, netavark and aardvark-dns: sudo apt-get install --no-install-recommends podman runc busybox-static netavark aardvark-dns" >&2; exit 1; \
	fi
	apt-get update -q
	DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends podman runc busybox-static netavark aardvark-dns

## test-docs: the /docs page in a real browser: Debian's chromium, headless,
## driven by chromedp (internal/server/docs_browser_test.go, build tag
## browser); installs chromium first when it is missing (apt-get as root,
## else says how)
test-docs:
	@command -v chromium >/dev/null || $(MAKE) --no-print-directory install-chromium
	go test -race -count=1 -tags browser -run '^TestDocsPage$$' -v ./internal/server $(if $(TEST_DOCS_ARGS),-args $(TEST_DOCS_ARGS))

## docs-screenshot: test-docs, keeping its screenshot of the page in
## docs/docs-page.png (commit it when the page changes)
docs-screenshot:
	@$(MAKE) --no-print-directory test-docs TEST_DOCS_ARGS='-screenshot $(CURDIR)/docs/docs-page.png'

install-chromium:
	@if [ "$$(id -u)" -ne 0 ]; then \
		echo "make test-docs needs chromium: sudo apt-get install chromium" >&2; exit 1; \
	fi
	apt-get update -q
	DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends chromium

# Swagger UI, which GET /docs serves, is the npm package swagger-ui-dist at
# the version tools/swagger-ui/package-lock.json pins. The few files the page
# needs are committed, so that go build needs no npm: the two large ones
# gzipped (served as they are to browsers, which all accept gzip), the rest
# as published (its package.json records the version, LICENSE and NOTICE
# its terms).
SWAGGER_UI      := internal/server/docs/swagger-ui
SWAGGER_UI_NPM  := tools/swagger-ui/node_modules/swagger-ui-dist
SWAGGER_UI_GZIP := swagger-ui-bundle.js swagger-ui.css
SWAGGER_UI_COPY := swagger-ui-bundle.js.LICENSE.txt favicon-32x32.png LICENSE NOTICE package.json

## swagger-ui: replace the committed Swagger UI files with those of the
## version tools/swagger-ui/package.json pins (edit it, then run this)
swagger-ui: tools/swagger-ui/node_modules/.installed
	rm -rf $(SWAGGER_UI)
	mkdir -p $(SWAGGER_UI)
	cd $(SWAGGER_UI_NPM) && cp $(SWAGGER_UI_COPY) $(CURDIR)/$(SWAGGER_UI)/
	for f in $(SWAGGER_UI_GZIP); do gzip -9 -n -c $(SWAGGER_UI_NPM)/$$f > $(SWAGGER_UI)/$$f.gz; done

## swagger-ui-check: fail unless the committed Swagger UI files are exactly
## those of the pinned package (CI runs it)
swagger-ui-check: tools/swagger-ui/node_modules/.installed
	@set -e; want=$$(printf '%s\n' $(SWAGGER_UI_COPY) $(addsuffix .gz,$(SWAGGER_UI_GZIP)) | sort); \
	have=$$(ls -A $(SWAGGER_UI) | sort); \
	[ "$$have" = "$$want" ] || { echo "$(SWAGGER_UI) holds:" $$have "; want:" $$want "(make swagger-ui)" >&2; exit 1; }; \
	differs() { echo "$(SWAGGER_UI)/$$1 is not the pinned package's (make swagger-ui)" >&2; exit 1; }; \
	for f in $(SWAGGER_UI_COPY); do cmp -s $(SWAGGER_UI_NPM)/$$f $(SWAGGER_UI)/$$f || differs $$f; done; \
	for f in $(SWAGGER_UI_GZIP); do gzip -d -c $(SWAGGER_UI)/$$f.gz | cmp -s $(SWAGGER_UI_NPM)/$$f - || differs $$f.gz; done; \
	echo "$(SWAGGER_UI): swagger-ui-dist $$(sed -n 's/^  "version": "\(.*\)",$$/\1/p' $(SWAGGER_UI)/package.json), as pinned"

# --ignore-scripts: swagger-ui-dist depends on @scarf/scarf, whose install
# script reports the installation to scarf.sh; nothing here needs it to run.
tools/swagger-ui/node_modules/.installed: tools/swagger-ui/package.json tools/swagger-ui/package-lock.json
	@command -v npm >/dev/null || { echo "this needs Node.js and npm (Debian: apt-get install nodejs npm)" >&2; exit 1; }
	cd tools/swagger-ui && npm ci --ignore-scripts --no-audit --no-fund
	touch $@

## fuzz: each fuzz target of internal/server (FuzzCreateUser, ...) for
## FUZZTIME (default 1m), one after the other, through the real handler
## stack and a real PostgreSQL. A failing input is saved under
## internal/server/testdata/fuzz/<target>/ and fails the run; make test then
## replays it. FUZZMINIMIZETIME bounds the shrinking of each new input
## (default 100x: runs, not seconds, so that fuzzing keeps the time).
FUZZTIME         ?= 1m
FUZZMINIMIZETIME ?= 100x
fuzz:
	@set -e; for t in $$(grep -ho '^func Fuzz[A-Za-z0-9_]*' internal/server/*_test.go | cut -c6-); do \
		echo "== $$t for $(FUZZTIME)"; \
		go test -run '^$$' -fuzz "^$$t\$$" -fuzztime $(FUZZTIME) -fuzzminimizetime $(FUZZMINIMIZETIME) ./internal/server; \
	done

## bench: the load benchmark of docs/benchmarks.md: usersvc, the floor (a
## bare handler of the same routes) and pgbench on the same SQL, 10 rounds
## (the runs recorded there say how long they took). BENCH_ARGS passes flags, e.g.
## BENCH_ARGS='-quick' for a one-minute smoke run (bin/bench -h lists them).
## Installs wrk when root. PostgreSQL's data goes under .bench/, on the
## checkout's disk. Go benchmark format on stdout (progress on stderr), for
## benchstat: make bench > new.txt; make benchstat BENCH='old.txt new.txt'
bench: bench-deps
	@./bin/bench $(BENCH_ARGS)

## benchstat: benchstat (pinned in tools/go.mod) on make bench's output:
## BENCH=new.txt summarises a run, BENCH='old.txt new.txt' compares two;
## BENCHSTAT_ARGS passes flags, e.g. '-col /impl' for usersvc beside the
## floor and pgbench in one run
benchstat:
	$(TOOL) benchstat $(BENCHSTAT_ARGS) $(BENCH)

## soak: sustained mixed load (every kind of request, each with the answer
## it must get) from wrk for SOAK_DURATION over SOAK_CONNECTIONS connections,
## against the service and a throwaway PostgreSQL, sampling the service's
## RSS and goroutines every 10 s; fails on any error, or when RSS or
## goroutines grow (docs/soak.md). Not part of make test. SOAK_ARGS passes
## more flags (bin/bench soak -h lists them). Installs wrk when root. The
## report is markdown on stdout: make soak > run.md
SOAK_DURATION    ?= 5m
SOAK_CONNECTIONS ?= 16
soak: bench-deps
	@./bin/bench soak -duration $(SOAK_DURATION) -connections $(SOAK_CONNECTIONS) $(SOAK_ARGS)

# What make bench and make soak run: the service as make build builds it,
# bin/bench, and wrk. Quiet on stdout, which is the report's.
bench-deps:
	@$(MAKE) --no-print-directory -s build >&2
	@go build -o bin/bench ./cmd/bench
	@command -v wrk >/dev/null || $(MAKE) --no-print-directory install-wrk >&2

# wrk comes from Debian: installed here when running as root, else make
# bench says how.
install-wrk:
	@if [ "$$(id -u)" -ne 0 ]; then \
		echo "make bench and make soak need wrk: sudo apt-get install wrk" >&2; exit 1; \
	fi
	apt-get update -q
	DEBIAN_FRONTEND=noninteractive apt-get install -y -q wrk

## bench-go: the request path's micro-benchmarks (JSON and handlers, no
## network, no database), with allocations
bench-go:
	go test -run '^$$' -bench . -skip ChangeDelivery -benchmem ./internal/server/

## check: what CI fails on besides the tests
check: fmt vet sqlc-diff client-diff
	go mod verify
	@go mod tidy -diff >/dev/null || { echo "go.mod or go.sum is not tidy: run make tidy"; go mod tidy -diff; exit 1; }

fmt:
	@out=$$(gofmt -l $$(git ls-files '*.go')); \
	if [ -n "$$out" ]; then echo "gofmt would change:"; echo "$$out"; exit 1; fi

# The pgbouncer, image and ha build tags' tests too, together, so that they
# compile without pgbouncer, podman or pg_autoctl and beside each other.
vet:
	go vet ./...
	go vet -tags pgbouncer,image,ha,partition,compose,tracing ./cmd/usersvc
	go vet -tags browser ./internal/server

## generate: regenerate db/ from queries/ and migrations/, serve's list of
## the statements to prepare from db/, and the Go client client/ from the
## OpenAPI document (commit them all)
PREPARED     := internal/postgres/prepared.gen.go
CLIENT       := client/client.gen.go
OAPI_CODEGEN := $(TOOL) oapi-codegen -config client/oapi-codegen.yaml $(OPENAPI)
generate:
	$(TOOL) sqlc generate
	cd tools && go run ./preparedqueries -db ../db -out ../$(PREPARED)
	$(OAPI_CODEGEN) > $(CLIENT).tmp && mv $(CLIENT).tmp $(CLIENT)

## sqlc-diff: fail when db/ is not what sqlc generates, or the list of
## prepared statements not what db/ gives
sqlc-diff:
	$(TOOL) sqlc diff
	@cd tools && go run ./preparedqueries -db ../db | diff -u ../$(PREPARED) - || { echo "$(PREPARED) is stale: run make generate"; exit 1; }

## client-diff: fail when the Go client is not what oapi-codegen generates
## from the OpenAPI document, as sqlc-diff does for db/
client-diff:
	@echo '$(OAPI_CODEGEN) | diff -u $(CLIENT) -'; \
	tmp=$$(mktemp) && trap 'rm -f "$$tmp"' EXIT && $(OAPI_CODEGEN) > "$$tmp" || exit 1; \
	diff -u $(CLIENT) "$$tmp" || { echo "$(CLIENT) is stale: run make generate"; exit 1; }

tidy:
	go mod tidy
	cd tools && go mod tidy
	cd tools/compose && go mod tidy
	cd tools/jaeger && go mod tidy

## lint: the Dockerfile, compose.yaml, every YAML file and the OpenAPI
## document (lint-openapi); installs the linters first when they are
## missing (npm, and apt-get as root)
# dockerfile-utils knows every instruction's flags (dockerfilelint does not,
# see .dockerfilelintrc) but exits 0 on warnings, so any output fails.
lint: $(LINT)/.installed lint-openapi
	@command -v yamllint >/dev/null || $(MAKE) --no-print-directory install-yamllint
	$(LINT)/.bin/dockerfilelint Dockerfile
	@echo '$(LINT)/.bin/dockerfile-utils lint Dockerfile'; \
	out=$$($(LINT)/.bin/dockerfile-utils lint Dockerfile); rc=$$?; \
	[ -z "$$out" ] || printf '%s\n' "$$out"; [ $$rc -eq 0 ] && [ -z "$$out" ]
	$(LINT)/.bin/dclint --config .dclintrc --max-warnings 0 compose.yaml
	yamllint --strict .

## lint-openapi: the OpenAPI document as its consumers' tools read it:
## Redocly's recommended rules and Spectral's spectral:oas, failing on any
## warning; openapi-typescript's types, which tsc must compile. (oapi-codegen
## runs in make check, through client-diff.)
lint-openapi: $(LINT)/.installed
	REDOCLY_TELEMETRY=off REDOCLY_SUPPRESS_UPDATE_NOTICE=true \
		$(LINT)/.bin/redocly lint --config tools/lint/redocly.yaml --format stylish $(OPENAPI)
	$(LINT)/.bin/spectral lint --ruleset tools/lint/spectral.yaml --fail-severity hint $(OPENAPI)
	@echo '$(LINT)/.bin/openapi-typescript $(OPENAPI) | tsc --strict'; \
	tmp=$$(mktemp -d) && trap 'rm -rf "$$tmp"' EXIT && \
	$(LINT)/.bin/openapi-typescript $(OPENAPI) --output "$$tmp/openapi.d.ts" && \
	$(LINT)/.bin/tsc --noEmit --strict "$$tmp/openapi.d.ts"

# The pinned npm linters (tools/lint/package-lock.json), reinstalled when the
# lock file changes. --ignore-scripts: Spectral depends on @scarf/scarf,
# whose install script reports the installation to scarf.sh; none of the
# linters needs an install script.
$(LINT)/.installed: tools/lint/package.json tools/lint/package-lock.json
	@command -v npm >/dev/null || { echo "make lint needs Node.js and npm (Debian: apt-get install nodejs npm)" >&2; exit 1; }
	cd tools/lint && npm ci --ignore-scripts --no-audit --no-fund
	touch $@

# yamllint comes from Debian: installed here when running as root (as CI
# does), else make lint says how.
install-yamllint:
	@if [ "$$(id -u)" -ne 0 ]; then \
		echo "make lint needs yamllint: sudo apt-get install yamllint (or pipx install yamllint)" >&2; exit 1; \
	fi
	apt-get update -q
	DEBIAN_FRONTEND=noninteractive apt-get install -y -q yamllint

## image: the container image $(IMAGE) (usersvc:$(VERSION)), with podman
## when it is installed, else docker (ENGINE=docker chooses). SOURCE, when
## set, becomes its org.opencontainers.image.source label (the repository's
## URL); IMAGE_FLAGS passes more flags to the build
IMAGE  ?= usersvc:$(VERSION)
ENGINE ?= $(if $(shell command -v podman),podman,docker)
# podman writes OCI images unless told otherwise, and the OCI format has no
# HEALTHCHECK: --format docker keeps it. --network host runs the RUN steps
# (go mod download reaches the module proxy) on the host's network rather
# than on a bridge that podman sets up with CNI and iptables, which not
# every machine allows.
image:
	$(ENGINE) build $(if $(filter podman,$(firstword $(ENGINE))),--format docker --network host) \
		--build-arg VERSION=$(VERSION) $(if $(SOURCE),--build-arg SOURCE=$(SOURCE)) $(IMAGE_FLAGS) -t $(IMAGE) .

# The target's old name, which the Dockerfile's header names.
docker: image

## compose-up: PostgreSQL, the migrations, then the API on localhost:8080,
## in containers (compose.yaml); Ctrl-C stops them
compose-up:
	VERSION=$(VERSION) docker compose up --build

## compose-down: remove the containers; the database volume stays
## (docker compose down -v removes it too)
compose-down:
	docker compose down

clean:
	rm -rf bin
