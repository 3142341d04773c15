/** Plain-text tables and number formats shared by `rxflow status` and `rxflow demo`. */

export interface Column {
  title: string;
  /** Numbers read best right-aligned; text left (the default). */
  align?: 'left' | 'right';
}

/**
 * Lays out rows under their column titles, two spaces between columns, each column as wide as its
 * widest cell; trailing spaces are trimmed.
 */
export function renderTable(columns: readonly Column[], rows: readonly (readonly string[])[]): string[] {
  const widths = columns.map((c, i) => Math.max(c.title.length, ...rows.map((r) => (r[i] ?? '').length)));
  const line = (cells: readonly string[]): string =>
    columns
      .map((c, i) => {
        const cell = cells[i] ?? '';
        return c.align === 'right' ? cell.padStart(widths[i]!) : cell.padEnd(widths[i]!);
      })
      .join('  ')
      .trimEnd();
  return [line(columns.map((c) => c.title)), ...rows.map(line)];
}

/** An exact count with thousands separators: 1234567 -> 1,234,567. */
export function formatCount(n: number): string {
  const sign = n < 0 ? '-' : '';
  return sign + String(Math.abs(Math.trunc(n))).replace(/\B(?=(\d{3})+(?!\d))/g, ',');
}

const SI = ['', 'k', 'M', 'G', 'T', 'P'];

function si(value: number, unit: string): string {
  let v = value;
  let i = 0;
  while (Math.abs(v) >= 1000 && i < SI.length - 1) {
    v /= 1000;
    i++;
  }
  if (i === 0) return `${Math.round(v)} ${unit}`;
  return `${v.toFixed(v < 10 ? 2 : v < 100 ? 1 : 0)} ${SI[i]}${unit}`;
}

/** Bytes in SI units: 999 B, 1.50 kB, 12.3 MB. */
export function formatBytes(bytes: number): string {
  return si(bytes, 'B');
}

/** A byte rate as a network rate in bits per second: 1.20 Mbit/s. */
export function formatBitRate(bytesPerSecond: number): string {
  return si(bytesPerSecond * 8, 'bit/s');
}

/** A duration for people: 850ms, 45s, 1m05s, 2h03m. */
export function formatDuration(ms: number): string {
  if (ms < 1000) return `${Math.round(ms)}ms`;
  const s = Math.floor(ms / 1000);
  if (s < 60) return `${s}s`;
  const m = Math.floor(s / 60);
  if (m < 60) return `${m}m${String(s % 60).padStart(2, '0')}s`;
  const h = Math.floor(m / 60);
  return `${h}h${String(m % 60).padStart(2, '0')}m`;
}
