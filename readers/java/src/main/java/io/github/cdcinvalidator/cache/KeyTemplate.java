package io.github.cdcinvalidator.cache;

import java.util.ArrayList;
import java.util.Collections;
import java.util.List;
import java.util.Map;
import java.util.Optional;

/**
 * A key template such as {@code category:{category_id}:products}, parsed once
 * and rendered per row like the daemon renders it; <code>{{</code> and
 * <code>}}</code> are literal braces, and spaces around a column name are
 * ignored. Immutable and thread-safe.
 */
public final class KeyTemplate {
  private final String text;
  // Literal parts at even indexes, column names at odd ones.
  private final List<String> parts;

  private KeyTemplate(String text, List<String> parts) {
    this.text = text;
    this.parts = parts;
  }

  /** @throws KeyException naming the byte offset of an unclosed, empty or unmatched brace */
  public static KeyTemplate parse(String text) {
    List<String> parts = new ArrayList<>();
    StringBuilder literal = new StringBuilder();
    int i = 0;
    while (i < text.length()) {
      char c = text.charAt(i);
      if ((c == '{' || c == '}') && i + 1 < text.length() && text.charAt(i + 1) == c) {
        literal.append(c);
        i += 2;
        continue;
      }
      if (c == '}') {
        throw new KeyException("template " + Layout.quote(text) + ": unmatched `}` at byte "
            + Keys.utf8Length(text, i) + " (write `}}` for a literal brace)");
      }
      if (c == '{') {
        int close = i + 1;
        while (close < text.length() && text.charAt(close) != '}' && text.charAt(close) != '{') {
          close++;
        }
        if (close == text.length() || text.charAt(close) == '{') {
          throw new KeyException("template " + Layout.quote(text) + ": unclosed `{` at byte " + Keys.utf8Length(text, i));
        }
        String column = text.substring(i + 1, close).strip();
        if (column.isEmpty()) {
          throw new KeyException("template " + Layout.quote(text) + ": empty `{}` at byte " + Keys.utf8Length(text, i));
        }
        parts.add(literal.toString());
        parts.add(column);
        literal.setLength(0);
        i = close + 1;
        continue;
      }
      literal.append(c);
      i++;
    }
    parts.add(literal.toString());
    return new KeyTemplate(text, Collections.unmodifiableList(parts));
  }

  /** The column names, in order. */
  public List<String> columns() {
    List<String> out = new ArrayList<>();
    for (int i = 1; i < parts.size(); i += 2) {
      out.add(parts.get(i));
    }
    return out;
  }

  /**
   * The key for one row's values (see {@link Keys} for the Java types taken); empty
   * when a value is SQL NULL, as the daemon names no key then.
   *
   * @throws KeyException for a missing column or a value with no canonical text
   */
  public Optional<String> render(Map<String, ?> values) {
    StringBuilder out = new StringBuilder(text.length() + 16);
    for (int i = 0; i < parts.size(); i++) {
      if (i % 2 == 0) {
        out.append(parts.get(i));
        continue;
      }
      String column = parts.get(i);
      if (!values.containsKey(column)) {
        throw new KeyException("template " + Layout.quote(text) + ": no value for column " + Layout.quote(column));
      }
      String rendered = Keys.render(values.get(column));
      if (rendered == null) {
        return Optional.empty();
      }
      out.append(rendered);
    }
    return Optional.of(out.toString());
  }

  @Override
  public String toString() {
    return text;
  }
}
