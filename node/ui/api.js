// The API client: same origin, the token rides in the HttpOnly cookie the
// login route sets, so no script ever holds it.

export class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

/** Called when a request answers 401: the app shows the login form. */
let onUnauthorized = () => {};
export function whenUnauthorized(fn) { onUnauthorized = fn; }

/** `fetch` of `/api/v1/<path>`; JSON in and out; errors as ApiError. */
export async function api(path, { method = 'GET', body, raw = false } = {}) {
  const init = { method, credentials: 'same-origin', headers: {} };
  if (body !== undefined) {
    init.body = JSON.stringify(body);
    init.headers['Content-Type'] = 'application/json';
  }
  const resp = await fetch(path.startsWith('/') ? path : `/api/v1/${path}`, init);
  if (resp.status === 401 && !path.startsWith('/ui/')) onUnauthorized();
  if (!resp.ok) {
    let msg = `${resp.status} ${resp.statusText}`;
    try { msg = (await resp.json()).faultstring || msg; } catch { /* not JSON */ }
    const err = new ApiError(resp.status, msg);
    err.retryAfter = resp.headers.get('Retry-After');
    throw err;
  }
  if (raw) return resp;
  if (resp.status === 204) return null;
  const total = resp.headers.get('X-Total-Count');
  const data = await resp.json();
  if (total !== null && Array.isArray(data)) data.total = Number(total);
  return data;
}

/** The signed-in user: {username, role} or null. */
export async function whoami() {
  try {
    const me = await api('user');
    return { username: me.username, role: me.rbac.roles[0] };
  } catch (e) {
    if (e.status === 401) return null;
    throw e;
  }
}

const RANK = { observer: 0, operator: 1, admin: 2 };
/** Whether `me` has at least `role`. */
export function may(me, role) { return me && RANK[me.role] >= RANK[role]; }
