package main

import (
	"embed"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgerrcode"
)

// scripts holds the wrk Lua scripts and the pgbench scripts.
//
//go:embed scripts
var scripts embed.FS

// scenario is one line of the report: one kind of request, driven by wrk,
// and the same SQL driven by pgbench.
type scenario struct {
	n    int
	name string
	// lua is the wrk script that makes the requests, after common.lua; ""
	// sends path every time.
	lua  string
	path string
	// expectStatus says that the script counts the expected and the
	// unexpected answers itself (scenario 4, whose answer is a 400);
	// otherwise every status outside 2xx and 3xx is an error.
	expectStatus bool
	// pgbench is the pgbench script with the same SQL; "" for none.
	pgbench string
	// driverCode, when set, says that the ceiling runs the script's SQL
	// through driverRun instead of pgbench, each execution failing with
	// this SQLSTATE.
	driverCode string
	// The targets of the performance issue; zero for none.
	minRatio float64
	maxP99   time.Duration
}

// scenarios are the six of the performance issue, in its order, and the
// keyed create of the safe-writes issue, to compare with scenario 3.
var scenarios = []scenario{
	{n: 1, name: "GET /users/{id}", lua: "get.lua", pgbench: "get.sql", minRatio: 0.8, maxP99: 10 * time.Millisecond},
	{n: 2, name: "GET /users?after=…&limit=50", lua: "list.lua", pgbench: "list.sql", minRatio: 0.7, maxP99: 10 * time.Millisecond},
	{n: 3, name: "POST /users (new name)", lua: "create.lua", pgbench: "create.sql", minRatio: 0.8, maxP99: 10 * time.Millisecond},
	{n: 4, name: "POST /users (taken name: 400)", lua: "existing.lua", expectStatus: true, pgbench: "existing.sql", driverCode: pgerrcode.UniqueViolation, minRatio: 0.7},
	{n: 5, name: "PUT /users/{id} (rename)", lua: "rename.lua", pgbench: "rename.sql", minRatio: 0.7},
	{n: 6, name: "GET /healthz (no database)", path: "/healthz"},
	{n: 7, name: "POST /users (new name, Idempotency-Key)", lua: "create_keyed.lua"},
}

// writes reports whether the scenario's runs change the table: add rows,
// or leave dead ones behind.
func (s scenario) writes() bool {
	return s.n == 3 || s.n == 4 || s.n == 5 || s.n == 7
}

// usesDatabase reports whether the scenario's requests reach the database.
func (s scenario) usesDatabase() bool {
	return s.n != 6
}

// bounds returns the range of ids or names that scenario s draws from, in a
// table seeded with users 1 to seed, each named for its id in decimal.
// Scenario 4 posts the names of the lower half and scenario 5 renames the
// upper half, so the rounds can take turns: no rename takes away a name
// that scenario 4 counts on being taken. Scenario 2's after leaves a full
// page above it.
func (s scenario) bounds(seed int) (lo, hi int) {
	switch s.n {
	case 1:
		return 1, seed
	case 2:
		return 0, seed - listMaxRows
	case 4:
		return 1, seed / 2
	case 5:
		return seed/2 + 1, seed
	}
	return 0, 0
}

// listMaxRows is what the list handler asks the database for a page of 50:
// one row more, which tells whether another page follows.
const listMaxRows = 51

// writeScripts writes the scripts that the scenarios and the soak need
// into dir, each wrk script prefixed with common.lua, and returns the path
// of each by its name.
func writeScripts(dir string) (map[string]string, error) {
	common, err := scripts.ReadFile("scripts/common.lua")
	if err != nil {
		return nil, err
	}
	paths := map[string]string{}
	write := func(name string, body []byte) error {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, body, 0o644); err != nil {
			return fmt.Errorf("write script %s: %w", name, err)
		}
		paths[name] = p
		return nil
	}
	// common.lua alone serves fixed paths: scenario 6 and the deep pages.
	if err := write("common.lua", common); err != nil {
		return nil, err
	}
	names := []string{soakScript}
	for _, s := range scenarios {
		names = append(names, s.lua, s.pgbench)
	}
	for _, name := range names {
		if name == "" {
			continue
		}
		body, err := scripts.ReadFile("scripts/" + name)
		if err != nil {
			return nil, err
		}
		if filepath.Ext(name) == ".lua" {
			body = append(append(append([]byte{}, common...), '\n'), body...)
		}
		if err := write(name, body); err != nil {
			return nil, err
		}
	}
	return paths, nil
}

// scriptSQL returns the SQL statement of a pgbench script as pgbench -M
// prepared sends it: without the comments and the meta-commands, its
// variables replaced by $1, $2, ... in the order they first appear; and the
// variables' names in that order. As pgbench does, it takes ":" and a name
// for a variable, and skips "::" casts.
func scriptSQL(script string) (string, []string) {
	var lines []string
	for line := range strings.Lines(script) {
		t := strings.TrimSpace(line)
		if t == "" || strings.HasPrefix(t, "--") || strings.HasPrefix(t, `\`) {
			continue
		}
		lines = append(lines, strings.TrimRight(line, "\n"))
	}
	src := strings.TrimSuffix(strings.TrimSpace(strings.Join(lines, "\n")), ";")

	var b strings.Builder
	var vars []string
	isName := func(c byte, first bool) bool {
		return c == '_' || 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || !first && '0' <= c && c <= '9'
	}
	for i := 0; i < len(src); {
		if src[i] != ':' {
			b.WriteByte(src[i])
			i++
			continue
		}
		if i+1 < len(src) && src[i+1] == ':' {
			for i < len(src) && src[i] == ':' {
				b.WriteByte(':')
				i++
			}
			continue
		}
		j := i + 1
		for j < len(src) && isName(src[j], j == i+1) {
			j++
		}
		if j == i+1 {
			b.WriteByte(':')
			i++
			continue
		}
		name := src[i+1 : j]
		k := slices.Index(vars, name)
		if k < 0 {
			vars = append(vars, name)
			k = len(vars) - 1
		}
		b.WriteString("$" + strconv.Itoa(k+1))
		i = j
	}
	return b.String(), vars
}
