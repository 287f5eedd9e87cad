package config

import (
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
)

const (
	tokenA = "0123456789abcdef0123456789abcdef"
	tokenB = "Zm9vYmFyYmF6cXV4LXRva2VuLWIK/+~._-=="
)

func TestLoadTokens(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "tokens")
	writeFile(t, file, "# rotated 2026-11-26\n\n  "+tokenA+"  \r\n\t"+tokenB+"\n")
	for _, tt := range []struct {
		name     string
		env      map[string]string
		want     Tokens
		wantFile string
	}{
		{"neither", nil, nil, ""},
		{"one", map[string]string{"AUTH_TOKENS": tokenA}, Tokens{tokenA}, ""},
		{"two with spaces", map[string]string{"AUTH_TOKENS": " " + tokenA + " ,\t" + tokenB + " "}, Tokens{tokenA, tokenB}, ""},
		{"file", map[string]string{"AUTH_TOKENS_FILE": file}, Tokens{tokenA, tokenB}, file},
	} {
		t.Run(tt.name, func(t *testing.T) {
			setenv(t, tt.env)
			c, err := Load()
			if err != nil {
				t.Fatalf("Load() = %v", err)
			}
			if !reflect.DeepEqual(c.AuthTokens, tt.want) || c.AuthTokensFile != tt.wantFile {
				t.Errorf("Load(): AuthTokens = %q from %q, want %q from %q", []string(c.AuthTokens), c.AuthTokensFile, []string(tt.want), tt.wantFile)
			}
		})
	}
}

func TestLoadRejectsTokens(t *testing.T) {
	dir := t.TempDir()
	file := func(name, content string) string {
		path := filepath.Join(dir, name)
		writeFile(t, path, content)
		return path
	}
	const secret = "s3cr3t-s3cr3t-s3cr3t"
	for _, tt := range []struct {
		name string
		env  map[string]string
		want string // the whole error, or its start when it ends with "…"
	}{
		{"both", map[string]string{"AUTH_TOKENS": tokenA, "AUTH_TOKENS_FILE": file("both", tokenB)}, "AUTH_TOKENS: AUTH_TOKENS_FILE is set too; set one of them"},
		{"empty list", map[string]string{"AUTH_TOKENS": ""}, "AUTH_TOKENS: set but empty; unset it to turn authentication off"},
		{"blank list", map[string]string{"AUTH_TOKENS": " "}, "AUTH_TOKENS: set but empty; unset it to turn authentication off"},
		{"empty item", map[string]string{"AUTH_TOKENS": tokenA + ",," + secret}, "AUTH_TOKENS: token 2 of 3 is empty"},
		{"trailing comma", map[string]string{"AUTH_TOKENS": secret + ","}, "AUTH_TOKENS: token 2 of 2 is empty"},
		{"short", map[string]string{"AUTH_TOKENS": tokenA + ",hunter2"}, "AUTH_TOKENS: token 2 of 2 is shorter than 16 characters; make one with: openssl rand -hex 32"},
		{"inner space", map[string]string{"AUTH_TOKENS": "s3cr3t s3cr3t-s3cr3t"}, "AUTH_TOKENS: token 1 of 1 has whitespace at byte 7; …"},
		{"control", map[string]string{"AUTH_TOKENS": secret + "\x01"}, "AUTH_TOKENS: token 1 of 1 has a control character at byte 21; …"},
		{"non-ASCII", map[string]string{"AUTH_TOKENS": "s3cr3t-s3cr3t-s3crét"}, "AUTH_TOKENS: token 1 of 1 has a non-ASCII character at byte 19; …"},
		{"quote", map[string]string{"AUTH_TOKENS": `"` + secret + `"`}, "AUTH_TOKENS: token 1 of 1 has a punctuation character at byte 1; …"},
		{"inner =", map[string]string{"AUTH_TOKENS": "s3cr3t=s3cr3t-s3cr3t"}, "AUTH_TOKENS: token 1 of 1 has an = before the end at byte 7; …"},
		{"only =", map[string]string{"AUTH_TOKENS": strings.Repeat("=", 20)}, "AUTH_TOKENS: token 1 of 1 is made of = only"},
		{"empty file variable", map[string]string{"AUTH_TOKENS_FILE": ""}, "AUTH_TOKENS_FILE: set but empty; unset it to turn authentication off"},
		{"missing file", map[string]string{"AUTH_TOKENS_FILE": filepath.Join(dir, "missing")}, "AUTH_TOKENS_FILE: open " + filepath.Join(dir, "missing") + ": no such file or directory"},
		{"directory", map[string]string{"AUTH_TOKENS_FILE": dir}, "AUTH_TOKENS_FILE: read " + dir + ": is a directory"},
		{"file of comments", map[string]string{"AUTH_TOKENS_FILE": file("comments", "# none yet\n\n")}, "AUTH_TOKENS_FILE: " + filepath.Join(dir, "comments") + " holds no token; unset AUTH_TOKENS_FILE to turn authentication off"},
		{"bad line", map[string]string{"AUTH_TOKENS_FILE": file("bad", tokenA+"\n\n"+secret+", "+secret+"\n")}, "AUTH_TOKENS_FILE: " + filepath.Join(dir, "bad") + ": the token on line 3 has a comma at byte 21; …"},
		{"trailing comment", map[string]string{"AUTH_TOKENS_FILE": file("comment", secret+" # the old one\n")}, "AUTH_TOKENS_FILE: " + filepath.Join(dir, "comment") + ": the token on line 1 has whitespace at byte 21; …"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			setenv(t, tt.env)
			_, err := Load()
			if err == nil {
				t.Fatalf("Load() = nil, want %q", tt.want)
			}
			got := err.Error()
			if prefix, ok := strings.CutSuffix(tt.want, "…"); ok {
				if !strings.HasPrefix(got, prefix) {
					t.Errorf("Load() = %q, want it to start with %q", got, prefix)
				}
			} else if got != tt.want {
				t.Errorf("Load() = %q, want %q", got, tt.want)
			}
			for _, s := range []string{"s3cr3t", "hunter2", tokenA, tokenB} {
				if strings.Contains(got, s) {
					t.Errorf("Load() = %q: the error shows a token", got)
				}
			}
		})
	}
}

// TestTokensNeverPrinted checks that a Config printed or logged whole
// shows how many tokens it has, and none of them.
func TestTokensNeverPrinted(t *testing.T) {
	c := Config{AuthTokens: Tokens{tokenA, tokenB}}
	var log strings.Builder
	slog.New(slog.NewJSONHandler(&log, nil)).Info("config", slog.Any("tokens", c.AuthTokens))
	for _, out := range []string{fmt.Sprint(c), fmt.Sprintf("%+v", c), fmt.Sprintf("%#v", c), fmt.Sprint(c.AuthTokens), log.String()} {
		if strings.Contains(out, tokenA) || strings.Contains(out, tokenB) {
			t.Errorf("printed config shows a token: %s", out)
		}
		if !strings.Contains(out, "[2 tokens]") {
			t.Errorf("printed config = %s, want it to say [2 tokens]", out)
		}
	}
}

func writeFile(t *testing.T, path, content string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
}
