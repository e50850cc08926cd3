package io.github.cdcinvalidator.cache;

import java.util.HashMap;
import java.util.Map;

/**
 * Just enough JSON for the daemon's notices (one flat object per message):
 * the top level's strings and numbers (numbers as their text), nested values
 * skipped. Not a general parser: the library has no JSON dependency.
 */
final class Json {
  private final String text;
  private int at;

  private Json(String text) {
    this.text = text;
  }

  /** The top-level object's string and number members; null when the text is not one JSON object. */
  static Map<String, String> object(String text) {
    try {
      Json j = new Json(text);
      Map<String, String> out = new HashMap<>();
      j.space();
      j.expect('{');
      j.space();
      if (j.peek() == '}') {
        j.at++;
        return j.end(out);
      }
      while (true) {
        j.space();
        String name = j.string();
        j.space();
        j.expect(':');
        j.space();
        String value = j.value();
        if (value != null) {
          out.put(name, value);
        }
        j.space();
        char c = j.next();
        if (c == '}') {
          return j.end(out);
        }
        if (c != ',') {
          return null;
        }
      }
    } catch (IllegalArgumentException | IndexOutOfBoundsException e) {
      return null;
    }
  }

  private Map<String, String> end(Map<String, String> out) {
    space();
    return at == text.length() ? out : null;
  }

  /** A string's content or a number's text; null for anything else (skipped). */
  private String value() {
    char c = peek();
    if (c == '"') {
      return string();
    }
    if (c == '-' || (c >= '0' && c <= '9')) {
      int start = at;
      while (at < text.length() && "+-.eE0123456789".indexOf(text.charAt(at)) >= 0) {
        at++;
      }
      return text.substring(start, at);
    }
    skip();
    return null;
  }

  private void skip() {
    char c = peek();
    if (c == '{' || c == '[') {
      char close = c == '{' ? '}' : ']';
      at++;
      space();
      if (peek() == close) {
        at++;
        return;
      }
      while (true) {
        space();
        if (c == '{') {
          string();
          space();
          expect(':');
          space();
        }
        value();
        space();
        char n = next();
        if (n == close) {
          return;
        }
        if (n != ',') {
          throw new IllegalArgumentException();
        }
      }
    }
    for (String word : new String[] {"true", "false", "null"}) {
      if (text.startsWith(word, at)) {
        at += word.length();
        return;
      }
    }
    throw new IllegalArgumentException();
  }

  private String string() {
    expect('"');
    StringBuilder out = new StringBuilder();
    while (true) {
      char c = next();
      if (c == '"') {
        return out.toString();
      }
      if (c != '\\') {
        out.append(c);
        continue;
      }
      char e = next();
      switch (e) {
        case 'n' -> out.append('\n');
        case 't' -> out.append('\t');
        case 'r' -> out.append('\r');
        case 'b' -> out.append('\b');
        case 'f' -> out.append('\f');
        case 'u' -> {
          out.append((char) Integer.parseInt(text.substring(at, at + 4), 16));
          at += 4;
        }
        default -> out.append(e);
      }
    }
  }

  private void space() {
    while (at < text.length() && Character.isWhitespace(text.charAt(at))) {
      at++;
    }
  }

  private char peek() {
    return text.charAt(at);
  }

  private char next() {
    return text.charAt(at++);
  }

  private void expect(char c) {
    if (next() != c) {
      throw new IllegalArgumentException();
    }
  }
}
