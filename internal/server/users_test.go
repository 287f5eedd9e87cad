package server

import (
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
)

func TestCreateUser(t *testing.T) {
	t.Parallel()
	s := newTestServer(t)

	tests := []struct {
		name     string
		body     string
		wantName string // the stored name, when 201
	}{
		{"plain", `{"name":"alice"}`, "alice"},
		{"surrounding whitespace trimmed", `{"name":" \t bob \n "}`, "bob"},
		{"NFC normalized", `{"name":"cafe\u0301"}`, "caf\u00e9"},
		{"quotes and SQL verbatim", `{"name":"Robert'); DROP TABLE users;--"}`, "Robert'); DROP TABLE users;--"},
		{"HTML verbatim", `{"name":"<b>\"x\" & y</b>"}`, `<b>"x" & y</b>`},
		{"emoji", `{"name":"😀 smile"}`, "😀 smile"},
		{"inner spaces kept", `{"name":"a  b"}`, "a  b"},
		{"100 characters, 200 bytes", `{"name":"` + strings.Repeat("é", 100) + `"}`, strings.Repeat("é", 100)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := s.postJSON("/users", tt.body)
			if r.status != http.StatusCreated {
				t.Fatalf("POST /users %s: status = %d, want 201; body %s", tt.body, r.status, r.body)
			}
			u := decodeJSON[user](t, r.body)
			if u.Name != tt.wantName {
				t.Errorf("POST /users %s: name = %q, want %q", tt.body, u.Name, tt.wantName)
			}
			if u.ID < 1 {
				t.Errorf("POST /users: id = %d, want positive", u.ID)
			}
			if loc := r.header.Get("Location"); loc != userPath(u.ID) {
				t.Errorf("POST /users: Location = %q, want %q", loc, userPath(u.ID))
			}
			if u.CreatedAt.IsZero() || !u.CreatedAt.Equal(u.UpdatedAt) {
				t.Errorf("POST /users: created_at %v, updated_at %v: want equal, set", u.CreatedAt, u.UpdatedAt)
			}
			got := s.get(userPath(u.ID))
			if got.status != http.StatusOK || decodeJSON[user](t, got.body) != u {
				t.Errorf("GET %s = %d %s, want 200 and %+v", userPath(u.ID), got.status, got.body, u)
			}
		})
	}
}

func TestCreateUserRejects(t *testing.T) {
	t.Parallel()
	s := newTestServer(t)
	s.createUser("taken")

	tests := []struct {
		name        string
		contentType string
		body        string
		status      int
		code        string
		field       string // the field error expected, if any
	}{
		{"duplicate name", "application/json", `{"name":"taken"}`, 400, codeDuplicateName, ""},
		{"duplicate after trimming", "application/json", `{"name":"  taken  "}`, 400, codeDuplicateName, ""},
		{"empty name", "application/json", `{"name":""}`, 400, codeValidationFailed, "name"},
		{"only whitespace", "application/json", `{"name":"   "}`, 400, codeValidationFailed, "name"},
		{"101 characters", "application/json", `{"name":"` + strings.Repeat("x", 101) + `"}`, 400, codeValidationFailed, "name"},
		{"U+0000", "application/json", `{"name":"a\u0000b"}`, 400, codeValidationFailed, "name"},
		{"control character", "application/json", `{"name":"a\u0007b"}`, 400, codeValidationFailed, "name"},
		{"newline inside", "application/json", `{"name":"a\nb"}`, 400, codeValidationFailed, "name"},
		{"missing name", "application/json", `{}`, 400, codeValidationFailed, "name"},
		{"null name", "application/json", `{"name":null}`, 400, codeValidationFailed, "name"},
		{"number name", "application/json", `{"name":42}`, 400, codeValidationFailed, "name"},
		{"object name", "application/json", `{"name":{"first":"a"}}`, 400, codeValidationFailed, "name"},
		{"unknown field", "application/json", `{"name":"x","admin":true}`, 400, codeValidationFailed, "admin"},
		{"field name case", "application/json", `{"Name":"x"}`, 400, codeValidationFailed, "Name"},
		{"duplicate member", "application/json", `{"name":"x","name":"y"}`, 400, codeInvalidJSON, ""},
		{"malformed", "application/json", `{"name":`, 400, codeInvalidJSON, ""},
		{"not JSON", "application/json", `name=x`, 400, codeInvalidJSON, ""},
		{"trailing data", "application/json", `{"name":"x"} {"name":"y"}`, 400, codeInvalidJSON, ""},
		{"array", "application/json", `[{"name":"x"}]`, 400, codeInvalidJSON, ""},
		{"string", "application/json", `"x"`, 400, codeInvalidJSON, ""},
		{"empty body", "application/json", ``, 400, codeInvalidJSON, ""},
		{"invalid UTF-8", "application/json", "{\"name\":\"a\xffb\"}", 400, codeInvalidJSON, ""},
		{"lone surrogate escape", "application/json", `{"name":"\ud800"}`, 400, codeInvalidJSON, ""},
		{"no content type", "", `{"name":"x"}`, 415, codeUnsupportedMediaType, ""},
		{"text/plain", "text/plain", `{"name":"x"}`, 415, codeUnsupportedMediaType, ""},
		{"form", "application/x-www-form-urlencoded", `name=x`, 415, codeUnsupportedMediaType, ""},
		{"latin-1 charset", "application/json; charset=latin1", `{"name":"x"}`, 415, codeUnsupportedMediaType, ""},
		{"malformed content type", "application/json; charset", `{"name":"x"}`, 415, codeUnsupportedMediaType, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := s.do(http.MethodPost, "/users", tt.contentType, strings.NewReader(tt.body))
			p := wantProblem(t, "POST /users "+tt.body, r, tt.status, tt.code)
			if tt.field != "" && (len(p.Errors) != 1 || p.Errors[0].Field != tt.field || p.Errors[0].In != "body") {
				t.Errorf("POST /users %s: errors = %+v, want one for body field %q", tt.body, p.Errors, tt.field)
			}
		})
	}

	// Nothing the rejected requests sent was stored.
	r := s.get("/users")
	if users := decodeJSON[[]user](t, r.body); len(users) != 1 || users[0].Name != "taken" {
		t.Errorf("GET /users after rejected creates = %s, want only %q", r.body, "taken")
	}
}

func TestCreateUserContentTypeParameters(t *testing.T) {
	t.Parallel()
	s := newTestServer(t)
	for i, ct := range []string{"application/json; charset=utf-8", "Application/JSON; Charset=UTF-8", "application/json;v=1"} {
		name := "user" + strings.Repeat("x", i)
		r := s.do(http.MethodPost, "/users", ct, strings.NewReader(`{"name":"`+name+`"}`))
		if r.status != http.StatusCreated {
			t.Errorf("POST /users with Content-Type %q: status = %d, want 201; body %s", ct, r.status, r.body)
		}
	}
}

func TestBodyLimit(t *testing.T) {
	t.Parallel()
	s := newTestServer(t)

	// Exactly 1 MiB, padded with whitespace, is accepted.
	body := `{"name":"padded"}`
	body += strings.Repeat(" ", maxBodyBytes-len(body))
	if r := s.postJSON("/users", body); r.status != http.StatusCreated {
		t.Errorf("POST /users with a 1 MiB body: status = %d, want 201; body %s", r.status, r.body)
	}
	u := s.createUser("someone")

	tooBig := body + " "
	wantProblem(t, "POST /users 1 MiB + 1", s.postJSON("/users", tooBig), 413, codePayloadTooLarge)
	wantProblem(t, "PUT /users/{id} 1 MiB + 1", s.putJSON(userPath(u.ID), tooBig), 413, codePayloadTooLarge)
	// Without a Content-Length (chunked, as net/http's client sends a body
	// of unknown length), no body is accepted, whatever its size: the
	// limit is never left to a body's own framing.
	for _, body := range []string{tooBig, `{"name":"chunked"}`} {
		r := s.do(http.MethodPost, "/users", "application/json", io.MultiReader(strings.NewReader(body)))
		what := fmt.Sprintf("POST /users %d bytes chunked", len(body))
		wantProblem(t, what, r, 411, codeLengthRequired)
		// The body is neither read nor left in a connection to reuse.
		if !r.close {
			t.Errorf("%s: the connection stays open, want Connection: close", what)
		}
	}
	huge := `{"name":"` + strings.Repeat("x", 10<<20) + `"}`
	wantProblem(t, "POST /users 10 MiB name", s.postJSON("/users", huge), 413, codePayloadTooLarge)

	if got := decodeJSON[user](t, s.get(userPath(u.ID)).body); got.Name != "someone" {
		t.Errorf("after a rejected rename the name is %q, want %q", got.Name, "someone")
	}
}

func TestNFCNamesCollide(t *testing.T) {
	t.Parallel()
	s := newTestServer(t)
	composed := s.createUser("Zo\u00eb")              // ë as one code point
	r := s.postJSON("/users", `{"name":"Zoe\u0308"}`) // e + combining diaeresis
	wantProblem(t, "POST /users decomposed duplicate", r, 400, codeDuplicateName)

	r = s.get("/users?name=Zoe%CC%88")
	if users := decodeJSON[[]user](t, r.body); len(users) != 1 || users[0].ID != composed.ID {
		t.Errorf("GET /users?name=<decomposed> = %s, want the composed user %d", r.body, composed.ID)
	}
}

// TestConcurrentCreateSameName checks that the database, not a check in Go,
// decides which of many simultaneous creates of one name wins.
func TestConcurrentCreateSameName(t *testing.T) {
	t.Parallel()
	s := newTestServer(t)
	const n = 40
	calls := make([]call, n)
	for i := range calls {
		calls[i] = call{http.MethodPost, "/users", `{"name":"contested"}`}
	}
	count := map[int]int{}
	for i, r := range s.concurrently(n, calls) {
		if r.status == http.StatusBadRequest {
			wantProblem(t, calls[i].String()+" race loser", r, 400, codeDuplicateName)
		}
		count[r.status]++
	}
	if count[201] != 1 || count[400] != n-1 {
		t.Errorf("%d concurrent creates of one name: statuses %v, want one 201 and %d × 400", n, count, n-1)
	}
	if users := decodeJSON[[]user](t, s.get("/users?name=contested").body); len(users) != 1 {
		t.Errorf("users named contested: %d, want 1", len(users))
	}
}

func TestGetUser(t *testing.T) {
	t.Parallel()
	s := newTestServer(t)
	u := s.createUser("gina")

	r := s.get(userPath(u.ID))
	if r.status != http.StatusOK {
		t.Fatalf("GET %s: status = %d, want 200", userPath(u.ID), r.status)
	}
	if got := decodeJSON[user](t, r.body); got != u {
		t.Errorf("GET %s = %+v, want %+v", userPath(u.ID), got, u)
	}

	head := s.do(http.MethodHead, userPath(u.ID), "", nil)
	if head.status != http.StatusOK || len(head.body) != 0 || head.header.Get("Content-Length") != r.header.Get("Content-Length") {
		t.Errorf("HEAD %s: status %d, %d body bytes, Content-Length %q; want 200, none, %q",
			userPath(u.ID), head.status, len(head.body), head.header.Get("Content-Length"), r.header.Get("Content-Length"))
	}
	if head := s.do(http.MethodHead, "/users/999999", "", nil); head.status != http.StatusNotFound {
		t.Errorf("HEAD /users/999999: status = %d, want 404", head.status)
	}

	for _, tt := range []struct {
		path   string
		status int
		code   string
	}{
		{"/users/999999", 404, codeNotFound},
		{"/users/abc", 400, codeValidationFailed},
		{"/users/0", 400, codeValidationFailed},
		{"/users/-1", 400, codeValidationFailed},
		{"/users/1.5", 400, codeValidationFailed},
		{"/users/9223372036854775808", 400, codeValidationFailed},
		{"/users/%20", 400, codeValidationFailed},
		{"/users/%80", 400, codeValidationFailed},
	} {
		p := wantProblem(t, "GET "+tt.path, s.get(tt.path), tt.status, tt.code)
		if tt.status == 400 && (len(p.Errors) != 1 || p.Errors[0].In != "path" || p.Errors[0].Field != "id") {
			t.Errorf("GET %s: errors = %+v, want one for path field id", tt.path, p.Errors)
		}
	}
}

func TestRenameUser(t *testing.T) {
	t.Parallel()
	s := newTestServer(t)
	u := s.createUser("rita")
	other := s.createUser("otto")

	r := s.putJSON(userPath(u.ID), `{"name":"  Rita Renamed "}`)
	if r.status != http.StatusOK {
		t.Fatalf("PUT %s: status = %d, want 200; body %s", userPath(u.ID), r.status, r.body)
	}
	renamed := decodeJSON[user](t, r.body)
	if renamed.Name != "Rita Renamed" || renamed.ID != u.ID || !renamed.CreatedAt.Equal(u.CreatedAt) {
		t.Errorf("PUT %s = %+v, want name %q, id %d, created_at %v", userPath(u.ID), renamed, "Rita Renamed", u.ID, u.CreatedAt)
	}
	if !renamed.UpdatedAt.After(u.UpdatedAt) {
		t.Errorf("PUT %s: updated_at %v did not advance past %v", userPath(u.ID), renamed.UpdatedAt, u.UpdatedAt)
	}
	if got := decodeJSON[user](t, s.get(userPath(u.ID)).body); got != renamed {
		t.Errorf("GET after rename = %+v, want %+v", got, renamed)
	}

	// Renaming to its own current name succeeds and still advances updated_at.
	same := s.putJSON(userPath(u.ID), `{"name":"Rita Renamed"}`)
	if same.status != http.StatusOK {
		t.Fatalf("PUT own name: status = %d, want 200; body %s", same.status, same.body)
	}
	if again := decodeJSON[user](t, same.body); !again.UpdatedAt.After(renamed.UpdatedAt) || !again.CreatedAt.Equal(u.CreatedAt) {
		t.Errorf("PUT own name = %+v: want updated_at after %v, created_at %v", again, renamed.UpdatedAt, u.CreatedAt)
	}

	// The old name is free again.
	s.createUser("rita")

	for _, tt := range []struct {
		what        string
		path        string
		contentType string
		body        string
		status      int
		code        string
	}{
		{"another user's name", userPath(u.ID), "application/json", `{"name":"otto"}`, 400, codeDuplicateName},
		{"another user's name, untrimmed", userPath(u.ID), "application/json", `{"name":" otto "}`, 400, codeDuplicateName},
		{"missing user", "/users/999999", "application/json", `{"name":"nobody"}`, 404, codeNotFound},
		{"malformed id", "/users/abc", "application/json", `{"name":"x"}`, 400, codeValidationFailed},
		{"empty name", userPath(u.ID), "application/json", `{"name":""}`, 400, codeValidationFailed},
		{"unknown field", userPath(u.ID), "application/json", `{"name":"x","id":5}`, 400, codeValidationFailed},
		{"malformed JSON", userPath(u.ID), "application/json", `{"name"`, 400, codeInvalidJSON},
		{"wrong content type", userPath(u.ID), "text/plain", `{"name":"x"}`, 415, codeUnsupportedMediaType},
	} {
		r := s.do(http.MethodPut, tt.path, tt.contentType, strings.NewReader(tt.body))
		wantProblem(t, "PUT "+tt.path+" "+tt.what, r, tt.status, tt.code)
	}

	// None of the rejected renames changed anything.
	if got := decodeJSON[user](t, s.get(userPath(other.ID)).body); got != other {
		t.Errorf("GET %s = %+v, want unchanged %+v", userPath(other.ID), got, other)
	}
	if got := decodeJSON[user](t, s.get(userPath(u.ID)).body); got.Name != "Rita Renamed" {
		t.Errorf("GET %s: name = %q, want %q", userPath(u.ID), got.Name, "Rita Renamed")
	}
}

func TestDeleteUser(t *testing.T) {
	t.Parallel()
	s := newTestServer(t)
	u := s.createUser("dora")

	r := s.do(http.MethodDelete, userPath(u.ID), "", nil)
	if r.status != http.StatusNoContent || len(r.body) != 0 {
		t.Fatalf("DELETE %s: status %d, body %q; want 204, empty", userPath(u.ID), r.status, r.body)
	}
	wantProblem(t, "GET after DELETE", s.get(userPath(u.ID)), 404, codeNotFound)
	wantProblem(t, "DELETE again", s.do(http.MethodDelete, userPath(u.ID), "", nil), 404, codeNotFound)
	wantProblem(t, "PUT after DELETE", s.putJSON(userPath(u.ID), `{"name":"ghost"}`), 404, codeNotFound)
	wantProblem(t, "DELETE /users/abc", s.do(http.MethodDelete, "/users/abc", "", nil), 400, codeValidationFailed)
	wantProblem(t, "DELETE /users/0", s.do(http.MethodDelete, "/users/0", "", nil), 400, codeValidationFailed)

	// The name may be reused, by a new user with a new id.
	again := s.createUser("dora")
	if again.ID == u.ID {
		t.Errorf("recreated user got the deleted id %d", u.ID)
	}
}
