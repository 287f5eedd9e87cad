//go:build (ha || partition) && linux

package main

import (
	"context"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

// commitLogSQL records every change of users with its transaction, in
// the fault tests' own table: with track_commit_timestamp on, lateCommits
// finds when each committed.
const commitLogSQL = `CREATE TABLE commit_log (op text NOT NULL, key text NOT NULL, xid xid8 NOT NULL DEFAULT pg_current_xact_id());
CREATE FUNCTION log_commit() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
	IF TG_OP = 'DELETE' THEN INSERT INTO commit_log (op, key) VALUES (TG_OP, OLD.id::text);
	ELSE INSERT INTO commit_log (op, key) VALUES (TG_OP, NEW.name); END IF;
	RETURN NULL;
END $$;
CREATE TRIGGER log_commit AFTER INSERT OR UPDATE OR DELETE ON users FOR EACH ROW EXECUTE FUNCTION log_commit()`

// changeOf returns the row change in commit_log that write a asks for:
// a create, the name it creates; a rename, the name it gives; a delete,
// the id it deletes, which is its attempt's name.
func changeOf(a attempt) ([2]string, bool) {
	op, ok := map[string]string{"create": "INSERT", "rename": "UPDATE", "delete": "DELETE"}[strings.TrimSuffix(a.op, " retry")]
	return [2]string{op, a.name}, ok
}

// lateCommits matches every change in commit_log at url to a request
// of as for it that was in flight when it committed, each request at most
// once. Returns how many requests answered 503 committed, and how many
// changes committed after a 503 for them was answered and during no
// request that could be theirs: writes answered 503 that took effect
// later.
func lateCommits(t *testing.T, url string, as []attempt) (in, late int) {
	t.Helper()
	requests := map[[2]string][]attempt{}
	for _, a := range as {
		if k, ok := changeOf(a); ok {
			requests[k] = append(requests[k], a)
		}
	}
	commits := map[[2]string][]time.Time{}
	for _, r := range query(t, url, "SELECT op, key, pg_xact_commit_timestamp(xid::text::xid) FROM commit_log ORDER BY 3") {
		k := [2]string{r[0].(string), r[1].(string)}
		if _, ok := requests[k]; ok {
			commits[k] = append(commits[k], r[2].(time.Time))
		}
	}
	for k, cs := range commits {
		rs, used := requests[k], make([]bool, len(requests[k]))
		for _, at := range cs {
			// The unused request in flight that ended first; one with no
			// answer is in flight until the end.
			match := -1
			for i, a := range rs {
				inFlight := !at.Before(a.start) && (a.err != nil || !at.After(a.end))
				if !used[i] && inFlight && (match < 0 || a.end.Before(rs[match].end)) {
					match = i
				}
			}
			if match >= 0 {
				used[match] = true
				if rs[match].status == http.StatusServiceUnavailable {
					in++
				}
				continue
			}
			if i := slices.IndexFunc(rs, func(a attempt) bool { return a.status == http.StatusServiceUnavailable && a.end.Before(at) }); i >= 0 {
				late++
				t.Logf("%s %s: answered 503 at %v, committed at %v", k[0], k[1], rs[i].end.Format(time.StampMicro), at.Format(time.StampMicro))
			}
		}
	}
	return in, late
}

// query runs q on a fresh connection and returns its rows' values.
func query(t *testing.T, url string, q string) [][]any {
	t.Helper()
	ctx, conn, done := connectFor30s(t, url)
	defer done()
	rows, err := conn.Query(ctx, q)
	if err != nil {
		t.Fatal(err)
	}
	var out [][]any
	for rows.Next() {
		v, err := rows.Values()
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, v)
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	return out
}

func sql(t *testing.T, url, q string) {
	t.Helper()
	ctx, conn, done := connectFor30s(t, url)
	defer done()
	if _, err := conn.Exec(ctx, q); err != nil {
		t.Fatal(err)
	}
}

// connectFor30s returns a fresh connection to url, a context that bounds
// its use to 30 s, and the function that closes both.
func connectFor30s(t *testing.T, url string) (context.Context, *pgx.Conn, func()) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	conn, err := pgx.Connect(ctx, url)
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	return ctx, conn, func() {
		conn.Close(context.Background())
		cancel()
	}
}
