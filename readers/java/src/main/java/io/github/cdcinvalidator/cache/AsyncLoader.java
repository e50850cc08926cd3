package io.github.cdcinvalidator.cache;

import java.util.concurrent.CompletionStage;

/**
 * Loads a value's bytes from the source of truth, for {@link Cache#getAsync}. Called
 * on the cache's loader executor, at most once per get, and only while that get holds
 * the lease. A loader timeout or a cancelled get cancels the returned stage (when it is
 * a {@code CompletableFuture}); a late result is never written.
 */
@FunctionalInterface
public interface AsyncLoader {
  CompletionStage<byte[]> load() throws Exception;
}
