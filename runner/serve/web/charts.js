"use strict";
// The charts of an opened run, drawn with the vendored uPlot from its metrics.jsonl timeline, followed
// live over Server-Sent Events (GET /runs/JOB/RUN/timeline). Loaded by a run's page (run.html).
(function () {
  const MAX_POINTS = 5000;  // a long night at 5 s is 7,200 samples; the oldest are dropped beyond this
  const lat = (key) => (s) => (s.latency_s ? s.latency_s[key] : null);
  const CHARTS = [
    { title: "rows/s", series: [["rows/s", "#1f77b4", (s) => s.rows_per_s]] },
    { title: "in flight vs concurrency limit", series: [
      ["in flight", "#2ca02c", (s) => s.in_flight], ["limit", "#d62728", (s) => s.concurrency]] },
    { title: "429s and retries (per interval)", series: [
      ["429s", "#d62728", (s) => s.rate_limited], ["retries", "#ff7f0e", (s) => s.retries]] },
    { title: "latency (s)", series: [
      ["p50", "#1f77b4", lat("p50")], ["p95", "#ff7f0e", lat("p95")], ["p99", "#d62728", lat("p99")]] },
    { title: "cost so far ($)", series: [["cost", "#9467bd", (s) => s.cost_usd]] },
  ];
  let source = null, box = null, plots = [], xs = [], ys = [], restarts = [], pending = false;

  function markRestarts(u) {  // a dashed vertical line where the run was started again
    const ctx = u.ctx;
    ctx.save();
    ctx.strokeStyle = "#888";
    ctx.setLineDash([4, 4]);
    for (const ts of restarts) {
      const x = Math.round(u.valToPos(ts, "x", true));
      if (x < u.bbox.left || x > u.bbox.left + u.bbox.width) continue;
      ctx.beginPath();
      ctx.moveTo(x, u.bbox.top);
      ctx.lineTo(x, u.bbox.top + u.bbox.height);
      ctx.stroke();
    }
    ctx.restore();
  }

  function build() {
    box.replaceChildren();
    const width = Math.max(280, Math.floor(box.clientWidth / 2) - 16);
    plots = CHARTS.map((chart) => {
      const div = document.createElement("div");
      div.className = "chart";
      box.append(div);
      const opts = {
        title: chart.title, width, height: 150, legend: { live: false },
        cursor: { drag: { x: false, y: false } },
        scales: { y: { range: (u, min, max) => [0, max > 0 ? max * 1.1 : 1] } },
        series: [{}, ...chart.series.map(([label, stroke]) => ({ label, stroke, width: 1.5, spanGaps: true }))],
        axes: [{}, { size: 56, values: (u, ticks) => ticks.map((v) => +v.toPrecision(3)) }],
        hooks: { draw: [markRestarts] },
      };
      return new uPlot(opts, [[], ...chart.series.map(() => [])], div);
    });
    ys = CHARTS.map((chart) => chart.series.map(() => []));
  }

  function redraw() {
    pending = false;
    plots.forEach((u, i) => u.setData([xs, ...ys[i]]));
    box.dataset.points = String(xs.length);
    box.dataset.restarts = String(restarts.length);
  }

  function push(sample) {
    xs.push(sample.ts);
    CHARTS.forEach((chart, i) => chart.series.forEach(([, , pick], j) => ys[i][j].push(pick(sample) ?? null)));
    if (xs.length > MAX_POINTS) {
      xs.shift();
      ys.forEach((lines) => lines.forEach((line) => line.shift()));
    }
    if (!pending) { pending = true; setTimeout(redraw, 100); }  // a burst of history is drawn once
  }

  function open(job, run, container) {
    close();
    box = container;
    xs = []; restarts = [];
    box.dataset.points = "0";
    build();
    source = new EventSource(`/runs/${encodeURIComponent(job)}/${encodeURIComponent(run)}/timeline`);
    source.addEventListener("sample", (e) => push(JSON.parse(e.data)));
    source.addEventListener("start", (e) => {
      const start = JSON.parse(e.data);
      if (start.restart) { restarts.push(start.ts); if (!pending) { pending = true; setTimeout(redraw, 100); } }
    });
    source.addEventListener("done", () => { source.close(); source = null; });
  }

  function close() {
    if (source) { source.close(); source = null; }
    plots.forEach((u) => u.destroy());
    plots = [];
  }

  window.runnerCharts = { open, close };
})();
