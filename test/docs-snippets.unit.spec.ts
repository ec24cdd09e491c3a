/**
 * Docs samples come from code that compiles and runs in tests: a Markdown code block preceded
 * by `<!-- snippet: path -->` must equal that file, which the type-check compiles and a spec runs.
 */
import { readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';

const root = new URL('..', import.meta.url).pathname;
const pages = [
  'README.md',
  ...readdirSync(join(root, 'docs'))
    .filter((f) => f.endsWith('.md'))
    .map((f) => `docs/${f}`),
];
const SNIPPET = /<!-- snippet: (\S+) -->\s*```\w*\n([\s\S]*?)```/g;

describe('documentation snippets', () => {
  const found: { page: string; file: string; block: string }[] = [];
  for (const page of pages) {
    const text = readFileSync(join(root, page), 'utf8');
    for (const m of text.matchAll(SNIPPET)) found.push({ page, file: m[1]!, block: m[2]! });
  }

  it('finds the snippets', () => {
    expect(found.length).toBeGreaterThan(0);
  });

  it.each(found.map((f) => [`${f.page} <- ${f.file}`, f] as const))(
    '%s matches its source file',
    (_label, f) => {
      const source = readFileSync(join(root, f.file), 'utf8');
      expect(f.block.trim()).toBe(source.trim());
    },
  );
});
