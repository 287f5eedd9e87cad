package server

import (
	"encoding/json/jsontext"
	"encoding/json/v2"
	"fmt"
	"log/slog"
	"net/http"
	"strconv"
	"time"
)

const (
	jsonContentType    = "application/json"
	problemContentType = "application/problem+json"
)

// encode writes v as JSON with the given status. The body is marshalled
// before any header is written, so a failure still becomes a clean 500.
func encode(w http.ResponseWriter, r *http.Request, logger *slog.Logger, status int, contentType string, v any) {
	body, err := marshal(v)
	if err != nil {
		logger.ErrorContext(r.Context(), "encode response", slog.String("path", r.URL.Path), slog.Any("err", err))
		status, contentType = http.StatusInternalServerError, problemContentType
		body = []byte(`{"type":"urn:usersvc:problem:internal","title":"Internal error","status":500,"detail":"the server failed to encode the response","code":"internal"}`)
	}
	h := w.Header()
	h.Set("Content-Type", contentType)
	h.Set("Content-Length", strconv.Itoa(len(body)))
	w.WriteHeader(status)
	_, _ = w.Write(body)
}

// marshal returns v as JSON. Users and pages of users, the bulk of the
// service's output, are written by hand, byte for byte as json.Marshal
// writes them (the tests compare the two). In the same run, with
// json.Marshal GET /users?after=&limit=50 cost the service 12 % more CPU
// per request (183 against 164 µs, medians of 7 rounds; more in every
// round, by 3 to 27 %), and 12 % more in a second run; the throughput
// difference, 6 %, was inside the rounds' spread (docs/benchmarks.md,
// "Speed tricks, measured"; make bench BENCH_ARGS='-service-bin
// bin/usersvc,<the same with json.Marshal> -scenarios 1,2 -reps 7
// -duration 8s -pgbench-clients 16 -deep-rows 0').
func marshal(v any) ([]byte, error) {
	switch v := v.(type) {
	case user:
		return appendUser(make([]byte, 0, 128), v)
	case []user:
		b := make([]byte, 0, 2+len(v)*128)
		b = append(b, '[')
		for i, u := range v {
			if i > 0 {
				b = append(b, ',')
			}
			var err error
			if b, err = appendUser(b, u); err != nil {
				return nil, err
			}
		}
		return append(b, ']'), nil
	}
	return json.Marshal(v)
}

// appendUser appends u as JSON to b. Returns an error, as json.Marshal
// does, for a name that is not valid UTF-8.
func appendUser(b []byte, u user) ([]byte, error) {
	b = append(b, `{"id":`...)
	b = strconv.AppendInt(b, u.ID, 10)
	b = append(b, `,"name":`...)
	b, err := jsontext.AppendQuote(b, u.Name)
	if err != nil {
		return nil, fmt.Errorf("encode user %d: %w", u.ID, err)
	}
	b = append(b, `,"created_at":"`...)
	b = u.CreatedAt.AppendFormat(b, time.RFC3339Nano)
	b = append(b, `","updated_at":"`...)
	b = u.UpdatedAt.AppendFormat(b, time.RFC3339Nano)
	return append(b, `"}`...), nil
}
