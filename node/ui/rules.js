// Rules: the list with their trigger and action, one rule's page (its
// trigger, criteria, action and parameters), enable/disable for operators.

import { api, may } from './api.js';
import { h, fill, fact, table } from './dom.js';
import { jsonTree } from './execution.js';

/**
 * The rule's enabled state, with a switch for those who may change it.
 * `say` reports what happened (or why not).
 */
function enabledControl(rule, me, say) {
  const state = h('span', { class: 'state' }, rule.enabled ? 'enabled' : 'disabled');
  if (!may(me, 'operator')) return state;
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
      say(`${rule.ref} ${saved.enabled ? 'enabled' : 'disabled'}.`);
    } catch (e) {
      box.checked = !box.checked;
      say(e.message);
    } finally {
      box.disabled = false;
    }
  });
  return h('span', {}, box, ' ', state);
}

export function rulesView(main, me) {
  const body = h('tbody', { id: 'rule-rows' });
  const message = h('p', { id: 'rules-message', role: 'status', class: 'muted' });
  const say = (text) => { message.textContent = text; };
  fill(main, h('h1', {}, 'Rules'), message,
    table(['Enabled', 'Rule', 'Trigger', 'Action', 'Criteria'], body, { class: 'stack' }));
  const row = (rule) => h('tr', { dataset: { rule: rule.ref } },
    h('td', {}, enabledControl(rule, me, say)),
    h('td', {}, h('a', { href: `#/rules/${encodeURIComponent(rule.ref)}` }, h('code', {}, rule.ref)),
      h('div', { class: 'muted' }, rule.description || '')),
    h('td', {}, h('code', {}, rule.trigger?.ref || rule.trigger?.type || '')),
    h('td', {}, h('a', { href: `#/actions/${rule.action?.ref}` }, rule.action?.ref || '')),
    h('td', {}, h('code', {}, JSON.stringify(rule.criteria || {}))));
  api('rules?limit=-1').then((rules) => fill(body, rules.map(row)))
    .catch((e) => say(e.message));
  return () => {};
}

/** One rule: what triggers it, what it checks, what it runs with what. */
export function ruleView(main, me, ref) {
  const body = h('div', { id: 'rule-detail' });
  const message = h('p', { id: 'rules-message', role: 'status', class: 'muted' });
  fill(main, h('p', {}, h('a', { href: '#/rules' }, '← Rules')), h('h1', {}, 'Rule ', h('code', {}, ref)),
    message, body);
  const say = (text) => { message.textContent = text; };
  api(`rules/${encodeURIComponent(ref)}`).then((rule) => {
    const criteria = Object.entries(rule.criteria || {});
    fill(body,
      h('dl', { class: 'facts' },
        fact('Enabled', enabledControl(rule, me, say)),
        fact('Description', rule.description),
        fact('Pack', rule.pack && h('a', { href: `#/packs/${encodeURIComponent(rule.pack)}` }, rule.pack)),
        fact('Trigger', h('code', {}, rule.trigger?.ref || rule.trigger?.type)),
        fact('Action', rule.action?.ref && h('a', { href: `#/actions/${rule.action.ref}` }, rule.action.ref)),
        fact('Executions', h('a', { href: `#/?rule=${encodeURIComponent(rule.ref)}` }, 'in the history'))),
      h('h2', {}, 'Trigger parameters'), paramsOrNone(rule.trigger?.parameters),
      h('h2', {}, 'Criteria'),
      criteria.length
        ? table(['Field', 'Operator', 'Pattern'], h('tbody', { id: 'rule-criteria' }, criteria.map(([field, c]) =>
          h('tr', {}, h('td', {}, h('code', {}, field)), h('td', {}, c.type), h('td', {}, jsonTree(c.pattern))))), { class: 'stack' })
        : h('p', { class: 'muted' }, 'none: every instance of the trigger matches'),
      h('h2', {}, 'Action parameters'), paramsOrNone(rule.action?.parameters));
  }).catch((e) => fill(body, h('p', { class: 'error' }, e.message)));
  return () => {};
}

function paramsOrNone(params) {
  return Object.keys(params || {}).length
    ? h('div', { class: 'result' }, jsonTree(params))
    : h('p', { class: 'muted' }, 'none');
}
