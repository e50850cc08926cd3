package io.github.cdcinvalidator.cache;

import java.util.Locale;

/**
 * Every error of a get (readers/spec.md section 11). {@link #kind()} is the
 * word every reader library uses for it; messages never carry a value read
 * from Redis beyond a version's text, nor any secret.
 */
public final class CacheException extends RuntimeException {
  private static final long serialVersionUID = 1L;

  /** The kinds of section 11. */
  public enum Kind {
    /** A version field is not canonical (section 3). */
    BAD_VERSION,
    /** A Redis error: nothing is served from a cache the library could not read. */
    REDIS,
    /** The loader's own error, passed through as the cause. */
    LOADER,
    /** The loader ran longer than the cache's loader timeout. */
    LOADER_TIMEOUT,
    /** A waiter reached its wait timeout with no value to serve. */
    LEASE_TIMEOUT,
    /** A refused option, at the call or when the cache is built. */
    INVALID_OPTIONS,
    /** A reply the library never expects (another script under its SHA, a proxy). */
    PROTOCOL;

    /** The spec's spelling: {@code bad_version}, {@code lease_timeout}, ... */
    public String word() {
      return name().toLowerCase(Locale.ROOT);
    }
  }

  private final Kind kind;

  public CacheException(Kind kind, String message) {
    super(kind.word() + ": " + message);
    this.kind = kind;
  }

  public CacheException(Kind kind, String message, Throwable cause) {
    super(kind.word() + ": " + message, cause);
    this.kind = kind;
  }

  public Kind kind() {
    return kind;
  }

  static CacheException invalid(String message) {
    return new CacheException(Kind.INVALID_OPTIONS, message);
  }
}
