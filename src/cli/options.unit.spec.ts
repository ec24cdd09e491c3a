import { describe, expect, it } from 'vitest';
import { isStrataError } from '../core/errors.js';
import { integerOption, portOption, rateOption, toNumber } from './options.js';

function configOption(fn: () => unknown): string | undefined {
  try {
    fn();
  } catch (err) {
    return isStrataError(err, 'E_CONFIG') ? String(err.details.option) : `not E_CONFIG: ${String(err)}`;
  }
  return undefined;
}

describe('option conversions', () => {
  it('reads numbers, treating empty text as not a number', () => {
    expect(toNumber('42')).toBe(42);
    expect(toNumber(' 1.5 ')).toBe(1.5);
    expect(toNumber('')).toBeNaN();
    expect(toNumber('fast')).toBeNaN();
  });

  it('accepts ports 0..65535 and names --port otherwise', () => {
    expect(portOption('0')).toBe(0);
    expect(portOption('3000')).toBe(3000);
    expect(portOption('65535')).toBe(65_535);
    for (const bad of ['-1', '65536', '30.5', 'http', ''])
      expect(configOption(() => portOption(bad))).toBe('port');
  });

  it('accepts positive rates and names --rate otherwise', () => {
    expect(rateOption('0.5')).toBe(0.5);
    for (const bad of ['0', '-3', 'Infinity', 'many'])
      expect(configOption(() => rateOption(bad))).toBe('rate');
  });

  it('bounds integers and names the option', () => {
    expect(integerOption('7', 'users', 2, 10)).toBe(7);
    expect(configOption(() => integerOption('1', 'users', 2, 10))).toBe('users');
    expect(configOption(() => integerOption('11', 'seed', 2, 10))).toBe('seed');
  });
});
