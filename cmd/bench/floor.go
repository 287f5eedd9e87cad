//go:build linux

package main

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"runtime"
	"strconv"
	"time"

	"github.com/jackc/pgerrcode"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"usersvc/db"
)

// runFloor is `bench floor`: the floor, which the benchmark runs beside
// the service as a process of its own, so that its CPU is measured the
// same way. It serves the service's benchmarked routes on HTTP_ADDR
// against DATABASE_URL, with the same SQL (db's queries), the pool size
// the service picks, and the same statuses, headers and JSON, through
// net/http, pgxpool and encoding/json alone: what plain code pays, without
// the service's middleware (request id, token, access log, metrics,
// timeout) or its tricks. Returns when ctx ends.
func runFloor(ctx context.Context, getenv func(string) string) error {
	pc, err := pgxpool.ParseConfig(getenv("DATABASE_URL"))
	if err != nil {
		return err
	}
	pc.MaxConns = int32(max(16, 2*runtime.GOMAXPROCS(0))) // the service's default, cmd/usersvc/pool.go
	pool, err := pgxpool.NewWithConfig(ctx, pc)
	if err != nil {
		return err
	}
	defer pool.Close()
	srv := &http.Server{Addr: getenv("HTTP_ADDR"), Handler: floorHandler(db.New(pool))}
	go func() {
		<-ctx.Done()
		srv.Shutdown(context.Background()) // bench kills it after 20 s
	}()
	if err := srv.ListenAndServe(); !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}

// floorUser is a user as the API shows it.
type floorUser struct {
	ID        int64     `json:"id"`
	Name      string    `json:"name"`
	CreatedAt time.Time `json:"created_at"`
	UpdatedAt time.Time `json:"updated_at"`
}

// floorChange is a change as the feed shows it; User is nil for a delete.
type floorChange struct {
	Position int64      `json:"position"`
	Op       string     `json:"op"`
	ID       int64      `json:"id"`
	User     *floorUser `json:"user"`
	At       time.Time  `json:"at"`
}

func toFloorUser(u db.User) floorUser {
	return floorUser{u.ID, u.Name, u.CreatedAt.UTC(), u.UpdatedAt.UTC()}
}

// floorHandler serves GET /users/{id}, GET /users?after=&limit=, GET
// /users/changes?after=&limit= and POST /users as the service does when
// they succeed, and GET /readyz.
func floorHandler(q *db.Queries) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /readyz", func(http.ResponseWriter, *http.Request) {})
	mux.HandleFunc("GET /users/{id}", func(w http.ResponseWriter, r *http.Request) {
		id, err := strconv.ParseInt(r.PathValue("id"), 10, 64)
		if err != nil {
			http.Error(w, "bad id", http.StatusBadRequest)
			return
		}
		u, err := q.GetUser(r.Context(), id)
		if errors.Is(err, pgx.ErrNoRows) {
			http.NotFound(w, r)
			return
		} else if err != nil {
			http.Error(w, "database unavailable", http.StatusServiceUnavailable)
			return
		}
		w.Header().Set("ETag", floorETag(u))
		writeJSON(w, http.StatusOK, toFloorUser(u))
	})
	mux.HandleFunc("GET /users", func(w http.ResponseWriter, r *http.Request) {
		after, limit, ok := floorPage(r, "50")
		if !ok {
			http.Error(w, "bad after or limit", http.StatusBadRequest)
			return
		}
		rows, err := q.ListUsers(r.Context(), db.ListUsersParams{After: after, MaxRows: int32(limit) + 1})
		if err != nil {
			http.Error(w, "database unavailable", http.StatusServiceUnavailable)
			return
		}
		if len(rows) > 0 { // the service asks the database again for an empty page
			w.Header().Set("Changes-Position", strconv.FormatInt(rows[0].ChangesPosition, 10))
		}
		if len(rows) > int(limit) {
			rows = rows[:limit]
			w.Header().Set("Link", "</users?after="+strconv.FormatInt(rows[limit-1].ID, 10)+"&limit="+strconv.FormatInt(limit, 10)+`>; rel="next"`)
		}
		users := make([]floorUser, len(rows))
		for i, u := range rows {
			users[i] = floorUser{u.ID, u.Name, u.CreatedAt.UTC(), u.UpdatedAt.UTC()}
		}
		writeJSON(w, http.StatusOK, users)
	})
	mux.HandleFunc("GET /users/changes", func(w http.ResponseWriter, r *http.Request) {
		after, limit, ok := floorPage(r, "100")
		if !ok {
			http.Error(w, "bad after or limit", http.StatusBadRequest)
			return
		}
		rows, err := q.ListChanges(r.Context(), db.ListChangesParams{After: after, MaxRows: int32(limit)})
		if err != nil {
			http.Error(w, "database unavailable", http.StatusServiceUnavailable)
			return
		}
		page := make([]floorChange, len(rows))
		for i, c := range rows {
			page[i], after = floorChange{c.Position, c.Op, c.UserID, nil, c.At.UTC()}, c.Position
			if c.Name.Valid {
				page[i].User = &floorUser{c.UserID, c.Name.String, c.CreatedAt.Time.UTC(), c.UpdatedAt.Time.UTC()}
			}
		}
		w.Header().Set("Link", "</users/changes?after="+strconv.FormatInt(after, 10)+"&limit="+strconv.FormatInt(limit, 10)+`>; rel="next"`)
		writeJSON(w, http.StatusOK, page)
	})
	mux.HandleFunc("POST /users", func(w http.ResponseWriter, r *http.Request) {
		var req struct {
			Name string `json:"name"`
		}
		if err := json.NewDecoder(http.MaxBytesReader(w, r.Body, 1<<20)).Decode(&req); err != nil || req.Name == "" {
			http.Error(w, "bad body", http.StatusBadRequest)
			return
		}
		u, err := q.CreateUser(r.Context(), req.Name)
		if pgErr, ok := errors.AsType[*pgconn.PgError](err); ok && pgErr.Code == pgerrcode.UniqueViolation {
			http.Error(w, "name taken", http.StatusBadRequest)
			return
		} else if err != nil {
			http.Error(w, "database unavailable", http.StatusServiceUnavailable)
			return
		}
		w.Header().Set("Location", "/users/"+strconv.FormatInt(u.ID, 10))
		w.Header().Set("ETag", floorETag(u))
		writeJSON(w, http.StatusCreated, toFloorUser(u))
	})
	return mux
}

// floorPage parses a page's after and limit, limit def when not given.
func floorPage(r *http.Request, def string) (after, limit int64, ok bool) {
	after, err1 := strconv.ParseInt(cmp.Or(r.URL.Query().Get("after"), "0"), 10, 64)
	limit, err2 := strconv.ParseInt(cmp.Or(r.URL.Query().Get("limit"), def), 10, 32)
	return after, limit, err1 == nil && err2 == nil && after >= 0 && limit >= 1 && limit <= 1000
}

// floorETag is the service's ETag of u: its id and version.
func floorETag(u db.User) string {
	return `"` + strconv.FormatInt(u.ID, 10) + "-" + strconv.FormatInt(u.UpdatedAt.UnixMicro(), 10) + `"`
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	body, _ := json.Marshal(v) // users and slices of them always encode
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Content-Length", strconv.Itoa(len(body)))
	w.WriteHeader(status)
	w.Write(body)
}
