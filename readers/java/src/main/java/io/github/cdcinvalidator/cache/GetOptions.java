package io.github.cdcinvalidator.cache;

import java.time.Duration;
import java.util.List;
import java.util.Objects;

/**
 * What one get reads and how (readers/spec.md section 1). Immutable: build once,
 * reuse for every get of the same kind of value.
 *
 * <pre>{@code
 * GetOptions page = GetOptions.ttl(Duration.ofMinutes(10))
 *     .deps("product:42", "category:3")
 *     .eventual(Duration.ofMillis(500));
 * }</pre>
 */
public final class GetOptions {
  private final Duration ttl;
  private final List<String> deps;
  private final List<String> namespaces;
  private final Consistency consistency;
  private final Duration maxStale;

  private GetOptions(Duration ttl, List<String> deps, List<String> namespaces, Consistency consistency, Duration maxStale) {
    this.ttl = ttl;
    this.deps = deps;
    this.namespaces = namespaces;
    this.consistency = consistency;
    this.maxStale = maxStale;
  }

  /**
   * Strong gets of a value kept {@code ttl} in Redis, depending on its own key's record.
   * The ttl must not exceed the daemon's {@code max_cache_ttl} of the entities involved.
   */
  public static GetOptions ttl(Duration ttl) {
    return new GetOptions(Objects.requireNonNull(ttl, "ttl"), null, List.of(), Consistency.STRONG, null);
  }

  /** The cache keys whose version records the value depends on, in a fixed order (default: the key). */
  public GetOptions deps(String... deps) {
    return deps(List.of(deps));
  }

  public GetOptions deps(List<String> deps) {
    return new GetOptions(ttl, List.copyOf(deps), namespaces, consistency, maxStale);
  }

  /** Entity namespaces whose record {@code ver:ns:<name>} is folded in too. */
  public GetOptions namespaces(String... namespaces) {
    return namespaces(List.of(namespaces));
  }

  public GetOptions namespaces(List<String> namespaces) {
    return new GetOptions(ttl, deps, List.copyOf(namespaces), consistency, maxStale);
  }

  /** Eventual gets: a value at most {@code maxStale} older than the last bump may serve. */
  public GetOptions eventual(Duration maxStale) {
    return new GetOptions(ttl, deps, namespaces, Consistency.EVENTUAL, Objects.requireNonNull(maxStale, "maxStale"));
  }

  /** Strong gets (the default). */
  public GetOptions strong() {
    return new GetOptions(ttl, deps, namespaces, Consistency.STRONG, null);
  }

  /**
   * The mode by name, for settings read from configuration: {@code consistency("eventual",
   * Duration.ofMillis(500))}; a misspelt mode is refused, as is a bound with {@code strong}.
   */
  public GetOptions consistency(String mode, Duration maxStale) {
    return new GetOptions(ttl, deps, namespaces, Consistency.parse(mode), maxStale);
  }

  public Duration ttl() {
    return ttl;
  }

  /** Null means the key itself. */
  public List<String> deps() {
    return deps;
  }

  public List<String> namespaces() {
    return namespaces;
  }

  public Consistency consistency() {
    return consistency;
  }

  /** Null with strong consistency. */
  public Duration maxStale() {
    return maxStale;
  }

  /** The refusals of section 1, at the call. */
  void validate(String key) {
    String who = "key " + Layout.quote(key == null ? "" : key) + ": ";
    if (ttl.isZero() || ttl.isNegative()) {
      throw CacheException.invalid(who + "ttl " + ttl + " must be above zero");
    }
    if (consistency == Consistency.EVENTUAL && maxStale == null) {
      throw CacheException.invalid(who + "eventual consistency needs maxStale");
    }
    if (consistency == Consistency.STRONG && maxStale != null) {
      throw CacheException.invalid(who + "maxStale " + maxStale + " is for eventual consistency");
    }
    if (maxStale != null && maxStale.isNegative()) {
      throw CacheException.invalid(who + "max_stale must be at least 0 (got " + maxStale + ")");
    }
  }
}
