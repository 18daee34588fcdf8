"use strict";
// The list of runs (index.html): newest first, a page at a time (GET /api/list), filtered by job and status,
// searched by run id; the filters live in the URL (?job=&state=&q=&page=) so a filtered list can be linked.
(function () {
  const { $, el, num, money, pct, ago, runHref, jobHref, link, state, bar } = window.R;
  const REFRESH_MS = 2000;
  let asked = 0;          // the newest request sent: an older answer arriving late is dropped
  let loading = false;    // a refresh waits while a request is out
  let pages = 1;

  // An old link (#run=job/run, the view that opened below the list) goes to the run's own page.
  const old = location.hash.match(/^#run=([^/]+)(?:\/|%2F)(.+)$/i);
  if (old) location.replace(runHref(decodeURIComponent(old[1]), decodeURIComponent(old[2])));

  const params = () => new URLSearchParams(location.search);

  function setParam(name, value) {
    const p = params();
    if (value) p.set(name, value); else p.delete(name);
    if (name !== "page") p.delete("page");
    p.delete("token");  // the cookie carries it from the first request on
    const query = p.toString();
    history.replaceState(null, "", location.pathname + (query ? "?" + query : ""));
    load();
  }

  function lastError(run) {
    const errors = run.last_errors || [];
    if (!errors.length) return ["", ""];
    const e = errors[errors.length - 1];
    return [`${e.custom_id}: ${e.code}: ${e.message}`, errors.map((x) => `${x.custom_id}: ${x.code}: ${x.message}`).join("\n")];
  }

  function row(run) {
    const tr = el("tr");
    tr.dataset.run = `${run.job}/${run.run_id}`;
    const [shortError, allErrors] = lastError(run);
    const tokens = el("td", num((run.usage || {}).total_tokens), "num");
    tokens.title = `in ${num((run.usage || {}).input_tokens)}, out ${num((run.usage || {}).output_tokens)}`;
    const error = el("td", shortError.length > 90 ? shortError.slice(0, 87) + "…" : shortError, "err");
    error.title = allErrors;
    const progress = el("td");
    progress.append(bar(run), " ", pct(run) === null ? "" : pct(run).toFixed(0) + "%");
    const cells = [
      el("td"), el("td"), el("td"), progress, el("td", `${num(run.done)} / ${num(run.total)}`, "num"),
      el("td", run.rows_per_s === null || run.rows_per_s === undefined ? "–" : Number(run.rows_per_s).toFixed(1), "num"),
      tokens, el("td", money(run), "num"), el("td", num(run.rate_limited), "num"),
      el("td", ago(run.age_s), "muted"), error,
    ];
    cells[0].append(link(run.job, jobHref(run.job)));
    cells[1].append(link(run.run_id, runHref(run.job, run.run_id)));
    cells[2].append(state(run));
    tr.append(...cells);
    tr.addEventListener("click", (e) => { if (!e.target.closest("a")) location.href = runHref(run.job, run.run_id); });
    return tr;
  }

  function options(select, values, chosen) {
    const have = [...select.options].map((o) => o.value).slice(1);
    if (have.join("\n") !== values.join("\n")) {
      select.replaceChildren(select.options[0]);
      for (const v of values) { const o = el("option", v); o.value = v; select.append(o); }
    }
    select.value = values.includes(chosen) ? chosen : "";
  }

  async function load() {
    const p = params();
    const query = new URLSearchParams();
    for (const name of ["job", "state", "q", "page"]) if (p.get(name)) query.set(name, p.get(name));
    const mine = ++asked;
    loading = true;
    let data;
    try {
      const res = await fetch("/api/list?" + query.toString());
      if (!res.ok) throw new Error(`${res.status} ${(await res.json().catch(() => ({}))).detail || ""}`);
      data = await res.json();
    } catch (err) {
      if (mine === asked) $("runs-note").textContent = "cannot read the runs: " + err.message;
      return;
    } finally {
      if (mine === asked) loading = false;
    }
    if (mine !== asked) return;
    options($("filter-job"), data.jobs, p.get("job") || "");
    options($("filter-state"), data.states, p.get("state") || "");
    if (document.activeElement !== $("search")) $("search").value = p.get("q") || "";
    $("runs").tBodies[0].replaceChildren(...data.runs.map(row));
    pages = Math.max(1, Math.ceil(data.matched / data.per_page));
    const first = (data.page - 1) * data.per_page;
    $("page-info").textContent = data.matched
      ? `${num(first + 1)}–${num(first + data.runs.length)} of ${num(data.matched)}` +
        (data.matched !== data.total ? ` (${num(data.total)} runs in all)` : "") + ` · page ${data.page} of ${pages}`
      : "";
    $("newer").disabled = data.page <= 1;
    $("older").disabled = data.page >= pages;
    $("runs-note").textContent = data.total === 0 ? "no runs yet: start one with `runner run JOB`"
      : data.matched === 0 ? "no run matches these filters" : "";
    $("runs").dataset.rows = String(data.runs.length);
    if (window.listShownAt === undefined) window.listShownAt = performance.now();  // read by bench/liveview.py
  }

  $("filter-job").addEventListener("change", (e) => setParam("job", e.target.value));
  $("filter-state").addEventListener("change", (e) => setParam("state", e.target.value));
  $("search").addEventListener("input", (e) => setParam("q", e.target.value.trim()));
  const page = () => Math.max(1, Number(params().get("page")) || 1);
  $("newer").addEventListener("click", () => setParam("page", page() > 2 ? String(page() - 1) : ""));
  $("older").addEventListener("click", () => setParam("page", String(Math.min(pages, page() + 1))));
  if (!old) load();
  setInterval(() => { if (!loading && !document.hidden) load(); }, REFRESH_MS);
})();
