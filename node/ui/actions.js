// Actions: browse by pack, search, and run one from a form generated from
// its parameter schema.

import { api, may } from './api.js';
import { h, fill } from './dom.js';
import { actionFields, buildFields } from './forms.js';

/** The list of actions, by pack, with a search box. */
export function actionsView(main) {
  const search = h('input', { id: 'action-search', type: 'search', placeholder: 'core.local, http…' });
  const list = h('div', { id: 'action-list' });
  fill(main, h('h1', {}, 'Actions'),
    h('div', { class: 'field' }, h('label', { for: 'action-search' }, 'Search'), search), list);
  let all = [];
  const show = () => {
    const q = search.value.trim().toLowerCase();
    const byPack = new Map();
    for (const a of all) {
      if (q && !`${a.ref} ${a.description || ''}`.toLowerCase().includes(q)) continue;
      if (!byPack.has(a.pack)) byPack.set(a.pack, []);
      byPack.get(a.pack).push(a);
    }
    fill(list, [...byPack.entries()].sort(([a], [b]) => a.localeCompare(b)).map(([pack, actions]) =>
      h('section', {}, h('h2', {}, pack), h('ul', { class: 'plain' }, actions.map((a) =>
        h('li', {}, h('a', { href: `#/actions/${a.ref}` }, a.ref), ' ',
          h('span', { class: 'muted' }, a.description || '')))))));
  };
  search.addEventListener('input', show);
  api('actions?limit=-1&exclude_attributes=parameters').then((got) => { all = got; show(); })
    .catch((e) => fill(list, h('p', { class: 'error' }, e.message)));
  return () => {};
}

/** One action and its run form (for those who may run it). */
export function actionView(main, me, ref) {
  const body = h('div', {});
  fill(main, h('p', {}, h('a', { href: '#/actions' }, '← Actions')), h('h1', {}, h('code', {}, ref)), body);
  api(`actions/${encodeURIComponent(ref)}`).then(async (action) => {
    // The runner's parameters, overridden key by key by the action's.
    const runner = await api(`runnertypes/${encodeURIComponent(action.runner_type)}`).catch(() => ({}));
    const merged = { ...(runner.runner_parameters || {}) };
    for (const [name, spec] of Object.entries(action.parameters || {})) {
      merged[name] = { ...(merged[name] || {}), ...spec };
    }
    const fields = buildFields(actionFields(merged), 'p');
    const error = h('p', { class: 'error', id: 'run-error', role: 'alert' });
    const run = may(me, 'operator') && h('button', { type: 'submit', id: 'run' }, 'Run');
    const form = h('form', { id: 'run-form', class: 'run-form', 'aria-label': `Run ${ref}` },
      fields.element, run, error);
    form.addEventListener('submit', async (ev) => {
      ev.preventDefault();
      if (!run) return;
      const { values, ok } = fields.read();
      if (!ok) {
        error.textContent = 'Fix the fields marked above; nothing was sent.';
        return;
      }
      error.textContent = '';
      run.disabled = true;
      try {
        const ex = await api('executions', { method: 'POST', body: { action: ref, parameters: values } });
        location.hash = `#/executions/${ex.id}`;
      } catch (e) {
        error.textContent = e.message;
      } finally {
        run.disabled = false;
      }
    });
    fill(body, h('p', {}, action.description || ''),
      h('p', { class: 'muted' }, `runner ${action.runner_type}${action.enabled === false ? ' · disabled' : ''}`),
      h('h2', {}, may(me, 'operator') ? 'Run' : 'Parameters'), form);
  }).catch((e) => fill(body, h('p', { class: 'error' }, e.message)));
  return () => {};
}
