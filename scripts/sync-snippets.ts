/**
 * Copies each snippet file into the Markdown code block that follows its
 * `<!-- snippet: path -->` marker, in README.md and docs/*.md. `npm run docs:snippets`.
 * test/docs-snippets.unit.spec.ts fails when a block and its file differ.
 */
import { readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';

const root = new URL('..', import.meta.url).pathname;
const pages = [
  'README.md',
  ...readdirSync(join(root, 'docs'))
    .filter((f) => f.endsWith('.md'))
    .map((f) => `docs/${f}`),
];
const SNIPPET = /(<!-- snippet: (\S+) -->\s*```(\w*)\n)([\s\S]*?)```/g;
let changed = 0;
for (const page of pages) {
  const path = join(root, page);
  const text = readFileSync(path, 'utf8');
  const next = text.replace(SNIPPET, (_all, head: string, file: string) => {
    const source = readFileSync(join(root, file), 'utf8');
    return `${head}${source.endsWith('\n') ? source : `${source}\n`}\`\`\``;
  });
  if (next !== text) {
    writeFileSync(path, next);
    changed++;
    console.log(`updated ${page}`);
  }
}
console.log(changed === 0 ? 'all snippets up to date' : `${changed} page(s) updated`);
