import type { TestProject } from 'vitest/node';
import { probeServices, type ServiceName, testEnvironment } from '../src/testing/environment.js';

declare module 'vitest' {
  export interface ProvidedContext {
    services: Record<ServiceName, boolean>;
  }
}

/**
 * Probes PostgreSQL, Redis and NATS once per run. Unreachable engines skip their integration
 * tests with one loud line; with STRATA_REQUIRE_SERVICES=1 (as CI sets) the run fails instead.
 */
export default async function setup(project: TestProject): Promise<void> {
  const env = testEnvironment();
  const services = await probeServices(env);
  const missing = (Object.keys(services) as ServiceName[]).filter((name) => !services[name]);
  if (missing.length > 0) {
    const where = missing
      .map((name) => {
        const urls: Record<ServiceName, string> = {
          postgres: env.postgresUrl,
          redis: env.redisUrl,
          nats: env.natsUrl,
          pgServers: env.postgresServerUrls.join(' '),
          pgReplicas: env.postgresReplicaUrls.join(' '),
        };
        return `${name} (${urls[name]})`;
      })
      .map((s) => s.replace(/\/\/[^@/]*:[^@/]*@/, '//***@'))
      .join(', ');
    const line = `!!! strata: SKIPPING integration tests for unreachable ${where}; run scripts/services.sh to start them`;
    if (process.env.STRATA_REQUIRE_SERVICES === '1') {
      throw new Error(
        `strata: integration tests need ${where}, which is unreachable (STRATA_REQUIRE_SERVICES=1); run scripts/services.sh`,
      );
    }
    console.warn(`\n${'!'.repeat(100)}\n${line}\n${'!'.repeat(100)}\n`);
  }
  project.provide('services', services);
}
