import { Writable } from 'node:stream';
import { describe, expect, it } from 'vitest';
import { ConfigError, ConnectionError, StrataError } from '../core/errors.js';
import {
  createProgressView,
  describeFailure,
  formatMs,
  formatPercent,
  formatRate,
  formatUptime,
  renderFields,
  renderTable,
} from './output.js';

function memoryStream(isTTY = false): Writable & { text: () => string; isTTY: boolean } {
  const chunks: string[] = [];
  const stream = new Writable({
    write(chunk: Buffer, _encoding, done) {
      chunks.push(chunk.toString());
      done();
    },
  }) as Writable & { text: () => string; isTTY: boolean };
  stream.text = () => chunks.join('');
  stream.isTTY = isTTY;
  return stream;
}

describe('describeFailure', () => {
  it('is one line with the strata message; E_CONFIG exits 2, others 1', () => {
    const config = describeFailure(new ConfigError('port', 'must be 0..65535'));
    expect(config).toEqual({ text: 'strata: invalid option "port": must be 0..65535\n', exitCode: 2 });
    const connection = describeFailure(
      new ConnectionError({ backend: 'social API', host: '127.0.0.1', port: 1 }, 'no answer'),
    );
    expect(connection.exitCode).toBe(1);
    expect(connection.text).toBe('strata: cannot connect to social API at 127.0.0.1:1: no answer\n');
    expect(describeFailure(new Error('two\nlines')).text).toBe('strata: two lines\n');
    expect(describeFailure('text').exitCode).toBe(1);
  });

  it('adds the stack and the causes only under STRATA_DEBUG=1', () => {
    const err = new StrataError('E_X', 'outer', { cause: new Error('inner') });
    expect(describeFailure(err, {}).text.split('\n').filter(Boolean)).toHaveLength(1);
    const debug = describeFailure(err, { STRATA_DEBUG: '1' }).text;
    expect(debug.startsWith('strata: outer\n')).toBe(true);
    expect(debug).toContain('caused by: Error: inner');
    expect(debug).toContain('output.unit.spec.ts');
  });
});

describe('number formats', () => {
  it('formats latencies, rates, shares and uptimes', () => {
    expect(formatMs(null)).toBe('-');
    expect(formatMs(0.4213)).toBe('0.42ms');
    expect(formatMs(4.26)).toBe('4.3ms');
    expect(formatMs(42.4)).toBe('42ms');
    expect(formatMs(1_530)).toBe('1.53s');
    expect(formatMs(15_300)).toBe('15.3s');
    expect(formatRate(49.96)).toBe('50.0');
    expect(formatPercent(0.1234)).toBe('12.3%');
    expect(formatUptime(42.9)).toBe('42s');
    expect(formatUptime(303)).toBe('5m 3s');
    expect(formatUptime(3_720)).toBe('1h 2m');
    expect(formatUptime(90_000)).toBe('1d 1h');
  });
});

describe('renderTable and renderFields', () => {
  it('pads columns to the widest cell and right-aligns the numeric ones', () => {
    const table = renderTable(
      ['route', 'sent'],
      [
        ['GET /a', '5'],
        ['GET /longer', '1234'],
      ],
      { right: [1] },
    );
    expect(table).toBe('route        sent\nGET /a          5\nGET /longer  1234\n');
  });

  it('aligns labels', () => {
    expect(
      renderFields([
        ['API', 'http://x'],
        ['dashboard', 'http://x/dashboard'],
      ]),
    ).toBe('  API        http://x\n  dashboard  http://x/dashboard\n');
  });
});

describe('createProgressView', () => {
  const figures = (elapsedMs: number) => ({
    sent: elapsedMs / 10,
    ok: elapsedMs / 10,
    failed: 0,
    elapsedMs,
    totalMs: 30_000,
    rps: 100,
    p99Ms: 4.2,
  });

  it('off a terminal prints plain lines, at most one per interval', () => {
    const stream = memoryStream(false);
    let now = 0;
    const view = createProgressView(stream, { plainEveryMs: 5_000, now: () => now });
    view.seeding(0, 100);
    view.seeding(50, 100);
    view.seeding(100, 100);
    for (let t = 1_000; t <= 12_000; t += 1_000) {
      now = t;
      view.update(figures(t));
    }
    view.stop();
    const lines = stream.text().split('\n').filter(Boolean);
    expect(lines).toEqual([
      'simulate: seeding the population (100 requests)',
      'simulate: seeding done',
      'simulate: 0:01/0:30  sent 100  100.0 req/s  p99 4.2ms  errors 0',
      'simulate: 0:06/0:30  sent 600  100.0 req/s  p99 4.2ms  errors 0',
      'simulate: 0:11/0:30  sent 1100  100.0 req/s  p99 4.2ms  errors 0',
    ]);
    expect(stream.text()).not.toContain('\r');
    expect(stream.text()).not.toContain('\u001b');
  });

  it('on a terminal rewrites one line in place', () => {
    const stream = memoryStream(true);
    const view = createProgressView(stream);
    view.update(figures(1_000));
    view.update(figures(2_000));
    view.stop();
    const text = stream.text();
    expect(text).toContain('\u001b[1G');
    expect(text).toContain('sent 200');
    expect(text.split('\n').filter(Boolean).length).toBeLessThanOrEqual(2);
  });
});
