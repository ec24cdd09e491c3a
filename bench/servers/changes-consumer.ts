/**
 * A strata consumer in its own process for the changes benchmark: reads a log, counts inserts
 * of `items`, and prints `n <count>` lines and `t <id> <epoch ms with fraction>` arrival times.
 * Usage: changes-consumer.ts <log spec> <report every n>.
 */
import { performance } from 'node:perf_hooks';
import { createSqliteDriver } from '../../src/backends/sqlite/sqlite-driver.js';
import { createConsumer } from '../../src/changes/consumer.js';
import { createSqlCheckpointStore } from '../../src/changes/sql-checkpoint-store.js';
import { openLog } from '../../src/cli/endpoints.js';

const [spec, every] = process.argv.slice(2);
const log = await openLog(spec!, 'log', true);
const db = createSqliteDriver(':memory:');
const checkpoints = createSqlCheckpointStore(db);
await checkpoints.migrate();
let count = 0;
const reportEvery = Number(every ?? 1000);
const consumer = createConsumer({
  name: 'bench',
  log,
  checkpoints,
  batchSize: 1000,
  concurrency: 1,
  pollInterval: '50ms',
  lease: false,
  startFrom: 'end',
  handleBatch: (entries) => {
    const now = performance.timeOrigin + performance.now();
    let out = '';
    for (const e of entries) {
      if (e.op !== 'insert') continue;
      count++;
      if (reportEvery === 1) out += `t ${e.key.id} ${now}\n`;
    }
    if (reportEvery === 1 || count % reportEvery < entries.length) out += `n ${count}\n`;
    if (out) process.stdout.write(out);
  },
});
await consumer.start();
process.stdout.write('ready\n');
process.on('SIGTERM', () => {
  void consumer.stop().then(() => process.exit(0));
});
setInterval(() => undefined, 1 << 30);
