package main

import (
	"bufio"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/artifactstore/artifactstore/internal/testenv"
	"github.com/artifactstore/artifactstore/projector"
)

// chromiumPath finds Debian's chromium, which renders the status page in the
// browser test. Tests never skip: without it the test fails and says how to
// install it (`make test` and .ci/run install it when they can).
func chromiumPath(t *testing.T) string {
	t.Helper()
	for _, p := range []string{"chromium", "chromium-browser", "google-chrome"} {
		if path, err := exec.LookPath(p); err == nil {
			return path
		}
	}
	t.Fatal("chromium is not installed; the status page test renders the page in it. " +
		"Install it with `apt-get update && apt-get install -y chromium` (`make test` does so when run as root)")
	return ""
}

// renderPage loads url in headless Chromium, lets its scripts run (fetch
// status.json, draw the charts) and returns the DOM.
func renderPage(t *testing.T, chromium, url string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
		"--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync",
		"--user-data-dir="+filepath.Join(t.TempDir(), "profile"), "--window-size=1100,900",
		"--virtual-time-budget=3000", "--dump-dom", url).Output()
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

// chartState is what the page records on a chart's element from its uPlot
// instance (statuspage.js, describe).
type chartState struct {
	series []string
	points int
	values []int
	max    []string
}

func readChart(t *testing.T, dom, id string) chartState {
	t.Helper()
	m := regexp.MustCompile(`<div id="` + id + `" class="plot"([^>]*)>`).FindStringSubmatch(dom)
	require.NotNil(t, m, "no chart %s in the page:\n%s", id, dom)
	attr := func(name string) string {
		a := regexp.MustCompile(`data-` + name + `="([^"]*)"`).FindStringSubmatch(m[1])
		require.NotNil(t, a, "chart %s has no data-%s: %s", id, name, m[1])
		return a[1]
	}
	var st chartState
	st.series = strings.Split(attr("series"), "|")
	var err error
	st.points, err = strconv.Atoi(attr("points"))
	require.NoError(t, err)
	for _, v := range strings.Split(attr("values"), "|") {
		n, err := strconv.Atoi(v)
		require.NoError(t, err)
		st.values = append(st.values, n)
	}
	st.max = strings.Split(attr("max"), "|")
	return st
}

// historyHas reports whether dev's status.json has a sample for which ok
// holds.
func historyHas(t *testing.T, addr string, ok func(lagSample) bool) bool {
	t.Helper()
	resp, err := http.Get("http://" + addr + "/status.json")
	if err != nil {
		return false
	}
	defer resp.Body.Close()
	var body struct{ History []lagSample }
	if json.NewDecoder(resp.Body).Decode(&body) != nil {
		return false
	}
	for _, s := range body.History {
		if ok(s) {
			return true
		}
	}
	return false
}

func TestStatusPageInBrowserChartsTheHistory(t *testing.T) {
	t.Parallel()
	chromium := chromiumPath(t)
	dataDir := t.TempDir()
	dev := startDev(t, dataDir, testenv.FreePort(), testenv.FreePort())
	env := []string{"ARTIFACTSTORE_NATS_URL=" + dev.natsURL, "ARTIFACTSTORE_DATABASE_URL=" + filepath.Join(dataDir, "artifactstore.db")}
	create := func(v string) {
		r := runCLI(t, env, "package", "create", "--actor", "alice", "--name", "web", "--version", v)
		require.Equal(t, 0, r.code, r.stderr)
	}
	// A sample between the first command and the others guarantees a
	// positive commands/s in the history.
	create("1.0.0")
	testenv.Eventually(t, 30*time.Second, func() bool {
		return historyHas(t, dev.httpAddr, func(s lagSample) bool { return s.Head == 1 })
	}, "a sample of the first command")
	create("1.0.1")
	create("1.0.2")
	var st statusReport
	testenv.Eventually(t, 30*time.Second, func() bool {
		r := runCLI(t, env, "status", "--json")
		return r.code == 0 && json.Unmarshal([]byte(r.stdout), &st) == nil && st.Head == 3 &&
			st.Relay != nil && st.Relay.Lag == 0 && len(st.Projections) == 1 && st.Projections[0].Lag == 0
	}, "the pipeline to settle")
	// The sampler runs every second: await the samples that saw the
	// commands arrive and one taken after the views caught up.
	testenv.Eventually(t, 30*time.Second, func() bool {
		return historyHas(t, dev.httpAddr, func(s lagSample) bool { return s.CommandsPerSec != nil && *s.CommandsPerSec > 0 }) &&
			historyHas(t, dev.httpAddr, func(s lagSample) bool { return s.Head == 3 && s.ProjectionLag == 0 && s.RelayLag == 0 })
	}, "the status page's history to hold the commands")

	var dom string
	testenv.Eventually(t, 30*time.Second, func() bool {
		dom = renderPage(t, chromium, "http://"+dev.httpAddr+"/")
		return strings.Contains(dom, `data-loaded="true"`) && strings.Contains(dom, `id="head">3<`)
	}, "the page to render the settled status")
	require.Contains(t, dom, `<div id="error"></div>`, "the page shows no error")
	require.Equal(t, st.Head, cellValue(t, dom, `id="head">(\d+)<`))
	require.Equal(t, st.Relay.Position, cellValue(t, dom, `id="relay-position">(\d+)<`))
	require.Equal(t, st.Relay.Lag, cellValue(t, dom, `id="relay-lag">(\d+)<`))
	require.Equal(t, st.Projections[0].Lag, cellValue(t, dom, `data-projection="registry">(\d+)<`))

	// uPlot built both charts: a canvas each and a legend naming every series.
	require.Len(t, regexp.MustCompile(`<canvas width="[1-9]\d*" height="[1-9]\d*"`).FindAllString(dom, -1), 2, "two drawn uPlot canvases")
	for _, label := range []string{"relay lag", "registry lag", "commands/s", "published/s", "registry applied/s"} {
		require.Regexp(t, `class="u-label">`+regexp.QuoteMeta(label)+`<`, dom, "legend entry %q", label)
	}
	lag := readChart(t, dom, "lag-chart")
	require.Equal(t, []string{"relay lag", "registry lag"}, lag.series)
	rate := readChart(t, dom, "rate-chart")
	require.Equal(t, []string{"commands/s", "published/s", "registry applied/s"}, rate.series)
	for _, c := range []chartState{lag, rate} {
		require.GreaterOrEqual(t, c.points, 2, "samples charted")
		for i, n := range c.values {
			require.Positive(t, n, "series %s has values", c.series[i])
		}
	}
	for i, m := range rate.max {
		v, err := strconv.ParseFloat(m, 64)
		require.NoError(t, err, "series %s", rate.series[i])
		require.Positive(t, v, "series %s charts the commands", rate.series[i])
	}
	// The partitions' lags at the latest sample (or the one under the cursor).
	require.Len(t, regexp.MustCompile(`<span class="cell" title="partition \d+: 0 events behind"`).FindAllString(dom, -1), st.Partitions)
	require.Equal(t, 0, dev.stop(t))
}

// statusOf is a projection's status with one checkpoint per partition.
func statusOf(name string, head int64, checkpoints ...int64) projector.Status {
	ps := projector.Status{Projection: name, Head: head, Applied: checkpoints[0]}
	for i, c := range checkpoints {
		ps.Partitions = append(ps.Partitions, projector.PartitionStatus{Partition: i, Checkpoint: c})
		ps.Applied = min(ps.Applied, c)
	}
	ps.Lag = head - ps.Applied
	return ps
}

func TestStatusPageSampleRates(t *testing.T) {
	t.Parallel()
	t0 := time.Date(2026, 11, 27, 12, 0, 0, 0, time.UTC)
	f := func(v float64) *float64 { return &v }

	first := nextSample(nil, statusReport{Head: 10, Projections: []projector.Status{statusOf("registry", 10, 4, 10, 7)}}, t0)
	require.Equal(t, lagSample{At: t0, T: t0.UnixMilli(), Head: 10, RelayLag: -1, Published: -1, ProjectionLag: 6,
		Projections: []projectionSample{{Projection: "registry", Applied: 4, Lag: 6, PartitionLag: []int64{6, 0, 3}}}}, first,
		"the first sample has no rates; an unknown relay is -1")

	prev := nextSample(nil, statusReport{Head: 10, Relay: &relayStatus{StreamSequence: 8, Lag: 2},
		Projections: []projector.Status{statusOf("registry", 10, 4, 10, 7)}}, t0)
	tests := []struct {
		name               string
		prev               lagSample
		rep                statusReport
		dt                 time.Duration
		commands, publishd *float64
		applied            []*float64
	}{
		{"per second of the real interval", prev, statusReport{Head: 30, Relay: &relayStatus{StreamSequence: 28, Lag: 2},
			Projections: []projector.Status{statusOf("registry", 30, 14, 30, 20)}}, 1500 * time.Millisecond,
			f(13.33), f(13.33), []*float64{f(6.67)}},
		{"nothing moved", prev, statusReport{Head: 10, Relay: &relayStatus{StreamSequence: 8, Lag: 2},
			Projections: []projector.Status{statusOf("registry", 10, 4, 10, 7)}}, time.Second,
			f(0), f(0), []*float64{f(0)}},
		{"relay unknown before", first, statusReport{Head: 12, Relay: &relayStatus{StreamSequence: 12},
			Projections: []projector.Status{statusOf("registry", 12, 4, 12, 7)}}, time.Second,
			f(2), nil, []*float64{f(0)}},
		{"relay unknown now", prev, statusReport{Head: 12,
			Projections: []projector.Status{statusOf("registry", 12, 4, 12, 7)}}, time.Second,
			f(2), nil, []*float64{f(0)}},
		{"log migrated fresh, stream rebuilt", prev, statusReport{Head: 3, Relay: &relayStatus{StreamSequence: 3},
			Projections: []projector.Status{statusOf("registry", 3, 3, 3, 3)}}, time.Second,
			nil, nil, []*float64{nil}},
		{"a new projection has no rate yet", prev, statusReport{Head: 11, Relay: &relayStatus{StreamSequence: 9, Lag: 2},
			Projections: []projector.Status{statusOf("registry", 11, 5, 11, 7), statusOf("registry_v2", 11, 1, 1, 1)}}, time.Second,
			f(1), f(1), []*float64{f(1), nil}},
		{"the clock did not advance", prev, statusReport{Head: 11, Relay: &relayStatus{StreamSequence: 9, Lag: 2},
			Projections: []projector.Status{statusOf("registry", 11, 5, 11, 7)}}, 0,
			nil, nil, []*float64{nil}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			at := tt.prev.At.Add(tt.dt)
			s := nextSample(&tt.prev, tt.rep, at)
			require.Equal(t, at.UnixMilli(), s.T)
			require.Equal(t, tt.commands, s.CommandsPerSec, "commands/s")
			require.Equal(t, tt.publishd, s.PublishedPerSec, "published/s")
			require.Len(t, s.Projections, len(tt.applied))
			for i, want := range tt.applied {
				require.Equal(t, want, s.Projections[i].AppliedPerSec, "applied/s of %s", s.Projections[i].Projection)
			}
		})
	}
}

func TestStatusPageJSONSince(t *testing.T) {
	t.Parallel()
	p := &statusPage{}
	t0 := time.Date(2026, 11, 27, 12, 0, 0, 0, time.UTC)
	for i := range 5 {
		p.history = append(p.history, nextSample(nil, statusReport{Head: int64(i)}, t0.Add(time.Duration(i)*time.Second)))
	}
	get := func(query string) (int, []int64) {
		rec := httptest.NewRecorder()
		p.serveJSON(rec, httptest.NewRequest(http.MethodGet, "/status.json"+query, nil))
		var body struct{ History []lagSample }
		if rec.Code == http.StatusOK {
			require.NoError(t, json.Unmarshal(rec.Body.Bytes(), &body))
		}
		var heads []int64
		for _, s := range body.History {
			heads = append(heads, s.Head)
		}
		return rec.Code, heads
	}
	code, heads := get("")
	require.Equal(t, http.StatusOK, code)
	require.Equal(t, []int64{0, 1, 2, 3, 4}, heads, "every sample without since")
	_, heads = get("?since=" + strconv.FormatInt(t0.Add(2*time.Second).UnixMilli(), 10))
	require.Equal(t, []int64{3, 4}, heads, "only the samples after since")
	_, heads = get("?since=" + strconv.FormatInt(t0.Add(time.Hour).UnixMilli(), 10))
	require.Empty(t, heads)
	code, _ = get("?since=yesterday")
	require.Equal(t, http.StatusBadRequest, code)
}

// TestStatusPageLoadsNothingFromElsewhere: the page works offline, so it
// names no other host, and everything it loads is embedded.
func TestStatusPageLoadsNothingFromElsewhere(t *testing.T) {
	t.Parallel()
	html, err := web.ReadFile("web/statuspage.html")
	require.NoError(t, err)
	refs := regexp.MustCompile(`(?:src|href)="([^"]*)"`).FindAllStringSubmatch(string(html), -1)
	require.NotEmpty(t, refs)
	for _, ref := range refs {
		require.NotRegexp(t, `^(?:[a-z]+:)?//`, ref[1], "the page loads %s from another host", ref[1])
		if name, ok := strings.CutPrefix(ref[1], "static/"); ok {
			file, served := staticFiles[name]
			require.True(t, served, "%s is not served", ref[1])
			_, err := web.ReadFile(file)
			require.NoError(t, err, "%s is not embedded", file)
		}
	}
}

// TestStatusPageVendoredUPlot: the vendored files are the ones
// web/fetch-uplot.sh recorded (`make uplot` re-fetches them).
func TestStatusPageVendoredUPlot(t *testing.T) {
	t.Parallel()
	f, err := os.Open("web/uplot/VERSION")
	require.NoError(t, err)
	defer f.Close()
	var version string
	digests := 0
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		switch fields[0] {
		case "version":
			version = fields[1]
		case "sha256":
			b, err := os.ReadFile(filepath.Join("web/uplot", fields[2]))
			require.NoError(t, err)
			sum := sha256.Sum256(b)
			require.Equal(t, fields[1], hex.EncodeToString(sum[:]), "%s differs from the vendored release", fields[2])
			digests++
		}
	}
	require.NoError(t, sc.Err())
	require.Equal(t, 3, digests)
	js, err := web.ReadFile("web/uplot/uPlot.iife.min.js")
	require.NoError(t, err)
	require.True(t, strings.HasPrefix(string(js), "/*! https://github.com/leeoniya/uPlot (v"+version+") */"),
		"the embedded uPlot is version %s", version)
}
