// The app shell: login, the header with the user and role, and routing by
// the URL's hash (#/ history, #/executions/<id> one execution, #/rules/<ref>
// one rule, and so on for actions, packs, trigger instances, datastore).

import { api, whoami, whenUnauthorized } from './api.js';
import { h, fill } from './dom.js';
import { historyView } from './history.js';
import { executionView } from './execution.js';
import { actionsView, actionView } from './actions.js';
import { rulesView, ruleView } from './rules.js';
import { inquiriesView } from './inquiries.js';
import { packsView, packView } from './packs.js';
import { instancesView, instanceView } from './triggers.js';
import { keysView } from './keys.js';

const main = document.getElementById('main');
const top = document.getElementById('top');
const who = document.getElementById('who');
let me = null;
/** Views of one item by the hash's first part (`#/rules/<ref>`)… */
const ONE = { executions: executionView, actions: actionView, rules: ruleView, packs: packView,
  triggerinstances: instanceView };
/** …and of lists (`#/rules`). */
const LIST = { actions: actionsView, rules: rulesView, inquiries: inquiriesView, packs: packsView,
  triggerinstances: instancesView, keys: keysView };
/** The current view's clean-up (closes its event streams). */
let leave = () => {};

function route() {
  leave();
  leave = () => {};
  if (!me) return showLogin();
  const hash = location.hash.replace(/^#/, '') || '/';
  const [, page, item] = hash.match(/^\/([a-z]*)(?:\/([^?]+))?/) || [];
  const view = (item ? ONE : LIST)[page] || historyView;
  leave = view(main, me, item && decodeURIComponent(item));
  main.focus({ preventScroll: true });
}

function signedIn(user) {
  me = user;
  fill(who, 'Signed in as ', h('strong', {}, me.username), ' ',
    h('span', { class: 'role', id: 'role' }, me.role));
  top.hidden = false;
  route();
}

/**
 * The login form. When a session expires mid-page it opens over the page,
 * so what was typed there stays in place and is still there after login.
 */
function showLogin(message, { over = false } = {}) {
  if (!over) {
    leave();
    leave = () => {};
    me = null;
    top.hidden = true;
    fill(who);
  }
  if (document.getElementById('login-form')) return;
  const error = h('p', { id: 'login-error', class: 'error', role: 'alert' }, message || '');
  const user = h('input', { id: 'username', name: 'username', autocomplete: 'username', required: true });
  const pass = h('input', { id: 'password', name: 'password', type: 'password', autocomplete: 'current-password', required: true });
  const submit = h('button', { type: 'submit', id: 'login-submit' }, 'Log in');
  const form = h('form', { class: 'login', id: 'login-form', 'aria-labelledby': 'login-title' },
    h('h1', { id: 'login-title' }, 'Squall'),
    h('label', { for: 'username' }, 'User'), user,
    h('label', { for: 'password' }, 'Password'), pass,
    submit, error);
  form.addEventListener('submit', async (ev) => {
    ev.preventDefault();
    submit.disabled = true;
    error.textContent = '';
    try {
      const user = await api('/ui/login', { method: 'POST', body: { username: userInput(), password: pass.value } });
      pass.value = '';
      if (over && me && me.username === user.username) {
        overlay.remove();
        return;
      }
      overlay.remove();
      signedIn({ username: user.username, role: user.role });
    } catch (e) {
      error.textContent = e.status === 429
        ? `${e.message}` : e.status === 401 ? 'Wrong user name or password.' : e.message;
    } finally {
      submit.disabled = false;
    }
  });
  const userInput = () => user.value.trim();
  const overlay = h('div', { class: over ? 'overlay' : 'page-login', role: over ? 'dialog' : null, 'aria-modal': over ? 'true' : null }, form);
  if (over) {
    user.value = me ? me.username : '';
    document.body.append(overlay);
  } else {
    fill(main, overlay);
  }
  (user.value ? pass : user).focus();
}

document.getElementById('logout').addEventListener('click', async () => {
  await api('/ui/logout', { method: 'POST' }).catch(() => {});
  showLogin('Logged out.');
});

whenUnauthorized(() => {
  if (me) showLogin('Your session has expired: log in again. What you typed is kept.', { over: true });
});
window.addEventListener('hashchange', () => { if (me) route(); });

whoami().then((user) => (user ? signedIn(user) : showLogin()))
  .catch((e) => showLogin(e.message));
