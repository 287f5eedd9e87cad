package server

import (
	"context"
	"encoding/json/jsontext"
	"encoding/json/v2"
	"fmt"
	"log/slog"
	"net/http"
	"strconv"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"

	"usersvc/db"

	"golang.org/x/text/unicode/norm"
)

// userStore is what the user handlers need of the database. Its methods are
// those of the sqlc-generated *db.Queries.
type userStore interface {
	userReader
	CreateUser(ctx context.Context, name string) (db.User, error)
	RenameUser(ctx context.Context, arg db.RenameUserParams) (db.User, error)
	DeleteUser(ctx context.Context, id int64) (int64, error)
	CreateUserIdempotently(ctx context.Context, arg db.CreateUserIdempotentlyParams) (db.CreateUserIdempotentlyRow, error)
	GetIdempotencyKey(ctx context.Context, keyDigest []byte) (db.GetIdempotencyKeyRow, error)
	RenameUserIf(ctx context.Context, arg db.RenameUserIfParams) (db.RenameUserIfRow, error)
	DeleteUserIf(ctx context.Context, arg db.DeleteUserIfParams) (bool, error)
	ListChanges(ctx context.Context, arg db.ListChangesParams) ([]db.ListChangesRow, error)
	ChangesState(ctx context.Context) (db.ChangesStateRow, error)
}

// userReader is what the GET routes need of the database: the queries that
// a standby can answer.
type userReader interface {
	GetUser(ctx context.Context, id int64) (db.User, error)
	ListUsers(ctx context.Context, arg db.ListUsersParams) ([]db.ListUsersRow, error)
	ListUsersByName(ctx context.Context, arg db.ListUsersByNameParams) ([]db.ListUsersByNameRow, error)
	ChangesHead(ctx context.Context) (int64, error)
}

var _ userStore = (*db.Queries)(nil)

// user is a user as the API shows it.
type user struct {
	ID        int64     `json:"id"`
	Name      string    `json:"name"`
	CreatedAt time.Time `json:"created_at"`
	UpdatedAt time.Time `json:"updated_at"`
}

// toUser converts a row to the API's representation.
func toUser(u db.User) user {
	return user{ID: u.ID, Name: u.Name, CreatedAt: u.CreatedAt.UTC(), UpdatedAt: u.UpdatedAt.UTC()}
}

// userRequest is the body of POST /users and PUT /users/{id}.
type userRequest struct {
	// Name is a pointer so that a missing or null name is told apart
	// from an empty one.
	Name *string `json:"name"`
}

// validName returns the request's normalized name, or a validation_failed
// *apiError.
func (req userRequest) validName() (string, error) {
	if req.Name == nil {
		return "", invalidFields(fieldError{In: "body", Field: "name", Detail: "is required"})
	}
	name, problem := normalizeName(*req.Name)
	if problem != "" {
		return "", invalidFields(fieldError{In: "body", Field: "name", Detail: problem})
	}
	return name, nil
}

const (
	maxNameChars = 100
	nameRule     = "must be 1 to 100 characters after trimming surrounding whitespace"
)

// normalizeName trims surrounding whitespace and NFC-normalizes s, so that
// visually identical names are stored, and collide, as one. Returns the
// name, or a description of what is wrong with it.
func normalizeName(s string) (string, string) {
	if !utf8.ValidString(s) {
		return "", "must be valid UTF-8"
	}
	s = norm.NFC.String(strings.TrimSpace(s))
	if n := utf8.RuneCountInString(s); n < 1 || n > maxNameChars {
		return "", nameRule
	}
	for _, r := range s {
		if unicode.IsControl(r) {
			// Postgres refuses U+0000 in text; the rest have no place in a name.
			return "", "must not contain control characters"
		}
	}
	return s, ""
}

// decodeName reads a userRequest body and returns its normalized name.
func decodeName(r *http.Request) (string, error) {
	req, err := decode[userRequest](r, jsonContentType)
	if err != nil {
		return "", err
	}
	return req.validName()
}

// handleUserCreate serves POST /users: 201 with the user, its Location and
// ETag; 400 for invalid JSON, an invalid name or Idempotency-Key, or a name
// already taken (decided by the unique constraint); 413; 415; 503 when the
// database is unavailable. With an Idempotency-Key, a 201 or a taken name's
// 400 is recorded with the user, and a later request with the key gets it
// again with Idempotent-Replayed: true, or 422 when it is another request;
// 409 while the key's first request is still in flight.
func handleUserCreate(logger *slog.Logger, store userStore) handlerFunc {
	return func(w http.ResponseWriter, r *http.Request) error {
		key, keyed, err := idempotencyKey(r)
		if err != nil {
			return err
		}
		name, err := decodeName(r)
		if err != nil {
			return err
		}
		if !keyed {
			u, err := store.CreateUser(r.Context(), name)
			if err != nil {
				return fmt.Errorf("create user: %w", err)
			}
			writeCreated(w, r, logger, u)
			return nil
		}
		out, err := createIdempotently(r.Context(), store, newKeyedCreate(r, key, name))
		if err != nil {
			return fmt.Errorf("create user with an idempotency key: %w", err)
		}
		if out.replayed {
			w.Header().Set(replayedHeader, "true")
		}
		if !out.created {
			return errNameTaken
		}
		writeCreated(w, r, logger, out.user)
		return nil
	}
}

// writeCreated answers a create of u: 201 with the user, its Location and
// its ETag.
func writeCreated(w http.ResponseWriter, r *http.Request, logger *slog.Logger, u db.User) {
	h := w.Header()
	h.Set("Location", "/users/"+strconv.FormatInt(u.ID, 10))
	h.Set(etagHeader, etag(u))
	encode(w, r, logger, http.StatusCreated, jsonContentType, toUser(u))
}

// handleUserList serves GET /users: 200 with a page of users in id order
// and, while more remain, a Link to the next page; 400 for a bad query.
func handleUserList(logger *slog.Logger, store userReader) handlerFunc {
	return func(w http.ResponseWriter, r *http.Request) error {
		q, err := parseListQuery(r.URL.RawQuery)
		if err != nil {
			return err
		}
		// One row more than the page tells whether another page follows.
		var rows []db.ListUsersRow
		if q.name != "" {
			var named []db.ListUsersByNameRow
			named, err = store.ListUsersByName(r.Context(), db.ListUsersByNameParams{Name: q.name, After: q.after, MaxRows: q.limit + 1})
			for _, row := range named {
				rows = append(rows, db.ListUsersRow(row))
			}
		} else {
			rows, err = store.ListUsers(r.Context(), db.ListUsersParams{After: q.after, MaxRows: q.limit + 1})
		}
		if err != nil {
			return fmt.Errorf("list users after %d: %w", q.after, err)
		}
		var position int64
		if len(rows) > 0 {
			position = rows[0].ChangesPosition
		} else if position, err = store.ChangesHead(r.Context()); err != nil {
			return fmt.Errorf("read the change feed's position: %w", err)
		}
		setChangesPosition(w, position)
		if len(rows) > int(q.limit) {
			rows = rows[:q.limit]
			w.Header().Set("Link", q.nextLink(rows[len(rows)-1].ID))
		}
		users := make([]user, len(rows))
		for i, row := range rows {
			users[i] = user{ID: row.ID, Name: row.Name, CreatedAt: row.CreatedAt.UTC(), UpdatedAt: row.UpdatedAt.UTC()}
		}
		encode(w, r, logger, http.StatusOK, jsonContentType, users)
		return nil
	}
}

// handleUserGet serves GET and HEAD /users/{id}: 200 with the user and its
// ETag; 304 with the ETag when If-None-Match names it (or is *); 400 for a
// malformed id or precondition header; 404; 412 when If-Match does not
// name the user's ETag.
func handleUserGet(logger *slog.Logger, store userReader) handlerFunc {
	return func(w http.ResponseWriter, r *http.Request) error {
		id, err := pathID(r)
		if err != nil {
			return err
		}
		pre, err := parsePreconditions(r, id)
		if err != nil {
			return err
		}
		u, err := store.GetUser(r.Context(), id)
		if err != nil {
			return fmt.Errorf("get user %d: %w", id, err)
		}
		switch pre.readStatus(u) {
		case http.StatusPreconditionFailed:
			return errPreconditionFailed
		case http.StatusNotModified:
			w.Header().Set(etagHeader, etag(u))
			w.WriteHeader(http.StatusNotModified)
		default:
			w.Header().Set(etagHeader, etag(u))
			encode(w, r, logger, http.StatusOK, jsonContentType, toUser(u))
		}
		return nil
	}
}

// handleUserRename serves PUT /users/{id}: 200 with the renamed user (its
// own name again is fine) and its new ETag; 400 for a malformed id,
// precondition header, invalid JSON, an invalid name or another user's
// name; 404; 412 when If-Match or If-None-Match fails, and nothing
// changes; 413; 415.
func handleUserRename(logger *slog.Logger, store userStore) handlerFunc {
	return func(w http.ResponseWriter, r *http.Request) error {
		id, pre, err := userTarget(r)
		if err != nil {
			return err
		}
		name, err := decodeName(r)
		if err != nil {
			return err
		}
		u, err := renameUser(r.Context(), store, id, pre, name)
		if err != nil {
			return err
		}
		writeUser(w, r, logger, u)
		return nil
	}
}

// userPatch is the body of PATCH /users/{id}, a JSON merge patch (RFC
// 7396): a member left out stays as it is.
type userPatch struct {
	Name jsontext.Value `json:"name"`
}

// handleUserPatch serves PATCH /users/{id}, application/merge-patch+json:
// 200 with the user and its ETag, renamed when the patch has a name, as
// it is when the patch is {}; 400 for a malformed id, precondition header,
// invalid JSON, a name that is null (a user needs one) or invalid, or
// another user's name; 404; 412 when If-Match or If-None-Match fails, and
// nothing changes; 413; 415.
func handleUserPatch(logger *slog.Logger, store userStore) handlerFunc {
	return func(w http.ResponseWriter, r *http.Request) error {
		id, pre, err := userTarget(r)
		if err != nil {
			return err
		}
		patch, err := decode[userPatch](r, mergePatchType)
		if err != nil {
			return err
		}
		var u db.User
		switch string(patch.Name) {
		case "":
			// Nothing to change: the one statement is the read, which the
			// preconditions are checked against, as a write's would be.
			if u, err = store.GetUser(r.Context(), id); err != nil {
				return fmt.Errorf("get user %d: %w", id, err)
			}
			if pre.readStatus(u) != http.StatusOK {
				return errPreconditionFailed
			}
		case "null":
			return invalidFields(fieldError{In: "body", Field: "name", Detail: "must not be null: a user needs a name"})
		default:
			var name string
			if err := json.Unmarshal(patch.Name, &name); err != nil {
				return invalidFields(fieldError{In: "body", Field: "name", Detail: "must be a string"})
			}
			if name, err = (userRequest{Name: &name}).validName(); err != nil {
				return err
			}
			if u, err = renameUser(r.Context(), store, id, pre, name); err != nil {
				return err
			}
		}
		writeUser(w, r, logger, u)
		return nil
	}
}

// userTarget returns the id of r's path and its preconditions.
func userTarget(r *http.Request) (int64, preconditions, error) {
	id, err := pathID(r)
	if err != nil {
		return 0, preconditions{}, err
	}
	pre, err := parsePreconditions(r, id)
	return id, pre, err
}

// renameUser renames user id to name, in one statement with pre, if any.
// Returns errPreconditionFailed when pre fails, and nothing changed.
func renameUser(ctx context.Context, store userStore, id int64, pre preconditions, name string) (db.User, error) {
	if !pre.sent() {
		u, err := store.RenameUser(ctx, db.RenameUserParams{ID: id, Name: name})
		if err != nil {
			return u, fmt.Errorf("rename user %d: %w", id, err)
		}
		return u, nil
	}
	arg := db.RenameUserIfParams{ID: id, Name: name}
	arg.MatchAny, arg.Match, arg.NoneMatch = pre.writeArgs()
	row, err := store.RenameUserIf(ctx, arg)
	switch {
	case err != nil:
		return db.User{}, fmt.Errorf("rename user %d: %w", id, err)
	case !row.Renamed:
		return db.User{}, errPreconditionFailed
	}
	return db.User{ID: row.ID.Int64, Name: row.Name.String, CreatedAt: row.CreatedAt.Time, UpdatedAt: row.UpdatedAt.Time}, nil
}

// writeUser answers 200 with u and its ETag.
func writeUser(w http.ResponseWriter, r *http.Request, logger *slog.Logger, u db.User) {
	w.Header().Set(etagHeader, etag(u))
	encode(w, r, logger, http.StatusOK, jsonContentType, toUser(u))
}

// handleUserDelete serves DELETE /users/{id}: 204; 400 for a malformed id
// or precondition header; 404 when no such user exists (any more); 412
// when If-Match or If-None-Match fails, and nothing changes.
func handleUserDelete(logger *slog.Logger, store userStore) handlerFunc {
	return func(w http.ResponseWriter, r *http.Request) error {
		id, err := pathID(r)
		if err != nil {
			return err
		}
		pre, err := parsePreconditions(r, id)
		if err != nil {
			return err
		}
		if pre.sent() {
			arg := db.DeleteUserIfParams{ID: id}
			arg.MatchAny, arg.Match, arg.NoneMatch = pre.writeArgs()
			deleted, err := store.DeleteUserIf(r.Context(), arg)
			switch {
			case err != nil:
				return fmt.Errorf("delete user %d: %w", id, err)
			case !deleted:
				return errPreconditionFailed
			}
			w.WriteHeader(http.StatusNoContent)
			return nil
		}
		n, err := store.DeleteUser(r.Context(), id)
		if err != nil {
			return fmt.Errorf("delete user %d: %w", id, err)
		}
		if n == 0 {
			return errNotFound
		}
		w.WriteHeader(http.StatusNoContent)
		return nil
	}
}
