// Records, data keys, lease keys and stale keys (readers/spec.md sections
// 2, 3 and 6). Pure functions: the conformance vectors test them without
// Redis. Versions stay decimal strings: they may exceed 2^53.

const MAX_VERSION = 9223372036854775807n; // Redis's own integer range (HINCRBY)

export class BadVersionError extends Error {
  readonly kind = 'bad_version';
  constructor(
    readonly record: string,
    readonly field: string,
    readonly text: string,
  ) {
    super(
      `version record ${JSON.stringify(record)}: field ${JSON.stringify(field)} holds ${JSON.stringify(text)}, ` +
        'not a version (decimal digits, 0 to 2^63-1, no leading zero)',
    );
    this.name = 'BadVersionError';
  }
}

export class InvalidOptionsError extends Error {
  readonly kind = 'invalid_options';
  constructor(message: string) {
    super(`invalid options: ${message}`);
    this.name = 'InvalidOptionsError';
  }
}

/** A version field's text; null when the field is missing. */
export function parseVersion(record: string, field: string, text: string | null | undefined): string | null {
  if (text === null || text === undefined) return null;
  if (!/^(0|[1-9][0-9]{0,18})$/.test(text) || BigInt(text) > MAX_VERSION) {
    throw new BadVersionError(record, field, text);
  }
  return text;
}

export interface Fields {
  v: string;
  pv: string | null;
}

export class Layout {
  /** The version records read, in order: the epoch, the deps, the namespaces. */
  readonly records: string[];
  /** How many of records[1..] are deps. */
  readonly deps: number;

  constructor(
    prefix: string,
    readonly key: string,
    deps: string[] | undefined | null,
    namespaces: string[],
  ) {
    if (typeof key !== 'string' || key === '') throw new InvalidOptionsError('empty cache key');
    const own = deps ?? [key];
    const named = (what: string) => `key ${JSON.stringify(key)}: ${what}`;
    if (!Array.isArray(own) || own.length === 0) {
      throw new InvalidOptionsError(
        named('deps is empty: a value that depends on no version record is never invalidated (leave deps out to mean the key itself)'),
      );
    }
    if (own.some((d) => typeof d !== 'string' || d === '')) throw new InvalidOptionsError(named('an empty dependency name'));
    if (!Array.isArray(namespaces) || namespaces.some((n) => typeof n !== 'string' || n === '')) {
      throw new InvalidOptionsError(named('an empty namespace name'));
    }
    for (const dep of own) {
      if (dep === 'epoch' || dep.startsWith('ns:')) {
        throw new InvalidOptionsError(`key ${JSON.stringify(key)}: dependency ${JSON.stringify(dep)} is reserved (the epoch and namespace records)`);
      }
    }
    this.records = [`${prefix}epoch`, ...own.map((d) => prefix + d), ...namespaces.map((n) => `${prefix}ns:${n}`)];
    this.deps = own.length;
  }

  /** `K@e<e>:v<..>...:n<..>...`; `versions` are the records after the epoch. */
  dataKey(epoch: string, versions: string[]): string {
    let out = `${this.key}@e${epoch}`;
    versions.forEach((v, i) => {
      out += (i < this.deps ? ':v' : ':n') + v;
    });
    return out;
  }

  /** The previous version's data key and the last bump's age in µs at `nowUs`. */
  staleKey(epoch: string, fields: Fields[], nowUs: bigint): { key: string; ageUs: bigint } | null {
    if (fields.length === 0) return null;
    let highest = 0n;
    for (const f of fields) if (BigInt(f.v) > highest) highest = BigInt(f.v);
    if (highest === 0n || BigInt(epoch) >= highest) return null;
    const at = fields.map((f, i) => (BigInt(f.v) === highest ? i : -1)).filter((i) => i >= 0);
    // Two records at the same version: which moved last is unknown.
    if (at.length !== 1) return null;
    const previous = fields[at[0]].pv;
    if (previous === null) return null;
    const key = this.dataKey(
      epoch,
      fields.map((f, i) => (i === at[0] ? previous : f.v)),
    );
    const age = nowUs - highest;
    return { key, ageUs: age > 0n ? age : 0n };
  }
}

export const leaseKey = (dataKey: string): string => `${dataKey}:lease`;
