/** The `strata` command line: one commander program, one module per command. */
import { Command, CommanderError } from 'commander';
import { registerChanges } from './changes.js';
import { registerEvents, registerProjections } from './events.js';
import { packageVersion } from './options.js';
import { type CliIo, describeFailure, EXIT_USAGE } from './output.js';
import { registerPartitions } from './partitions.js';
import { registerReplicas } from './replicas.js';
import { registerShards } from './shards.js';
import { registerSimulate } from './simulate.js';
import { registerStart } from './start.js';
import { registerStatus } from './status.js';
import { registerVerify } from './verify.js';

/** Builds the `strata` program writing to `io`; commander's own exits become thrown `CommanderError`s. */
export function createProgram(io: CliIo): Command {
  const program = new Command('strata')
    .description('Data-management patterns of large distributed systems, on real engines.')
    .version(packageVersion(), '-V, --version', 'print the version')
    .helpOption('-h, --help', 'show help')
    .helpCommand(false)
    .exitOverride()
    .configureOutput({
      writeOut: (text) => io.stdout.write(text),
      writeErr: (text) => io.stderr.write(text),
      outputError: (text, write) =>
        write(
          `strata: ${text
            .replace(/^error:\s*/i, '')
            .replace(/\s*\n\s*/g, ' ')
            .trim()}\n`,
        ),
    });
  registerStart(program, io);
  registerSimulate(program, io);
  registerStatus(program, io);
  registerChanges(program, io);
  registerVerify(program, io);
  registerPartitions(program, io);
  registerReplicas(program, io);
  registerShards(program, io);
  registerEvents(program, io);
  registerProjections(program, io);
  return program;
}

/**
 * Runs the program on `argv` (as `process.argv`) and resolves with the exit code: 0 on success,
 * 2 for usage and option errors, 1 for other failures, after printing one `strata: ...` line.
 */
export async function run(argv: readonly string[], io: CliIo): Promise<number> {
  process.exitCode = undefined;
  try {
    await createProgram(io).parseAsync([...argv]);
    return typeof process.exitCode === 'number' ? process.exitCode : 0;
  } catch (err) {
    if (err instanceof CommanderError) return err.exitCode === 0 ? 0 : EXIT_USAGE;
    const failure = describeFailure(err, io.env);
    io.stderr.write(failure.text);
    return failure.exitCode;
  }
}
