// Packs: the list, one pack's page (its metadata, actions and rules), and
// registering packs from the node's pack directories (admins).

import { api, may } from './api.js';
import { h, fill, fact, table } from './dom.js';

/**
 * A form that registers `packs` (all when none are named); admins only.
 * `fixed` names the one pack the form registers.
 */
function registerForm(me, fixed) {
  if (!may(me, 'admin')) return null;
  const names = fixed ? null : h('input', { id: 'register-packs', name: 'packs', placeholder: 'all', size: 24 });
  const message = h('p', { id: 'register-message', role: 'status', class: 'muted' });
  const submit = h('button', { type: 'submit', id: 'register' }, fixed ? `Register ${fixed} again` : 'Register');
  const form = h('form', { id: 'register-form', class: 'inline-form', 'aria-label': 'Register packs' },
    names && h('div', { class: 'field' }, h('label', { for: 'register-packs' }, 'Packs to register (comma-separated; empty for all)'), names),
    submit, message);
  form.addEventListener('submit', async (ev) => {
    ev.preventDefault();
    const packs = fixed ? [fixed] : names.value.split(',').map((p) => p.trim()).filter(Boolean);
    submit.disabled = true;
    message.textContent = 'Registering…';
    try {
      const got = await api('packs/register', { method: 'POST', body: { packs } });
      message.textContent = `Registered ${got.packs} pack(s): ${got.actions} actions, ${got.rules} rules`
        + `${(got.changes || []).length ? `; ${got.changes.length} changed` : ''}.`;
    } catch (e) {
      message.textContent = e.message;
    } finally {
      submit.disabled = false;
    }
  });
  return form;
}

export function packsView(main, me) {
  const body = h('tbody', { id: 'pack-rows' });
  const message = h('p', { class: 'muted', role: 'status' });
  fill(main, h('h1', {}, 'Packs'), registerForm(me), message,
    table(['Pack', 'Version', 'Description'], body, { class: 'stack' }));
  api('packs?limit=-1').then((packs) => fill(body, packs.map((p) => h('tr', { dataset: { pack: p.ref } },
    h('td', {}, h('a', { href: `#/packs/${encodeURIComponent(p.ref)}` }, p.ref)),
    h('td', {}, p.version || ''),
    h('td', {}, p.description || '')))))
    .catch((e) => { message.textContent = e.message; });
  return () => {};
}

export function packView(main, me, ref) {
  const body = h('div', { id: 'pack-detail' });
  fill(main, h('p', {}, h('a', { href: '#/packs' }, '← Packs')), h('h1', {}, 'Pack ', h('code', {}, ref)), body);
  const q = `pack=${encodeURIComponent(ref)}&limit=-1`;
  Promise.all([api(`packs/${encodeURIComponent(ref)}`), api(`actions?${q}&exclude_attributes=parameters`), api(`rules?${q}`)])
    .then(([pack, actions, rules]) => fill(body,
      h('dl', { class: 'facts' },
        fact('Name', pack.name),
        fact('Version', pack.version),
        fact('Description', pack.description),
        fact('Author', pack.author && `${pack.author}${pack.email ? ` <${pack.email}>` : ''}`),
        fact('Keywords', (pack.keywords || []).join(', ')),
        fact('Python', (pack.python_versions || []).join(', '))),
      registerForm(me, ref),
      h('h2', {}, `Actions (${actions.length})`),
      h('ul', { class: 'plain', id: 'pack-actions' }, actions.map((a) => h('li', {},
        h('a', { href: `#/actions/${a.ref}` }, a.ref), ' ', h('span', { class: 'muted' }, a.description || '')))),
      h('h2', {}, `Rules (${rules.length})`),
      h('ul', { class: 'plain', id: 'pack-rules' }, rules.map((r) => h('li', {},
        h('a', { href: `#/rules/${encodeURIComponent(r.ref)}` }, r.ref), ' ',
        h('span', { class: 'muted' }, r.enabled ? 'enabled' : 'disabled')))),
    ))
    .catch((e) => fill(body, h('p', { class: 'error' }, e.message)));
  return () => {};
}
