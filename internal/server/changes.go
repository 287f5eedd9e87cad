package server

import (
	"context"
	"fmt"
	"log/slog"
	"net/http"
	"strconv"
	"time"

	"usersvc/db"
	"usersvc/internal/postgres"
)

// changesPositionHeader is the header of every GET /users page: the
// position of the change feed that the page reflects.
const changesPositionHeader = "Changes-Position"

// change is one entry of the change feed as the API shows it.
type change struct {
	Position int64     `json:"position"`
	Op       string    `json:"op"`
	ID       int64     `json:"id"`
	User     *user     `json:"user"` // nil for a delete
	At       time.Time `json:"at"`
}

var errChangesExpired = &apiError{code: codeChangesExpired,
	detail: "changes after this position were purged (CHANGES_RETENTION): list the users again (GET /users) and follow the feed from its Changes-Position"}

// handleChanges serves GET /users/changes: 200 with the changes after
// the query's position, oldest first, waiting up to its wait for one when
// there is none yet, and a Link to the next ones; 400 for a bad query;
// 410 changes_expired when some after that position were purged.
func handleChanges(logger *slog.Logger, store userStore, feed *postgres.Changes) handlerFunc {
	return func(w http.ResponseWriter, r *http.Request) error {
		q, err := parseChangesQuery(r.URL.RawQuery)
		if err != nil {
			return err
		}
		page, queued, err := readChanges(r.Context(), store, q, true)
		// A short page lacks the writes acknowledged but not sequenced yet:
		// sequence them and read again. A full page has its next request.
		if err == nil && queued && len(page) < int(q.limit) && feed != nil {
			if err = feed.Sequence(r.Context()); err == nil {
				page, _, err = readChanges(r.Context(), store, q, false)
			}
		}
		if err == nil && len(page) == 0 && q.wait > 0 && feed != nil {
			page, err = waitForChanges(r.Context(), store, q, feed)
		}
		if err != nil {
			return err
		}
		last := q.after
		if page == nil {
			page = []change{}
		} else if len(page) > 0 {
			last = page[len(page)-1].Position
		}
		w.Header().Set("Link", q.nextLink(last))
		encode(w, r, logger, http.StatusOK, jsonContentType, page)
		return nil
	}
}

// readChanges reads a page of changes, and whether committed changes
// wait in the queue; with expiry, it fails with errChangesExpired when the
// purge has deleted changes after q.after.
func readChanges(ctx context.Context, store userStore, q changesQuery, expiry bool) (page []change, queued bool, err error) {
	rows, err := store.ListChanges(ctx, db.ListChangesParams{After: q.after, MaxRows: q.limit})
	if err != nil {
		return nil, false, fmt.Errorf("list changes after %d: %w", q.after, err)
	}
	var horizon int64
	if len(rows) > 0 {
		horizon, queued = rows[0].PurgedThrough, rows[0].Queued
	} else {
		st, err := store.ChangesState(ctx)
		if err != nil {
			return nil, false, fmt.Errorf("read the changes' horizon: %w", err)
		}
		horizon, queued = st.PurgedThrough, st.Queued
	}
	if expiry && q.after > 0 && q.after < horizon {
		return nil, false, errChangesExpired
	}
	page = make([]change, len(rows))
	users := make([]user, len(rows)) // one allocation for the page's users
	for i, row := range rows {
		page[i] = change{Position: row.Position, Op: row.Op, ID: row.UserID, At: row.At.UTC()}
		if row.Name.Valid {
			users[i] = user{ID: row.UserID, Name: row.Name.String, CreatedAt: row.CreatedAt.Time.UTC(), UpdatedAt: row.UpdatedAt.Time.UTC()}
			page[i].User = &users[i]
		}
	}
	return page, queued, nil
}

// waitForChanges reads again each time the feed's head moves past
// q.after, until a change comes, q.wait has passed or the instance
// drains. Waiting holds no database connection. Without a feed (a
// server without a database pool of its own, in tests), it waits no more.
func waitForChanges(ctx context.Context, store userStore, q changesQuery, feed *postgres.Changes) ([]change, error) {
	defer feed.Waiting()()
	timer := time.NewTimer(q.wait)
	defer timer.Stop()
	for {
		head, moved, stopped := feed.Head()
		if stopped {
			return nil, nil
		}
		if head > q.after {
			page, _, err := readChanges(ctx, store, q, false)
			if err != nil || len(page) > 0 {
				return page, err
			}
		}
		select {
		case <-moved:
		case <-timer.C:
			return nil, nil
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
}

// setChangesPosition sets the Changes-Position header of a GET /users page.
func setChangesPosition(w http.ResponseWriter, position int64) {
	w.Header().Set(changesPositionHeader, strconv.FormatInt(position, 10))
}
