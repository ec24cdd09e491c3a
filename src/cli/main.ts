#!/usr/bin/env node
/** The `strata` executable: runs the command line and exits with its code. */
import { processIo } from './output.js';
import { run } from './program.js';

const code = await run(process.argv, processIo());
// Keep-alive sockets and engine handles must not hold a finished command open; wait for the
// streams to flush, then exit with the command's code.
await new Promise<void>((resolve) => process.stdout.write('', () => resolve()));
process.exit(code);
