// Cache keys rendered exactly as the daemon renders its templates
// (docs/key-rendering.md, tests/vectors/keys.json; the daemon's code is
// src/graph/template.rs). A reader that renders `product:{id}` differently
// from the daemon reads a version record nobody bumps.

/** `real` (float32): rendered with its shortest float32 digits. */
export interface Float32 {
  readonly kind: 'float32';
  readonly value: number;
}
/** `double precision` given explicitly: any float64, integral ones above 2^53 too. */
export interface Float64 {
  readonly kind: 'float64';
  readonly value: number;
}
/** `numeric`: decimal text in any notation (`12.50`, `1.5E+3`), rendered as Java's BigDecimal.toPlainString does. */
export interface Decimal {
  readonly kind: 'decimal';
  readonly text: string;
}
/** An integer given as decimal text (any size). */
export interface IntegerText {
  readonly kind: 'integer';
  readonly text: string;
}

/**
 * A column value: a number (an integer within 2^53, or a float64), a
 * bigint, a boolean, text (also uuid, lowercase), a Date (`timestamptz`),
 * one of the wrappers above, or null/undefined (SQL NULL: the template
 * names no key). A plain number that is an integer beyond 2^53-1 is
 * refused: JavaScript has already rounded it (an id 2^53+1 arrives as
 * 2^53), so pass a bigint or `integer('...')` for an integer column and
 * `float64(x)` for a double column.
 */
export type KeyValue = string | number | bigint | boolean | Date | Float32 | Float64 | Decimal | IntegerText | null | undefined;

export const float32 = (value: number): Float32 => ({ kind: 'float32', value });
export const float64 = (value: number): Float64 => ({ kind: 'float64', value });
export const decimal = (text: string): Decimal => ({ kind: 'decimal', text });
export const integer = (text: string | bigint): IntegerText => ({ kind: 'integer', text: String(text) });

export class KeyError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'KeyError';
  }
}

/** `%`, `:`, `{`, `}` and control characters as `%XX`. */
export function escape(text: string): string {
  return text.replace(/[%:{}\u0000-\u001f\u007f]/g, (c) => '%' + c.charCodeAt(0).toString(16).toUpperCase().padStart(2, '0'));
}

/** The shortest round-trip digits of a float64 in plain notation (no exponent). */
function plain(x: number): string {
  if (Number.isNaN(x)) return 'NaN';
  if (x === Infinity) return 'Infinity';
  if (x === -Infinity) return '-Infinity';
  if (x === 0) return '0';
  const text = String(x);
  const e = text.indexOf('e');
  if (e < 0) return text;
  const negative = text.startsWith('-');
  const mantissa = text.slice(negative ? 1 : 0, e);
  const exponent = Number(text.slice(e + 1));
  const [whole, fraction = ''] = mantissa.split('.');
  const digits = whole + fraction;
  const point = whole.length + exponent;
  let out: string;
  if (point <= 0) out = '0.' + '0'.repeat(-point) + digits;
  else if (point >= digits.length) out = digits + '0'.repeat(point - digits.length);
  else out = digits.slice(0, point) + '.' + digits.slice(point);
  return (negative ? '-' : '') + out;
}

/** The shortest decimal that reads back as the same float32. */
function float32Text(x: number): string {
  const f = Math.fround(x);
  if (!Number.isFinite(f) || f === 0) return plain(f);
  for (let p = 1; p <= 9; p++) {
    const candidate = Number(f.toPrecision(p));
    if (Math.fround(candidate) === f) return plain(candidate);
  }
  return plain(f);
}

// PostgreSQL numeric's own range: no column holds more, and a text such as
// `1E+999999999` must not become a gigabyte of zeros.
const MAX_DECIMAL_SCALE = 16383;
const MAX_DECIMAL_DIGITS = 131072;

/**
 * Decimal text in any notation as Java's BigDecimal.toPlainString prints it
 * (Debezium's string mode, so the daemon's key): plain notation, the scale
 * kept (`12.50`), `1E+3` as `1000`, `1.5E-2` as `0.015`, no sign on zero.
 */
export function plainDecimal(text: string): string {
  const m = /^([+-]?)([0-9]*)(?:\.([0-9]*))?(?:[eE]([+-]?[0-9]+))?$/.exec(text);
  if (!m || (m[2] === '' && (m[3] ?? '') === '')) throw new KeyError(`${JSON.stringify(text)} is not a decimal`);
  const fraction = m[3] ?? '';
  const exponent = m[4] === undefined ? 0 : Number(m[4]);
  const scale = fraction.length - exponent;
  const digits = (m[2] + fraction).replace(/^0+/, '');
  if (!Number.isSafeInteger(exponent) || Math.abs(scale) > MAX_DECIMAL_SCALE || digits.length - scale > MAX_DECIMAL_DIGITS) {
    throw new KeyError(`decimal ${JSON.stringify(text)} is beyond PostgreSQL numeric's range`);
  }
  const sign = m[1] === '-' && digits !== '' ? '-' : '';
  const unscaled = digits === '' ? '0' : digits;
  if (scale <= 0) return digits === '' ? '0' : sign + unscaled + '0'.repeat(-scale);
  const padded = unscaled.padStart(scale + 1, '0');
  return `${sign}${padded.slice(0, padded.length - scale)}.${padded.slice(padded.length - scale)}`;
}

function integerText(text: string): string {
  const m = /^(-?)([0-9]+)$/.exec(text);
  if (!m) throw new KeyError(`${JSON.stringify(text)} is not an integer`);
  const digits = m[2].replace(/^0+/, '');
  if (digits === '') return '0';
  return m[1] + digits;
}

/** The canonical text of one value; null for SQL NULL. */
export function renderValue(value: KeyValue): string | null {
  if (value === null || value === undefined) return null;
  switch (typeof value) {
    case 'string':
      return escape(value);
    case 'number':
      if (Number.isInteger(value) && !Number.isSafeInteger(value)) {
        throw new KeyError(
          `${value} is an integer beyond 2^53-1, which a JavaScript number cannot hold exactly: ` +
            'pass a bigint (or integer("...")) for an integer column, or float64(x) for a double column',
        );
      }
      return plain(value);
    case 'bigint':
      return value.toString();
    case 'boolean':
      return value ? 'true' : 'false';
  }
  if (value instanceof Date) {
    // Debezium's ZonedTimestamp: UTC, exactly six fractional digits.
    return escape(value.toISOString().replace(/\.(\d{3})Z$/, '.$1000Z'));
  }
  switch (value.kind) {
    case 'float32':
      return float32Text(value.value);
    case 'float64':
      return plain(value.value);
    case 'decimal':
      return plainDecimal(value.text);
    case 'integer':
      return integerText(value.text);
  }
}

type Part = { literal: string } | { column: string };

/** A key template such as `category:{category_id}:products`; `{{` and `}}` are literal braces. */
export class Template {
  private readonly parts: Part[];

  constructor(readonly text: string) {
    this.parts = [];
    let literal = '';
    const chars = Array.from(text);
    let at = 0; // byte offset, for messages that match the daemon's
    for (let i = 0; i < chars.length; i++) {
      const c = chars[i];
      if (c === '{' && chars[i + 1] === '{') {
        literal += '{';
        i++;
        at += 2;
        continue;
      }
      if (c === '}' && chars[i + 1] === '}') {
        literal += '}';
        i++;
        at += 2;
        continue;
      }
      if (c === '}') throw new KeyError(`template ${JSON.stringify(text)}: unmatched \`}\` at byte ${at} (write \`}}\` for a literal brace)`);
      if (c === '{') {
        const start = at;
        let column = '';
        let closed = false;
        for (i++, at++; i < chars.length; i++) {
          at += Buffer.byteLength(chars[i]);
          if (chars[i] === '}') {
            closed = true;
            break;
          }
          if (chars[i] === '{') break;
          column += chars[i];
        }
        if (!closed) throw new KeyError(`template ${JSON.stringify(text)}: unclosed \`{\` at byte ${start}`);
        column = column.trim();
        if (column === '') throw new KeyError(`template ${JSON.stringify(text)}: empty \`{}\` at byte ${start}`);
        if (literal !== '') this.parts.push({ literal });
        literal = '';
        this.parts.push({ column });
        continue;
      }
      literal += c;
      at += Buffer.byteLength(c);
    }
    if (literal !== '') this.parts.push({ literal });
  }

  /** Renders with the named values; null when a value is SQL NULL. */
  render(values: Record<string, KeyValue>): string | null {
    let out = '';
    for (const part of this.parts) {
      if ('literal' in part) {
        out += part.literal;
        continue;
      }
      if (!(part.column in values)) {
        throw new KeyError(`template ${JSON.stringify(this.text)}: no value for column ${JSON.stringify(part.column)}`);
      }
      const text = renderValue(values[part.column]);
      if (text === null) return null;
      out += text;
    }
    return out;
  }
}

/** `key('product:{id}', {id: 42})` */
export function key(template: string, values: Record<string, KeyValue>): string | null {
  return new Template(template).render(values);
}
