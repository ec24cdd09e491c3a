/**
 * Schema validation through the Standard Schema interface, so users bring Zod, Valibot, ArkType
 * or any other library that implements it.
 */
import type { StandardSchemaV1 } from '@standard-schema/spec';
import { ConfigError, ValidationError, type ValidationIssue } from './errors.js';

export type { StandardSchemaV1 };

/** The output type of a Standard Schema. */
export type InferOutput<S extends StandardSchemaV1> = StandardSchemaV1.InferOutput<S>;
/** The input type of a Standard Schema. */
export type InferInput<S extends StandardSchemaV1> = StandardSchemaV1.InferInput<S>;

/** True when `value` implements Standard Schema v1. */
export function isStandardSchema(value: unknown): value is StandardSchemaV1 {
  if ((typeof value !== 'object' && typeof value !== 'function') || value === null) return false;
  const props = (value as { '~standard'?: { version?: unknown; validate?: unknown } })['~standard'];
  return (
    typeof props === 'object' && props !== null && props.version === 1 && typeof props.validate === 'function'
  );
}

/** Throws `E_CONFIG` naming `option` unless `schema` implements Standard Schema v1. */
export function assertStandardSchema(schema: unknown, option: string): asserts schema is StandardSchemaV1 {
  if (!isStandardSchema(schema)) {
    throw new ConfigError(option, 'expected a Standard Schema (Zod, Valibot, ArkType, ...)');
  }
}

function toPath(path: StandardSchemaV1.Issue['path']): (string | number)[] {
  if (path === undefined) return [];
  return path.map((segment) => {
    const key = typeof segment === 'object' && segment !== null ? segment.key : segment;
    return typeof key === 'number' ? key : String(key);
  });
}

function toIssues(issues: ReadonlyArray<StandardSchemaV1.Issue>): ValidationIssue[] {
  return issues.map((issue) => ({ path: toPath(issue.path), message: issue.message }));
}

/** Options for `validate`. */
export interface ValidateOptions {
  /** What is being validated, for the error message (`'request body'`, `'event UserCreated'`). */
  subject?: string;
}

/**
 * Validates `value` with `schema` and returns the schema's output (with its defaults and
 * transforms applied). Throws `E_VALIDATION` listing every issue with its path and message.
 */
export async function validate<S extends StandardSchemaV1>(
  schema: S,
  value: unknown,
  options: ValidateOptions = {},
): Promise<InferOutput<S>> {
  const result = await schema['~standard'].validate(value);
  if (result.issues) throw new ValidationError(toIssues(result.issues), { subject: options.subject });
  return result.value as InferOutput<S>;
}

/**
 * Like `validate`, without a promise, for hot paths. Throws `E_CONFIG` (option `schema`) when
 * the schema validates asynchronously.
 */
export function validateSync<S extends StandardSchemaV1>(
  schema: S,
  value: unknown,
  options: ValidateOptions = {},
): InferOutput<S> {
  const result = schema['~standard'].validate(value);
  if (result instanceof Promise) {
    throw new ConfigError('schema', 'this schema validates asynchronously; use validate() instead');
  }
  if (result.issues) throw new ValidationError(toIssues(result.issues), { subject: options.subject });
  return result.value as InferOutput<S>;
}
