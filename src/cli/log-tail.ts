import type { DestinationStream } from 'pino';

const LEVELS: Record<number, string> = {
  10: 'trace',
  20: 'debug',
  30: 'info',
  40: 'warn',
  50: 'error',
  60: 'fatal',
};

/**
 * A log destination that keeps the last few lines as short text, for a screen that is redrawn in
 * place (the live demo table), where lines written to the terminal would be painted over.
 */
export class LogTail implements DestinationStream {
  private readonly kept: string[] = [];

  constructor(private readonly max: number) {}

  write(line: string): void {
    let text = line.trim();
    try {
      const entry = JSON.parse(text) as { level?: number; msg?: string; err?: { message?: string } };
      const level = LEVELS[entry.level ?? 30] ?? String(entry.level);
      text = `${level}: ${entry.msg ?? ''}${entry.err?.message ? `: ${entry.err.message}` : ''}`;
    } catch {
      // Not JSON: keep it as written.
    }
    this.kept.push(text);
    if (this.kept.length > this.max) this.kept.shift();
  }

  lines(): string[] {
    return [...this.kept];
  }
}
