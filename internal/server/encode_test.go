package server

import (
	"bytes"
	"encoding/json/v2"
	"math"
	"math/rand/v2"
	"strings"
	"testing"
	"time"
)

// TestMarshalMatchesJSON checks that the hand-written encoding of users is
// the one json.Marshal writes, for names and times of every kind.
func TestMarshalMatchesJSON(t *testing.T) {
	names := []string{
		"alice", "", "Zoë", "cafe\u0301", "😀 smile", `quote " and \ backslash`, "<b>&amp;</b>", "tab\there",
		"new\nline", "\u0000\u001f\u007f", "\u2028\u2029", "\ufeffbom", strings.Repeat("é", 100), "Robert'); DROP TABLE users;--",
	}
	times := []time.Time{
		time.Date(2026, 11, 26, 7, 8, 9, 123456000, time.UTC),
		time.Date(2026, 11, 26, 7, 8, 9, 0, time.UTC),
		time.Date(1, 1, 1, 0, 0, 0, 0, time.UTC),
		time.Date(9999, 12, 31, 23, 59, 58, 999999999, time.UTC),
		time.Date(2026, 1, 2, 3, 4, 5, 100000000, time.UTC),
	}
	rng := rand.New(rand.NewPCG(1, 2))
	var page []user
	for i := range 500 {
		name := names[i%len(names)]
		if i >= len(names) {
			// Random runes, valid UTF-8, from every plane.
			var sb strings.Builder
			for range rng.IntN(20) {
				sb.WriteRune(rune(rng.IntN(0x10FFFF)))
			}
			name = strings.ToValidUTF8(sb.String(), "?")
		}
		u := user{
			ID:        []int64{1, math.MaxInt64, rng.Int64()}[i%3],
			Name:      name,
			CreatedAt: times[i%len(times)],
			UpdatedAt: times[(i+1)%len(times)].Add(time.Duration(rng.IntN(1e9))),
		}
		page = append(page, u)
		want, err := json.Marshal(u)
		if err != nil {
			t.Fatal(err)
		}
		if got, err := marshal(u); err != nil || !bytes.Equal(got, want) {
			t.Fatalf("marshal(%+v) = %s, %v; want %s", u, got, err, want)
		}
	}
	for _, p := range [][]user{page, page[:1], {}} {
		want, err := json.Marshal(p)
		if err != nil {
			t.Fatal(err)
		}
		if got, err := marshal(p); err != nil || !bytes.Equal(got, want) {
			t.Errorf("marshal of a page of %d users differs from json.Marshal's:\n%s\n%s", len(p), got, want)
		}
	}
	if _, err := marshal(user{ID: 1, Name: "bad \xff"}); err == nil {
		t.Error("marshal of a name that is not UTF-8 = nil error, want one as json.Marshal gives")
	}
}
