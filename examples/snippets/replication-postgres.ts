import { sql } from 'strata';
import { createPostgresDriver, postgresWalPosition } from 'strata/postgres';
import { createReplicaSet, type HealthChange } from 'strata/replication';

export function ordersDatabase(primaryUrl: string, replicaUrls: readonly string[], tokenSecret: string) {
  const primary = createPostgresDriver({ url: primaryUrl });
  const replicas = replicaUrls.map((url, i) => ({
    name: `replica_${i + 1}`,
    driver: createPostgresDriver({ url }),
  }));
  const changes: HealthChange[] = [];
  const set = createReplicaSet({
    primary,
    replicas,
    position: postgresWalPosition(), // tokens carry WAL positions (LSNs)
    balance: 'least-lag', // eventual reads: the replica with the least measured lag
    health: { interval: '250ms', maxLag: '10s', failures: 3, timeout: '1s' },
    session: { wait: '500ms', pollEvery: '10ms' },
    clusterId: 'orders',
    tokenSecret,
    onHealthChange: (change) => changes.push(change), // { replica, from, to, errorCode }
  });

  return {
    set,
    changes,
    /** The HTTP handler: the token goes back in a header; a queued job carries it along. */
    async placeOrder(customer: string, total: number, queue: Array<{ orderId: number; token: string }>) {
      const { value: orderId, token } = await set.transaction(async (tx) => {
        const { rows } = await tx.query<{ id: number }>(
          sql`insert into orders (customer, total) values (${customer}, ${total}) returning id`,
        );
        return rows[0]!.id;
      });
      queue.push({ orderId, token }); // the worker reads with it and sees the order
      return { orderId, headers: { 'x-consistency-token': token } };
    },
    /** The worker: a job's token makes its read wait for a replica that has the order. */
    async handleJob(job: { orderId: number; token: string }) {
      return set.read<{ total: number }>(sql`select total from orders where id = ${job.orderId}`, {
        consistency: { session: job.token },
      });
    },
    async close() {
      await set.close(); // stops the monitor; the drivers stay open
      for (const r of replicas) await r.driver.close();
      await primary.close();
    },
  };
}
