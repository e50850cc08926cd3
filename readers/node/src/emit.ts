// Naming invalidations where the application writes: keys, namespaces and
// rows the daemon's relationship graph cannot derive, named inside the
// application's own transaction, so they are applied if and only if it
// commits, in order with its rows (docs/readers.md, "Naming
// invalidations"; the daemon's [messages] section). The Rust crate's twin
// is readers/rust/src/emit.rs.
//
//   PostgreSQL (node-postgres): emitInvalidation(client, {keys, namespaces})
//     writes a transactional logical-decoding message.
//   MySQL, MariaDB (mysql2) or PostgreSQL without messages: outboxInsert(table,
//     {keys, namespaces}, '?') gives the INSERT of an outbox row to run in the
//     transaction.
//
// Import it as '@cdc-invalidator/cache/dist/src/emit'.

/** The daemon's default [messages] prefix. */
export const DEFAULT_PREFIX = 'cdc-invalidator';
/** The content version written here and read by the daemon. */
export const CONTENT_VERSION = 1;
/** The daemon's default [messages] outbox_column. */
export const OUTBOX_COLUMN = 'content';

/** What one transaction names. Keys are rendered cache keys (see key());
 * namespaces are declared in the daemon's config; rows are rows of
 * configured entities (the [[entity]] table), columns as Debezium prints
 * them, invalidated as if they had changed. */
export interface Invalidation {
  keys?: readonly string[];
  namespaces?: readonly string[];
  rows?: readonly { entity: string; row: Record<string, unknown> }[];
}

/** The daemon would refuse the content (a dead letter): refused here, before the commit. */
export class InvalidationError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'InvalidationError';
  }
}

/** The smallest part of a node-postgres Client or PoolClient used here. */
export interface Queryable {
  query(text: string, values?: unknown[]): Promise<unknown>;
}

const HEX = /^[0-9A-F]{2}$/;

/** The daemon's rule for a named key: not empty, not `epoch` or `ns:*`, and
 * nothing rendering always escapes (control characters, braces, a `%` that
 * is not `%XX`). A brace is most often a template never rendered. */
function checkKey(key: string): void {
  if (key === '') throw new InvalidationError('an empty key');
  if (key === 'epoch' || key.startsWith('ns:')) {
    throw new InvalidationError(`key ${JSON.stringify(key)} is reserved (epoch, ns:*): name namespaces as namespaces`);
  }
  for (let i = 0; i < key.length; i++) {
    const c = key.charCodeAt(i);
    const bad = c < 0x20 || c === 0x7f || c === 0x7b || c === 0x7d || (c === 0x25 && !HEX.test(key.slice(i + 1, i + 3)));
    if (bad) {
      throw new InvalidationError(`key ${JSON.stringify(key)} holds ${JSON.stringify(key[i])} at ${i}: not a rendered cache key (render it with key())`);
    }
  }
}

/** The content text (version 1), checked as the daemon checks it. Integers
 * beyond 2^53 in rows may be given as bigint: they are written exactly. */
export function invalidationContent(invalidation: Invalidation): string {
  const keys = invalidation.keys ?? [];
  const namespaces = invalidation.namespaces ?? [];
  const rows = invalidation.rows ?? [];
  if (!keys.length && !namespaces.length && !rows.length) throw new InvalidationError('names no key, namespace or row');
  for (const k of keys) {
    if (typeof k !== 'string') throw new InvalidationError(`key ${String(k)} is not a string`);
    checkKey(k);
  }
  for (const n of namespaces) {
    if (typeof n !== 'string' || n === '') throw new InvalidationError('a namespace that is empty or not a string');
  }
  for (const r of rows) {
    if (typeof r.entity !== 'string' || r.entity === '') throw new InvalidationError('a row with an empty entity');
    if (r.row === null || typeof r.row !== 'object' || Array.isArray(r.row)) throw new InvalidationError(`row of ${r.entity} is not an object`);
  }
  const content: Record<string, unknown> = { v: CONTENT_VERSION };
  if (keys.length) content.keys = keys;
  if (namespaces.length) content.namespaces = namespaces;
  if (rows.length) content.rows = rows.map((r) => ({ entity: r.entity, row: r.row }));
  // JSON has no bigint: mark each, then put its digits in unquoted.
  const marked = JSON.stringify(content, (_, v) => (typeof v === 'bigint' ? `\u0000bigint:${v.toString()}` : v));
  return marked.replace(/"\\u0000bigint:(-?[0-9]+)"/g, '$1');
}

/** Names `invalidation` in the transaction `client` is in, as a
 * transactional logical-decoding message: delivered only if it commits. */
export async function emitInvalidation(client: Queryable, invalidation: Invalidation, options: { prefix?: string } = {}): Promise<void> {
  const content = invalidationContent(invalidation);
  // true: transactional. The daemon refuses the other kind, which is
  // delivered even when the transaction rolls back.
  await client.query('SELECT pg_logical_emit_message(true, $1, $2::text)', [options.prefix ?? DEFAULT_PREFIX, content]);
}

const PLAIN = /^[A-Za-z0-9_]+(\.[A-Za-z0-9_]+)?$/;

/** The INSERT of one outbox row naming `invalidation`, to run in the
 * transaction: placeholder '$1' for node-postgres (a text column), '?' for
 * mysql2. Keep the table small: delete old rows (the daemon skips deletes). */
export function outboxInsert(table: string, invalidation: Invalidation, placeholder: '$1' | '?' = '$1'): { text: string; values: [string] } {
  if (!PLAIN.test(table)) throw new InvalidationError(`outbox table ${JSON.stringify(table)} is not a plain name (letters, digits and _, optionally schema.table)`);
  return { text: `INSERT INTO ${table} (${OUTBOX_COLUMN}) VALUES (${placeholder})`, values: [invalidationContent(invalidation)] };
}
