/**
 * `npm run bench` runs every benchmark in bench/*.bench.ts; `npm run bench -- NAME [NAME...]`
 * runs the named ones. Prints Markdown tables of medians and ratios and writes each result as
 * JSON to `.bench/NAME.json` (or `--out DIR`), for docs and notes to quote.
 * `--quick` takes fewer, shorter samples (for smoke runs, not for quoting).
 */
import { mkdirSync, readdirSync, writeFileSync } from 'node:fs';
import { arch, cpus, platform } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { type Benchmark, formatResult, type MeasureOptions } from './harness.js';

const { values, positionals } = parseArgs({
  allowPositionals: true,
  options: {
    out: { type: 'string', default: '.bench' },
    quick: { type: 'boolean', default: false },
    list: { type: 'boolean', default: false },
  },
});

const dir = new URL('.', import.meta.url);
const available = readdirSync(dir)
  .filter((f) => f.endsWith('.bench.ts'))
  .map((f) => f.replace(/\.bench\.ts$/, ''))
  .sort();

if (values.list) {
  console.log(available.join('\n'));
  process.exit(0);
}

const unknown = positionals.filter((p) => !available.includes(p));
if (unknown.length > 0) {
  console.error(`unknown benchmark: ${unknown.join(', ')}; available: ${available.join(', ')}`);
  process.exit(2);
}

const selected = positionals.length > 0 ? positionals : available;
const options: MeasureOptions = values.quick ? { samples: 3, sampleMs: 100, warmupMs: 50 } : {};
mkdirSync(values.out, { recursive: true });
console.log(
  `strata benchmarks on node ${process.version}, ${platform()}/${arch()}, ${cpus().length} cores${values.quick ? ' (quick)' : ''}\n`,
);

let failed = false;
for (const name of selected) {
  const mod = (await import(new URL(`./${name}.bench.ts`, dir).href)) as { default: Benchmark };
  try {
    const result = await mod.default.run(options);
    console.log(`${formatResult(result)}\n`);
    const file = join(values.out, `${name}.json`);
    writeFileSync(
      file,
      `${JSON.stringify({ ...result, at: new Date().toISOString(), node: process.version }, null, 2)}\n`,
    );
  } catch (err) {
    failed = true;
    console.error(`benchmark ${name} failed: ${err instanceof Error ? err.message : String(err)}`);
  }
}
process.exit(failed ? 1 : 0);
