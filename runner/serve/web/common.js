"use strict";
// What every page of the live view shares: building elements, formatting figures, links, and the bar.
// Every figure comes from `runner status --json`'s object for a run (GET /api/..., or a `progress` event).
window.R = (function () {
  const $ = (id) => document.getElementById(id);

  function el(tag, text, cls) {
    const node = document.createElement(tag);
    if (text !== undefined && text !== null) node.textContent = String(text);
    if (cls) node.className = cls;
    return node;
  }

  const num = (n) => (n === null || n === undefined) ? "–" : Number(n).toLocaleString("en-US");
  const usd = (cost, known) => "$" + Number(cost || 0).toFixed(4) + (known === false ? "+?" : "");
  const money = (run) => usd(run.cost_usd, run.cost_known);
  const pct = (run) => (run.percent === null || run.percent === undefined) ? null : Number(run.percent);

  function duration(seconds) {
    if (seconds === null || seconds === undefined) return "–";
    const s = Math.round(seconds);
    if (s < 60) return `${s}s`;
    if (s < 3600) return `${Math.floor(s / 60)}m ${String(s % 60).padStart(2, "0")}s`;
    return `${Math.floor(s / 3600)}h ${String(Math.floor(s % 3600 / 60)).padStart(2, "0")}m`;
  }

  function ago(seconds) {
    if (seconds === null || seconds === undefined) return "–";
    if (seconds < 1) return "just now";
    if (seconds >= 86400) return `${Math.floor(seconds / 86400)}d ago`;
    return duration(seconds).split(" ")[0] + " ago";
  }

  const runHref = (job, run) => `/runs/${encodeURIComponent(job)}/${encodeURIComponent(run)}`;
  const jobHref = (job) => `/jobs/${encodeURIComponent(job)}`;

  function link(text, href) {
    const a = el("a", text);
    a.href = href;
    return a;
  }

  function state(run) {
    return el("span", run.state || run.status, "status-" + run.status);
  }

  // Rows not journaled yet but somewhere: in a remote batch (answered there, or waiting), or at a Ray worker.
  // The batches are the ones `runner status` lists (the run's ledger); else the manifest's `batches.open`.
  function openBatches(run) {
    if (run.batches && run.batches.length) return run.batches;
    return (run.batch_api && run.batch_api.open) || [];
  }

  function elsewhere(run) {
    let submitted = 0, answered = 0;
    for (const b of openBatches(run)) {
      const c = b.counts || {};
      submitted += b.rows || 0;
      answered += Math.min(b.rows || 0, (c.completed || 0) + (c.failed || 0));
    }
    const flight = Object.values((run.workers && run.workers.in_flight) || {}).reduce((a, n) => a + n, 0);
    return { submitted, answered, waiting: submitted - answered, flight };
  }

  const SEGMENTS = [  // [class, label, count]
    ["ok", "journaled ok", (run) => run.ok || 0],
    ["failed", "journaled failed", (run) => run.failed || 0],
    ["answered", "answered in a batch", (run, e) => e.answered],
    ["waiting", "waiting in a batch", (run, e) => e.waiting],
    ["flight", "at workers", (run, e) => e.flight],
  ];

  // The bar: one segment per place a row can be; aria-valuenow is the journaled percent.
  function bar(run, big) {
    const node = el("div", null, "bar" + (big ? " big" : ""));
    node.setAttribute("role", "progressbar");
    node.setAttribute("aria-valuemin", "0");
    node.setAttribute("aria-valuemax", "100");
    fillBar(node, run);
    return node;
  }

  function fillBar(node, run) {
    const e = elsewhere(run);
    const counts = SEGMENTS.map(([cls, label, count]) => [cls, label, count(run, e)]);
    const sum = counts.reduce((a, [, , n]) => a + n, 0);
    const total = run.total === null || run.total === undefined ? null : Math.max(run.total, sum);
    node.classList.toggle("unknown", total === null);
    node.replaceChildren();
    for (const [cls, label, n] of counts) {
      if (!n) continue;
      const seg = el("span", null, "seg " + cls);
      seg.style.width = (100 * n / (total || sum)) + "%";
      seg.title = `${label}: ${num(n)}`;
      node.append(seg);
    }
    const p = pct(run);
    if (p === null) node.removeAttribute("aria-valuenow");
    else node.setAttribute("aria-valuenow", String(p));
    node.dataset.percent = p === null ? "" : String(p);
    node.title = counts.filter(([, , n]) => n).map(([, label, n]) => `${label} ${num(n)}`).join(", ") +
      (total === null ? "" : ` of ${num(run.total)}`);
    return counts;
  }

  // The words under a big bar: each part of the bar with its count, and what is not sent yet.
  function legend(node, run, counts) {
    node.replaceChildren();
    for (const [cls, label, n] of counts) {
      if (!n && cls !== "ok") continue;
      const item = el("span", null, "item " + cls);
      item.append(el("span", null, "key seg " + cls), `${label} ${num(n)}`);
      node.append(item);
    }
    if (run.total !== null && run.total !== undefined) {
      const placed = counts.reduce((a, [, , n]) => a + n, 0);
      node.append(el("span", `still to do ${num(Math.max(0, run.total - placed))} of ${num(run.total)}`, "item"));
    }
  }

  return { $, el, num, usd, money, pct, duration, ago, runHref, jobHref, link, state, openBatches, elsewhere,
    bar, fillBar, legend };
})();
