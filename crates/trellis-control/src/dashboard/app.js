// The Trellis dashboard: reads the control plane's API every few seconds and draws the
// service graph, golden metrics with charts, routes, configuration history and a live tap.
// Plain DOM and SVG, no dependencies. Data is always inserted as text, never as HTML.
'use strict';

const REFRESH_MS = 5000;
const SVG = 'http://www.w3.org/2000/svg';
const $ = (id) => document.getElementById(id);

// The token arrives after `#token=` (browsers never send the fragment to a server); it is
// kept for this tab only and removed from the address bar.
let token = sessionStorage.getItem('trellis-token');
const fromHash = new URLSearchParams(location.hash.slice(1)).get('token');
if (fromHash) {
  token = fromHash;
  sessionStorage.setItem('trellis-token', token);
  history.replaceState(null, '', location.pathname);
}

async function api(path) {
  const response = await fetch(path, { headers: { Authorization: `Bearer ${token}` } });
  if (response.status === 401) { showLogin('That token was refused; paste another.'); throw new Error('unauthorized'); }
  const body = await response.json();
  if (!response.ok) throw new Error(body.error || `HTTP ${response.status}`);
  return body;
}

function el(tag, text, className) {
  const node = document.createElement(tag);
  if (text !== undefined && text !== null) node.textContent = String(text);
  if (className) node.className = className;
  return node;
}

function svg(tag, attrs, text) {
  const node = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, v);
  if (text !== undefined) node.textContent = text;
  return node;
}

const fmt = {
  rps: (v) => (v || 0).toFixed(1),
  pct: (v) => (v === null || v === undefined ? '–' : `${(v * 100).toFixed(2)}%`),
  ms: (v) => (v === null || v === undefined ? '–' : v < 10 ? `${v.toFixed(2)} ms` : `${v.toFixed(0)} ms`),
  health: (v) => (v === null || v === undefined ? '' : v >= 0.99 ? 'ok' : v >= 0.9 ? 'warn' : 'bad'),
  time: (ms) => new Date(ms).toLocaleTimeString(),
};

function setStatus(text) { $('status').textContent = text; }

function showLogin(message) {
  $('main').hidden = true;
  $('login').hidden = false;
  if (message) setStatus(message);
}

$('login-form').addEventListener('submit', (event) => {
  event.preventDefault();
  token = $('token').value.trim();
  sessionStorage.setItem('trellis-token', token);
  $('login').hidden = true;
  $('main').hidden = false;
  refresh();
});

function query() {
  const params = new URLSearchParams({ window: $('window').value });
  if ($('namespace').value) params.set('namespace', $('namespace').value);
  return params.toString();
}

// --- service graph ------------------------------------------------------------------------

// Columns by longest path from a caller nobody calls, so requests flow left to right.
function layout(nodes, edges) {
  const depth = new Map(nodes.map((n) => [n, 0]));
  for (let round = 0; round < nodes.length; round++) {
    let moved = false;
    for (const e of edges) {
      if (e.from === e.to) continue;
      const d = depth.get(e.from) + 1;
      if (d > depth.get(e.to) && d < nodes.length) { depth.set(e.to, d); moved = true; }
    }
    if (!moved) break;
  }
  const columns = [];
  for (const n of nodes) (columns[depth.get(n)] ||= []).push(n);
  return columns.filter(Boolean);
}

function drawGraph(stats, edges) {
  const graph = $('graph');
  graph.replaceChildren();
  const byService = new Map(stats.map((s) => [`${s.service}.${s.namespace}`, s]));
  const names = new Set([...byService.keys()]);
  for (const e of edges) { names.add(e.from); names.add(e.to); }
  const nodes = [...names].sort();
  if (nodes.length === 0) {
    graph.append(svg('text', { x: 20, y: 40 }, 'No services have reported yet.'));
    return;
  }
  const columns = layout(nodes, edges);
  const width = graph.clientWidth || 900;
  const height = Math.max(340, 70 * Math.max(...columns.map((c) => c.length)) + 40);
  graph.setAttribute('viewBox', `0 0 ${width} ${height}`);
  graph.style.height = `${height}px`;
  const box = { w: 210, h: 44 };
  const at = new Map();
  columns.forEach((column, ci) => {
    const x = 20 + ci * ((width - box.w - 40) / Math.max(1, columns.length - 1));
    column.forEach((name, ri) => {
      const y = 20 + (ri + 0.5) * ((height - 40) / column.length) - box.h / 2;
      at.set(name, { x, y });
    });
  });
  const defs = svg('defs');
  const marker = svg('marker', { id: 'arrow', viewBox: '0 0 10 10', refX: 10, refY: 5, markerWidth: 7, markerHeight: 7, orient: 'auto-start-reverse' });
  marker.append(svg('path', { d: 'M 0 0 L 10 5 L 0 10 z', fill: '#8a94a6' }));
  defs.append(marker);
  graph.append(defs);
  for (const e of edges) {
    const a = at.get(e.from), b = at.get(e.to);
    if (!a || !b) continue;
    const x1 = a.x + box.w, y1 = a.y + box.h / 2, x2 = b.x, y2 = b.y + box.h / 2;
    const g = svg('g', { class: `edge${e.mtls ? ' mtls' : ''}`, 'data-from': e.from, 'data-to': e.to });
    const mid = (x1 + x2) / 2;
    g.append(svg('path', { d: `M ${x1} ${y1} C ${mid} ${y1}, ${mid} ${y2}, ${x2} ${y2}`, 'marker-end': 'url(#arrow)' }));
    g.append(svg('text', { x: mid, y: (y1 + y2) / 2 - 4, 'text-anchor': 'middle' }, `${fmt.rps(e.rps)} rps · ${fmt.pct(e.successRate)}`));
    graph.append(g);
  }
  for (const name of nodes) {
    const p = at.get(name);
    const s = byService.get(name);
    const g = svg('g', { class: 'node', transform: `translate(${p.x},${p.y})`, 'data-service': name, 'data-rps': s ? s.rps : 0 });
    g.append(svg('rect', { width: box.w, height: box.h }));
    g.append(svg('text', { x: 8, y: 18 }, name));
    const sub = s ? `${fmt.rps(s.rps)} rps · ${fmt.pct(s.successRate)} · p99 ${fmt.ms(s.p99Ms)}` : 'not meshed';
    g.append(svg('text', { x: 8, y: 35, class: 'sub' }, sub));
    graph.append(g);
  }
}

// --- tables and charts --------------------------------------------------------------------

function spark(values, color, max) {
  const s = svg('svg', { class: 'spark', viewBox: '0 0 90 22', preserveAspectRatio: 'none' });
  const top = max ?? Math.max(1e-9, ...values.filter((v) => v !== null));
  const points = values
    .map((v, i) => (v === null ? null : `${(i / Math.max(1, values.length - 1)) * 90},${21 - (v / top) * 20}`))
    .filter(Boolean)
    .join(' ');
  s.append(svg('polyline', { points, stroke: color }));
  return s;
}

const histories = new Map();

async function loadHistory(service) {
  try {
    const body = await api(`/v1/stats/history?service=${encodeURIComponent(service)}&window=10m&step=15s`);
    histories.set(service, body.points);
  } catch (e) { /* the table still shows current values */ }
}

function drawServices(items) {
  const body = $('services').querySelector('tbody');
  body.replaceChildren();
  for (const s of items) {
    const id = `${s.service}.${s.namespace}`;
    const row = el('tr');
    row.dataset.service = id;
    row.append(el('td', s.service), el('td', s.namespace), el('td', s.meshed, 'num'),
      el('td', fmt.pct(s.successRate), `num ${fmt.health(s.successRate)}`), el('td', fmt.rps(s.rps), 'num'),
      el('td', fmt.ms(s.p50Ms), 'num'), el('td', fmt.ms(s.p95Ms), 'num'), el('td', fmt.ms(s.p99Ms), 'num'));
    const charts = el('td');
    const points = histories.get(id) || [];
    charts.append(spark(points.map((p) => p.rps), '#2e5bd8'), spark(points.map((p) => p.successRate), '#1f8a4c', 1),
      spark(points.map((p) => p.p99Ms), '#c98a00'));
    row.append(charts);
    body.append(row);
  }
  if (items.length === 0) {
    const row = el('tr');
    const cell = el('td', 'No traffic reported in this window (proxies report every 5 s).');
    cell.colSpan = 9;
    row.append(cell);
    body.append(row);
  }
}

function drawRoutes(items) {
  const body = $('routes').querySelector('tbody');
  body.replaceChildren();
  items.sort((a, b) => b.rps - a.rps);
  for (const r of items.slice(0, 50)) {
    const row = el('tr');
    row.append(el('td', `${r.service}.${r.namespace}`), el('td', r.route), el('td', fmt.pct(r.successRate), `num ${fmt.health(r.successRate)}`),
      el('td', fmt.rps(r.rps), 'num'), el('td', fmt.ms(r.p99Ms), 'num'));
    body.append(row);
  }
}

function updateNamespaces(items) {
  const select = $('namespace');
  const known = new Set([...select.options].map((o) => o.value));
  for (const ns of new Set(items.map((i) => i.namespace))) {
    if (ns && !known.has(ns)) select.append(new Option(ns, ns));
  }
}

// --- streams of JSON lines (the change feed and taps) --------------------------------------

// Calls `onBatch` with the objects of each chunk of a JSON-lines response, until it ends.
async function readJsonLines(response, onBatch) {
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let pending = '';
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    pending += decoder.decode(value, { stream: true });
    const lines = pending.split('\n');
    pending = lines.pop();
    onBatch(lines.map((l) => l.trim()).filter(Boolean).map((l) => JSON.parse(l)));
  }
}

// --- configuration history (the store's change feed) --------------------------------------

const changes = [];

async function followChanges() {
  try {
    // Start 50 revisions back rather than at the beginning: a store keeps every generation.
    // (Listing one small kind is a cheap way to learn the current revision.)
    const { revision } = await api('/v1/resources?kind=Tenant');
    const since = Math.max(0, (changes.length ? changes[changes.length - 1].revision : revision - 50));
    const response = await fetch(`/v1/watch?since=${since}`, { headers: { Authorization: `Bearer ${token}` } });
    if (!response.ok) return;
    await readJsonLines(response, (batch) => {
      changes.push(...batch);
      changes.splice(0, Math.max(0, changes.length - 200));
      drawChanges();
    });
  } catch (e) { /* retried below */ }
  setTimeout(followChanges, REFRESH_MS);
}

function drawChanges() {
  const body = $('history').querySelector('tbody');
  body.replaceChildren();
  for (const c of changes.slice(-25).reverse()) {
    const key = c.key || {};
    const row = el('tr');
    const what = c.deleted ? 'deleted' : c.generation === 1 ? 'created' : `generation ${c.generation}`;
    row.append(el('td', c.revision, 'num'), el('td', fmt.time(c.time_unix_ms || c.timeUnixMs || 0)), el('td', what),
      el('td', `${key.kind}/${key.namespace}/${key.name}`), el('td', c.actor));
    body.append(row);
  }
}

// --- live tap -------------------------------------------------------------------------------

let tapping = null;

async function startTap() {
  const params = new URLSearchParams({ duration: '10m' });
  if ($('tap-service').value.trim()) params.set('service', $('tap-service').value.trim());
  if ($('tap-path').value.trim()) params.set('pathPrefix', $('tap-path').value.trim());
  if ($('tap-status').value) params.set('minStatus', $('tap-status').value);
  tapping = new AbortController();
  $('tap-toggle').textContent = 'Stop tap';
  const body = $('tap').querySelector('tbody');
  try {
    const response = await fetch(`/v1/tap?${params}`, { headers: { Authorization: `Bearer ${token}` }, signal: tapping.signal });
    if (!response.ok) throw new Error((await response.json()).error);
    const who = (v) => v || 'plaintext';
    await readJsonLines(response, (events) => {
      for (const e of events) {
        const row = el('tr');
        row.append(el('td', e.time.slice(11, 23)), el('td', e.direction), el('td', e.service), el('td', e.method),
          el('td', e.path), el('td', e.grpcStatus !== undefined ? `${e.status} / grpc ${e.grpcStatus}` : e.status, e.status >= 500 ? 'bad' : ''),
          el('td', fmt.ms(e.latencyMs), 'num'), el('td', `${who(e.sourceIdentity)} → ${who(e.destinationIdentity)}`), el('td', e.proxy));
        body.prepend(row);
      }
      while (body.rows.length > 200) body.deleteRow(-1);
    });
  } catch (e) {
    if (e.name !== 'AbortError') setStatus(`tap: ${e.message}`);
  }
  tapping = null;
  $('tap-toggle').textContent = 'Start tap';
}

$('tap-form').addEventListener('submit', (event) => {
  event.preventDefault();
  if (tapping) tapping.abort(); else startTap();
});

// --- refresh loop -------------------------------------------------------------------------

let historyTick = 0;

async function refresh() {
  if (!token) { showLogin(); return; }
  try {
    const [stats, routes, edges] = await Promise.all([
      api(`/v1/stats?${query()}`),
      api(`/v1/stats?by=route&${query()}`),
      api(`/v1/edges?${query()}`),
    ]);
    $('main').hidden = false;
    $('login').hidden = true;
    updateNamespaces(stats.items);
    if (historyTick++ % 2 === 0) {
      await Promise.all(stats.items.map((s) => loadHistory(`${s.service}.${s.namespace}`)));
    }
    drawGraph(stats.items, edges.items);
    drawServices(stats.items);
    drawRoutes(routes.items);
    setStatus(`updated ${new Date().toLocaleTimeString()}`);
  } catch (e) {
    if (e.message !== 'unauthorized') setStatus(`cannot reach the control plane: ${e.message}`);
  }
}

$('window').addEventListener('change', refresh);
$('namespace').addEventListener('change', refresh);
if (token) { refresh(); followChanges(); } else { showLogin(); }
setInterval(() => { if (token) refresh(); }, REFRESH_MS);
