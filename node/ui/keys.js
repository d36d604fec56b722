// Datastore keys: the system's and the user's own (an admin's: every
// user's), set and delete for operators. A secret shows sealed; its value
// is asked for (`decrypt=true`) only when the user presses Show, and the
// button is there only for those the API lets open it (admins; operators
// for their own user scope).

import { api, may } from './api.js';
import { h, fill, table, when, keyPath } from './dom.js';

/** Whether `me` may open the secrets of `key`'s scope (as the API decides). */
function mayDecrypt(me, key) {
  if (may(me, 'admin')) return true;
  return key.scope === 'st2kv.user' && may(me, 'operator') && key.user === me.username;
}

/** `scope=…&user=…` naming `key`'s scope. */
function scopeQuery(key) {
  const q = new URLSearchParams({ scope: key.scope === 'st2kv.user' ? 'user' : 'system' });
  if (key.user) q.set('user', key.user);
  return q;
}

export function keysView(main, me) {
  const body = h('tbody', { id: 'key-rows' });
  const message = h('p', { id: 'keys-message', role: 'status', class: 'muted' });
  const say = (text) => { message.textContent = text; };
  const load = () => api('keys?scope=all')
    .then((keys) => fill(body, keys.map((k) => row(k))))
    .catch((e) => say(e.message));

  function row(key) {
    const value = h('code', { class: 'value' }, key.secret ? '•••••• (secret)' : key.value);
    const buttons = [];
    if (key.secret && mayDecrypt(me, key)) {
      let shown = false;
      const show = h('button', { type: 'button', class: 'show', 'aria-label': `Show the value of ${key.name}` }, 'Show');
      show.addEventListener('click', async () => {
        if (shown) {
          value.textContent = '•••••• (secret)';
          show.textContent = 'Show';
          shown = false;
          return;
        }
        const q = scopeQuery(key);
        q.set('decrypt', 'true');
        try {
          const open = await api(`keys/${keyPath(key.name)}?${q}`);
          value.textContent = open.value;
          show.textContent = 'Hide';
          shown = true;
        } catch (e) {
          say(e.message);
        }
      });
      buttons.push(show);
    }
    if (may(me, 'operator')) {
      buttons.push(h('button', { type: 'button', class: 'delete', 'aria-label': `Delete ${key.name}`, onclick: async () => {
        try {
          await api(`keys/${keyPath(key.name)}?${scopeQuery(key)}`, { method: 'DELETE' });
          say(`${key.name} deleted.`);
          load();
        } catch (e) {
          say(e.message);
        }
      } }, 'Delete'));
    }
    return h('tr', { dataset: { key: key.name, scope: key.scope } },
      h('td', {}, h('code', {}, key.name)),
      h('td', {}, key.scope === 'st2kv.user' ? `user ${key.user || ''}` : 'system'),
      h('td', {}, value),
      h('td', {}, when(key.expire_timestamp)),
      h('td', { class: 'row-actions' }, buttons));
  }

  fill(main, h('h1', {}, 'Datastore'), may(me, 'operator') && setForm(me, say, load), message,
    table(['Key', 'Scope', 'Value', 'Expires', ''], body, { class: 'stack' }));
  load();
  return () => {};
}

/** The form that sets a key (operators). */
function setForm(me, say, done) {
  const input = (id, attrs = {}) => h('input', { id, name: id, ...attrs });
  const name = input('key-name', { required: true, autocomplete: 'off' });
  const value = input('key-value', { autocomplete: 'off' });
  const secret = input('key-secret', { type: 'checkbox', role: 'switch', class: 'switch' });
  const scope = h('select', { id: 'key-scope', name: 'scope' },
    h('option', { value: 'system' }, 'system'), h('option', { value: 'user' }, `user (${me.username})`));
  const ttl = input('key-ttl', { inputmode: 'numeric', size: 8, placeholder: 'never' });
  const error = h('p', { class: 'field-error', id: 'key-error', role: 'alert' });
  secret.addEventListener('change', () => { value.type = secret.checked ? 'password' : 'text'; });
  const field = (id, label, control) => h('div', { class: 'field' }, h('label', { for: id }, label), control);
  const form = h('form', { id: 'key-form', class: 'filters', 'aria-label': 'Set a key' },
    field('key-name', 'Name', name), field('key-value', 'Value', value), field('key-secret', 'Secret', secret),
    field('key-scope', 'Scope', scope), field('key-ttl', 'Expires after (s)', ttl),
    h('button', { type: 'submit', id: 'key-set' }, 'Set'), error);
  form.addEventListener('submit', async (ev) => {
    ev.preventDefault();
    error.textContent = '';
    const body = { name: name.value.trim(), value: value.value, secret: secret.checked, scope: scope.value };
    if (ttl.value.trim()) {
      if (!/^\d+$/.test(ttl.value.trim()) || Number(ttl.value) < 1) {
        error.textContent = 'Expires after: a whole number of seconds, at least 1; nothing was sent.';
        ttl.setAttribute('aria-invalid', 'true');
        return;
      }
      body.ttl = Number(ttl.value);
    }
    ttl.removeAttribute('aria-invalid');
    try {
      await api(`keys/${keyPath(body.name)}`, { method: 'PUT', body });
      say(`${body.name} set${body.secret ? ' (secret: stored encrypted)' : ''}.`);
      value.value = '';
      done();
    } catch (e) {
      error.textContent = e.message;
    }
  });
  return form;
}
