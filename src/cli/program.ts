import { Command, CommanderError, Option } from 'commander';
import { formatJson, pipelineSchema } from '../pipeline/schema.js';
import { defaultRegistry } from '../pipeline/registry.js';
import type { CliIo } from './io.js';
import { runFile } from './run.js';
import { listTypes, validateFiles } from './validate.js';

/** The `rxflow` command line. Actions report their exit code through `setCode`. */
export function createProgram(io: CliIo, setCode: (code: number) => void): Command {
  const registry = () => io.registry ?? defaultRegistry();
  const program = new Command('rxflow')
    .description(
      'Network-flow agent for Linux: eBPF on TC counts flows, RxJS pipelines export them to Kafka, NATS and OpenTelemetry.',
    )
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
          setCode(1);
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
      'Run a pipeline. SIGINT or SIGTERM drains it (sources stop, transforms and sinks flush) and exits 0; a second signal exits at once.',
    )
    .argument('<file>', 'pipeline YAML file')
    .addOption(
      new Option('--log-level <level>', 'log level')
        .choices(['trace', 'debug', 'info', 'warn', 'error', 'fatal', 'silent'])
        .default(io.env.RXFLOW_LOG_LEVEL ?? 'info'),
    )
    .action(async (file: string, opts: { logLevel: string }) => {
      setCode(await runFile(file, opts, registry(), io));
    });

  return program;
}

/** Runs the command line `argv` (without node and script) and returns the exit code. */
export async function runCli(argv: readonly string[], io: CliIo): Promise<number> {
  let code = 0;
  const program = createProgram(io, (c) => (code = c));
  try {
    await program.parseAsync([...argv], { from: 'user' });
  } catch (err) {
    if (err instanceof CommanderError) return err.exitCode;
    io.err(`rxflow: ${(err as Error).message}\n`);
    return 1;
  }
  return code;
}
