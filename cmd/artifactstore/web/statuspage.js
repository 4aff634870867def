"use strict";
// The status page: polls status.json every second for the samples it has
// not drawn yet (?since=), keeps the last ten minutes and charts them with
// uPlot (served by the process itself, static/uPlot.iife.min.js).
(function () {
  const WINDOW_MS = 10 * 60 * 1000;
  const HEIGHT = 220;
  const RELAY = "#1f77b4";
  // Commands and published often coincide: commands/s is a wide pale band
  // under the published/s line, so both stay visible.
  const COMMANDS = "rgba(44,160,44,0.45)";
  const PUBLISHED = "#1f77b4";
  const PROJECTIONS = ["#d62728", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf"];

  let samples = []; // oldest first, each a lagSample of statushistory.go
  let charts = null; // {key, lag, rate}: rebuilt when the projections change

  function el(id) { return document.getElementById(id); }
  function escapeHTML(s) {
    return String(s).replace(/[&<>"']/g, function (c) {
      return { "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" }[c];
    });
  }
  function projectionColor(i) { return PROJECTIONS[i % PROJECTIONS.length]; }
  function orNull(v) { return v === undefined || v === null || v < 0 ? null : v; }

  function renderTable(data) {
    const cur = data.current || {};
    el("error").textContent = data.error || cur.relay_error || "";
    el("head").textContent = cur.head ?? "–";
    el("relay-position").textContent = cur.relay ? cur.relay.position : "–";
    el("relay-lag").textContent = cur.relay ? cur.relay.lag : "unknown";
    el("projections").innerHTML = (cur.projections || []).map(function (p) {
      const parked = p.parked_partitions > 0 ? ' <span class="parked">' + p.parked_partitions + " parked</span>" : "";
      return "<tr><td>projection " + escapeHTML(p.projection) + parked + '</td><td class="num">' + p.applied +
        '</td><td class="num" data-projection="' + escapeHTML(p.projection) + '">' + p.lag + "</td></tr>";
    }).join("");
  }

  // merge appends the new samples and drops those older than the window.
  function merge(history) {
    for (const s of history) {
      if (samples.length === 0 || s.t > samples[samples.length - 1].t) samples.push(s);
    }
    if (samples.length === 0) return;
    const from = samples[samples.length - 1].t - WINDOW_MS;
    let cut = 0;
    while (cut < samples.length && samples[cut].t < from) cut++;
    if (cut > 0) samples = samples.slice(cut);
  }

  function projectionNames() {
    const names = [];
    for (const s of samples) {
      for (const p of s.projections || []) if (!names.includes(p.projection)) names.push(p.projection);
    }
    return names;
  }
  function perProjection(name, field) {
    return samples.map(function (s) {
      const p = (s.projections || []).find(function (p) { return p.projection === name; });
      return p ? orNull(p[field]) : null;
    });
  }
  function times() { return samples.map(function (s) { return s.t / 1000; }); }

  function lagData(names) {
    return [times(), samples.map(function (s) { return orNull(s.relay_lag); })]
      .concat(names.map(function (n) { return perProjection(n, "lag"); }));
  }
  function rateData(names) {
    return [times(), samples.map(function (s) { return orNull(s.commands_per_s); }),
      samples.map(function (s) { return orNull(s.published_per_s); })]
      .concat(names.map(function (n) { return perProjection(n, "applied_per_s"); }));
  }

  function integer(u, v) { return v == null ? "–" : v.toLocaleString(); }
  function perSecond(u, v) { return v == null ? "–" : v.toFixed(1); }
  function line(label, stroke, width, value, dash) {
    const s = { label: label, stroke: stroke, width: width, value: value, points: { show: false } };
    if (dash) s.dash = dash;
    return s;
  }

  // showLatest puts the latest values in the legend while the cursor is
  // not over the chart (uPlot would show "–").
  function showLatest(u) {
    if (u.cursor.idx == null && u.data[0].length > 0) u.setLegend({ idx: u.data[0].length - 1 });
  }

  function options(target, series, yLabel, onCursor) {
    return {
      width: target.clientWidth,
      height: HEIGHT,
      // Lag and rates are never negative: start at 0, leave room above.
      scales: { x: { time: true }, y: { range: function (u, min, max) { return uPlot.rangeNum(0, Math.max(1, max || 0), 0.1, true); } } },
      series: [{ label: "time", value: "{YYYY}-{MM}-{DD} {HH}:{mm}:{ss}" }].concat(series),
      axes: [{}, { label: yLabel, size: 64 }],
      // Both charts show the cursor at the same time (but not each other's
      // series toggles: their series differ); no drag-zoom, since every
      // refresh resets the scales.
      cursor: { sync: { key: "artifactstore-status", setSeries: false }, drag: { x: false, y: false } },
      hooks: { setData: [showLatest], setCursor: [showLatest].concat(onCursor ? [onCursor] : []) },
    };
  }

  function lagChart(names) {
    const series = [line("relay lag", RELAY, 3, integer)].concat(names.map(function (n, i) {
      return line(n + " lag", projectionColor(i), 1.5, integer);
    }));
    const target = el("lag-chart");
    return new uPlot(options(target, series, "events", function (u) { renderPartitions(u.cursor.idx); }),
      lagData(names), target);
  }
  function rateChart(names) {
    const series = [line("commands/s", COMMANDS, 6, perSecond), line("published/s", PUBLISHED, 2, perSecond)]
      .concat(names.map(function (n, i) { return line(n + " applied/s", projectionColor(i), 1.5, perSecond, [6, 3]); }));
    const target = el("rate-chart");
    return new uPlot(options(target, series, "events/s"), rateData(names), target);
  }

  // renderPartitions shows each projection's lag per partition at the
  // sample under the cursor (the latest one when the cursor is elsewhere).
  function renderPartitions(idx) {
    if (samples.length === 0) return;
    const latest = idx == null || idx >= samples.length;
    const s = samples[latest ? samples.length - 1 : idx];
    const when = new Date(s.t).toLocaleTimeString() + (latest ? " (latest)" : "");
    el("partition-lag").innerHTML = (s.projections || []).map(function (p) {
      const lags = p.partition_lag || [];
      const worst = Math.max(1, ...lags);
      const cells = lags.map(function (lag, k) {
        const bg = lag > 0 ? "rgba(214,39,40," + (0.15 + 0.6 * lag / worst).toFixed(2) + ")" : "#eee";
        return '<span class="cell" title="partition ' + k + ": " + lag + ' events behind" style="background:' + bg +
          '">' + lag + "</span>";
      }).join("");
      return "<div>" + escapeHTML(p.projection) + " lag per partition at " + when + ': <span class="cells">' +
        cells + "</span></div>";
    }).join("");
  }

  // describe records what each chart holds, read back from the uPlot
  // instance: series labels, points, and per series the count and the
  // largest of its non-null values (the browser test reads them).
  function describe(u, target) {
    const series = u.series.slice(1);
    const values = series.map(function (s, i) {
      return u.data[i + 1].filter(function (v) { return v != null; });
    });
    target.dataset.series = series.map(function (s) { return s.label; }).join("|");
    target.dataset.points = String(u.data[0].length);
    target.dataset.values = values.map(function (v) { return v.length; }).join("|");
    target.dataset.max = values.map(function (v) { return v.length > 0 ? Math.max(...v) : ""; }).join("|");
  }

  function draw() {
    const names = projectionNames();
    const key = names.join("\n");
    if (charts === null || charts.key !== key) {
      if (charts !== null) { charts.lag.destroy(); charts.rate.destroy(); }
      charts = { key: key, lag: lagChart(names), rate: rateChart(names) };
    } else {
      charts.lag.setData(lagData(names));
      charts.rate.setData(rateData(names));
    }
    describe(charts.lag, el("lag-chart"));
    describe(charts.rate, el("rate-chart"));
    renderPartitions(charts.lag.cursor.idx);
  }

  function refresh() {
    const url = samples.length > 0 ? "status.json?since=" + samples[samples.length - 1].t : "status.json";
    fetch(url, { cache: "no-store" }).then(function (r) {
      if (!r.ok) throw new Error("status.json: HTTP " + r.status);
      return r.json();
    }).then(function (data) {
      renderTable(data);
      merge(data.history || []);
      draw();
      el("updated").textContent = new Date().toLocaleTimeString();
      document.body.dataset.loaded = "true";
    }).catch(function (e) {
      el("error").textContent = String(e);
    }).finally(function () {
      setTimeout(refresh, 1000);
    });
  }

  window.addEventListener("resize", function () {
    if (charts === null) return;
    charts.lag.setSize({ width: el("lag-chart").clientWidth, height: HEIGHT });
    charts.rate.setSize({ width: el("rate-chart").clientWidth, height: HEIGHT });
  });
  refresh();
})();
