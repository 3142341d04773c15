import { describe, expect, it } from 'vitest';
import {
  formatBitRate,
  formatBytes,
  formatCount,
  formatDuration,
  renderTable,
} from '../../../src/cli/table.js';

describe('renderTable', () => {
  it('pads each column to its widest cell, right-aligns numbers and trims line ends', () => {
    expect(
      renderTable(
        [{ title: 'NAME' }, { title: 'N', align: 'right' }, { title: 'NOTE' }],
        [
          ['a', '1', ''],
          ['longer', '12345', 'x'],
        ],
      ),
    ).toEqual(['NAME        N  NOTE', 'a           1', 'longer  12345  x']);
  });
});

describe('number formats', () => {
  it.each([
    [0, '0'],
    [999, '999'],
    [1000, '1,000'],
    [1234567, '1,234,567'],
    [-4200, '-4,200'],
  ])('formatCount(%d) = %s', (n, text) => expect(formatCount(n)).toBe(text));

  it.each([
    [0, '0 B'],
    [999, '999 B'],
    [1500, '1.50 kB'],
    [12_345, '12.3 kB'],
    [123_456, '123 kB'],
    [14_400_000, '14.4 MB'],
    [2_000_000_000, '2.00 GB'],
  ])('formatBytes(%d) = %s', (n, text) => expect(formatBytes(n)).toBe(text));

  it.each([
    [0, '0 bit/s'],
    [100, '800 bit/s'],
    [500_000, '4.00 Mbit/s'],
    [5_100, '40.8 kbit/s'],
  ])('formatBitRate(%d bytes/s) = %s', (n, text) => expect(formatBitRate(n)).toBe(text));

  it.each([
    [850, '850ms'],
    [45_000, '45s'],
    [65_000, '1m05s'],
    [3_600_000, '1h00m'],
    [7_380_000, '2h03m'],
  ])('formatDuration(%d) = %s', (ms, text) => expect(formatDuration(ms)).toBe(text));
});
