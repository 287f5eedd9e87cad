# Build: make docker (or docker build --build-arg VERSION=v1.0.0 -t usersvc .)
# Run:   make compose-up (compose.yaml starts PostgreSQL and migrates first)
#
# No "# syntax=" line: nothing here needs a newer frontend than the builder's
# own, and the directive would pull a docker/dockerfile image by a moving tag.

# The Go version matches go.mod's, so the image's go never fetches a
# toolchain. bookworm: the Debian release of CI and development, and it ships
# the CA bundle that the final stage copies.
FROM golang:1.27.3-bookworm AS build
WORKDIR /src

# Dependencies first, so that a code change reuses the cached module layer.
# Only the service's module is downloaded: tools/ (sqlc, goose CLI) is not
# needed to build, since the generated code in db/ is committed, and
# .dockerignore keeps tools/ out of the context.
COPY go.mod go.sum ./
RUN go mod download && go mod verify

# From here on the build is offline: a module that the download above did not
# fetch (a tool's, say) fails the build instead of being fetched quietly.
ENV GOPROXY=off

# The final stage is scratch: no passwd or group file unless we write one.
# 65532 is the uid/gid distroless uses for nonroot; the names make tools that
# look the user up (ps, docker top, id) print "nonroot" rather than a number.
RUN mkdir -p /out/etc \
	&& echo 'nonroot:x:65532:65532:nonroot:/nonexistent:/sbin/nologin' >/out/etc/passwd \
	&& echo 'nonroot:x:65532:' >/out/etc/group

COPY . .
# VERSION is declared this late so that a new version reuses every layer above.
ARG VERSION=devel
# Kept as one line of exactly this shape: a Go test extracts it and builds the
# binary the same way outside Docker. CGO_ENABLED=0 makes a static binary that
# runs on scratch; -trimpath keeps the build machine's paths out of it.
RUN CGO_ENABLED=0 go build -trimpath -ldflags "-s -w -X main.version=${VERSION}" -o /out/usersvc ./cmd/usersvc

# scratch instead of distroless: distroless tags move and can only be pinned
# by digest, while scratch is empty and needs no pin. The image holds the
# binary, the CA bundle (for TLS to a managed PostgreSQL, sslmode=verify-full)
# and the nonroot user's passwd and group entries; no shell, no package manager.
FROM scratch

ARG VERSION=devel
# The repository's URL (make docker SOURCE=https://...); empty when not given.
ARG SOURCE=
LABEL org.opencontainers.image.title="usersvc" \
	org.opencontainers.image.description="HTTP API for the users table in PostgreSQL" \
	org.opencontainers.image.version="${VERSION}" \
	org.opencontainers.image.source="${SOURCE}"

COPY --from=build /etc/ssl/certs/ca-certificates.crt /etc/ssl/certs/ca-certificates.crt
COPY --from=build /out/etc/passwd /out/etc/group /etc/
# Owned by root and not writable by the user it runs as.
COPY --from=build /out/usersvc /usersvc

# Numeric, so that Kubernetes' runAsNonRoot can verify it without reading
# /etc/passwd.
USER 65532:65532

# The port EXPOSE names, stated where it is set. serve and healthcheck both
# read it, so -e HTTP_ADDR=:9090 moves the two together (EXPOSE only
# documents; publish the new port with -p).
ENV HTTP_ADDR=:8080
EXPOSE 8080

# Exec form, because there is no shell (and no curl): the binary itself GETs
# the local /healthz and exits 0 on 200, else 1. serve listens within
# milliseconds, database or not; start-period is slack for a slow host.
# /healthz does not touch
# the database, so an outage shows in /readyz (503) without marking the
# container unhealthy.
HEALTHCHECK --interval=10s --timeout=3s --start-period=5s --retries=3 CMD ["/usersvc", "healthcheck"]

ENTRYPOINT ["/usersvc"]
CMD ["serve"]
