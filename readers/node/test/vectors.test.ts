// The shared conformance vectors (readers/spec.md section 12), the same
// files the Rust crate's tests/vectors.rs reads.

import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { resolve } from 'node:path';
import { test } from 'node:test';

import { BadVersionError, KeyError, Layout, decimal, float32, float64, integer, key, leaseKey, parseVersion, plainDecimal, type Fields, type KeyValue } from '../src';

// Tests run from dist/test/.
const ROOT = resolve(__dirname, '..', '..', '..', '..');

function load(path: string): any {
  let raw = readFileSync(resolve(ROOT, path), 'utf8');
  // JSON.parse rounds integers beyond 2^53: keep every long integer literal as text.
  raw = raw.replace(/("json": )(-?[0-9]{16,})(?=[,\n ])/g, '$1"$2"');
  return JSON.parse(raw);
}

test('key rendering matches the daemon vectors', () => {
  const vectors = load('tests/vectors/keys.json').vectors as any[];
  assert.ok(vectors.length >= 20);
  for (const v of vectors) {
    const j = v.json;
    let value: KeyValue;
    switch (v.type) {
      case 'integer':
      case 'date':
      case 'time':
      case 'timestamp':
        value = integer(String(j));
        break;
      case 'float64':
        value = float64(Number(j));
        break;
      case 'float32':
        value = float32(Number(j));
        break;
      case 'decimal':
        value = decimal(j);
        break;
      case 'boolean':
        value = j as boolean;
        break;
      case 'timestamptz':
      case 'uuid':
      case 'text':
        value = j as string;
        break;
      default:
        throw new Error(`vector ${v.name}: unknown type ${v.type}`);
    }
    assert.equal(key('k:{c}', { c: value }), `k:${v.text}`, `vector ${JSON.stringify(v.name)}`);
  }
});

test('JavaScript values render like the daemon', () => {
  assert.equal(key('pair:{a}:{b}', { a: '1', b: '2:3' }), 'pair:1:2%3A3');
  assert.equal(key('{{tag}}:{id}', { id: 'a' }), '{tag}:a');
  assert.equal(key('c:{p}', { p: null }), null);
  assert.equal(key('größe:{ id }', { id: 1 }), 'größe:1');
  assert.equal(key('n:{x}', { x: 18446744073709551617n }), 'n:18446744073709551617');
  assert.equal(key('n:{x}', { x: 1e-7 }), 'n:0.0000001');
  assert.equal(key('n:{x}', { x: float64(-1.5e22) }), 'n:-15000000000000000000000');
  assert.equal(key('n:{x}', { x: -Infinity }), 'n:-Infinity');
  assert.equal(key('t:{x}', { x: new Date(Date.UTC(2024, 1, 18, 16, 0, 0, 120)) }), 't:2024-02-18T16%3A00%3A00.120000Z');
  assert.throws(() => key('p:{id', {}), /unclosed `\{` at byte 2/);
  assert.throws(() => key('p:{}', {}), /empty `\{\}` at byte 2/);
  assert.throws(() => key('p:}', {}), /unmatched `\}` at byte 2/);
  assert.throws(() => key('p:{id}', {}), /"p:\{id\}": no value for column "id"/);
});

test('decimals render as BigDecimal.toPlainString, whatever notation they come in', () => {
  const cases: [string, string][] = [
    ['12.50', '12.50'],
    ['1E+3', '1000'],
    ['1e3', '1000'],
    ['1.50E+2', '150'],
    ['1.5E-2', '0.015'],
    ['-0.05', '-0.05'],
    ['-0.00', '0.00'],
    ['0E+3', '0'],
    ['+007.5', '7.5'],
    ['.5', '0.5'],
    ['5.', '5'],
  ];
  for (const [text, plain] of cases) assert.equal(plainDecimal(text), plain, text);
  assert.equal(key('p:{price}', { price: decimal('1E+3') }), 'p:1000');
  for (const bad of ['', '.', '1e', '1,5', 'NaN', '1E+99999999999']) assert.throws(() => plainDecimal(bad), KeyError, bad);
});

test('an integer a number cannot hold exactly is refused, pointing to bigint', () => {
  assert.throws(() => key('o:{id}', { id: 2 ** 53 + 2 }), /beyond 2\^53-1.*bigint/);
  assert.equal(key('o:{id}', { id: 2n ** 53n + 1n }), 'o:9007199254740993');
  assert.equal(key('o:{id}', { id: Number.MAX_SAFE_INTEGER }), 'o:9007199254740991');
  assert.equal(key('d:{x}', { x: float64(1e21) }), 'd:1000000000000000000000');
  assert.equal(key('d:{x}', { x: 1.5 }), 'd:1.5');
});

test('version texts parse or are refused', () => {
  for (const v of load('readers/vectors/versions.json').vectors as any[]) {
    const name = `vector ${JSON.stringify(v.name)}`;
    if ('value' in v) {
      assert.equal(parseVersion('ver:k', v.field, v.text) ?? '0', v.value, name);
    } else if (v.absent) {
      assert.equal(parseVersion('ver:k', v.field, v.text), null, name);
    } else {
      assert.throws(
        () => parseVersion('ver:k', v.field, v.text),
        (e: unknown) => e instanceof BadVersionError && e.kind === v.error && e.message.includes('ver:k'),
        name,
      );
    }
  }
});

test('data keys, lease keys and stale keys are named alike', () => {
  for (const v of load('readers/vectors/data_keys.json').vectors as any[]) {
    const name = `vector ${JSON.stringify(v.name)}`;
    const layout = new Layout(v.prefix, v.key, v.deps, v.namespaces);
    assert.deepEqual(layout.records, v.records, `${name}: records`);
    const field = (record: string, f: string) => parseVersion(record, f, v.fields[record]?.[f] ?? null);
    const epoch = field(layout.records[0], 'e') ?? '0';
    const fields: Fields[] = layout.records.slice(1).map((r) => ({ v: field(r, 'v') ?? '0', pv: field(r, 'pv') }));
    const dataKey = layout.dataKey(
      epoch,
      fields.map((f) => f.v),
    );
    assert.equal(dataKey, v.data_key, `${name}: data key`);
    assert.equal(leaseKey(dataKey), v.lease_key, `${name}: lease key`);
    const stale = layout.staleKey(epoch, fields, BigInt(v.now_us));
    if (v.stale_key === null) {
      assert.equal(stale, null, `${name}: no stale key`);
    } else {
      assert.equal(stale?.key, v.stale_key, `${name}: stale key`);
      assert.equal(stale?.ageUs.toString(), v.stale_age_us, `${name}: age`);
    }
  }
});
