import { defaultCapabilities, quoteIdentifierStandard, type SqlDialect } from '../../core/sql.js';

/**
 * PostgreSQL as strata sees it: `$1` placeholders, standard identifier quoting, every capability
 * switched on, all four isolation levels and up to 65535 bound parameters per statement.
 */
export const postgresDialect: SqlDialect = Object.freeze({
  name: 'postgres',
  capabilities: Object.freeze({
    ...defaultCapabilities,
    returning: true,
    savepoints: true,
    transactionalDdl: true,
    upsert: true,
    listenNotify: true,
    skipLocked: true,
    jsonb: true,
    declarativePartitioning: true,
    logicalReplication: true,
    concurrentWriters: true,
    isolationLevels: Object.freeze([
      'read uncommitted',
      'read committed',
      'repeatable read',
      'serializable',
    ] as const),
    maxParameters: 65_535,
  }),
  placeholder: (index: number) => `$${index}`,
  quoteIdentifier: quoteIdentifierStandard,
});
