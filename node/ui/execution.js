// One execution: status and timing, parameters (secrets masked by the
// API), result as a collapsible JSON tree, live stdout/stderr, trigger and
// rule, parent and children, a workflow's tasks and graph; cancel,
// pause/resume and re-run for operators.

import { api, may } from './api.js';
import { h, fill, fact, table, statusBadge, when, duration, FINAL } from './dom.js';
import { drawGraph } from './graph.js';

/** Runners whose executions have children (tasks). */
const WORKFLOW_RUNNERS = new Set(['orquesta', 'action-chain']);

/** Longest string a result shows whole. */
const LONG_STRING = 64 * 1024;

/** Longest output kept on the page per stream; the rest is a download. */
const OUTPUT_KEEP = 256 * 1024;

/** A JSON value as nested <details>, open two levels deep. */
export function jsonTree(value, depth = 0) {
  if (value === null || typeof value !== 'object') {
    const cls = value === null ? 'null' : typeof value;
    if (typeof value === 'string' && value.length > LONG_STRING) {
      // A huge value (a whole output) would freeze the page: its tail.
      return h('span', { class: 'j-string' }, JSON.stringify(`…${value.slice(-LONG_STRING)}`),
        h('span', { class: 'muted' }, ` (the last ${LONG_STRING} of ${value.length} characters)`));
    }
    return h('span', { class: `j-${cls}` }, JSON.stringify(value));
  }
  const entries = Array.isArray(value) ? value.map((v, i) => [i, v]) : Object.entries(value);
  const open = Array.isArray(value) ? '[' : '{';
  const close = Array.isArray(value) ? ']' : '}';
  if (!entries.length) return h('span', {}, open + close);
  const details = h('details', { class: 'json', open: depth < 2 },
    h('summary', {}, `${open} ${entries.length} ${Array.isArray(value) ? 'items' : 'keys'} ${close}`),
    h('ul', {}, entries.map(([k, v]) => h('li', {},
      h('span', { class: 'j-key' }, Array.isArray(value) ? `${k}` : JSON.stringify(k)), ': ',
      jsonTree(v, depth + 1)))));
  return details;
}

/** Whether `a` is a later state of an execution than `b` (or `b` is none). */
function newer(a, b) {
  return !b || (a.log || []).length >= (b.log || []).length;
}

/** Renders execution `id` into `main`; returns its clean-up. */
export function executionView(main, me, id) {
  const streams = [];
  const status = h('div', { id: 'exec-status' });
  const actions = h('div', { class: 'actions', id: 'exec-actions' });
  const facts = h('dl', { class: 'facts', id: 'exec-facts' });
  const timing = h('ol', { class: 'timing', id: 'exec-timing' });
  const params = h('div', { id: 'exec-params' });
  const result = h('div', { id: 'exec-result', class: 'result' });
  const out = { stdout: h('pre', { id: 'stdout', class: 'output', tabindex: '0' }),
    stderr: h('pre', { id: 'stderr', class: 'output err', tabindex: '0' }) };
  const outNote = h('p', { id: 'output-note', class: 'muted' });
  const tasks = h('section', { id: 'exec-tasks', hidden: true });
  const message = h('p', { id: 'exec-message', role: 'status', class: 'muted' });
  const title = h('h1', {}, 'Execution ', h('code', {}, id));
  fill(main, h('p', {}, h('a', { href: '#/' }, '← History')), title,
    h('div', { class: 'title-row' }, status, actions), message,
    h('div', { class: 'cols' },
      h('section', {}, h('h2', {}, 'Details'), facts, h('h3', {}, 'Timing'), timing),
      h('section', {}, h('h2', {}, 'Parameters'), params)),
    tasks,
    h('section', {}, h('h2', {}, 'Output'), outNote,
      h('h3', {}, 'stdout'), out.stdout, h('h3', {}, 'stderr'), out.stderr),
    h('section', {}, h('h2', {}, 'Result'), result));

  let ex = null;
  const children = new Map();
  const outLen = { stdout: 0, stderr: 0 };

  function render() {
    fill(status, statusBadge(ex.status), ' ', h('span', { class: 'muted' }, duration(ex.elapsed_seconds)));
    fill(facts,
      fact('Action', h('code', {}, ex.action.ref)),
      fact('Runner', ex.runner?.name),
      fact('User', ex.context?.user),
      fact('Started', when(ex.start_timestamp)),
      fact('Ended', when(ex.end_timestamp)),
      ex.rule && fact('Rule', h('a', { href: `#/rules/${encodeURIComponent(ex.rule.ref)}` }, ex.rule.ref)),
      ex.trigger_instance && fact('Trigger instance',
        h('span', {}, h('a', { href: `#/triggerinstances/${encodeURIComponent(ex.trigger_instance.id)}` }, h('code', {}, ex.trigger_instance.id)),
          ` (${ex.trigger_instance.trigger}, ${when(ex.trigger_instance.occurrence_time)})`)),
      ex.parent && fact('Parent', h('a', { href: `#/executions/${ex.parent}` }, ex.parent)),
      (ex.children || []).length > 0 && fact('Children', String(ex.children.length)));
    const log = ex.log || [];
    fill(timing, log.map((entry, i) => {
      const next = log[i + 1] ? Date.parse(log[i + 1].timestamp) : (FINAL.has(entry.status) ? null : Date.now());
      const spent = next ? (next - Date.parse(entry.timestamp)) / 1000 : null;
      return h('li', {}, statusBadge(entry.status), ` at ${when(entry.timestamp)}`,
        spent !== null ? h('span', { class: 'muted' }, ` for ${duration(spent)}`) : '');
    }));
    fill(params, Object.keys(ex.parameters || {}).length
      ? h('table', { class: 'kv' }, Object.entries(ex.parameters).map(([k, v]) =>
        h('tr', {}, h('th', { scope: 'row' }, k), h('td', {}, jsonTree(v)))))
      : h('p', { class: 'muted' }, 'none'));
    fill(result, ex.result === undefined || ex.result === null
      ? h('p', { class: 'muted' }, FINAL.has(ex.status) ? 'none' : 'not yet')
      : jsonTree(ex.result));
    renderActions();
    renderTasks();
  }

  function renderActions() {
    if (!may(me, 'operator')) return fill(actions);
    const workflow = WORKFLOW_RUNNERS.has(ex.runner?.name);
    const button = (label, idAttr, fn) => h('button', { type: 'button', id: idAttr, onclick: fn }, label);
    return fill(actions,
      !FINAL.has(ex.status) && ex.status !== 'canceling'
        && button('Cancel', 'cancel', () => act(() => api(`executions/${id}`, { method: 'DELETE' }), 'Cancel requested.')),
      workflow && ex.status === 'running'
        && button('Pause', 'pause', () => act(() => api(`executions/${id}`, { method: 'PUT', body: { status: 'pausing' } }), 'Pause requested.')),
      workflow && (ex.status === 'paused' || ex.status === 'pausing')
        && button('Resume', 'resume', () => act(() => api(`executions/${id}`, { method: 'PUT', body: { status: 'resuming' } }), 'Resume requested.')),
      button('Re-run…', 'rerun', openReRun));
  }

  async function act(call, done) {
    message.textContent = '';
    try {
      await call();
      message.textContent = done;
    } catch (e) {
      message.textContent = e.message;
    }
  }

  function openReRun() {
    if (document.getElementById('rerun-form')) return;
    const shown = ex.parameters || {};
    const text = h('textarea', { id: 'rerun-params', rows: 8, cols: 60, spellcheck: 'false' });
    text.value = JSON.stringify(shown, null, 2);
    const failedTasks = [...children.values()]
      .filter((c) => c.status === 'failed' && c.context?.orquesta?.task_name)
      .map((c) => c.context.orquesta.task_name);
    const fromFailed = failedTasks.length
      ? h('label', {}, h('input', { type: 'checkbox', id: 'rerun-failed' }), ` from the failed tasks (${failedTasks.join(', ')})`)
      : null;
    const error = h('p', { class: 'error', id: 'rerun-error', role: 'alert' });
    const form = h('form', { id: 'rerun-form', class: 'rerun' },
      h('label', { for: 'rerun-params' }, 'Parameters (JSON; masked secrets are kept unless changed)'),
      text, fromFailed, error,
      h('button', { type: 'submit' }, 'Run again'),
      h('button', { type: 'button', onclick: () => form.remove() }, 'Close'));
    form.addEventListener('submit', async (ev) => {
      ev.preventDefault();
      let given;
      try {
        given = JSON.parse(text.value);
        if (!given || typeof given !== 'object' || Array.isArray(given)) throw new Error('must be a JSON object');
      } catch (e) {
        error.textContent = `Parameters: ${e.message}`;
        return;
      }
      const changed = Object.fromEntries(Object.entries(given)
        .filter(([k, v]) => JSON.stringify(v) !== JSON.stringify(shown[k])));
      const body = { parameters: changed };
      if (fromFailed && document.getElementById('rerun-failed').checked) body.tasks = failedTasks;
      try {
        const again = await api(`executions/${id}/re_run`, { method: 'POST', body });
        location.hash = `#/executions/${again.id}`;
      } catch (e) {
        error.textContent = e.message;
      }
    });
    actions.after(form);
    text.focus();
  }

  let graph = null;
  let graphAsked = null;
  async function renderTasks() {
    if (ex.runner?.name !== 'orquesta') return;
    tasks.hidden = false;
    if (!graphAsked) {
      tasks.append(h('h2', {}, 'Tasks'), h('div', { id: 'task-graph', class: 'graph' }),
        table(['Task', 'Status', 'Started', 'Took', 'Execution'], h('tbody', { id: 'task-rows' }), { class: 'tasks stack' }));
      graphAsked = api(`executions/${encodeURIComponent(id)}/workflow`)
        .then((g) => { graph = g; }, (e) => { graph = { error: e.message }; });
    }
    await graphAsked;
    const byTask = new Map();
    for (const c of [...children.values()].sort((a, b) => a.start_timestamp.localeCompare(b.start_timestamp))) {
      const name = c.context?.orquesta?.task_name;
      if (name) byTask.set(name, c);
    }
    const box = document.getElementById('task-graph');
    if (graph?.error) fill(box, h('p', { class: 'muted' }, `No graph: ${graph.error}`));
    else if (graph) drawGraph(box, graph, byTask);
    fill(document.getElementById('task-rows'), [...children.values()].map((c) => h('tr', { dataset: { task: c.context?.orquesta?.task_name || '' } },
      h('td', {}, c.context?.orquesta?.task_name || c.action.ref),
      h('td', {}, statusBadge(c.status)),
      h('td', {}, when(c.start_timestamp)),
      h('td', {}, duration(c.elapsed_seconds)),
      h('td', {}, h('a', { href: `#/executions/${c.id}` }, c.id)))));
  }

  function followOutput() {
    const src = new EventSource(`/stream/v1/executions/${encodeURIComponent(id)}/output`);
    streams.push(src);
    src.addEventListener('st2.execution.output__create', (ev) => {
      const chunk = JSON.parse(ev.data);
      const pre = out[chunk.output_type] || out.stdout;
      const kind = chunk.output_type === 'stderr' ? 'stderr' : 'stdout';
      outLen[kind] += chunk.data.length;
      let text = pre.textContent + chunk.data;
      if (text.length > OUTPUT_KEEP) {
        text = text.slice(text.length - OUTPUT_KEEP);
        fill(outNote, `The output is long: the last ${OUTPUT_KEEP / 1024} KiB of each stream are shown. `,
          h('a', { href: `/api/v1/executions/${encodeURIComponent(id)}/output`, download: `${id}.txt` }, 'Download all of it'));
      }
      pre.textContent = text;
      if (pre.scrollHeight - pre.scrollTop - pre.clientHeight < 80) pre.scrollTop = pre.scrollHeight;
    });
    src.addEventListener('EOF', () => src.close());
  }

  function followChanges() {
    const src = new EventSource('/api/v1/stream?events=st2.execution__create,st2.execution__update');
    streams.push(src);
    const onEvent = (ev) => {
      const got = JSON.parse(ev.data);
      if (got.id === id && newer(got, ex)) {
        const ended = FINAL.has(got.status) && !FINAL.has(ex?.status);
        ex = got;
        render();
        if (ended) reload().catch(() => {});
      } else if (got.parent === id && newer(got, children.get(got.id))) {
        children.set(got.id, got);
        if (ex) renderTasks();
      }
    };
    src.addEventListener('st2.execution__create', onEvent);
    src.addEventListener('st2.execution__update', onEvent);
    let opened = false;
    src.onopen = () => {
      if (opened) reload().catch(() => {});
      opened = true;
    };
  }

  /** Reads the execution and its children afresh (at start, after the
   * stream reconnects, and when it ends, so no missed event lingers). */
  async function reload() {
    const got = await api(`executions/${encodeURIComponent(id)}`);
    // A stream event may have brought a newer state meanwhile.
    if (newer(got, ex)) ex = got;
    // A running workflow's record may not list its newest children yet.
    if ((got.children || []).length || WORKFLOW_RUNNERS.has(got.runner?.name)) {
      const kids = await api(`executions?parent=${encodeURIComponent(id)}&limit=-1&exclude_attributes=result`).catch(() => []);
      for (const c of kids) if (newer(c, children.get(c.id))) children.set(c.id, c);
    }
    render();
  }

  followChanges();
  followOutput();
  reload().catch((e) => { message.textContent = e.message; });
  // Events are the fast path; while it runs, a slow re-read every few
  // seconds makes sure nothing missed lingers (a reconnect, a child that
  // finished before the page opened).
  const sweep = setInterval(() => {
    if (ex && !FINAL.has(ex.status)) reload().catch(() => {});
  }, 3000);
  return () => {
    clearInterval(sweep);
    streams.forEach((s) => s.close());
  };
}
