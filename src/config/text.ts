/**
 * Text from a file or the environment on its way to a terminal or a log: a pipeline file may hold
 * anything (a binary file given by mistake, escape sequences in a value), and a message that
 * echoes it raw could clear the screen, hide lines or change the terminal's title.
 */

// C0 and C1 controls, DEL, and the bidirectional overrides and isolates (which reorder what is shown).
const CONTROL = /[\u0000-\u0008\u000b-\u001f\u007f-\u009f\u2028\u2029\u202a-\u202e\u2066-\u2069]/g;
const CONTROL_OR_NEWLINE = /[\u0000-\u001f\u007f-\u009f\u2028\u2029\u202a-\u202e\u2066-\u2069]/g;

function escapeChar(c: string): string {
  if (c === '\n') return '\\n';
  if (c === '\t') return '\\t';
  if (c === '\r') return '\\r';
  const code = c.charCodeAt(0);
  return code <= 0xff
    ? `\\x${code.toString(16).padStart(2, '0')}`
    : `\\u${code.toString(16).padStart(4, '0')}`;
}

/** One line of text: every control character, newlines included, written as an escape (`\x1b`). */
export function escapeControl(text: string): string {
  return text.replace(CONTROL_OR_NEWLINE, escapeChar);
}

/** As escapeControl, but keeps newlines and tabs: for messages of several lines. */
export function escapeControlKeepLines(text: string): string {
  return text.replace(CONTROL, (c) => (c === '\t' ? c : escapeChar(c)));
}
