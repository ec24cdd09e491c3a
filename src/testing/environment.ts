/**
 * Where the real engines are for tests, from the standard variables with loopback defaults, and
 * a quick reachability probe used to skip (or, under `STRATA_REQUIRE_SERVICES=1`, fail)
 * integration tests when a server is missing.
 */
import { Socket } from 'node:net';

/** The engines integration tests can use (`pgServers`: the extra PostgreSQL servers for multi-server tests). */
export type ServiceName = 'postgres' | 'redis' | 'nats' | 'pgServers' | 'pgReplicas';

/** Connection settings of the test engines. */
export interface TestEnvironment {
  /** PostgreSQL admin URL (`DATABASE_URL`, else `PG*` variables, else postgres@127.0.0.1:5432). */
  postgresUrl: string;
  /** Redis URL (`REDIS_URL`, else redis://127.0.0.1:6379). */
  redisUrl: string;
  /** NATS URL (`NATS_URL`, else nats://127.0.0.1:4222). */
  natsUrl: string;
  /**
   * Admin URLs of extra PostgreSQL servers for multi-server tests (`STRATA_PG_SERVERS`,
   * comma-separated; else the two clusters `scripts/services.sh` starts on 5433 and 5434).
   */
  postgresServerUrls: string[];
  /**
   * Admin URLs of streaming replicas of `postgresUrl`'s server (`STRATA_PG_REPLICAS`,
   * comma-separated; else the two replicas `scripts/services.sh` starts on 5441 and 5442).
   */
  postgresReplicaUrls: string[];
}

/** Reads the connection settings from the environment. */
export function testEnvironment(env: NodeJS.ProcessEnv = process.env): TestEnvironment {
  return {
    postgresUrl: env.DATABASE_URL ?? postgresUrlFromPgVars(env),
    redisUrl: env.REDIS_URL ?? 'redis://127.0.0.1:6379',
    natsUrl: env.NATS_URL ?? 'nats://127.0.0.1:4222',
    postgresServerUrls: (
      env.STRATA_PG_SERVERS ??
      'postgres://postgres@127.0.0.1:5433/postgres,postgres://postgres@127.0.0.1:5434/postgres'
    )
      .split(',')
      .map((u) => u.trim())
      .filter((u) => u.length > 0),
    postgresReplicaUrls: (
      env.STRATA_PG_REPLICAS ??
      'postgres://postgres@127.0.0.1:5441/postgres,postgres://postgres@127.0.0.1:5442/postgres'
    )
      .split(',')
      .map((u) => u.trim())
      .filter((u) => u.length > 0),
  };
}

function postgresUrlFromPgVars(env: NodeJS.ProcessEnv): string {
  const url = new URL('postgres://localhost');
  url.hostname = env.PGHOST ?? '127.0.0.1';
  url.port = env.PGPORT ?? '5432';
  url.username = env.PGUSER ?? 'postgres';
  if (env.PGPASSWORD !== undefined) url.password = env.PGPASSWORD;
  url.pathname = `/${env.PGDATABASE ?? 'postgres'}`;
  return url.toString();
}

/** Host and port of a service URL, with the engine's default port. */
export function hostPort(url: string, defaultPort: number): { host: string; port: number } {
  const parsed = new URL(url);
  const host = parsed.hostname.replace(/^\[|\]$/g, '') || '127.0.0.1';
  return { host, port: parsed.port === '' ? defaultPort : Number(parsed.port) };
}

/** Resolves true when a TCP connection to `host:port` opens within `timeoutMs`. */
export function canConnect(host: string, port: number, timeoutMs = 1_000): Promise<boolean> {
  return new Promise((resolve) => {
    const socket = new Socket();
    const done = (ok: boolean) => {
      socket.destroy();
      resolve(ok);
    };
    socket.setTimeout(timeoutMs, () => done(false));
    socket.once('error', () => done(false));
    socket.connect(port, host, () => done(true));
  });
}

/** Probes every test engine; the result maps each to whether it is reachable. */
export async function probeServices(
  env: TestEnvironment = testEnvironment(),
): Promise<Record<ServiceName, boolean>> {
  const targets: Record<Exclude<ServiceName, 'pgServers' | 'pgReplicas'>, { host: string; port: number }> = {
    postgres: hostPort(env.postgresUrl, 5432),
    redis: hostPort(env.redisUrl, 6379),
    nats: hostPort(env.natsUrl, 4222),
  };
  const entries = await Promise.all(
    (Object.keys(targets) as Exclude<ServiceName, 'pgServers' | 'pgReplicas'>[]).map(
      async (name) => [name, await canConnect(targets[name].host, targets[name].port)] as const,
    ),
  );
  const reachable = async (urls: string[]) => {
    const ok = await Promise.all(
      urls.map((url) => {
        const { host, port } = hostPort(url, 5432);
        return canConnect(host, port);
      }),
    );
    return ok.length > 0 && ok.every(Boolean);
  };
  return {
    ...(Object.fromEntries(entries) as Record<Exclude<ServiceName, 'pgServers' | 'pgReplicas'>, boolean>),
    pgServers: await reachable(env.postgresServerUrls),
    pgReplicas: await reachable(env.postgresReplicaUrls),
  };
}
