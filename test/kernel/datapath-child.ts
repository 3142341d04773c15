/**
 * A separate process for the datapath kernel tests (transpiled by buildChild() in
 * datapath-helpers.ts). Prints one JSON line, then:
 *   attach <object> <pinDir> <ifname> <ingress|egress> <tcx|clsact> <pinPath|->
 *     loads the object with the pin directory, attaches count_echo and stays alive until killed;
 *   load <object>
 *     loads the object and exits, reporting the error code and message if it fails.
 */
import { DatapathError } from '../../src/datapath/errors.js';
import { attachTc, type TcDirection } from '../../src/datapath/link.js';
import { ObjectSpec } from '../../src/datapath/object.js';

function report(value: unknown): void {
  process.stdout.write(`${JSON.stringify(value)}\n`);
}

const [command, ...args] = process.argv.slice(2);
try {
  if (command === 'attach') {
    const [object, pinDir, ifname, direction, mode, pinPath] = args as [
      string,
      string,
      string,
      TcDirection,
      'tcx' | 'clsact',
      string,
    ];
    const coll = ObjectSpec.open(object).load({ pinDir });
    const link = attachTc(coll.program('count_echo'), ifname, direction, {
      mode,
      pinPath: pinPath === '-' ? undefined : pinPath,
    });
    report({ ok: true, programId: link.programId, mode: link.mode });
    setInterval(() => undefined, 60_000);
  } else if (command === 'load') {
    const coll = ObjectSpec.open(args[0]!).load();
    coll.close();
    report({ ok: true });
  } else {
    report({ ok: false, code: 'USAGE', message: `unknown command ${command}` });
    process.exitCode = 2;
  }
} catch (err) {
  report({
    ok: false,
    code: err instanceof DatapathError ? err.code : 'UNEXPECTED',
    message: err instanceof Error ? err.message : String(err),
  });
  process.exitCode = 1;
}
