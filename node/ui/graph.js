// A workflow's task graph as SVG: tasks in layers by their distance from
// the start tasks, arrows for the transitions, each task filled by its
// status and labelled with the status word.

import { h } from './dom.js';

const W = 150;
const H = 46;
const GAP_X = 60;
const GAP_Y = 22;
const ENGINE = new Set(['continue', 'noop', 'fail', 'retry']);

/** Draws `graph` ({tasks: [{name, next: [{when, to}]}]}) into `box`. */
export function drawGraph(box, graph, byTask) {
  const names = graph.tasks.map((t) => t.name);
  const edges = [];
  for (const t of graph.tasks) {
    for (const n of t.next) {
      for (const to of n.to) if (!ENGINE.has(to) && names.includes(to)) edges.push([t.name, to, n.when]);
    }
  }
  const incoming = new Map(names.map((n) => [n, 0]));
  for (const [, to] of edges) incoming.set(to, incoming.get(to) + 1);
  // Layer = longest distance from a start task (cycles cut at |tasks|).
  const layer = new Map(names.filter((n) => incoming.get(n) === 0).map((n) => [n, 0]));
  for (let round = 0; round < names.length; round += 1) {
    let changed = false;
    for (const [from, to] of edges) {
      if (!layer.has(from)) continue;
      const want = layer.get(from) + 1;
      if (!layer.has(to) || (layer.get(to) < want && want < names.length)) {
        layer.set(to, want);
        changed = true;
      }
    }
    if (!changed) break;
  }
  for (const n of names) if (!layer.has(n)) layer.set(n, 0);
  const columns = [];
  for (const n of names) (columns[layer.get(n)] ||= []).push(n);
  const pos = new Map();
  columns.forEach((col, x) => col.forEach((n, y) => pos.set(n, [x * (W + GAP_X) + 10, y * (H + GAP_Y) + 10])));
  const width = columns.length * (W + GAP_X);
  const height = Math.max(...columns.map((c) => c.length)) * (H + GAP_Y) + 10;

  const svg = h('svg:svg', { viewBox: `0 0 ${width} ${height}`, width, height, role: 'img',
    'aria-label': `Task graph: ${names.map((n) => `${n} ${label(byTask.get(n))}`).join(', ')}` },
  h('svg:defs', {}, h('svg:marker', { id: 'arrow', viewBox: '0 0 10 10', refX: '10', refY: '5',
    markerWidth: '7', markerHeight: '7', orient: 'auto-start-reverse' },
  h('svg:path', { d: 'M 0 0 L 10 5 L 0 10 z', class: 'arrowhead' }))));
  for (const [from, to, when] of edges) {
    const [x1, y1] = pos.get(from);
    const [x2, y2] = pos.get(to);
    const back = x2 <= x1;
    const sx = x1 + W;
    const sy = y1 + H / 2;
    const ex = back ? x2 + W / 2 : x2;
    const ey = back ? y2 + H : y2 + H / 2;
    const d = back
      ? `M ${sx} ${sy} C ${sx + 40} ${sy + 60}, ${ex} ${ey + 40}, ${ex} ${ey}`
      : `M ${sx} ${sy} C ${sx + GAP_X / 2} ${sy}, ${ex - GAP_X / 2} ${ey}, ${ex} ${ey}`;
    svg.append(h('svg:path', { d, class: 'edge', 'marker-end': 'url(#arrow)' },
      h('svg:title', {}, when ? `when ${when}` : 'always')));
  }
  for (const n of columns.flat()) {
    const [x, y] = pos.get(n);
    const ex = byTask.get(n);
    const status = ex ? ex.status : 'not-run';
    svg.append(h('svg:g', { class: `task st-${status}`, dataset: { task: n, status } },
      h('svg:rect', { x, y, width: W, height: H, rx: 6 }),
      h('svg:text', { x: x + 8, y: y + 18, class: 'task-name' }, n.length > 20 ? `${n.slice(0, 19)}…` : n),
      h('svg:text', { x: x + 8, y: y + 36, class: 'task-status' }, label(ex))));
  }
  box.replaceChildren(svg);
}

function label(ex) {
  return ex ? ex.status : 'not run';
}
