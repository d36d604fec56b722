// Rules: list with their trigger and action, enable/disable for operators.

import { api, may } from './api.js';
import { h, fill } from './dom.js';

export function rulesView(main, me) {
  const body = h('tbody', { id: 'rule-rows' });
  const message = h('p', { id: 'rules-message', role: 'status', class: 'muted' });
  fill(main, h('h1', {}, 'Rules'), message, h('div', { class: 'table-wrap' },
    h('table', {}, h('thead', {}, h('tr', {},
      ['Enabled', 'Rule', 'Trigger', 'Action', 'Criteria'].map((c) => h('th', { scope: 'col' }, c)))), body)));
  const row = (rule) => {
    const state = h('span', { class: 'state' }, rule.enabled ? 'enabled' : 'disabled');
    let control = state;
    if (may(me, 'operator')) {
      const box = h('input', { type: 'checkbox', role: 'switch', class: 'switch', id: `enable-${rule.ref}`,
        'aria-label': `${rule.ref} enabled` });
      box.checked = rule.enabled;
      box.addEventListener('change', async () => {
        box.disabled = true;
        try {
          const fresh = await api(`rules/${encodeURIComponent(rule.ref)}`);
          fresh.enabled = box.checked;
          const saved = await api(`rules/${encodeURIComponent(rule.ref)}`, { method: 'PUT', body: fresh });
          state.textContent = saved.enabled ? 'enabled' : 'disabled';
          message.textContent = `${rule.ref} ${saved.enabled ? 'enabled' : 'disabled'}.`;
        } catch (e) {
          box.checked = !box.checked;
          message.textContent = e.message;
        } finally {
          box.disabled = false;
        }
      });
      control = h('span', {}, box, ' ', state);
    }
    return h('tr', { dataset: { rule: rule.ref } },
      h('td', {}, control),
      h('td', {}, h('code', {}, rule.ref), h('div', { class: 'muted' }, rule.description || '')),
      h('td', {}, h('code', {}, rule.trigger?.ref || rule.trigger?.type || '')),
      h('td', {}, h('a', { href: `#/actions/${rule.action?.ref}` }, rule.action?.ref || '')),
      h('td', {}, h('code', {}, JSON.stringify(rule.criteria || {}))));
  };
  api('rules?limit=-1').then((rules) => fill(body, rules.map(row)))
    .catch((e) => { message.textContent = e.message; });
  return () => {};
}
