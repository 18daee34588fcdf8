"use strict";
// A run's own page (/runs/JOB/RUN): the bar, the facts, the lanes, the workers of a Ray run, the batches of a
// Batch API run, the charts and the newest records, followed live. Each `progress` event of
// /runs/JOB/RUN/events is the run's `runner status --json` object; the page draws nothing else.
(function () {
  const { $, el, num, usd, money, pct, duration, ago, jobHref, link, openBatches, elsewhere, fillBar, legend } = window.R;
  const MAX_SHOWN = 50;
  const [job, run] = location.pathname.split("/").slice(2, 4).map(decodeURIComponent);
  let source = null;

  document.title = `${job}/${run} · runner`;
  $("job-link").textContent = job;
  $("job-link").href = jobHref(job);
  $("run-id").textContent = run;
  $("run-name").textContent = `${job}/${run}`;

  function rows(table, lines) {
    table.tBodies[0].replaceChildren(...lines.map((cells) => {
      const tr = el("tr");
      for (const [text, cls] of cells) tr.append(el("td", text, cls));
      return tr;
    }));
  }

  function facts(r) {
    const usage = r.usage || {};
    let rate = r.rows_per_s === null || r.rows_per_s === undefined ? "unknown" : `${Number(r.rows_per_s).toFixed(1)} rows/s`;
    if (r.eta_s !== null && r.eta_s !== undefined) rate += `, ETA ${duration(r.eta_s)}`;
    let cost = money(r);
    if (r.max_cost_usd !== null && r.max_cost_usd !== undefined) cost += ` of at most $${r.max_cost_usd}`;
    const errors = Object.entries(r.error_codes || {}).map(([k, v]) => `${k} ${num(v)}`).join(", ") || "none";
    const items = [
      ["model", r.model || "(from each request)"],
      ["rows", `${num(r.done)} of ${num(r.total)}: ${num(r.ok)} ok, ${num(r.failed)} failed`],
      ["rate", rate],
      ["tokens", `${num(usage.input_tokens)} in, ${num(usage.output_tokens)} out, ${num(usage.cached_tokens)} cached`],
      ["cost", cost],
      ["retries", `${num(r.retries)} retries, ${num(r.rate_limited)} × 429`],
      ["errors", errors],
      ["times", `started ${r.created_at || "–"}, updated ${r.updated_at || "–"} (${ago(r.age_s)}), last run ${duration(r.elapsed_s)}`],
    ];
    if (r.stop_reason) items.push(["stopped by", r.stop_reason]);
    for (const e of r.run_errors || []) items.push(["run error", String(e)]);
    $("facts").replaceChildren(...items.flatMap(([k, v]) => [el("dt", k), el("dd", v)]));
  }

  function lanes(r) {
    const entries = Object.entries(r.by_lane || {}).sort();
    $("lanes-box").hidden = !entries.length;
    rows($("lanes"), entries.map(([name, lane]) => [
      [name], [num(lane.requests), "num"], [num((lane.usage || {}).input_tokens), "num"],
      [num((lane.usage || {}).output_tokens), "num"],
      [usd(lane.cost_usd, !lane.unpriced_requests) , "num"],
      [Object.entries(lane.models || {}).sort().map(([model, m]) => `${model} ${num(m.requests)}`).join(", ")],
    ]));
    $("lanes").tBodies[0].querySelectorAll("tr").forEach((tr, i) => { tr.dataset.lane = entries[i][0]; });
  }

  function workers(r) {
    const w = r.workers;  // the manifest's `workers` (Ray): alive, replaced, in_flight and hosts by worker
    $("workers-box").hidden = !w;
    if (!w) return;
    const inFlight = w.in_flight || {}, hosts = w.hosts || {};
    const names = [...new Set([...Object.keys(inFlight), ...Object.keys(hosts)])]
      .sort((a, b) => a.localeCompare(b, "en", { numeric: true }));
    const held = Object.values(inFlight).reduce((a, n) => a + n, 0);
    $("workers-summary").textContent = `${num(w.alive)} alive, ${num(w.replaced)} replaced, ${num(held)} rows in flight`;
    rows($("workers"), names.map((name) => [[name], [hosts[name] || "–"], [num(inFlight[name] || 0), "num"]]));
  }

  function batches(r) {
    const summary = r.batch_api;  // the manifest's `batches` (--batch-api)
    const open = openBatches(r);
    $("batches-box").hidden = !summary && !open.length;
    if (!summary && !open.length) return;
    const parts = [];
    if (summary) {
      const by = Object.entries(summary.by_status || {}).map(([k, v]) => `${k} ${num(v)}`).join(", ");
      parts.push(`${num(summary.submitted)} submitted` + (by ? ` (${by})` : ""));
      parts.push(`${num(summary.rows_waiting)} rows waiting`);
      if (summary.deadline_at) parts.push(`deadline ${summary.deadline_at}`);
      if (summary.resubmitted) parts.push(`${num(summary.resubmitted)} resubmitted`);
      if (summary.rescued_online) parts.push(`${num(summary.rescued_online)} rescued online`);
      const providers = Object.entries(summary.by_provider || {}).sort();  // a run may batch at several providers
      if (providers.length) {
        parts.push("by provider: " + providers.map(([name, p]) => `${name} ${num(p.batches)} (${num(p.rows)} rows)`).join(", "));
      }
    }
    parts.push(`${num(open.length)} not collected yet`);
    $("batches-summary").textContent = parts.join(" · ");
    rows($("batches"), open.map((b) => {
      const c = b.counts || {};
      const answered = (c.completed || 0) + (c.failed || 0);
      const expires = b.expires_at ? new Date(b.expires_at * 1000).toISOString().slice(0, 16).replace("T", " ") + " UTC" : "–";
      return [[b.batch_id || `chunk ${b.chunk}`], [b.provider || "–"], [b.model], [b.status], [num(b.rows), "num"], [num(c.completed || 0), "num"],
        [num(c.failed || 0), "num"], [num(Math.max(0, (b.rows || 0) - answered)), "num"], [ago(b.age_s)], [expires]];
    }));
  }

  function show(r) {
    $("run-status").textContent = (r.state || r.status) + (r.running && r.pid ? ` (PID ${r.pid})` : "");
    $("run-status").className = "status-" + r.status;
    const counts = fillBar($("progress-bar"), r);
    legend($("progress-legend"), r, counts);
    const p = pct(r), e = elsewhere(r);
    const parts = [p === null ? "?%" : p.toFixed(0) + "%", `${num(r.done)} / ${num(r.total)}`, `${num(r.failed)} failed`,
      `${r.rows_per_s ? Number(r.rows_per_s).toFixed(1) : "–"} rows/s`, `${num((r.usage || {}).total_tokens)} tokens`,
      money(r), `${num(r.rate_limited)} × 429`];
    if (e.submitted) parts.push(`${num(e.submitted)} in batches (${num(e.answered)} answered, ${num(e.waiting)} waiting)`);
    if (r.workers) parts.push(`${num(r.workers.alive)} workers, ${num(e.flight)} rows at workers`);
    $("progress-text").textContent = parts.join(" · ");
    facts(r);
    lanes(r);
    workers(r);
    batches(r);
    document.body.dataset.shown = "1";  // the tests wait for it
  }

  function record(data, ok) {
    const list = $("results");
    const meta = data.meta || {};
    let text;
    if (ok) {
      const shown = "result" in data ? JSON.stringify(data.result) : "(no parser)";
      text = `✓ ${data.custom_id}: ${shown}  ${meta.latency_s ?? "?"}s` + (meta.via || meta.worker ? ` (${meta.via || meta.worker})` : "");
    } else {
      const e = data.error || {};
      text = `✗ ${data.custom_id}: ${e.code}: ${e.message}`;
    }
    list.prepend(el("li", text, ok ? "good" : "bad"));
    while (list.children.length > MAX_SHOWN) list.lastChild.remove();
  }

  source = new EventSource(`/runs/${encodeURIComponent(job)}/${encodeURIComponent(run)}/events`);
  source.addEventListener("progress", (e) => show(JSON.parse(e.data)));
  source.addEventListener("result", (e) => record(JSON.parse(e.data), true));
  source.addEventListener("row_error", (e) => record(JSON.parse(e.data), false));
  source.addEventListener("end", (e) => {
    $("run-status").textContent = JSON.parse(e.data).status + " (finished)";
    source.close();
    source = null;
  });
  // On a dropped connection EventSource reconnects by itself, sending Last-Event-ID: nothing is lost.
  source.onerror = () => { if (source) $("run-status").textContent += " (reconnecting…)"; };
  try {
    window.runnerCharts.open(job, run, $("charts"));
  } catch (err) {
    $("charts").textContent = "charts unavailable: " + err.message;
  }
})();
