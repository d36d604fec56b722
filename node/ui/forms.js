// Forms generated from a parameter schema (an action's `parameters`, or an
// inquiry's JSON schema): typed inputs, enums as selects, booleans as
// switches, arrays and objects as JSON editors, required marked, secrets
// as password fields, defaults filled, immutable ones read-only. Values
// are checked in the page; errors show beside their field and nothing is
// sent until every field is right.

import { h } from './dom.js';

/** Fields of an action's `parameters` map, in `position` then name order. */
export function actionFields(parameters) {
  return Object.entries(parameters || {})
    .map(([name, spec]) => ({ name, ...spec }))
    .sort((a, b) => (a.position ?? 1e9) - (b.position ?? 1e9) || a.name.localeCompare(b.name));
}

/** Fields of a JSON schema `{type: object, properties, required}`. */
export function schemaFields(schema) {
  const required = new Set(schema?.required || []);
  return Object.entries(schema?.properties || {}).map(([name, spec]) => ({
    name, ...spec, required: spec.required === true || required.has(name),
  }));
}

const ANY = ['string', 'integer', 'number', 'boolean', 'array', 'object'];

/** The form's controls for `fields`; returns {element, read}. */
export function buildFields(fields, prefix) {
  const rows = fields.map((f) => field(f, prefix));
  return {
    element: h('div', { class: 'form-fields' }, rows.map((r) => r.row)),
    /** {values, ok}: the typed values, and whether every field passed. */
    read() {
      const values = {};
      let ok = true;
      for (const r of rows) {
        const got = r.read();
        r.error.textContent = got.error || '';
        r.input.setAttribute('aria-invalid', got.error ? 'true' : 'false');
        if (got.error) ok = false;
        else if (got.value !== undefined && !r.spec.immutable) values[r.spec.name] = got.value;
      }
      return { values, ok };
    },
  };
}

function field(spec, prefix) {
  const id = `${prefix}-${spec.name}`;
  const type = ANY.includes(spec.type) ? spec.type : 'string';
  const errorId = `${id}-error`;
  const common = { id, name: spec.name, 'aria-describedby': errorId, readonly: spec.immutable || null };
  let input;
  if (Array.isArray(spec.enum)) {
    input = h('select', common, !spec.required && h('option', { value: '' }, '—'),
      spec.enum.map((v) => h('option', { value: JSON.stringify(v) }, String(v))));
    if (spec.default !== undefined) input.value = JSON.stringify(spec.default);
    if (spec.immutable) input.disabled = true;
  } else if (type === 'boolean') {
    input = h('input', { ...common, type: 'checkbox', role: 'switch', class: 'switch' });
    input.checked = spec.default === true;
    if (spec.immutable) input.disabled = true;
  } else if (type === 'array' || type === 'object') {
    input = h('textarea', { ...common, rows: 3, spellcheck: 'false',
      placeholder: type === 'array' ? '["a", "b"]' : '{"key": "value"}' });
    if (spec.default !== undefined) input.value = JSON.stringify(spec.default, null, 1);
  } else {
    input = h('input', { ...common, type: spec.secret ? 'password' : (type === 'string' ? 'text' : 'text'),
      inputmode: type === 'integer' ? 'numeric' : type === 'number' ? 'decimal' : null,
      autocomplete: spec.secret ? 'new-password' : 'off' });
    if (spec.default !== undefined && spec.default !== null) {
      input.value = typeof spec.default === 'string' ? spec.default : JSON.stringify(spec.default);
    }
  }
  const error = h('p', { class: 'field-error', id: errorId, 'aria-live': 'polite' });
  const label = h('label', { for: id }, spec.name, spec.required && h('span', { class: 'req', title: 'required' }, ' *'),
    h('span', { class: 'muted type' }, ` ${spec.secret ? 'secret ' : ''}${type}${spec.immutable ? ', read-only' : ''}`));
  const row = h('div', { class: 'form-row', dataset: { field: spec.name } }, label, input,
    spec.description && h('p', { class: 'muted hint' }, spec.description), error);
  const read = () => {
    if (Array.isArray(spec.enum)) {
      if (input.value === '') return spec.required ? { error: 'required' } : {};
      return { value: JSON.parse(input.value) };
    }
    if (type === 'boolean') return { value: input.checked };
    const text = input.value;
    if (text.trim() === '') return spec.required && spec.default === undefined ? { error: 'required' } : {};
    switch (type) {
      case 'integer':
        return /^-?\d+$/.test(text.trim()) ? { value: Number(text) } : { error: `must be an integer, not ${JSON.stringify(text)}` };
      case 'number':
        return Number.isFinite(Number(text)) ? { value: Number(text) } : { error: `must be a number, not ${JSON.stringify(text)}` };
      case 'array':
      case 'object': {
        let v;
        try { v = JSON.parse(text); } catch (e) { return { error: `must be JSON: ${e.message}` }; }
        const wrong = schemaError(v, { ...spec, type }, spec.name);
        return wrong ? { error: wrong } : { value: v };
      }
      default:
        return { value: text };
    }
  };
  // JSON editors say what is wrong while it is typed.
  if (type === 'array' || type === 'object') {
    input.addEventListener('input', () => {
      const got = read();
      error.textContent = got.error || '';
      input.setAttribute('aria-invalid', got.error ? 'true' : 'false');
    });
  }
  return { row, input, error, read, spec };
}

/** The JSON type name of `v`. */
function typeOf(v) {
  if (v === null) return 'null';
  if (Array.isArray(v)) return 'array';
  if (typeof v === 'number') return Number.isInteger(v) ? 'integer' : 'number';
  return typeof v;
}

/**
 * What is wrong with `v` against the JSON schema `spec` (its type or
 * types, enum, items, properties, required, additionalProperties), as
 * "at <path>: …", or null when nothing is.
 */
export function schemaError(v, spec, path) {
  const at = path ? `${path}: ` : '';
  const types = [].concat(spec?.type ?? []);
  const got = typeOf(v);
  if (types.length && !types.some((t) => t === got || (t === 'number' && got === 'integer'))) {
    return `${at}must be ${types.map((t) => (/^[aeiou]/.test(t) ? `an ${t}` : `a ${t}`)).join(' or ')}, not ${got === 'array' || got === 'object' ? `an ${got}` : JSON.stringify(v)}`;
  }
  if (Array.isArray(spec?.enum) && !spec.enum.some((e) => JSON.stringify(e) === JSON.stringify(v))) {
    return `${at}must be one of ${spec.enum.map((e) => JSON.stringify(e)).join(', ')}`;
  }
  if (got === 'array' && spec?.items && typeof spec.items === 'object') {
    for (let i = 0; i < v.length; i += 1) {
      const wrong = schemaError(v[i], spec.items, `${path}[${i}]`);
      if (wrong) return wrong;
    }
  }
  if (got === 'object') {
    for (const name of spec?.required && Array.isArray(spec.required) ? spec.required : []) {
      if (!(name in v)) return `${at}needs the key ${JSON.stringify(name)}`;
    }
    const props = spec?.properties || {};
    for (const [k, item] of Object.entries(v)) {
      const where = path ? `${path}.${k}` : k;
      if (props[k]) {
        const wrong = schemaError(item, props[k], where);
        if (wrong) return wrong;
      } else if (spec?.additionalProperties === false) {
        return `${where}: is not one of the keys ${Object.keys(props).join(', ')}`;
      } else if (spec?.additionalProperties && typeof spec.additionalProperties === 'object') {
        const wrong = schemaError(item, spec.additionalProperties, where);
        if (wrong) return wrong;
      }
    }
  }
  return null;
}
