// Trigger instances: the newest first, filtered by trigger; one instance's
// payload and what it set off (rule enforcements and their executions);
// re-emit for operators.

import { api, may } from './api.js';
import { h, fill, fact, table, when } from './dom.js';
import { jsonTree } from './execution.js';

const PAGE = 100;

export function instancesView(main) {
  const params = new URLSearchParams(location.hash.split('?')[1] || '');
  const trigger = h('input', { id: 'f-trigger', name: 'trigger', size: 24, placeholder: 'core.st2.webhook' });
  trigger.value = params.get('trigger') || '';
  const form = h('form', { class: 'filters', role: 'search', 'aria-label': 'Filter trigger instances' },
    h('div', { class: 'field' }, h('label', { for: 'f-trigger' }, 'Trigger'), trigger),
    h('button', { type: 'submit' }, 'Filter'));
  form.addEventListener('submit', (ev) => {
    ev.preventDefault();
    location.hash = trigger.value.trim() ? `#/triggerinstances?trigger=${encodeURIComponent(trigger.value.trim())}` : '#/triggerinstances';
  });
  const body = h('tbody', { id: 'instance-rows' });
  const count = h('p', { class: 'muted', id: 'instances-count', role: 'status' });
  fill(main, h('h1', {}, 'Trigger instances'), form, count,
    table(['Status', 'Trigger', 'Occurred', 'Id'], body, { class: 'stack' }));
  const q = new URLSearchParams({ limit: PAGE, exclude_attributes: 'payload' });
  if (trigger.value) q.set('trigger', trigger.value);
  api(`triggerinstances?${q}`).then((all) => {
    count.textContent = `${all.length} of ${all.total ?? all.length} shown, newest first`;
    fill(body, all.map((t) => h('tr', { dataset: { id: t.id } },
      h('td', {}, t.status || ''),
      h('td', {}, h('code', {}, t.trigger)),
      h('td', {}, when(t.occurrence_time)),
      h('td', {}, h('a', { href: `#/triggerinstances/${encodeURIComponent(t.id)}` }, h('code', { class: 'id' }, t.id))))));
  }).catch((e) => { count.textContent = e.message; });
  return () => {};
}

export function instanceView(main, me, id) {
  const body = h('div', { id: 'instance-detail' });
  const message = h('p', { id: 'instance-message', role: 'status', class: 'muted' });
  const reEmit = may(me, 'operator') && h('button', { type: 'button', id: 're-emit' }, 'Re-emit');
  fill(main, h('p', {}, h('a', { href: '#/triggerinstances' }, '← Trigger instances')),
    h('div', { class: 'title-row' }, h('h1', {}, 'Trigger instance ', h('code', {}, id)), reEmit), message, body);
  if (reEmit) {
    reEmit.addEventListener('click', async () => {
      reEmit.disabled = true;
      try {
        const got = await api(`triggerinstances/${encodeURIComponent(id)}/re_emit`, { method: 'POST' });
        fill(message, 'Sent again as ', h('a', { id: 're-emitted', href: `#/triggerinstances/${encodeURIComponent(got.id)}` }, got.id), '.');
      } catch (e) {
        message.textContent = e.message;
      } finally {
        reEmit.disabled = false;
      }
    });
  }
  Promise.all([api(`triggerinstances/${encodeURIComponent(id)}`),
    api(`ruleenforcements?trigger_instance=${encodeURIComponent(id)}&limit=-1`).catch(() => [])])
    .then(([t, enforcements]) => fill(body,
      h('dl', { class: 'facts' },
        fact('Trigger', h('code', {}, t.trigger)),
        fact('Occurred', when(t.occurrence_time)),
        fact('Status', t.status),
        t.payload?.__context?.original_id && fact('Re-emitted from', h('a',
          { href: `#/triggerinstances/${encodeURIComponent(t.payload.__context.original_id)}` }, t.payload.__context.original_id))),
      h('h2', {}, 'Payload'), h('div', { class: 'result', id: 'instance-payload' }, jsonTree(t.payload ?? {})),
      h('h2', {}, 'What it set off'),
      enforcements.length
        ? table(['Rule', 'Execution', 'Failure'], h('tbody', { id: 'instance-enforcements' }, enforcements.map((e) => h('tr', {},
          h('td', {}, h('a', { href: `#/rules/${encodeURIComponent(e.rule?.ref || '')}` }, e.rule?.ref || '')),
          h('td', {}, e.execution_id ? h('a', { href: `#/executions/${e.execution_id}` }, e.execution_id) : '—'),
          h('td', {}, e.failure_reason || '')))), { class: 'stack' })
        : h('p', { class: 'muted' }, 'No rule matched it.')))
    .catch((e) => fill(body, h('p', { class: 'error' }, e.message)));
  return () => {};
}
