// Small DOM helpers shared by the views: element builder, status labels,
// time formatting.

/** Builds an element: h('a', {href: '#'}, 'text', child). */
export function h(tag, attrs = {}, ...children) {
  const svg = tag.startsWith('svg:');
  const el = svg
    ? document.createElementNS('http://www.w3.org/2000/svg', tag.slice(4))
    : document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith('on')) el.addEventListener(k.slice(2), v);
    else if (k === 'dataset') Object.assign(el.dataset, v);
    else if (!svg && k in el && typeof v !== 'string') el[k] = v;
    else el.setAttribute(k, v === true ? '' : v);
  }
  for (const c of children.flat()) {
    if (c === undefined || c === null || c === false) continue;
    el.append(c instanceof Node ? c : String(c));
  }
  return el;
}

/** Symbol and word per status, so status never depends on colour. */
const STATUS = {
  requested: ['○', 'requested'],
  scheduled: ['◔', 'scheduled'],
  delayed: ['◷', 'delayed'],
  policy_delayed: ['◷', 'delayed by policy'],
  running: ['▶', 'running'],
  pending: ['⏸', 'pending'],
  pausing: ['⏸', 'pausing'],
  paused: ['⏸', 'paused'],
  resuming: ['▶', 'resuming'],
  succeeded: ['✔', 'succeeded'],
  failed: ['✖', 'failed'],
  timeout: ['⌛', 'timed out'],
  abandoned: ['✖', 'abandoned'],
  canceling: ['■', 'canceling'],
  canceled: ['■', 'canceled'],
};

/** A status badge: icon and word, coloured as a bonus. */
export function statusBadge(status) {
  const [icon, word] = STATUS[status] || ['?', status || 'unknown'];
  return h('span', { class: `status st-${status}`, dataset: { status } },
    h('span', { 'aria-hidden': 'true' }, icon), ' ', word);
}

export const STATUSES = Object.keys(STATUS);

export const FINAL = new Set(['succeeded', 'failed', 'timeout', 'abandoned', 'canceled']);

/** "2026-12-06 01:02:03" in the browser's zone. */
export function when(ts) {
  if (!ts) return '';
  const d = new Date(ts);
  if (Number.isNaN(d.getTime())) return ts;
  const p = (n) => String(n).padStart(2, '0');
  return `${d.getFullYear()}-${p(d.getMonth() + 1)}-${p(d.getDate())} ${p(d.getHours())}:${p(d.getMinutes())}:${p(d.getSeconds())}`;
}

/** "1.2 s", "3 min 4 s". */
export function duration(seconds) {
  if (seconds === undefined || seconds === null) return '';
  if (seconds < 60) return `${seconds.toFixed(seconds < 10 ? 2 : 1)} s`;
  const m = Math.floor(seconds / 60);
  return `${m} min ${Math.round(seconds % 60)} s`;
}

/** Replaces the children of `el`. */
export function fill(el, ...children) {
  el.replaceChildren();
  for (const c of children.flat()) if (c) el.append(c);
  return el;
}

/** A `<dt>`/`<dd>` pair for a `<dl class="facts">`; a dash when empty. */
export function fact(label, value) {
  return [h('dt', {}, label), h('dd', {}, value || h('span', { class: 'muted' }, '—'))];
}

/** A table in its scrolling wrapper: column titles, then rows (`<tr>`s). */
export function table(columns, rows, attrs = {}) {
  return h('div', { class: 'table-wrap' }, h('table', attrs,
    h('thead', {}, h('tr', {}, columns.map((c) => h('th', { scope: 'col' }, c)))), rows));
}

/** A key name as a path under `/keys/`, each part escaped. */
export function keyPath(name) {
  return name.split('/').map(encodeURIComponent).join('/');
}
