// Package config reads the service's configuration from environment
// variables, once, at start-up.
package config

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"reflect"
	"strings"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/kelseyhightower/envconfig"
)

// Config is the whole configuration. Every field is read from the variable
// named in its envconfig tag; the README documents each one.
type Config struct {
	// DatabaseURL is a PostgreSQL connection URL or keyword/value string.
	// Required by serve and migrate.
	DatabaseURL string `envconfig:"DATABASE_URL"`
	// DatabaseReadURL, when set, is a PostgreSQL URL for the GET routes
	// alone, typically the standbys of DatabaseURL's primary with
	// target_session_attrs=prefer-standby. Empty: reads use DatabaseURL.
	DatabaseReadURL string `envconfig:"DATABASE_READ_URL"`
	// HTTPAddr is the address the HTTP server listens on.
	HTTPAddr string `envconfig:"HTTP_ADDR" default:":8080"`
	// LogLevel is debug, info, warn or error.
	LogLevel slog.Level `envconfig:"LOG_LEVEL" default:"info"`
	// LogFormat is json or text.
	LogFormat string `envconfig:"LOG_FORMAT" default:"json"`
	// DBMaxConns caps the connection pool; 0 means pool_max_conns from
	// DatabaseURL, else DefaultMaxConns.
	DBMaxConns int32 `envconfig:"DB_MAX_CONNS" default:"0"`
	// DBConnectTimeout bounds each attempt to open a database connection,
	// for every command, unless DatabaseURL has connect_timeout (see
	// PoolConfig).
	DBConnectTimeout time.Duration `envconfig:"DB_CONNECT_TIMEOUT" default:"10s"`
	// RequestTimeout bounds all of a request's database work, from the end
	// of its body, and each database connection on both ends (see
	// postgres.boundSessions).
	RequestTimeout time.Duration `envconfig:"REQUEST_TIMEOUT" default:"5s"`
	// BodyTimeout bounds the time a request's body may take to arrive
	// after its headers.
	BodyTimeout time.Duration `envconfig:"BODY_TIMEOUT" default:"10s"`
	// ShutdownTimeout bounds the graceful shutdown after SIGINT or SIGTERM,
	// ShutdownDelay included.
	ShutdownTimeout time.Duration `envconfig:"SHUTDOWN_TIMEOUT" default:"15s"`
	// ShutdownDelay is how long the server keeps accepting requests after
	// SIGINT or SIGTERM while /readyz answers 503, so that load balancers
	// stop sending traffic before the listener closes.
	ShutdownDelay time.Duration `envconfig:"SHUTDOWN_DELAY" default:"0s"`
	// AutoMigrate applies the embedded migrations before serving.
	AutoMigrate bool `envconfig:"AUTO_MIGRATE" default:"false"`
	// DebugAddr, when set, is the address of a second listener that serves
	// net/http/pprof's profiles. Empty: no such listener.
	DebugAddr string `envconfig:"DEBUG_ADDR"`
	// MetricsAddr, when set, is the address of a second listener that
	// serves /metrics, which HTTPAddr then does not. Empty: /metrics is
	// served on HTTPAddr.
	MetricsAddr string `envconfig:"METRICS_ADDR"`
	// IdempotencyTTL is how long the outcome of a POST /users with an
	// Idempotency-Key is kept for its retries; serve purges older ones.
	IdempotencyTTL time.Duration `envconfig:"IDEMPOTENCY_TTL" default:"24h"`
	// ChangesRetention is how long the change feed keeps a change; serve
	// purges older ones, and a consumer behind them gets 410.
	ChangesRetention time.Duration `envconfig:"CHANGES_RETENTION" default:"168h"`
	// ChangesListen has the requests waiting on the change feed woken by
	// LISTEN/NOTIFY; false where the database URL goes through a pooler
	// in transaction mode, which does not carry them: they are then woken
	// by polling, within a quarter of a second.
	ChangesListen bool `envconfig:"CHANGES_LISTEN" default:"true"`
	// AuthTokens are the bearer tokens the API's routes accept: AUTH_TOKENS
	// split at commas, or the lines of the file AUTH_TOKENS_FILE names. Load
	// reads and checks them (see readTokens). Empty: the API needs no token.
	AuthTokens Tokens `envconfig:"AUTH_TOKENS" ignored:"true"`
	// AuthTokensFile is the file AuthTokens were read from, if any.
	AuthTokensFile string `envconfig:"AUTH_TOKENS_FILE" ignored:"true"`
}

// Load reads the configuration from the process environment and validates
// it. Returns an error that names the variable when a value is malformed.
func Load() (Config, error) {
	var c Config
	if err := envconfig.Process("", &c); err != nil {
		var perr *envconfig.ParseError
		if errors.As(err, &perr) {
			return Config{}, fmt.Errorf("%s: invalid value %q for type %s", perr.KeyName, perr.Value, perr.TypeName)
		}
		return Config{}, err
	}
	c.LogFormat = strings.ToLower(c.LogFormat)
	var tokensErr error
	c.AuthTokens, c.AuthTokensFile, tokensErr = readTokens(os.LookupEnv)
	if err := errors.Join(c.validate(), tokensErr); err != nil {
		return Config{}, err
	}
	return c, nil
}

// errBadDatabaseURL and errBadDatabaseReadURL are the errors for a
// DatabaseURL or a DatabaseReadURL that does not parse: pgx's own can echo
// the password, so they name the variable only.
var (
	errBadDatabaseURL     = errors.New("DATABASE_URL: not a valid PostgreSQL connection string")
	errBadDatabaseReadURL = errors.New("DATABASE_READ_URL: not a valid PostgreSQL connection string")
)

func (c Config) validate() error {
	var errs []error
	for _, u := range []struct {
		url string
		bad error
	}{{c.DatabaseURL, errBadDatabaseURL}, {c.DatabaseReadURL, errBadDatabaseReadURL}} {
		if u.url == "" {
			continue
		}
		if _, err := pgxpool.ParseConfig(u.url); err != nil {
			errs = append(errs, u.bad)
		}
	}
	if c.HTTPAddr == "" {
		errs = append(errs, errors.New("HTTP_ADDR: must not be empty"))
	}
	switch c.LogFormat {
	case "json", "text":
	default:
		errs = append(errs, fmt.Errorf("LOG_FORMAT: %q is not json or text", c.LogFormat))
	}
	if c.DBMaxConns < 0 {
		errs = append(errs, fmt.Errorf("DB_MAX_CONNS: %d is negative", c.DBMaxConns))
	}
	if c.DBConnectTimeout <= 0 {
		errs = append(errs, fmt.Errorf("DB_CONNECT_TIMEOUT: %s is not positive", c.DBConnectTimeout))
	}
	if c.RequestTimeout <= 0 {
		errs = append(errs, fmt.Errorf("REQUEST_TIMEOUT: %s is not positive", c.RequestTimeout))
	}
	if c.BodyTimeout <= 0 {
		errs = append(errs, fmt.Errorf("BODY_TIMEOUT: %s is not positive", c.BodyTimeout))
	}
	if c.ShutdownTimeout <= 0 {
		errs = append(errs, fmt.Errorf("SHUTDOWN_TIMEOUT: %s is not positive", c.ShutdownTimeout))
	}
	if c.IdempotencyTTL <= 0 {
		errs = append(errs, fmt.Errorf("IDEMPOTENCY_TTL: %s is not positive", c.IdempotencyTTL))
	}
	if c.ChangesRetention <= 0 {
		errs = append(errs, fmt.Errorf("CHANGES_RETENTION: %s is not positive", c.ChangesRetention))
	}
	if c.ShutdownDelay < 0 || (c.ShutdownTimeout > 0 && c.ShutdownDelay >= c.ShutdownTimeout) {
		errs = append(errs, fmt.Errorf("SHUTDOWN_DELAY: %s must be at least 0 and less than SHUTDOWN_TIMEOUT (%s)", c.ShutdownDelay, c.ShutdownTimeout))
	}
	return errors.Join(errs...)
}

// RequireDatabase returns an error naming DATABASE_URL when it is unset.
func (c Config) RequireDatabase() error {
	if c.DatabaseURL == "" {
		return errors.New("DATABASE_URL: required (a PostgreSQL URL, e.g. postgres://user:pass@host:5432/db)")
	}
	return nil
}

// PoolConfig returns the settings of every database connection that the
// service and its commands open, from DatabaseURL: each attempt to connect
// ends after the URL's connect_timeout (or PGCONNECT_TIMEOUT's, as in
// libpq), else after DBConnectTimeout, so that no command waits forever
// for a database that accepts connections and never answers; and sessions
// are named usersvc in pg_stat_activity unless the URL names them. Returns
// an error that names the variable, and not its value, when DatabaseURL
// does not parse.
func (c Config) PoolConfig() (*pgxpool.Config, error) {
	return c.poolConfig(c.DatabaseURL, errBadDatabaseURL, "usersvc")
}

// ReadPoolConfig is PoolConfig for DatabaseReadURL, whose sessions are
// named usersvc-read unless the URL names them.
func (c Config) ReadPoolConfig() (*pgxpool.Config, error) {
	return c.poolConfig(c.DatabaseReadURL, errBadDatabaseReadURL, "usersvc-read")
}

// poolConfig returns the settings of the connections to url, named appName;
// bad when url does not parse.
func (c Config) poolConfig(url string, bad error, appName string) (*pgxpool.Config, error) {
	pc, err := pgxpool.ParseConfig(url)
	if err != nil {
		return nil, bad
	}
	// pgx sets ConnectTimeout from connect_timeout and leaves it 0, no
	// limit, without one. connect_timeout=0, libpq's "wait forever", is 0
	// too: it gets the bound as well.
	if pc.ConnConfig.ConnectTimeout <= 0 {
		pc.ConnConfig.ConnectTimeout = c.DBConnectTimeout
	}
	if pc.ConnConfig.RuntimeParams["application_name"] == "" {
		pc.ConnConfig.RuntimeParams["application_name"] = appName
	}
	return pc, nil
}

// DatabaseHost returns host:port/dbname of DatabaseURL for logs, without
// the user or password.
func (c Config) DatabaseHost() string {
	pc, err := pgxpool.ParseConfig(c.DatabaseURL)
	if err != nil {
		return ""
	}
	return fmt.Sprintf("%s:%d/%s", pc.ConnConfig.Host, pc.ConnConfig.Port, pc.ConnConfig.Database)
}

// Variables returns the names of every environment variable Config reads,
// in the order of its fields.
func Variables() []string {
	t := reflect.TypeFor[Config]()
	names := make([]string, 0, t.NumField())
	for f := range t.Fields() {
		names = append(names, f.Tag.Get("envconfig"))
	}
	return names
}
