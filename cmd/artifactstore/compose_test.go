package main

import (
	"context"
	"fmt"
	"maps"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime/debug"
	"slices"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/stretchr/testify/require"
	"go.yaml.in/yaml/v3"

	"github.com/artifactstore/artifactstore/internal/testenv"
	"github.com/artifactstore/artifactstore/store/postgres"
)

// The compose file cannot run here (no container engine); these tests keep
// it valid and in step with the binary's real flags and the NATS config.

const composeFile = "../../docker-compose.yml"

// composeService is the part of a compose service the tests check.
type composeService struct {
	Image       string            `yaml:"image"`
	Build       *composeBuild     `yaml:"build"`
	Command     []string          `yaml:"command"`
	Environment map[string]string `yaml:"environment"`
	DependsOn   map[string]struct {
		Condition string `yaml:"condition"`
	} `yaml:"depends_on"`
	Ports    []string `yaml:"ports"`
	Volumes  []string `yaml:"volumes"`
	Profiles []string `yaml:"profiles"`
	Restart  string   `yaml:"restart"`
}

type composeBuild struct {
	Context    string `yaml:"context"`
	Dockerfile string `yaml:"dockerfile"`
}

type composeProject struct {
	Services map[string]composeService `yaml:"services"`
	Volumes  map[string]any            `yaml:"volumes"`
}

func loadCompose(t *testing.T) composeProject {
	t.Helper()
	b, err := os.ReadFile(composeFile)
	require.NoError(t, err)
	var p composeProject
	require.NoError(t, yaml.Unmarshal(b, &p), "docker-compose.yml must parse (anchors and merge keys included)")
	require.NotEmpty(t, p.Services)
	return p
}

// appServices returns the services that run the artifactstore image, by name.
func (p composeProject) appServices() map[string]composeService {
	out := map[string]composeService{}
	for name, s := range p.Services {
		if s.Image == "artifactstore:latest" {
			out[name] = s
		}
	}
	return out
}

// byCommand groups the artifactstore services started by `up` (no profile)
// by their subcommand.
func (p composeProject) byCommand() map[string][]string {
	out := map[string][]string{}
	for name, s := range p.appServices() {
		if len(s.Profiles) > 0 {
			continue
		}
		cmd := strings.Join(s.Command, " ")
		out[cmd] = append(out[cmd], name)
	}
	for _, names := range out {
		sort.Strings(names)
	}
	return out
}

var helpEnvRe = regexp.MustCompile(`\(\$(ARTIFACTSTORE_[A-Z0-9_]+)\)`)

// subcommand returns the command words of args (up to the first flag).
func subcommand(args []string) []string {
	for i, a := range args {
		if strings.HasPrefix(a, "-") {
			return args[:i]
		}
	}
	return args
}

// runBinary runs the built binary with exactly env (no inherited
// ARTIFACTSTORE_* variables), bounded by timeout.
func runBinary(t *testing.T, timeout time.Duration, env []string, args ...string) result {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, binary, args...)
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "ARTIFACTSTORE_") {
			cmd.Env = append(cmd.Env, kv)
		}
	}
	cmd.Env = append(cmd.Env, env...)
	var stdout, stderr strings.Builder
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	if ctx.Err() != nil {
		t.Fatalf("%v did not finish within %s; stderr:\n%s", args, timeout, stderr.String())
	}
	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatalf("running %v: %v", args, err)
	}
	return result{stdout.String(), stderr.String(), code}
}

func envList(m map[string]string) []string {
	var out []string
	for k, v := range m {
		out = append(out, k+"="+v)
	}
	sort.Strings(out)
	return out
}

// TestComposeServicesMatchBinaryFlags runs the real binary with every
// artifactstore service's command and environment: --help must accept the
// command and list every ARTIFACTSTORE_* variable the service sets, and a
// run against an unreachable database must get past flag parsing (so every
// value decodes: durations, numbers, enums) and fail only on the database.
func TestComposeServicesMatchBinaryFlags(t *testing.T) {
	t.Parallel()
	p := loadCompose(t)
	apps := p.appServices()
	require.NotEmpty(t, apps)
	deadDB := fmt.Sprintf("postgres://nobody@127.0.0.1:%d/none?sslmode=disable&connect_timeout=5", testenv.FreePort())
	for name, s := range apps {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			require.NotEmpty(t, s.Command, "every artifactstore service names its subcommand")
			for k := range s.Environment {
				require.True(t, strings.HasPrefix(k, "ARTIFACTSTORE_"), "%s: %s: configure the binary only through ARTIFACTSTORE_* variables", name, k)
			}
			env := envList(s.Environment)

			help := runBinary(t, 30*time.Second, env, append(slices.Clone(s.Command), "--help")...)
			require.Equal(t, 0, help.code, "%s: %v --help fails: %s", name, s.Command, help.stderr)
			words := subcommand(s.Command)
			require.Contains(t, help.stdout, "Usage: artifactstore "+strings.Join(words, " "),
				"%s: %v is not a subcommand of the binary:\n%s", name, s.Command, help.stdout)
			known := map[string]bool{}
			for _, m := range helpEnvRe.FindAllStringSubmatch(help.stdout, -1) {
				known[m[1]] = true
			}
			require.True(t, known["ARTIFACTSTORE_DATABASE_URL"], "the --help output lists env vars as ($ARTIFACTSTORE_X):\n%s", help.stdout)
			for k := range s.Environment {
				require.True(t, known[k], "%s: %s is not a flag of `artifactstore %s` (renamed or removed?); it has: %v",
					name, k, strings.Join(words, " "), slices.Sorted(maps.Keys(known)))
			}

			// Long-running services and migrate open the database first:
			// with it unreachable they stop right after parsing the flags.
			if !slices.Contains([]string{"ingest", "relay", "projector", "migrate"}, words[0]) {
				return
			}
			runEnv := append(env, "ARTIFACTSTORE_DATABASE_URL="+deadDB, "ARTIFACTSTORE_HTTP_LISTEN=")
			r := runBinary(t, 30*time.Second, runEnv, s.Command...)
			require.Equal(t, 1, r.code, "%s: expected a database error after the flags parsed; stderr:\n%s", name, r.stderr)
			require.NotContains(t, r.stderr, "artifactstore: error:", "%s: flag parsing failed: %s", name, r.stderr)
			require.Contains(t, r.stderr, "127.0.0.1", "%s: it failed on the database: %s", name, r.stderr)
		})
	}
}

// TestComposeStructure checks the deployment's shape: the NATS cluster,
// the replica counts, the one-shot migration and what is exposed.
func TestComposeStructure(t *testing.T) {
	t.Parallel()
	p := loadCompose(t)

	names := slices.Sorted(maps.Keys(p.Services))
	require.Equal(t, []string{"cli", "cli-reader", "ingest-1", "ingest-2", "migrate", "migrate-roles", "nats-1", "nats-2", "nats-3",
		"postgres", "projector-1", "projector-2", "projector-3", "relay-1", "relay-2"}, names)

	groups := p.byCommand()
	require.Equal(t, map[string][]string{
		"migrate up":    {"migrate"},
		"migrate roles": {"migrate-roles"},
		"ingest":        {"ingest-1", "ingest-2"},
		"relay":         {"relay-1", "relay-2"},
		"projector":     {"projector-1", "projector-2", "projector-3"},
	}, groups)

	// Images: the artifactstore image built from deploy/Dockerfile,
	// PostgreSQL 15, and the NATS release this module is tested against.
	natsVersion := moduleVersion(t, "github.com/nats-io/nats-server/v2")
	for name, s := range p.Services {
		switch {
		case name == "postgres":
			require.Equal(t, "postgres:15-alpine", s.Image)
		case strings.HasPrefix(name, "nats-"):
			require.Equal(t, "nats:"+strings.TrimPrefix(natsVersion, "v")+"-alpine", s.Image,
				"the NATS image runs the nats-server version go.mod tests against")
		default:
			require.Equal(t, "artifactstore:latest", s.Image, name)
			require.NotNil(t, s.Build, name)
			require.Equal(t, ".", s.Build.Context, name)
			require.Equal(t, "deploy/Dockerfile", s.Build.Dockerfile, name)
		}
	}
	// The image builds this binary with the Go release go.mod asks for.
	dockerfile, err := os.ReadFile("../../deploy/Dockerfile")
	require.NoError(t, err)
	gomod, err := os.ReadFile("../../go.mod")
	require.NoError(t, err)
	goVersion := regexp.MustCompile(`(?m)^go (\d+\.\d+)`).FindSubmatch(gomod)
	require.NotNil(t, goVersion)
	require.Contains(t, string(dockerfile), "FROM golang:"+string(goVersion[1])+" AS build")
	require.Contains(t, string(dockerfile), "go build -trimpath")
	require.Contains(t, string(dockerfile), "./cmd/artifactstore")
	require.Contains(t, string(dockerfile), `ENTRYPOINT ["/usr/local/bin/artifactstore"]`)

	// Only the NATS client port of one node is published, on loopback.
	for name, s := range p.Services {
		if name == "nats-1" {
			require.Equal(t, []string{"127.0.0.1:4222:4222"}, s.Ports)
			continue
		}
		require.Empty(t, s.Ports, "%s publishes no ports", name)
	}

	// migrate runs once, after PostgreSQL is healthy; every other
	// artifactstore service waits for it to succeed and for the NATS nodes.
	mig := p.Services["migrate"]
	require.Equal(t, "no", mig.Restart)
	require.Equal(t, "service_healthy", mig.DependsOn["postgres"].Condition)
	roles := p.Services["migrate-roles"]
	require.Equal(t, "no", roles.Restart)
	require.Equal(t, "service_completed_successfully", roles.DependsOn["migrate"].Condition, "migrate-roles runs after migrate")
	for name, s := range p.appServices() {
		if name == "migrate" || name == "migrate-roles" {
			continue
		}
		require.Equal(t, "service_completed_successfully", s.DependsOn["migrate-roles"].Condition, "%s waits for migrate-roles", name)
		for _, n := range []string{"nats-1", "nats-2", "nats-3"} {
			require.Equal(t, "service_healthy", s.DependsOn[n].Condition, "%s waits for %s", name, n)
		}
	}

	// Every service has its own NATS user; the relay creates an R3 stream;
	// projectors have distinct worker ids and one partition count.
	users := map[string]string{"ingest": "ingest", "relay": "relay", "projector": "projector"}
	workerIDs := map[string]bool{}
	for cmd, svcNames := range groups {
		for _, n := range svcNames {
			env := p.Services[n].Environment
			require.NotEmpty(t, env["ARTIFACTSTORE_DATABASE_URL"], n)
			require.True(t, strings.HasPrefix(env["ARTIFACTSTORE_DATABASE_URL"], "postgres://"), n)
			if strings.HasPrefix(cmd, "migrate ") {
				require.Empty(t, env["ARTIFACTSTORE_NATS_USER"], "migrate needs no NATS")
				continue
			}
			require.Equal(t, users[cmd], env["ARTIFACTSTORE_NATS_USER"], n)
			require.NotEmpty(t, env["ARTIFACTSTORE_NATS_PASSWORD"], n)
			urls := strings.Split(env["ARTIFACTSTORE_NATS_URL"], ",")
			require.ElementsMatch(t, []string{"nats://nats-1:4222", "nats://nats-2:4222", "nats://nats-3:4222"}, urls, n)
			switch cmd {
			case "relay":
				require.Equal(t, "3", env["ARTIFACTSTORE_STREAM_REPLICAS"], "%s: R3 stream", n)
			case "projector":
				require.False(t, workerIDs[env["ARTIFACTSTORE_WORKER_ID"]], "%s: distinct worker ids", n)
				workerIDs[env["ARTIFACTSTORE_WORKER_ID"]] = true
			}
		}
	}
	// Every database URL reaches the compose database; only the migration
	// services log in as its owner (the superuser), see
	// TestComposeLeastPrivilegeDatabaseRoles.
	pg := p.Services["postgres"].Environment
	for name, s := range p.appServices() {
		raw := s.Environment["ARTIFACTSTORE_DATABASE_URL"]
		if raw == "" {
			continue
		}
		u, err := url.Parse(raw)
		require.NoError(t, err, name)
		require.Equal(t, "postgres:5432", u.Host, name)
		require.Equal(t, "/"+pg["POSTGRES_DB"], u.Path, name)
	}
	require.Equal(t, "client", p.Services["cli"].Environment["ARTIFACTSTORE_NATS_USER"])
	require.Equal(t, "reader", p.Services["cli-reader"].Environment["ARTIFACTSTORE_NATS_USER"])

	// Each NATS node runs its own config file, which the real parser accepts.
	for i := 1; i <= 3; i++ {
		n := fmt.Sprintf("nats-%d", i)
		s := p.Services[n]
		require.Equal(t, []string{"--config", fmt.Sprintf("/etc/nats/%s.conf", n)}, s.Command, n)
		require.Contains(t, s.Volumes, "./deploy/nats:/etc/nats:ro", n)
		require.Contains(t, s.Volumes, n+"-data:/data/jetstream", n)
		require.Contains(t, p.Volumes, n+"-data")
	}
}

// TestComposeNATSConfig parses every node's configuration with
// nats-server's own parser and checks the cluster, JetStream durability
// and the users the services log in as.
func TestComposeNATSConfig(t *testing.T) {
	t.Parallel()
	p := loadCompose(t)
	var routes []string
	for i := 1; i <= 3; i++ {
		name := fmt.Sprintf("nats-%d", i)
		opts, err := server.ProcessConfigFile(filepath.Join("../../deploy/nats", name+".conf"))
		require.NoError(t, err, name)
		require.Equal(t, name, opts.ServerName)
		require.True(t, opts.JetStream, "%s: JetStream enabled", name)
		require.True(t, opts.SyncAlways, "%s: sync_interval: always (fsync before every ack)", name)
		require.Equal(t, "/data/jetstream", opts.StoreDir, name)
		require.Equal(t, 4222, opts.Port, "%s: the port the services' URLs use", name)
		require.Equal(t, 8222, opts.HTTPPort, "%s: the port the health check uses", name)
		require.Equal(t, "artifactstore", opts.Cluster.Name, name)
		require.Equal(t, 6222, opts.Cluster.Port, name)
		require.NotEmpty(t, opts.Cluster.Username, "%s: routes authenticate", name)
		var got []string
		for _, u := range opts.Routes {
			got = append(got, u.Host)
		}
		require.ElementsMatch(t, []string{"nats-1:6222", "nats-2:6222", "nats-3:6222"}, got, name)
		routes = append(routes, got...)

		// Every service's NATS user exists, in the one JetStream account.
		users := map[string]*server.User{}
		for _, u := range opts.Users {
			users[u.Username] = u
			require.Equal(t, "ARTIFACTSTORE", u.Account.Name, "%s: user %s", name, u.Username)
			require.True(t, strings.HasPrefix(u.Password, "$2a$"), "%s: user %s: the config holds bcrypt hashes only", name, u.Username)
			require.NotNil(t, u.Permissions, "%s: user %s has explicit permissions", name, u.Username)
		}
		for sname, s := range p.Services {
			if u := s.Environment["ARTIFACTSTORE_NATS_USER"]; u != "" {
				require.Contains(t, users, u, "%s: %s logs in as %s", name, sname, u)
			}
		}
		// Who may publish and subscribe where, evaluated as the server
		// does (deny wins; an empty allow list allows everything).
		for uname, u := range users {
			pub, sub := u.Permissions.Publish, u.Permissions.Subscribe
			require.Equal(t, uname == "relay", permits(pub, "artifactstore.events.v1.package.created.x"),
				"%s: only the relay may publish artifactstore.events.>", uname)
			for _, api := range []string{"STREAM.DELETE", "STREAM.PURGE", "STREAM.MSG.DELETE", "STREAM.UPDATE"} {
				subj := "$JS.API." + api + ".ARTIFACTSTORE_EVENTS"
				require.False(t, permits(pub, subj), "%s: nobody may %s", uname, subj)
			}
			require.False(t, permits(pub, "$JS.API.STREAM.CREATE.ANY_STREAM"), "%s: no user creates arbitrary streams", uname)
			for _, subj := range []string{"artifactstore.cmd.package.create", "artifactstore.query.package.get"} {
				require.Equal(t, uname == "client", permits(pub, subj), "%s: only clients send %s", uname, subj)
				require.Equal(t, uname == "ingest", permits(sub, subj), "%s: only ingest receives %s (nobody else can answer as the service)", uname, subj)
			}
		}
	}
	require.Len(t, routes, 9)
}

// permits reports whether p lets subject through, as nats-server decides.
func permits(p *server.SubjectPermission, subject string) bool {
	if p == nil {
		return true
	}
	match := func(filters []string) bool {
		return slices.ContainsFunc(filters, func(f string) bool { return server.SubjectMatchesFilter(subject, f) })
	}
	return (len(p.Allow) == 0 || match(p.Allow)) && !match(p.Deny)
}

// moduleVersion returns the version of a module the test binary was built
// with.
func moduleVersion(t *testing.T, path string) string {
	t.Helper()
	bi, ok := debug.ReadBuildInfo()
	require.True(t, ok)
	for _, d := range bi.Deps {
		if d.Path == path {
			if d.Replace != nil {
				return d.Replace.Version
			}
			return d.Version
		}
	}
	t.Fatalf("module %s not in the build", path)
	return ""
}

// composeLoginRe matches a login role of the PostgreSQL init script: a
// member of one group role and nothing more.
var composeLoginRe = regexp.MustCompile(`^CREATE ROLE (\w+) LOGIN PASSWORD '([^']*)' IN ROLE (\w+);$`)

// composeGroupRe matches a group role of the init script.
var composeGroupRe = regexp.MustCompile(`^CREATE ROLE (\w+) NOLOGIN;$`)

// TestComposeLeastPrivilegeDatabaseRoles: only the migration services log
// in as the database's owner (the superuser POSTGRES_USER); ingest, relay,
// projectors and the read-only CLI log in as login roles the PostgreSQL
// init script creates, each a member of the group role `migrate roles`
// creates and grants for that service.
func TestComposeLeastPrivilegeDatabaseRoles(t *testing.T) {
	t.Parallel()
	p := loadCompose(t)
	pgSvc := p.Services["postgres"]
	owner := pgSvc.Environment["POSTGRES_USER"]
	require.NotEmpty(t, owner)
	type dbLogin struct{ service, command, user, password string }
	var used []dbLogin
	for name, s := range p.appServices() {
		raw := s.Environment["ARTIFACTSTORE_DATABASE_URL"]
		if raw == "" {
			continue
		}
		u, err := url.Parse(raw)
		require.NoError(t, err, name)
		pw, _ := u.User.Password()
		if s.Command[0] == "migrate" {
			require.Equal(t, owner, u.User.Username(), "%s: the migrations run as the owner", name)
			require.Equal(t, pgSvc.Environment["POSTGRES_PASSWORD"], pw, name)
			continue
		}
		require.NotEqual(t, owner, u.User.Username(),
			"%s must not log in as the owner %s, a superuser, who can disable the append-only trigger", name, owner)
		used = append(used, dbLogin{name, s.Command[0], u.User.Username(), pw})
	}
	require.NotEmpty(t, used)

	require.Contains(t, pgSvc.Volumes, "./deploy/postgres:/docker-entrypoint-initdb.d:ro",
		"the postgres service creates the login roles on first start")
	script, err := os.ReadFile("../../deploy/postgres/10-artifactstore-roles.sql")
	require.NoError(t, err)
	// The script does nothing but create the groups of `migrate roles`
	// (NOLOGIN, as it would) and login roles that are members of one each.
	groups := postgres.RoleNames("")
	isGroup := map[string]bool{groups.Ingest: true, groups.Relay: true, groups.Projector: true, groups.Reader: true}
	type login struct{ password, group string }
	logins := map[string]login{}
	for _, line := range strings.Split(string(script), "\n") {
		if line == "" || strings.HasPrefix(line, "--") {
			continue
		}
		if m := composeGroupRe.FindStringSubmatch(line); m != nil {
			require.True(t, isGroup[m[1]], "the init script creates %s, which is not a role of migrate roles", m[1])
			continue
		}
		m := composeLoginRe.FindStringSubmatch(line)
		require.NotNil(t, m, "the init script only creates roles as CREATE ROLE x LOGIN PASSWORD '...' IN ROLE group; got %q", line)
		require.True(t, isGroup[m[3]], "login %s is a member of %s, which is not a role of migrate roles", m[1], m[3])
		logins[m[1]] = login{m[2], m[3]}
	}
	want := map[string]string{"ingest": groups.Ingest, "relay": groups.Relay, "projector": groups.Projector, "status": groups.Reader,
		"events": groups.Reader}
	for _, u := range used {
		l, ok := logins[u.user]
		require.True(t, ok, "%s logs in as %s, which the init script does not create", u.service, u.user)
		require.Equal(t, l.password, u.password, "%s: the password of %s", u.service, u.user)
		require.Equal(t, want[u.command], l.group, "%s (%s) logs in as %s, a member of %s", u.service, u.command, u.user, l.group)
	}
}

// composeHealth is a service's healthcheck.
type composeHealth struct {
	Health *struct {
		Test        []string `yaml:"test"`
		Interval    string   `yaml:"interval"`
		Timeout     string   `yaml:"timeout"`
		Retries     int      `yaml:"retries"`
		StartPeriod string   `yaml:"start_period"`
	} `yaml:"healthcheck"`
}

// TestComposeHealthchecks: every long-running artifactstore service has a
// healthcheck on its own /readyz, run by the binary itself (the image is
// distroless: no shell, no wget), and that command works: exit 0 on a
// ready answer, 1 on 503 or no answer.
func TestComposeHealthchecks(t *testing.T) {
	t.Parallel()
	b, err := os.ReadFile(composeFile)
	require.NoError(t, err)
	var p struct {
		Services map[string]composeHealth `yaml:"services"`
	}
	require.NoError(t, yaml.Unmarshal(b, &p))
	project := loadCompose(t)
	var checked []string
	for cmd, names := range project.byCommand() {
		if strings.HasPrefix(cmd, "migrate") {
			continue
		}
		for _, name := range names {
			h := p.Services[name].Health
			require.NotNil(t, h, "%s has no healthcheck", name)
			_, port, err := net.SplitHostPort(project.Services[name].Environment["ARTIFACTSTORE_HTTP_LISTEN"])
			require.NoError(t, err, name)
			require.Equal(t, []string{"CMD", "/usr/local/bin/artifactstore", "healthcheck", "--url", "http://127.0.0.1:" + port + "/readyz"}, h.Test, name)
			for _, d := range []string{h.Interval, h.Timeout, h.StartPeriod} {
				_, err := time.ParseDuration(d)
				require.NoError(t, err, "%s: healthcheck durations", name)
			}
			require.Positive(t, h.Retries, name)
			checked = append(checked, name)
		}
	}
	require.Len(t, checked, 7)

	// The command the healthcheck runs, against answers of each kind.
	code := http.StatusOK
	var mu sync.Mutex
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		defer mu.Unlock()
		if r.URL.Path != "/readyz" {
			http.NotFound(w, r)
			return
		}
		w.WriteHeader(code)
		_, _ = w.Write([]byte(`{"ready":false,"checks":[{"name":"relay","ok":false,"error":"not running"}]}`))
	}))
	t.Cleanup(srv.Close)
	r := runBinary(t, 30*time.Second, nil, "healthcheck", "--url", srv.URL+"/readyz")
	require.Equal(t, 0, r.code, r.stderr)
	mu.Lock()
	code = http.StatusServiceUnavailable
	mu.Unlock()
	r = runBinary(t, 30*time.Second, nil, "healthcheck", "--url", srv.URL+"/readyz")
	require.Equal(t, 1, r.code, r.stderr)
	require.Contains(t, r.stderr, "503")
	require.Contains(t, r.stderr, "not running")
	r = runBinary(t, 30*time.Second, nil, "healthcheck", "--url", fmt.Sprintf("http://127.0.0.1:%d/readyz", testenv.FreePort()))
	require.Equal(t, 1, r.code, r.stderr)
	// Hidden: not a command operators type.
	help := runBinary(t, 30*time.Second, nil, "--help")
	require.NotContains(t, help.stdout, "healthcheck")
}
