import { defaultCapabilities, quoteIdentifierStandard, type SqlDialect } from '../../core/sql.js';

/** SQLite as strata sees it: `?` placeholders, one writer at a time, always serializable. */
export const sqliteDialect: SqlDialect = Object.freeze({
  name: 'sqlite',
  capabilities: Object.freeze({
    ...defaultCapabilities,
    returning: true,
    savepoints: true,
    transactionalDdl: true,
    upsert: true,
    concurrentWriters: false,
    isolationLevels: Object.freeze([
      'read uncommitted',
      'read committed',
      'repeatable read',
      'serializable',
    ] as const),
    maxParameters: 32_766,
  }),
  placeholder: () => '?',
  quoteIdentifier: quoteIdentifierStandard,
});
