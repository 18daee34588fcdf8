"use strict";
// A job's page (/jobs/JOB): one line per run, newest first (a nightly history), and charts of each run's cost,
// duration and failed rows, oldest to newest. The runs are `runner status --json`'s objects (GET /api/jobs/JOB/runs);
// a run's duration is its manifest's `elapsed_s` (its last invocation).
(function () {
  const { $, el, num, usd, money, duration, runHref, state, bar } = window.R;
  const job = decodeURIComponent(location.pathname.split("/")[2]);
  const REFRESH_MS = 10000;
  const CHARTS = [
    ["cost per run ($)", "#9467bd", (r) => r.cost_usd || 0],
    ["duration per run (s)", "#1f77b4", (r) => r.elapsed_s],
    ["failed rows per run", "#d62728", (r) => r.failed || 0],
  ];
  let plots = [];

  document.title = `${job} · runner`;
  $("job-crumb").textContent = job;
  $("job-name").textContent = job;

  const when = (r) => Date.parse(r.created_at || r.updated_at || "") / 1000;

  function charts(runs) {
    const dated = runs.filter((r) => !Number.isNaN(when(r)));
    const xs = dated.map(when);
    const box = $("job-charts");
    const width = Math.max(280, Math.floor(box.clientWidth / 3) - 16);
    if (!plots.length) {
      box.replaceChildren();
      plots = CHARTS.map(([title, stroke]) => {
        const div = el("div", null, "chart");
        box.append(div);
        return new uPlot({
          title, width, height: 170, legend: { show: false },
          cursor: { drag: { x: false, y: false } },
          scales: { y: { range: (u, min, max) => [0, max > 0 ? max * 1.1 : 1] } },
          series: [{}, { label: title, stroke, fill: stroke + "55", width: 1,
            paths: uPlot.paths.bars({ size: [0.6, 24] }), points: { show: false } }],
          axes: [{}, { size: 56, values: (u, ticks) => ticks.map((v) => +v.toPrecision(3)) }],
        }, [[], []], div);
      });
    }
    plots.forEach((u, i) => u.setData([xs, dated.map((r) => CHARTS[i][2](r) ?? null)]));
    box.dataset.points = String(xs.length);
  }

  function table(runs) {
    $("history").tBodies[0].replaceChildren(...[...runs].reverse().map((r) => {
      const tr = el("tr");
      tr.dataset.run = r.run_id;
      const name = el("td"), status = el("td"), progress = el("td");
      const a = el("a", r.run_id);
      a.href = runHref(r.job, r.run_id);
      name.append(a);
      status.append(state(r));
      progress.append(bar(r));
      tr.append(name, status, progress, el("td", (r.created_at || "–").replace("T", " ").replace("Z", " UTC")), el("td", duration(r.elapsed_s), "num"),
        el("td", num(r.ok), "num"), el("td", num(r.failed), "num"), el("td", num((r.usage || {}).total_tokens), "num"),
        el("td", money(r), "num"));
      tr.addEventListener("click", (e) => { if (!e.target.closest("a")) location.href = runHref(r.job, r.run_id); });
      return tr;
    }));
  }

  async function load() {
    let runs;
    try {
      const res = await fetch(`/api/jobs/${encodeURIComponent(job)}/runs`);
      if (!res.ok) throw new Error(String(res.status));
      runs = await res.json();
    } catch (err) { $("job-summary").textContent = "cannot read the runs: " + err.message; return; }
    const cost = runs.reduce((a, r) => a + (r.cost_usd || 0), 0);
    const failed = runs.reduce((a, r) => a + (r.failed || 0), 0);
    $("job-summary").textContent = `${num(runs.length)} runs, ${usd(cost, runs.every((r) => r.cost_known !== false))} ` +
      `in all, ${num(failed)} failed rows`;
    table(runs);
    charts(runs);
  }

  load();
  setInterval(() => { if (!document.hidden) load(); }, REFRESH_MS);
})();
