// Inquiries: the pending ones first, each answered through a form
// generated from its schema.

import { api, may } from './api.js';
import { h, fill, statusBadge } from './dom.js';
import { schemaFields, buildFields } from './forms.js';

export function inquiriesView(main, me) {
  const list = h('div', { id: 'inquiry-list' });
  fill(main, h('h1', {}, 'Inquiries'), list);
  const card = (inq) => {
    const pending = inq.status === 'pending';
    const head = h('h2', {}, statusBadge(inq.status), ' ', h('code', {}, inq.id));
    const facts = h('p', { class: 'muted' }, inq.parent ? h('span', {}, 'for ',
      h('a', { href: `#/executions/${inq.parent}` }, inq.parent), ' ') : '',
    inq.route ? `route ${inq.route} ` : '', inq.ttl ? `· expires after ${inq.ttl} min` : '');
    if (!pending || !may(me, 'operator')) return h('section', { class: 'inquiry', dataset: { id: inq.id } }, head, facts);
    const fields = buildFields(schemaFields(inq.schema), `q-${inq.id}`);
    const error = h('p', { class: 'error', role: 'alert' });
    const form = h('form', { class: 'run-form', dataset: { inquiry: inq.id } }, fields.element,
      h('button', { type: 'submit' }, 'Answer'), error);
    form.addEventListener('submit', async (ev) => {
      ev.preventDefault();
      const { values, ok } = fields.read();
      if (!ok) { error.textContent = 'Fix the fields marked above; nothing was sent.'; return; }
      try {
        await api(`inquiries/${encodeURIComponent(inq.id)}`, { method: 'PUT', body: { id: inq.id, response: values } });
        fill(form, h('p', { role: 'status' }, 'Answered; the workflow resumes.'));
      } catch (e) {
        error.textContent = e.message;
      }
    });
    return h('section', { class: 'inquiry pending', dataset: { id: inq.id } }, head, facts, form);
  };
  api('inquiries?limit=-1').then((all) => {
    const pending = all.filter((i) => i.status === 'pending');
    const rest = all.filter((i) => i.status !== 'pending');
    fill(list, pending.length ? pending.map(card) : h('p', { class: 'muted' }, 'Nothing is waiting for an answer.'),
      rest.length ? [h('h2', {}, 'Answered or expired'), rest.map(card)] : null);
  }).catch((e) => fill(list, h('p', { class: 'error' }, e.message)));
  return () => {};
}
