// @ts-check
// The floors of src/: each module imports only modules on its own floor or below. Units on a floor
// marked `apart` do not import each other either (a source does not reach into a sink). A unit is
// a folder directly under src/ or a file directly in it. The README's layout section lists the
// same order; a new folder needs a floor here before anything in it passes lint.
import path from 'node:path';

/** Lowest first. */
export const FLOORS = [
  {
    units: ['errors', 'logger', 'redact', 'paths', 'native'],
    what: 'errors, logging, redaction, paths, libc',
  },
  { units: ['net', 'config'], what: 'addresses, interfaces, namespaces; configuration documents' },
  { units: ['records', 'ledger', 'delivery'], what: 'record types, the ledger, delivery helpers' },
  { units: ['datapath', 'kafka'], apart: true, what: 'the kernel datapath; the Kafka protocol client' },
  { units: ['ha'], what: 'session replication over NATS' },
  { units: ['component', 'health'], what: 'the component contract' },
  { units: ['sources', 'operators', 'sinks'], apart: true, what: 'the YAML components' },
  { units: ['pipeline'], what: 'pipelines: load, validate, build, run' },
  { units: ['devtools'], what: 'demo network and traffic' },
  { units: ['cli'], what: 'the command line' },
];

/** @type {Map<string, { floor: number, apart: boolean }>} */
const FLOOR_OF = new Map();
FLOORS.forEach((f, i) => {
  for (const u of f.units) FLOOR_OF.set(u, { floor: i, apart: Boolean(f.apart) });
});

/** The unit of a path relative to src/ ("datapath/flow/x.ts" -> "datapath", "errors.ts" -> "errors"). */
function unitOf(relative) {
  const first = relative.split(path.sep)[0] ?? '';
  return first.replace(/\.(js|ts)$/, '');
}

/** @type {import('eslint').Rule.RuleModule} */
const rule = {
  meta: {
    type: 'problem',
    docs: {
      description: 'a module in src/ imports only modules on its floor or below (see eslint/floors.js)',
    },
    schema: [],
    messages: {
      upward:
        '{{from}} (floor {{fromFloor}}) must not import {{to}} (floor {{toFloor}}): move what both need down to floor {{fromFloor}} or below, or move this code up',
      apart: '{{from}} and {{to}} are apart on floor {{floor}}: move what both need to a lower floor',
      unplaced: 'src/{{unit}} has no floor: add it to FLOORS in eslint/floors.js and to the README layout',
    },
  },
  create(context) {
    const file = context.filename;
    const src = path.join(context.cwd, 'src');
    const relativeFile = path.relative(src, file);
    if (relativeFile.startsWith('..') || path.isAbsolute(relativeFile)) return {};
    const from = unitOf(relativeFile);
    const fromPlace = FLOOR_OF.get(from);

    /** @param {import('estree').Node} node @param {unknown} value */
    function check(node, value) {
      if (typeof value !== 'string' || !value.startsWith('.')) return;
      if (!fromPlace) {
        context.report({ node, messageId: 'unplaced', data: { unit: from } });
        return;
      }
      const target = path.relative(src, path.resolve(path.dirname(file), value));
      if (target.startsWith('..')) return;
      const to = unitOf(target);
      if (to === from) return;
      const toPlace = FLOOR_OF.get(to);
      if (!toPlace) {
        context.report({ node, messageId: 'unplaced', data: { unit: to } });
      } else if (toPlace.floor > fromPlace.floor) {
        context.report({
          node,
          messageId: 'upward',
          data: { from, to, fromFloor: String(fromPlace.floor), toFloor: String(toPlace.floor) },
        });
      } else if (toPlace.floor === fromPlace.floor && fromPlace.apart) {
        context.report({ node, messageId: 'apart', data: { from, to, floor: String(fromPlace.floor) } });
      }
    }

    return {
      ImportDeclaration: (node) => check(node, node.source.value),
      ExportNamedDeclaration: (node) => node.source && check(node, node.source.value),
      ExportAllDeclaration: (node) => check(node, node.source.value),
      ImportExpression: (node) => node.source.type === 'Literal' && check(node, node.source.value),
    };
  },
};

export default { rules: { floors: rule } };
