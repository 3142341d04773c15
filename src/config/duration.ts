/**
 * Options whose name ends in `_ms` take milliseconds: an integer, or a string with units such as
 * `500ms`, `5s`, `1m`, `1h` or `1m30s`, which people read more easily than 90000.
 */

const UNIT_MS: Record<string, number> = { ms: 1, s: 1000, m: 60_000, h: 3_600_000 };
const PART = /(\d+(?:\.\d+)?)(ms|s|m|h)/y;

/** The JSON Schema `pattern` of a duration string, for editors. */
export const DURATION_PATTERN = '^(\\d+|(\\d+(\\.\\d+)?(ms|s|m|h))+)$';

export const DURATION_HINT =
  'write milliseconds as an integer (5000) or a number with a unit: 500ms, 5s, 1m, 1h, 1m30s';

/** Milliseconds in a duration string, or undefined if it is not one or is not a whole number of ms. */
export function parseDuration(text: string): number | undefined {
  if (/^\d+$/.test(text)) return Number(text);
  if (text === '') return undefined;
  let total = 0;
  PART.lastIndex = 0;
  while (PART.lastIndex < text.length) {
    const m = PART.exec(text);
    if (!m) return undefined;
    total += Number(m[1]) * UNIT_MS[m[2]!]!;
  }
  // 1.5s is fine; 0.5ms is not a whole number of milliseconds. Rounding guards against 0.1 * 3 style
  // binary noise, so 1.1s is 1100 and not 1100.0000000000002.
  const rounded = Math.round(total * 1000) / 1000;
  return Number.isSafeInteger(rounded) ? rounded : undefined;
}

/** True for an option name that holds milliseconds. */
export function isDurationKey(key: string): boolean {
  return key.endsWith('_ms');
}
