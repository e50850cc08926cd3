package io.github.cdcinvalidator.cache;

/**
 * Loads a value's bytes from the source of truth, for {@link Cache#get}. It runs on
 * the thread that called {@code get}, at most once per get, and only while that get
 * holds the lease. A loader timeout interrupts it.
 */
@FunctionalInterface
public interface Loader {
  byte[] load() throws Exception;
}
