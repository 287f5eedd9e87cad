package config

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strings"
)

// MinTokenLength is the fewest characters a bearer token may have. It only
// catches a placeholder or a password put where a random token belongs
// (openssl rand -hex 32 makes 64 characters); it does not measure strength.
const MinTokenLength = 16

// Tokens are secrets: printing or logging them shows only how many there
// are, so that a Config in a log line or a test failure gives none away.
type Tokens []string

// String returns "[N tokens]", never a token.
func (t Tokens) String() string { return fmt.Sprintf("[%d tokens]", len(t)) }

// GoString is String, for %#v.
func (t Tokens) GoString() string { return t.String() }

// LogValue is String, for slog.
func (t Tokens) LogValue() slog.Value { return slog.StringValue(t.String()) }

// readTokens returns the bearer tokens of AUTH_TOKENS (comma-separated) or
// of the file AUTH_TOKENS_FILE names (one per line; blank lines and lines
// starting with # are skipped), and that file's name. Surrounding
// whitespace is trimmed from each token. Neither variable set: no tokens.
//
// Returns an error that names the variable, and the token's position but
// never its text, when both variables are set, when the one set holds no
// token (an empty value must not turn authentication off by accident), when
// the file cannot be read, and for a token that checkToken refuses.
func readTokens(lookupEnv func(string) (string, bool)) (Tokens, string, error) {
	list, listSet := lookupEnv("AUTH_TOKENS")
	file, fileSet := lookupEnv("AUTH_TOKENS_FILE")
	switch {
	case listSet && fileSet:
		return nil, "", errors.New("AUTH_TOKENS: AUTH_TOKENS_FILE is set too; set one of them")
	case listSet:
		tokens, err := parseTokenList(list)
		if err != nil {
			return nil, "", fmt.Errorf("AUTH_TOKENS: %w", err)
		}
		return tokens, "", nil
	case fileSet:
		tokens, err := readTokenFile(file)
		if err != nil {
			return nil, "", fmt.Errorf("AUTH_TOKENS_FILE: %w", err)
		}
		return tokens, file, nil
	}
	return nil, "", nil
}

// parseTokenList splits AUTH_TOKENS at its commas.
func parseTokenList(list string) (Tokens, error) {
	if strings.TrimSpace(list) == "" {
		return nil, errors.New("set but empty; unset it to turn authentication off")
	}
	items := strings.Split(list, ",")
	tokens := make(Tokens, 0, len(items))
	for i, item := range items {
		token := strings.TrimSpace(item)
		if err := checkToken(token); err != nil {
			return nil, fmt.Errorf("token %d of %d %w", i+1, len(items), err)
		}
		tokens = append(tokens, token)
	}
	return tokens, nil
}

// readTokenFile reads the tokens of the file at path.
func readTokenFile(path string) (Tokens, error) {
	if path == "" {
		return nil, errors.New("set but empty; unset it to turn authentication off")
	}
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err // *fs.PathError: names the file, shows nothing of it
	}
	var tokens Tokens
	n := 0
	for line := range strings.Lines(string(data)) {
		n++
		token := strings.TrimSpace(line)
		if token == "" || strings.HasPrefix(token, "#") {
			continue
		}
		if err := checkToken(token); err != nil {
			return nil, fmt.Errorf("%s: the token on line %d %w", path, n, err)
		}
		tokens = append(tokens, token)
	}
	if len(tokens) == 0 {
		return nil, fmt.Errorf("%s holds no token; unset AUTH_TOKENS_FILE to turn authentication off", path)
	}
	return tokens, nil
}

// checkToken returns nil when token can be sent as RFC 6750's b64token
// (A-Z a-z 0-9 - . _ ~ + / then any number of =) and has at least
// MinTokenLength characters. Otherwise it returns an error that completes
// "token N ..." and shows no character of the token.
func checkToken(token string) error {
	if token == "" {
		return errors.New("is empty")
	}
	end := len(strings.TrimRight(token, "="))
	for i := 0; i < len(token); i++ {
		c := token[i]
		switch {
		case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', '0' <= c && c <= '9', strings.IndexByte("-._~+/", c) >= 0:
			continue
		case c == '=' && i >= end:
			continue
		}
		return fmt.Errorf("has %s at byte %d; a token is made of A-Z a-z 0-9 - . _ ~ + / and may end with = (RFC 6750)", describeByte(c), i+1)
	}
	if end == 0 {
		return errors.New("is made of = only")
	}
	if len(token) < MinTokenLength {
		return fmt.Errorf("is shorter than %d characters; make one with: openssl rand -hex 32", MinTokenLength)
	}
	return nil
}

// describeByte names the kind of a byte that a token may not hold, without
// showing the byte itself.
func describeByte(c byte) string {
	switch {
	case c == ' ' || c == '\t':
		return "whitespace"
	case c < 0x20 || c == 0x7f:
		return "a control character"
	case c >= 0x80:
		return "a non-ASCII character"
	case c == '=':
		return "an = before the end"
	case c == ',':
		return "a comma"
	}
	return "a punctuation character"
}
