// Sinkron's dashboard: polls the node's public JSON API and draws what it answers.
//
// Every name shown here (locks, client ids, queues, keys) comes from clients, so nothing is
// ever written as HTML: elements are built with createElement and text goes through
// textContent, which the browser never parses.
"use strict";

const POLL_MS = 2000;
const SPARK_POINTS = 60;
const SVG_NS = "http://www.w3.org/2000/svg";

// A token given as #token=… is kept for this tab and taken out of the address bar.
(function takeTokenFromHash() {
  const match = /(?:^#|&)token=([^&]+)/.exec(location.hash);
  if (match) {
    sessionStorage.setItem("sinkronToken", decodeURIComponent(match[1]));
    history.replaceState(null, "", location.pathname + location.search);
  }
})();

function token() {
  return sessionStorage.getItem("sinkronToken");
}

class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

async function api(path, asText) {
  const headers = {};
  const t = token();
  if (t) headers.Authorization = "Bearer " + t;
  const resp = await fetch(path, { headers, cache: "no-store" });
  if (!resp.ok) {
    let body = {};
    try { body = await resp.json(); } catch (_) { /* not JSON */ }
    throw new ApiError(resp.status, body.error || "http_" + resp.status, body.message || resp.statusText);
  }
  return asText ? resp.text() : resp.json();
}

// ---- Small DOM helpers: text only, never markup -------------------------------------

function el(tag, text, cls) {
  const e = document.createElement(tag);
  if (text !== undefined && text !== null) e.textContent = String(text);
  if (cls) e.className = cls;
  return e;
}

function svg(tag, attrs, text) {
  const e = document.createElementNS(SVG_NS, tag);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, String(v));
  if (text !== undefined) e.textContent = String(text);
  return e;
}

function row(cells) {
  const tr = document.createElement("tr");
  for (const c of cells) {
    if (c instanceof Node) {
      const td = document.createElement("td");
      td.appendChild(c);
      tr.appendChild(td);
    } else {
      tr.appendChild(el("td", c, typeof c === "number" ? "num" : ""));
    }
  }
  return tr;
}

function fill(tbody, rows, emptyText, columns) {
  tbody.replaceChildren(...rows);
  if (rows.length === 0) {
    const td = el("td", emptyText, "note");
    td.colSpan = columns;
    const tr = document.createElement("tr");
    tr.appendChild(td);
    tbody.appendChild(tr);
  }
}

function pill(text, cls) {
  return el("span", text, "pill" + (cls ? " " + cls : ""));
}

function group(children) {
  const span = document.createElement("span");
  span.append(...children);
  return span;
}

function secondsLeft(atMs) {
  const s = Math.max(0, Math.round((atMs - Date.now()) / 1000));
  return s >= 120 ? Math.round(s / 60) + " min" : s + " s";
}

// ---- Views ---------------------------------------------------------------------------

function renderCluster(overview) {
  const leaderStatus = overview.nodes.find((n) => n.cluster && n.cluster.role === "leader");
  const leaderLast = leaderStatus ? leaderStatus.cluster.last_log_index : null;
  const rows = overview.nodes.map((n) => {
    const c = n.cluster;
    if (!c) {
      return row([n.id, n.addr, pill("unreachable", "bad"), "", "", "", "", "", "", n.error || ""]);
    }
    const lag = leaderLast === null ? "?" : Math.max(0, leaderLast - c.applied_index);
    const health = n.ready ? pill("ready", "leader") : pill(n.ready_problem || "not ready", "warn");
    return row([
      n.id, n.addr,
      pill(c.role, c.role === "leader" ? "leader" : ""),
      c.term, c.leader ? c.leader.id : "none",
      c.commit_index, c.applied_index, c.last_log_index, lag, health,
    ]);
  });
  fill(document.querySelector("#nodes-table tbody"), rows, "no members", 10);
}

function renderLocks(list) {
  document.getElementById("last-fence").textContent = list.last_fence;
  const rows = list.locks.map((l) => {
    const holders = l.holders.map((h) =>
      pill(`${h.client_id} (${h.mode}, fence ${h.fence}, ${secondsLeft(h.expires_at_ms)})`));
    const waiters = l.waiters.map((w) => pill(`${w.client_id} (${w.mode})`, "warn"));
    return row([l.name, l.mode || "–", group(holders), group(waiters)]);
  });
  fill(document.querySelector("#locks-table tbody"), rows, "no lock is held or awaited", 4);
}

// Vertices on a circle, edges as arrows labelled with the lock; the edges of the most
// recent deadlock cycles are drawn red, and their victims outlined red.
function renderGraph(graph) {
  const area = document.getElementById("wait-for-graph");
  const recent = graph.deadlocks.slice(-3);
  const cycleEdges = new Set();
  const victims = new Set(recent.map((d) => d.victim));
  const edges = graph.edges.map((e) => ({ ...e, cycle: false }));
  for (const d of recent) {
    for (const e of d.cycle) {
      const key = `${e.client_id}\u0000${e.waits_for}\u0000${e.lock}`;
      if (!cycleEdges.has(key)) {
        cycleEdges.add(key);
        edges.push({ ...e, cycle: true });
      }
    }
  }
  const names = [...new Set(edges.flatMap((e) => [e.client_id, e.waits_for]))].slice(0, 40);
  const W = 640, H = 360, R = Math.min(W, H) / 2 - 50;
  const at = new Map(names.map((n, i) => {
    const a = (2 * Math.PI * i) / Math.max(names.length, 1) - Math.PI / 2;
    return [n, { x: W / 2 + R * Math.cos(a), y: H / 2 + R * Math.sin(a) }];
  }));
  const parts = [svg("defs", {})];
  const marker = svg("marker", { id: "arrow", viewBox: "0 0 10 10", refX: 22, refY: 5, markerWidth: 7, markerHeight: 7, orient: "auto" });
  marker.appendChild(svg("path", { d: "M0,0 L10,5 L0,10 z", fill: "#7a8699" }));
  parts[0].appendChild(marker);
  for (const e of edges) {
    const a = at.get(e.client_id), b = at.get(e.waits_for);
    if (!a || !b) continue;
    // A curve bent to the right of its direction, so that two clients waiting for each
    // other get two separate arcs and labels.
    const len = Math.hypot(b.x - a.x, b.y - a.y) || 1;
    const cx = (a.x + b.x) / 2 + ((b.y - a.y) / len) * 28, cy = (a.y + b.y) / 2 - ((b.x - a.x) / len) * 28;
    parts.push(svg("path", { d: `M${a.x},${a.y} Q${cx},${cy} ${b.x},${b.y}`, class: "edge" + (e.cycle ? " cycle" : ""), "marker-end": "url(#arrow)" }));
    parts.push(svg("text", { x: (a.x + 2 * cx + b.x) / 4, y: (a.y + 2 * cy + b.y) / 4 - 4, "text-anchor": "middle", class: "edge-label" }, e.lock));
  }
  for (const n of names) {
    const p = at.get(n);
    parts.push(svg("circle", { cx: p.x, cy: p.y, r: 16, class: "vertex" + (victims.has(n) ? " victim" : "") }));
    parts.push(svg("text", { x: p.x, y: p.y + 30, "text-anchor": "middle", class: "vertex-label" }, n));
  }
  if (names.length === 0) {
    parts.push(svg("text", { x: W / 2, y: H / 2, "text-anchor": "middle" }, "nobody waits"));
  }
  area.replaceChildren(...parts);

  const list = document.getElementById("deadlocks");
  const items = graph.deadlocks.slice().reverse().map((d) => {
    const li = el("li", null, "cycle-text");
    const path = d.cycle.map((e) => `${e.client_id} waits for ${e.waits_for} on ${e.lock}`).join(" → ");
    li.textContent = `${new Date(d.at_ms).toLocaleTimeString()}: ${d.victim} refused on ${d.lock}: ${path}`;
    return li;
  });
  list.replaceChildren(...items);
  if (items.length === 0) list.appendChild(el("li", "none refused", "note"));
}

function renderCache(overview) {
  const rows = overview.nodes.map((n) => {
    const c = n.cache;
    if (!c) return row([n.id, "–", "", "", "", "", "", "", pill("unreachable", "bad")]);
    const per = c.lines_per_state || {};
    return row([
      n.id, (c.hit_rate * 100).toFixed(1) + " %", c.hits, c.misses, `${c.size} / ${c.capacity}`,
      per.M || 0, per.E || 0, per.S || 0, c.lease_valid ? pill("valid", "leader") : pill("lapsed", "warn"),
    ]);
  });
  fill(document.querySelector("#cache-table tbody"), rows, "no members", 9);
}

// The key shown in the lookup; `?key=…` in the address sets it at load.
let lookedUpKey = new URLSearchParams(location.search).get("key") || "";
document.getElementById("cache-key").value = lookedUpKey;

async function renderLines() {
  const body = document.querySelector("#cache-lines tbody");
  if (!lookedUpKey) return;
  try {
    const answer = await api("/v1/cache/" + encodeURIComponent(lookedUpKey) + "/lines");
    const rows = answer.lines.map((l) => row([l.node, el("strong", l.state, "state-" + l.state)]));
    fill(body, rows, "no members", 2);
  } catch (e) {
    fill(body, [row([`${e.code || "error"}: ${e.message}`])], "", 1);
  }
}

function lookUpKey(event) {
  event.preventDefault();
  lookedUpKey = document.getElementById("cache-key").value;
  renderLines();
}

function renderQueues(list) {
  const rows = list.queues.map((q) => {
    const parts = q.partitions.map((p) => pill(`p${p.partition}: ${p.ready} / ${p.in_flight}`));
    return row([q.queue, q.ready, q.in_flight, q.dead_letters, group(parts)]);
  });
  if (list.truncated) rows.push(row(["…", "", "", "", "more queues than shown"]));
  fill(document.querySelector("#queues-table tbody"), rows, "no queue holds messages", 5);
}

const NODE_COLOURS = ["#2f6fde", "#1f8a4c", "#b7791f", "#9b2c8f", "#c8322b", "#0f766e", "#6b7280"];

// Each partition is an arc of the ring, coloured by its leader; a partition moving to
// other replicas is dashed. Labels name the partition and its replicas.
function renderRing(ring) {
  const area = document.getElementById("ring");
  const W = 640, H = 400, cx = 200, cy = 200, r = 150;
  const colour = new Map(ring.nodes.map((n, i) => [n, NODE_COLOURS[i % NODE_COLOURS.length]]));
  const parts = [];
  const full = 2 ** 32;
  for (const p of ring.partitions) {
    const a0 = (p.start / full) * 2 * Math.PI - Math.PI / 2;
    const a1 = ((p.end + 1) / full) * 2 * Math.PI - Math.PI / 2;
    const large = a1 - a0 > Math.PI ? 1 : 0;
    const x0 = cx + r * Math.cos(a0), y0 = cy + r * Math.sin(a0);
    const x1 = cx + r * Math.cos(a1), y1 = cy + r * Math.sin(a1);
    const arc = svg("path", {
      d: `M${x0},${y0} A${r},${r} 0 ${large} 1 ${x1},${y1}`,
      stroke: colour.get(p.leader) || "#c8322b", "stroke-width": 18, fill: "none",
      "stroke-dasharray": p.moving ? "6 4" : "none", class: "partition",
    });
    arc.appendChild(svg("title", {}, `partition ${p.partition}: leader ${p.leader || "none"}, replicas ${p.replicas.join(", ")}`));
    parts.push(arc);
    const mid = (a0 + a1) / 2;
    parts.push(svg("text", { x: cx + (r + 24) * Math.cos(mid), y: cy + (r + 24) * Math.sin(mid) + 4, "text-anchor": "middle" }, p.partition));
  }
  let y = 64;
  parts.push(svg("text", { x: 400, y: 20 }, `${ring.partition_count} partitions × ${ring.replication} replicas`));
  parts.push(svg("text", { x: 400, y: 38 }, `${ring.virtual_nodes} virtual nodes per node`));
  for (const n of ring.nodes) {
    const led = ring.partitions.filter((p) => p.leader === n).length;
    parts.push(svg("rect", { x: 400, y: y - 10, width: 12, height: 12, fill: colour.get(n) }));
    parts.push(svg("text", { x: 418, y }, `${n}: leads ${led}`));
    y += 20;
  }
  const moving = ring.partitions.filter((p) => p.moving).map((p) => p.partition);
  parts.push(svg("text", { x: 400, y: y + 10 }, moving.length ? `moving: ${moving.join(", ")}` : "no move in progress"));
  const leaderless = ring.partitions.filter((p) => !p.leader).length;
  if (leaderless) parts.push(svg("text", { x: 400, y: y + 30, fill: "#c8322b" }, `${leaderless} without a leader`));
  area.replaceChildren(...parts);

  const rows = ring.partitions.map((p) => row([
    p.partition,
    `${p.start} – ${p.end}`,
    p.leader ? pill(p.leader, "leader") : pill("none", "bad"),
    group(p.replicas.map((r) => pill(r))),
    p.moving ? pill("to " + p.target.join(", "), "warn") : "–",
  ]));
  fill(document.querySelector("#partitions-table tbody"), rows, "no partitions", 5);
}

// ---- Throughput: rates of the node's own counters ------------------------------------

const SERIES = [
  { title: "HTTP requests /s", metric: "sinkron_http_requests_total" },
  { title: "Queue messages sent /s", metric: "sinkron_queue_messages_total", label: 'op="sent"' },
  { title: "Queue messages acked /s", metric: "sinkron_queue_messages_total", label: 'op="acked"' },
  { title: "Cache hits /s", metric: "sinkron_cache_events_total", label: 'event="hits"' },
  { title: "Cache misses /s", metric: "sinkron_cache_events_total", label: 'event="misses"' },
  { title: "Lock requests /s", metric: "sinkron_lock_requests_total" },
];
const history = SERIES.map(() => []);
let previous = null;

function sumOf(text, metric, label) {
  let total = 0;
  for (const line of text.split("\n")) {
    if (!line.startsWith(metric) || (line[metric.length] !== "{" && line[metric.length] !== " ")) continue;
    if (label && !line.includes(label)) continue;
    const value = parseFloat(line.slice(line.lastIndexOf(" ") + 1));
    if (!Number.isNaN(value)) total += value;
  }
  return total;
}

function renderThroughput(text) {
  const now = Date.now();
  const totals = SERIES.map((s) => sumOf(text, s.metric, s.label));
  if (previous) {
    const seconds = Math.max((now - previous.at) / 1000, 0.001);
    totals.forEach((t, i) => {
      history[i].push(Math.max(0, (t - previous.totals[i]) / seconds));
      if (history[i].length > SPARK_POINTS) history[i].shift();
    });
  }
  previous = { at: now, totals };
  const boxes = SERIES.map((s, i) => {
    const box = el("div", null, "spark");
    const points = history[i];
    const last = points.length ? points[points.length - 1] : 0;
    box.appendChild(el("div", `${s.title}: ${last.toFixed(1)}`));
    const max = Math.max(1, ...points);
    const line = svg("svg", { viewBox: `0 0 ${SPARK_POINTS} 40`, preserveAspectRatio: "none" });
    const coords = points.map((v, x) => `${x},${40 - (v / max) * 38}`).join(" ");
    line.appendChild(svg("polyline", { points: coords }));
    box.appendChild(line);
    return box;
  });
  document.getElementById("sparklines").replaceChildren(...boxes);
}

// ---- Polling -------------------------------------------------------------------------

function showStatus(text, isError) {
  const s = document.getElementById("status");
  s.textContent = text;
  s.className = isError ? "error" : "";
}

async function refresh() {
  const jobs = [
    api("/v1/cluster/nodes").then((o) => { renderCluster(o); renderCache(o); }),
    api("/v1/locks").then(renderLocks),
    api("/v1/locks/wait-for-graph").then(renderGraph),
    api("/v1/queues").then(renderQueues),
    api("/v1/ring").then(renderRing),
    api("/metrics", true).then(renderThroughput),
    renderLines(),
    api("/health").then((h) => { document.getElementById("served-by").textContent = "served by " + h.node_id; }),
  ];
  const results = await Promise.allSettled(jobs);
  const failed = results.filter((r) => r.status === "rejected").map((r) => r.reason);
  if (failed.some((e) => e.status === 401 || e.status === 403)) {
    document.getElementById("token-form").hidden = false;
  }
  if (failed.length) {
    showStatus(failed.map((e) => `${e.code || "error"}: ${e.message}`).join("; "), true);
  } else {
    showStatus("updated " + new Date().toLocaleTimeString(), false);
  }
  document.body.dataset.refreshed = String(Number(document.body.dataset.refreshed || 0) + 1);
}

document.getElementById("token-form").addEventListener("submit", (event) => {
  event.preventDefault();
  sessionStorage.setItem("sinkronToken", document.getElementById("token-input").value);
  document.getElementById("token-form").hidden = true;
  refresh();
});
document.getElementById("cache-lookup").addEventListener("submit", lookUpKey);

refresh();
setInterval(refresh, POLL_MS);
