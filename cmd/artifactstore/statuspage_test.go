package main

import (
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/artifactstore/artifactstore/internal/testenv"
)

// chromiumPath finds Debian's chromium. CI (.ci/run) installs it; on a
// machine without it the browser test says so and is skipped, except in CI
// where a missing browser is a failure.
func chromiumPath(t *testing.T) string {
	for _, p := range []string{"chromium", "chromium-browser", "google-chrome"} {
		if path, err := exec.LookPath(p); err == nil {
			return path
		}
	}
	if os.Getenv("CI") != "" {
		t.Fatal("chromium is not installed (apt-get install chromium); .ci/run installs it")
	}
	t.Skip("chromium is not installed: apt-get install chromium to run the status page browser test")
	return ""
}

// renderPage loads url in headless Chromium, lets its scripts run, and
// returns the DOM.
func renderPage(t *testing.T, chromium, url string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
		"--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync",
		"--user-data-dir="+filepath.Join(t.TempDir(), "profile"), "--virtual-time-budget=3000", "--dump-dom", url).Output()
	require.NoError(t, err)
	return string(out)
}

func cellValue(t *testing.T, dom, pattern string) int64 {
	t.Helper()
	m := regexp.MustCompile(pattern).FindStringSubmatch(dom)
	require.NotNil(t, m, "no match for %s in the page:\n%s", pattern, dom)
	v, err := strconv.ParseInt(m[1], 10, 64)
	require.NoError(t, err)
	return v
}

func TestStatusPageInBrowserMatchesStatusJSON(t *testing.T) {
	t.Parallel()
	chromium := chromiumPath(t)
	dataDir := t.TempDir()
	dev := startDev(t, dataDir, testenv.FreePort(), testenv.FreePort())
	env := []string{"ARTIFACTSTORE_NATS_URL=" + dev.natsURL, "ARTIFACTSTORE_DATABASE_URL=" + filepath.Join(dataDir, "artifactstore.db")}
	for _, v := range []string{"1.0.0", "1.0.1", "1.0.2"} {
		r := runCLI(t, env, "package", "create", "--actor", "alice", "--name", "web", "--version", v)
		require.Equal(t, 0, r.code, r.stderr)
	}
	var st statusReport
	testenv.Eventually(t, 30*time.Second, func() bool {
		r := runCLI(t, env, "status", "--json")
		return r.code == 0 && json.Unmarshal([]byte(r.stdout), &st) == nil && st.Head == 3 &&
			st.Relay != nil && st.Relay.Lag == 0 && len(st.Projections) == 1 && st.Projections[0].Lag == 0
	}, "the pipeline to settle")

	var dom string
	testenv.Eventually(t, 30*time.Second, func() bool {
		dom = renderPage(t, chromium, "http://"+dev.httpAddr+"/")
		return regexp.MustCompile(`data-loaded="true"`).MatchString(dom) &&
			regexp.MustCompile(`id="head">3<`).MatchString(dom)
	}, "the page to render the settled status")
	require.Equal(t, st.Head, cellValue(t, dom, `id="head">(\d+)<`))
	require.Equal(t, st.Relay.Position, cellValue(t, dom, `id="relay-position">(\d+)<`))
	require.Equal(t, st.Relay.Lag, cellValue(t, dom, `id="relay-lag">(\d+)<`))
	require.Equal(t, st.Projections[0].Lag, cellValue(t, dom, `data-projection="registry">(\d+)<`))
	require.Contains(t, dom, "<polyline", "the lag chart is drawn")
	require.Equal(t, 0, dev.stop(t))
}
