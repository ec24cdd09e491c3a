import type { SqlDriver } from 'strata';
import { reconcile, repair } from 'strata/changes';

export async function verifyAndRepair(primary: SqlDriver, copy: SqlDriver) {
  const report = await reconcile({
    source: { driver: primary, table: 'users' },
    target: { driver: copy, table: 'users' },
    chunkSize: 10_000,
  });
  if (report.clean) return { clean: true, repaired: 0 };
  // { missing: [{ id: 7 }], extra: [...], different: [{ key: { id: 9 }, columns: ['email'] }] }
  console.log(report.mismatches);
  const plan = await repair(report, { from: 'source', dryRun: true });
  const done = await repair(report, { from: 'source', dryRun: false });
  return {
    clean: false,
    planned: plan.plan.insert.length + plan.plan.update.length + plan.plan.delete.length,
    repaired: done.inserted + done.updated + done.deleted,
  };
}
