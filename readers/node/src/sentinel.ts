// Redis Sentinel: the daemon's [redis.sentinel] settings (docs/operations.md)
// turned into an ioredis client that follows the primary across failovers
// (readers/spec.md section 14).

import { inspect } from 'node:util';

import { Redis, type RedisOptions } from 'ioredis';

import { InvalidOptionsError } from './naming';

/** The daemon's `[redis.sentinel]` fields, in Node's case. */
export interface SentinelSettingsInit {
  /** The name the Sentinels monitor (`sentinel monitor <name> ...`). */
  masterName: string;
  /** The Sentinels, `"host:port"` each: at least one, three or more in production. */
  addresses: string[];
  /** The primary's and replicas' ACL user and password. */
  username?: string;
  password?: string;
  /** The Sentinels' own. */
  sentinelUsername?: string;
  sentinelPassword?: string;
  /** TLS to the Sentinels and to the data nodes (certificates verified). Default false. */
  tls?: boolean;
  /** The database the version records live in. Default 0. */
  db?: number;
}

/**
 * Checked Sentinel settings. Printing them (`String()`, `JSON.stringify`,
 * `console.log`) never shows a password.
 */
export class SentinelSettings {
  readonly masterName: string;
  readonly addresses: readonly { host: string; port: number }[];
  readonly username?: string;
  readonly sentinelUsername?: string;
  readonly tls: boolean;
  readonly db: number;
  // Kept out of the enumerable fields, so no printer finds them.
  readonly #password?: string;
  readonly #sentinelPassword?: string;

  constructor(init: SentinelSettingsInit) {
    if (!init.masterName) throw new InvalidOptionsError('sentinel: masterName is empty');
    if (!init.addresses?.length) throw new InvalidOptionsError('sentinel: addresses is empty (expected at least one "host:port")');
    this.addresses = init.addresses.map((a) => {
      const at = a.lastIndexOf(':');
      const port = Number(a.slice(at + 1));
      if (at <= 0 || !Number.isInteger(port) || port < 1 || port > 65535) {
        throw new InvalidOptionsError(`sentinel: address ${JSON.stringify(a)} is not "host:port"`);
      }
      return { host: a.slice(0, at).replace(/^\[(.*)\]$/, '$1'), port };
    });
    const db = init.db ?? 0;
    if (!Number.isInteger(db) || db < 0) throw new InvalidOptionsError(`sentinel: db ${db} is not a database number`);
    this.masterName = init.masterName;
    this.username = init.username;
    this.sentinelUsername = init.sentinelUsername;
    this.tls = init.tls ?? false;
    this.db = db;
    this.#password = init.password;
    this.#sentinelPassword = init.sentinelPassword;
  }

  toString(): string {
    const where = this.addresses.map((a) => `${a.host}:${a.port}`).join(',');
    return `sentinel master ${JSON.stringify(this.masterName)} via ${where}`;
  }

  toJSON(): Record<string, unknown> {
    const hidden = (p?: string) => (p === undefined ? undefined : '<redacted>');
    return {
      masterName: this.masterName,
      addresses: this.addresses.map((a) => `${a.host}:${a.port}`),
      username: this.username,
      password: hidden(this.#password),
      sentinelUsername: this.sentinelUsername,
      sentinelPassword: hidden(this.#sentinelPassword),
      tls: this.tls,
      db: this.db,
    };
  }

  [inspect.custom](): string {
    return `SentinelSettings ${JSON.stringify(this.toJSON())}`;
  }

  /** ioredis's options for the primary of these settings (the passwords included). */
  redisOptions(): RedisOptions {
    const tls = this.tls ? {} : undefined;
    return {
      sentinels: this.addresses.map((a) => ({ ...a })),
      name: this.masterName,
      // The primary only: a replica lags, and a get's version check must
      // see the newest version.
      role: 'master',
      username: this.username,
      password: this.#password,
      sentinelUsername: this.sentinelUsername,
      sentinelPassword: this.#sentinelPassword,
      db: this.db,
      tls,
      sentinelTLS: tls,
      enableTLSForSentinelMode: this.tls,
      // Listen to the Sentinels' +switch-master and reconnect at once, not
      // only when the old primary closes the connection.
      failoverDetector: true,
      // The old primary, demoted, answers writes with READONLY: reconnect
      // (asking the Sentinels again) and send the command once more.
      reconnectOnError: (error: Error) => (error.message.startsWith('READONLY') ? 2 : false),
    };
  }
}

/**
 * An ioredis client of the primary the Sentinels name, following failovers
 * by itself: pass it to `new Cache(...)`. It is the caller's, as any client
 * passed to a Cache: `disconnect()` it after `cache.close()`.
 */
export function sentinelRedis(settings: SentinelSettings | SentinelSettingsInit, extra: RedisOptions = {}): Redis {
  const checked = settings instanceof SentinelSettings ? settings : new SentinelSettings(settings);
  return new Redis({ ...extra, ...checked.redisOptions() });
}
