import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { defineConfig } from 'vitest/config';

// `strata/<module>` resolves to the TypeScript source in tests, mirroring package.json exports,
// so specs and examples import the public names without a build step.
const pkg = JSON.parse(readFileSync(new URL('./package.json', import.meta.url), 'utf8')) as {
  exports: Record<string, { import: string }>;
};
const alias = Object.entries(pkg.exports)
  .filter(([subpath]) => subpath !== './package.json')
  .map(([subpath, target]) => ({
    find: new RegExp(`^${subpath === '.' ? 'strata' : `strata/${subpath.slice(2)}`}$`),
    replacement: fileURLToPath(
      new URL(target.import.replace('./dist/src/', './src/').replace(/\.js$/, '.ts'), import.meta.url),
    ),
  }));

const shared = {
  resolve: { alias },
};

export default defineConfig({
  ...shared,
  test: {
    testTimeout: 30_000,
    hookTimeout: 60_000,
    projects: [
      {
        ...shared,
        test: {
          name: 'unit',
          include: ['src/**/*.unit.spec.ts', 'examples/**/*.unit.spec.ts', 'test/**/*.unit.spec.ts'],
        },
      },
      {
        ...shared,
        test: {
          name: 'int',
          include: ['src/**/*.int.spec.ts', 'examples/**/*.int.spec.ts', 'test/**/*.int.spec.ts'],
          globalSetup: ['./test/global-setup.ts'],
          testTimeout: 60_000,
          hookTimeout: 120_000,
        },
      },
      {
        ...shared,
        test: {
          name: 'e2e',
          include: ['src/**/*.e2e.spec.ts', 'examples/**/*.e2e.spec.ts', 'test/**/*.e2e.spec.ts'],
          globalSetup: ['./test/global-setup.ts'],
          testTimeout: 120_000,
          hookTimeout: 180_000,
          fileParallelism: false,
        },
      },
    ],
  },
});
