"""The dashboard: one self-contained page (inline CSS, SVG drawn by a little
JavaScript, no external asset: the appliance may have no internet) that
polls /api/stats every two seconds.

What it shows, top to bottom: the totals (queries, rate, cache hit ratio,
blocked share, upstreams up), queries per second over the last ten minutes,
answers by source, the upstreams' health and latency, the top names and
clients, and the last queries. Every figure has an ``id`` or a table of its
own, which is what tests/integration/test_dashboard.py reads in Chromium.
"""
from __future__ import annotations

PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<link rel="icon" href="data:,">
<title>DNS appliance</title>
<style>
:root { --bg:#0f1419; --panel:#171e26; --line:#263240; --text:#d8e0e8; --dim:#7d8b99; --accent:#4fb3ff;
  --ok:#3ecf8e; --bad:#ff5c5c; --warn:#f5b841; }
* { box-sizing: border-box; }
body { margin:0; background:var(--bg); color:var(--text); font:14px/1.4 system-ui, -apple-system, "Segoe UI",
  Roboto, sans-serif; }
header { display:flex; align-items:baseline; gap:1rem; padding:1rem 1.5rem; border-bottom:1px solid var(--line); }
header h1 { font-size:1.2rem; margin:0; font-weight:600; }
header .meta { color:var(--dim); }
header .live { margin-left:auto; color:var(--dim); font-size:.85rem; }
header .live::before { content:""; display:inline-block; width:.55rem; height:.55rem; border-radius:50%;
  background:var(--ok); margin-right:.4rem; }
header .live.stale::before { background:var(--bad); }
main { padding:1rem 1.5rem 2rem; display:grid; gap:1rem; grid-template-columns:repeat(12, 1fr); }
section { background:var(--panel); border:1px solid var(--line); border-radius:8px; padding:.9rem 1rem;
  min-width:0; }
section h2 { font-size:.8rem; text-transform:uppercase; letter-spacing:.06em; color:var(--dim); margin:0 0 .6rem;
  font-weight:600; }
.tiles { grid-column:1 / -1; display:grid; grid-template-columns:repeat(5, 1fr); gap:1rem; background:none;
  border:none; padding:0; }
.tile { background:var(--panel); border:1px solid var(--line); border-radius:8px; padding:.8rem 1rem; }
.tile .label { color:var(--dim); font-size:.75rem; text-transform:uppercase; letter-spacing:.06em; }
.tile .value { font-size:1.8rem; font-weight:600; font-variant-numeric:tabular-nums; margin-top:.2rem; }
.tile .sub { color:var(--dim); font-size:.8rem; }
.wide { grid-column:span 8; } .narrow { grid-column:span 4; }
.half { grid-column:span 6; } .full { grid-column:1/-1; }
@media (max-width: 900px) { .wide, .narrow, .half { grid-column:1 / -1; }
  .tiles { grid-template-columns:repeat(2, 1fr); } }
svg text { fill:var(--dim); font-size:10px; }
table { width:100%; border-collapse:collapse; font-variant-numeric:tabular-nums; }
th { text-align:left; color:var(--dim); font-weight:500; font-size:.75rem; padding:.25rem .4rem;
  border-bottom:1px solid var(--line); }
td { padding:.25rem .4rem; border-bottom:1px solid #1d2630; white-space:nowrap; overflow:hidden;
  text-overflow:ellipsis; max-width:22rem; }
td.num, th.num { text-align:right; }
.bar { position:relative; }
.bar span.fill { position:absolute; left:0; top:15%; bottom:15%; background:rgba(79,179,255,.16); border-radius:3px; }
.bar span.text { position:relative; }
.legend { display:flex; flex-wrap:wrap; gap:.4rem 1rem; margin-top:.6rem; }
.legend div { display:flex; align-items:center; gap:.35rem; }
.swatch { width:.7rem; height:.7rem; border-radius:2px; display:inline-block; }
.dot { display:inline-block; width:.55rem; height:.55rem; border-radius:50%; margin-right:.35rem; }
.rc-NOERROR { color:var(--ok); } .rc-NXDOMAIN { color:var(--warn); }
.rc-SERVFAIL, .rc-REFUSED, .rc-FORMERR { color:var(--bad); }
.src-blocked { color:var(--bad); }
.empty { color:var(--dim); font-style:italic; }
</style>
</head>
<body>
<header>
  <h1>DNS appliance</h1>
  <span class="meta" id="identity"></span>
  <span class="meta" id="version"></span>
  <span class="meta">up <span id="uptime">–</span></span>
  <span class="live stale" id="live">connecting…</span>
</header>
<main>
  <div class="tiles">
    <div class="tile"><div class="label">Queries</div><div class="value" id="total-queries">–</div>
      <div class="sub">since start</div></div>
    <div class="tile"><div class="label">Queries / s</div><div class="value" id="qps-now">–</div>
      <div class="sub">last 10 s</div></div>
    <div class="tile"><div class="label">Cache hit ratio</div><div class="value" id="cache-hit">–</div>
      <div class="sub" id="cache-sub">of forwarded names</div></div>
    <div class="tile"><div class="label">Blocked</div><div class="value" id="blocked-share">–</div>
      <div class="sub"><span id="blocked-count">0</span> answers</div></div>
    <div class="tile"><div class="label">Upstreams up</div><div class="value" id="upstreams-up">–</div>
      <div class="sub" id="upstreams-sub">&nbsp;</div></div>
  </div>
  <section class="wide"><h2>Queries per second, last 10 minutes</h2>
    <svg id="qps-chart" viewBox="0 0 800 180" width="100%" height="180" preserveAspectRatio="none"></svg></section>
  <section class="narrow"><h2>Answers by source</h2>
    <svg id="sources-chart" viewBox="0 0 400 28" width="100%" height="28" preserveAspectRatio="none"></svg>
    <div class="legend" id="sources-legend"></div>
    <table id="rcodes" style="margin-top:.8rem"><thead><tr><th>Response code</th><th class="num">Answers</th></tr>
    </thead><tbody></tbody></table></section>
  <section class="full"><h2>Upstreams</h2>
    <table id="upstreams"><thead><tr><th>Upstream</th><th>Health</th><th class="num">Mean RTT</th>
    <th class="num">Answered</th><th class="num">Failures in a row</th></tr></thead><tbody></tbody></table></section>
  <section class="half"><h2>Top names</h2>
    <table id="top-names"><thead><tr><th>Name</th><th class="num">Queries</th></tr></thead><tbody></tbody></table>
  </section>
  <section class="half"><h2>Top clients</h2>
    <table id="top-clients"><thead><tr><th>Client</th><th class="num">Queries</th></tr></thead><tbody></tbody></table>
  </section>
  <section class="full"><h2>Last queries</h2>
    <table id="recent"><thead><tr><th>Age</th><th>Client</th><th>Name</th><th>Type</th><th>Transport</th>
    <th>Answer</th><th>Source</th><th class="num">Latency</th></tr></thead><tbody></tbody></table></section>
</main>
<script>
"use strict";
const COLORS = {zone:"#4fb3ff", hosts:"#8f7cff", special:"#a0aec0", chaos:"#6b7785", blocked:"#ff5c5c",
  mdns:"#f5b841", cache:"#3ecf8e", forward:"#2a9d8f", server:"#e76f51"};
const $ = id => document.getElementById(id);
const fmt = n => n == null ? "–" : n >= 1e6 ? (n / 1e6).toFixed(1) + "M" : n >= 1e4 ? (n / 1e3).toFixed(1) + "k"
  : String(Math.round(n * 10) / 10);
const size = b => b < 1048576 ? fmt(b / 1024) + " KiB" : fmt(b / 1048576) + " MiB";
const pct = x => x == null ? "–" : (x * 100).toFixed(1) + "%";
function duration(s) {
  if (s == null) return "–";
  const d = Math.floor(s / 86400), h = Math.floor(s % 86400 / 3600), m = Math.floor(s % 3600 / 60);
  if (s < 60) return (s < 10 ? s.toFixed(1) : Math.floor(s)) + " s";
  return d ? d + "d " + h + "h" : h ? h + "h " + m + "m" : m + "m " + Math.floor(s % 60) + "s";
}
function cell(text, cls) {
  const td = document.createElement("td");
  td.textContent = text;
  if (cls) td.className = cls;
  return td;
}
function fill(tableId, rows, columns, emptyText) {
  const body = $(tableId).tBodies[0];
  body.replaceChildren();
  if (!rows.length) {
    const tr = document.createElement("tr"), td = cell(emptyText, "empty");
    td.colSpan = columns; tr.append(td); body.append(tr); return;
  }
  for (const cells of rows) { const tr = document.createElement("tr"); tr.append(...cells); body.append(tr); }
}
function barRow(label, count, max) {
  const name = cell("", "bar"), fillSpan = document.createElement("span"), text = document.createElement("span");
  fillSpan.className = "fill"; fillSpan.style.width = (max ? 100 * count / max : 0) + "%";
  text.className = "text"; text.textContent = label; name.append(fillSpan, text);
  return [name, cell(String(count), "num")];
}
const SVG = "http://www.w3.org/2000/svg";
function svgEl(tag, attrs) {
  const el = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, v);
  return el;
}
function drawRate(series) {
  // ten-second bins: 60 bars over ten minutes
  const bins = [];
  for (let i = 0; i + 10 <= series.length; i += 10) bins.push(series.slice(i, i + 10).reduce((a, b) => a + b, 0) / 10);
  const svg = $("qps-chart"), w = 800, h = 180, top = 10, bottom = 20, left = 40;
  const max = Math.max(1, ...bins), barW = (w - left) / bins.length;
  svg.replaceChildren();
  for (const f of [0, 0.5, 1]) {
    const y = top + (h - top - bottom) * (1 - f);
    svg.append(svgEl("line", {x1: left, x2: w, y1: y, y2: y, stroke: "#263240"}));
    const t = svgEl("text", {x: 2, y: y + 3}); t.textContent = fmt(max * f); svg.append(t);
  }
  bins.forEach((v, i) => {
    const bh = (h - top - bottom) * v / max;
    svg.append(svgEl("rect", {x: left + i * barW + 1, y: h - bottom - bh, width: Math.max(barW - 2, 1), height: bh,
      fill: "#4fb3ff", opacity: 0.85, rx: 1}));
  });
  for (const [label, x, anchor] of [["-10 min", left, "start"], ["-5 min", (left + w) / 2, "middle"],
                                     ["now", w, "end"]]) {
    const t = svgEl("text", {x, y: h - 5, "text-anchor": anchor}); t.textContent = label; svg.append(t);
  }
}
function drawSources(sources) {
  const entries = Object.entries(sources).filter(([, n]) => n > 0), total = entries.reduce((a, [, n]) => a + n, 0);
  const svg = $("sources-chart"), legend = $("sources-legend");
  svg.replaceChildren(); legend.replaceChildren();
  let x = 0;
  for (const [source, n] of entries) {
    const w = 400 * n / total;
    svg.append(svgEl("rect", {x, y: 0, width: w, height: 28, fill: COLORS[source] || "#888"}));
    x += w;
    const item = document.createElement("div"), sw = document.createElement("span");
    const label = document.createElement("span");
    sw.className = "swatch"; sw.style.background = COLORS[source] || "#888";
    label.textContent = source + " " + n + " (" + pct(n / total) + ")";
    label.dataset.source = source; label.dataset.count = n;
    item.append(sw, label); legend.append(item);
  }
  if (!entries.length) legend.textContent = "no answers yet";
}
function render(s) {
  $("identity").textContent = s.identity || "";
  $("version").textContent = s.version ? "v" + s.version : "";
  $("uptime").textContent = duration(s.uptime_seconds);
  $("total-queries").textContent = String(s.queries_total);
  const last10 = s.qps.slice(-11, -1);
  $("qps-now").textContent = fmt(last10.reduce((a, b) => a + b, 0) / Math.max(last10.length, 1));
  $("cache-hit").textContent = pct(s.cache.hit_ratio);
  $("cache-sub").textContent = s.cache.entries == null ? "no cache"
    : fmt(s.cache.entries) + (s.cache.entries === 1 ? " entry, " : " entries, ") + size(s.cache.bytes || 0);
  $("blocked-share").textContent = pct(s.blocked_share);
  $("blocked-count").textContent = String(s.blocked);
  const up = s.upstreams.filter(u => u.up).length;
  $("upstreams-up").textContent = s.upstreams.length ? up + " / " + s.upstreams.length : "none";
  $("upstreams-sub").textContent = s.upstreams.length ? (up === s.upstreams.length ? "all healthy" : "degraded")
    : "authoritative only";
  drawRate(s.qps);
  drawSources(s.answers_by_source);
  fill("rcodes", Object.entries(s.rcodes).sort((a, b) => b[1] - a[1])
    .map(([rc, n]) => [cell(rc, "rc-" + rc), cell(String(n), "num")]), 2, "no answers yet");
  fill("upstreams", s.upstreams.map(u => {
    const health = cell(u.up ? "up" : "down"), dot = document.createElement("span");
    dot.className = "dot"; dot.style.background = u.up ? "var(--ok)" : "var(--bad)"; health.prepend(dot);
    return [cell(u.name), health, cell(u.rtt_ms == null ? "–" : u.rtt_ms.toFixed(1) + " ms", "num"),
      cell(String(u.answered), "num"), cell(String(u.failures), "num")];
  }), 5, "no upstreams: authoritative only");
  const maxName = s.top_names.length ? s.top_names[0].count : 0;
  fill("top-names", s.top_names.map(r => barRow(r.name, r.count, maxName)), 2, "no queries yet");
  const maxClient = s.top_clients.length ? s.top_clients[0].count : 0;
  fill("top-clients", s.top_clients.map(r => barRow(r.client, r.count, maxClient)), 2, "no queries yet");
  fill("recent", s.recent.map(q => [cell(duration(q.age_seconds)), cell(q.client), cell(q.qname), cell(q.qtype),
    cell(q.transport), cell(q.rcode, "rc-" + q.rcode), cell(q.source, "src-" + q.source),
    cell(q.latency_ms.toFixed(2) + " ms", "num")]), 8, "no queries yet");
}
async function poll() {
  try {
    const response = await fetch("/api/stats", {cache: "no-store"});
    if (!response.ok) throw new Error(response.status);
    render(await response.json());
    $("live").textContent = "live"; $("live").classList.remove("stale");
    document.body.dataset.updated = String(Date.now());
  } catch (e) {
    $("live").textContent = "no answer from the appliance"; $("live").classList.add("stale");
  }
  setTimeout(poll, 2000);
}
poll();
</script>
</body>
</html>
""".encode()
