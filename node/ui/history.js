// The history: executions newest first, filters, infinite scroll, and live
// updates from the event stream.

import { api, may } from './api.js';
import { h, fill, statusBadge, when, duration, STATUSES } from './dom.js';

const PAGE = 50;
const FILTERS = [
  ['action', 'Action', 'text'],
  ['status', 'Status', 'select'],
  ['rule', 'Rule', 'text'],
  ['trigger', 'Trigger', 'text'],
  ['user', 'User', 'text'],
  ['timestamp_gt', 'From', 'datetime-local'],
  ['timestamp_lt', 'Until', 'datetime-local'],
];

/** Renders the history into `main`; returns its clean-up. */
export function historyView(main, me) {
  const params = new URLSearchParams(location.hash.split('?')[1] || '');
  const controls = FILTERS.map(([name, label, type]) => {
    const id = `f-${name}`;
    const input = type === 'select'
      ? h('select', { id, name }, h('option', { value: '' }, 'any'),
        STATUSES.map((s) => h('option', { value: s }, s)))
      : h('input', { id, name, type, size: 14 });
    input.value = params.get(name) || '';
    return h('div', { class: 'field' }, h('label', { for: id }, label), input);
  });
  const form = h('form', { class: 'filters', role: 'search', 'aria-label': 'Filter executions' },
    controls, h('button', { type: 'submit' }, 'Filter'),
    h('button', { type: 'button', onclick: () => { location.hash = '#/'; } }, 'Clear'));
  form.addEventListener('submit', (ev) => {
    ev.preventDefault();
    const q = new URLSearchParams();
    for (const el of form.elements) if (el.name && el.value) q.set(el.name, el.value);
    location.hash = `#/?${q}`;
  });
  const body = h('tbody', { id: 'history-rows' });
  const table = h('table', { class: 'history', 'aria-describedby': 'history-count' },
    h('thead', {}, h('tr', {},
      ['Status', 'Action', 'Started', 'Took', 'User', 'Cause', 'Id'].map((c) => h('th', { scope: 'col' }, c)))),
    body);
  const count = h('p', { id: 'history-count', class: 'muted', 'aria-live': 'polite' });
  const sentinel = h('div', { class: 'sentinel', 'aria-hidden': 'true' });
  const live = h('span', { id: 'live', class: 'live' }, 'connecting…');
  fill(main,
    h('div', { class: 'title-row' }, h('h1', {}, 'History'), live),
    form, count, h('div', { class: 'table-wrap' }, table), sentinel);

  const rows = new Map();
  let total = 0;
  let done = false;
  let loading = false;
  const filter = Object.fromEntries(FILTERS.map(([n]) => [n, params.get(n) || '']));

  function query(offset) {
    const q = new URLSearchParams({ limit: PAGE, offset, parent: 'null', exclude_attributes: 'result' });
    for (const [k, v] of Object.entries(filter)) {
      if (!v) continue;
      q.set(k, k.startsWith('timestamp') ? new Date(v).toISOString() : v);
    }
    return `executions?${q}`;
  }

  async function more() {
    if (loading || done) return;
    loading = true;
    try {
      const page = await api(query(rows.size));
      total = page.total ?? total;
      for (const ex of page) place(ex, false);
      if (page.length < PAGE) done = true;
      count.textContent = `${rows.size} of ${Math.max(total, rows.size)} shown`;
      if (!performance.getEntriesByName('history-rendered').length) performance.mark('history-rendered');
    } catch (e) {
      count.textContent = `Could not load the history: ${e.message}`;
    } finally {
      loading = false;
    }
    if (!done && sentinel.getBoundingClientRect().top < innerHeight + 400) more();
  }

  function matches(ex) {
    if (ex.parent) return false;
    if (filter.action && ex.action?.ref !== filter.action) return false;
    if (filter.status && ex.status !== filter.status) return false;
    if (filter.rule && ex.rule?.ref !== filter.rule && ex.rule?.name !== filter.rule) return false;
    if (filter.trigger && ex.trigger_instance?.trigger !== filter.trigger) return false;
    if (filter.user && ex.context?.user !== filter.user) return false;
    const t = Date.parse(ex.start_timestamp);
    if (filter.timestamp_gt && !(t > Date.parse(filter.timestamp_gt))) return false;
    if (filter.timestamp_lt && !(t < Date.parse(filter.timestamp_lt))) return false;
    return true;
  }

  function row(ex) {
    const cause = ex.rule
      ? h('span', {}, 'rule ', h('code', {}, ex.rule.ref || ex.rule.name))
      : h('span', { class: 'muted' }, 'manual');
    return h('tr', { dataset: { id: ex.id, start: ex.start_timestamp, steps: (ex.log || []).length } },
      h('td', {}, statusBadge(ex.status)),
      h('td', {}, h('a', { href: `#/executions/${ex.id}` }, ex.action?.ref || '?')),
      h('td', {}, when(ex.start_timestamp)),
      h('td', {}, duration(ex.elapsed_seconds)),
      h('td', {}, ex.context?.user || ''),
      h('td', {}, cause),
      h('td', {}, h('code', { class: 'id' }, ex.id)));
  }

  /**
   * Puts `ex` in its place, newest first, replacing its old row. A live
   * event older than every row shown waits for its page instead.
   */
  function place(ex, live) {
    const old = rows.get(ex.id);
    // A page may bring an older state than the stream already showed.
    if (old && Number(old.dataset.steps) > (ex.log || []).length) return undefined;
    const fresh = row(ex);
    rows.set(ex.id, fresh);
    if (old) return old.replaceWith(fresh);
    let before = null;
    for (const r of body.children) {
      if (r.dataset.start < ex.start_timestamp) { before = r; break; }
    }
    if (live && !before && !done && body.children.length) {
      rows.delete(ex.id);
      return undefined;
    }
    body.insertBefore(fresh, before);
    return undefined;
  }

  const stream = new EventSource('/api/v1/stream?events=st2.execution__create,st2.execution__update');
  const onEvent = (ev) => {
    const ex = JSON.parse(ev.data);
    if (!matches(ex)) {
      const old = rows.get(ex.id);
      if (old) { old.remove(); rows.delete(ex.id); }
      return;
    }
    const added = !rows.has(ex.id);
    place(ex, true);
    if (added && rows.has(ex.id)) {
      total += 1;
      count.textContent = `${rows.size} of ${Math.max(total, rows.size)} shown`;
    }
  };
  stream.addEventListener('st2.execution__create', onEvent);
  stream.addEventListener('st2.execution__update', onEvent);
  // What changed before the stream (re)connected is read once more.
  stream.onopen = () => {
    live.textContent = '● live';
    live.dataset.state = 'open';
    api(query(0)).then((page) => page.forEach((ex) => place(ex, true))).catch(() => {});
  };
  stream.onerror = () => { live.textContent = 'reconnecting…'; live.dataset.state = 'error'; };

  const io = new IntersectionObserver((entries) => {
    if (entries.some((e) => e.isIntersecting)) more();
  }, { rootMargin: '400px' });
  io.observe(sentinel);
  more();
  if (!may(me, 'operator')) main.dataset.readonly = 'true';
  return () => { stream.close(); io.disconnect(); };
}
