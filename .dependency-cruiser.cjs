/**
 * The layer rules of src/ (README "Layout"), checked by `npm run lint:layers` (part of `npm test`).
 * Each folder is a layer; a module may import its own layer and the layers below it, never above:
 *
 *   base  <  kernel  <  model  <  engine  <  snapshot, live  <  vm  <  cli, index.ts
 *                  ^ sim (a test double and demo device: imports base and kernel; only the CLI,
 *                        the public entry's `./sim` export and tests import it)
 *
 * Type-only imports count too (tsPreCompilationDeps): a type from above is a dependency on above.
 */
const layers = ['base', 'kernel', 'model', 'engine', 'snapshot|live', 'vm', 'cli'];
const dir = (l) => `^src/(${l})/`;

const forbidden = [];
layers.forEach((layer, i) => {
  const above = layers.slice(i + 1);
  if (layer.includes('|')) {
    // snapshot and live are siblings: neither imports the other.
    const [a, b] = layer.split('|');
    forbidden.push({ name: `${a}-not-${b}`, severity: 'error', from: { path: dir(a) }, to: { path: dir(b) } });
    forbidden.push({ name: `${b}-not-${a}`, severity: 'error', from: { path: dir(b) }, to: { path: dir(a) } });
  }
  if (above.length) {
    forbidden.push({
      name: `${layer.replace('|', '-')}-imports-down-only`,
      comment: `${layer} may not import ${above.join(', ')}`,
      severity: 'error',
      from: { path: dir(layer) },
      to: { path: [dir(above.join('|')), '^src/index\\.ts$'] },
    });
  }
});

forbidden.push(
  {
    name: 'only-cli-and-entry-import-sim',
    comment: 'the simulator is reached through a device provider that the CLI and tests register, never imported by the product',
    severity: 'error',
    from: { path: '^src/', pathNot: ['^src/(sim|cli)/', '^src/index\\.ts$'] },
    to: { path: '^src/sim/' },
  },
  {
    name: 'sim-uses-kernel-only',
    severity: 'error',
    from: { path: '^src/sim/' },
    to: { path: dir('model|engine|snapshot|live|vm|cli') },
  },
  {
    name: 'no-circular',
    comment: 'no import cycles, within or across folders',
    severity: 'error',
    from: { path: '^src/' },
    to: { circular: true },
  },
  {
    name: 'not-to-test',
    severity: 'error',
    from: { path: '^src/' },
    to: { path: '^(test|bench)/' },
  },
);

module.exports = {
  forbidden,
  options: {
    doNotFollow: { path: 'node_modules' },
    tsPreCompilationDeps: true,
    tsConfig: { fileName: 'tsconfig.json' },
    exclude: { path: '^(dist|node_modules)/' },
  },
};
