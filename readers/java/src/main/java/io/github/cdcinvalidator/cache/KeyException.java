package io.github.cdcinvalidator.cache;

/** A template that does not parse, or a value with no canonical key text. */
public final class KeyException extends IllegalArgumentException {
  private static final long serialVersionUID = 1L;

  public KeyException(String message) {
    super(message);
  }
}
