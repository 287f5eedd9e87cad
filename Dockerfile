# syntax=docker/dockerfile:1
# Build: make docker (or docker build --build-arg VERSION=v1.0.0 -t usersvc .)

ARG GO_VERSION=1.27.3

FROM golang:${GO_VERSION}-bookworm AS build
WORKDIR /src
# Dependencies first, so that a code change reuses the cached module layer.
# Only the service's module is downloaded: tools/ (sqlc, goose) is not needed
# to build, since the generated code in db/ is committed.
COPY go.mod go.sum ./
RUN go mod download && go mod verify
COPY . .
ARG VERSION=devel
RUN CGO_ENABLED=0 go build -trimpath -ldflags "-s -w -X main.version=${VERSION}" -o /out/usersvc ./cmd/usersvc

FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /out/usersvc /usersvc
USER nonroot:nonroot
EXPOSE 8080
ENTRYPOINT ["/usersvc"]
CMD ["serve"]
