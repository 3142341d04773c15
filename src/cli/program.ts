import { Command, CommanderError, InvalidArgumentError, Option } from 'commander';
import { MAX_TIMER_MS } from '../component.js';
import { DURATION_HINT, parseDuration } from '../config/duration.js';
import { formatJson, pipelineSchema } from '../pipeline/schema.js';
import { escapeControlKeepLines } from '../config/text.js';
import { packageVersion } from '../paths.js';
import { redactText } from '../redact.js';
import { defaultRegistry } from '../pipeline/registry.js';
import type { CliIo } from './io.js';
import { runDemo } from './demo.js';
import { registerFirewallCommands } from './firewall.js';
import { registerReplicationCommands } from './replication.js';
import { LOG_LEVELS } from './log.js';
import { runFile } from './run.js';
import { flushCommand, statusCommand } from './status-command.js';
import { listTypes, validateFiles } from './validate.js';

/** Exit codes: a command that failed exits 1; a command line that is wrong exits 2, like a shell's. */
export const EXIT_FAILURE = 1;
export const EXIT_USAGE = 2;

/** Option parsers: commander reports an InvalidArgumentError with the option's name (exit 2). */
function parseDurationMs(text: string): number {
  const ms = parseDuration(text);
  if (ms === undefined) throw new InvalidArgumentError(DURATION_HINT);
  // Node turns a longer timer into 1 ms.
  if (ms > MAX_TIMER_MS) {
    throw new InvalidArgumentError(
      `at most ${MAX_TIMER_MS} ms (about 24.8 days), the longest a timer can wait`,
    );
  }
  return ms;
}

function parseSeconds(text: string): number {
  const n = Number(text);
  if (!/^\d+(\.\d+)?$/.test(text) || !(n > 0)) {
    throw new InvalidArgumentError('give a positive number of seconds, e.g. 10 or 0.5');
  }
  return n;
}

/** --socket of the commands that talk to a running pipeline. */
function socketOption(): Option {
  return new Option(
    '--socket <path>',
    'the status socket of the pipeline (default: $RXFLOW_STATUS_SOCKET, else the only socket in /run/rxflow or $RXFLOW_RUN_DIR)',
  );
}

/** The `rxflow` command line. Actions report their exit code through `setCode`. */
export function createProgram(io: CliIo, setCode: (code: number) => void): Command {
  const registry = () => io.registry ?? defaultRegistry();
  const logLevelOption = (fallback = 'info') =>
    new Option('--log-level <level>', 'log level, on stderr; $RXFLOW_LOG_LEVEL sets the default')
      .choices(LOG_LEVELS)
      .default(io.env.RXFLOW_LOG_LEVEL ?? fallback);
  const program = new Command('rxflow')
    .description(
      'Network-flow agent for Linux: eBPF on TC counts flows, RxJS pipelines export them to Kafka, NATS and OpenTelemetry.',
    )
    .version(packageVersion(), '-V, --version', 'print the version of rxflow')
    .exitOverride()
    .configureOutput({ writeOut: (s) => io.out(s), writeErr: (s) => io.err(s) })
    .showHelpAfterError('(run with --help for usage)');

  program
    .command('validate')
    .description(
      'Check pipeline files without touching the kernel; prints every problem with file:line:column.',
    )
    .argument('[files...]', 'pipeline YAML files')
    .option('--list', 'list the component types a pipeline may use')
    .action(async (files: string[], opts: { list?: boolean }) => {
      if (opts.list) listTypes(registry(), io);
      if (files.length === 0) {
        if (!opts.list) {
          io.err("validate: give one or more pipeline files, or --list; see 'rxflow validate --help'\n");
          setCode(EXIT_USAGE);
        }
        return;
      }
      setCode(await validateFiles(files, registry(), io));
    });

  program
    .command('schema')
    .description('Print the JSON Schema of the pipeline format, for editors (schema/pipeline.schema.json).')
    .action(() => {
      io.out(formatJson(pipelineSchema(registry())));
    });

  program
    .command('run')
    .description(
      'Run a pipeline. SIGINT or SIGTERM drains it (sources stop, the kernel map is read a last time, transforms and sinks flush) and exits 0; a second signal exits at once. SIGUSR1 reads the kernel maps now, as rxflow flush does.',
    )
    .argument('<file>', 'pipeline YAML file')
    .addOption(logLevelOption())
    .option(
      '--status-socket <path>',
      'serve the pipeline state for `rxflow status` on this unix socket (default: /run/rxflow/<file name>.sock; $RXFLOW_RUN_DIR replaces /run/rxflow)',
    )
    .option('--no-status-socket', 'serve no status socket')
    .option(
      '--health-address <host:port>',
      'serve health over HTTP for probes: GET /livez (200 while the process answers), /readyz (200 when running and no component is degraded, else 503 naming them); default $RXFLOW_HEALTH_ADDRESS, else none',
    )
    .addOption(
      new Option(
        '--ledger-log-interval <duration>',
        'log the loss ledger this often, e.g. 30s or 5m (0: only at exit)',
      )
        .argParser(parseDurationMs)
        .default(60_000, '60s'),
    )
    .action(
      async (
        file: string,
        opts: {
          logLevel: string;
          statusSocket?: string | boolean;
          ledgerLogInterval: number;
          healthAddress?: string;
        },
      ) => {
        const healthAddress = opts.healthAddress ?? io.env.RXFLOW_HEALTH_ADDRESS;
        setCode(
          await runFile(
            file,
            {
              logLevel: opts.logLevel,
              // commander gives true for neither flag given when --no-status-socket exists.
              statusSocket:
                typeof opts.statusSocket === 'string'
                  ? opts.statusSocket
                  : opts.statusSocket === false
                    ? false
                    : undefined,
              ledgerLogIntervalMs: opts.ledgerLogInterval,
              ...(healthAddress ? { healthAddress } : {}),
            },
            registry(),
            io,
          ),
        );
      },
    );

  // The commands that talk to a running pipeline through its status socket.
  const socketCommands = [
    [
      'status',
      'Print the state of a running pipeline: its components with what each received, sent, dropped and holds, and the loss ledger.',
      'print the status as JSON',
      statusCommand,
    ],
    [
      'flush',
      'Make a running pipeline read and empty its kernel maps now (ebpf_flows, firewall_sessions), as their next eviction would, instead of waiting for it.',
      'print the answer as JSON',
      flushCommand,
    ],
  ] as const;
  for (const [name, description, jsonHelp, command] of socketCommands) {
    program
      .command(name)
      .description(description)
      .addOption(socketOption())
      .option('--json', jsonHelp)
      .action(async (opts: { socket?: string; json?: boolean }) => {
        setCode(await command(opts, io));
      });
  }

  program
    .command('demo')
    .description(
      'Show rxflow at work: make two network namespaces with varied traffic between them, run pipelines/demo.yaml with an embedded Kafka broker, and show the top flows and the loss ledger live. Ctrl-C stops it and removes everything. Needs root.',
    )
    .addOption(logLevelOption('warn'))
    .addOption(
      new Option(
        '--duration-s <seconds>',
        'stop after this many seconds (default: run until Ctrl-C)',
      ).argParser(parseSeconds),
    )
    .addOption(
      new Option(
        '--refresh-s <seconds>',
        'seconds between two tables (default: 1 on a terminal, 3 otherwise)',
      ).argParser(parseSeconds),
    )
    .action(async (opts: { logLevel: string; durationS?: number; refreshS?: number }) => {
      setCode(await runDemo(opts, io));
    });

  registerReplicationCommands(registerFirewallCommands(program, io), io);

  return program;
}

/** Runs the command line `argv` (without node and script) and returns the exit code. */
export async function runCli(argv: readonly string[], io: CliIo): Promise<number> {
  let code = 0;
  const program = createProgram(io, (c) => (code = c));
  try {
    await program.parseAsync([...argv], { from: 'user' });
  } catch (err) {
    // commander ends --help, --version and `rxflow help` with 0; every other of its errors is a
    // wrong command line (unknown command or option, missing or invalid argument, no command).
    if (err instanceof CommanderError) return err.exitCode === 0 ? 0 : EXIT_USAGE;
    // Whatever failed, its message reaches the terminal without credentials or control characters.
    io.err(`rxflow: ${escapeControlKeepLines(redactText((err as Error).message))}\n`);
    return EXIT_FAILURE;
  }
  return code;
}
