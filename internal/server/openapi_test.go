package server

import (
	"bytes"
	"context"
	"encoding/json/v2"
	"errors"
	"fmt"
	"io"
	"maps"
	"net/http"
	"net/http/httptest"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"

	"github.com/getkin/kin-openapi/openapi3"
	"github.com/getkin/kin-openapi/openapi3filter"
	"github.com/getkin/kin-openapi/routers"
	"github.com/getkin/kin-openapi/routers/gorillamux"
)

// openAPISpec is openapi.yaml, parsed and validated, with a router over its
// paths. It is read-only once built, so parallel tests share it.
type openAPISpec struct {
	doc    *openapi3.T
	router routers.Router
}

// loadOpenAPI reads openapi.yaml from the package directory once per test
// binary. It returns an error if the file is missing, does not parse, or is
// not a valid OpenAPI document.
//
// kin-openapi's default body decoders already cover application/problem+json
// and application/yaml; OpenMetrics and HTML, which it does not know, are
// read as the plain text they are.
var loadOpenAPI = sync.OnceValues(func() (*openAPISpec, error) {
	for _, mt := range []string{"application/openmetrics-text", "text/html"} {
		openapi3filter.RegisterBodyDecoder(mt, openapi3filter.PlainBodyDecoder)
	}
	data, err := os.ReadFile("openapi.yaml")
	if err != nil {
		return nil, fmt.Errorf("read openapi document: %w", err)
	}
	doc, err := openapi3.NewLoader().LoadFromData(data)
	if err != nil {
		return nil, fmt.Errorf("parse openapi.yaml: %w", err)
	}
	if err := doc.Validate(context.Background(), openapi3.EnableMultiError()); err != nil {
		return nil, fmt.Errorf("validate openapi.yaml: %w", err)
	}
	router, err := gorillamux.NewRouter(doc)
	if err != nil {
		return nil, fmt.Errorf("route openapi.yaml: %w", err)
	}
	return &openAPISpec{doc: doc, router: router}, nil
})

// checkOpenAPI validates resp (status, headers, body) against
// internal/server/openapi.yaml for the route of req; it fails the test with a
// readable message on any mismatch, or if no route in the document matches req.
func checkOpenAPI(t testing.TB, req *http.Request, status int, header http.Header, body []byte) {
	t.Helper()
	spec, err := loadOpenAPI()
	if err != nil {
		t.Fatalf("load openapi.yaml: %v", err)
	}
	if err := spec.validateResponse(t.Context(), req, status, header, body); err != nil {
		t.Errorf("%s %s: response %d does not match openapi.yaml: %v", req.Method, req.URL.RequestURI(), status, err)
	}
}

// validateResponse is checkOpenAPI's core. It returns an error naming the
// first mismatch (or all of them, for body schema errors), or if no route of
// the document matches req.
//
// Beyond openapi3filter.ValidateResponse it checks that HEAD responses and
// responses documented without content (204) have an empty body, and it
// validates HEAD responses, which ValidateResponse skips entirely, by their
// status, headers and Content-Type (that of the GET operation's response).
//
// A method the document does not list for a path (TRACE /users/1) gets the
// mux's 405; it must answer 405 and match the 405 response of the path's GET
// operation, which is the same MethodNotAllowed component on every operation.
// Where the GET operation needs a token, it may answer that operation's 401.
func (s *openAPISpec) validateResponse(ctx context.Context, req *http.Request, status int, header http.Header, body []byte) error {
	route, pathParams, err := s.router.FindRoute(req)
	switch {
	case errors.Is(err, routers.ErrMethodNotAllowed):
		if status != http.StatusMethodNotAllowed && status != http.StatusUnauthorized {
			return fmt.Errorf("openapi.yaml has no %s operation for this path, so the status must be 405 (or the GET operation's 401)", req.Method)
		}
		get := req.Clone(ctx)
		get.Method = http.MethodGet
		if route, pathParams, err = s.router.FindRoute(get); err != nil {
			return fmt.Errorf("find the GET operation whose 405 response to use: %w", err)
		}
	case err != nil:
		return fmt.Errorf("no route in openapi.yaml matches: %w", err)
	}

	responseRef := route.Operation.Responses.Status(status)
	if responseRef == nil {
		responseRef = route.Operation.Responses.Default()
	}
	if responseRef == nil || responseRef.Value == nil {
		return fmt.Errorf("status %d is not documented for %s (operation %s)", status, route.Path, route.Operation.OperationID)
	}
	response := responseRef.Value

	validated := req
	opts := &openapi3filter.Options{IncludeResponseStatus: true, MultiError: true}
	opts.WithCustomSchemaErrorFunc(schemaErrorMessage)
	if req.Method == http.MethodHead {
		if len(body) != 0 {
			return fmt.Errorf("HEAD response has a %d-byte body, want none", len(body))
		}
		// HEAD responses are documented without content: the
		// Content-Type is the one GET would have, for the same status.
		get := req.Clone(ctx)
		get.Method = http.MethodGet
		getRoute, _, err := s.router.FindRoute(get)
		if err != nil {
			return fmt.Errorf("find the GET operation whose Content-Type HEAD answers with: %w", err)
		}
		if getResponse := getRoute.Operation.Responses.Status(status); getResponse != nil {
			content := getResponse.Value.Content
			if ct := header.Get("Content-Type"); ct != "" && len(content) != 0 && content.Get(ct) == nil {
				return fmt.Errorf("Content-Type %q is not documented for status %d of %s", ct, status, getRoute.Operation.OperationID)
			}
		}
		// ValidateResponse returns nil for any HEAD request; asking as GET
		// with the body excluded still checks the status and headers of the
		// HEAD operation found above.
		validated = req.Clone(ctx)
		validated.Method = http.MethodGet
		opts.ExcludeResponseBody = true
	} else if len(response.Content) == 0 && len(body) != 0 {
		return fmt.Errorf("status %d of %s is documented without a body, got %d bytes: %.200q", status, route.Operation.OperationID, len(body), body)
	}
	if status == http.StatusNotModified {
		// ValidateResponse skips a 304 entirely; its headers are checked here.
		for name, ref := range response.Headers {
			v := header.Get(name)
			switch {
			case v == "" && ref.Value.Required:
				return fmt.Errorf("operation %s: response header %q missing", route.Operation.OperationID, name)
			case v != "":
				if err := ref.Value.Schema.Value.VisitJSON(v); err != nil {
					return fmt.Errorf("operation %s: response header %q: %w", route.Operation.OperationID, name, err)
				}
			}
		}
		return nil
	}

	input := &openapi3filter.ResponseValidationInput{
		RequestValidationInput: &openapi3filter.RequestValidationInput{
			Request:    validated,
			PathParams: pathParams,
			Route:      route,
		},
		Status:  status,
		Header:  header,
		Body:    io.NopCloser(bytes.NewReader(body)),
		Options: opts,
	}
	if err := openapi3filter.ValidateResponse(ctx, input); err != nil {
		return fmt.Errorf("operation %s: %w", route.Operation.OperationID, err)
	}
	return nil
}

// schemaErrorMessage keeps schema errors to one line: where and why, without
// kin-openapi's dump of the whole schema and value.
func schemaErrorMessage(err *openapi3.SchemaError) string {
	where := "/" + strings.Join(err.JSONPointer(), "/")
	return fmt.Sprintf("%s: %s", where, err.Reason)
}

func TestOpenAPIDocument(t *testing.T) {
	t.Parallel()
	spec, err := loadOpenAPI()
	if err != nil {
		t.Fatal(err)
	}

	t.Run("version and decoders", func(t *testing.T) {
		t.Parallel()
		if !spec.doc.IsOpenAPI31OrLater() || spec.doc.IsOpenAPI32OrLater() {
			t.Errorf("openapi = %q, want 3.1.x", spec.doc.OpenAPI)
		}
		for _, mt := range []string{"application/json", "application/problem+json", "application/yaml", "application/openmetrics-text", "text/html"} {
			if openapi3filter.RegisteredBodyDecoder(mt) == nil {
				t.Errorf("no kin-openapi body decoder for %s", mt)
			}
		}
	})

	t.Run("operations", func(t *testing.T) {
		t.Parallel()
		seen := map[string]string{}
		for path, item := range spec.doc.Paths.Map() {
			for method, op := range item.Operations() {
				name := method + " " + path
				if op.OperationID == "" {
					t.Errorf("%s: no operationId", name)
				} else if other, ok := seen[op.OperationID]; ok {
					t.Errorf("%s: operationId %q already used by %s", name, op.OperationID, other)
				}
				seen[op.OperationID] = name

				// 411: any request may come with a Transfer-Encoding; 408:
				// any body may come too slowly.
				want := []string{"405", "411", "500"}
				api := strings.HasPrefix(path, "/users")
				if api {
					want = append(want, "401", "503")
				}
				if op.RequestBody != nil {
					want = append(want, "408")
				}
				for _, code := range want {
					if op.Responses.Value(code) == nil {
						t.Errorf("%s: no %s response", name, code)
					}
				}
				// The API needs the bearer token when the server has tokens,
				// as the document's own security says; the rest stays open,
				// as routes.go's short list does.
				security := spec.doc.Security
				if op.Security != nil {
					security = *op.Security
				}
				bearer := op.Security == nil && len(security) == 2 && security[0]["bearerAuth"] != nil && len(security[1]) == 0
				open := op.Security != nil && len(security) == 0
				if bearer != api || open == api || (!api && op.Responses.Value("401") != nil) {
					t.Errorf("%s: security %v, 401 response %v; want the document's [{bearerAuth: []}, {}] and a 401 exactly on the /users operations, security: [] on the others", name, security, op.Responses.Value("401") != nil)
				}
				for code, ref := range op.Responses.Map() {
					if code[0] != '4' && code[0] != '5' {
						continue
					}
					if ref.Ref == "" {
						t.Errorf("%s: %s response is inline, want a components/responses $ref", name, code)
					}
					if method == http.MethodHead {
						checkHeadResponse(t, name, code, ref.Value, item.Get.Responses.Value(code))
						continue
					}
					content := ref.Value.Content
					mt := content.Get("application/problem+json")
					if len(content) != 1 || mt == nil {
						t.Errorf("%s: %s response content = %v, want only application/problem+json", name, code, slices.Collect(maps.Keys(content)))
						continue
					}
					if !usesSchema(mt.Schema, "#/components/schemas/Problem") {
						t.Errorf("%s: %s response schema does not use #/components/schemas/Problem", name, code)
					}
					if mt.Example == nil && len(mt.Examples) == 0 {
						t.Errorf("%s: %s response has no example", name, code)
					}
				}
			}
		}
		for _, id := range []string{"createUser", "listUsers", "getUser", "headUser", "updateUser", "deleteUser", "getHealth", "getReadiness", "getMetrics", "getOpenAPI", "getDocs", "getRoot"} {
			if _, ok := seen[id]; !ok {
				t.Errorf("operation %s is missing", id)
			}
		}
	})

	// The router must match paths whatever the parameter's schema says, so
	// that the server's own 400 for a bad id is validated as getUser's.
	t.Run("routes", func(t *testing.T) {
		t.Parallel()
		tests := []struct {
			method, target string
			want           string // operationId, or the routers error
		}{
			{"GET", "/users/1", "getUser"},
			{"GET", "http://127.0.0.1:8080/users/1", "getUser"},
			{"GET", "/users/abc", "getUser"},
			{"GET", "/users/0", "getUser"},
			{"GET", "/users/-1", "getUser"},
			{"GET", "/users/99999999999999999999", "getUser"},
			{"GET", "/users/%20", "getUser"},
			{"HEAD", "/users/abc", "headUser"},
			{"PUT", "/users/abc", "updateUser"},
			{"DELETE", "/users/-1", "deleteUser"},
			{"GET", "/users?limit=abc&after=-1", "listUsers"},
			{"POST", "/users", "createUser"},
			{"GET", "/healthz", "getHealth"},
			{"GET", "/readyz", "getReadiness"},
			{"GET", "/openapi.yaml", "getOpenAPI"},
			{"GET", "/docs", "getDocs"},
			{"GET", "/", "getRoot"},
			{"GET", "/docs/init.js", routers.ErrPathNotFound.Error()},
			{"TRACE", "/users/1", routers.ErrMethodNotAllowed.Error()},
			{"GET", "/nope", routers.ErrPathNotFound.Error()},
			{"GET", "/users/1/2", routers.ErrPathNotFound.Error()},
		}
		for _, tt := range tests {
			route, _, err := spec.router.FindRoute(httptest.NewRequest(tt.method, tt.target, nil))
			got := ""
			if err != nil {
				got = err.Error()
			} else {
				got = route.Operation.OperationID
			}
			if got != tt.want {
				t.Errorf("FindRoute(%s %s) = %q, want %q", tt.method, tt.target, got, tt.want)
			}
		}
	})

	yamlDoc, err := os.ReadFile("openapi.yaml")
	if err != nil {
		t.Fatal(err)
	}
	const (
		user         = `{"id":1,"name":"alice","created_at":"2025-01-02T03:04:05.123456Z","updated_at":"2025-01-02T03:04:05Z"}`
		user2        = `{"id":2,"name":"bob","created_at":"2025-01-02T03:04:05Z","updated_at":"2025-01-02T05:04:05+02:00"}`
		notFound     = `{"type":"urn:usersvc:problem:not_found","title":"Not found","status":404,"detail":"no user 1","instance":"/users/1","code":"not_found"}`
		badID        = `{"type":"urn:usersvc:problem:validation_failed","title":"Validation failed","status":400,"detail":"invalid","instance":"/users/abc","code":"validation_failed","errors":[{"in":"path","field":"id","detail":"must be a positive integer"}]}`
		duplicate    = `{"type":"urn:usersvc:problem:duplicate_name","title":"Name taken","status":400,"detail":"name taken","instance":"/users","code":"duplicate_name"}`
		notAllowed   = `{"type":"urn:usersvc:problem:method_not_allowed","title":"Method not allowed","status":405,"detail":"no","instance":"/users/1","code":"method_not_allowed"}`
		unauthorized = `{"type":"urn:usersvc:problem:unauthorized","title":"Unauthorized","status":401,"detail":"no token","instance":"/users/1","code":"unauthorized"}`
		unavailable  = `{"type":"urn:usersvc:problem:unavailable","title":"Unavailable","status":503,"detail":"database down","code":"unavailable"}`
		precondition = `{"type":"urn:usersvc:problem:precondition_failed","title":"Precondition failed","status":412,"detail":"stale","instance":"/users/1","code":"precondition_failed"}`
		inUse        = `{"type":"urn:usersvc:problem:idempotency_key_in_use","title":"In use","status":409,"detail":"in flight","instance":"/users","code":"idempotency_key_in_use"}`
		reused       = `{"type":"urn:usersvc:problem:idempotency_key_reused","title":"Reused","status":422,"detail":"other request","instance":"/users","code":"idempotency_key_reused"}`
		badKey       = `{"type":"urn:usersvc:problem:validation_failed","title":"Validation failed","status":400,"detail":"invalid","instance":"/users","code":"validation_failed","errors":[{"in":"header","field":"Idempotency-Key","detail":"too long"}]}`
		created      = `{"position":41,"op":"create","id":1,"user":` + user + `,"at":"2025-01-02T03:04:05.123456Z"}`
		deleted      = `{"position":42,"op":"delete","id":1,"user":null,"at":"2025-01-02T03:05:00Z"}`
		expired      = `{"type":"urn:usersvc:problem:changes_expired","title":"Changes expired","status":410,"detail":"relist","instance":"/users/changes","code":"changes_expired"}`
	)
	jsonCT := http.Header{"Content-Type": {"application/json"}}
	userCT := http.Header{"Content-Type": {"application/json"}, "Etag": {`"1-1735787045123456"`}}
	problemCT := http.Header{"Content-Type": {"application/problem+json"}}
	with := func(h http.Header, kv ...string) http.Header {
		h = h.Clone()
		for i := 0; i+1 < len(kv); i += 2 {
			h.Set(kv[i], kv[i+1])
		}
		return h
	}

	tests := []struct {
		name           string
		method, target string
		status         int
		header         http.Header
		body           string
		wantErr        string // substring of the error; "" means valid
	}{
		{"user", "GET", "/users/1", 200, userCT, user, ""},
		{"user with charset", "GET", "/users/1", 200, with(userCT, "Content-Type", "application/json; charset=utf-8"), user, ""},
		{"user missing created_at", "GET", "/users/1", 200, userCT, `{"id":1,"name":"alice","updated_at":"2025-01-02T03:04:05Z"}`, "created_at"},
		{"user with extra field", "GET", "/users/1", 200, userCT, `{"id":1,"name":"alice","email":"a@b","created_at":"2025-01-02T03:04:05Z","updated_at":"2025-01-02T03:04:05Z"}`, "email"},
		{"user with bad date-time", "GET", "/users/1", 200, userCT, `{"id":1,"name":"alice","created_at":"2025-01-02 03:04:05","updated_at":"2025-01-02T03:04:05Z"}`, "created_at"},
		{"user with id 0", "GET", "/users/1", 200, userCT, `{"id":0,"name":"alice","created_at":"2025-01-02T03:04:05Z","updated_at":"2025-01-02T03:04:05Z"}`, "id"},
		{"user with string id", "GET", "/users/1", 200, userCT, `{"id":"1","name":"alice","created_at":"2025-01-02T03:04:05Z","updated_at":"2025-01-02T03:04:05Z"}`, "id"},
		{"user with untrimmed name", "GET", "/users/1", 200, userCT, `{"id":1,"name":" alice","created_at":"2025-01-02T03:04:05Z","updated_at":"2025-01-02T03:04:05Z"}`, "name"},
		{"user with control character", "GET", "/users/1", 200, userCT, `{"id":1,"name":"a\u0007b","created_at":"2025-01-02T03:04:05Z","updated_at":"2025-01-02T03:04:05Z"}`, "name"},
		{"user with 101-character name", "GET", "/users/1", 200, userCT, `{"id":1,"name":"` + strings.Repeat("é", 101) + `","created_at":"2025-01-02T03:04:05Z","updated_at":"2025-01-02T03:04:05Z"}`, "name"},
		{"user with 100-character name", "GET", "/users/1", 200, userCT, `{"id":1,"name":"` + strings.Repeat("é", 100) + `","created_at":"2025-01-02T03:04:05Z","updated_at":"2025-01-02T03:04:05Z"}`, ""},
		{"user as problem+json", "GET", "/users/1", 200, with(userCT, "Content-Type", "application/problem+json"), user, "Content-Type"},
		{"undocumented status", "GET", "/users/1", 418, problemCT, notFound, "not documented"},
		{"not found", "GET", "/users/1", 404, problemCT, notFound, ""},
		{"problem status mismatch", "GET", "/users/1", 404, problemCT, strings.Replace(notFound, `"status":404`, `"status":400`, 1), "status"},
		{"problem code mismatch", "GET", "/users/1", 404, problemCT, strings.ReplaceAll(notFound, "not_found", "internal"), "code"},
		{"problem as application/json", "GET", "/users/1", 404, jsonCT, notFound, "Content-Type"},
		{"problem missing detail", "GET", "/users/1", 404, problemCT, strings.Replace(notFound, `"detail":"no user 1",`, "", 1), "detail"},
		{"bad id", "GET", "/users/abc", 400, problemCT, badID, ""},
		{"bad id without errors", "GET", "/users/abc", 400, problemCT, strings.Replace(badID, `,"errors":[{"in":"path","field":"id","detail":"must be a positive integer"}]`, "", 1), "errors"},
		{"bad id error in a cookie", "GET", "/users/abc", 400, problemCT, strings.Replace(badID, `"in":"path"`, `"in":"cookie"`, 1), "in"},
		{"duplicate_name on get", "GET", "/users/1", 400, problemCT, duplicate, "code"},
		{"create", "POST", "/users", 201, with(userCT, "Location", "/users/1"), user, ""},
		{"create without Location", "POST", "/users", 201, userCT, user, "Location"},
		{"create with bad Location", "POST", "/users", 201, with(userCT, "Location", "http://x/users/1"), user, "Location"},
		{"duplicate name", "POST", "/users", 400, problemCT, duplicate, ""},
		{"duplicate name with errors", "POST", "/users", 400, problemCT, strings.Replace(duplicate, `}`, `,"errors":[{"in":"body","field":"name","detail":"taken"}]}`, 1), "errors"},
		{"update", "PUT", "/users/1", 200, userCT, user, ""},
		{"too large", "PUT", "/users/1", 413, problemCT, `{"type":"urn:usersvc:problem:payload_too_large","title":"Too large","status":413,"detail":"max 1 MiB","code":"payload_too_large"}`, ""},
		{"list", "GET", "/users?limit=2", 200, with(jsonCT, "Link", `</users?after=2&limit=2>; rel="next"`, "Changes-Position", "42"), "[" + user + "," + user2 + "]", ""},
		{"list by name", "GET", "/users?limit=1&name=alice", 200, with(jsonCT, "Link", `</users?after=1&limit=1&name=alice>; rel="next"`, "Changes-Position", "42"), "[" + user + "]", ""},
		{"last page", "GET", "/users", 200, with(jsonCT, "Changes-Position", "42"), "[]", ""},
		{"list without Changes-Position", "GET", "/users", 200, jsonCT, "[]", "Changes-Position"},
		{"list with bad Link", "GET", "/users?limit=2", 200, with(jsonCT, "Link", `</users?limit=2&after=2>; rel=next`, "Changes-Position", "42"), "[" + user + "," + user2 + "]", "Link"},
		{"list with bad item", "GET", "/users", 200, with(jsonCT, "Changes-Position", "42"), `[{"id":1}]`, "name"},
		{"changes", "GET", "/users/changes?after=7", 200, with(jsonCT, "Link", `</users/changes?after=42&limit=100>; rel="next"`), "[" + created + "," + deleted + "]", ""},
		{"no changes", "GET", "/users/changes?after=7&wait=1", 200, with(jsonCT, "Link", `</users/changes?after=7&limit=100>; rel="next"`), "[]", ""},
		{"changes without Link", "GET", "/users/changes", 200, jsonCT, "[]", "Link"},
		{"change with a bad op", "GET", "/users/changes", 200, with(jsonCT, "Link", `</users/changes?after=0&limit=100>; rel="next"`), `[` + strings.Replace(deleted, `"delete"`, `"rename"`, 1) + `]`, "op"},
		{"changes expired", "GET", "/users/changes?after=7", 410, problemCT, expired, ""},
		{"delete", "DELETE", "/users/1", 204, nil, "", ""},
		{"delete with body", "DELETE", "/users/1", 204, jsonCT, user, "without a body"},
		{"head", "HEAD", "/users/1", 200, with(userCT, "Content-Length", "96"), "", ""},
		{"head without Content-Length", "HEAD", "/users/1", 200, userCT, "", "Content-Length"},
		{"head not found", "HEAD", "/users/1", 404, problemCT, "", ""},
		{"head with body", "HEAD", "/users/1", 200, userCT, user, "HEAD response"},
		{"head wrong type", "HEAD", "/users/1", 200, with(userCT, "Content-Type", "text/plain", "Content-Length", "96"), "", "Content-Type"},
		{"user without ETag", "GET", "/users/1", 200, jsonCT, user, "ETag"},
		{"user with a weak ETag", "GET", "/users/1", 200, with(jsonCT, "ETag", `W/"1-1735787045123456"`), user, "ETag"},
		{"head without ETag", "HEAD", "/users/1", 200, with(jsonCT, "Content-Length", "96"), "", "ETag"},
		{"not modified", "GET", "/users/1", 304, with(http.Header{}, "ETag", `"1-1735787045123456"`), "", ""},
		{"not modified without ETag", "GET", "/users/1", 304, nil, "", "ETag"},
		{"not modified with a bad ETag", "GET", "/users/1", 304, with(http.Header{}, "ETag", `"x"`), "", "ETag"},
		{"not modified with a body", "GET", "/users/1", 304, with(http.Header{}, "ETag", `"1-1735787045123456"`), user, "without a body"},
		{"head not modified", "HEAD", "/users/1", 304, with(http.Header{}, "ETag", `"1-1735787045123456"`), "", ""},
		{"precondition failed", "PUT", "/users/1", 412, problemCT, precondition, ""},
		{"precondition failed on delete", "DELETE", "/users/1", 412, problemCT, precondition, ""},
		{"precondition failed on get", "GET", "/users/1", 412, problemCT, precondition, ""},
		{"precondition failed on head", "HEAD", "/users/1", 412, problemCT, "", ""},
		{"precondition failed on create", "POST", "/users", 412, problemCT, precondition, "not documented"},
		{"create replayed", "POST", "/users", 201, with(userCT, "Location", "/users/1", "Idempotent-Replayed", "true"), user, ""},
		{"create replayed, other value", "POST", "/users", 201, with(userCT, "Location", "/users/1", "Idempotent-Replayed", "yes"), user, "Idempotent-Replayed"},
		{"duplicate name replayed", "POST", "/users", 400, with(problemCT, "Idempotent-Replayed", "true"), duplicate, ""},
		{"key in use", "POST", "/users", 409, with(problemCT, "Retry-After", "1"), inUse, ""},
		{"key in use without Retry-After", "POST", "/users", 409, problemCT, inUse, "Retry-After"},
		{"key reused", "POST", "/users", 422, problemCT, reused, ""},
		{"key reused on rename", "PUT", "/users/1", 422, problemCT, reused, "not documented"},
		{"bad key", "POST", "/users", 400, problemCT, badKey, ""},
		{"method not allowed", "TRACE", "/users/1", 405, with(problemCT, "Allow", documentedAllow(t, "/users/{id}")), notAllowed, ""},
		{"client request URL", "GET", "http://127.0.0.1:8080/users/1", 200, userCT, user, ""},
		{"method not allowed without Allow", "TRACE", "/users/1", 405, problemCT, notAllowed, "Allow"},
		{"unauthorized", "GET", "/users/1", 401, with(problemCT, "WWW-Authenticate", `Bearer realm="usersvc"`), unauthorized, ""},
		{"unauthorized, wrong token", "DELETE", "/users/1", 401, with(problemCT, "WWW-Authenticate", `Bearer realm="usersvc", error="invalid_token"`), unauthorized, ""},
		{"unauthorized without challenge", "POST", "/users", 401, problemCT, unauthorized, "WWW-Authenticate"},
		{"unauthorized, other challenge", "POST", "/users", 401, with(problemCT, "WWW-Authenticate", `Basic realm="usersvc"`), unauthorized, "WWW-Authenticate"},
		{"unauthorized before 405", "TRACE", "/users/1", 401, with(problemCT, "WWW-Authenticate", `Bearer realm="usersvc"`), unauthorized, ""},
		{"unauthorized on an open route", "GET", "/healthz", 401, with(problemCT, "WWW-Authenticate", `Bearer realm="usersvc"`), unauthorized, "not documented"},
		{"unauthorized before 405 on an open route", "POST", "/healthz", 401, with(problemCT, "WWW-Authenticate", `Bearer realm="usersvc"`), unauthorized, "not documented"},
		{"undocumented method answered", "TRACE", "/users/1", 200, jsonCT, user, "must be 405"},
		{"unknown path", "GET", "/nope", 404, problemCT, notFound, "no route"},
		{"healthz", "GET", "/healthz", 200, jsonCT, `{"status":"ok"}`, ""},
		{"healthz other status", "GET", "/healthz", 200, jsonCT, `{"status":"degraded"}`, "status"},
		{"readyz down", "GET", "/readyz", 503, with(problemCT, "Retry-After", "1"), unavailable, ""},
		{"users down", "GET", "/users", 503, with(problemCT, "Retry-After", "1"), unavailable, ""},
		{"users down without Retry-After", "GET", "/users", 503, problemCT, unavailable, "Retry-After"},
		{"spec", "GET", "/openapi.yaml", 200, http.Header{"Content-Type": {"application/yaml"}}, string(yamlDoc), ""},
		{"spec not yaml object", "GET", "/openapi.yaml", 200, http.Header{"Content-Type": {"application/yaml"}}, "- just a list\n", "object"},
		{"spec as text", "GET", "/openapi.yaml", 200, http.Header{"Content-Type": {"text/plain"}}, string(yamlDoc), "Content-Type"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			req := httptest.NewRequest(tt.method, tt.target, nil)
			err := spec.validateResponse(t.Context(), req, tt.status, tt.header, []byte(tt.body))
			switch {
			case tt.wantErr == "" && err != nil:
				t.Errorf("%s %s %d: %v, want no error", tt.method, tt.target, tt.status, err)
			case tt.wantErr != "" && err == nil:
				t.Errorf("%s %s %d: no error, want one mentioning %q", tt.method, tt.target, tt.status, tt.wantErr)
			case tt.wantErr != "" && !strings.Contains(err.Error(), tt.wantErr):
				t.Errorf("%s %s %d: error %q, want one mentioning %q", tt.method, tt.target, tt.status, err, tt.wantErr)
			}
			if tt.wantErr == "" {
				checkOpenAPI(t, req, tt.status, tt.header, []byte(tt.body))
			}
		})
	}
}

// checkHeadResponse fails the test unless head, the code response of a
// HEAD operation, has no content and the headers of get, the GET
// operation's response for the same code.
func checkHeadResponse(t *testing.T, name, code string, head *openapi3.Response, get *openapi3.ResponseRef) {
	t.Helper()
	if len(head.Content) != 0 {
		t.Errorf("%s: %s response has content %v, want none: a HEAD response has no body", name, code, slices.Collect(maps.Keys(head.Content)))
	}
	if get == nil {
		t.Errorf("%s: %s response has no GET twin", name, code)
		return
	}
	headerRefs := func(h openapi3.Headers) map[string]string {
		refs := map[string]string{}
		for name, ref := range h {
			refs[name] = ref.Ref
		}
		return refs
	}
	if h, g := headerRefs(head.Headers), headerRefs(get.Value.Headers); !maps.Equal(h, g) {
		t.Errorf("%s: %s response headers %v, want GET's %v", name, code, h, g)
	}
}

// usesSchema reports whether ref is, or is composed from (allOf, oneOf,
// anyOf), the component schema named by want.
func usesSchema(ref *openapi3.SchemaRef, want string) bool {
	if ref == nil {
		return false
	}
	if ref.Ref == want {
		return true
	}
	if ref.Value == nil {
		return false
	}
	for _, refs := range []openapi3.SchemaRefs{ref.Value.AllOf, ref.Value.OneOf, ref.Value.AnyOf} {
		if slices.ContainsFunc(refs, func(r *openapi3.SchemaRef) bool { return usesSchema(r, want) }) {
			return true
		}
	}
	return false
}

// checkProblemSchema validates body against openapi.yaml's Problem schema:
// for a problem answered before any operation could be chosen, which
// checkOpenAPI cannot place.
func checkProblemSchema(t testing.TB, what string, body []byte) {
	t.Helper()
	spec, err := loadOpenAPI()
	if err != nil {
		t.Fatalf("load openapi.yaml: %v", err)
	}
	var v any
	if err := json.Unmarshal(body, &v); err != nil {
		t.Fatalf("%s: problem %.300q is not JSON: %v", what, body, err)
	}
	if err := spec.doc.Components.Schemas["Problem"].Value.VisitJSON(v, openapi3.MultiErrors()); err != nil {
		t.Errorf("%s: problem does not match openapi.yaml's Problem: %v: %s", what, err, body)
	}
}

// TestProblemCodesDocumented checks that docs/api.md's Errors section names
// every code of the problem table (TestOpenAPIProblemCodes holds
// openapi.yaml's to it).
func TestProblemCodesDocumented(t *testing.T) {
	t.Parallel()
	spec, err := loadOpenAPI()
	if err != nil {
		t.Fatal(err)
	}
	var documented []string
	for _, v := range spec.doc.Components.Schemas["ProblemCode"].Value.Enum {
		documented = append(documented, fmt.Sprint(v))
	}
	codes := slices.Sorted(maps.Keys(problemKinds))
	if slices.Sort(documented); !slices.Equal(documented, codes) {
		t.Errorf("openapi.yaml's ProblemCode = %q, want the problem table's %q", documented, codes)
	}
	apiDoc, err := os.ReadFile("../../docs/api.md")
	if err != nil {
		t.Fatal(err)
	}
	_, errorsSection, _ := strings.Cut(string(apiDoc), "\n## Errors\n")
	errorsSection, _, _ = strings.Cut(errorsSection, "\n## ")
	for _, code := range codes {
		if !strings.Contains(errorsSection, "`"+code+"`") {
			t.Errorf("docs/api.md's Errors section does not name code `%s`", code)
		}
	}
}

// refusalCodes are the codes of net/http's refusals, which the server
// answers before any operation is chosen (framing.go): the document
// describes them in its introduction rather than on each operation, and
// checkProblemSchema holds them to its Problem schema.
var refusalCodes = []string{codeInvalidRequest, codeHeadersTooLarge, codeExpectationFailed}

// TestOpenAPIProblemCodes holds openapi.yaml's problem codes to the
// server's, problemKinds: the same set in ProblemCode; every problem
// response narrowed to one code, with that code's status and type; the 400
// union's discriminator mapping exactly the codes whose status is 400; and
// every code answered by some response, except refusalCodes.
func TestOpenAPIProblemCodes(t *testing.T) {
	t.Parallel()
	spec, err := loadOpenAPI()
	if err != nil {
		t.Fatal(err)
	}
	schemas := spec.doc.Components.Schemas

	var enum []string
	for _, v := range schemas["ProblemCode"].Value.Enum {
		enum = append(enum, fmt.Sprint(v))
	}
	slices.Sort(enum)
	if want := slices.Sorted(maps.Keys(problemKinds)); !slices.Equal(enum, want) {
		t.Errorf("ProblemCode enum = %v, want problemKinds' codes %v", enum, want)
	}

	// checkNarrowed checks what schema narrows a problem to against code's
	// kind, and returns the code it narrows to ("" for none).
	checkNarrowed := func(where string, schema *openapi3.SchemaRef, code string) string {
		t.Helper()
		n := narrowedProblem(schema)
		if code == "" {
			code = n["code"]
		}
		kind, ok := problemKinds[code]
		switch {
		case !ok:
			t.Errorf("%s: narrowed to code %q, which problemKinds lacks", where, code)
		case n["code"] != "" && n["code"] != code:
			t.Errorf("%s: code %s, want %s", where, n["code"], code)
		case n["status"] != strconv.Itoa(kind.status):
			t.Errorf("%s: status %q for code %s, want %d", where, n["status"], code, kind.status)
		case n["type"] != "" && n["type"] != "urn:usersvc:problem:"+code:
			t.Errorf("%s: type %q for code %s", where, n["type"], code)
		}
		return n["code"]
	}

	answered := map[string]bool{}
	for name, ref := range spec.doc.Components.Responses {
		mt := ref.Value.Content.Get(problemContentType)
		if mt == nil {
			continue
		}
		d := mt.Schema.Value.Discriminator
		if d == nil {
			code := checkNarrowed("response "+name, mt.Schema, "")
			if code == "" {
				t.Errorf("response %s: the problem is not narrowed to a code", name)
			}
			answered[code] = true
			continue
		}
		var mapped, want []string
		for code, target := range d.Mapping {
			mapped = append(mapped, code)
			answered[code] = true
			schema := schemas[strings.TrimPrefix(target.Ref, "#/components/schemas/")]
			if schema == nil {
				t.Errorf("response %s: mapping %s: no schema %s", name, code, target.Ref)
				continue
			}
			checkNarrowed("response "+name+" mapping "+code, schema, code)
		}
		for code, kind := range problemKinds {
			if kind.status == http.StatusBadRequest && !slices.Contains(refusalCodes, code) {
				want = append(want, code)
			}
		}
		slices.Sort(mapped)
		slices.Sort(want)
		if d.PropertyName != "code" || !slices.Equal(mapped, want) {
			t.Errorf("response %s: discriminator on %q maps %v, want code mapping the 400 codes %v", name, d.PropertyName, mapped, want)
		}
	}
	for code := range problemKinds {
		if !answered[code] && !slices.Contains(refusalCodes, code) {
			t.Errorf("no response of openapi.yaml answers code %s", code)
		}
	}
}

// narrowedProblem returns the const values that schema, or the members of
// its allOf, give the problem members type, status and code.
func narrowedProblem(schema *openapi3.SchemaRef) map[string]string {
	n := map[string]string{}
	for _, member := range append(openapi3.SchemaRefs{schema}, schema.Value.AllOf...) {
		for _, name := range []string{"type", "status", "code"} {
			if p := member.Value.Properties[name]; p != nil && p.Value.Const != nil {
				n[name] = fmt.Sprint(p.Value.Const)
			}
		}
	}
	return n
}

// documentedAllow returns the Allow header of a 405 at path, a path of
// openapi.yaml: the methods the document lists there, and HEAD with GET,
// as the mux answers it.
func documentedAllow(t testing.TB, path string) string {
	t.Helper()
	spec, err := loadOpenAPI()
	if err != nil {
		t.Fatal(err)
	}
	item := spec.doc.Paths.Value(path)
	if item == nil {
		t.Fatalf("openapi.yaml has no path %s", path)
	}
	var methods []string
	for m := range item.Operations() {
		methods = append(methods, m)
	}
	if item.Get != nil && item.Head == nil {
		methods = append(methods, http.MethodHead)
	}
	slices.Sort(methods)
	return strings.Join(methods, ", ")
}
