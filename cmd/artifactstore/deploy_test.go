package main

import (
	"encoding/json"
	"io"
	"log/slog"
	"os"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/common/model"
	"github.com/prometheus/prometheus/model/rulefmt"
	"github.com/prometheus/prometheus/promql/parser"
	"github.com/stretchr/testify/require"

	"github.com/artifactstore/artifactstore/ingest"
	"github.com/artifactstore/artifactstore/internal/ops"
	"github.com/artifactstore/artifactstore/internal/testenv"
	"github.com/artifactstore/artifactstore/projector"
	"github.com/artifactstore/artifactstore/relay"
)

// metricCatalog records every metric a component registers, with its
// labels, by describing each collector as it is registered (a vector
// without series yet is not gathered, but it is described).
type metricCatalog struct {
	prometheus.Registerer
	labels map[string][]string
}

var (
	descName   = regexp.MustCompile(`fqName: "([^"]+)"`)
	descConst  = regexp.MustCompile(`constLabels: \{([^}]*)\}`)
	descLabels = regexp.MustCompile(`variableLabels: \{([^}]*)\}`)
)

func (c *metricCatalog) Register(col prometheus.Collector) error {
	if err := c.Registerer.Register(col); err != nil {
		return err
	}
	ch := make(chan *prometheus.Desc)
	go func() { col.Describe(ch); close(ch) }()
	for d := range ch {
		s := d.String()
		m := descName.FindStringSubmatch(s)
		if m == nil {
			panic("cannot read the metric name from " + s)
		}
		var labels []string
		if cl := descConst.FindStringSubmatch(s); cl != nil {
			for _, kv := range strings.Split(cl[1], ",") {
				if k, _, ok := strings.Cut(kv, "="); ok {
					labels = append(labels, strings.TrimSpace(k))
				}
			}
		}
		if vl := descLabels.FindStringSubmatch(s); vl != nil && vl[1] != "" {
			for _, l := range strings.Split(vl[1], ",") {
				labels = append(labels, strings.TrimSpace(l))
			}
		}
		c.labels[m[1]] = labels
	}
	return nil
}

func (c *metricCatalog) MustRegister(cols ...prometheus.Collector) {
	for _, col := range cols {
		if err := c.Register(col); err != nil {
			panic(err)
		}
	}
}

// serviceMetrics builds ingest, a relay and a projector worker (as the
// services do, not running) on one catalog and returns it.
func serviceMetrics(t *testing.T) map[string][]string {
	t.Helper()
	db := testenv.Postgres(t) // registers what only PostgreSQL has (head guesses)
	nc, err := nats.Connect(testenv.NATS(t).URL())
	require.NoError(t, err)
	t.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	require.NoError(t, err)
	cat := &metricCatalog{Registerer: ops.New("", nil).Registerer(), labels: map[string][]string{}}
	_, err = ingest.New(db, nc, ingest.Config{Registerer: cat})
	require.NoError(t, err)
	_, err = relay.New(db, js, relay.Config{Registerer: cat})
	require.NoError(t, err)
	_, err = projector.New(db, js, projector.Config{Registerer: cat})
	require.NoError(t, err)
	return cat.labels
}

// checkExpr parses a PromQL expression and checks that it selects at least
// one metric, that every metric it names is registered by the services,
// that every label it matches exists on that metric, and that every
// aggregation groups by labels its input has.
func checkExpr(t *testing.T, where, expr string, metrics map[string][]string) {
	t.Helper()
	e, err := parser.NewParser(parser.Options{}).ParseExpr(expr)
	require.NoError(t, err, "%s: %s", where, expr)
	labelsOf := func(vs *parser.VectorSelector) ([]string, bool) {
		name := vs.Name
		if l, ok := metrics[name]; ok {
			return l, true
		}
		for _, suffix := range []string{"_bucket", "_sum", "_count"} {
			if l, ok := metrics[strings.TrimSuffix(name, suffix)]; ok && strings.HasSuffix(name, suffix) {
				if suffix == "_bucket" {
					l = append(slices.Clone(l), "le")
				}
				return l, true
			}
		}
		return nil, false
	}
	selected := 0
	parser.Inspect(e, func(n parser.Node, _ []parser.Node) error {
		if n, ok := n.(*parser.VectorSelector); ok {
			selected++
			labels, ok := labelsOf(n)
			require.True(t, ok, "%s: metric %q is not registered by any service (%s)", where, n.Name, expr)
			for _, m := range n.LabelMatchers {
				if m.Name != model.MetricNameLabel {
					require.Contains(t, labels, m.Name, "%s: %s has no label %q", where, n.Name, m.Name)
				}
			}
		}
		return nil
	})
	parser.Inspect(e, func(n parser.Node, _ []parser.Node) error {
		switch n := n.(type) {
		case *parser.AggregateExpr:
			var have []string
			parser.Inspect(n.Expr, func(c parser.Node, _ []parser.Node) error {
				if vs, ok := c.(*parser.VectorSelector); ok {
					l, _ := labelsOf(vs)
					have = append(have, l...)
				}
				return nil
			})
			for _, g := range n.Grouping {
				require.Contains(t, have, g, "%s: %s groups by %q, which its input does not have (%s)", where, n.Op, g, expr)
			}
		}
		return nil
	})
	require.NotZero(t, selected, "%s: selects no metric: %s", where, expr)
}

// TestDeployAlertRules: deploy/prometheus/alerts.yml is a valid rule file
// (Prometheus's own parser and checks), has the alerts the runbook
// promises, and names only metrics and labels the services register.
func TestDeployAlertRules(t *testing.T) {
	t.Parallel()
	metrics := serviceMetrics(t)
	groups, errs := rulefmt.ParseFile("../../deploy/prometheus/alerts.yml", false, model.LegacyValidation,
		parser.NewParser(parser.Options{}), slog.New(slog.NewTextHandler(io.Discard, nil)))
	require.Empty(t, errs)
	var alerts []string
	for _, g := range groups.Groups {
		for _, r := range g.Rules {
			require.NotEmpty(t, r.Alert, "group %s: only alerting rules", g.Name)
			require.Contains(t, []string{"warning", "critical"}, r.Labels["severity"], r.Alert)
			require.NotEmpty(t, r.Annotations["summary"], r.Alert)
			alerts = append(alerts, r.Alert)
			checkExpr(t, r.Alert, r.Expr, metrics)
		}
	}
	for _, want := range []string{"ArtifactstoreNoActiveRelay", "ArtifactstoreRelayNotPublishing", "ArtifactstoreProjectionLagGrowing",
		"ArtifactstorePartitionParked", "ArtifactstoreIngestUnavailable", "ArtifactstoreIngestRejectedReplies"} {
		require.Contains(t, alerts, want)
	}
}

// TestDeployGrafanaDashboard: deploy/grafana/artifactstore.json is a
// dashboard whose every query parses and names only registered metrics
// and labels, on the templated Prometheus data source.
func TestDeployGrafanaDashboard(t *testing.T) {
	t.Parallel()
	metrics := serviceMetrics(t)
	b, err := os.ReadFile("../../deploy/grafana/artifactstore.json")
	require.NoError(t, err)
	var dash struct {
		UID    string `json:"uid"`
		Title  string `json:"title"`
		Panels []struct {
			Type       string `json:"type"`
			Title      string `json:"title"`
			Datasource struct {
				UID string `json:"uid"`
			} `json:"datasource"`
			Targets []struct {
				Expr string `json:"expr"`
			} `json:"targets"`
		} `json:"panels"`
	}
	require.NoError(t, json.Unmarshal(b, &dash))
	require.NotEmpty(t, dash.UID)
	require.NotEmpty(t, dash.Title)
	queries := 0
	for _, p := range dash.Panels {
		if p.Type == "row" {
			continue
		}
		require.Equal(t, "${datasource}", p.Datasource.UID, p.Title)
		require.NotEmpty(t, p.Targets, p.Title)
		for _, tg := range p.Targets {
			// Grafana's range variables are not PromQL; any valid range
			// stands in for them.
			checkExpr(t, p.Title, strings.ReplaceAll(tg.Expr, "$__rate_interval", "5m"), metrics)
			queries++
		}
	}
	require.GreaterOrEqual(t, queries, 10)
}
