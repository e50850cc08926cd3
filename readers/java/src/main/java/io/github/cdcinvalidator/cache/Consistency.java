package io.github.cdcinvalidator.cache;

import java.util.Locale;

/** How current a get's value must be (readers/spec.md sections 1, 6 and 8). */
public enum Consistency {
  /** Never older than the versions read by this get: reads Redis every time. */
  STRONG,
  /** At most {@code maxStale} older than the last bump: the previous value and the L1 may serve. */
  EVENTUAL;

  /**
   * {@code strong} or {@code eventual}, exactly (any case); anything else is refused,
   * never read as strong.
   */
  public static Consistency parse(String text) {
    if (text != null) {
      switch (text.toLowerCase(Locale.ROOT)) {
        case "strong":
          return STRONG;
        case "eventual":
          return EVENTUAL;
        default:
          break;
      }
    }
    throw CacheException.invalid("consistency " + (text == null ? "null" : Layout.quote(text))
        + " is neither \"strong\" nor \"eventual\"");
  }
}
